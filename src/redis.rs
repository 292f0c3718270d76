//! Redis pub/sub link: lets several wschat processes share rooms.
//!
//! A self-contained, non-blocking state machine driven by the server's
//! single-threaded `mio` poll loop. It owns two TCP connections to Redis:
//!
//! * the **SUBSCRIBE** connection (RESP2 subscribe mode), one channel per room;
//! * the **PUBLISH** connection, pipelined: every `publish()` appends a
//!   `PUBLISH` command to a write buffer, the buffer is written in as few
//!   `write` calls as the socket allows, and the integer replies are counted
//!   off in order.
//!
//! # Interface for the poll loop
//!
//! ```ignore
//! let url = RedisUrl::parse(&arg)?;                       // --redis URL (or RedisUrl::from_env())
//! let cfg = RedisConfig::new(url, random_node_id());      // defaults: 8 MiB queue cap, 1 MiB max message
//! let mut redis = RedisLink::new(cfg, poll.registry(), SUB_TOKEN, PUB_TOKEN)?; // starts connecting
//! let mut incoming = Vec::new();
//! loop {
//!     let timeout = redis.next_deadline().map(|d| d.saturating_duration_since(Instant::now()));
//!     poll.poll(&mut events, min(timeout, other timeouts))?;
//!     for ev in events.iter() {
//!         if redis.on_event(ev, &mut incoming) { continue; }  // true = it was one of our two tokens
//!         /* ... websocket sockets ... */
//!     }
//!     redis.on_timer(Instant::now());          // cheap; handles reconnect / timeouts / keep-alive pings
//!     for Incoming { room, kind, payload } in incoming.drain(..) {
//!         /* deliver to local members of `room` only; do NOT publish again */
//!     }
//!     /* while handling websocket frames: */
//!     //   redis.subscribe(room)   when the first local member joins a room
//!     //   redis.unsubscribe(room) when the last local member leaves
//!     //   redis.publish(room, MessageKind::Text, bytes)  for each message from a local client
//!     redis.flush();                           // write all publishes of this iteration in one go
//! }
//! ```
//!
//! * `on_event` / `on_token` must be called for events on the two tokens given
//!   at construction; both reads and writes are drained to `WouldBlock`
//!   (edge-triggered). Incoming messages from *other* nodes are pushed to the
//!   `Vec<Incoming>` passed in (own messages, messages for rooms no longer
//!   subscribed and malformed envelopes are skipped and counted).
//! * `flush()` should be called once per loop iteration after handling events.
//!   If it is forgotten, `next_deadline()` returns an instant in the past while
//!   data is waiting, so the next poll returns at once and `on_timer` flushes.
//! * `subscribe` / `unsubscribe` may be called in any state: the set of
//!   subscribed rooms is kept and re-subscribed after every reconnect.
//! * `publish` returns `false` (and counts `publish_dropped`) while the link is
//!   not [`LinkState::Up`], when the not-yet-written queue would exceed
//!   `publish_queue_cap`, or when the payload exceeds `max_message_size`.
//!   Nothing is ever buffered for later: pub/sub is fire-and-forget.
//! * `state()` and `stats()` feed /healthz and /metrics. Redis going away never
//!   returns an error to the caller: the link reconnects with exponential
//!   backoff (100 ms doubling to 5 s, full jitter), re-AUTHs, re-SELECTs and
//!   re-subscribes every active room, logging each Up/Down transition once.
//!
//! # Wire format
//!
//! Channel: `wschat:room:<room path>` ([`CHANNEL_PREFIX`], configurable in
//! [`RedisConfig::channel_prefix`]). Message: a binary envelope
//! (see [`encode_envelope_header`]): `0xC1` (magic+version 1, a byte that can
//! never start valid UTF-8, so a stray `redis-cli PUBLISH` text is rejected),
//! kind byte (`1` text, `2` binary), 8-byte big-endian node id, payload.
//! Text payloads are checked to be valid UTF-8 on receipt.
//!
//! # Sharded pub/sub
//!
//! With `sharded: true` the link uses `SSUBSCRIBE` / `SUNSUBSCRIBE` /
//! `SPUBLISH` (Redis 7+) against **one** endpoint, i.e. a standalone Redis 7
//! or a single Redis Cluster shard that owns all wschat channels. Full cluster
//! support is *not* implemented: no slot calculation, no `MOVED`/`ASK`
//! redirection, no connection per shard, and no handling of the unsolicited
//! `sunsubscribe` a shard sends when a slot migrates. A `MOVED` reply to
//! `SPUBLISH` is counted in `publish_errors` (logged once per connection); a
//! `MOVED` reply to `SSUBSCRIBE` drops and reconnects the link.
//!
//! # Other limits
//!
//! * Host names are resolved off the loop: a connect attempt starts a lookup on
//!   a short-lived thread (the system resolver blocks) and uses the address the
//!   last finished lookup gave; with none yet, the attempt fails fast and the
//!   backoff retries. IP literals need no lookup. Only the first resolved
//!   address is tried.
//! * No TLS (`rediss://` is rejected by the URL parser), RESP2 only.
//! * A `/db` in the URL sends `SELECT`, which Redis Cluster rejects: leave it
//!   out for a cluster shard (pub/sub ignores the database anyway).
//! * RESP decoding uses the `redis-protocol` crate; its recursive decoder
//!   trusts the server not to send pathologically nested arrays (Redis never
//!   does for pub/sub). Frames are bounded to `max_message_size + 1 KiB`.

use crate::message::MessageKind;
use crate::stats::MetricsPage;
use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::event::Event;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use redis_protocol::resp2::decode::decode_range;
use redis_protocol::resp2::types::RangeFrame;

/// Prefix of the per-room channel name: `wschat:room:<room path>`.
pub const CHANNEL_PREFIX: &str = "wschat:room:";
/// Default cap on PUBLISH bytes queued but not yet written to the socket.
pub const DEFAULT_PUBLISH_QUEUE_CAP: usize = 8 * 1024 * 1024;
/// Default maximum payload size of one relayed message.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1024 * 1024;
/// Default Redis port.
pub const DEFAULT_PORT: u16 = 6379;
/// Envelope first byte: magic + version 1. 0xC1 never occurs in valid UTF-8.
pub const ENVELOPE_MAGIC_V1: u8 = 0xC1;
/// Envelope header length: magic, kind, 8-byte node id.
pub const ENVELOPE_HEADER_LEN: usize = 10;

/// Slack allowed on top of `max_message_size` for one inbound RESP frame.
const FRAME_SLACK: usize = 1024;
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// TCP connect + AUTH/SELECT/PING handshake must finish within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default keep-alive interval, see [`RedisConfig::ping_interval`].
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(10);
const READ_CHUNK: usize = 16 * 1024;
/// `publish` writes to the socket by itself once this much is queued.
const AUTO_FLUSH_BYTES: usize = 64 * 1024;
/// Write buffers bigger than this are released once drained.
const KEEP_WBUF_CAPACITY: usize = 256 * 1024;

// ---------------------------------------------------------------------------
// URL
// ---------------------------------------------------------------------------

/// Parsed `redis://[[user]:password@]host[:port][/db]`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// ACL user name (`AUTH user password`), only with a password.
    pub username: Option<String>,
    pub password: Option<String>,
    /// Database index for `SELECT` (irrelevant for pub/sub, harmless).
    pub db: Option<u32>,
}

/// Why a Redis URL was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisUrlError {
    MissingScheme,
    UnsupportedScheme(String),
    EmptyHost,
    BadHost(String),
    BadPort(String),
    BadDb(String),
    BadUserInfo,
    BadPercentEncoding,
    UnsupportedQuery,
}

impl fmt::Display for RedisUrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingScheme => write!(f, "redis URL must start with redis://"),
            Self::UnsupportedScheme(s) => {
                write!(
                    f,
                    "unsupported redis URL scheme {s:?} (only redis:// is supported, no TLS)"
                )
            }
            Self::EmptyHost => write!(f, "redis URL has no host"),
            Self::BadHost(h) => {
                write!(f, "invalid host {h:?} in redis URL (IPv6 needs [brackets])")
            }
            Self::BadPort(p) => write!(f, "invalid port {p:?} in redis URL (1-65535)"),
            Self::BadDb(d) => write!(
                f,
                "invalid database {d:?} in redis URL (expected /<number>)"
            ),
            Self::BadUserInfo => {
                write!(
                    f,
                    "invalid credentials in redis URL (expected :password@ or user:password@)"
                )
            }
            Self::BadPercentEncoding => write!(f, "invalid %-escape in redis URL credentials"),
            Self::UnsupportedQuery => {
                write!(f, "redis URL query strings/fragments are not supported")
            }
        }
    }
}

impl std::error::Error for RedisUrlError {}

/// Environment variable read by [`RedisUrl::from_env`].
pub const REDIS_URL_ENV: &str = "WSCHAT_REDIS";

impl RedisUrl {
    /// `$WSCHAT_REDIS`, if set and not empty (`--redis URL` should take precedence).
    pub fn from_env() -> Option<Result<RedisUrl, RedisUrlError>> {
        let v = std::env::var(REDIS_URL_ENV).ok()?;
        (!v.trim().is_empty()).then(|| RedisUrl::parse(&v))
    }

    /// Parses `redis://[[user]:password@]host[:port][/db]`. Port defaults to 6379.
    /// Credentials may be %-encoded.
    pub fn parse(s: &str) -> Result<RedisUrl, RedisUrlError> {
        let s = s.trim();
        let (scheme, rest) = s.split_once("://").ok_or(RedisUrlError::MissingScheme)?;
        if !scheme.eq_ignore_ascii_case("redis") {
            return Err(RedisUrlError::UnsupportedScheme(scheme.to_string()));
        }
        if rest.contains(['?', '#']) {
            return Err(RedisUrlError::UnsupportedQuery);
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let db = if path.is_empty() {
            None
        } else {
            Some(
                path.parse::<u32>()
                    .map_err(|_| RedisUrlError::BadDb(path.to_string()))?,
            )
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (mut username, mut password) = (None, None);
        if let Some(ui) = userinfo {
            let (u, p) = ui.split_once(':').ok_or(RedisUrlError::BadUserInfo)?;
            let (u, p) = (percent_decode(u)?, percent_decode(p)?);
            if p.is_empty() {
                if !u.is_empty() {
                    return Err(RedisUrlError::BadUserInfo);
                }
            } else {
                password = Some(p);
                username = (!u.is_empty()).then_some(u);
            }
        }
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| RedisUrlError::BadHost(hostport.to_string()))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| RedisUrlError::BadHost(hostport.to_string()))?,
                ),
            };
            (h, port)
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => {
                    if p.contains(':') {
                        return Err(RedisUrlError::BadHost(hostport.to_string()));
                    }
                    (h, Some(p))
                }
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(RedisUrlError::EmptyHost);
        }
        if host.contains(|c: char| c.is_whitespace() || c == '/' || c == '@') {
            return Err(RedisUrlError::BadHost(host.to_string()));
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n != 0 => n,
                _ => return Err(RedisUrlError::BadPort(p.to_string())),
            },
        };
        Ok(RedisUrl {
            host: host.to_string(),
            port,
            username,
            password,
            db,
        })
    }
}

fn percent_decode(s: &str) -> Result<String, RedisUrlError> {
    if !s.contains('%') {
        return Ok(s.to_string());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .ok_or(RedisUrlError::BadPercentEncoding)?;
            let hex = std::str::from_utf8(hex).map_err(|_| RedisUrlError::BadPercentEncoding)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| RedisUrlError::BadPercentEncoding)?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| RedisUrlError::BadPercentEncoding)
}

/// Display redacts the password, so the URL can be logged.
impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "redis://")?;
        if self.password.is_some() {
            write!(f, "{}:***@", self.username.as_deref().unwrap_or(""))?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)?;
        } else {
            write!(f, "{}:{}", self.host, self.port)?;
        }
        if let Some(db) = self.db {
            write!(f, "/{db}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({self})")
    }
}

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

/// Configuration of a [`RedisLink`].
#[derive(Clone, Debug)]
pub struct RedisConfig {
    pub url: RedisUrl,
    /// This node's id, carried in every envelope so the node can skip its
    /// own messages. Must differ between nodes: use [`random_node_id`].
    pub node_id: u64,
    /// Use SSUBSCRIBE/SUNSUBSCRIBE/SPUBLISH (Redis 7+, single shard only; see module docs).
    pub sharded: bool,
    /// Cap on PUBLISH bytes queued but not yet written to Redis.
    pub publish_queue_cap: usize,
    /// Largest payload relayed; inbound frames above this + 1 KiB drop the link.
    pub max_message_size: usize,
    /// Channel name prefix, [`CHANNEL_PREFIX`] by default. All nodes must agree.
    pub channel_prefix: String,
    /// While up, a PING is sent on both connections at this interval; a PING
    /// still unanswered at the next interval drops the link (detects a
    /// half-open TCP connection or a hung server).
    pub ping_interval: Duration,
}

impl RedisConfig {
    pub fn new(url: RedisUrl, node_id: u64) -> RedisConfig {
        RedisConfig {
            url,
            node_id,
            sharded: false,
            publish_queue_cap: DEFAULT_PUBLISH_QUEUE_CAP,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            channel_prefix: CHANNEL_PREFIX.to_string(),
            ping_interval: DEFAULT_PING_INTERVAL,
        }
    }
}

/// A message published by another node to a room this node is subscribed to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incoming {
    /// Room path (shared with the link's subscription set, no allocation per message).
    pub room: Arc<str>,
    pub kind: MessageKind,
    /// For `Text` this is valid UTF-8 (checked), so
    /// `tungstenite::Utf8Bytes::try_from(payload)` cannot fail.
    pub payload: Bytes,
}

/// Link state for /healthz.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// A connection attempt (TCP connect + AUTH/SELECT/PING) is in progress.
    Connecting,
    /// Both connections are established and authenticated.
    Up,
    /// Waiting for the backoff timer before the next attempt. `since` is when
    /// the link was lost (or created, if it was never up).
    Down { since: Instant },
}

/// Counters for /metrics. All are monotonic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedisStats {
    /// PUBLISH commands acknowledged by Redis.
    pub published: u64,
    /// `publish()` calls refused: link not up, queue cap reached, or payload too large.
    pub publish_dropped: u64,
    /// Publishes queued or in flight when the link failed (never acknowledged).
    pub publish_lost: u64,
    /// PUBLISH commands answered with an error (e.g. MOVED in sharded mode).
    pub publish_errors: u64,
    /// Messages from other nodes returned as [`Incoming`].
    pub received: u64,
    /// This node's own messages echoed back by the channel and skipped.
    pub received_own_skipped: u64,
    /// Channel messages with an invalid envelope (or channel name), skipped.
    pub received_malformed: u64,
    /// Times the link came back up after having been up before.
    pub reconnects: u64,
    /// Connection attempts that failed before reaching `Up`.
    pub connect_failures: u64,
}

/// A random, non-zero node id (std's randomly seeded hasher, pid and time).
pub fn random_node_id() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(d.as_nanos());
    }
    h.finish().max(1)
}

// ---------------------------------------------------------------------------
// Envelope
// ---------------------------------------------------------------------------

/// The 10-byte envelope header: magic/version, kind, node id (big-endian).
pub fn encode_envelope_header(kind: MessageKind, node_id: u64) -> [u8; ENVELOPE_HEADER_LEN] {
    let mut h = [0u8; ENVELOPE_HEADER_LEN];
    h[0] = ENVELOPE_MAGIC_V1;
    h[1] = match kind {
        MessageKind::Text => 1,
        MessageKind::Binary => 2,
    };
    h[2..10].copy_from_slice(&node_id.to_be_bytes());
    h
}

/// Full envelope (header + payload) as one buffer.
pub fn encode_envelope(kind: MessageKind, node_id: u64, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(ENVELOPE_HEADER_LEN + payload.len());
    v.extend_from_slice(&encode_envelope_header(kind, node_id));
    v.extend_from_slice(payload);
    v
}

/// Decodes an envelope into (kind, node id, payload). `None` if malformed:
/// wrong magic/version, unknown kind, short header, or a text payload that is
/// not valid UTF-8.
pub fn decode_envelope(data: &[u8]) -> Option<(MessageKind, u64, &[u8])> {
    if data.len() < ENVELOPE_HEADER_LEN || data[0] != ENVELOPE_MAGIC_V1 {
        return None;
    }
    let kind = match data[1] {
        1 => MessageKind::Text,
        2 => MessageKind::Binary,
        _ => return None,
    };
    let node = u64::from_be_bytes(data[2..10].try_into().ok()?);
    let payload = &data[ENVELOPE_HEADER_LEN..];
    if kind == MessageKind::Text && std::str::from_utf8(payload).is_err() {
        return None;
    }
    Some((kind, node, payload))
}

// ---------------------------------------------------------------------------
// RESP encoding (trivial; decoding uses redis-protocol)
// ---------------------------------------------------------------------------

fn push_usize(buf: &mut Vec<u8>, mut n: usize) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&tmp[i..]);
}

fn push_header(buf: &mut Vec<u8>, tag: u8, n: usize) {
    buf.push(tag);
    push_usize(buf, n);
    buf.extend_from_slice(b"\r\n");
}

fn push_bulk(buf: &mut Vec<u8>, parts: &[&[u8]]) {
    push_header(buf, b'$', parts.iter().map(|p| p.len()).sum());
    for p in parts {
        buf.extend_from_slice(p);
    }
    buf.extend_from_slice(b"\r\n");
}

/// Appends a RESP2 command (array of bulk strings).
fn push_cmd(buf: &mut Vec<u8>, args: &[&[u8]]) {
    push_header(buf, b'*', args.len());
    for a in args {
        push_bulk(buf, &[a]);
    }
}

fn decimal_len(mut n: usize) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// Exact length of a bulk string of `n` bytes: `$<n>\r\n<data>\r\n`.
fn bulk_len(n: usize) -> usize {
    1 + decimal_len(n) + 2 + n + 2
}

// ---------------------------------------------------------------------------
// Per-connection protocol state (socket-free, unit-testable)
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Sub,
    Pub,
}

/// A reply expected (in order) on a connection. Push messages on the
/// subscribe connection (message, subscribe, ...) are not in this queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Auth,
    Select,
    /// Handshake PING: its PONG means the connection is usable.
    HelloPing,
    /// Keep-alive PING.
    Ping,
    /// `n` consecutive PUBLISH replies.
    Publish(u32),
}

#[derive(Default)]
struct Replies {
    expect: VecDeque<Expect>,
    handshake_pending: u8,
    ping_outstanding: bool,
    logged_publish_error: bool,
}

impl Replies {
    fn push(&mut self, e: Expect) {
        match e {
            Expect::Auth | Expect::Select | Expect::HelloPing => self.handshake_pending += 1,
            Expect::Ping => self.ping_outstanding = true,
            Expect::Publish(_) => {
                if let Some(Expect::Publish(n)) = self.expect.back_mut()
                    && *n < u32::MAX
                {
                    *n += 1;
                    return;
                }
            }
        }
        self.expect.push_back(e);
    }

    fn pop(&mut self) -> Option<Expect> {
        let front = *self.expect.front()?;
        match front {
            Expect::Publish(n) if n > 1 => {
                self.expect[0] = Expect::Publish(n - 1);
                return Some(front);
            }
            Expect::Auth | Expect::Select | Expect::HelloPing => self.handshake_pending -= 1,
            Expect::Ping => self.ping_outstanding = false,
            Expect::Publish(_) => {}
        }
        self.expect.pop_front()
    }

    fn publishes_pending(&self) -> u64 {
        self.expect
            .iter()
            .map(|e| {
                if let Expect::Publish(n) = e {
                    *n as u64
                } else {
                    0
                }
            })
            .sum()
    }
}

/// Buffers and reply bookkeeping of one connection.
#[derive(Default)]
struct Proto {
    rbuf: Vec<u8>,
    rpos: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    rep: Replies,
}

impl Proto {
    fn queued(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    fn cmd(&mut self, args: &[&[u8]]) {
        push_cmd(&mut self.wbuf, args);
    }

    fn handshake(&mut self, url: &RedisUrl) {
        if let Some(pw) = &url.password {
            match &url.username {
                Some(u) => self.cmd(&[b"AUTH", u.as_bytes(), pw.as_bytes()]),
                None => self.cmd(&[b"AUTH", pw.as_bytes()]),
            }
            self.rep.push(Expect::Auth);
        }
        if let Some(db) = url.db {
            self.cmd(&[b"SELECT", db.to_string().as_bytes()]);
            self.rep.push(Expect::Select);
        }
        self.cmd(&[b"PING"]);
        self.rep.push(Expect::HelloPing);
    }
}

/// Link-wide state the frame handlers need.
struct Shared {
    node_id: u64,
    sharded: bool,
    prefix: String,
    rooms: HashSet<Arc<str>>,
    stats: RedisStats,
    max_frame: usize,
}

impl Shared {
    fn sub_cmd(&self, p: &mut Proto, subscribe: bool, room: &str) {
        let cmd: &[u8] = match (self.sharded, subscribe) {
            (false, true) => b"SUBSCRIBE",
            (false, false) => b"UNSUBSCRIBE",
            (true, true) => b"SSUBSCRIBE",
            (true, false) => b"SUNSUBSCRIBE",
        };
        push_header(&mut p.wbuf, b'*', 2);
        push_bulk(&mut p.wbuf, &[cmd]);
        push_bulk(&mut p.wbuf, &[self.prefix.as_bytes(), room.as_bytes()]);
    }
}

/// Parses and handles every complete frame in `p.rbuf`. `Err` = drop the link.
fn process_input(
    sh: &mut Shared,
    p: &mut Proto,
    role: Role,
    out: &mut Vec<Incoming>,
) -> Result<(), String> {
    loop {
        let avail = &p.rbuf[p.rpos..];
        if avail.is_empty() {
            p.rbuf.clear();
            p.rpos = 0;
            return Ok(());
        }
        match decode_range(avail) {
            Ok(Some((frame, used))) => {
                let data = &p.rbuf[p.rpos..p.rpos + used];
                handle_frame(sh, &mut p.rep, role, &frame, data, out)?;
                p.rpos += used;
            }
            Ok(None) => {
                if avail.len() > sh.max_frame {
                    return Err(format!(
                        "RESP frame larger than {} bytes (max message size + 1 KiB)",
                        sh.max_frame
                    ));
                }
                if p.rpos > 0 {
                    p.rbuf.drain(..p.rpos);
                    p.rpos = 0;
                }
                return Ok(());
            }
            Err(e) => return Err(format!("RESP protocol error: {e}")),
        }
    }
}

fn range(data: &[u8], r: (usize, usize)) -> &[u8] {
    data.get(r.0..r.1).unwrap_or(&[])
}

fn handle_frame(
    sh: &mut Shared,
    rep: &mut Replies,
    role: Role,
    frame: &RangeFrame,
    data: &[u8],
    out: &mut Vec<Incoming>,
) -> Result<(), String> {
    if role == Role::Sub {
        if let RangeFrame::Array(items) = frame {
            return handle_push(sh, rep, items, data, out);
        }
        if let RangeFrame::Error(r) = frame {
            let msg = String::from_utf8_lossy(range(data, *r));
            return Err(match rep.expect.front() {
                Some(Expect::Auth) => format!("AUTH failed: {msg}"),
                Some(Expect::Select) => format!("SELECT failed: {msg}"),
                _ => format!("error on subscribe connection: {msg}"),
            });
        }
    }
    let Some(what) = rep.pop() else {
        return Err(format!("unexpected reply from Redis: {frame:?}"));
    };
    let simple = |expected: &[u8]| matches!(frame, RangeFrame::SimpleString(r) if range(data, *r) == expected);
    let err_text = || match frame {
        RangeFrame::Error(r) => String::from_utf8_lossy(range(data, *r)).into_owned(),
        other => format!("unexpected reply {other:?}"),
    };
    match what {
        Expect::Auth if !simple(b"OK") => Err(format!("AUTH failed: {}", err_text())),
        Expect::Select if !simple(b"OK") => Err(format!("SELECT failed: {}", err_text())),
        Expect::HelloPing | Expect::Ping if !simple(b"PONG") => {
            Err(format!("PING failed: {}", err_text()))
        }
        Expect::Publish(_) => {
            match frame {
                RangeFrame::Integer(_) => sh.stats.published += 1,
                RangeFrame::Error(_) => {
                    sh.stats.publish_errors += 1;
                    if !rep.logged_publish_error {
                        rep.logged_publish_error = true;
                        log::warn!(
                            "redis: PUBLISH failed: {} (further errors only counted)",
                            err_text()
                        );
                    }
                }
                _ => return Err(format!("unexpected PUBLISH reply {frame:?}")),
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Push frames on the subscribe connection.
fn handle_push(
    sh: &mut Shared,
    rep: &mut Replies,
    items: &[RangeFrame],
    data: &[u8],
    out: &mut Vec<Incoming>,
) -> Result<(), String> {
    let bulk = |i: usize| match items.get(i) {
        Some(RangeFrame::BulkString(r)) => Some(range(data, *r)),
        _ => None,
    };
    let Some(kind) = bulk(0) else {
        return Err(format!(
            "unexpected array on subscribe connection: {items:?}"
        ));
    };
    match kind {
        b"message" | b"smessage" => {
            let (Some(channel), Some(payload)) = (bulk(1), bulk(2)) else {
                sh.stats.received_malformed += 1;
                return Ok(());
            };
            let Some(room) = channel
                .strip_prefix(sh.prefix.as_bytes())
                .and_then(|r| std::str::from_utf8(r).ok())
            else {
                sh.stats.received_malformed += 1;
                return Ok(());
            };
            // A message still in flight for a room we just left: ignore.
            let Some(room) = sh.rooms.get(room) else {
                return Ok(());
            };
            match decode_envelope(payload) {
                None => sh.stats.received_malformed += 1,
                Some((_, node, _)) if node == sh.node_id => sh.stats.received_own_skipped += 1,
                Some((kind, _, body)) => {
                    sh.stats.received += 1;
                    out.push(Incoming {
                        room: room.clone(),
                        kind,
                        payload: Bytes::copy_from_slice(body),
                    });
                }
            }
            Ok(())
        }
        b"pong" => match rep.pop() {
            Some(Expect::Ping | Expect::HelloPing) => Ok(()),
            other => Err(format!("unexpected pong (expected {other:?})")),
        },
        b"subscribe" | b"unsubscribe" | b"ssubscribe" | b"sunsubscribe" => {
            log::debug!(
                "redis: {} {}",
                String::from_utf8_lossy(kind),
                String::from_utf8_lossy(bulk(1).unwrap_or(b""))
            );
            Ok(())
        }
        other => {
            log::debug!("redis: ignoring push {:?}", String::from_utf8_lossy(other));
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------
// Connections and the link
// ---------------------------------------------------------------------------

struct Conn {
    stream: TcpStream,
    connected: bool,
    p: Proto,
}

impl Conn {
    /// Writes as much of the buffer as the socket takes.
    fn write_out(&mut self) -> io::Result<()> {
        if !self.connected {
            return Ok(());
        }
        let p = &mut self.p;
        while p.wpos < p.wbuf.len() {
            match self.stream.write(&p.wbuf[p.wpos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => p.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if p.wpos == p.wbuf.len() {
            p.wbuf.clear();
            p.wpos = 0;
            if p.wbuf.capacity() > KEEP_WBUF_CAPACITY {
                p.wbuf = Vec::new();
            }
        } else if p.wpos >= AUTO_FLUSH_BYTES && p.wpos * 2 >= p.wbuf.len() {
            p.wbuf.drain(..p.wpos);
            p.wpos = 0;
        }
        Ok(())
    }

    /// Finishes a non-blocking connect. Ok(false) = still in progress.
    fn check_connected(&mut self) -> io::Result<bool> {
        if self.connected {
            return Ok(true);
        }
        if let Some(e) = self.stream.take_error()? {
            return Err(e);
        }
        match self.stream.peer_addr() {
            Ok(_) => {
                self.connected = true;
                let _ = self.stream.set_nodelay(true);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The Redis pub/sub link. See the module docs for how the loop drives it.
pub struct RedisLink {
    url: RedisUrl,
    registry: Registry,
    sub_token: Token,
    pub_token: Token,
    sub: Option<Conn>,
    publ: Option<Conn>,
    sh: Shared,
    publish_queue_cap: usize,
    max_message_size: usize,
    ping_interval: Duration,
    state: LinkState,
    /// When the link stopped being up (or was created).
    down_since: Instant,
    ever_up: bool,
    /// Consecutive failed attempts, for the backoff.
    attempt: u32,
    retry_at: Option<Instant>,
    connect_deadline: Option<Instant>,
    ping_at: Option<Instant>,
    /// Set when data is queued but not yet written (see `next_deadline`).
    dirty_since: Option<Instant>,
    last_failure: Option<String>,
    rng: u64,
    /// The address the last finished host-name lookup gave (see [`HostLookup`]).
    lookup: HostLookup,
}

/// Resolves the Redis host name on a short-lived thread, so a slow resolver never stalls the
/// loop. The loop only reads the last result.
#[derive(Default)]
struct HostLookup {
    /// The last address a lookup found.
    found: std::sync::Arc<std::sync::Mutex<Option<SocketAddr>>>,
    /// A lookup thread is running.
    running: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl HostLookup {
    /// Starts a lookup unless one is running; returns the last address found, if any.
    fn refresh(&self, host: &str, port: u16) -> Option<SocketAddr> {
        use std::sync::atomic::Ordering;
        if !self.running.swap(true, Ordering::AcqRel) {
            let (found, running, host) =
                (self.found.clone(), self.running.clone(), host.to_string());
            let started = std::thread::Builder::new()
                .name("redis-lookup".into())
                .spawn(move || {
                    match (host.as_str(), port)
                        .to_socket_addrs()
                        .map(|mut a| a.next())
                    {
                        Ok(Some(addr)) => {
                            if let Ok(mut slot) = found.lock() {
                                *slot = Some(addr);
                            }
                        }
                        Ok(None) => log::warn!("redis: {host} resolved to no address"),
                        Err(e) => log::warn!("redis: cannot resolve {host}: {e}"),
                    }
                    running.store(false, Ordering::Release);
                });
            if started.is_err() {
                self.running.store(false, Ordering::Release);
            }
        }
        self.found.lock().ok().and_then(|slot| *slot)
    }
}

impl RedisLink {
    /// Creates the link and starts the first connection attempt. Only fails if
    /// the registry cannot be cloned; connection problems are handled inside
    /// (state goes `Down` and retries).
    pub fn new(
        cfg: RedisConfig,
        registry: &Registry,
        sub_token: Token,
        pub_token: Token,
    ) -> io::Result<RedisLink> {
        let now = Instant::now();
        let mut link = RedisLink {
            registry: registry.try_clone()?,
            sub_token,
            pub_token,
            sub: None,
            publ: None,
            sh: Shared {
                node_id: cfg.node_id,
                sharded: cfg.sharded,
                prefix: cfg.channel_prefix,
                rooms: HashSet::new(),
                stats: RedisStats::default(),
                max_frame: cfg.max_message_size.saturating_add(FRAME_SLACK),
            },
            url: cfg.url,
            publish_queue_cap: cfg.publish_queue_cap,
            max_message_size: cfg.max_message_size,
            ping_interval: cfg.ping_interval.max(Duration::from_millis(10)),
            state: LinkState::Connecting,
            down_since: now,
            ever_up: false,
            attempt: 0,
            retry_at: None,
            connect_deadline: None,
            ping_at: None,
            dirty_since: None,
            last_failure: None,
            rng: random_node_id() | 1,
            lookup: HostLookup::default(),
        };
        log::info!(
            "redis: connecting to {} (node id {:016x}{})",
            link.url,
            link.sh.node_id,
            if link.sh.sharded {
                ", sharded pub/sub"
            } else {
                ""
            }
        );
        link.start_connect(now);
        Ok(link)
    }

    pub fn state(&self) -> LinkState {
        self.state
    }

    pub fn is_up(&self) -> bool {
        self.state == LinkState::Up
    }

    /// `None` while up; otherwise when the link was lost (or created).
    pub fn down_since(&self) -> Option<Instant> {
        (self.state != LinkState::Up).then_some(self.down_since)
    }

    pub fn stats(&self) -> RedisStats {
        self.sh.stats
    }

    pub fn node_id(&self) -> u64 {
        self.sh.node_id
    }

    /// PUBLISH bytes queued but not yet written to Redis.
    pub fn queued_bytes(&self) -> usize {
        self.publ.as_ref().map_or(0, |c| c.p.queued())
    }

    /// Number of rooms currently subscribed (kept across reconnects).
    pub fn subscribed_rooms(&self) -> usize {
        self.sh.rooms.len()
    }

    pub fn is_subscribed(&self, room: &str) -> bool {
        self.sh.rooms.contains(room)
    }

    /// Subscribes to `room` (call when its first local member joins).
    /// Returns false if it was already subscribed. Works in any state.
    pub fn subscribe(&mut self, room: &str) -> bool {
        if self.sh.rooms.contains(room) {
            return false;
        }
        self.sh.rooms.insert(Arc::from(room));
        if let Some(c) = self.sub.as_mut() {
            self.sh.sub_cmd(&mut c.p, true, room);
            self.mark_dirty();
        }
        true
    }

    /// Unsubscribes from `room` (call when its last local member leaves).
    /// Returns false if it was not subscribed. Messages still in flight for
    /// the room are discarded.
    pub fn unsubscribe(&mut self, room: &str) -> bool {
        if !self.sh.rooms.remove(room) {
            return false;
        }
        if let Some(c) = self.sub.as_mut() {
            self.sh.sub_cmd(&mut c.p, false, room);
            self.mark_dirty();
        }
        true
    }

    /// Queues a PUBLISH of `payload` to `room`'s channel. Returns false (and
    /// counts `publish_dropped`) if the link is not up, the queue cap would be
    /// exceeded, or the payload is larger than `max_message_size`.
    /// The bytes are written by `flush()` (or right away once 64 KiB are queued).
    pub fn publish(&mut self, room: &str, kind: MessageKind, payload: &[u8]) -> bool {
        let (Some(c), LinkState::Up) = (self.publ.as_mut(), self.state) else {
            self.sh.stats.publish_dropped += 1;
            return false;
        };
        if payload.len() > self.max_message_size {
            self.sh.stats.publish_dropped += 1;
            return false;
        }
        let cmd: &[u8] = if self.sh.sharded {
            b"SPUBLISH"
        } else {
            b"PUBLISH"
        };
        let env_len = ENVELOPE_HEADER_LEN + payload.len();
        let len = 4
            + bulk_len(cmd.len())
            + bulk_len(self.sh.prefix.len() + room.len())
            + bulk_len(env_len);
        if c.p.queued() + len > self.publish_queue_cap {
            self.sh.stats.publish_dropped += 1;
            return false;
        }
        let w = &mut c.p.wbuf;
        w.reserve(len);
        push_header(w, b'*', 3);
        push_bulk(w, &[cmd]);
        push_bulk(w, &[self.sh.prefix.as_bytes(), room.as_bytes()]);
        push_bulk(
            w,
            &[&encode_envelope_header(kind, self.sh.node_id), payload],
        );
        c.p.rep.push(Expect::Publish(1));
        if c.p.queued() >= AUTO_FLUSH_BYTES {
            if let Err(e) = c.write_out() {
                self.fail(format!("write to Redis failed: {e}"), Instant::now());
            }
        } else {
            self.mark_dirty();
        }
        true
    }

    /// Writes everything queued by publish/subscribe/unsubscribe. Call once
    /// per loop iteration after handling events.
    pub fn flush(&mut self) {
        self.dirty_since = None;
        let mut err = None;
        for c in [self.sub.as_mut(), self.publ.as_mut()]
            .into_iter()
            .flatten()
        {
            if c.p.queued() > 0
                && let Err(e) = c.write_out()
            {
                err = Some(e);
            }
        }
        if let Some(e) = err {
            self.fail(format!("write to Redis failed: {e}"), Instant::now());
        }
    }

    /// When the loop must call `on_timer` at the latest (use as poll timeout).
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.dirty_since,
            self.retry_at,
            self.connect_deadline,
            self.ping_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs due timers: pending flush, reconnect after backoff, connect
    /// timeout, keep-alive PING. Cheap to call every iteration.
    pub fn on_timer(&mut self, now: Instant) {
        if self.dirty_since.is_some() {
            self.flush();
        }
        if self.retry_at.is_some_and(|t| t <= now) {
            self.retry_at = None;
            self.start_connect(now);
        }
        if self.connect_deadline.is_some_and(|t| t <= now) {
            self.fail(
                format!("connect/handshake timed out after {CONNECT_TIMEOUT:?}"),
                now,
            );
        }
        if self.ping_at.is_some_and(|t| t <= now) {
            let unanswered = [self.sub.as_ref(), self.publ.as_ref()]
                .into_iter()
                .flatten()
                .any(|c| c.p.rep.ping_outstanding);
            if unanswered {
                self.fail(
                    format!("no PONG from Redis within {:?}", self.ping_interval),
                    now,
                );
                return;
            }
            for c in [self.sub.as_mut(), self.publ.as_mut()]
                .into_iter()
                .flatten()
            {
                c.p.cmd(&[b"PING"]);
                c.p.rep.push(Expect::Ping);
            }
            self.ping_at = Some(now + self.ping_interval);
            self.flush();
        }
    }

    /// Handles a poll event. Returns false if the token is not one of ours.
    pub fn on_event(&mut self, event: &Event, out: &mut Vec<Incoming>) -> bool {
        self.on_token(event.token(), out)
    }

    /// Handles readiness of `token` (readable and/or writable: both are
    /// drained). Returns false if the token is not one of ours.
    pub fn on_token(&mut self, token: Token, out: &mut Vec<Incoming>) -> bool {
        let role = if token == self.sub_token {
            Role::Sub
        } else if token == self.pub_token {
            Role::Pub
        } else {
            return false;
        };
        if let Err(reason) = self.drive(role, out) {
            self.fail(reason, Instant::now());
            return true;
        }
        if self.state == LinkState::Connecting && self.handshake_done() {
            self.become_up(Instant::now());
        }
        true
    }

    fn handshake_done(&self) -> bool {
        [self.sub.as_ref(), self.publ.as_ref()]
            .into_iter()
            .all(|c| c.is_some_and(|c| c.connected && c.p.rep.handshake_pending == 0))
    }

    fn drive(&mut self, role: Role, out: &mut Vec<Incoming>) -> Result<(), String> {
        let conn = match role {
            Role::Sub => self.sub.as_mut(),
            Role::Pub => self.publ.as_mut(),
        };
        let Some(c) = conn else { return Ok(()) }; // stale event
        match c.check_connected() {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) => return Err(format!("connect to {} failed: {e}", self.url)),
        }
        c.write_out()
            .map_err(|e| format!("write to Redis failed: {e}"))?;
        loop {
            let p = &mut c.p;
            if p.rpos > 0 && p.rpos == p.rbuf.len() {
                p.rbuf.clear();
                p.rpos = 0;
            }
            let old = p.rbuf.len();
            p.rbuf.resize(old + READ_CHUNK, 0);
            let res = c.stream.read(&mut p.rbuf[old..]);
            match res {
                Ok(0) => {
                    p.rbuf.truncate(old);
                    return Err("connection closed by Redis".to_string());
                }
                Ok(n) => {
                    p.rbuf.truncate(old + n);
                    process_input(&mut self.sh, p, role, out)?;
                }
                Err(e) => {
                    p.rbuf.truncate(old);
                    match e.kind() {
                        io::ErrorKind::WouldBlock => break,
                        io::ErrorKind::Interrupted => {}
                        _ => return Err(format!("read from Redis failed: {e}")),
                    }
                }
            }
        }
        // Replies (e.g. to PING) may have queued nothing new, but the handshake
        // bytes may still be pending after connect: write again.
        c.write_out()
            .map_err(|e| format!("write to Redis failed: {e}"))?;
        Ok(())
    }

    fn mark_dirty(&mut self) {
        if self.dirty_since.is_none() {
            self.dirty_since = Some(Instant::now());
        }
    }

    fn resolve(&self) -> io::Result<SocketAddr> {
        if let Ok(ip) = self.url.host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, self.url.port));
        }
        self.lookup
            .refresh(&self.url.host, self.url.port)
            .ok_or_else(|| io::Error::other("resolving the host name"))
    }

    fn open(&self, addr: SocketAddr, token: Token) -> io::Result<Conn> {
        let mut stream = TcpStream::connect(addr)?;
        self.registry
            .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
        let mut p = Proto::default();
        p.handshake(&self.url);
        Ok(Conn {
            stream,
            connected: false,
            p,
        })
    }

    fn start_connect(&mut self, now: Instant) {
        self.state = LinkState::Connecting;
        self.connect_deadline = Some(now + CONNECT_TIMEOUT);
        let res = self.resolve().and_then(|addr| {
            let sub = self.open(addr, self.sub_token)?;
            let publ = self.open(addr, self.pub_token)?;
            Ok((addr, sub, publ))
        });
        match res {
            Ok((addr, mut sub, publ)) => {
                log::debug!("redis: connecting to {addr} (attempt {})", self.attempt + 1);
                for room in &self.sh.rooms {
                    self.sh.sub_cmd(&mut sub.p, true, room);
                }
                self.sub = Some(sub);
                self.publ = Some(publ);
            }
            Err(e) => self.fail(format!("connect to {} failed: {e}", self.url), now),
        }
    }

    fn become_up(&mut self, now: Instant) {
        self.state = LinkState::Up;
        self.connect_deadline = None;
        self.ping_at = Some(now + self.ping_interval);
        if self.ever_up {
            self.sh.stats.reconnects += 1;
            log::info!(
                "redis: link up again ({}) after {:.1?} down and {} connect attempts; re-subscribed {} rooms",
                self.url,
                now.saturating_duration_since(self.down_since),
                self.attempt,
                self.sh.rooms.len()
            );
        } else {
            log::info!(
                "redis: link up ({}), {} rooms subscribed",
                self.url,
                self.sh.rooms.len()
            );
        }
        self.ever_up = true;
        self.attempt = 0;
        self.last_failure = None;
    }

    /// Drops both connections and schedules a reconnect.
    fn fail(&mut self, reason: String, now: Instant) {
        for mut c in [self.sub.take(), self.publ.take()].into_iter().flatten() {
            self.sh.stats.publish_lost += c.p.rep.publishes_pending();
            let _ = self.registry.deregister(&mut c.stream);
        }
        self.dirty_since = None;
        self.connect_deadline = None;
        self.ping_at = None;
        let delay = self.backoff();
        self.retry_at = Some(now + delay);
        if self.state == LinkState::Up {
            self.down_since = now;
            log::warn!("redis: link down: {reason}; reconnecting in {delay:.0?}");
        } else {
            self.sh.stats.connect_failures += 1;
            if self.last_failure.as_deref() != Some(reason.as_str()) {
                log::warn!("redis: {reason}; will keep retrying (repeats logged at debug level)");
            } else {
                log::debug!("redis: {reason}; retrying in {delay:.0?}");
            }
        }
        self.last_failure = Some(reason);
        self.state = LinkState::Down {
            since: self.down_since,
        };
        self.attempt = self.attempt.saturating_add(1);
    }

    /// Full jitter: uniform in [0, min(cap, base * 2^attempt)].
    fn backoff(&mut self) -> Duration {
        let ceiling = BACKOFF_BASE
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(BACKOFF_CAP);
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let ms = ceiling.as_millis() as u64;
        Duration::from_millis(r % (ms + 1))
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// The Redis link's lines for `/metrics`.
pub(crate) fn render_metrics(link: &RedisLink) -> String {
    let stats = link.stats();
    let mut page = MetricsPage::default();
    let (g, c) = ("gauge", "counter");
    let up = u8::from(matches!(link.state(), LinkState::Up));
    page.single("wschat_redis_up", g, "1 while the Redis link is up.", up);
    page.single(
        "wschat_redis_published_total",
        c,
        "Messages published to Redis and acknowledged.",
        stats.published,
    );
    page.single(
        "wschat_redis_publish_dropped_total",
        c,
        "Messages not published: link down, queue full or too large.",
        stats.publish_dropped,
    );
    page.single(
        "wschat_redis_publish_lost_total",
        c,
        "Messages in flight when the link failed.",
        stats.publish_lost,
    );
    page.single(
        "wschat_redis_received_total",
        c,
        "Messages received from other nodes.",
        stats.received,
    );
    page.single(
        "wschat_redis_received_own_total",
        c,
        "This node's own messages seen on a channel and skipped.",
        stats.received_own_skipped,
    );
    page.single(
        "wschat_redis_received_malformed_total",
        c,
        "Channel messages that were not wschat envelopes.",
        stats.received_malformed,
    );
    page.single(
        "wschat_redis_reconnects_total",
        c,
        "Times the link came back after being up.",
        stats.reconnects,
    );
    page.single(
        "wschat_redis_subscribed_rooms",
        g,
        "Rooms this node is subscribed to.",
        link.subscribed_rooms(),
    );
    page.single(
        "wschat_redis_queued_bytes",
        g,
        "Publish bytes not yet written to Redis.",
        link.queued_bytes(),
    );
    page.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_defaults() {
        let u = RedisUrl::parse("redis://localhost").unwrap();
        assert_eq!(u.host, "localhost");
        assert_eq!(u.port, 6379);
        assert_eq!((u.username, u.password, u.db), (None, None, None));
        let u = RedisUrl::parse("redis://127.0.0.1:7000/").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.db), ("127.0.0.1", 7000, None));
    }

    #[test]
    fn url_password_and_db() {
        let u = RedisUrl::parse("redis://:s3cr%40t@redis.example:6380/2").unwrap();
        assert_eq!(u.password.as_deref(), Some("s3cr@t"));
        assert_eq!(u.username, None);
        assert_eq!(
            (u.host.as_str(), u.port, u.db),
            ("redis.example", 6380, Some(2))
        );
        assert_eq!(u.to_string(), "redis://:***@redis.example:6380/2");
        assert!(!format!("{u:?}").contains("s3cr"));
        let u = RedisUrl::parse("REDIS://alice:pw:with:colons@h/15").unwrap();
        assert_eq!(u.username.as_deref(), Some("alice"));
        assert_eq!(u.password.as_deref(), Some("pw:with:colons"));
        assert_eq!(u.db, Some(15));
        let u = RedisUrl::parse("redis://:p@ss@h").unwrap(); // last '@' splits
        assert_eq!(
            (u.password.as_deref(), u.host.as_str()),
            (Some("p@ss"), "h")
        );
        let u = RedisUrl::parse("redis://:@h").unwrap();
        assert_eq!(u.password, None);
    }

    #[test]
    fn url_ipv6() {
        let u = RedisUrl::parse("redis://[::1]:6390").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 6390));
        assert_eq!(u.to_string(), "redis://[::1]:6390");
        let u = RedisUrl::parse("redis://[::1]").unwrap();
        assert_eq!(u.port, 6379);
    }

    #[test]
    fn url_bad_inputs() {
        use RedisUrlError::*;
        let cases: &[(&str, RedisUrlError)] = &[
            ("localhost:6379", MissingScheme),
            ("", MissingScheme),
            ("rediss://h", UnsupportedScheme("rediss".into())),
            ("http://h", UnsupportedScheme("http".into())),
            ("redis://", EmptyHost),
            ("redis://:6379", EmptyHost),
            ("redis://:pw@", EmptyHost),
            ("redis://h:", BadPort("".into())),
            ("redis://h:0", BadPort("0".into())),
            ("redis://h:65536", BadPort("65536".into())),
            ("redis://h:abc", BadPort("abc".into())),
            ("redis://h/x", BadDb("x".into())),
            ("redis://h/1/2", BadDb("1/2".into())),
            ("redis://h/-1", BadDb("-1".into())),
            ("redis://::1", BadHost("::1".into())),
            ("redis://[::1", BadHost("[::1".into())),
            ("redis://[::1]x", BadHost("[::1]x".into())),
            ("redis://pw@h", BadUserInfo),
            ("redis://user:@h", BadUserInfo),
            ("redis://:%zz@h", BadPercentEncoding),
            ("redis://:%4@h", BadPercentEncoding),
            ("redis://h?db=1", UnsupportedQuery),
        ];
        for (s, want) in cases {
            assert_eq!(RedisUrl::parse(s).as_ref(), Err(want), "{s}");
            assert!(!want.to_string().is_empty());
        }
    }

    #[test]
    fn envelope_roundtrip() {
        let e = encode_envelope(MessageKind::Text, 0x0102_0304_0506_0708, "héllo".as_bytes());
        assert_eq!(&e[..10], &[0xC1, 1, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            decode_envelope(&e),
            Some((MessageKind::Text, 0x0102_0304_0506_0708, "héllo".as_bytes()))
        );
        let e = encode_envelope(MessageKind::Binary, u64::MAX, &[0xff, 0, 0xfe]);
        assert_eq!(
            decode_envelope(&e),
            Some((MessageKind::Binary, u64::MAX, &[0xff, 0, 0xfe][..]))
        );
        let e = encode_envelope(MessageKind::Binary, 7, b"");
        assert_eq!(
            decode_envelope(&e),
            Some((MessageKind::Binary, 7, &b""[..]))
        );
    }

    #[test]
    fn envelope_malformed() {
        let good = encode_envelope(MessageKind::Text, 1, b"hi");
        assert_eq!(decode_envelope(&good[..9]), None); // short
        assert_eq!(decode_envelope(b""), None);
        assert_eq!(decode_envelope(b"hello world, plain text"), None); // bad magic
        let mut bad = good.clone();
        bad[1] = 3; // unknown kind
        assert_eq!(decode_envelope(&bad), None);
        let bad_utf8 = encode_envelope(MessageKind::Text, 1, &[0xff, 0xfe]);
        assert_eq!(decode_envelope(&bad_utf8), None);
        assert!(decode_envelope(&encode_envelope(MessageKind::Binary, 1, &[0xff])).is_some());
    }

    #[test]
    fn resp_encoding() {
        let mut b = Vec::new();
        push_cmd(&mut b, &[b"SUBSCRIBE", b"ch"]);
        assert_eq!(b, b"*2\r\n$9\r\nSUBSCRIBE\r\n$2\r\nch\r\n");
        for n in [0usize, 9, 10, 99, 100, 12345] {
            let mut b = Vec::new();
            push_bulk(&mut b, &[&vec![b'x'; n]]);
            assert_eq!(b.len(), bulk_len(n));
        }
    }

    fn shared(node_id: u64, rooms: &[&str]) -> Shared {
        Shared {
            node_id,
            sharded: false,
            prefix: CHANNEL_PREFIX.to_string(),
            rooms: rooms.iter().map(|r| Arc::from(*r)).collect(),
            stats: RedisStats::default(),
            max_frame: 1000 + FRAME_SLACK,
        }
    }

    fn message(channel: &str, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        push_cmd(&mut v, &[b"message", channel.as_bytes(), payload]);
        v
    }

    /// Feeds `input` in chunks of `chunk` bytes.
    fn feed(
        sh: &mut Shared,
        p: &mut Proto,
        role: Role,
        input: &[u8],
        chunk: usize,
    ) -> Result<Vec<Incoming>, String> {
        let mut out = Vec::new();
        for part in input.chunks(chunk) {
            p.rbuf.extend_from_slice(part);
            process_input(sh, p, role, &mut out)?;
        }
        Ok(out)
    }

    #[test]
    fn sub_stream_split_at_every_size() {
        let mut input = Vec::new();
        input.extend_from_slice(b"+PONG\r\n"); // handshake PING
        input.extend_from_slice(b"*3\r\n$9\r\nsubscribe\r\n$16\r\nwschat:room:/a/b\r\n:1\r\n");
        input.extend(message(
            "wschat:room:/a/b",
            &encode_envelope(MessageKind::Text, 2, b"hi\r\nthere"),
        ));
        input.extend(message(
            "wschat:room:/a/b",
            &encode_envelope(MessageKind::Binary, 1, b"own"),
        ));
        input.extend(message("wschat:room:/a/b", b"garbage"));
        input.extend(message(
            "wschat:room:/other",
            &encode_envelope(MessageKind::Text, 2, b"x"),
        ));
        input.extend(message(
            "foreign",
            &encode_envelope(MessageKind::Text, 2, b"x"),
        ));
        input.extend(message(
            "wschat:room:/a/b",
            &encode_envelope(MessageKind::Binary, 3, &[0, 13, 10, 255]),
        ));
        input.extend_from_slice(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"); // keep-alive PING in sub mode
        for chunk in 1..=input.len() {
            let mut sh = shared(1, &["/a/b"]);
            let mut p = Proto::default();
            p.rep.push(Expect::HelloPing);
            p.rep.push(Expect::Ping);
            let out = feed(&mut sh, &mut p, Role::Sub, &input, chunk).unwrap();
            assert_eq!(out.len(), 2, "chunk {chunk}");
            assert_eq!(&*out[0].room, "/a/b");
            assert_eq!(out[0].kind, MessageKind::Text);
            assert_eq!(&out[0].payload[..], b"hi\r\nthere");
            assert_eq!(out[1].kind, MessageKind::Binary);
            assert_eq!(&out[1].payload[..], &[0, 13, 10, 255]);
            assert_eq!(sh.stats.received, 2);
            assert_eq!(sh.stats.received_own_skipped, 1);
            assert_eq!(sh.stats.received_malformed, 2); // garbage + foreign channel
            assert!(p.rep.expect.is_empty() && p.rep.handshake_pending == 0);
            assert!(!p.rep.ping_outstanding);
            assert!(p.rbuf.is_empty());
        }
    }

    #[test]
    fn pub_replies_counted_in_order() {
        let mut sh = shared(1, &[]);
        let mut p = Proto::default();
        p.handshake(&RedisUrl::parse("redis://:pw@h/3").unwrap());
        assert_eq!(p.rep.handshake_pending, 3);
        for _ in 0..3 {
            p.rep.push(Expect::Publish(1));
        }
        p.rep.push(Expect::Ping);
        p.rep.push(Expect::Publish(1));
        assert_eq!(p.rep.publishes_pending(), 4);
        let input = b"+OK\r\n+OK\r\n+PONG\r\n:2\r\n:0\r\n-ERR oops\r\n+PONG\r\n:1\r\n";
        for chunk in [1, 2, 3, 7, 100] {
            let mut sh2 = shared(1, &[]);
            let mut p2 = Proto::default();
            p2.rep.expect = p.rep.expect.clone();
            p2.rep.handshake_pending = 3;
            feed(&mut sh2, &mut p2, Role::Pub, input, chunk).unwrap();
            assert_eq!(sh2.stats.published, 3);
            assert_eq!(sh2.stats.publish_errors, 1);
            assert!(p2.rep.expect.is_empty());
            assert_eq!(p2.rep.handshake_pending, 0);
        }
        // AUTH failure drops the link.
        p.rbuf
            .extend_from_slice(b"-WRONGPASS invalid username-password pair\r\n");
        let err = process_input(&mut sh, &mut p, Role::Pub, &mut Vec::new()).unwrap_err();
        assert!(err.starts_with("AUTH failed: WRONGPASS"), "{err}");
    }

    #[test]
    fn sub_errors_and_limits() {
        // Error on subscribe connection (e.g. NOAUTH or unknown SSUBSCRIBE).
        let mut sh = shared(1, &[]);
        let mut p = Proto::default();
        p.rbuf
            .extend_from_slice(b"-ERR unknown command 'SSUBSCRIBE'\r\n");
        assert!(process_input(&mut sh, &mut p, Role::Sub, &mut Vec::new()).is_err());
        // Unexpected reply with nothing expected.
        let mut p = Proto::default();
        p.rbuf.extend_from_slice(b"+OK\r\n");
        assert!(process_input(&mut sh, &mut p, Role::Pub, &mut Vec::new()).is_err());
        // Garbage type byte.
        let mut p = Proto::default();
        p.rbuf.extend_from_slice(b"HTTP/1.1 400 Bad Request\r\n");
        assert!(process_input(&mut sh, &mut p, Role::Sub, &mut Vec::new()).is_err());
        // Oversized frame: incomplete data above the cap is an error...
        let mut p = Proto::default();
        let big = message("wschat:room:/r", &vec![b'x'; 3000]);
        let res = feed(&mut sh, &mut p, Role::Sub, &big[..2100], 100);
        assert!(res.unwrap_err().contains("larger than"));
        // ...while a frame within the cap passes.
        let mut sh = shared(1, &["/r"]);
        let mut p = Proto::default();
        let ok = message(
            "wschat:room:/r",
            &encode_envelope(MessageKind::Binary, 9, &[7u8; 1000]),
        );
        let out = feed(&mut sh, &mut p, Role::Sub, &ok, 333).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].payload.len(), 1000);
    }

    #[test]
    fn sharded_commands() {
        let mut sh = shared(1, &["/a"]);
        sh.sharded = true;
        let mut p = Proto::default();
        sh.sub_cmd(&mut p, true, "/a");
        sh.sub_cmd(&mut p, false, "/a");
        assert_eq!(
            p.wbuf,
            b"*2\r\n$10\r\nSSUBSCRIBE\r\n$14\r\nwschat:room:/a\r\n*2\r\n$12\r\nSUNSUBSCRIBE\r\n$14\r\nwschat:room:/a\r\n"
        );
        // smessage is delivered like message.
        let mut input = Vec::new();
        push_cmd(
            &mut input,
            &[
                b"smessage",
                b"wschat:room:/a",
                &encode_envelope(MessageKind::Text, 2, b"s"),
            ],
        );
        let out = feed(&mut sh, &mut p, Role::Sub, &input, 5).unwrap();
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn backoff_is_bounded_with_full_jitter() {
        let poll = mio::Poll::new().unwrap();
        // Port 1 on loopback: refused quickly, never a real service.
        let cfg = RedisConfig::new(RedisUrl::parse("redis://127.0.0.1:1").unwrap(), 5);
        let mut link = RedisLink::new(cfg, poll.registry(), Token(1), Token(2)).unwrap();
        assert!(!link.publish("/r", MessageKind::Text, b"x"));
        assert_eq!(link.stats().publish_dropped, 1);
        for attempt in 0..20 {
            link.attempt = attempt;
            let d = link.backoff();
            let ceiling = BACKOFF_BASE
                .saturating_mul(1 << attempt.min(16))
                .min(BACKOFF_CAP);
            assert!(d <= ceiling, "{d:?} > {ceiling:?}");
        }
        let spread: HashSet<Duration> = (0..50)
            .map(|_| {
                link.attempt = 10;
                link.backoff()
            })
            .collect();
        assert!(spread.len() > 10, "jitter too small: {spread:?}");
        assert!(link.next_deadline().is_some());
    }
}
