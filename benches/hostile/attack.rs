//! The attackers: many non-blocking connections on one thread and one `mio::Poll`, each
//! playing one script (a partial request head, an unfinished frame, pipelined requests, ...),
//! and the churn loop on a thread of its own.
//!
//! Every connection of a kind sends the same bytes, built once; a connection only keeps its
//! offset into them. Client frames are masked with the all-zero key (valid: RFC 6455 only
//! asks the key to be unpredictable, which the server cannot check), so payloads are zeros.

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::collections::{BTreeMap, VecDeque};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::FromRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Connections being opened (connect or handshake under way) at once: kept under the
/// server's listen backlog (128, the std/mio default), so that the suite alone does not
/// overflow it and measure the kernel's SYN retry (1 s) instead of the server.
const MAX_PENDING: usize = 100;
/// A connection that has not connected or got its 101 in this long counts as refused.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(5);
/// Source addresses 127.0.0.1 ..= 127.0.0.N the connections rotate over: 8 x 28,000
/// ephemeral ports, so the TIME_WAIT of one attack cannot starve the next.
const SOURCE_ADDRS: u32 = 8;
/// Receive and send buffers of an attack socket (the kernel doubles them): the send buffer
/// holds a whole 60 KB frame or the 100 KiB of pipelined requests, so no script waits on it.
const RCVBUF: libc::c_int = 8192;
const SNDBUF: libc::c_int = 64 * 1024;
/// Bytes an endless writer (publisher, pinger) may write per turn before the others.
const TURN: usize = 256 * 1024;
/// Bytes of a partial request head (the server's limit is 8 KiB: stay just under it, in
/// lines short enough and few enough to be a plausible head that is still coming).
pub const HEAD_BYTES: usize = 8000;
/// The unfinished frame: announces 64,000 bytes, sends 60,000.
pub const FRAME_ANNOUNCED: usize = 64_000;
pub const FRAME_SENT: usize = 60_000;
/// Non-final fragments: this many frames of this size (60,000 bytes), never the last.
pub const FRAGMENTS: usize = 5;
pub const FRAGMENT_SIZE: usize = 12_000;
/// Pipelined `GET /` bytes each pipelining client writes.
pub const PIPELINE_BYTES: usize = 100 * 1024;
/// The busy room's message size.
pub const PUBLISH_SIZE: usize = 1024;
/// A ping's payload (the most a control frame may carry).
pub const PING_SIZE: usize = 125;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Kind {
    Head,
    Frame,
    Fragments,
    Pipeline,
    Member,
    Pinger,
    Publisher,
}

impl Kind {
    /// The room an upgrading kind joins; None for the kinds that stay in HTTP.
    fn room(self) -> Option<&'static str> {
        match self {
            Kind::Head | Kind::Pipeline => None,
            Kind::Frame | Kind::Fragments => Some("/attack"),
            Kind::Member | Kind::Publisher => Some("/busy"),
            Kind::Pinger => Some("/pings"),
        }
    }

    /// Whether this attacker reads what the server sends once it is in (the "never read"
    /// kinds only learn of a close from the socket's hang-up).
    fn reads(self) -> bool {
        !matches!(self, Kind::Pipeline | Kind::Member | Kind::Pinger)
    }

    /// Whether its script repeats for ever (written as fast as the server takes it).
    fn endless(self) -> bool {
        matches!(self, Kind::Publisher | Kind::Pinger)
    }
}

/// What one attack opens: connections per kind (the publisher is added when members are),
/// and whether the churn loop runs beside them.
#[derive(Clone, Debug)]
pub struct Plan {
    pub counts: Vec<(Kind, usize)>,
    pub churn: bool,
    /// The longest the opening may take; the hold starts when all are open or at this limit.
    pub ramp_limit: Duration,
    pub hold: Duration,
}

/// What happened to the attack connections.
#[derive(Default, Debug)]
pub struct Tally {
    pub planned: usize,
    /// TCP connections that connected.
    pub connected: usize,
    /// In: for upgrading kinds the 101 came; for HTTP kinds, connected.
    pub established: usize,
    /// Ended before they were in, by reason ("503", "connect refused", "reset", ...).
    pub refused: BTreeMap<String, u64>,
    /// Ended by the server after they were in, by reason ("close 1008", "http 408", ...).
    pub closed: BTreeMap<String, u64>,
    /// Our own failures (descriptors, ports): the suite's limits, not the server's doing.
    pub local: BTreeMap<String, u64>,
    /// Connections still open when the attackers left.
    pub held_at_leave: usize,
    pub ramp: Duration,
    pub bytes_sent: u64,
    pub churn_cycles: u64,
    pub churn_secs: f64,
}

impl Tally {
    pub fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }
    pub fn closed_total(&self) -> u64 {
        self.closed.values().sum()
    }
    fn merge_churn(&mut self, c: ChurnTally) {
        self.churn_cycles = c.cycles;
        self.churn_secs = c.secs;
        for (k, v) in c.refused {
            *self.refused.entry(format!("churn {k}")).or_default() += v;
        }
        for (k, v) in c.local {
            *self.local.entry(format!("churn {k}")).or_default() += v;
        }
    }
}

fn bump(map: &mut BTreeMap<String, u64>, key: impl Into<String>) {
    *map.entry(key.into()).or_default() += 1;
}

/// The bytes every connection of a kind sends.
struct Scripts {
    head: Vec<u8>,
    frame: Vec<u8>,
    fragments: Vec<u8>,
    pipeline: Vec<u8>,
    /// Endless scripts: whole frames, written round and round.
    publish: Vec<u8>,
    ping: Vec<u8>,
}

pub fn upgrade_request(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// A masked (zero key) client frame header.
fn frame_header(first: u8, len: usize) -> Vec<u8> {
    let mut h = vec![first];
    if len < 126 {
        h.push(0x80 | len as u8);
    } else if len <= 0xffff {
        h.push(0x80 | 126);
        h.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        h.push(0x80 | 127);
        h.extend_from_slice(&(len as u64).to_be_bytes());
    }
    h.extend_from_slice(&[0, 0, 0, 0]);
    h
}

impl Scripts {
    fn new() -> Scripts {
        // A head that never ends: a request line and long header lines, no blank line.
        let mut head = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n".to_vec();
        let mut i = 0;
        while head.len() < HEAD_BYTES {
            let line = format!("X-Slow-{i}: ");
            head.extend_from_slice(line.as_bytes());
            let room = (HEAD_BYTES - head.len()).min(1000);
            head.extend(std::iter::repeat_n(b'a', room.saturating_sub(2)));
            if head.len() + 2 <= HEAD_BYTES {
                head.extend_from_slice(b"\r\n");
            }
            i += 1;
        }
        head.truncate(HEAD_BYTES);

        // One final binary frame (FIN set) that announces more than ever comes.
        let mut frame = frame_header(0x82, FRAME_ANNOUNCED);
        frame.resize(frame.len() + FRAME_SENT, 0);

        let mut fragments = Vec::new();
        for f in 0..FRAGMENTS {
            // FIN clear on every one: binary first, continuations after.
            let op = if f == 0 { 0x02 } else { 0x00 };
            fragments.extend(frame_header(op, FRAGMENT_SIZE));
            fragments.resize(fragments.len() + FRAGMENT_SIZE, 0);
        }

        let get = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
        let mut pipeline = Vec::new();
        while pipeline.len() < PIPELINE_BYTES {
            pipeline.extend_from_slice(get);
        }

        let mut one = frame_header(0x82, PUBLISH_SIZE);
        one.resize(one.len() + PUBLISH_SIZE, 0);
        let publish = one.repeat(64 * 1024 / one.len());

        let mut p = frame_header(0x89, PING_SIZE);
        p.resize(p.len() + PING_SIZE, 0);
        let ping = p.repeat(64 * 1024 / p.len());

        Scripts {
            head,
            frame,
            fragments,
            pipeline,
            publish,
            ping,
        }
    }

    fn of(&self, kind: Kind) -> &[u8] {
        match kind {
            Kind::Head => &self.head,
            Kind::Frame => &self.frame,
            Kind::Fragments => &self.fragments,
            Kind::Pipeline => &self.pipeline,
            Kind::Member => &[],
            Kind::Publisher => &self.publish,
            Kind::Pinger => &self.ping,
        }
    }
}

#[derive(PartialEq, Eq, Debug)]
enum Phase {
    Connecting,
    /// Writing the upgrade request (offset in it).
    Request,
    /// Reading the response head.
    Response,
    /// Writing the kind's script (offset in it), then holding.
    Script,
    Hold,
}

struct Conn {
    stream: TcpStream,
    kind: Kind,
    phase: Phase,
    off: usize,
    head: Vec<u8>,
    opened_at: Instant,
    established: bool,
}

enum Step {
    Keep,
    /// An endless writer that did not reach WouldBlock: give it another turn.
    Owes,
    Refused(String),
    Closed(String),
}

fn err_name(e: &io::Error) -> String {
    match e.kind() {
        ErrorKind::ConnectionRefused => "connect refused".into(),
        ErrorKind::ConnectionReset => "reset".into(),
        ErrorKind::BrokenPipe => "broken pipe".into(),
        ErrorKind::TimedOut => "timeout".into(),
        ErrorKind::ConnectionAborted => "aborted".into(),
        _ => format!("{e}"),
    }
}

/// Lowers this thread's priority: the attackers may take what is left of the CPU, not
/// the share of the well-behaved pair, the probes or the server.
pub fn be_nice() {
    // SAFETY: plain syscalls on this thread's own id.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 5);
    }
}

/// Runs the plan against `addr`: opens the connections (at most 256 at once in the making),
/// holds them for `plan.hold` once all are open, then closes them all (the attackers leave)
/// and sets `leave`. Stops early when `abort` is set (the server died).
pub fn run(addr: SocketAddrV4, plan: &Plan, leave: Arc<AtomicBool>, abort: &AtomicBool) -> Tally {
    be_nice();
    let churn = plan.churn.then(|| {
        let leave = leave.clone();
        std::thread::spawn(move || churn(addr, &leave))
    });
    let mut tally = engine(addr, plan, abort);
    leave.store(true, Ordering::SeqCst);
    if let Some(h) = churn
        && let Ok(c) = h.join()
    {
        tally.merge_churn(c);
    }
    tally
}

/// The kinds in opening order: round-robin over the kinds, so that in the all-at-once
/// attack every kind is building up at the same time; the publisher last (its members
/// are in by then).
fn opening_order(counts: &[(Kind, usize)]) -> VecDeque<Kind> {
    let mut left: Vec<(Kind, usize)> = counts
        .iter()
        .filter(|(k, _)| *k != Kind::Publisher)
        .copied()
        .collect();
    let mut order = VecDeque::new();
    while left.iter().any(|(_, n)| *n > 0) {
        for (k, n) in left.iter_mut() {
            if *n > 0 {
                order.push_back(*k);
                *n -= 1;
            }
        }
    }
    for (k, n) in counts {
        if *k == Kind::Publisher {
            order.extend(std::iter::repeat_n(Kind::Publisher, *n));
        }
    }
    order
}

fn engine(addr: SocketAddrV4, plan: &Plan, abort: &AtomicBool) -> Tally {
    let scripts = Scripts::new();
    let mut tally = Tally::default();
    let mut order = opening_order(&plan.counts);
    tally.planned = order.len();
    let Ok(mut poll) = Poll::new() else {
        bump(&mut tally.local, "poll");
        return tally;
    };
    let mut events = Events::with_capacity(1024);
    let mut conns: Slab<Conn> = Slab::new();
    let mut pending = 0usize;
    let mut owed: Vec<usize> = Vec::new();
    let start = Instant::now();
    let ramp_deadline = start + plan.ramp_limit;
    let mut hold_until: Option<Instant> = None;
    let mut next_source = 0u32;
    let mut last_sweep = start;
    loop {
        let now = Instant::now();
        if abort.load(Ordering::Relaxed) {
            break;
        }
        // Open more, up to the number in the making.
        while pending < MAX_PENDING && now < ramp_deadline {
            let Some(kind) = order.pop_front() else { break };
            let src = Ipv4Addr::from(u32::from(Ipv4Addr::LOCALHOST) + next_source % SOURCE_ADDRS);
            next_source += 1;
            match connect_from(src, addr) {
                Ok(std) => {
                    let mut stream = TcpStream::from_std(std);
                    let entry = conns.vacant_entry();
                    let token = Token(entry.key());
                    if let Err(e) = poll.registry().register(
                        &mut stream,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        bump(&mut tally.local, format!("register: {e}"));
                        continue;
                    }
                    entry.insert(Conn {
                        stream,
                        kind,
                        phase: Phase::Connecting,
                        off: 0,
                        head: Vec::new(),
                        opened_at: now,
                        established: false,
                    });
                    pending += 1;
                }
                Err(e) => {
                    let out_of_fds = e.raw_os_error() == Some(libc::EMFILE);
                    let out_of_ports = e.raw_os_error() == Some(libc::EADDRNOTAVAIL);
                    if out_of_fds || out_of_ports {
                        // Our limit, not the server's: stop opening, and say so.
                        let n = order.len() as u64 + 1;
                        *tally.local.entry(err_name(&e)).or_default() += n;
                        order.clear();
                    } else if e.raw_os_error() == Some(libc::EAGAIN) {
                        // Linux: no local port free for this destination just now.
                        bump(&mut tally.local, err_name(&e));
                    } else {
                        bump(&mut tally.refused, err_name(&e));
                    }
                }
            }
        }
        if hold_until.is_none() && ((order.is_empty() && pending == 0) || now >= ramp_deadline) {
            tally.ramp = now - start;
            hold_until = Some(now + plan.hold);
        }
        if hold_until.is_some_and(|h| now >= h) {
            break;
        }
        // Once a second: connections that never got in count as refused (a server that
        // stops reading them holds them for ever, and they would hold our ramp slots).
        if now - last_sweep >= Duration::from_secs(1) {
            last_sweep = now;
            let late: Vec<usize> = conns
                .iter()
                .filter(|(_, c)| !c.established && now - c.opened_at > HANDSHAKE_LIMIT)
                .map(|(k, _)| k)
                .collect();
            for key in late {
                if let Some(c) = conns.try_remove(key) {
                    pending -= 1;
                    let what = if c.phase == Phase::Connecting {
                        "connect timeout"
                    } else {
                        "no answer in 5 s"
                    };
                    bump(&mut tally.refused, what);
                }
            }
        }
        let timeout = if owed.is_empty() {
            Duration::from_millis(20)
        } else {
            Duration::ZERO
        };
        if let Err(e) = poll.poll(&mut events, Some(timeout))
            && e.kind() != ErrorKind::Interrupted
        {
            bump(&mut tally.local, format!("poll: {e}"));
            break;
        }
        let mut keys: Vec<usize> = events.iter().map(|e| e.token().0).collect();
        let hup: Vec<bool> = events
            .iter()
            .map(|e| e.is_read_closed() || e.is_error())
            .collect();
        keys.append(&mut owed);
        let mut hups = hup.into_iter();
        for key in keys {
            let hung_up = hups.next().unwrap_or(false);
            let Some(c) = conns.get_mut(key) else {
                continue; // gone earlier in this batch
            };
            let was_in = c.established;
            let step = c.advance(&scripts, hung_up, &mut tally);
            if !was_in && c.established {
                pending -= 1;
            }
            match step {
                Step::Keep => {}
                Step::Owes => {
                    if !owed.contains(&key) {
                        owed.push(key);
                    }
                }
                Step::Refused(why) => {
                    conns.remove(key);
                    pending -= 1;
                    bump(&mut tally.refused, why);
                }
                Step::Closed(why) => {
                    conns.remove(key);
                    if why == "http 503" {
                        // An HTTP attacker turned away (the server is full): a refusal.
                        bump(&mut tally.refused, why);
                    } else {
                        bump(&mut tally.closed, why);
                    }
                }
            }
        }
    }
    // The attackers leave: every socket closed at once.
    tally.held_at_leave = conns.len();
    drop(conns);
    tally
}

impl Conn {
    /// Moves this connection on after an event (or a turn it was owed).
    fn advance(&mut self, scripts: &Scripts, hung_up: bool, tally: &mut Tally) -> Step {
        loop {
            match self.phase {
                Phase::Connecting => {
                    if let Ok(Some(e)) | Err(e) = self.stream.take_error() {
                        return Step::Refused(err_name(&e));
                    }
                    match self.stream.peer_addr() {
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::NotConnected => {
                            if hung_up {
                                return Step::Refused("reset".into());
                            }
                            return Step::Keep; // still connecting
                        }
                        Err(e) => return Step::Refused(err_name(&e)),
                    }
                    let _ = self.stream.set_nodelay(true);
                    tally.connected += 1;
                    self.off = 0;
                    if self.kind.room().is_some() {
                        self.phase = Phase::Request;
                    } else {
                        self.established = true;
                        tally.established += 1;
                        self.phase = Phase::Script;
                    }
                }
                Phase::Request => {
                    let req = upgrade_request(self.kind.room().unwrap_or("/"));
                    match self.write_from(&req, tally) {
                        Ok(true) => {
                            self.phase = Phase::Response;
                            self.off = 0;
                        }
                        Ok(false) => return Step::Keep,
                        Err(e) => return Step::Refused(err_name(&e)),
                    }
                }
                Phase::Response => {
                    if let Some(step) = self.read_response(tally) {
                        return step;
                    }
                }
                Phase::Script => {
                    if self.kind.endless() {
                        return self.write_endless(scripts.of(self.kind), tally);
                    }
                    match self.write_from(scripts.of(self.kind), tally) {
                        Ok(true) => self.phase = Phase::Hold,
                        Ok(false) => return self.watch(hung_up),
                        Err(e) => return Step::Closed(err_name(&e)),
                    }
                }
                Phase::Hold => return self.watch(hung_up),
            }
        }
    }

    /// Writes `bytes[self.off..]`; Ok(true) when all of it has gone.
    fn write_from(&mut self, bytes: &[u8], tally: &mut Tally) -> io::Result<bool> {
        while self.off < bytes.len() {
            match self.stream.write(&bytes[self.off..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.off += n;
                    tally.bytes_sent += n as u64;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Writes round and round a script of whole frames, one turn's worth.
    fn write_endless(&mut self, bytes: &[u8], tally: &mut Tally) -> Step {
        let mut turn = 0;
        while turn < TURN {
            match self.stream.write(&bytes[self.off..]) {
                Ok(0) => return Step::Closed("write zero".into()),
                Ok(n) => {
                    self.off = (self.off + n) % bytes.len();
                    tally.bytes_sent += n as u64;
                    turn += n;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return self.watch(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Step::Closed(err_name(&e)),
            }
        }
        match self.watch(false) {
            Step::Keep => Step::Owes,
            other => other,
        }
    }

    /// Reads the response to the upgrade request: 101 lets the connection in (None: go on
    /// with the script at once, the socket is writable since it took the request).
    fn read_response(&mut self, tally: &mut Tally) -> Option<Step> {
        let mut buf = [0u8; 1024];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return Some(Step::Refused("eof before 101".into())),
                Ok(n) => {
                    self.head.extend_from_slice(&buf[..n]);
                    if let Some(end) = find(&self.head, b"\r\n\r\n") {
                        let status = status_of(&self.head[..end]);
                        self.head = Vec::new();
                        if status != Some(101) {
                            return Some(Step::Refused(match status {
                                Some(s) => format!("http {s}"),
                                None => "bad response".into(),
                            }));
                        }
                        self.established = true;
                        tally.established += 1;
                        self.off = 0;
                        self.phase = if self.kind == Kind::Member {
                            Phase::Hold
                        } else {
                            Phase::Script
                        };
                        return None;
                    }
                    if self.head.len() > 8192 {
                        return Some(Step::Refused("bad response".into()));
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Some(Step::Keep),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Some(Step::Refused(err_name(&e))),
            }
        }
    }

    /// While holding: readers read what the server sends and learn why it closes;
    /// never-readers only notice the hang-up.
    fn watch(&mut self, hung_up: bool) -> Step {
        if !self.kind.reads() {
            return if hung_up {
                Step::Closed("hang-up".into())
            } else {
                Step::Keep
            };
        }
        let mut buf = [0u8; 4096];
        let mut why: Option<String> = None;
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return Step::Closed(why.unwrap_or_else(|| "eof".into())),
                Ok(n) => {
                    if why.is_none() {
                        why = classify(&buf[..n], self.kind);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    return match why {
                        // The server said why; we need not wait for its FIN.
                        Some(w) => Step::Closed(w),
                        None => Step::Keep,
                    };
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Step::Closed(why.unwrap_or_else(|| err_name(&e))),
            }
        }
    }
}

/// Why the server is closing, from what it sent: an HTTP status (HTTP kinds) or a Close
/// frame's code (WebSocket kinds); None for anything else (pings, pages).
fn classify(data: &[u8], kind: Kind) -> Option<String> {
    if kind.room().is_none() {
        // Attack 1 gets nothing before its head ends, so any status is the server's answer.
        return status_of(data).map(|s| format!("http {s}"));
    }
    let mut p = data;
    while p.len() >= 2 {
        let op = p[0] & 0x0f;
        let (len, hdr) = match p[1] & 0x7f {
            126 if p.len() >= 4 => (u16::from_be_bytes([p[2], p[3]]) as usize, 4),
            127 if p.len() >= 10 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&p[2..10]);
                (u64::from_be_bytes(b) as usize, 10)
            }
            n if n < 126 => (n as usize, 2),
            _ => return None,
        };
        if op == 0x8 {
            return Some(if len >= 2 && p.len() >= hdr + 2 {
                format!("close {}", u16::from_be_bytes([p[hdr], p[hdr + 1]]))
            } else {
                "close".into()
            });
        }
        if p.len() < hdr + len {
            return None;
        }
        p = &p[hdr + len..];
    }
    None
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The status code of an HTTP/1.x response head.
fn status_of(head: &[u8]) -> Option<u16> {
    if !head.starts_with(b"HTTP/1.") || head.len() < 12 {
        return None;
    }
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// A non-blocking TCP connect from `src` (port chosen at connect time, so the port space
/// is per destination) to `dst`. (As in benches/relay/ws.rs.)
fn connect_from(src: Ipv4Addr, dst: SocketAddrV4) -> io::Result<std::net::TcpStream> {
    fn sin(a: SocketAddrV4) -> libc::sockaddr_in {
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            },
            sin_zero: [0; 8],
        }
    }
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor we own; it is closed on error and handed
    // to TcpStream (which then owns it) on success.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let stream = std::net::TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        let optlen = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let p = &one as *const libc::c_int as *const libc::c_void;
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            p,
            optlen,
        );
        // Small buffers, set before connect so the window is small from the start: a remote
        // attacker's buffers are on its own machine, and here they would otherwise take up
        // to 32 MiB (tcp_rmem) and 4 MiB (tcp_wmem) each of the kernel memory the server
        // shares, and the machine-wide TCP figure would no longer show the server's part.
        for (opt, size) in [(libc::SO_RCVBUF, RCVBUF), (libc::SO_SNDBUF, SNDBUF)] {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &size as *const libc::c_int as *const libc::c_void,
                optlen,
            );
        }
        let s = sin(SocketAddrV4::new(src, 0));
        if libc::bind(fd, &s as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(io::Error::last_os_error());
        }
        let d = sin(dst);
        if libc::connect(fd, &d as *const _ as *const libc::sockaddr, len) != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(e);
            }
        }
        Ok(stream)
    }
}

#[derive(Default)]
struct ChurnTally {
    cycles: u64,
    secs: f64,
    refused: BTreeMap<String, u64>,
    local: BTreeMap<String, u64>,
}

/// Attack 7: connect, upgrade, send a Close, close; again, as fast as one thread goes,
/// until `leave` is set.
fn churn(addr: SocketAddrV4, leave: &AtomicBool) -> ChurnTally {
    be_nice();
    let mut t = ChurnTally::default();
    let req = upgrade_request("/churn");
    // Close 1000, masked with the zero key.
    let close = [0x88u8, 0x82, 0, 0, 0, 0, 0x03, 0xe8];
    let start = Instant::now();
    let mut n = 0u32;
    while !leave.load(Ordering::Relaxed) {
        let src = Ipv4Addr::from(u32::from(Ipv4Addr::LOCALHOST) + n % SOURCE_ADDRS);
        n = n.wrapping_add(1);
        match churn_once(src, addr, &req, &close) {
            Ok(()) => t.cycles += 1,
            Err(ChurnError::Local(e)) => {
                bump(&mut t.local, e);
                // Out of ports or descriptors: give the kernel a moment.
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(ChurnError::Refused(e)) => bump(&mut t.refused, e),
        }
    }
    t.secs = start.elapsed().as_secs_f64();
    t
}

enum ChurnError {
    Local(String),
    Refused(String),
}

fn churn_once(
    src: Ipv4Addr,
    addr: SocketAddrV4,
    req: &[u8],
    close: &[u8],
) -> Result<(), ChurnError> {
    let s = connect_from(src, addr).map_err(|e| match e.raw_os_error() {
        Some(libc::EMFILE | libc::EADDRNOTAVAIL | libc::EAGAIN) => ChurnError::Local(err_name(&e)),
        _ => ChurnError::Refused(err_name(&e)),
    })?;
    // Wait for the connect with poll(2), then go blocking with timeouts.
    let mut pfd = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(&s),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd on a descriptor we own.
    let r = unsafe { libc::poll(&mut pfd, 1, 1000) };
    if r <= 0 {
        return Err(ChurnError::Refused("connect timeout".into()));
    }
    if let Ok(Some(e)) | Err(e) = s.take_error() {
        return Err(ChurnError::Refused(err_name(&e)));
    }
    let refused = |e: io::Error| ChurnError::Refused(err_name(&e));
    s.set_nonblocking(false).map_err(refused)?;
    s.set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(refused)?;
    let mut s = s;
    s.write_all(req).map_err(refused)?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let n = s.read(&mut buf).map_err(refused)?;
        if n == 0 {
            return Err(ChurnError::Refused("eof before 101".into()));
        }
        head.extend_from_slice(&buf[..n]);
        if find(&head, b"\r\n\r\n").is_some() {
            break;
        }
        if head.len() > 8192 {
            return Err(ChurnError::Refused("bad response".into()));
        }
    }
    match status_of(&head) {
        Some(101) => {}
        Some(s) => return Err(ChurnError::Refused(format!("http {s}"))),
        None => return Err(ChurnError::Refused("bad response".into())),
    }
    let _ = s.write_all(close);
    Ok(())
}
