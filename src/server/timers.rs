//! Time in the loop: one heap entry per connection for its deadline (handshake, heartbeat,
//! idle, close), and the loop's few scalar deadlines (accept pause, watchdog, stats line,
//! drain, history expiry). The loop's poll timeout is the nearest of them all; an idle server
//! with nothing scheduled does not wake.
//!
//! Each connection owns a [`ConnectionTimer`]: its real deadline and the instant its one live
//! heap entry fires. A later deadline reuses the entry (when it fires early it is re-armed for
//! the real deadline), so a heartbeat costs O(log n) once per interval and nothing per
//! message. Entries made stale by an earlier deadline or a removed connection are skipped when
//! they surface, and the heap is rebuilt if they ever outnumber the live ones.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// One connection's deadline as the heap sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionTimer {
    /// The next time the loop must look at this connection.
    deadline: Instant,
    /// When its one live heap entry fires (at or before `deadline`); None when it has none.
    armed_at: Option<Instant>,
}

impl ConnectionTimer {
    pub(crate) fn new(deadline: Instant) -> Self {
        ConnectionTimer {
            deadline,
            armed_at: None,
        }
    }
}

/// Where the timers find a live connection's id and timer by key (the slab; a table in
/// tests).
pub(crate) trait TimerTable {
    fn timer(&mut self, key: usize) -> Option<(u64, &mut ConnectionTimer)>;
}

/// A heap entry: (when, connection key, connection id).
type Entry = Reverse<(Instant, usize, u64)>;

/// The heap of connection deadlines.
#[derive(Debug, Default)]
pub(crate) struct ConnectionTimers {
    heap: BinaryHeap<Entry>,
}

impl ConnectionTimers {
    /// Gives a connection a new deadline, pushing a heap entry only when it is earlier than
    /// the one armed.
    pub(crate) fn set(&mut self, timer: &mut ConnectionTimer, key: usize, id: u64, at: Instant) {
        timer.deadline = at;
        if timer.armed_at.is_none_or(|armed| at < armed) {
            timer.armed_at = Some(at);
            self.heap.push(Reverse((at, key, id)));
        }
    }

    /// The next connection whose deadline has come, if any. An entry that fires before its
    /// connection's real deadline is re-armed for it; stale entries are discarded.
    pub(crate) fn next_due(&mut self, now: Instant, table: &mut impl TimerTable) -> Option<usize> {
        while let Some(&Reverse((at, key, id))) = self.heap.peek() {
            if at > now {
                return None;
            }
            self.heap.pop();
            let Some((live_id, timer)) = table.timer(key) else {
                continue;
            };
            if live_id != id || timer.armed_at != Some(at) {
                // Superseded by an earlier entry, or the key now belongs to another client.
                continue;
            }
            timer.armed_at = None;
            if timer.deadline <= now {
                return Some(key);
            }
            let deadline = timer.deadline;
            self.set(timer, key, id, deadline);
        }
        None
    }

    /// When the earliest live entry fires. Stale entries at the top are discarded first, so
    /// they neither wake the loop for nothing nor keep an idle server waking.
    pub(crate) fn next_wake(
        &mut self,
        is_live: impl Fn(usize, u64, Instant) -> bool,
    ) -> Option<Instant> {
        while let Some(&Reverse((at, key, id))) = self.heap.peek() {
            if is_live(key, id, at) {
                return Some(at);
            }
            self.heap.pop();
        }
        None
    }

    /// Rebuilds the heap when stale entries outnumber the live connections.
    pub(crate) fn compact(&mut self, live: usize, is_live: impl Fn(usize, u64, Instant) -> bool) {
        if self.heap.len() > 2 * live + 1024 {
            self.heap
                .retain(|Reverse((at, key, id))| is_live(*key, *id, *at));
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.heap.len()
    }
}

/// Whether a heap entry still stands for a connection's armed timer.
pub(crate) fn entry_is_live(timer: &ConnectionTimer, at: Instant) -> bool {
    timer.armed_at == Some(at)
}

/// The loop's own deadlines besides the connections'.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct LoopDeadlines {
    /// Accepting resumes (after `EMFILE`).
    pub accept_paused_until: Option<Instant>,
    /// The next systemd watchdog ping.
    pub watchdog: Option<Instant>,
    /// The next stats line.
    pub stats: Option<Instant>,
    /// The drain gives up and the loop exits.
    pub drain: Option<Instant>,
    /// The next room whose history may expire.
    pub history_expiry: Option<Instant>,
    /// Rooms owe their `wschat.v1` members a presence frame (joins and leaves coalesced).
    pub presence: Option<Instant>,
}

impl LoopDeadlines {
    /// The nearest of them.
    pub(crate) fn nearest(&self) -> Option<Instant> {
        [
            self.accept_paused_until,
            self.watchdog,
            self.stats,
            self.drain,
            self.history_expiry,
            self.presence,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Moves the history expiry earlier if `due` comes first.
    pub(crate) fn expire_history_by(&mut self, due: Instant) {
        self.history_expiry = Some(self.history_expiry.map_or(due, |d| d.min(due)));
    }
}

/// True when `deadline` has come (it is set and not after `now`).
pub(crate) fn is_due(deadline: Option<Instant>, now: Instant) -> bool {
    deadline.is_some_and(|at| at <= now)
}

/// The poll timeout for a wake at `nearest`: rounded up to the next millisecond so epoll does
/// not wake a hair early and spin; None (wait forever) when nothing is scheduled.
pub(crate) fn poll_timeout(nearest: Option<Instant>, now: Instant) -> Option<Duration> {
    nearest.map(|at| at.saturating_duration_since(now) + Duration::from_micros(999))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A stand-in for the slab: key -> (id, timer).
    struct Table(Vec<Option<(u64, ConnectionTimer)>>);

    impl TimerTable for Table {
        fn timer(&mut self, key: usize) -> Option<(u64, &mut ConnectionTimer)> {
            self.0
                .get_mut(key)
                .and_then(|slot| slot.as_mut())
                .map(|(id, timer)| (*id, timer))
        }
    }

    impl Table {
        fn due(&mut self, timers: &mut ConnectionTimers, now: Instant) -> Vec<usize> {
            let mut fired = Vec::new();
            while let Some(key) = timers.next_due(now, self) {
                fired.push(key);
            }
            fired
        }
    }

    #[test]
    fn a_deadline_fires_once_when_due() {
        let start = Instant::now();
        let mut timers = ConnectionTimers::default();
        let mut table = Table(vec![Some((1, ConnectionTimer::new(start)))]);
        let (_, timer) = table.0[0].as_mut().unwrap();
        timers.set(timer, 0, 1, start + ms(10));
        assert!(table.due(&mut timers, start + ms(9)).is_empty());
        assert_eq!(table.due(&mut timers, start + ms(10)), vec![0]);
        assert!(table.due(&mut timers, start + ms(20)).is_empty());
    }

    #[test]
    fn a_later_deadline_reuses_the_entry_and_is_rearmed_when_it_fires_early() {
        let start = Instant::now();
        let mut timers = ConnectionTimers::default();
        let mut table = Table(vec![Some((1, ConnectionTimer::new(start)))]);
        let (_, timer) = table.0[0].as_mut().unwrap();
        timers.set(timer, 0, 1, start + ms(10));
        // Activity pushes the deadline later: no new heap entry.
        timers.set(timer, 0, 1, start + ms(30));
        assert_eq!(timers.len(), 1);
        // The old entry fires early and re-arms for the real deadline.
        assert!(table.due(&mut timers, start + ms(10)).is_empty());
        assert_eq!(timers.len(), 1);
        assert_eq!(table.due(&mut timers, start + ms(30)), vec![0]);
    }

    #[test]
    fn an_earlier_deadline_supersedes_the_armed_entry() {
        let start = Instant::now();
        let mut timers = ConnectionTimers::default();
        let mut table = Table(vec![Some((1, ConnectionTimer::new(start)))]);
        let (_, timer) = table.0[0].as_mut().unwrap();
        timers.set(timer, 0, 1, start + ms(30));
        timers.set(timer, 0, 1, start + ms(5));
        assert_eq!(table.due(&mut timers, start + ms(5)), vec![0]);
        // The superseded entry at 30 ms is skipped, not fired again.
        assert!(table.due(&mut timers, start + ms(40)).is_empty());
    }

    #[test]
    fn entries_of_a_removed_or_replaced_connection_are_skipped() {
        let start = Instant::now();
        let mut timers = ConnectionTimers::default();
        let mut table = Table(vec![Some((1, ConnectionTimer::new(start)))]);
        let (_, timer) = table.0[0].as_mut().unwrap();
        timers.set(timer, 0, 1, start + ms(10));
        // Key 0 is reused by connection 2 with no deadline of its own yet.
        table.0[0] = Some((2, ConnectionTimer::new(start + ms(100))));
        assert!(table.due(&mut timers, start + ms(10)).is_empty());
        table.0[0] = None;
        assert!(table.due(&mut timers, start + ms(200)).is_empty());
    }

    #[test]
    fn stale_entries_do_not_wake_the_loop_and_are_compacted() {
        let start = Instant::now();
        let mut timers = ConnectionTimers::default();
        let mut table = Table(vec![Some((1, ConnectionTimer::new(start)))]);
        for i in 0..3000u64 {
            let (_, timer) = table.0[0].as_mut().unwrap();
            // Each earlier deadline pushes a new entry; only the last is live.
            timers.set(timer, 0, 1, start + ms(10_000 - i));
        }
        let live = |key: usize, id: u64, at: Instant| {
            table.0[key]
                .as_ref()
                .is_some_and(|(live_id, timer)| *live_id == id && entry_is_live(timer, at))
        };
        timers.compact(1, live);
        assert_eq!(timers.len(), 1);
        assert_eq!(timers.next_wake(live), Some(start + ms(10_000 - 2999)));
        table.0[0] = None;
        let gone = |_: usize, _: u64, _: Instant| false;
        assert_eq!(timers.next_wake(gone), None, "an idle server must not wake");
    }

    #[test]
    fn loop_deadlines_pick_the_nearest_and_round_up() {
        let start = Instant::now();
        let mut deadlines = LoopDeadlines::default();
        assert_eq!(deadlines.nearest(), None);
        assert_eq!(poll_timeout(None, start), None);
        deadlines.stats = Some(start + ms(50));
        deadlines.watchdog = Some(start + ms(20));
        deadlines.expire_history_by(start + ms(70));
        deadlines.expire_history_by(start + ms(90));
        assert_eq!(deadlines.history_expiry, Some(start + ms(70)));
        assert_eq!(deadlines.nearest(), Some(start + ms(20)));
        let timeout = poll_timeout(deadlines.nearest(), start).unwrap();
        assert!(timeout >= ms(20) && timeout < ms(21));
        assert!(is_due(deadlines.watchdog, start + ms(20)));
        assert!(!is_due(deadlines.stats, start + ms(20)));
        assert!(!is_due(None, start));
    }
}
