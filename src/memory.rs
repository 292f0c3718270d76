//! The memory ceiling (`--max-memory`): what the process may use for state clients cause, how
//! much it uses, and giving freed memory back to the system.
//!
//! Two measures are kept. The binary installs [`CountingAllocator`], so the heap in use is
//! known exactly, whatever holds it (tungstenite's buffers, TLS sessions, the inflater): the
//! loop judges pressure on it. Beside it, the loop accounts the bytes it knows by kind (HTTP
//! heads, partial inbound messages, outbound queues, history, TLS sessions) for `/metrics`
//! and to pick whom to shed. A library user without the allocator (the tests) falls back to the
//! accounted sum.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The heap bytes in use, kept by [`CountingAllocator`].
static HEAP_IN_USE: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting the bytes in use. One relaxed atomic add per allocation:
/// the relay allocates per message, not per delivery (measured in docs/benchmarks.md).
pub struct CountingAllocator;

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is kept.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            HEAP_IN_USE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            HEAP_IN_USE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) };
        HEAP_IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is.
        let moved = unsafe { System.realloc(ptr, layout, new_size) };
        if !moved.is_null() {
            HEAP_IN_USE.fetch_add(new_size, Ordering::Relaxed);
            HEAP_IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        moved
    }
}

/// Heap bytes in use, when the binary counts them; None in a process without the allocator.
pub(crate) fn heap_in_use() -> Option<usize> {
    match HEAP_IN_USE.load(Ordering::Relaxed) {
        0 => None,
        bytes => Some(bytes),
    }
}

/// The process's resident set, from `/proc/self/statm` (one small read).
pub(crate) fn resident_bytes() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages.saturating_mul(usize::try_from(page_size).ok()?))
}

/// Of the host's memory, the share the default ceiling takes: the rest is for the kernel's
/// socket buffers, the binary, and whatever else the host runs.
const DEFAULT_SHARE_NUMERATOR: u64 = 1;
const DEFAULT_SHARE_DENOMINATOR: u64 = 2;

/// The default ceiling and how it was found: half the cgroup's memory limit if one is set (v2
/// `memory.max`, v1 `memory.limit_in_bytes`), else half of physical memory. Read once at start.
pub(crate) fn default_ceiling() -> (u64, String) {
    let (host, source) = match cgroup_limit() {
        Some((limit, file)) => (limit, format!("the cgroup limit in {file}")),
        None => (physical_memory(), "physical memory".to_string()),
    };
    (
        host / DEFAULT_SHARE_DENOMINATOR * DEFAULT_SHARE_NUMERATOR,
        format!("half of {source}, {host} bytes"),
    )
}

/// The memory limit of this process's cgroup, and the file it came from.
fn cgroup_limit() -> Option<(u64, String)> {
    let membership = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in membership.lines() {
        // v2: "0::/path"; v1: "N:memory:/path" (or a list of controllers with memory in it).
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let candidates = if controllers.is_empty() {
            vec![
                format!("/sys/fs/cgroup{path}/memory.max"),
                "/sys/fs/cgroup/memory.max".to_string(),
            ]
        } else if controllers.split(',').any(|c| c == "memory") {
            vec![
                format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"),
                "/sys/fs/cgroup/memory/memory.limit_in_bytes".to_string(),
            ]
        } else {
            continue;
        };
        for file in candidates {
            if let Some(limit) = read_limit(&file) {
                return Some((limit, file));
            }
        }
    }
    None
}

/// A cgroup limit file's value; None for "max" or v1's "no limit" (a number near 2^63).
fn read_limit(file: &str) -> Option<u64> {
    parse_limit(std::fs::read_to_string(file).ok()?.trim())
}

fn parse_limit(text: &str) -> Option<u64> {
    let limit: u64 = text.parse().ok()?;
    (limit < (1 << 60)).then_some(limit)
}

fn physical_memory() -> u64 {
    // SAFETY: sysconf only reads system constants.
    let (pages, page_size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (pages.max(0) as u64).saturating_mul(page_size.max(0) as u64)
}

/// Gives freed heap memory back to the system. glibc keeps freed memory in its arenas (after
/// 2,000 clients with 60 KB partial frames left, RSS stayed at 125 MB against 2.3 MB idle);
/// `malloc_trim` returns the free pages of every arena. musl's allocator returns memory
/// itself. Called by the loop after large frees, at most once a second.
pub(crate) fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Bytes the loop accounts by kind, for `/metrics` and the stats line.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Accounted {
    /// Request heads and pipelined bytes of HTTP-phase connections.
    pub http: usize,
    /// Partial inbound messages (what tungstenite holds for an unfinished message).
    pub inbound: usize,
    /// Outbound queues.
    pub outbound: usize,
    /// Room history.
    pub history: usize,
    /// TLS sessions.
    pub tls: usize,
}

impl Accounted {
    pub(crate) fn total(&self) -> usize {
        self.http + self.inbound + self.outbound + self.history + self.tls
    }

    /// `(kind, bytes)` for the `/metrics` family.
    pub(crate) fn by_kind(&self) -> [(&'static str, usize); 5] {
        [
            ("http", self.http),
            ("inbound", self.inbound),
            ("outbound", self.outbound),
            ("history", self.history),
            ("tls", self.tls),
        ]
    }
}

/// How close the process is to its ceiling; each level includes the measures of those below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pressure {
    /// Under the high-water mark.
    None,
    /// Over 3/4 of the ceiling: new upgrades get 503, `/healthz` says "memory pressure".
    Refusing,
    /// Over 7/8: the connections holding the most partial input stop being read.
    Pausing,
    /// Over the ceiling: outbound queues are shed by `--slow-client`, then history trimmed.
    Shedding,
}

impl Pressure {
    pub(crate) fn of(used: usize, ceiling: usize) -> Pressure {
        if used > ceiling {
            Pressure::Shedding
        } else if used > ceiling / 8 * 7 {
            Pressure::Pausing
        } else if used > ceiling / 4 * 3 {
            Pressure::Refusing
        } else {
            Pressure::None
        }
    }

    pub(crate) fn level(self) -> u8 {
        self as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_levels_follow_the_ceiling() {
        let ceiling = 800;
        assert_eq!(Pressure::of(0, ceiling), Pressure::None);
        assert_eq!(Pressure::of(600, ceiling), Pressure::None);
        assert_eq!(Pressure::of(601, ceiling), Pressure::Refusing);
        assert_eq!(Pressure::of(701, ceiling), Pressure::Pausing);
        assert_eq!(Pressure::of(801, ceiling), Pressure::Shedding);
        assert!(Pressure::Shedding > Pressure::Pausing);
    }

    #[test]
    fn cgroup_limits_parse_and_no_limit_is_none() {
        assert_eq!(parse_limit("536870912"), Some(536_870_912));
        assert_eq!(parse_limit("max"), None);
        assert_eq!(parse_limit("9223372036854771712"), None);
        assert_eq!(parse_limit(""), None);
    }

    #[test]
    fn the_default_ceiling_is_half_of_something_real() {
        let (ceiling, how) = default_ceiling();
        assert!(ceiling > 1 << 20, "{ceiling} from {how}");
        assert!(how.starts_with("half of"), "{how}");
    }

    #[test]
    fn accounted_kinds_add_up() {
        let accounted = Accounted {
            http: 1,
            inbound: 2,
            outbound: 3,
            history: 4,
            tls: 5,
        };
        assert_eq!(accounted.total(), 15);
        assert_eq!(
            accounted.by_kind().iter().map(|(_, b)| b).sum::<usize>(),
            15
        );
    }
}
