//! Readiness and reads: which connection is read when (the read schedule), the WebSocket
//! upgrade (admission policy, the 101, joining the room, history for late joiners) and
//! reading WebSocket messages through tungstenite.

use std::io::{self, Write};

use std::sync::Arc;

use log::{debug, info};

use super::relay::encode_frame;
use super::{Server, mark_dirty};
use crate::config::OriginPolicy;
use crate::connection::{CloseReason, Connection, Phase, READ_BUDGET_PER_EVENT, Transport, WsRead};
use crate::deflate::{self, Negotiation};
use crate::http::{self, Method, Request, Response, Status};
use crate::memory::Pressure;
use crate::message::MessageKind;
use crate::protocol_v1::{self, Delivery, Params, V1Error};
use crate::room::{NamedMember, RoomKey};
use crate::stats::Refusal;

/// A peer that does not read what it is sent reads at most this much per event.
const NON_READER_READ_BUDGET: usize = 4 * 1024;
/// However large its room and busy the pass, a connection reads at least this much per event.
const MIN_READ_BUDGET: usize = 2 * 1024;
/// The bytes all connections together read in one pass, before the minimum above.
const READ_BUDGET_PER_PASS: usize = 4 * 1024 * 1024;
/// One event's read may fan out to at most this fraction of the outbound limit...
const FANOUT_SHARE: usize = 8;
/// ...and to at most this many bytes, whatever the limit: copying and writing it is most of
/// a pass's work, and the default outbound limit (256 MiB) alone would let one read fan out
/// to 32 MiB.
const FANOUT_PER_EVENT: usize = 4 * 1024 * 1024;

/// How long a client refused at the connection cap is told to wait.
const RETRY_AFTER_SECONDS: &str = "5";

impl Server {
    /// Handles readiness for one connection.
    pub(super) fn on_connection_event(&mut self, key: usize, readable: bool, writable: bool) {
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        if writable && conn.write_blocked {
            conn.write_blocked = false;
            mark_dirty(&mut self.dirty, key, conn);
        }
        if readable {
            self.read_connection(key);
        }
    }

    /// Serves the reads owed at the start of this pass (read budget, a full queue drained
    /// since). A connection already read in this pass waits for the next one.
    pub(super) fn serve_owed_reads(&mut self, owed: &[usize]) {
        for &key in owed {
            if self.connections.get(key).is_some_and(|c| c.reads.owed) {
                self.read_connection(key);
            }
        }
    }

    /// Reads what a connection has for us, according to its phase, until `WouldBlock` or the
    /// read budget (once per pass). Called on readable events and for owed reads.
    fn read_connection(&mut self, key: usize) {
        let Some(conn) = self.connections.get(key) else {
            return;
        };
        let budget = self.read_budget(conn);
        self.scratch.begin(budget);
        let pass = self.stats.loop_iterations;
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        if !conn.memory_paused && self.memory.must_pause(conn) {
            // Checked live, not only once per pass: a pass may read thousands of sockets.
            conn.memory_paused = true;
            self.memory.note_paused(key, conn.id);
        }
        if conn.memory_paused {
            // Near the memory ceiling: its bytes wait in the kernel until the pressure eases.
            conn.reads.owed = true;
        } else if conn.reads.begin(pass) {
            match conn.phase {
                Phase::Http { .. } => self.read_http(key),
                Phase::WebSocket(_) => self.read_websocket(key),
                Phase::Closing { .. } => self.progress_closing(key),
            }
        }
        self.owe_read(key);
        if let Some(conn) = self.connections.get_mut(key) {
            mark_dirty(&mut self.dirty, key, conn);
        }
    }

    /// The bytes a connection may read from its socket in one event. Reading is where work
    /// enters the loop, so the connections that read in a pass share a budget for it (500
    /// ping flooders reading 64 KiB each made passes of 100-300 ms before they were
    /// throttled below), and the cost of a byte read depends on who reads it:
    /// - a peer whose socket refuses what it is sent (it does not read: a ping flooder, a
    ///   member that stopped reading) gets a small share: its pongs and echoes would only
    ///   queue behind the rest;
    /// - in a large room each byte read is copied to every other member, so a member reads at
    ///   most what fans out to a share of the outbound limit, and to 4 MiB at most. Without
    ///   this, one 64 KiB read of 1 KiB messages into a room of 2,000 queued 128 MiB in one
    ///   pass (scripts/hostile, attack 5, with a 64 MiB ceiling) and held the loop for
    ///   hundreds of milliseconds; with the default ceiling, the share alone (32 MiB a read)
    ///   still made passes of 150-300 ms.
    ///
    /// The rest of what the socket holds is read in the next passes (the read is owed).
    fn read_budget(&self, conn: &Connection) -> usize {
        if conn.write_blocked && !conn.outbound.is_empty() {
            return NON_READER_READ_BUDGET;
        }
        let share_of = |budget: usize, sharers: usize| {
            budget
                .checked_div(sharers)
                .map_or(READ_BUDGET_PER_EVENT, |share| {
                    share.clamp(MIN_READ_BUDGET, READ_BUDGET_PER_EVENT)
                })
        };
        let pass_share = share_of(READ_BUDGET_PER_PASS, self.readers_this_pass);
        let Phase::WebSocket(ws) = &conn.phase else {
            return pass_share;
        };
        let others = self
            .rooms
            .get(ws.room)
            .map_or(0, |room| room.members().len().saturating_sub(1));
        let fanout = (self.outbound_limit() / FANOUT_SHARE).min(FANOUT_PER_EVENT);
        pass_share.min(share_of(fanout, others))
    }

    /// Puts a connection that owes a read on the list for the next pass, unless its own queue
    /// must drain first: an HTTP response not yet sent (bounded pipelining), or a WebSocket
    /// over its outbound budget (a client that does not read cannot make the server write
    /// more, pongs included). `flush_dirty` calls it again once the queue has drained.
    pub(super) fn owe_read(&mut self, key: usize) {
        let max_outbound = self.config.max_outbound;
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        let queue_limit = match conn.phase {
            Phase::Http { .. } => 0,
            Phase::WebSocket(_) => max_outbound,
            Phase::Closing { .. } => usize::MAX,
        };
        let may_read = conn.outbound.len() <= queue_limit && !conn.memory_paused;
        self.reads.owe(key, &mut conn.reads, may_read);
    }

    /// Completes the opening handshake (or refuses it with a status) and joins the room.
    /// Returns true if the connection became a WebSocket.
    pub(super) fn upgrade(
        &mut self,
        key: usize,
        request: &Request,
        room: String,
        ws_key: &str,
        peer_done: bool,
    ) -> bool {
        let v1 = self.v1_request(request, &room);
        let refusal = if self.deadlines.drain.is_some() {
            Some((
                Refusal::Draining,
                Status::ServiceUnavailable,
                "server shutting down".to_string(),
            ))
        } else if self.stats.websockets_open as usize >= self.max_connections {
            Some((
                Refusal::AtCapacity,
                Status::ServiceUnavailable,
                "at connection cap, retry later".to_string(),
            ))
        } else if self.memory.pressure >= Pressure::Refusing {
            Some((
                Refusal::MemoryPressure,
                Status::ServiceUnavailable,
                "memory pressure, retry later".to_string(),
            ))
        } else if !self.origin_allowed(request) {
            Some((
                Refusal::Origin,
                Status::Forbidden,
                "origin not allowed".to_string(),
            ))
        } else if let Err(e) = &v1 {
            let status = if e.is_conflict() {
                Status::Conflict
            } else {
                Status::BadRequest
            };
            Some((
                Refusal::BadRequest,
                status,
                format!("{SUBPROTOCOL_LABEL}: {e}"),
            ))
        } else {
            None
        };
        if let Some((why, status, text)) = refusal {
            self.stats.refuse(why);
            if let Some(conn) = self.connections.get(key) {
                info!(
                    "conn={} peer={} upgrade refused: {} {} (origin {:?})",
                    conn.id,
                    conn.peer,
                    status.code(),
                    text,
                    request.origin.as_deref().unwrap_or("-")
                );
            }
            let extra: &[(&str, &str)] = if status == Status::ServiceUnavailable {
                &[("Retry-After", RETRY_AFTER_SECONDS)]
            } else {
                &[]
            };
            let response = Response::text(status, &format!("{text}\n"), extra);
            self.respond_and_close(key, response, Method::Get, CloseReason::HttpRefused);
            return false;
        }
        let v1 = v1.ok().flatten();
        let named = match (&v1, self.connections.get(key)) {
            (Some(params), Some(conn)) => Some(NamedMember {
                name: Arc::from(
                    params
                        .name
                        .clone()
                        .unwrap_or_else(|| protocol_v1::generated_name(conn.id)),
                ),
                key: params.key.as_deref().map(Box::from),
            }),
            _ => None,
        };
        let name = named.as_ref().map(|n| n.name.clone());

        let joined = self.rooms.join(&room, key, named);
        if joined.presence_due {
            self.presence_due(joined.room);
        }
        if let (true, Some(redis)) = (joined.first_member, self.redis.as_mut()) {
            redis.subscribe(&room, self.now);
        }
        let Some(conn) = self.connections.get_mut(key) else {
            return false;
        };
        // permessage-deflate: only with `--compression on`; otherwise offers go unanswered,
        // which every client takes as "no extension".
        let deflate = match request.extensions.as_deref() {
            Some(offers) if self.config.compression => match deflate::negotiate([offers]) {
                Negotiation::Accepted(agreement) => Some(agreement),
                Negotiation::Declined(why) => {
                    debug!("conn={} peer={} {why}", conn.id, conn.peer);
                    None
                }
                Negotiation::NotOffered => None,
            },
            _ => None,
        };
        let extension_answer = deflate.map(|agreement| agreement.response_header());
        let response = http::switching_protocols(
            ws_key,
            v1.is_some().then_some(protocol_v1::SUBPROTOCOL),
            extension_answer.as_deref(),
        );
        // Bytes that arrived behind the head are the first frames: tungstenite gets them.
        let rest = match &mut conn.phase {
            Phase::Http { head } => std::mem::take(head),
            _ => Vec::new(),
        };
        // A fresh socket takes the 101 at once; writing it now, not through the queue, keeps
        // an idle connection from holding queue memory it will not use again.
        let sent = write_now(&mut conn.transport, &response);
        self.stats.bytes_sent += sent as u64;
        if sent < response.len() {
            conn.outbound
                .push_opaque(&mut self.queued, response[sent..].to_vec());
        }
        // The socket was read to WouldBlock already: only frames that came with the head, or
        // an end of stream already seen, need reading now (one read per connection saved at
        // connection storms; edge-triggered readiness will not report that end again).
        let frames_waiting = !rest.is_empty() || peer_done;
        conn.upgrade(
            rest,
            self.websocket_config,
            joined.room,
            joined.slot,
            deflate,
            &mut self.scratch.inflater,
        );
        conn.v1 = v1.is_some();
        if deflate.is_some() {
            self.rooms.count_deflate_member(joined.room, true);
        }
        let deflate_note = if deflate.is_some() { " deflate" } else { "" };
        match (&v1, &name) {
            (Some(params), Some(name)) => {
                info!(
                    "conn={} peer={} opened room={} protocol={} name={:?}{deflate_note}",
                    conn.id,
                    conn.peer,
                    room,
                    protocol_v1::SUBPROTOCOL,
                    name
                );
                self.greet_v1(key, joined.room, params, name);
            }
            _ => {
                // Late joiners get the room's recent messages before any live traffic.
                if let Some(room_entry) = self.rooms.get(joined.room) {
                    for entry in room_entry.history() {
                        self.stats.deliveries += 1;
                        conn.outbound
                            .push_shared(&mut self.queued, entry.frame.clone());
                    }
                }
                info!(
                    "conn={} peer={} opened room={room}{deflate_note}",
                    conn.id, conn.peer
                );
            }
        }
        let Some(conn) = self.connections.get_mut(key) else {
            return false;
        };
        conn.upgraded = true;
        mark_dirty(&mut self.dirty, key, conn);
        self.stats.websockets_open += 1;
        let deadline = self.now + self.config.ping_interval;
        self.set_deadline(key, deadline);
        if frames_waiting {
            self.read_websocket(key);
        }
        true
    }

    /// What an upgrade asks of `wschat.v1`: None for a raw client (whose query is ignored, as
    /// it always was), its parameters, or why they are refused. Checked before the 101, so a
    /// bad `since`, a bad or taken name, or a garbled offer gets an HTTP status.
    fn v1_request(&self, request: &Request, room: &str) -> Result<Option<Params>, V1Error> {
        if !protocol_v1::offered(request.protocols.as_deref())? {
            return Ok(None);
        }
        let params = protocol_v1::parse_query(request.query.as_deref().unwrap_or(""))?;
        if let Some(name) = &params.name
            && self.rooms.name_taken(room, name, params.key.as_deref())
        {
            return Err(V1Error::NameTaken);
        }
        if let Some(entry) = self.rooms.key_of(room).and_then(|k| self.rooms.get(k)) {
            // Only to refuse a sequence ahead of the room before the 101.
            entry.recovery(params.since)?;
        }
        Ok(Some(params))
    }

    /// Queues a new `wschat.v1` member's first frames, before any live traffic: the hello,
    /// then what it missed since `since` (a count, the messages history still holds).
    fn greet_v1(&mut self, key: usize, room: RoomKey, params: &Params, name: &str) {
        let Server {
            rooms,
            connections,
            stats,
            queued,
            ..
        } = self;
        let (Some(entry), Some(conn)) = (rooms.get(room), connections.get_mut(key)) else {
            return;
        };
        let text = |s: String| encode_frame(MessageKind::Text.opcode(), s.as_bytes());
        let push = |conn: &mut crate::connection::Connection, queued: &mut _, frame| match frame {
            crate::outbound::EncodedFrame::Small(bytes) => conn.outbound.push_copy(queued, &bytes),
            crate::outbound::EncodedFrame::Large(bytes) => conn.outbound.push_shared(queued, bytes),
        };
        let hello = protocol_v1::hello(entry.epoch, entry.last_seq, name, entry.members().len());
        push(conn, queued, text(hello));
        // Checked in v1_request; the join changed no sequence.
        let recovery = match entry.recovery(params.since) {
            Ok(recovery) => recovery,
            Err(_) => return,
        };
        if let Some(count) = recovery.missed {
            push(conn, queued, text(protocol_v1::missed(count)));
        }
        for message in entry.history().skip(recovery.skip) {
            let payload = frame_payload(&message.frame);
            let kind = if message.frame.first().is_some_and(|b| b & 0x0f == 0x2) {
                MessageKind::Binary
            } else {
                MessageKind::Text
            };
            let (kind, body) = protocol_v1::encode_message(&Delivery {
                seq: message.seq,
                ts_ms: message.ts_ms,
                from: message.from.as_from(),
                kind,
                payload,
            });
            stats.deliveries += 1;
            push(conn, queued, encode_frame(kind.opcode(), &body));
        }
    }

    fn origin_allowed(&self, request: &Request) -> bool {
        let Some(origin) = request.origin.as_deref() else {
            return true;
        };
        let same_host = request
            .host
            .as_deref()
            .is_some_and(|host| http::origin_matches_host(origin, host));
        match &self.config.origins {
            OriginPolicy::Any => true,
            OriginPolicy::SameHost => same_host,
            OriginPolicy::List(allowed) => {
                same_host || allowed.iter().any(|a| a.eq_ignore_ascii_case(origin))
            }
        }
    }

    /// Reads messages until `WouldBlock` and relays each as it arrives.
    fn read_websocket(&mut self, key: usize) {
        let outbound_limit = self.outbound_limit();
        let mut frames = 0;
        loop {
            let Some(conn) = self.connections.get_mut(key) else {
                return;
            };
            // Over its own budget (its pongs, its echoes), or, once it has had one frame this
            // pass, all queues together over theirs: finish what was read, then leave the rest
            // in its socket until the queues drain or are shed (at the end of this pass). The
            // one frame keeps everyone moving: a flooder gets one per pass, a member who
            // behaves loses nothing.
            if conn.outbound.len() > self.config.max_outbound
                || (frames > 0 && self.queued.bytes() > outbound_limit)
            {
                self.scratch.stop_socket_reads();
            }
            match conn.read_websocket(&mut self.scratch, &mut self.queued, self.now) {
                WsRead::Message(message) => {
                    frames += 1;
                    // A member being closed (or doomed mid-read) has left its room: what it
                    // still sends is read and dropped.
                    if conn.close_reason.is_none() {
                        self.relay(key, message);
                    }
                }
                WsRead::Control => frames += 1,
                WsRead::WouldBlock => break,
                WsRead::Ended(reason) => {
                    self.end_websocket(key, reason);
                    break;
                }
            }
        }
        self.stats.bytes_received += std::mem::take(&mut self.scratch.bytes_read);
    }

    /// A WebSocket connection is over (its final Close, if any, is queued).
    fn end_websocket(&mut self, key: usize, reason: CloseReason) {
        if matches!(reason, CloseReason::ClientGone | CloseReason::IoError) {
            self.doom(key, reason);
        } else {
            self.close_after_flush(key, reason);
        }
    }
}

/// Names the subprotocol in refusals, so a client sees which part of its request failed.
const SUBPROTOCOL_LABEL: &str = protocol_v1::SUBPROTOCOL;

/// The payload of an unmasked server frame encoded by `encode_frame`.
fn frame_payload(frame: &[u8]) -> &[u8] {
    let header = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    frame.get(header..).unwrap_or(&[])
}

/// Writes what the socket takes right now, without queueing; returns how many bytes went.
fn write_now(transport: &mut Transport, bytes: &[u8]) -> usize {
    loop {
        match transport.write(bytes) {
            Ok(n) => return n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return 0,
        }
    }
}
