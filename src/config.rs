//! The server's settings: every limit has a name, a default and the reason for that default.
//!
//! `Config` is plain data. The command line (`cli.rs`) fills it; `Config::validate` checks the
//! combinations; `Config::websocket_config` turns it into tungstenite's settings. No I/O here.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use tungstenite::protocol::WebSocketConfig;

/// The tutorial's port, so old bookmarks and clients keep working.
pub const DEFAULT_PORT: u16 = 6969;
/// Largest text or binary message a client may send. 64 KiB is far more than any chat line
/// and small enough that a thousand clients mid-message cannot exhaust a small host.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * 1024;
/// Bytes that may wait for one slow reader before the slow-client policy applies: about
/// sixteen thousand 64-byte messages, several seconds of a busy room.
pub const DEFAULT_MAX_OUTBOUND: usize = 1024 * 1024;
/// Bytes that may wait for all readers together: makes memory predictable on a small host.
pub const DEFAULT_MAX_OUTBOUND_TOTAL: usize = 256 * 1024 * 1024;
/// The kernel send buffer of each client socket: 0 leaves it to the kernel's autotuning,
/// which grows it (up to `tcp_wmem`'s maximum, 4 MiB by default) for a fast reader's bursts.
/// A fixed size bounds the kernel memory a client that does not read can pin, at the price
/// of those bursts: they then wait in the client's queue and meet `--max-outbound` sooner
/// (docs/hostile.md).
pub const DEFAULT_SEND_BUFFER: usize = 0;
/// The kernel takes an `int` and doubles it.
const MAX_SEND_BUFFER: usize = 1 << 30;
/// An HTTP request head larger than this is answered with 431. Browsers send under 2 KiB.
pub const MAX_HEAD_SIZE: usize = 8 * 1024;
/// More header lines than this is answered with 431 too.
pub const MAX_HEADERS: usize = 48;
/// A client must finish its request head (and, with keep-alive, send the next one) in time,
/// or its socket is closed: slowloris sockets then cost a few seconds, not forever.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Ping a connection after this much silence: under the 60 s idle timeout of common proxies.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(30);
/// Close a connection that has sent nothing, not even a pong, for this long: two missed pings
/// and a margin.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// After the server sends Close, the peer has this long to answer before the socket is dropped.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// On SIGINT/SIGTERM, clients get this long to finish the close handshake.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the one-line stats log is written (when anything happened).
pub const DEFAULT_STATS_INTERVAL: Duration = Duration::from_secs(60);
/// File descriptors kept back from the connection cap for the listener, the poll, the signal
/// pipe, the Redis links, systemd notification and the log.
pub const RESERVED_FDS: usize = 32;
/// History kept per room, in bytes, whatever `--history N` says.
pub const DEFAULT_HISTORY_BYTES: usize = 256 * 1024;
/// How long a room's history outlives its last member.
pub const DEFAULT_HISTORY_TTL: Duration = Duration::from_secs(3600);
/// Longest room name (URL path) accepted, in bytes.
pub const MAX_ROOM_NAME: usize = 256;
/// Smallest message compressed with `--compression on`. Below about 1 KiB a chat line
/// shrinks by a few dozen bytes at best (deflate's block header and Huffman tables eat the
/// gain), while compressing it still costs the server and every recipient's inflater.
pub const DEFAULT_COMPRESSION_MIN: usize = 1024;
/// Upper bound on a --static-dir folder loaded into memory.
pub const MAX_STATIC_DIR_BYTES: usize = 16 * 1024 * 1024;

/// What happens to a member whose outbound queue is over its budget when a message arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowClientPolicy {
    /// Close with 1008 "slow consumer"; drop the socket if the close cannot be sent in time.
    Close,
    /// Skip the new message for that member.
    DropNewest,
    /// Discard whole queued messages not yet started, oldest first, and queue the new one.
    DropOldest,
}

impl SlowClientPolicy {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "close" => Some(Self::Close),
            "drop-newest" => Some(Self::DropNewest),
            "drop-oldest" => Some(Self::DropOldest),
            _ => None,
        }
    }
}

impl fmt::Display for SlowClientPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Close => "close",
            Self::DropNewest => "drop-newest",
            Self::DropOldest => "drop-oldest",
        })
    }
}

/// Per-client message rate limit (a token bucket).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Messages per second, sustained.
    pub per_second: f64,
    /// Messages that may arrive at once after a quiet spell.
    pub burst: f64,
    /// What happens to a message over the rate.
    pub over: OverRate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverRate {
    /// The message is dropped (counted); the client stays.
    Drop,
    /// The client is closed with 1008 "rate limit".
    Close,
}

/// Which browser origins may open a WebSocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPolicy {
    /// No `Origin` (non-browser clients) or an `Origin` whose host is the request's `Host`.
    SameHost,
    /// Any origin.
    Any,
    /// No `Origin`, the same host, or one of these (`scheme://host[:port]`, compared
    /// case-insensitively).
    List(Vec<String>),
}

/// Where the page comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageSource {
    /// The files of `static/` built into the binary.
    BuiltIn,
    /// A folder loaded into memory at start-up (and again on SIGHUP).
    Dir(PathBuf),
}

/// Every setting of the server.
#[derive(Debug, Clone)]
pub struct Config {
    pub bind: IpAddr,
    /// 0 picks a free port (tests).
    pub port: u16,
    pub echo: bool,
    pub page: PageSource,
    pub max_message_size: usize,
    pub max_outbound: usize,
    /// A sub-limit of the memory ceiling for all queues together (capped at a quarter of it).
    pub max_outbound_total: usize,
    /// The memory ceiling (`--max-memory`); None: derived from the host at start.
    pub max_memory: Option<usize>,
    /// The kernel send buffer of each client socket (`--send-buffer`); 0 leaves it to the
    /// kernel's autotuning.
    pub send_buffer: usize,
    pub slow_client: SlowClientPolicy,
    pub handshake_timeout: Duration,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub drain_timeout: Duration,
    pub rate_limit: Option<RateLimit>,
    pub origins: OriginPolicy,
    /// None: derived from the open-file limit at start-up.
    pub max_connections: Option<usize>,
    /// None: no periodic stats line.
    pub stats_interval: Option<Duration>,
    /// Messages kept per room for late joiners; 0 = off.
    pub history: usize,
    pub history_bytes: usize,
    pub history_ttl: Duration,
    /// PEM certificate chain and private key: with both, the listener speaks TLS (or only the
    /// `tls_port` listener, when that is set).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// A second listener, for TLS, beside the plain one on `port`.
    pub tls_port: Option<u16>,
    /// Use the systemd socket-activation and notification protocols when the environment says so.
    pub systemd: bool,
    /// Share rooms with other wschat processes through this Redis (`--redis`).
    pub redis: Option<crate::redis::RedisUrl>,
    /// Use Redis 7 sharded pub/sub (SSUBSCRIBE/SPUBLISH) on a single endpoint.
    pub redis_sharded: bool,
    /// Bind with SO_REUSEPORT so that several processes share the port (`--reuse-port`).
    pub reuse_port: bool,
    /// `--redis-ca`: PEM CA certificates a `rediss://` server must chain to, replacing the
    /// system's roots. Read at start-up; ignored for `redis://`.
    pub redis_ca: Option<PathBuf>,
    /// Accept permessage-deflate (RFC 7692) offers (`--compression on`). Off by default, as
    /// in every peer: see the README for why and when to turn it on.
    pub compression: bool,
    /// Messages shorter than this go uncompressed even to members with deflate.
    pub compression_min: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: DEFAULT_PORT,
            echo: false,
            page: PageSource::BuiltIn,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_outbound: DEFAULT_MAX_OUTBOUND,
            max_outbound_total: DEFAULT_MAX_OUTBOUND_TOTAL,
            max_memory: None,
            send_buffer: DEFAULT_SEND_BUFFER,
            slow_client: SlowClientPolicy::Close,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            ping_interval: DEFAULT_PING_INTERVAL,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            rate_limit: None,
            origins: OriginPolicy::SameHost,
            max_connections: None,
            stats_interval: Some(DEFAULT_STATS_INTERVAL),
            history: 0,
            history_bytes: DEFAULT_HISTORY_BYTES,
            history_ttl: DEFAULT_HISTORY_TTL,
            // Library users (tests, embedding) get no systemd integration unless they ask;
            // the command line turns it on (`--no-systemd` turns it off again).
            systemd: false,
            redis: None,
            redis_sharded: false,
            tls_cert: None,
            tls_key: None,
            tls_port: None,
            reuse_port: false,
            redis_ca: None,
            compression: false,
            compression_min: DEFAULT_COMPRESSION_MIN,
        }
    }
}

/// A combination of settings that cannot work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Checks the settings against each other; called once before the server starts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |m: &str| Err(ConfigError(m.to_string()));
        if self.max_message_size == 0 {
            return fail("--max-message-size must be at least 1 byte");
        }
        // A message must fit in the outbound budget, or every message would be a slow-client
        // event. Saturating: sizes come from the command line and may be huge.
        let largest_frame = self
            .max_message_size
            .saturating_add(MAX_SERVER_FRAME_HEADER);
        if self.max_outbound < largest_frame {
            return fail("--max-outbound must exceed --max-message-size");
        }
        // A joiner's history is queued before any live message: a full history plus the
        // largest message must fit its budget, or the history alone could close it as slow.
        if self.history > 0 && self.history_bytes.saturating_add(largest_frame) > self.max_outbound
        {
            return fail(
                "--history-bytes plus --max-message-size must fit in --max-outbound (a joiner's history must not make it a slow consumer)",
            );
        }
        if self.send_buffer > MAX_SEND_BUFFER {
            return fail("--send-buffer must be at most 1G");
        }
        if self.max_outbound_total < self.max_outbound {
            return fail("--max-outbound-total must be at least --max-outbound");
        }
        if self.ping_interval.is_zero() || self.idle_timeout <= self.ping_interval {
            return fail("--idle-timeout must be longer than --ping-interval (and both above 0)");
        }
        if self.handshake_timeout.is_zero() {
            return fail("--handshake-timeout must be above 0");
        }
        if let Some(rate) = self.rate_limit
            && (rate.per_second.is_nan() || rate.per_second <= 0.0 || rate.burst < 1.0)
        {
            return fail("--max-rate must be above 0 and its burst at least 1");
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return fail("--tls-cert needs --tls-key"),
            (None, Some(_)) => return fail("--tls-key needs --tls-cert"),
            (None, None) if self.tls_port.is_some() => {
                return fail("--tls-port needs --tls-cert and --tls-key");
            }
            _ => {}
        }
        if self.max_connections == Some(0) {
            return fail("--max-connections must be at least 1");
        }
        Ok(())
    }

    /// tungstenite's settings for one server-side connection.
    pub fn websocket_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            // tungstenite copies at most this much per read from our loop-wide read buffer.
            // Its default (128 KiB) is allocated and touched per socket; this keeps an idle
            // connection at a few hundred bytes. Large frames still grow the buffer to
            // their size, bounded by max_frame_size.
            .read_buffer_size(READ_BUFFER_SIZE)
            // Our stream wrapper accepts every write into the connection's own queue, so
            // tungstenite's buffer only ever holds one control frame in passing.
            .write_buffer_size(0)
            .max_write_buffer_size(usize::MAX)
            .max_message_size(Some(self.max_message_size))
            // A single frame may be as large as a whole message, no larger: an oversized
            // header is refused before its payload is buffered.
            .max_frame_size(Some(self.max_message_size))
    }

    /// Worst-case bytes the limits allow, logged at start-up so an operator can size the host.
    pub fn worst_case_memory(&self, max_connections: usize) -> u64 {
        // Saturating: huge limits (64-bit sizes times many connections) must read as "more
        // than any host", not wrap to a small figure.
        let connections = max_connections as u64;
        let inbound_per_conn = (self.max_message_size as u64)
            .saturating_mul(2)
            .saturating_add(READ_BUFFER_SIZE as u64);
        let inbound_per_conn = if self.compression {
            // A compressed message in flight: its compressed bytes (at most about the limit),
            // then its inflated frame until tungstenite has copied it.
            inbound_per_conn.saturating_add((self.max_message_size as u64).saturating_mul(2))
        } else {
            inbound_per_conn
        };
        let history = if self.history > 0 {
            // Rooms are bounded by connections (a room exists while it has members or history).
            self.history_bytes as u64
        } else {
            0
        };
        // A busy connection keeps one flushed buffer for its next pass.
        let spare_per_conn = crate::outbound::KEEP_CAPACITY as u64;
        inbound_per_conn
            .saturating_add(spare_per_conn)
            .saturating_mul(connections)
            .saturating_add(self.max_outbound_total as u64)
            .saturating_add(history.saturating_mul(connections))
    }
}

/// A server frame's header is at most 10 bytes (2, plus 8 for a 64-bit length; never masked).
pub const MAX_SERVER_FRAME_HEADER: usize = 10;

/// Bytes tungstenite copies per read call out of the loop's shared read buffer.
pub const READ_BUFFER_SIZE: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn outbound_budget_must_hold_a_message() {
        let config = Config {
            max_outbound: 1000,
            max_message_size: 4096,
            ..Config::default()
        };
        assert!(config.validate().is_err());
    }

    #[test]
    fn huge_sizes_do_not_overflow_the_checks() {
        let config = Config {
            max_message_size: usize::MAX,
            ..Config::default()
        };
        assert!(config.validate().is_err());
        let config = Config {
            max_message_size: usize::MAX - 5,
            max_outbound: usize::MAX,
            max_outbound_total: usize::MAX,
            ..Config::default()
        };
        assert_eq!(config.validate(), Ok(()));
    }

    /// Review bug 7: history larger than the outbound budget closed joiners as slow.
    #[test]
    fn history_must_fit_in_a_joiners_budget() {
        let config = Config {
            history: 100,
            history_bytes: 2 * 1024 * 1024,
            ..Config::default()
        };
        let error = config.validate().unwrap_err();
        assert!(error.0.contains("--history-bytes"), "{error}");
        // Without history the sizes do not matter.
        let config = Config {
            history: 0,
            history_bytes: 2 * 1024 * 1024,
            ..Config::default()
        };
        assert_eq!(config.validate(), Ok(()));
        // The defaults fit.
        let config = Config {
            history: 100,
            ..Config::default()
        };
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn systemd_integration_is_off_for_library_users() {
        assert!(!Config::default().systemd);
    }

    #[test]
    fn limits_near_the_top_of_usize_are_checked_not_wrapped() {
        // On a 32-bit target --max-message-size 4294967290 parses; the frame header added to
        // it must not wrap around and let a too-small --max-outbound pass.
        let config = Config {
            max_message_size: usize::MAX - 5,
            max_outbound: 100,
            max_outbound_total: usize::MAX,
            ..Config::default()
        };
        assert!(config.validate().is_err());
        // A valid but enormous set of limits reads as "more than any host", not a wrap.
        let config = Config {
            max_message_size: usize::MAX / 4,
            max_outbound: usize::MAX,
            max_outbound_total: usize::MAX,
            history: 10,
            history_bytes: usize::MAX,
            ..Config::default()
        };
        assert_eq!(config.validate(), Ok(()));
        let worst = config.worst_case_memory(1_000_000);
        assert!(worst >= (usize::MAX as u64).saturating_mul(1000), "{worst}");
    }

    #[test]
    fn idle_timeout_must_exceed_ping_interval() {
        let config = Config {
            ping_interval: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
            ..Config::default()
        };
        assert!(config.validate().is_err());
    }

    #[test]
    fn slow_client_policy_round_trips() {
        for name in ["close", "drop-newest", "drop-oldest"] {
            assert_eq!(SlowClientPolicy::parse(name).unwrap().to_string(), name);
        }
        assert_eq!(SlowClientPolicy::parse("drop"), None);
    }
}
