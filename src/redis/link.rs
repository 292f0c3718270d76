//! The link's state machine: two connections to Redis (subscribe and publish), connected,
//! handshaken, kept alive with PINGs and reconnected with backoff, all without blocking and
//! without reading the clock: every entry point that needs the time takes `now` from the loop.

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::{Registry, Token};

use super::envelope::random_node_id;
use super::lookup::{Address, HostLookup};
use super::metrics::RedisStats;
use super::resp::{FRAME_SLACK, Incoming, PubSub, Role};
use super::socket::{AUTO_FLUSH_BYTES, Connector, RedisConnection};
use super::url::RedisUrl;
use crate::message::MessageKind;

/// Prefix of the per-room channel name: `wschat:room:<room path>`.
pub(super) const CHANNEL_PREFIX: &str = "wschat:room:";
/// Default cap on PUBLISH bytes queued but not yet written to the socket: a Redis that stops
/// reading costs this much memory at most, then publishes are dropped and counted.
const DEFAULT_PUBLISH_QUEUE_CAP: usize = 8 * 1024 * 1024;
/// Default maximum payload size of one relayed message.
const DEFAULT_MAX_MESSAGE_SIZE: usize = 1024 * 1024;
/// Default keep-alive interval, see [`RedisConfig::ping_interval`].
const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(10);
/// The first retry comes within this; each failure doubles it, up to `BACKOFF_CAP`.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// The longest wait between attempts: a Redis that comes back is found within 5 s.
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// The host lookup, TCP connect and AUTH/SELECT/PING handshake must finish within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Configuration of a [`RedisLink`].
#[derive(Clone, Debug)]
pub(crate) struct RedisConfig {
    pub(crate) url: RedisUrl,
    /// This node's id, carried in every envelope so the node can skip its
    /// own messages. Must differ between nodes: use [`random_node_id`].
    pub(crate) node_id: u64,
    /// Use SSUBSCRIBE/SUNSUBSCRIBE/SPUBLISH (Redis 7+, single shard only; see module docs).
    pub(crate) sharded: bool,
    /// Cap on PUBLISH bytes queued but not yet written to Redis.
    pub(crate) publish_queue_cap: usize,
    /// Largest payload relayed; inbound frames above this + 1 KiB drop the link.
    pub(crate) max_message_size: usize,
    /// Channel name prefix, [`CHANNEL_PREFIX`] by default. All nodes must agree.
    pub(crate) channel_prefix: String,
    /// While up, a PING is sent on both connections at this interval; a PING
    /// still unanswered at the next interval drops the link (detects a
    /// half-open TCP connection or a hung server).
    pub(crate) ping_interval: Duration,
    /// `--redis-ca`: the PEM roots a `rediss://` server's certificate must chain to, in place
    /// of the system's. Ignored for `redis://`.
    pub(crate) ca_file: Option<PathBuf>,
}

impl RedisConfig {
    pub(crate) fn new(url: RedisUrl, node_id: u64) -> RedisConfig {
        RedisConfig {
            url,
            node_id,
            sharded: false,
            publish_queue_cap: DEFAULT_PUBLISH_QUEUE_CAP,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            channel_prefix: CHANNEL_PREFIX.to_string(),
            ping_interval: DEFAULT_PING_INTERVAL,
            ca_file: None,
        }
    }
}

/// Why the link could not be created: each is a start-up failure (exit 1). Redis itself
/// being away is never one: the link keeps retrying.
#[derive(Debug)]
pub enum RedisStartError {
    /// The poll registry could not be cloned for the link.
    Registry(io::Error),
    /// `rediss://`: the CA file or the system bundle cannot be used, or the host cannot be
    /// verified. Fix the flag or the file and start again.
    #[cfg(feature = "tls")]
    Tls(super::tls::TlsSetupError),
}

impl fmt::Display for RedisStartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Registry(error) => write!(f, "cannot register the Redis link: {error}"),
            #[cfg(feature = "tls")]
            Self::Tls(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for RedisStartError {}

/// Link state for /healthz.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LinkState {
    /// A connection attempt (host lookup, TCP connect, AUTH/SELECT/PING) is in progress.
    Connecting,
    /// Both connections are established and authenticated.
    Up,
    /// Waiting for the backoff timer before the next attempt.
    Down,
}

/// The Redis pub/sub link. See the module docs for how the loop drives it.
pub(crate) struct RedisLink {
    url: RedisUrl,
    /// Plain TCP, or TLS with the roots loaded at start-up (`rediss://`).
    connector: Connector,
    registry: Registry,
    subscriber_token: Token,
    publisher_token: Token,
    /// The SUBSCRIBE connection; `None` while down, and while waiting for the host's address.
    subscriber: Option<RedisConnection>,
    /// The PUBLISH connection, opened and dropped with the subscriber.
    publisher: Option<RedisConnection>,
    pubsub: PubSub,
    publish_queue_cap: usize,
    max_message_size: usize,
    ping_interval: Duration,
    state: LinkState,
    /// The link was up once: the next time up is a reconnect.
    ever_up: bool,
    /// Consecutive failed attempts, for the backoff.
    attempt: u32,
    retry_at: Option<Instant>,
    connect_deadline: Option<Instant>,
    ping_at: Option<Instant>,
    /// Set when data is queued but not yet written (see `next_deadline`).
    dirty_since: Option<Instant>,
    /// The reason of the last failed attempt: a repeat is logged at debug level only.
    last_failure: Option<String>,
    /// xorshift64* state for the backoff's jitter.
    jitter_state: u64,
    lookup: HostLookup,
}

impl RedisLink {
    /// Creates the link and starts the first connection attempt. Only fails if
    /// the registry cannot be cloned or TLS cannot be set up (see [`RedisStartError`]);
    /// connection problems are handled inside (state goes `Down` and retries).
    pub(crate) fn new(
        config: RedisConfig,
        registry: &Registry,
        subscriber_token: Token,
        publisher_token: Token,
        now: Instant,
    ) -> Result<RedisLink, RedisStartError> {
        let connector = Connector::new(&config.url, config.ca_file.as_deref())?;
        let mut link = RedisLink {
            connector,
            registry: registry.try_clone().map_err(RedisStartError::Registry)?,
            subscriber_token,
            publisher_token,
            subscriber: None,
            publisher: None,
            pubsub: PubSub {
                node_id: config.node_id,
                sharded: config.sharded,
                channel_prefix: config.channel_prefix,
                rooms: HashSet::new(),
                stats: RedisStats::default(),
                max_frame: config.max_message_size.saturating_add(FRAME_SLACK),
            },
            lookup: HostLookup::new(&config.url.host, config.url.port),
            url: config.url,
            publish_queue_cap: config.publish_queue_cap,
            max_message_size: config.max_message_size,
            ping_interval: config.ping_interval.max(Duration::from_millis(10)),
            state: LinkState::Connecting,
            ever_up: false,
            attempt: 0,
            retry_at: None,
            connect_deadline: None,
            ping_at: None,
            dirty_since: None,
            last_failure: None,
            jitter_state: random_node_id() | 1,
        };
        log::info!(
            "redis: connecting to {} (node id {:016x}{}{})",
            link.url,
            link.pubsub.node_id,
            if link.pubsub.sharded {
                ", sharded pub/sub"
            } else {
                ""
            },
            link.connector
        );
        link.start_connect(now);
        Ok(link)
    }

    pub(crate) fn state(&self) -> LinkState {
        self.state
    }

    pub(crate) fn stats(&self) -> RedisStats {
        self.pubsub.stats
    }

    /// PUBLISH bytes queued but not yet written to Redis.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.publisher
            .as_ref()
            .map_or(0, |publisher| publisher.resp.queued())
    }

    /// Number of rooms currently subscribed (kept across reconnects).
    pub(crate) fn subscribed_rooms(&self) -> usize {
        self.pubsub.rooms.len()
    }

    /// Subscribes to `room` (call when its first local member joins); nothing if it already
    /// is. Works in any state: the rooms are subscribed again on every reconnect.
    pub(crate) fn subscribe(&mut self, room: &str, now: Instant) {
        if self.pubsub.rooms.contains(room) {
            return;
        }
        self.pubsub.rooms.insert(Arc::from(room));
        if let Some(subscriber) = self.subscriber.as_mut() {
            self.pubsub
                .push_subscription(&mut subscriber.resp, true, room);
            self.mark_dirty(now);
        }
    }

    /// Unsubscribes from `room` (call when its last local member leaves); nothing if it was
    /// not subscribed. Messages still in flight for the room are discarded.
    pub(crate) fn unsubscribe(&mut self, room: &str, now: Instant) {
        if !self.pubsub.rooms.remove(room) {
            return;
        }
        if let Some(subscriber) = self.subscriber.as_mut() {
            self.pubsub
                .push_subscription(&mut subscriber.resp, false, room);
            self.mark_dirty(now);
        }
    }

    /// Queues a PUBLISH of `payload` to `room`'s channel, or drops it (counted in
    /// `publish_dropped`) if the link is not up, the queue cap would be exceeded, or the
    /// payload is larger than `max_message_size`: pub/sub is fire-and-forget, nothing waits
    /// for the link. The bytes are written by `flush` (or right away once 64 KiB are queued).
    pub(crate) fn publish(&mut self, room: &str, kind: MessageKind, payload: &[u8], now: Instant) {
        let (Some(publisher), LinkState::Up) = (self.publisher.as_mut(), self.state) else {
            self.pubsub.stats.publish_dropped += 1;
            return;
        };
        if payload.len() > self.max_message_size
            || publisher.resp.queued() + self.pubsub.publish_len(room, payload.len())
                > self.publish_queue_cap
        {
            self.pubsub.stats.publish_dropped += 1;
            return;
        }
        self.pubsub
            .push_publish(&mut publisher.resp, room, kind, payload);
        if publisher.resp.queued() >= AUTO_FLUSH_BYTES {
            if let Err(error) = publisher.write_out() {
                self.fail(format!("write to Redis failed: {error}"), now);
            }
        } else {
            self.mark_dirty(now);
        }
    }

    /// Writes everything queued by publish/subscribe/unsubscribe. Call once
    /// per loop iteration after handling events.
    pub(crate) fn flush(&mut self, now: Instant) {
        self.dirty_since = None;
        let mut failed = None;
        for connection in [self.subscriber.as_mut(), self.publisher.as_mut()]
            .into_iter()
            .flatten()
        {
            if connection.resp.queued() > 0
                && let Err(error) = connection.write_out()
            {
                failed = Some(error);
            }
        }
        if let Some(error) = failed {
            self.fail(format!("write to Redis failed: {error}"), now);
        }
    }

    /// When the loop must call `on_timer` at the latest (use as poll timeout).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
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
    pub(crate) fn on_timer(&mut self, now: Instant) {
        if self.dirty_since.is_some() {
            self.flush(now);
        }
        if self.retry_at.is_some_and(|at| at <= now) {
            self.retry_at = None;
            self.start_connect(now);
        }
        if self.connect_deadline.is_some_and(|at| at <= now) {
            let reason = if self.awaiting_address() {
                format!(
                    "looking up {} took longer than {CONNECT_TIMEOUT:?}",
                    self.url.host
                )
            } else {
                format!("connect/handshake timed out after {CONNECT_TIMEOUT:?}")
            };
            self.fail(reason, now);
        }
        if self.ping_at.is_some_and(|at| at <= now) {
            let unanswered = [self.subscriber.as_ref(), self.publisher.as_ref()]
                .into_iter()
                .flatten()
                .any(|connection| connection.resp.replies.ping_outstanding);
            if unanswered {
                self.fail(
                    format!("no PONG from Redis within {:?}", self.ping_interval),
                    now,
                );
                return;
            }
            for connection in [self.subscriber.as_mut(), self.publisher.as_mut()]
                .into_iter()
                .flatten()
            {
                connection.resp.ping();
            }
            self.ping_at = Some(now + self.ping_interval);
            self.flush(now);
        }
    }

    /// Handles a poll event on one of the two tokens given at construction (others are
    /// ignored): reads and writes are both drained to `WouldBlock` (edge-triggered), and
    /// messages from other nodes are pushed to `out`.
    pub(crate) fn on_event(&mut self, event: &Event, out: &mut Vec<Incoming>, now: Instant) {
        let role = if event.token() == self.subscriber_token {
            Role::Subscriber
        } else if event.token() == self.publisher_token {
            Role::Publisher
        } else {
            return;
        };
        if self.awaiting_address() {
            // The host lookup has ended (or the wake-up is spurious): connect, or keep waiting.
            self.connect_when_resolved(now);
            return;
        }
        let connection = match role {
            Role::Subscriber => self.subscriber.as_mut(),
            Role::Publisher => self.publisher.as_mut(),
        };
        let Some(connection) = connection else {
            return; // a stale event for a connection already dropped
        };
        if let Err(reason) = connection.on_ready(&mut self.pubsub, role, &self.url, out) {
            self.fail(reason, now);
            return;
        }
        if self.state == LinkState::Connecting && self.handshake_done() {
            self.become_up(now);
        }
    }

    /// Connecting, with no connection open yet: the host's first address is being looked up.
    fn awaiting_address(&self) -> bool {
        self.state == LinkState::Connecting && self.subscriber.is_none()
    }

    fn handshake_done(&self) -> bool {
        [self.subscriber.as_ref(), self.publisher.as_ref()]
            .into_iter()
            .all(|connection| {
                connection.is_some_and(|connection| {
                    connection.connected && connection.resp.replies.handshake_pending == 0
                })
            })
    }

    fn mark_dirty(&mut self, now: Instant) {
        if self.dirty_since.is_none() {
            self.dirty_since = Some(now);
        }
    }

    /// Called at start-up and when the backoff expires: a new attempt within
    /// `CONNECT_TIMEOUT`.
    fn start_connect(&mut self, now: Instant) {
        self.state = LinkState::Connecting;
        self.connect_deadline = Some(now + CONNECT_TIMEOUT);
        self.connect_when_resolved(now);
    }

    /// Opens both connections to the host's address. While its first lookup runs there is
    /// none: the link stays `Connecting` and `on_event` calls this again when the lookup ends,
    /// so a normal start by host name neither fails nor waits for a backoff.
    fn connect_when_resolved(&mut self, now: Instant) {
        let addr = match self.lookup.address(&self.registry, self.subscriber_token) {
            Address::Known(addr) => addr,
            Address::Pending => return,
            Address::Failed(reason) => {
                self.fail(format!("connect to {} failed: {reason}", self.url), now);
                return;
            }
        };
        let open =
            |token| RedisConnection::open(addr, &self.registry, token, &self.url, &self.connector);
        let opened = open(self.subscriber_token)
            .and_then(|subscriber| Ok((subscriber, open(self.publisher_token)?)));
        match opened {
            Ok((mut subscriber, publisher)) => {
                log::debug!("redis: connecting to {addr} (attempt {})", self.attempt + 1);
                for room in &self.pubsub.rooms {
                    self.pubsub
                        .push_subscription(&mut subscriber.resp, true, room);
                }
                self.subscriber = Some(subscriber);
                self.publisher = Some(publisher);
            }
            Err(error) => self.fail(format!("connect to {} failed: {error}", self.url), now),
        }
    }

    fn become_up(&mut self, now: Instant) {
        self.state = LinkState::Up;
        self.connect_deadline = None;
        self.ping_at = Some(now + self.ping_interval);
        if self.ever_up {
            self.pubsub.stats.reconnects += 1;
            log::info!(
                "redis: link up again ({}) after {} connect attempts; re-subscribed {} rooms",
                self.url,
                self.attempt,
                self.pubsub.rooms.len()
            );
        } else {
            log::info!(
                "redis: link up ({}), {} rooms subscribed",
                self.url,
                self.pubsub.rooms.len()
            );
        }
        self.ever_up = true;
        self.attempt = 0;
        self.last_failure = None;
    }

    /// Drops both connections and schedules a reconnect.
    fn fail(&mut self, reason: String, now: Instant) {
        for mut connection in [self.subscriber.take(), self.publisher.take()]
            .into_iter()
            .flatten()
        {
            self.pubsub.stats.publish_lost += connection.resp.replies.publishes_pending();
            let _ = self.registry.deregister(&mut connection.stream);
        }
        self.dirty_since = None;
        self.connect_deadline = None;
        self.ping_at = None;
        let delay = self.backoff();
        self.retry_at = Some(now + delay);
        if self.state == LinkState::Up {
            log::warn!("redis: link down: {reason}; reconnecting in {delay:.0?}");
        } else {
            self.pubsub.stats.connect_failures += 1;
            if self.last_failure.as_deref() != Some(reason.as_str()) {
                log::warn!("redis: {reason}; will keep retrying (repeats logged at debug level)");
            } else {
                log::debug!("redis: {reason}; retrying in {delay:.0?}");
            }
        }
        self.last_failure = Some(reason);
        self.state = LinkState::Down;
        self.attempt = self.attempt.saturating_add(1);
    }

    /// Full jitter: uniform in [0, min(cap, base * 2^attempt)].
    fn backoff(&mut self) -> Duration {
        let ceiling = BACKOFF_BASE
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(BACKOFF_CAP);
        // xorshift64*
        self.jitter_state ^= self.jitter_state >> 12;
        self.jitter_state ^= self.jitter_state << 25;
        self.jitter_state ^= self.jitter_state >> 27;
        let random = self.jitter_state.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let ceiling_ms = ceiling.as_millis() as u64;
        Duration::from_millis(random % (ceiling_ms + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::net::TcpListener;
    use mio::{Events, Interest, Poll};
    use std::net::ToSocketAddrs;

    #[test]
    fn backoff_is_bounded_with_full_jitter() {
        let poll = Poll::new().unwrap();
        // Port 1 on loopback: refused quickly, never a real service.
        let config = RedisConfig::new(RedisUrl::parse("redis://127.0.0.1:1").unwrap(), 5);
        let now = Instant::now();
        let mut link = RedisLink::new(config, poll.registry(), Token(1), Token(2), now).unwrap();
        link.publish("/r", MessageKind::Text, b"x", now);
        assert_eq!(link.stats().publish_dropped, 1);
        for attempt in 0..20 {
            link.attempt = attempt;
            let delay = link.backoff();
            let ceiling = BACKOFF_BASE
                .saturating_mul(1 << attempt.min(16))
                .min(BACKOFF_CAP);
            assert!(delay <= ceiling, "{delay:?} > {ceiling:?}");
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

    /// Bug 3 of issue 10: the first attempt ran before the background lookup had answered, so
    /// every start by host name logged a WARN and counted a connect failure.
    #[test]
    fn a_host_name_is_connected_to_without_a_failure_first() {
        // Listen where "localhost" points first, so the attempt can succeed.
        let first = ("localhost", 0).to_socket_addrs().unwrap().next().unwrap();
        let mut listener = TcpListener::bind(first).unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = RedisUrl::parse(&format!("redis://localhost:{port}")).unwrap();
        let mut poll = Poll::new().unwrap();
        // The listener wakes the poll too (the link ignores its token): an accept never waits
        // for the link's next deadline.
        poll.registry()
            .register(&mut listener, Token(9), Interest::READABLE)
            .unwrap();
        let started = Instant::now();
        let config = RedisConfig::new(url, 5);
        let mut link =
            RedisLink::new(config, poll.registry(), Token(1), Token(2), started).unwrap();
        assert_eq!(link.state(), LinkState::Connecting);
        assert_eq!(link.stats().connect_failures, 0);
        // Driven as the server drives it, the link opens both connections when the address
        // arrives, without a failure or a backoff in between.
        let mut events = Events::with_capacity(8);
        let mut accepted = Vec::new();
        while accepted.len() < 2 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the link never connected"
            );
            let timeout = link
                .next_deadline()
                .map(|at| at.saturating_duration_since(Instant::now()));
            poll.poll(&mut events, timeout).unwrap();
            let now = Instant::now();
            for event in events.iter() {
                link.on_event(event, &mut Vec::new(), now);
            }
            link.on_timer(now);
            while let Ok((socket, _)) = listener.accept() {
                accepted.push(socket);
            }
            assert_eq!(link.state(), LinkState::Connecting);
            assert_eq!(link.stats().connect_failures, 0);
            assert!(link.retry_at.is_none(), "an attempt failed");
        }
        assert!(link.subscriber.is_some() && link.publisher.is_some());
    }
}
