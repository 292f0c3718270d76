//! Rooms and fan-out: a member's message goes to every other member of its room (and back to
//! it with `--echo`), and once to the other nodes through Redis; messages from other nodes go
//! to this node's members. A frame is encoded once per message and then copied (small) or
//! shared (large) into each recipient's queue under its byte budget.

use bytes::Bytes;
use tungstenite::protocol::Message;

use super::{Server, mark_dirty};
use crate::config::OverRate;
use crate::connection::CloseReason;
use crate::message::MessageKind;
use crate::outbound::{EncodedFrame, FlushOutcome, Offer, SHARE_THRESHOLD};
use crate::stats::DropReason;

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
        let except = if self.config.echo { None } else { Some(sender) };
        self.fan_out(room, kind, payload, except);
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
                self.fan_out(room, message.kind, &message.payload, None);
            }
        }
        self.redis_incoming = incoming;
    }

    /// Queues one message to every member of a room but `except`. The frame is encoded once;
    /// each recipient gets a copy (small) or a shared reference (large) in its queue, under
    /// its byte budget. With permessage-deflate, a message of at least `--compression-min`
    /// is compressed once, at the first member that negotiated it, and that frame goes to
    /// every such member; if it is not smaller, everyone gets the plain frame. History keeps
    /// the plain frame, which every joiner can read.
    fn fan_out(&mut self, room: usize, kind: MessageKind, payload: &[u8], except: Option<usize>) {
        let frame = encode_frame(kind.opcode(), payload);
        if self.config.history > 0 {
            // The encoded frame is a fresh buffer, never a slice of the sender's read buffer,
            // so keeping it pins nothing else.
            let kept = match &frame {
                EncodedFrame::Large(shared) => shared.clone(),
                EncodedFrame::Small(bytes) => Bytes::copy_from_slice(bytes),
            };
            self.rooms.remember(room, kept);
        }
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
        let try_deflate = compressor.is_some()
            && payload.len() >= config.compression_min
            && room_entry.deflate_members() > 0;
        // None until a member wants it; then the compressed frame, or None if not smaller.
        let mut compressed: Option<Option<EncodedFrame>> = None;
        let budget = config.max_outbound;
        let policy = config.slow_client;
        let mut slow = Vec::new();
        let mut gone = Vec::new();
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
            let deflate_frame = if try_deflate
                && recipient
                    .websocket()
                    .and_then(|ws| ws.deflate)
                    .is_some_and(|agreement| agreement.may_compress(payload.len()))
            {
                compressed
                    .get_or_insert_with(|| {
                        compressor
                            .as_mut()
                            .and_then(|c| c.compress_frame(kind.opcode(), payload))
                    })
                    .as_ref()
            } else {
                None
            };
            let frame = deflate_frame.unwrap_or(&frame);
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
        for member in slow {
            self.close_slow_consumer(member);
        }
        for member in gone {
            self.doom(member, CloseReason::ClientGone);
        }
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
