//! RESP2 on the link's two connections, without sockets: commands are appended to a write
//! buffer, replies and push messages are decoded from a read buffer that may hold any prefix of
//! the stream (the tests split it at every byte). Encoding is done here (it is trivial);
//! decoding uses the `redis-protocol` crate.
//!
//! The socket layer (`socket.rs`) moves bytes between these buffers and the kernel; the link
//! (`link.rs`) decides what to send when.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use redis_protocol::resp2::decode::decode_range;
use redis_protocol::resp2::types::RangeFrame;

use super::envelope;
use super::metrics::RedisStats;
use super::url::RedisUrl;
use crate::message::MessageKind;

/// Slack allowed on top of `max_message_size` for one inbound RESP frame (the channel name
/// and the RESP framing around the payload).
pub(super) const FRAME_SLACK: usize = 1024;

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

fn push_decimal(buf: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[start..]);
}

/// `<tag><n>\r\n`: the header of an array (`*`) or a bulk string (`$`).
fn push_header(buf: &mut Vec<u8>, tag: u8, n: usize) {
    buf.push(tag);
    push_decimal(buf, n);
    buf.extend_from_slice(b"\r\n");
}

/// One bulk string made of `parts` laid end to end (saves a copy of a prefix or a header).
fn push_bulk(buf: &mut Vec<u8>, parts: &[&[u8]]) {
    push_header(buf, b'$', parts.iter().map(|part| part.len()).sum());
    for part in parts {
        buf.extend_from_slice(part);
    }
    buf.extend_from_slice(b"\r\n");
}

/// Appends a RESP2 command (array of bulk strings).
fn push_command(buf: &mut Vec<u8>, args: &[&[u8]]) {
    push_header(buf, b'*', args.len());
    for arg in args {
        push_bulk(buf, &[arg]);
    }
}

fn decimal_len(mut n: usize) -> usize {
    let mut digits = 1;
    while n >= 10 {
        n /= 10;
        digits += 1;
    }
    digits
}

/// Exact length of a bulk string of `n` bytes: `$<n>\r\n<data>\r\n`.
fn bulk_len(n: usize) -> usize {
    1 + decimal_len(n) + 2 + n + 2
}

// ---------------------------------------------------------------------------
// Per-connection protocol state
// ---------------------------------------------------------------------------

/// Which of the link's two connections a buffer belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    /// In subscribe mode: push messages arrive at any time.
    Subscriber,
    /// Pipelined PUBLISH commands, answered in order.
    Publisher,
}

/// A reply expected (in order) on a connection. Push messages on the
/// subscribe connection (message, subscribe, ...) are not in this queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Expect {
    Auth,
    Select,
    /// Handshake PING: its PONG means the connection is usable.
    HelloPing,
    /// Keep-alive PING.
    Ping,
    /// `n` consecutive PUBLISH replies.
    Publish(u32),
}

/// The replies a connection still waits for, in the order its commands went out.
#[derive(Default)]
pub(super) struct Replies {
    expected: VecDeque<Expect>,
    /// AUTH, SELECT and the handshake PING not yet answered.
    pub(super) handshake_pending: u8,
    /// A keep-alive PING not yet answered.
    pub(super) ping_outstanding: bool,
    /// The first PUBLISH error of the connection is logged, the rest only counted.
    logged_publish_error: bool,
}

impl Replies {
    pub(super) fn push(&mut self, expect: Expect) {
        match expect {
            Expect::Auth | Expect::Select | Expect::HelloPing => self.handshake_pending += 1,
            Expect::Ping => self.ping_outstanding = true,
            Expect::Publish(_) => {
                if let Some(Expect::Publish(n)) = self.expected.back_mut()
                    && *n < u32::MAX
                {
                    *n += 1;
                    return;
                }
            }
        }
        self.expected.push_back(expect);
    }

    fn pop(&mut self) -> Option<Expect> {
        let front = *self.expected.front()?;
        match front {
            Expect::Publish(n) if n > 1 => {
                self.expected[0] = Expect::Publish(n - 1);
                return Some(front);
            }
            Expect::Auth | Expect::Select | Expect::HelloPing => self.handshake_pending -= 1,
            Expect::Ping => self.ping_outstanding = false,
            Expect::Publish(_) => {}
        }
        self.expected.pop_front()
    }

    /// PUBLISH commands sent or queued and not yet answered: lost if the link fails now.
    pub(super) fn publishes_pending(&self) -> u64 {
        self.expected
            .iter()
            .map(|expect| match expect {
                Expect::Publish(n) => *n as u64,
                _ => 0,
            })
            .sum()
    }
}

/// The buffers and reply bookkeeping of one connection.
#[derive(Default)]
pub(super) struct RespState {
    /// Bytes read and not yet decoded start at `read_pos`.
    pub(super) read_buf: Vec<u8>,
    pub(super) read_pos: usize,
    /// Bytes queued and not yet written start at `write_pos`.
    pub(super) write_buf: Vec<u8>,
    pub(super) write_pos: usize,
    pub(super) replies: Replies,
}

impl RespState {
    /// Bytes queued but not yet written to the socket.
    pub(super) fn queued(&self) -> usize {
        self.write_buf.len() - self.write_pos
    }

    pub(super) fn command(&mut self, args: &[&[u8]]) {
        push_command(&mut self.write_buf, args);
    }

    /// Queues a keep-alive PING.
    pub(super) fn ping(&mut self) {
        self.command(&[b"PING"]);
        self.replies.push(Expect::Ping);
    }

    /// Queues AUTH and SELECT as the URL asks, then a PING whose PONG says the connection is
    /// ready. Redis answers in order, so nothing else needs to wait for them.
    pub(super) fn handshake(&mut self, url: &RedisUrl) {
        if let Some(password) = &url.password {
            match &url.username {
                Some(user) => self.command(&[b"AUTH", user.as_bytes(), password.as_bytes()]),
                None => self.command(&[b"AUTH", password.as_bytes()]),
            }
            self.replies.push(Expect::Auth);
        }
        if let Some(db) = url.db {
            self.command(&[b"SELECT", db.to_string().as_bytes()]);
            self.replies.push(Expect::Select);
        }
        self.command(&[b"PING"]);
        self.replies.push(Expect::HelloPing);
    }
}

/// A message published by another node to a room this node is subscribed to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Incoming {
    /// Room path (shared with the link's subscription set, no allocation per message).
    pub(crate) room: Arc<str>,
    pub(crate) kind: MessageKind,
    /// For `Text` this is valid UTF-8 (checked), so
    /// `tungstenite::Utf8Bytes::try_from(payload)` cannot fail.
    pub(crate) payload: Bytes,
}

/// What both connections' frame handlers share: who this node is, which rooms it listens to,
/// how channels are named, and the counters.
pub(super) struct PubSub {
    pub(super) node_id: u64,
    /// SSUBSCRIBE/SUNSUBSCRIBE/SPUBLISH instead of the classic commands.
    pub(super) sharded: bool,
    /// Channel name prefix; the room path follows it.
    pub(super) channel_prefix: String,
    /// Rooms with local members, kept across reconnects.
    pub(super) rooms: HashSet<Arc<str>>,
    pub(super) stats: RedisStats,
    /// The largest inbound frame accepted: a bigger one drops the link.
    pub(super) max_frame: usize,
}

impl PubSub {
    /// Queues (S)SUBSCRIBE or (S)UNSUBSCRIBE for `room`'s channel.
    pub(super) fn push_subscription(&self, resp: &mut RespState, subscribe: bool, room: &str) {
        let command: &[u8] = match (self.sharded, subscribe) {
            (false, true) => b"SUBSCRIBE",
            (false, false) => b"UNSUBSCRIBE",
            (true, true) => b"SSUBSCRIBE",
            (true, false) => b"SUNSUBSCRIBE",
        };
        push_header(&mut resp.write_buf, b'*', 2);
        push_bulk(&mut resp.write_buf, &[command]);
        push_bulk(
            &mut resp.write_buf,
            &[self.channel_prefix.as_bytes(), room.as_bytes()],
        );
    }

    fn publish_command(&self) -> &'static [u8] {
        if self.sharded {
            b"SPUBLISH"
        } else {
            b"PUBLISH"
        }
    }

    /// Exact length of the (S)PUBLISH command `push_publish` would queue, to check the queue
    /// cap before writing anything.
    pub(super) fn publish_len(&self, room: &str, payload_len: usize) -> usize {
        4 + bulk_len(self.publish_command().len())
            + bulk_len(self.channel_prefix.len() + room.len())
            + bulk_len(envelope::HEADER_LEN + payload_len)
    }

    /// Queues one (S)PUBLISH of `payload` in its envelope to `room`'s channel.
    pub(super) fn push_publish(
        &self,
        resp: &mut RespState,
        room: &str,
        kind: MessageKind,
        payload: &[u8],
    ) {
        let buf = &mut resp.write_buf;
        buf.reserve(self.publish_len(room, payload.len()));
        push_header(buf, b'*', 3);
        push_bulk(buf, &[self.publish_command()]);
        push_bulk(buf, &[self.channel_prefix.as_bytes(), room.as_bytes()]);
        push_bulk(
            buf,
            &[&envelope::encode_header(kind, self.node_id), payload],
        );
        resp.replies.push(Expect::Publish(1));
    }
}

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

/// Decodes and handles every complete frame in `resp.read_buf`; an incomplete one waits for
/// more bytes. `Err` = drop the link, with the reason to log.
pub(super) fn process_input(
    pubsub: &mut PubSub,
    resp: &mut RespState,
    role: Role,
    out: &mut Vec<Incoming>,
) -> Result<(), String> {
    loop {
        let available = &resp.read_buf[resp.read_pos..];
        if available.is_empty() {
            resp.read_buf.clear();
            resp.read_pos = 0;
            return Ok(());
        }
        match decode_range(available) {
            Ok(Some((frame, used))) => {
                let data = &resp.read_buf[resp.read_pos..resp.read_pos + used];
                handle_frame(pubsub, &mut resp.replies, role, &frame, data, out)?;
                resp.read_pos += used;
            }
            Ok(None) => {
                if available.len() > pubsub.max_frame {
                    return Err(format!(
                        "RESP frame larger than {} bytes (max message size + 1 KiB)",
                        pubsub.max_frame
                    ));
                }
                if resp.read_pos > 0 {
                    resp.read_buf.drain(..resp.read_pos);
                    resp.read_pos = 0;
                }
                return Ok(());
            }
            Err(error) => return Err(format!("RESP protocol error: {error}")),
        }
    }
}

/// The bytes a decoded frame's range points at (empty if out of bounds, which the decoder
/// never produces).
fn slice_of(data: &[u8], range: (usize, usize)) -> &[u8] {
    data.get(range.0..range.1).unwrap_or(&[])
}

fn handle_frame(
    pubsub: &mut PubSub,
    replies: &mut Replies,
    role: Role,
    frame: &RangeFrame,
    data: &[u8],
    out: &mut Vec<Incoming>,
) -> Result<(), String> {
    if role == Role::Subscriber {
        if let RangeFrame::Array(items) = frame {
            return handle_push(pubsub, replies, items, data, out);
        }
        if let RangeFrame::Error(range) = frame {
            let message = String::from_utf8_lossy(slice_of(data, *range));
            return Err(match replies.expected.front() {
                Some(Expect::Auth) => format!("AUTH failed: {message}"),
                Some(Expect::Select) => format!("SELECT failed: {message}"),
                _ => format!("error on subscribe connection: {message}"),
            });
        }
    }
    let Some(expected) = replies.pop() else {
        return Err(format!("unexpected reply from Redis: {frame:?}"));
    };
    let is_simple = |want: &[u8]| matches!(frame, RangeFrame::SimpleString(range) if slice_of(data, *range) == want);
    let error_text = || match frame {
        RangeFrame::Error(range) => String::from_utf8_lossy(slice_of(data, *range)).into_owned(),
        other => format!("unexpected reply {other:?}"),
    };
    match expected {
        Expect::Auth if !is_simple(b"OK") => Err(format!("AUTH failed: {}", error_text())),
        Expect::Select if !is_simple(b"OK") => Err(format!("SELECT failed: {}", error_text())),
        Expect::HelloPing | Expect::Ping if !is_simple(b"PONG") => {
            Err(format!("PING failed: {}", error_text()))
        }
        Expect::Publish(_) => {
            match frame {
                RangeFrame::Integer(_) => pubsub.stats.published += 1,
                RangeFrame::Error(_) => {
                    pubsub.stats.publish_errors += 1;
                    if !replies.logged_publish_error {
                        replies.logged_publish_error = true;
                        log::warn!(
                            "redis: PUBLISH failed: {} (further errors only counted)",
                            error_text()
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
    pubsub: &mut PubSub,
    replies: &mut Replies,
    items: &[RangeFrame],
    data: &[u8],
    out: &mut Vec<Incoming>,
) -> Result<(), String> {
    let bulk = |i: usize| match items.get(i) {
        Some(RangeFrame::BulkString(range)) => Some(slice_of(data, *range)),
        _ => None,
    };
    let Some(push_kind) = bulk(0) else {
        return Err(format!(
            "unexpected array on subscribe connection: {items:?}"
        ));
    };
    match push_kind {
        b"message" | b"smessage" => {
            let (Some(channel), Some(payload)) = (bulk(1), bulk(2)) else {
                pubsub.stats.received_malformed += 1;
                return Ok(());
            };
            let Some(room) = channel
                .strip_prefix(pubsub.channel_prefix.as_bytes())
                .and_then(|room| std::str::from_utf8(room).ok())
            else {
                pubsub.stats.received_malformed += 1;
                return Ok(());
            };
            // A message still in flight for a room we just left: ignore.
            let Some(room) = pubsub.rooms.get(room) else {
                return Ok(());
            };
            match envelope::decode(payload) {
                None => pubsub.stats.received_malformed += 1,
                Some(envelope) if envelope.node_id == pubsub.node_id => {
                    pubsub.stats.received_own_skipped += 1
                }
                Some(envelope) => {
                    pubsub.stats.received += 1;
                    out.push(Incoming {
                        room: room.clone(),
                        kind: envelope.kind,
                        payload: Bytes::copy_from_slice(envelope.payload),
                    });
                }
            }
            Ok(())
        }
        b"pong" => match replies.pop() {
            Some(Expect::Ping | Expect::HelloPing) => Ok(()),
            // Not `{:?}` of the Option: the static builds' -Z fmt-debug=shallow shows a derived
            // Debug as its variant name only, and "Some" would say nothing.
            Some(other) => Err(format!("unexpected pong (expected the reply to {other:?})")),
            None => Err("unexpected pong (no reply was expected)".into()),
        },
        b"subscribe" | b"unsubscribe" | b"ssubscribe" | b"sunsubscribe" => {
            log::debug!(
                "redis: {} {}",
                String::from_utf8_lossy(push_kind),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::link::CHANNEL_PREFIX;

    #[test]
    fn resp_encoding() {
        let mut buf = Vec::new();
        push_command(&mut buf, &[b"SUBSCRIBE", b"ch"]);
        assert_eq!(buf, b"*2\r\n$9\r\nSUBSCRIBE\r\n$2\r\nch\r\n");
        for n in [0usize, 9, 10, 99, 100, 12345] {
            let mut buf = Vec::new();
            push_bulk(&mut buf, &[&vec![b'x'; n]]);
            assert_eq!(buf.len(), bulk_len(n));
        }
    }

    #[test]
    fn publish_len_is_exact() {
        let mut pubsub = pubsub(1, &[]);
        for sharded in [false, true] {
            pubsub.sharded = sharded;
            for (room, payload) in [("/", 0usize), ("/a/b", 9), ("/room", 90), ("/r", 12345)] {
                let mut resp = RespState::default();
                pubsub.push_publish(&mut resp, room, MessageKind::Binary, &vec![7; payload]);
                assert_eq!(resp.queued(), pubsub.publish_len(room, payload));
                assert_eq!(resp.replies.publishes_pending(), 1);
            }
        }
    }

    fn pubsub(node_id: u64, rooms: &[&str]) -> PubSub {
        PubSub {
            node_id,
            sharded: false,
            channel_prefix: CHANNEL_PREFIX.to_string(),
            rooms: rooms.iter().map(|room| Arc::from(*room)).collect(),
            stats: RedisStats::default(),
            max_frame: 1000 + FRAME_SLACK,
        }
    }

    fn message(channel: &str, payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::new();
        push_command(&mut frame, &[b"message", channel.as_bytes(), payload]);
        frame
    }

    /// Feeds `input` in chunks of `chunk` bytes.
    fn feed(
        pubsub: &mut PubSub,
        resp: &mut RespState,
        role: Role,
        input: &[u8],
        chunk: usize,
    ) -> Result<Vec<Incoming>, String> {
        let mut out = Vec::new();
        for part in input.chunks(chunk) {
            resp.read_buf.extend_from_slice(part);
            process_input(pubsub, resp, role, &mut out)?;
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
            &envelope::encode(MessageKind::Text, 2, b"hi\r\nthere"),
        ));
        input.extend(message(
            "wschat:room:/a/b",
            &envelope::encode(MessageKind::Binary, 1, b"own"),
        ));
        input.extend(message("wschat:room:/a/b", b"garbage"));
        input.extend(message(
            "wschat:room:/other",
            &envelope::encode(MessageKind::Text, 2, b"x"),
        ));
        input.extend(message(
            "foreign",
            &envelope::encode(MessageKind::Text, 2, b"x"),
        ));
        input.extend(message(
            "wschat:room:/a/b",
            &envelope::encode(MessageKind::Binary, 3, &[0, 13, 10, 255]),
        ));
        input.extend_from_slice(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"); // keep-alive PING in sub mode
        for chunk in 1..=input.len() {
            let mut pubsub = pubsub(1, &["/a/b"]);
            let mut resp = RespState::default();
            resp.replies.push(Expect::HelloPing);
            resp.replies.push(Expect::Ping);
            let out = feed(&mut pubsub, &mut resp, Role::Subscriber, &input, chunk).unwrap();
            assert_eq!(out.len(), 2, "chunk {chunk}");
            assert_eq!(&*out[0].room, "/a/b");
            assert_eq!(out[0].kind, MessageKind::Text);
            assert_eq!(&out[0].payload[..], b"hi\r\nthere");
            assert_eq!(out[1].kind, MessageKind::Binary);
            assert_eq!(&out[1].payload[..], &[0, 13, 10, 255]);
            assert_eq!(pubsub.stats.received, 2);
            assert_eq!(pubsub.stats.received_own_skipped, 1);
            assert_eq!(pubsub.stats.received_malformed, 2); // garbage + foreign channel
            assert!(resp.replies.expected.is_empty() && resp.replies.handshake_pending == 0);
            assert!(!resp.replies.ping_outstanding);
            assert!(resp.read_buf.is_empty());
        }
    }

    #[test]
    fn pub_replies_counted_in_order() {
        let mut pubsub = pubsub(1, &[]);
        let mut resp = RespState::default();
        resp.handshake(&RedisUrl::parse("redis://:pw@h/3").unwrap());
        assert_eq!(resp.replies.handshake_pending, 3);
        for _ in 0..3 {
            resp.replies.push(Expect::Publish(1));
        }
        resp.replies.push(Expect::Ping);
        resp.replies.push(Expect::Publish(1));
        assert_eq!(resp.replies.publishes_pending(), 4);
        let input = b"+OK\r\n+OK\r\n+PONG\r\n:2\r\n:0\r\n-ERR oops\r\n+PONG\r\n:1\r\n";
        for chunk in [1, 2, 3, 7, 100] {
            let mut pubsub = super::tests::pubsub(1, &[]);
            let mut fresh = RespState::default();
            fresh.replies.expected = resp.replies.expected.clone();
            fresh.replies.handshake_pending = 3;
            feed(&mut pubsub, &mut fresh, Role::Publisher, input, chunk).unwrap();
            assert_eq!(pubsub.stats.published, 3);
            assert_eq!(pubsub.stats.publish_errors, 1);
            assert!(fresh.replies.expected.is_empty());
            assert_eq!(fresh.replies.handshake_pending, 0);
        }
        // AUTH failure drops the link.
        resp.read_buf
            .extend_from_slice(b"-WRONGPASS invalid username-password pair\r\n");
        let error =
            process_input(&mut pubsub, &mut resp, Role::Publisher, &mut Vec::new()).unwrap_err();
        assert!(error.starts_with("AUTH failed: WRONGPASS"), "{error}");
    }

    #[test]
    fn sub_errors_and_limits() {
        // Error on subscribe connection (e.g. NOAUTH or unknown SSUBSCRIBE).
        let mut pubsub = pubsub(1, &[]);
        let mut resp = RespState::default();
        resp.read_buf
            .extend_from_slice(b"-ERR unknown command 'SSUBSCRIBE'\r\n");
        assert!(process_input(&mut pubsub, &mut resp, Role::Subscriber, &mut Vec::new()).is_err());
        // Unexpected reply with nothing expected.
        let mut resp = RespState::default();
        resp.read_buf.extend_from_slice(b"+OK\r\n");
        assert!(process_input(&mut pubsub, &mut resp, Role::Publisher, &mut Vec::new()).is_err());
        // Garbage type byte.
        let mut resp = RespState::default();
        resp.read_buf
            .extend_from_slice(b"HTTP/1.1 400 Bad Request\r\n");
        assert!(process_input(&mut pubsub, &mut resp, Role::Subscriber, &mut Vec::new()).is_err());
        // Oversized frame: incomplete data above the cap is an error...
        let mut resp = RespState::default();
        let big = message("wschat:room:/r", &vec![b'x'; 3000]);
        let result = feed(&mut pubsub, &mut resp, Role::Subscriber, &big[..2100], 100);
        assert!(result.unwrap_err().contains("larger than"));
        // ...while a frame within the cap passes.
        let mut pubsub = super::tests::pubsub(1, &["/r"]);
        let mut resp = RespState::default();
        let within = message(
            "wschat:room:/r",
            &envelope::encode(MessageKind::Binary, 9, &[7u8; 1000]),
        );
        let out = feed(&mut pubsub, &mut resp, Role::Subscriber, &within, 333).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].payload.len(), 1000);
    }

    #[test]
    fn sharded_commands() {
        let mut pubsub = pubsub(1, &["/a"]);
        pubsub.sharded = true;
        let mut resp = RespState::default();
        pubsub.push_subscription(&mut resp, true, "/a");
        pubsub.push_subscription(&mut resp, false, "/a");
        assert_eq!(
            resp.write_buf,
            b"*2\r\n$10\r\nSSUBSCRIBE\r\n$14\r\nwschat:room:/a\r\n*2\r\n$12\r\nSUNSUBSCRIBE\r\n$14\r\nwschat:room:/a\r\n"
        );
        // smessage is delivered like message.
        let mut input = Vec::new();
        push_command(
            &mut input,
            &[
                b"smessage",
                b"wschat:room:/a",
                &envelope::encode(MessageKind::Text, 2, b"s"),
            ],
        );
        let out = feed(&mut pubsub, &mut resp, Role::Subscriber, &input, 5).unwrap();
        assert_eq!(out.len(), 1);
    }
}
