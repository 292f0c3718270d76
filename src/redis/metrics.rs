//! The link's counters and its lines for `/metrics`: every counter the link keeps is exported.

use super::link::{LinkState, RedisLink};
use crate::stats::MetricsPage;

/// Counters for /metrics. All are monotonic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RedisStats {
    /// PUBLISH commands acknowledged by Redis.
    pub(crate) published: u64,
    /// `publish()` calls refused: link not up, queue cap reached, or payload too large.
    pub(crate) publish_dropped: u64,
    /// Publishes queued or in flight when the link failed (never acknowledged).
    pub(crate) publish_lost: u64,
    /// PUBLISH commands answered with an error (e.g. MOVED in sharded mode).
    pub(crate) publish_errors: u64,
    /// Messages from other nodes returned as [`super::Incoming`].
    pub(crate) received: u64,
    /// This node's own messages echoed back by the channel and skipped.
    pub(crate) received_own_skipped: u64,
    /// Channel messages with an invalid envelope (or channel name), skipped.
    pub(crate) received_malformed: u64,
    /// Times the link came back up after having been up before.
    pub(crate) reconnects: u64,
    /// Connection attempts that failed before reaching `Up`.
    pub(crate) connect_failures: u64,
}

/// The Redis link's lines for `/metrics`, appended to the server's page.
pub(crate) fn render(link: &RedisLink) -> String {
    let stats = link.stats();
    let mut page = MetricsPage::default();
    let (gauge, counter) = ("gauge", "counter");
    let up = u8::from(matches!(link.state(), LinkState::Up));
    page.single(
        "wschat_redis_up",
        gauge,
        "1 while the Redis link is up.",
        up,
    );
    page.single(
        "wschat_redis_published_total",
        counter,
        "Messages published to Redis and acknowledged.",
        stats.published,
    );
    page.single(
        "wschat_redis_publish_dropped_total",
        counter,
        "Messages not published: link down, queue full or too large.",
        stats.publish_dropped,
    );
    page.single(
        "wschat_redis_publish_lost_total",
        counter,
        "Messages in flight when the link failed.",
        stats.publish_lost,
    );
    page.single(
        "wschat_redis_publish_errors_total",
        counter,
        "Messages Redis answered with an error (e.g. MOVED in sharded mode).",
        stats.publish_errors,
    );
    page.single(
        "wschat_redis_received_total",
        counter,
        "Messages received from other nodes.",
        stats.received,
    );
    page.single(
        "wschat_redis_received_own_total",
        counter,
        "This node's own messages seen on a channel and skipped.",
        stats.received_own_skipped,
    );
    page.single(
        "wschat_redis_received_malformed_total",
        counter,
        "Channel messages that were not wschat envelopes.",
        stats.received_malformed,
    );
    page.single(
        "wschat_redis_reconnects_total",
        counter,
        "Times the link came back after being up.",
        stats.reconnects,
    );
    page.single(
        "wschat_redis_connect_failures_total",
        counter,
        "Connection attempts that failed before the link came up.",
        stats.connect_failures,
    );
    page.single(
        "wschat_redis_subscribed_rooms",
        gauge,
        "Rooms this node is subscribed to.",
        link.subscribed_rooms(),
    );
    page.single(
        "wschat_redis_queued_bytes",
        gauge,
        "Publish bytes not yet written to Redis.",
        link.queued_bytes(),
    );
    page.finish()
}
