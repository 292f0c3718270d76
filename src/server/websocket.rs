//! Readiness and reads: which connection is read when (the read schedule), the WebSocket
//! upgrade (admission policy, the 101, joining the room, history for late joiners) and
//! reading WebSocket messages through tungstenite.

use std::io::{self, Write};

use log::{debug, info};

use super::{Server, mark_dirty};
use crate::config::OriginPolicy;
use crate::connection::{CloseReason, Phase, Transport, WsRead};
use crate::deflate::{self, Negotiation};
use crate::http::{self, Method, Request, Response, Status};
use crate::stats::Refusal;

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
        self.scratch.begin();
        let pass = self.stats.loop_iterations;
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        if conn.reads.begin(pass) {
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
        let may_read = conn.outbound.len() <= queue_limit;
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
        let refusal = if self.deadlines.drain.is_some() {
            Some((
                Refusal::Draining,
                Status::ServiceUnavailable,
                "server shutting down",
            ))
        } else if self.stats.websockets_open as usize >= self.max_connections {
            Some((
                Refusal::AtCapacity,
                Status::ServiceUnavailable,
                "at connection cap, retry later",
            ))
        } else if !self.origin_allowed(request) {
            Some((Refusal::Origin, Status::Forbidden, "origin not allowed"))
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

        let joined = self.rooms.join(&room, key);
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
        let response = http::switching_protocols(ws_key, extension_answer.as_deref());
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
        if deflate.is_some() {
            self.rooms.count_deflate_member(joined.room, true);
        }
        // Late joiners get the room's recent messages before any live traffic.
        if let Some(room_entry) = self.rooms.get(joined.room) {
            for frame in room_entry.history() {
                self.stats.deliveries += 1;
                conn.outbound.push_shared(&mut self.queued, frame.clone());
            }
        }
        conn.upgraded = true;
        info!(
            "conn={} peer={} opened room={}{}",
            conn.id,
            conn.peer,
            room,
            if deflate.is_some() { " deflate" } else { "" }
        );
        mark_dirty(&mut self.dirty, key, conn);
        self.stats.websockets_open += 1;
        let deadline = self.now + self.config.ping_interval;
        self.set_deadline(key, deadline);
        if frames_waiting {
            self.read_websocket(key);
        }
        true
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
        loop {
            let Some(conn) = self.connections.get_mut(key) else {
                return;
            };
            if conn.outbound.len() > self.config.max_outbound {
                // Over its own budget (its pongs, its echoes): finish what was read, then
                // leave the rest in its socket until the queue drains.
                self.scratch.stop_socket_reads();
            }
            match conn.read_websocket(&mut self.scratch, &mut self.queued, self.now) {
                WsRead::Message(message) => {
                    // A member being closed (or doomed mid-read) has left its room: what it
                    // still sends is read and dropped.
                    if conn.close_reason.is_none() {
                        self.relay(key, message);
                    }
                }
                WsRead::Control => {}
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
