//! Heap check: relaying one message to N members must cost O(1) allocations, not O(N).
//!
//!   cargo bench --bench alloc
//!
//! A counting global allocator wraps the system one. The real server runs in-process on
//! 127.0.0.1:0 in its own thread (as tests/common does); its allocations are counted apart from
//! the clients' (a thread-local flag), and a room with no member but the publisher gives the
//! baseline cost of a message that is received and dropped.
//!
//! Clients are raw TCP sockets on the main thread: the upgrade is done by hand, and frames are
//! read into fixed, preallocated buffers, so the client side allocates nothing per message (its
//! count is printed too, and checked to be zero).
//!
//! For each N, one publisher and N subscribers join one room; warm-up batches bring queues and
//! buffers to their steady size; then K messages go out in batches, each batch read by every
//! subscriber before the next is sent. The bench exits non-zero if the server's allocations per
//! message at the largest N exceed twice those at the smallest N plus a small constant.
//!
//! It also reports the heap an idle WebSocket connection holds: the server thread's live heap
//! bytes (allocated less freed, as requested from the allocator, without its own overhead) with
//! 1000 idle members open, less the figure before, per member. Counted, not sampled from RSS,
//! so it works the same under qemu-user for the ARM targets (docs/targets.md):
//!
//!   cargo bench --bench alloc -- --idle                    # only the idle-connection figure

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use wschat::{Config, Server};

// ---------------------------------------------------------------------------------------------
// The counting allocator

/// Counters per side: index 0 the server thread, 1 every other thread (the clients).
struct Counts {
    allocs: [AtomicU64; 2],
    reallocs: [AtomicU64; 2],
    bytes: [AtomicU64; 2],
    /// Bytes allocated less bytes freed on that side. The server thread frees what it
    /// allocated, so its figure is the heap it holds.
    live: [AtomicI64; 2],
}

static COUNTS: Counts = Counts {
    allocs: [AtomicU64::new(0), AtomicU64::new(0)],
    reallocs: [AtomicU64::new(0), AtomicU64::new(0)],
    bytes: [AtomicU64::new(0), AtomicU64::new(0)],
    live: [AtomicI64::new(0), AtomicI64::new(0)],
};

thread_local! {
    /// Set on the server's thread. A const-initialised Cell has no destructor, so reading it
    /// from inside the allocator never allocates or registers anything.
    static IS_SERVER: Cell<bool> = const { Cell::new(false) };
}

fn side() -> usize {
    // During thread teardown the slot may be gone: count such calls as the clients'.
    IS_SERVER
        .try_with(|s| s.get())
        .map_or(1, |s| if s { 0 } else { 1 })
}

struct Counting;

// SAFETY: every call is forwarded unchanged to the system allocator; counting touches only
// atomics and a destructor-free thread-local.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let s = side();
        COUNTS.allocs[s].fetch_add(1, Relaxed);
        COUNTS.bytes[s].fetch_add(layout.size() as u64, Relaxed);
        COUNTS.live[s].fetch_add(layout.size() as i64, Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let s = side();
        COUNTS.allocs[s].fetch_add(1, Relaxed);
        COUNTS.bytes[s].fetch_add(layout.size() as u64, Relaxed);
        COUNTS.live[s].fetch_add(layout.size() as i64, Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        COUNTS.live[side()].fetch_sub(layout.size() as i64, Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let s = side();
        COUNTS.reallocs[s].fetch_add(1, Relaxed);
        COUNTS.bytes[s].fetch_add(new_size.saturating_sub(layout.size()) as u64, Relaxed);
        COUNTS.live[s].fetch_add(new_size as i64 - layout.size() as i64, Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A reading of the counters: (alloc + realloc calls, bytes) per side.
#[derive(Clone, Copy)]
struct Snap {
    calls: [u64; 2],
    bytes: [u64; 2],
}

fn snap() -> Snap {
    let calls = |s: usize| COUNTS.allocs[s].load(Relaxed) + COUNTS.reallocs[s].load(Relaxed);
    Snap {
        calls: [calls(0), calls(1)],
        bytes: [COUNTS.bytes[0].load(Relaxed), COUNTS.bytes[1].load(Relaxed)],
    }
}

impl std::ops::Sub for Snap {
    type Output = Snap;
    fn sub(self, o: Snap) -> Snap {
        Snap {
            calls: [self.calls[0] - o.calls[0], self.calls[1] - o.calls[1]],
            bytes: [self.bytes[0] - o.bytes[0], self.bytes[1] - o.bytes[1]],
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clients: raw sockets, fixed buffers

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
/// Long enough that a stuck server fails the bench instead of hanging it.
const TIMEOUT: Duration = Duration::from_secs(20);

/// Connects and upgrades by hand; the head is read byte by byte so nothing after it is taken.
fn connect(addr: SocketAddr, room: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    write!(
        s,
        "GET {room} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .expect("request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!("handshake ended early: {other:?}"),
        }
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "no upgrade");
    // The server joins the room before it queues the 101: this member is in the room now.
    s
}

/// One masked frame of `size` payload bytes, built once and sent many times (the content is
/// the same for every message: the server relays bytes, it does not look at them).
fn masked_frame(opcode: u8, size: usize) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    match size {
        0..=125 => f.push(0x80 | size as u8),
        126..=0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(size as u16).to_be_bytes());
        }
        _ => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(size as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&MASK);
    f.extend((0..size).map(|i| b'a' ^ MASK[i % 4]));
    f
}

/// Reads from `s` into the fixed `buf` until `want` whole data frames have arrived. Frames are
/// skipped over in place; a partial frame's bytes are only counted, never kept, so the buffer
/// never needs to hold a whole frame. Allocates nothing.
fn read_frames(s: &mut TcpStream, buf: &mut [u8], want: usize) {
    // State of the frame in progress: header bytes collected, payload bytes still to skip.
    let mut hdr = [0u8; 10];
    let mut hlen = 0usize;
    let mut skip = 0u64;
    let mut got = 0usize;
    while got < want {
        let n = match s.read(buf) {
            Ok(0) => panic!("server closed a member's connection"),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("read: {e} after {got} of {want} frames"),
        };
        let mut i = 0;
        while i < n {
            if skip > 0 {
                let take = skip.min((n - i) as u64);
                skip -= take;
                i += take as usize;
                if skip == 0 {
                    got += 1;
                }
                continue;
            }
            hdr[hlen] = buf[i];
            hlen += 1;
            i += 1;
            if hlen < 2 {
                continue;
            }
            let need = match hdr[1] & 0x7f {
                126 => 4,
                127 => 10,
                _ => 2,
            };
            if hlen < need {
                continue;
            }
            // Only data frames are expected: no ping comes within the ping interval.
            assert!(matches!(hdr[0] & 0x0f, 1 | 2), "unexpected frame");
            skip = match need {
                4 => u16::from_be_bytes([hdr[2], hdr[3]]) as u64,
                10 => u64::from_be_bytes([
                    hdr[2], hdr[3], hdr[4], hdr[5], hdr[6], hdr[7], hdr[8], hdr[9],
                ]),
                _ => (hdr[1] & 0x7f) as u64,
            };
            hlen = 0;
            if skip == 0 {
                got += 1;
            }
        }
        // The publisher sends the next batch only after every member has read this one.
        assert!(got <= want, "more frames than sent");
    }
    assert_eq!(hlen + skip as usize, 0, "a frame past the expected ones");
}

/// A ping from the publisher, and its pong: the server handles one connection's frames in
/// order, so when the pong is back every message before the ping has been relayed. Without it
/// a room of no subscribers would be measured before the server saw the messages. Every
/// measurement pays it, once per batch.
fn sync(publisher: &mut TcpStream) {
    let ping = [0x89, 0x80, MASK[0], MASK[1], MASK[2], MASK[3]];
    publisher.write_all(&ping).expect("ping");
    let mut pong = [0u8; 2];
    publisher.read_exact(&mut pong).expect("pong");
    assert_eq!(pong, [0x8a, 0x00], "the publisher gets only its pong");
}

// ---------------------------------------------------------------------------------------------
// The measurement

struct Case {
    label: &'static str,
    size: usize,
    /// Messages measured.
    k: usize,
    /// Messages per batch: the publisher sends a batch, then every member reads all of it.
    batch: usize,
    /// Warm-up batches before the measurement.
    warmup: usize,
}

struct Row {
    members: usize,
    server: Snap,
    messages: usize,
}

/// One room with one publisher and `members` subscribers; returns the counts of the measured
/// messages, the worst (highest) of `repeats` measurements, so an occasional growth of a
/// buffer is not hidden.
fn measure(addr: SocketAddr, members: usize, case: &Case, repeats: usize) -> Row {
    // A room of its own: nothing left over from another measurement reaches these members.
    let room = format!("/alloc-{}-{members}", case.size);
    let mut publisher = connect(addr, &room);
    let mut subs: Vec<TcpStream> = (0..members).map(|_| connect(addr, &room)).collect();
    let frame = masked_frame(0x1, case.size);
    let batch_bytes: Vec<u8> = frame.repeat(case.batch);
    let mut buf = vec![0u8; 64 * 1024];

    let mut round = |publisher: &mut TcpStream, subs: &mut [TcpStream], batches: usize| {
        for _ in 0..batches {
            publisher.write_all(&batch_bytes).expect("publish");
            for s in subs.iter_mut() {
                read_frames(s, &mut buf, case.batch);
            }
            sync(publisher);
        }
    };
    round(&mut publisher, &mut subs, case.warmup);
    let mut worst: Option<Snap> = None;
    for _ in 0..repeats {
        let before = snap();
        round(&mut publisher, &mut subs, case.k / case.batch);
        let d = snap() - before;
        assert_eq!(
            d.calls[1], 0,
            "the clients allocated while measuring: the check would be unfair"
        );
        if worst.is_none_or(|w| d.calls[0] > w.calls[0]) {
            worst = Some(d);
        }
    }
    drop(subs);
    drop(publisher);
    Row {
        members,
        server: worst.unwrap_or(Snap {
            calls: [0; 2],
            bytes: [0; 2],
        }),
        messages: case.k / case.batch * case.batch,
    }
}

/// Idle connections opened for the per-connection heap figure.
const IDLE_CONNECTIONS: usize = 1000;

/// The server's live heap per idle WebSocket connection, in bytes: `IDLE_CONNECTIONS` members
/// in one room, then as many in a room each, each on a fresh server so that the growth of its
/// tables (the connection slab, the timer heap, the room table) is counted as the
/// connections' own. Returns (one room, a room each).
fn idle_heap() -> Result<(f64, f64), String> {
    let measure = |room_of: &dyn Fn(usize) -> String| -> Result<f64, String> {
        let (addr, handle, thread) = start_server();
        // The first connection brings one-time state (the first accept, the first room):
        // open and close one before measuring.
        drop(connect(addr, "/idle-warm-up"));
        settle();
        let before = COUNTS.live[0].load(Relaxed);
        let mut members: Vec<TcpStream> = (0..IDLE_CONNECTIONS)
            .map(|i| connect(addr, &room_of(i)))
            .collect();
        // Connections are handled in order: once the last one's pong is back, the server has
        // finished with every upgrade before it.
        if let Some(last) = members.last_mut() {
            sync(last);
        }
        let held = COUNTS.live[0].load(Relaxed) - before;
        drop(members);
        handle.shutdown();
        match thread.join() {
            Ok(Ok(())) => Ok(held as f64 / IDLE_CONNECTIONS as f64),
            Ok(Err(e)) => Err(format!("server failed: {e}")),
            Err(_) => Err("server thread panicked".into()),
        }
    };
    let one_room = measure(&|_| "/idle".to_string())?;
    let own_rooms = measure(&|i| format!("/idle-{i}"))?;
    Ok((one_room, own_rooms))
}

type Running = (
    SocketAddr,
    wschat::ServerHandle,
    std::thread::JoinHandle<Result<(), wschat::ServerError>>,
);

/// The real server on 127.0.0.1:0 in a thread whose allocations count as the server's.
fn start_server() -> Running {
    let config = Config {
        bind: "127.0.0.1".parse().expect("address"),
        port: 0,
        systemd: false,
        stats_interval: None,
        ..Config::default()
    };
    let server = Server::bind(config).expect("server binds");
    let addr = server.local_addr();
    let handle = server.handle();
    let thread = std::thread::spawn(move || {
        IS_SERVER.with(|s| s.set(true));
        server.run()
    });
    (addr, handle, thread)
}

/// Waits until the server's live heap has not changed for 300 ms (at most 30 s): closed
/// connections from an earlier measurement must be gone before the next one starts.
fn settle() {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut last = COUNTS.live[0].load(Relaxed);
    let mut quiet_since = std::time::Instant::now();
    while std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        let now = COUNTS.live[0].load(Relaxed);
        if now != last {
            last = now;
            quiet_since = std::time::Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_millis(300) {
            return;
        }
    }
}

/// Allocations per message may grow at most this much from the smallest room to the largest:
/// `per_msg(max N) <= FACTOR * per_msg(min N) + SLACK`.
const FACTOR: f64 = 2.0;
const SLACK: f64 = 2.0;

fn run_case(addr: SocketAddr, case: &Case, sizes: &[usize]) -> bool {
    println!(
        "\n{}: {} B messages, {} measured in batches of {} (after {} warm-up batches), worst of 3",
        case.label, case.size, case.k, case.batch, case.warmup
    );
    println!(
        "  {:>7} {:>12} {:>12} {:>14} {:>14} {:>12}",
        "members", "allocs", "allocs/msg", "allocs/deliv", "bytes/msg", "client allocs"
    );
    let mut rows = Vec::new();
    for &n in sizes {
        let row = measure(addr, n, case, 3);
        let per_msg = row.server.calls[0] as f64 / row.messages as f64;
        let per_delivery = if n > 0 {
            format!("{:.4}", per_msg / n as f64)
        } else {
            "-".into()
        };
        println!(
            "  {:>7} {:>12} {:>12.2} {:>14} {:>14.0} {:>12}",
            n,
            row.server.calls[0],
            per_msg,
            per_delivery,
            row.server.bytes[0] as f64 / row.messages as f64,
            row.server.calls[1],
        );
        rows.push((row.members, per_msg));
    }
    let with_members: Vec<&(usize, f64)> = rows.iter().filter(|r| r.0 > 0).collect();
    let (Some(small), Some(large)) = (with_members.first(), with_members.last()) else {
        return true;
    };
    let limit = FACTOR * small.1 + SLACK;
    let ok = large.1 <= limit;
    let slope = (large.1 - small.1) / (large.0 - small.0).max(1) as f64;
    println!(
        "  {}: {:.2} allocs/msg at N={} vs limit {:.2} ({FACTOR} × {:.2} at N={} + {SLACK}); \
         {:+.5} allocs per extra member",
        if ok { "O(1) ok" } else { "FAIL, grows with N" },
        large.1,
        large.0,
        limit,
        small.1,
        small.0,
        slope
    );
    ok
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    let idle_only = args.iter().any(|a| a == "--idle");
    let sizes: &[usize] = if smoke {
        &[0, 10, 100]
    } else {
        &[0, 10, 100, 1000]
    };
    let (addr, handle, thread) = start_server();
    println!("heap check: allocations on the server thread per relayed message");
    println!("(allocs = alloc + realloc calls; a delivery is one message to one member)");
    let small = Case {
        label: "small",
        size: 64,
        k: 100,
        batch: 10,
        warmup: 20,
    };
    // The shared-frame path. One message in flight: N queued copies of 64 KiB count against
    // the process-wide outbound budget.
    let large = Case {
        label: "large (shared frame)",
        size: 64 * 1024,
        // Counts are exact, not noisy: a few messages suffice, and 1000 members × 64 KiB is
        // 64 MB of loopback traffic per message.
        k: 10,
        batch: 1,
        warmup: 3,
    };
    // One message in flight: every message is its own read, fan-out and flush pass.
    let single = Case {
        label: "small, one in flight",
        batch: 1,
        ..small
    };
    // Bursts: 250 small messages reach each member in one pass, over 16 KiB of queue (the
    // size up to which a flushed buffer is kept for reuse), as under a saturated fan-out.
    let burst = Case {
        label: "small, bursts of 250",
        k: 500,
        batch: 250,
        warmup: 4,
        ..small
    };
    let mut ok = true;
    if !idle_only {
        for case in [&small, &single, &burst, &large] {
            ok &= run_case(addr, case, sizes);
        }
    }

    handle.shutdown();
    match thread.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("server failed: {e}");
            return ExitCode::FAILURE;
        }
        Err(_) => return ExitCode::FAILURE,
    }
    match idle_heap() {
        Ok((one_room, own_rooms)) => println!(
            "\nheap per idle connection ({IDLE_CONNECTIONS} open, {}-bit target): \
             {one_room:.0} bytes in one room, {own_rooms:.0} bytes in a room each",
            usize::BITS
        ),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
