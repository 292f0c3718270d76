//! Rooms and fan-out: a member's message goes to every other member of its room (and back to
//! it with `--echo`), and once to the other nodes through Redis; messages from other nodes go
//! to this node's members. A frame is encoded once per message and then copied (small) or
//! shared (large) into each recipient's queue under its byte budget. Members that speak
//! `wschat.v1` get a second frame (sequence, time, sender), also encoded once per message,
//! and only in rooms that have such members; their presence frames are sent from here too.

use bytes::Bytes;
use log::debug;
use tungstenite::protocol::Message;

use super::{Server, mark_dirty};
use crate::config::OverRate;
use crate::connection::CloseReason;
use crate::message::MessageKind;
use crate::outbound::{EncodedFrame, FlushOutcome, Offer, SHARE_THRESHOLD};
use crate::protocol_v1::{self, Delivery};
use crate::room::{HistoryEntry, RoomKey, Sender};
use crate::stats::DropReason;

/// One audience's form of a message: its encoded frame, and its kind and payload for
/// compressing it once for the members that negotiated permessage-deflate.
struct Variant<'a> {
    frame: &'a EncodedFrame,
    kind: MessageKind,
    payload: &'a [u8],
}

impl<'a> Variant<'a> {
    /// The frame's bytes when it is small (copied into each recipient's queue).
    fn small(&self) -> Option<&'a [u8]> {
        match self.frame {
            EncodedFrame::Small(bytes) => Some(bytes),
            EncodedFrame::Large(_) => None,
        }
    }
}

/// Joins and leaves are told to a room's `wschat.v1` members at most this often: a storm of
/// arrivals costs each member a few frames per second, not one per arrival.
pub(super) const PRESENCE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

impl Server {
    /// Takes a member out of its room (no more messages are queued to it).
    pub(super) fn leave_room(&mut self, key: usize) {
        let Some(ws) = self.connections.get_mut(key).and_then(|c| c.websocket()) else {
            return;
        };
        let Some(slot) = ws.slot.take() else {
            return;
        };
        let room = ws.room;
        if ws.deflate.is_some() {
            self.rooms.count_deflate_member(room, false);
        }
        self.stats.websockets_open -= 1;
        let left = self.rooms.leave(room, slot, self.now);
        if left.presence_due {
            self.presence_due(room);
        }
        if let Some(moved) = left.moved
            && let Some(ws) = self.connections.get_mut(moved).and_then(|c| c.websocket())
        {
            ws.slot = Some(slot);
        }
        if let (Some(redis), Some(name)) = (self.redis.as_mut(), &left.emptied) {
            redis.unsubscribe(name, self.now);
        }
        if left.last_member && self.config.history > 0 {
            let due = self.now + self.config.history_ttl;
            self.deadlines.expire_history_by(due);
        }
    }

    /// Sends one client message to the other members of its room (and back, with `--echo`),
    /// and once to the other nodes of the cluster.
    pub(super) fn relay(&mut self, sender: usize, message: Message) {
        self.stats.messages_received += 1;
        if !self.take_rate_token(sender) {
            return;
        }
        let Some(ws) = self.connections.get_mut(sender).and_then(|c| c.websocket()) else {
            return;
        };
        if ws.slot.is_none() {
            return;
        }
        let room = ws.room;
        let (kind, payload) = match &message {
            Message::Text(text) => (MessageKind::Text, text.as_bytes()),
            Message::Binary(data) => (MessageKind::Binary, &data[..]),
            _ => return,
        };
        let Some(conn) = self.connections.get(sender) else {
            return;
        };
        let sender_v1 = conn.v1;
        let from = match self.rooms.get(room).and_then(|r| r.name_of(sender)) {
            Some(name) => Sender::Named(name.clone()),
            None => Sender::Guest(conn.id),
        };
        // A wschat.v1 sender gets an ack with its sequence instead of an echo.
        let except = if self.config.echo && !sender_v1 {
            None
        } else {
            Some(sender)
        };
        let stamp = self.fan_out(room, kind, payload, except, from);
        if let (true, Some((seq, ts_ms))) = (sender_v1, stamp) {
            let ack = encode_frame(
                MessageKind::Text.opcode(),
                protocol_v1::ack(seq, ts_ms).as_bytes(),
            );
            self.offer_to(sender, &ack);
        }
        if let (Some(redis), Some(entry)) = (self.redis.as_mut(), self.rooms.get(room)) {
            redis.publish(&entry.name, kind, payload, self.now);
        }
    }

    /// Delivers the messages other nodes published to rooms that have members here.
    pub(super) fn deliver_from_redis(&mut self) {
        let Some(redis) = self.redis.as_mut() else {
            return;
        };
        redis.on_timer(self.now);
        let mut incoming = std::mem::take(&mut self.redis_incoming);
        for message in incoming.drain(..) {
            if let Some(room) = self.rooms.key_of(&message.room) {
                self.fan_out(room, message.kind, &message.payload, None, Sender::Remote);
            }
        }
        self.redis_incoming = incoming;
    }

    /// Queues one message to every member of a room but `except`, and remembers it. The raw
    /// frame is encoded once, and the `wschat.v1` frame once more only if the room has members
    /// that speak it. With permessage-deflate, a message of at least `--compression-min` is
    /// compressed once, at the first raw member that negotiated it, and that frame goes to
    /// every such member (not smaller: they get the plain one). History keeps the plain frame,
    /// which every joiner can read. Returns the message's sequence number and receive time.
    fn fan_out(
        &mut self,
        room: RoomKey,
        kind: MessageKind,
        payload: &[u8],
        except: Option<usize>,
        from: Sender,
    ) -> Option<(u64, u64)> {
        let ts_ms = self.wall_ms();
        let room_entry = self.rooms.get_mut(room)?;
        let seq = room_entry.next_seq();
        let frame = encode_frame(kind.opcode(), payload);
        let v1_message = (room_entry.v1_members() > 0).then(|| {
            let (v1_kind, body) = protocol_v1::encode_message(&Delivery {
                seq,
                ts_ms,
                from: from.as_from(),
                kind,
                payload,
            });
            let v1_frame = encode_frame(v1_kind.opcode(), &body);
            (v1_kind, body, v1_frame)
        });
        if self.config.history > 0 {
            // The encoded frame is a fresh buffer, never a slice of the sender's read buffer,
            // so keeping it pins nothing else.
            let kept = match &frame {
                EncodedFrame::Large(shared) => shared.clone(),
                EncodedFrame::Small(bytes) => Bytes::copy_from_slice(bytes),
            };
            self.rooms.remember(
                room,
                HistoryEntry {
                    seq,
                    ts_ms,
                    from,
                    frame: kept,
                },
            );
        }
        let raw = Variant {
            frame: &frame,
            kind,
            payload,
        };
        let v1 = v1_message.as_ref().map(|(kind, body, frame)| Variant {
            frame,
            kind: *kind,
            payload: body,
        });
        self.queue_to_members(room, Some(raw), v1, except);
        Some((seq, ts_ms))
    }

    /// Offers a message to every member of a room but `except`: `raw` to raw members
    /// (skipped when None), `v1` to `wschat.v1` members (they get `raw` when None). Members
    /// that negotiated permessage-deflate get their variant compressed, once for all of them
    /// (at the first such member; not smaller: the plain frame). Each recipient gets a copy
    /// (small) or a shared reference (large) in its queue, under its byte budget.
    fn queue_to_members(
        &mut self,
        room: RoomKey,
        raw: Option<Variant<'_>>,
        v1: Option<Variant<'_>>,
        except: Option<usize>,
    ) {
        let Server {
            rooms,
            connections,
            dirty,
            stats,
            config,
            queued,
            compressor,
            ..
        } = self;
        let Some(room_entry) = rooms.get(room) else {
            return;
        };
        // Rooms without deflate members (and servers without compression) skip all of it.
        let try_deflate = compressor.is_some() && room_entry.deflate_members() > 0;
        let min = config.compression_min;
        // Per variant (raw, v1): None until a member wants it; then the compressed frame, or
        // None if it is not smaller.
        let mut compressed: [Option<Option<EncodedFrame>>; 2] = [None, None];
        let budget = config.max_outbound;
        let policy = config.slow_client;
        let mut slow = Vec::new();
        let mut gone = Vec::new();
        // Counted once after the loop: a store through `stats` per recipient costs more than
        // the copy of a chat line.
        let mut fast_deliveries = 0u64;
        // Rooms without deflate members (the common case, and the benchmarks'): one small
        // frame per audience, so the loop below starts with a fast path that picks the
        // member's frame by its protocol flag (the same frame twice in a raw-only room) and
        // never looks at its extensions. Measured: the general path below cost a `wschat.v1`
        // room about 5 ns more per delivery than this one.
        let raw_small = raw.as_ref().and_then(Variant::small);
        let v1_small = v1.as_ref().and_then(Variant::small);
        let fast_frames = match (raw_small, &v1, v1_small) {
            _ if try_deflate => None,
            (Some(raw_bytes), None, _) => Some((raw_bytes, raw_bytes)),
            (Some(raw_bytes), Some(_), Some(v1_bytes)) => Some((raw_bytes, v1_bytes)),
            _ => None,
        };
        for &member in room_entry.members() {
            if Some(member) == except {
                continue;
            }
            let Some(recipient) = connections.get_mut(member) else {
                continue;
            };
            // A member that is closing has left its room already; a close deferred to the end
            // of this pass (slow) is marked here. Checked on the connection itself, not on
            // tungstenite's state behind a pointer: this loop runs once per delivery.
            if recipient.close_reason.is_some() {
                continue;
            }
            if let Some((raw_bytes, v1_bytes)) = fast_frames {
                let bytes = if recipient.v1 { v1_bytes } else { raw_bytes };
                if recipient.outbound.len() + bytes.len() <= budget {
                    recipient.outbound.push_copy(queued, bytes);
                    fast_deliveries += 1;
                    mark_dirty(dirty, member, recipient);
                    continue;
                }
            }
            let (variant, slot) = match (&v1, recipient.v1) {
                (Some(v1), true) => (v1, 1),
                _ => match &raw {
                    Some(raw) => (raw, 0),
                    None => continue,
                },
            };
            let deflate_frame = if try_deflate
                && variant.payload.len() >= min
                && recipient
                    .websocket()
                    .and_then(|ws| ws.deflate)
                    .is_some_and(|agreement| agreement.may_compress(variant.payload.len()))
            {
                compressed[slot]
                    .get_or_insert_with(|| {
                        compressor
                            .as_mut()
                            .and_then(|c| c.compress_frame(variant.kind.opcode(), variant.payload))
                    })
                    .as_ref()
            } else {
                None
            };
            let frame = deflate_frame.unwrap_or(variant.frame);
            // The common case: a small frame within the member's budget is appended, which is
            // what `offer` would do, without its policy branches.
            if let EncodedFrame::Small(bytes) = frame
                && deflate_frame.is_none()
                && recipient.outbound.len() + bytes.len() <= budget
            {
                recipient.outbound.push_copy(queued, bytes);
                fast_deliveries += 1;
                mark_dirty(dirty, member, recipient);
                continue;
            }
            // The budget counts bytes the socket would not take, not what this pass queued
            // before its flush: write now what the socket takes before judging a member slow
            // (one pass may read a burst larger than the budget from one sender).
            if recipient.outbound.len() + frame.len() > budget && !recipient.write_blocked {
                let flushed = recipient
                    .outbound
                    .flush_once(queued, &mut recipient.transport);
                stats.bytes_sent += flushed.bytes as u64;
                match flushed.outcome {
                    FlushOutcome::Open => {}
                    FlushOutcome::Blocked => recipient.write_blocked = true,
                    FlushOutcome::Failed(_) => {
                        gone.push(member);
                        continue;
                    }
                }
            }
            let delivered = |stats: &mut crate::stats::Stats| {
                stats.deliveries += 1;
                stats.deliveries_compressed += u64::from(deflate_frame.is_some());
            };
            match recipient.outbound.offer(queued, frame, budget, policy) {
                Offer::Queued => delivered(stats),
                Offer::QueuedAfterDropping(n) => {
                    delivered(stats);
                    stats.drop_message(DropReason::SlowClientOldest, n as u64);
                }
                Offer::Dropped => stats.drop_message(DropReason::SlowClientNewest, 1),
                Offer::OverBudget => slow.push(member),
            }
            mark_dirty(dirty, member, recipient);
        }
        stats.deliveries += fast_deliveries;
        for member in slow {
            self.close_slow_consumer(member);
        }
        for member in gone {
            self.doom(member, CloseReason::ClientGone);
        }
    }

    /// Offers one frame to one member (an ack) under its budget, like any delivery.
    fn offer_to(&mut self, key: usize, frame: &EncodedFrame) {
        let budget = self.config.max_outbound;
        let policy = self.config.slow_client;
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        if conn.close_reason.is_some() {
            return;
        }
        match conn.outbound.offer(&mut self.queued, frame, budget, policy) {
            Offer::Queued | Offer::QueuedAfterDropping(_) => {}
            Offer::Dropped => self.stats.drop_message(DropReason::SlowClientNewest, 1),
            Offer::OverBudget => {
                self.close_slow_consumer(key);
                return;
            }
        }
        mark_dirty(&mut self.dirty, key, conn);
    }

    /// A room owes its `wschat.v1` members a presence frame: sent when the presence timer
    /// fires, with every join and leave until then.
    pub(super) fn presence_due(&mut self, room: RoomKey) {
        self.presence_rooms.push(room);
        if self.deadlines.presence.is_none() {
            self.deadlines.presence = Some(self.now + PRESENCE_INTERVAL);
        }
    }

    /// Sends every room's owed presence frame (encoded once per room) to its `wschat.v1`
    /// members. Called when the presence timer fires.
    pub(super) fn send_presence(&mut self) {
        let rooms = std::mem::take(&mut self.presence_rooms);
        for &room in &rooms {
            // A room listed twice, or gone (its key maybe reused), owes nothing.
            let Some(text) = self.rooms.get_mut(room).and_then(|r| r.take_presence()) else {
                continue;
            };
            if let Some(entry) = self.rooms.get(room) {
                // At most a few per second per room (coalesced), so the log can say it.
                debug!("room={} presence {}", entry.name, text);
            }
            let frame = encode_frame(MessageKind::Text.opcode(), text.as_bytes());
            let presence = Variant {
                frame: &frame,
                kind: MessageKind::Text,
                payload: text.as_bytes(),
            };
            self.queue_to_members(room, None, Some(presence), None);
        }
        // The list's buffer is kept for the next round.
        self.presence_rooms = rooms;
        self.presence_rooms.clear();
    }

    /// `--max-rate`: takes a token from the sender's bucket. False if the message must not be
    /// relayed (dropped, or the sender is being closed).
    fn take_rate_token(&mut self, sender: usize) -> bool {
        let Some(limit) = self.config.rate_limit else {
            return true;
        };
        let now = self.now;
        let Some(ws) = self.connections.get_mut(sender).and_then(|c| c.websocket()) else {
            return false;
        };
        if ws.rate.take(now, &limit) {
            return true;
        }
        self.stats.drop_message(DropReason::RateLimit, 1);
        if limit.over == OverRate::Close {
            self.close_websocket(sender, CloseReason::RateLimited);
        }
        false
    }
}

/// Encodes one unmasked, unfragmented server frame: the same bytes for every recipient.
pub(crate) fn encode_frame(opcode: u8, payload: &[u8]) -> EncodedFrame {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(0x80 | opcode);
    match payload.len() {
        len @ 0..=125 => frame.push(len as u8),
        len @ 126..=0xffff => {
            frame.push(126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    if frame.len() >= SHARE_THRESHOLD {
        EncodedFrame::Large(Bytes::from(frame))
    } else {
        EncodedFrame::Small(frame)
    }
}
