//! Which connections owe a read. A connection stops reading before `WouldBlock` when its read
//! budget for the pass is spent, when its own outbound queue must drain first (an HTTP
//! response not yet sent, a WebSocket over its budget), or when a closing peer has more to
//! discard. Such a connection is listed once, and the loop polls with a zero timeout while
//! any read is owed. One read budget per connection per pass: a connection already read in
//! this pass waits for the next one, so one fast sender cannot hold the loop.

/// One connection's read bookkeeping.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadFlags {
    /// The pass that last read it, in 32 bits (an equality test: a wrap after 2^32 passes
    /// costs at most one read budget), so the flags fit in 8 bytes of every connection.
    last_pass: u32,
    /// It stopped before `WouldBlock`: the loop must come back.
    pub owed: bool,
    /// It is on the owed list (at most once).
    listed: bool,
}

impl Default for ReadFlags {
    fn default() -> Self {
        ReadFlags {
            last_pass: u32::MAX,
            owed: false,
            listed: false,
        }
    }
}

impl ReadFlags {
    /// Starts a read in `pass`. False when this connection was read in this pass already: the
    /// read is owed instead.
    pub(crate) fn begin(&mut self, pass: u64) -> bool {
        let pass = pass as u32;
        if self.last_pass == pass {
            self.owed = true;
            return false;
        }
        self.last_pass = pass;
        self.owed = false;
        true
    }
}

/// Where the schedule finds a live connection's flags by key (the slab; an array in tests).
pub(crate) trait ReadTable {
    fn read_flags(&mut self, key: usize) -> Option<&mut ReadFlags>;
}

/// The list of connections that owe a read.
#[derive(Debug, Default)]
pub(crate) struct ReadSchedule {
    owed: Vec<usize>,
    /// The list taken in an earlier pass, given back empty: the two swap, so a pass that
    /// owes reads allocates nothing (a 64 KiB message read over 16 passes into a room of
    /// 1,000 made 16 allocations per message when a fresh list was grown every pass).
    spare: Vec<usize>,
}

impl ReadSchedule {
    /// True while any read is owed: the loop must not sleep.
    pub(crate) fn any_owed(&self) -> bool {
        !self.owed.is_empty()
    }

    /// Lists a connection that owes a read, unless it is listed already or its queue must
    /// drain first (`may_read` false: it is listed again after its flush).
    pub(crate) fn owe(&mut self, key: usize, flags: &mut ReadFlags, may_read: bool) {
        if flags.owed && !flags.listed && may_read {
            flags.listed = true;
            self.owed.push(key);
        }
    }

    /// Takes the reads owed from earlier passes; reads owed during this one wait for the
    /// next.
    /// Hand the list back with `give_back` once it is served.
    pub(crate) fn take(&mut self, table: &mut impl ReadTable) -> Vec<usize> {
        let owed = std::mem::replace(&mut self.owed, std::mem::take(&mut self.spare));
        for &key in &owed {
            if let Some(flags) = table.read_flags(key) {
                flags.listed = false;
            }
        }
        owed
    }

    /// Takes back a list from `take`, served, so the next pass reuses its capacity.
    pub(crate) fn give_back(&mut self, mut served: Vec<usize>) {
        served.clear();
        self.spare = served;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl<const N: usize> ReadTable for [ReadFlags; N] {
        fn read_flags(&mut self, key: usize) -> Option<&mut ReadFlags> {
            self.get_mut(key)
        }
    }

    #[test]
    fn one_read_per_pass() {
        let mut flags = ReadFlags::default();
        assert!(flags.begin(1));
        assert!(!flags.owed);
        assert!(!flags.begin(1), "a second read in the same pass must wait");
        assert!(flags.owed);
        assert!(flags.begin(2));
        assert!(!flags.owed);
    }

    #[test]
    fn an_owed_read_is_listed_once_and_only_when_allowed() {
        let mut schedule = ReadSchedule::default();
        let mut flags = [ReadFlags::default(), ReadFlags::default()];
        flags[0].owed = true;
        schedule.owe(0, &mut flags[0], false);
        assert!(!schedule.any_owed(), "its queue must drain first");
        schedule.owe(0, &mut flags[0], true);
        schedule.owe(0, &mut flags[0], true);
        schedule.owe(1, &mut flags[1], true);
        assert!(schedule.any_owed());
        let owed = schedule.take(&mut flags);
        assert_eq!(
            owed,
            vec![0],
            "listed once; a connection owing nothing is not listed"
        );
        assert!(!schedule.any_owed());
        // Taken off the list, it can be listed again.
        schedule.owe(0, &mut flags[0], true);
        assert!(schedule.any_owed());
    }

    #[test]
    fn the_lists_are_reused_from_pass_to_pass() {
        let mut schedule = ReadSchedule::default();
        let mut flags = [ReadFlags::default(), ReadFlags::default()];
        let mut buffers = std::collections::HashSet::new();
        for _ in 0..4 {
            for (key, flag) in flags.iter_mut().enumerate() {
                flag.owed = true;
                schedule.owe(key, flag, true);
            }
            let owed = schedule.take(&mut flags);
            assert_eq!(owed, vec![0, 1]);
            buffers.insert(owed.as_ptr() as usize);
            schedule.give_back(owed);
        }
        assert_eq!(buffers.len(), 2, "two lists, swapped: {buffers:?}");
    }
}
