//! Redis pub/sub link: lets several wschat processes share rooms.
//!
//! A self-contained, non-blocking state machine driven by the server's
//! single-threaded `mio` poll loop. It owns two TCP connections to Redis
//! (TLS over them for `rediss://`):
//!
//! * the **SUBSCRIBE** connection (RESP2 subscribe mode), one channel per room;
//! * the **PUBLISH** connection, pipelined: every `publish` appends a
//!   `PUBLISH` command to a write buffer, the buffer is written in as few
//!   `write` calls as the socket allows, and the integer replies are counted
//!   off in order.
//!
//! | file | concern |
//! |---|---|
//! | `url.rs` | the `--redis` URL |
//! | `envelope.rs` | the 10-byte header around every message: kind and sender |
//! | `resp.rs` | RESP2 encoding and decoding, reply bookkeeping; no sockets |
//! | `socket.rs` | one non-blocking connection: connect, write, read to `WouldBlock` |
//! | `tls.rs` | `rediss://` (feature `tls`): roots, rustls session over the socket |
//! | `lookup.rs` | the host's address, looked up off the loop |
//! | `link.rs` | the state machine: connect, handshake, keep-alive, backoff, reconnect |
//! | `metrics.rs` | the counters and their `/metrics` lines |
//!
//! # How the server drives it
//!
//! The link never reads the clock: every call that needs the time takes the loop's `now`.
//!
//! ```ignore
//! // Server::bind: the link starts connecting at once.
//! let mut link_config = RedisConfig::new(url, redis::random_node_id());
//! link_config.sharded = config.redis_sharded;
//! link_config.max_message_size = config.max_message_size;
//! let mut redis =
//!     RedisLink::new(link_config, poll.registry(), REDIS_SUBSCRIBE, REDIS_PUBLISH, now)?;
//!
//! // Server::run
//! loop {
//!     redis.flush(now);                        // the last pass's publishes leave in one write
//!     let timeout = earliest(redis.next_deadline(), other deadlines) - Instant::now();
//!     poll.poll(&mut events, timeout)?;
//!     now = Instant::now();
//!     for event in events.iter() {
//!         match event.token() {
//!             REDIS_SUBSCRIBE | REDIS_PUBLISH => redis.on_event(event, &mut incoming, now),
//!             _ => {
//!                 // client sockets; while handling them:
//!                 //   redis.subscribe(room, now)    when the first local member joins a room
//!                 //   redis.unsubscribe(room, now)  when the last local member leaves it
//!                 //   redis.publish(room, kind, payload, now)  per message relayed locally
//!             }
//!         }
//!     }
//!     redis.on_timer(now);                     // flush left-overs, reconnect, timeouts, PINGs
//!     for Incoming { room, kind, payload } in incoming.drain(..) {
//!         // deliver to the local members of `room` only; never publish it again
//!     }
//! }
//!
//! // /healthz reads redis.state(); /metrics appends redis::metrics::render(&redis).
//! ```
//!
//! * `on_event` must be called for events on the two tokens given at
//!   construction; both reads and writes are drained to `WouldBlock`
//!   (edge-triggered). Incoming messages from *other* nodes are pushed to the
//!   `Vec<Incoming>` passed in (own messages, messages for rooms no longer
//!   subscribed and malformed envelopes are skipped and counted).
//! * `flush` should be called once per loop iteration after handling events.
//!   If it is forgotten, `next_deadline` returns an instant in the past while
//!   data is waiting, so the next poll returns at once and `on_timer` flushes.
//! * `subscribe` / `unsubscribe` may be called in any state: the set of
//!   subscribed rooms is kept and re-subscribed after every reconnect.
//! * `publish` drops the message (and counts `publish_dropped`) while the link is
//!   not `LinkState::Up`, when the not-yet-written queue would exceed
//!   `publish_queue_cap`, or when the payload exceeds `max_message_size`.
//!   Nothing is ever buffered for later: pub/sub is fire-and-forget.
//! * `state` and `metrics::render` feed /healthz and /metrics. Redis going away never
//!   returns an error to the caller: the link reconnects with exponential
//!   backoff (100 ms doubling to 5 s, full jitter), re-AUTHs, re-SELECTs and
//!   re-subscribes every active room, logging each Up/Down transition once.
//!
//! # Wire format
//!
//! Channel: `wschat:room:<room path>` (configurable in `RedisConfig`'s
//! `channel_prefix`). Message: a binary envelope (see `envelope.rs`): `0xC1` (magic+version 1,
//! a byte that can never start valid UTF-8, so a stray `redis-cli PUBLISH` text is rejected),
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
//! * Host names are resolved off the loop, on a short-lived thread (the system
//!   resolver blocks). Until the first lookup answers the link stays
//!   `Connecting` and connects as soon as the address arrives; later attempts use
//!   the last address found while a fresh lookup runs beside them. IP literals need no
//!   lookup. Only the first resolved address is tried.
//! * `rediss://` (feature `tls`): both connections speak TLS 1.2/1.3 through rustls (ring),
//!   the server's certificate verified against `--redis-ca` or the system's CA bundle, for
//!   the URL's host (DNS name or IP address). A failed handshake is a failed connect: logged
//!   once, counted, retried with backoff. No client certificates. RESP2 only.
//! * A `/db` in the URL sends `SELECT`, which Redis Cluster rejects: leave it
//!   out for a cluster shard (pub/sub ignores the database anyway).
//! * RESP decoding uses the `redis-protocol` crate; its recursive decoder
//!   trusts the server not to send pathologically nested arrays (Redis never
//!   does for pub/sub). Frames are bounded to `max_message_size + 1 KiB`.

mod envelope;
mod link;
mod lookup;
pub(crate) mod metrics;
mod resp;
mod socket;
#[cfg(feature = "tls")]
mod tls;
mod url;

pub(crate) use envelope::random_node_id;
pub use link::RedisStartError;
pub(crate) use link::{LinkState, RedisConfig, RedisLink};
pub(crate) use resp::Incoming;
#[cfg(feature = "tls")]
pub use tls::TlsSetupError;
pub use url::{RedisUrl, RedisUrlError};
