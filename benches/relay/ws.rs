//! The load generator: many non-blocking WebSocket client connections on one
//! thread and one `mio::Poll`.
//!
//! - Frames are parsed in place from a fixed per-connection read buffer; a partial
//!   frame is moved to the front, nothing is allocated per message.
//! - Client frames are masked (RFC 6455 §5.3) with one fixed key, so the masked
//!   padding of every message is computed once and copied.
//! - A message is text: a 16-byte header and then 'x' padding up to the message
//!   size. The header is two 8-byte words of 7 bits per byte (so every byte is
//!   ASCII and the message valid UTF-8): publisher id (16 bits) and sequence
//!   number (40 bits), then the send time in ns since the generator's start (56
//!   bits, two years) from one monotonic clock. A word decodes in a few shifts.
//!   Every receiver checks each publisher's sequence numbers for gaps and
//!   duplicates.
//! - Each socket is read once per readiness event into its 64 KiB buffer (a
//!   short read means drained), so the kernel's cost (the read and the ACK it
//!   triggers) is paid per batch the server wrote, not per message.
//! - With `offer_deflate`, every upgrade offers permessage-deflate as Chrome does
//!   (`client_max_window_bits`); a connection whose 101 accepts it inflates every
//!   compressed (RSV1) message with its own inflate stream, which keeps the 32 KiB
//!   window a server with context takeover refers back into, before checking it. Bodies
//!   then come from a JSON-like chat corpus (`set_corpus`), at a different offset for
//!   each message, so that neither side compresses a message against an identical one.

use crate::stats::Histogram;
use crate::v1;
use miniz_oxide::inflate::stream::{InflateState, inflate};
use miniz_oxide::{DataFormat, MZError, MZFlush, MZStatus};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

/// Bytes of the message header (publisher id and sequence, send time: 8 + 8).
pub const HDR: usize = 16;
/// Bits of the sequence number in the first header word; the publisher id has the rest.
const SEQ_BITS: u32 = 40;
/// Publisher ids the header can hold (16 bits).
pub const MAX_PUBLISHERS: usize = 1 << (56 - SEQ_BITS);
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
/// The key of RFC 6455's example and the accept value it must produce.
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &[u8] = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
/// Handshakes in progress at once; more would overflow the listen backlog.
const MAX_PENDING: usize = 256;
/// Source addresses 127.0.0.1 ..= 127.0.0.N the connections rotate over.
const SOURCE_ADDRS: u32 = 16;
/// Chrome's permessage-deflate offer.
const DEFLATE_OFFER: &str = "permessage-deflate; client_max_window_bits";
/// What a sync flush ends with; the sender strips it, the receiver appends it (RFC 7692 7.2.2).
const TRAILER: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Phase {
    Connecting,
    Handshake,
    Open,
    Closed,
}

pub struct Conn {
    stream: Option<TcpStream>,
    /// The TLS session when the generator runs with `--tls`.
    tls: Option<Box<crate::tls::Client>>,
    pub phase: Phase,
    rbuf: Box<[u8]>,
    rlen: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    /// Next expected sequence number per publisher id.
    pub next_seq: Box<[u64]>,
    /// Header of a fragmented message in progress.
    frag: Option<(u32, u64, u64)>,
    frag_len: usize,
    /// Set when this connection publishes.
    pub pub_id: Option<u32>,
    pub sent: u64,
    pub received: u64,
    dirty: bool,
    /// The 101 accepted permessage-deflate: this connection's inflate stream.
    inflate: Option<Box<InflateState>>,
    /// Asked for `wschat.v1` (the 101 must accept it): text deliveries are message lines.
    v1: bool,
}

/// What the generator counts; separate from the connections so that a
/// connection and the counters can be borrowed together.
pub struct Counters {
    pub hist: Histogram,
    /// Latency is recorded for messages sent in [record_from, record_until) (ns).
    pub record_from: u64,
    pub record_until: u64,
    pub delivered: u64,
    pub delivered_bytes: u64,
    /// Successful read calls on open connections: deliveries per read shows how much
    /// the server batches (and what each delivery costs the generator's kernel).
    pub reads: u64,
    /// Successful write calls (publishers' messages, pongs, handshakes).
    pub writes: u64,
    pub gaps: u64,
    pub dups: u64,
    pub bad: u64,
    pub opened: usize,
    /// Connections that were open and then closed (by the server or an error).
    pub lost: usize,
    /// Connections that never opened (refused, reset, handshake rejected).
    pub failed: usize,
    pub pending: usize,
    pub last_error: String,
    /// Connections closed by the generator right after their upgrade (`Gen::churn`).
    pub churned: u64,
    now_ns: u64,
    /// Bytes read on open connections, frames as they came: the bytes on the wire.
    pub wire_bytes: u64,
    /// Deliveries that arrived compressed (RSV1) and were inflated.
    pub inflated: u64,
    /// Where a compressed message is inflated (reused).
    inflate_out: Vec<u8>,
    /// Ciphertext read from a socket before rustls takes it (TLS only): one 64 KiB read per
    /// readiness event, as for plain connections, instead of rustls's 4 KiB reads.
    cipher: Box<[u8]>,
}

pub struct Gen {
    poll: Poll,
    events: Events,
    pub conns: Vec<Conn>,
    pub c: Counters,
    rbuf_size: usize,
    n_pubs: usize,
    dirty: Vec<usize>,
    /// Masked 'x' padding; index i holds b'x' ^ MASK[i % 4], copied from HDR on.
    pad: Vec<u8>,
    request: Vec<u8>,
    /// Offer permessage-deflate in every upgrade (set before connecting).
    pub offer_deflate: bool,
    /// Masked text that message bodies are cut from; None: the 'x' padding.
    corpus: Option<Vec<u8>>,
    tls: Option<crate::tls::ClientConfig>,
    /// Close every connection as soon as its upgrade completes (the handshake-rate scenario).
    pub churn: bool,
    /// Ask for `wschat.v1` in the upgrades that follow (see v1.rs).
    pub v1: bool,
}

impl Gen {
    /// `n_pubs`: publisher ids 0..n_pubs (sizes each connection's sequence table);
    /// `rbuf_size`: per-connection read buffer, at least one whole frame;
    /// `max_msg`: the largest message this generator will send.
    pub fn new(n_pubs: usize, rbuf_size: usize, max_msg: usize) -> io::Result<Gen> {
        if n_pubs > MAX_PUBLISHERS {
            return Err(io::Error::other(format!(
                "{n_pubs} publishers: the message header holds at most {MAX_PUBLISHERS}"
            )));
        }
        let pad = (0..max_msg.max(HDR)).map(|i| b'x' ^ MASK[i % 4]).collect();
        Ok(Gen {
            poll: Poll::new()?,
            events: Events::with_capacity(1024),
            conns: Vec::new(),
            c: Counters {
                hist: Histogram::new(),
                record_from: u64::MAX,
                record_until: u64::MAX,
                delivered: 0,
                delivered_bytes: 0,
                reads: 0,
                writes: 0,
                gaps: 0,
                dups: 0,
                bad: 0,
                opened: 0,
                lost: 0,
                failed: 0,
                pending: 0,
                last_error: String::new(),
                churned: 0,
                now_ns: 0,
                wire_bytes: 0,
                inflated: 0,
                inflate_out: Vec::new(),
                cipher: Box::default(),
            },
            rbuf_size,
            n_pubs,
            dirty: Vec::new(),
            pad,
            request: Vec::new(),
            offer_deflate: false,
            corpus: None,
            tls: crate::TLS_CLIENT.get().cloned(),
            churn: false,
            v1: false,
        })
    }

    /// Message bodies from now on: `len` bytes of JSON-like chat lines (at least the
    /// largest body plus some room to vary the offset), masked once.
    pub fn set_corpus(&mut self, len: usize) {
        let text = chat_corpus(len);
        self.corpus = Some(
            text.iter()
                .enumerate()
                .map(|(i, b)| b ^ MASK[i % 4])
                .collect(),
        );
    }

    pub fn now_ns(&self) -> u64 {
        now_ns_global()
    }

    pub fn open_count(&self) -> usize {
        self.c.opened - self.c.lost
    }

    /// Starts one connection to `127.0.0.1:port/room` and returns its index.
    pub fn connect(&mut self, dst: SocketAddrV4, room: &str) -> io::Result<usize> {
        let idx = self.conns.len();
        let src =
            Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 1)) + idx as u32 % SOURCE_ADDRS);
        let stream = connect_from(src, dst)?;
        let tls = match &self.tls {
            Some(cfg) => Some(Box::new(crate::tls::Client::new(cfg)?)),
            None => None,
        };
        let mut stream = TcpStream::from_std(stream);
        self.poll.registry().register(
            &mut stream,
            Token(idx),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.request.clear();
        let offer = if self.offer_deflate {
            format!("Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n")
        } else {
            String::new()
        };
        let proto = if self.v1 {
            format!("Sec-WebSocket-Protocol: {}\r\n", v1::PROTOCOL)
        } else {
            String::new()
        };
        write!(
            self.request,
            "GET /{room} HTTP/1.1\r\nHost: {dst}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             {offer}{proto}Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )?;
        let mut wbuf = Vec::with_capacity(256);
        wbuf.extend_from_slice(&self.request);
        self.conns.push(Conn {
            stream: Some(stream),
            tls,
            phase: Phase::Connecting,
            rbuf: vec![0; self.rbuf_size].into_boxed_slice(),
            rlen: 0,
            wbuf,
            wpos: 0,
            next_seq: vec![0; self.n_pubs].into_boxed_slice(),
            frag: None,
            frag_len: 0,
            pub_id: None,
            sent: 0,
            received: 0,
            dirty: false,
            inflate: None,
            v1: self.v1,
        });
        self.c.pending += 1;
        Ok(idx)
    }

    /// Opens `n` connections (at most MAX_PENDING handshakes at once) and waits
    /// until each is open or has failed, or until `deadline`. Returns the
    /// index range of the connections created.
    pub fn connect_many(
        &mut self,
        dst: SocketAddrV4,
        room: &str,
        n: usize,
        deadline: Instant,
    ) -> std::ops::Range<usize> {
        let start = self.conns.len();
        let mut created = 0;
        while Instant::now() < deadline {
            while created < n && self.c.pending < MAX_PENDING {
                match self.connect(dst, room) {
                    Ok(_) => created += 1,
                    Err(e) => {
                        self.c.failed += n - created;
                        self.c.last_error = format!("socket/connect: {e}");
                        created = n;
                    }
                }
            }
            if created == n && self.c.pending == 0 {
                break;
            }
            self.poll_once(Some(Duration::from_millis(5)));
        }
        start..self.conns.len()
    }

    /// Queues one message from connection `idx` (which must have a pub_id):
    /// `size` bytes of text, sequence number = messages sent so far. False when
    /// the connection is not open (nothing is queued).
    pub fn send(&mut self, idx: usize, size: usize) -> bool {
        let ts = self.now_ns();
        let conn = &mut self.conns[idx];
        if conn.phase != Phase::Open {
            return false;
        }
        let size = size.max(HDR);
        let id = conn.pub_id.unwrap_or(u32::MAX) as u64 & (MAX_PUBLISHERS as u64 - 1);
        let mut hdr = [0u8; HDR];
        hdr[0..8].copy_from_slice(&pack7(id << SEQ_BITS | conn.sent).to_le_bytes());
        hdr[8..16].copy_from_slice(&pack7(ts).to_le_bytes());
        conn.sent += 1;
        let w = &mut conn.wbuf;
        w.push(0x81); // FIN + text
        if size < 126 {
            w.push(0x80 | size as u8);
        } else if size <= 0xffff {
            w.push(0x80 | 126);
            w.extend_from_slice(&(size as u16).to_be_bytes());
        } else {
            w.push(0x80 | 127);
            w.extend_from_slice(&(size as u64).to_be_bytes());
        }
        w.extend_from_slice(&MASK);
        w.extend(hdr.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        // HDR is a multiple of 4, so the padding's mask phase starts at 0 again.
        match &self.corpus {
            Some(corpus) if corpus.len() > size => {
                // A different stretch for each message, at a multiple of 4 (the mask phase).
                let body = size - HDR;
                let span = corpus.len() - body;
                let at = (conn.sent.wrapping_mul(2_654_435_761) as usize % span) & !3;
                w.extend_from_slice(&corpus[at..at + body]);
            }
            _ => w.extend_from_slice(&self.pad[HDR..size]),
        }
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(idx);
        }
        true
    }

    /// Writes what is queued on every connection touched since the last flush.
    pub fn flush(&mut self) {
        for i in 0..self.dirty.len() {
            let idx = self.dirty[i];
            self.conns[idx].dirty = false;
            if self.conns[idx].phase == Phase::Open {
                self.conns[idx].write_out(&mut self.c);
            }
        }
        self.dirty.clear();
    }

    /// One `poll` and the handling of its events.
    pub fn poll_once(&mut self, timeout: Option<Duration>) {
        if let Err(e) = self.poll.poll(&mut self.events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                panic!("poll: {e}");
            }
            return;
        }
        for ev in self.events.iter() {
            let idx = ev.token().0;
            let conn = &mut self.conns[idx];
            match conn.phase {
                Phase::Closed => {}
                Phase::Connecting => {
                    let s = conn.stream.as_ref().expect("stream");
                    match s.take_error() {
                        Ok(Some(e)) | Err(e) => {
                            conn.fail(&mut self.c, format!("connect: {e}"));
                            continue;
                        }
                        Ok(None) => {}
                    }
                    match s.peer_addr() {
                        Ok(_) => {
                            conn.phase = Phase::Handshake;
                            conn.write_out(&mut self.c);
                            conn.read_in(&mut self.c);
                        }
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                        Err(e) => conn.fail(&mut self.c, format!("connect: {e}")),
                    }
                }
                Phase::Handshake | Phase::Open => {
                    if ev.is_writable() {
                        conn.write_out(&mut self.c);
                    }
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        conn.read_in(&mut self.c);
                    }
                }
            }
            if self.churn && conn.phase == Phase::Open {
                // Dropping the socket closes it; the buffers go too, so that a run of
                // thousands of handshakes holds no more than the connections in progress.
                conn.phase = Phase::Closed;
                conn.stream = None;
                conn.tls = None;
                conn.rbuf = Box::default();
                conn.wbuf = Vec::new();
                conn.next_seq = Box::default();
                self.c.churned += 1;
            }
        }
    }

    /// Polls until `done` holds or `deadline` passes; returns whether `done` held.
    pub fn run_until(&mut self, deadline: Instant, mut done: impl FnMut(&Gen) -> bool) -> bool {
        loop {
            if done(self) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            self.flush();
            self.poll_once(Some((deadline - now).min(Duration::from_millis(10))));
        }
    }

    /// Messages still missing at the end of a run: for every connection and
    /// publisher, what that publisher sent (less its own, unless `echo`) minus
    /// what arrived. Gaps already counted in the middle are not included.
    pub fn tail_missing(&self, echo: bool) -> u64 {
        let sent: Vec<(u32, u64)> = self
            .conns
            .iter()
            .filter_map(|c| c.pub_id.map(|p| (p, c.sent)))
            .collect();
        let mut missing = 0;
        for c in self.conns.iter().filter(|c| c.phase == Phase::Open) {
            for &(p, n) in &sent {
                if !echo && c.pub_id == Some(p) {
                    continue;
                }
                missing += n.saturating_sub(c.next_seq[p as usize]);
            }
        }
        missing
    }

    /// Closes every connection (the generator closes first).
    pub fn close_all(&mut self) {
        for c in &mut self.conns {
            if let Some(mut s) = c.stream.take() {
                let _ = self.poll.registry().deregister(&mut s);
            }
            c.phase = Phase::Closed;
        }
    }
}

impl Conn {
    fn fail(&mut self, c: &mut Counters, why: String) {
        match self.phase {
            Phase::Connecting | Phase::Handshake => {
                c.failed += 1;
                c.pending -= 1;
            }
            Phase::Open => c.lost += 1,
            Phase::Closed => return,
        }
        c.last_error = why;
        self.phase = Phase::Closed;
        self.stream = None; // closes the socket
        self.tls = None;
    }

    fn write_out(&mut self, c: &mut Counters) {
        let Some(s) = self.stream.as_mut() else {
            return;
        };
        if let Some(t) = self.tls.as_mut() {
            if self.wpos < self.wbuf.len() {
                if let Err(e) = t.queue(&self.wbuf[self.wpos..]) {
                    return self.fail(c, format!("tls write: {e}"));
                }
                self.wbuf.clear();
                self.wpos = 0;
            }
            match t.flush(s) {
                Ok(n) => c.writes += n,
                Err(e) => self.fail(c, format!("tls write: {e}")),
            }
            return;
        }
        while self.wpos < self.wbuf.len() {
            match s.write(&self.wbuf[self.wpos..]) {
                Ok(0) => return self.fail(c, "write: closed".into()),
                Ok(n) => {
                    self.wpos += n;
                    c.writes += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.fail(c, format!("write: {e}")),
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
    }

    fn read_in(&mut self, c: &mut Counters) {
        if self.tls.is_some() {
            if c.cipher.is_empty() {
                c.cipher = vec![0; 64 * 1024].into_boxed_slice();
            }
            let mut cipher = std::mem::take(&mut c.cipher);
            self.read_in_tls(c, &mut cipher);
            c.cipher = cipher;
            return;
        }
        loop {
            if self.rlen == self.rbuf.len() {
                return self.fail(c, "read buffer full (frame larger than buffer?)".into());
            }
            let Some(s) = self.stream.as_mut() else {
                return;
            };
            match s.read(&mut self.rbuf[self.rlen..]) {
                Ok(0) => return self.fail(c, "closed by server".into()),
                Ok(n) => {
                    let space = self.rbuf.len() - self.rlen;
                    self.rlen += n;
                    c.reads += 1;
                    c.wire_bytes += n as u64;
                    c.now_ns = 0; // taken lazily, once per read
                    if self.phase == Phase::Handshake && !self.handshake(c) {
                        return;
                    }
                    if self.phase == Phase::Open {
                        self.parse(c);
                    }
                    if self.phase == Phase::Closed {
                        return;
                    }
                    if n < space {
                        // A short read drained the socket; epoll (edge-triggered)
                        // reports the next arrival, so skip the read that would
                        // only say WouldBlock (as tokio does on Linux).
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.fail(c, format!("read: {e}")),
            }
        }
        if !self.wbuf.is_empty() {
            self.write_out(c); // pongs
        }
    }

    /// `read_in` for a TLS connection: one socket read into `cipher`, fed to rustls; the
    /// plaintext it yields goes through the read buffer as a plain connection's bytes do.
    fn read_in_tls(&mut self, c: &mut Counters, cipher: &mut [u8]) {
        loop {
            let Some(s) = self.stream.as_mut() else {
                return;
            };
            let n = match s.read(cipher) {
                Ok(0) => return self.fail(c, "closed by server".into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.fail(c, format!("read: {e}")),
            };
            c.reads += 1;
            c.now_ns = 0;
            let mut rest = &cipher[..n];
            while !rest.is_empty() {
                let Some(t) = self.tls.as_mut() else {
                    return;
                };
                match t.read_tls(&mut rest) {
                    Ok(Some(k)) if k > 0 => {}
                    Ok(_) => return self.fail(c, "tls: rustls took no ciphertext".into()),
                    Err(e) => return self.fail(c, format!("tls: {e}")),
                }
                // Drain the plaintext after every step: rustls holds at most 16 KiB of it.
                loop {
                    if self.rlen == self.rbuf.len() {
                        return self.fail(c, "read buffer full (frame larger than buffer?)".into());
                    }
                    let Some(t) = self.tls.as_mut() else {
                        return;
                    };
                    match t.read_plain(&mut self.rbuf[self.rlen..]) {
                        Ok(0) => break,
                        Ok(k) => self.rlen += k,
                        Err(e) => return self.fail(c, format!("tls: {e}")),
                    }
                    if self.phase == Phase::Handshake {
                        self.handshake(c);
                    }
                    if self.phase == Phase::Open {
                        self.parse(c);
                    }
                    if self.phase == Phase::Closed {
                        return;
                    }
                }
            }
            if n < cipher.len() {
                break; // a short read drained the socket (see read_in)
            }
        }
        // Handshake messages, pongs.
        self.write_out(c);
    }

    /// Consumes the HTTP response head; false while it is incomplete or on failure.
    fn handshake(&mut self, c: &mut Counters) -> bool {
        let buf = &self.rbuf[..self.rlen];
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            return false;
        };
        let head = &buf[..end];
        if !head.starts_with(b"HTTP/1.1 101") {
            let line = head.split(|&b| b == b'\r').next().unwrap_or(b"");
            let why = format!("handshake: {}", String::from_utf8_lossy(line));
            self.fail(c, why);
            return false;
        }
        if !head.windows(WS_ACCEPT.len()).any(|w| w == WS_ACCEPT) {
            self.fail(c, "handshake: wrong Sec-WebSocket-Accept".into());
            return false;
        }
        let accepted = head
            .windows(b"permessage-deflate".len())
            .any(|w| w.eq_ignore_ascii_case(b"permessage-deflate"));
        if accepted {
            self.inflate = Some(InflateState::new_boxed(DataFormat::Raw));
        }
        let proto = v1::PROTOCOL.as_bytes();
        if self.v1 && !head.windows(proto.len()).any(|w| w == proto) {
            self.fail(c, "handshake: wschat.v1 not accepted".into());
            return false;
        }
        self.rbuf.copy_within(end + 4..self.rlen, 0);
        self.rlen -= end + 4;
        self.phase = Phase::Open;
        c.pending -= 1;
        c.opened += 1;
        true
    }

    /// Handles every complete frame in the read buffer, then moves a partial
    /// frame to the front.
    fn parse(&mut self, c: &mut Counters) {
        let Conn {
            rbuf,
            rlen,
            wbuf,
            next_seq,
            frag,
            frag_len,
            received,
            inflate: inflate_state,
            v1: speaks_v1,
            ..
        } = self;
        let cap = rbuf.len();
        let buf = &rbuf[..*rlen];
        let mut pos = 0;
        let mut failure: Option<String> = None;
        // Each step slices once: the frame's bytes are bounds-checked as a whole.
        while let [b0, b1, ..] = buf[pos..] {
            if b1 & 0x80 != 0 {
                failure = Some("protocol: masked frame from server".into());
                break;
            }
            let rest = &buf[pos..];
            let (len, hl) = match b1 & 0x7f {
                126 => match rest.get(2..4) {
                    Some(b) => (u16::from_be_bytes([b[0], b[1]]) as usize, 4),
                    None => break,
                },
                127 => match rest.get(2..10) {
                    Some(b) => {
                        let mut be = [0u8; 8];
                        be.copy_from_slice(b);
                        (u64::from_be_bytes(be) as usize, 10)
                    }
                    None => break,
                },
                n => (n as usize, 2),
            };
            if len.saturating_add(hl) > cap {
                failure = Some(format!("frame of {len} bytes exceeds the read buffer"));
                break;
            }
            let Some(payload) = rest.get(hl..hl + len) else {
                break;
            };
            pos += hl + len;
            let fin = b0 & 0x80 != 0;
            match b0 & 0x0f {
                1 | 2 if b0 & 0x40 != 0 => {
                    // Compressed: inflated whole (servers send it in one frame), then checked.
                    let mut out = std::mem::take(&mut c.inflate_out);
                    let inflated = match inflate_state.as_deref_mut() {
                        Some(state) if fin => inflate_message(state, payload, &mut out),
                        _ => false,
                    };
                    if inflated {
                        c.inflated += 1;
                        if !*speaks_v1 || b0 & 0x0f == 2 {
                            deliver(c, next_seq, received, parse_hdr(&out), out.len());
                        } else if let v1::Frame::Msg(h) = v1::unwrap(&out) {
                            deliver(
                                c,
                                next_seq,
                                received,
                                h.as_ref().and_then(|h| parse_hdr(h)),
                                out.len(),
                            );
                        }
                    } else {
                        failure = Some("compressed frame that does not inflate".into());
                    }
                    c.inflate_out = out;
                    if failure.is_some() {
                        break;
                    }
                }
                1 if *speaks_v1 => {
                    // Servers send a v1 frame whole; a fragment would be a surprise.
                    match v1::unwrap(payload) {
                        _ if !fin => c.bad += 1,
                        v1::Frame::Msg(h) => {
                            let h = h.as_ref().and_then(|h| parse_hdr(h));
                            deliver(c, next_seq, received, h, len);
                        }
                        v1::Frame::Other => {}
                    }
                }
                1 | 2 => {
                    let h = parse_hdr(payload);
                    if fin {
                        deliver(c, next_seq, received, h, len);
                    } else {
                        *frag = h;
                        *frag_len = len;
                        if h.is_none() {
                            c.bad += 1;
                        }
                    }
                }
                0 => {
                    *frag_len += len;
                    if fin {
                        deliver(c, next_seq, received, frag.take(), *frag_len);
                    }
                }
                8 => {
                    failure = Some("close frame from server".into());
                    break;
                }
                9 => {
                    // Ping: answer with a masked pong carrying the same payload.
                    wbuf.push(0x8a);
                    wbuf.push(0x80 | len as u8);
                    wbuf.extend_from_slice(&MASK);
                    wbuf.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
                }
                _ => {} // pong, or reserved
            }
        }
        if let Some(why) = failure {
            return self.fail(c, why);
        }
        if pos > 0 {
            self.rbuf.copy_within(pos..self.rlen, 0);
            self.rlen -= pos;
        }
    }
}

/// Inflates one compressed message (its trailer appended) into `out`, continuing the
/// connection's stream (whose window a server with context takeover refers to). False on
/// invalid data.
fn inflate_message(state: &mut InflateState, payload: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    for mut input in [payload, &TRAILER[..]] {
        loop {
            if out.capacity() - out.len() < 1024 {
                out.reserve(out.capacity().max(4096));
            }
            let start = out.len();
            let room = out.capacity();
            out.resize(room, 0);
            let r = inflate(state, input, &mut out[start..], MZFlush::Sync);
            out.truncate(start + r.bytes_written);
            input = &input[r.bytes_consumed..];
            match r.status {
                // A final block ends the stream: the next message starts a new one.
                Ok(MZStatus::StreamEnd) => {
                    state.reset(DataFormat::Raw);
                    return true;
                }
                Ok(_) | Err(MZError::Buf) => {}
                Err(_) => return false,
            }
            let stuck = r.bytes_consumed == 0 && r.bytes_written == 0;
            if stuck || (input.is_empty() && out.len() < room) {
                break;
            }
        }
    }
    true
}

/// `len` bytes of JSON-like chat lines (ASCII), the same for every run: keys that repeat,
/// words from a small vocabulary, numbers that vary. Deflate at level 6 takes it to about a
/// third.
pub fn chat_corpus(len: usize) -> Vec<u8> {
    const WORDS: [&str; 48] = [
        "hello", "there", "the", "meeting", "is", "at", "noon", "tomorrow", "can", "you", "send",
        "me", "that", "file", "please", "thanks", "a", "lot", "I", "think", "we", "should", "ship",
        "it", "today", "review", "looks", "good", "to", "merge", "after", "lunch", "tests", "pass",
        "on", "my", "machine", "deploy", "failed", "again", "why", "not", "coffee", "break", "in",
        "five", "minutes", "ok",
    ];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut out = String::with_capacity(len + 256);
    let mut i = 0u64;
    while out.len() < len {
        let _ = std::fmt::Write::write_fmt(
            &mut out,
            format_args!(
                "{{\"type\":\"chat\",\"room\":\"lobby\",\"user\":\"user{}\",\"id\":{},\"ts\":{},\"text\":\"",
                next(500),
                1_000_000 + i,
                1_700_000_000_000 + i * 1000 + next(1000)
            ),
        );
        for w in 0..4 + next(20) {
            if w > 0 {
                out.push(' ');
            }
            out.push_str(WORDS[next(WORDS.len() as u64) as usize]);
        }
        out.push_str("\"}\n");
        i += 1;
    }
    out.truncate(len);
    out.into_bytes()
}

/// Counts one message received by a connection and checks its publisher's sequence.
#[inline]
fn deliver(
    c: &mut Counters,
    next_seq: &mut [u64],
    received: &mut u64,
    h: Option<(u32, u64, u64)>,
    len: usize,
) {
    c.delivered += 1;
    c.delivered_bytes += len as u64;
    *received += 1;
    let Some((p, seq, ts)) = h else {
        c.bad += 1;
        return;
    };
    let Some(next) = next_seq.get_mut(p as usize) else {
        c.bad += 1;
        return;
    };
    if seq == *next {
        *next = seq + 1;
    } else if seq > *next {
        c.gaps += seq - *next;
        *next = seq + 1;
    } else {
        c.dups += 1;
    }
    if ts >= c.record_from && ts < c.record_until {
        if c.now_ns == 0 {
            c.now_ns = now_ns_global();
        }
        c.hist.record(c.now_ns.saturating_sub(ts));
    }
}

thread_local! {
    static T0: std::cell::OnceCell<Instant> = const { std::cell::OnceCell::new() };
}

/// Nanoseconds since the first call on this thread: the one monotonic clock that
/// stamps and receives messages (the generator is single-threaded).
pub fn now_ns_global() -> u64 {
    T0.with(|t| t.get_or_init(Instant::now).elapsed().as_nanos() as u64)
}

/// Flipped in every header byte: the common zero groups (high bits of small numbers) become
/// '@' instead of control characters, which JSON escapes as six bytes each (the wschat.v1
/// frames of the v1 scenario would grow by some 50 bytes a delivery).
const FLIP: u64 = 0x4040_4040_4040_4040;

/// Spreads the low 56 bits of `v` over 8 bytes of 7 bits (little-endian groups):
/// every byte is ASCII, so a header of such words keeps a text message valid UTF-8.
fn pack7(v: u64) -> u64 {
    (0..8).fold(0, |out, i| out | ((v >> (7 * i)) & 0x7f) << (8 * i)) ^ FLIP
}

/// The inverse of `pack7`, in three steps of shifts and masks (14, 28, 56 bits).
#[inline]
fn unpack7(x: u64) -> u64 {
    let x = (x & 0x007f_007f_007f_007f) | ((x & 0x7f00_7f00_7f00_7f00) >> 1);
    let x = (x & 0x0000_3fff_0000_3fff) | ((x & 0x3fff_0000_3fff_0000) >> 2);
    (x & 0x0fff_ffff) | ((x & 0x0fff_ffff_0000_0000) >> 4)
}

/// (publisher id, sequence number, send time) from a message; None if the
/// message is too short or a header byte is not ASCII.
#[inline]
fn parse_hdr(p: &[u8]) -> Option<(u32, u64, u64)> {
    let h: &[u8; HDR] = p.get(..HDR)?.try_into().ok()?;
    let mut w = [0u8; 8];
    w.copy_from_slice(&h[..8]);
    let first = u64::from_le_bytes(w);
    w.copy_from_slice(&h[8..]);
    let time = u64::from_le_bytes(w);
    if (first | time) & 0x8080_8080_8080_8080 != 0 {
        return None;
    }
    let first = unpack7(first ^ FLIP);
    let seq = first & ((1 << SEQ_BITS) - 1);
    Some(((first >> SEQ_BITS) as u32, seq, unpack7(time ^ FLIP)))
}

/// A non-blocking TCP connect from `src` (port chosen at connect time, so the
/// port space is per destination) to `dst`.
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
    // SAFETY: plain socket calls on a descriptor we own; it is closed on error
    // and handed to TcpStream (which then owns it) on success.
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
        libc::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, p, optlen);
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
