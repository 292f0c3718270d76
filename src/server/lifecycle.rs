//! A connection's life after admission: its deadline (handshake, heartbeat, idle, close
//! timeout), the closing handshake, and removal. A connection found dead mid-pass is doomed and
//! removed at the end of the pass (never mid-batch: its key could be reused by an accept while
//! a stale event for it is still queued).

use std::time::Duration;

use log::{debug, info, trace};

use super::timers::is_due;
use super::{Server, mark_dirty};
use crate::config::CLOSE_TIMEOUT;
use crate::connection::{CloseReason, Phase};
use crate::outbound::FlushOutcome;

impl Server {
    /// Gives a connection a new deadline (see `timers.rs`: one heap entry per connection).
    pub(super) fn set_deadline(&mut self, key: usize, deadline: std::time::Instant) {
        if let Some(conn) = self.connections.get_mut(key) {
            self.timers.set(&mut conn.timer, key, conn.id, deadline);
        }
    }

    /// Fires every due timer: connection deadlines, the accept pause, the watchdog, the
    /// stats line, history expiry. Called once per pass, after the events.
    pub(super) fn fire_timers(&mut self) {
        let now = self.now;
        while let Some(key) = self.timers.next_due(now, &mut self.connections) {
            self.on_deadline(key);
        }
        let connections = &self.connections;
        self.timers.compact(connections.len(), |key, id, at| {
            connections
                .get(key)
                .is_some_and(|c| c.id == id && super::timers::entry_is_live(&c.timer, at))
        });
        if is_due(self.deadlines.accept_paused_until, now) {
            self.deadlines.accept_paused_until = None;
            self.accept_all();
        }
        if let Some(notifier) = &self.notifier
            && is_due(self.deadlines.watchdog, now)
        {
            notifier.notify("WATCHDOG=1");
            self.deadlines.watchdog = notifier.watchdog_every.map(|every| now + every);
        }
        if let Some(every) = self.config.stats_interval
            && is_due(self.deadlines.stats, now)
        {
            let gauges = self.gauges();
            if let Some(line) = self.stats.summary_line(&self.stats_at_last_line, &gauges) {
                info!("{line}");
            }
            self.stats_at_last_line = self.stats.clone();
            self.deadlines.stats = Some(now + every);
        }
        if is_due(self.deadlines.presence, now) {
            self.deadlines.presence = None;
            self.send_presence();
        }
        if is_due(self.deadlines.history_expiry, now) {
            self.deadlines.history_expiry = self.rooms.expire_history(now, self.config.history_ttl);
        }
    }

    /// A connection's deadline came: handshake timeout, heartbeat, idle close, close timeout.
    fn on_deadline(&mut self, key: usize) {
        let now = self.now;
        let ping_interval = self.config.ping_interval;
        let idle_timeout = self.config.idle_timeout;
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        match &conn.phase {
            Phase::Http { .. } => self.doom(key, CloseReason::HandshakeTimeout),
            Phase::Closing { .. } => self.doom(key, CloseReason::CloseTimeout),
            Phase::WebSocket(_) => {
                if !conn.accepts_messages() {
                    // We sent Close and the peer did not answer in time.
                    self.doom(key, CloseReason::CloseTimeout);
                    return;
                }
                let silence = now.saturating_duration_since(conn.last_heard);
                let pinged = conn.websocket().is_some_and(|ws| ws.pinged);
                if silence >= idle_timeout {
                    info!(
                        "conn={} peer={} idle for {:?}, closing",
                        conn.id, conn.peer, silence
                    );
                    self.close_websocket(key, CloseReason::IdleTimeout);
                } else if silence >= ping_interval && !pinged {
                    let was_empty = conn.outbound.is_empty();
                    conn.send_ping(&mut self.scratch, &mut self.queued);
                    if was_empty && !conn.write_blocked {
                        // A quiet connection: send the ping now and give back the queue's
                        // memory, so an idle client costs only its connection state.
                        let flushed = conn
                            .outbound
                            .flush_once(&mut self.queued, &mut conn.transport);
                        self.stats.bytes_sent += flushed.bytes as u64;
                        if let FlushOutcome::Blocked = flushed.outcome {
                            conn.write_blocked = true;
                        }
                        if conn.outbound.is_empty() {
                            conn.outbound.release_memory(&mut self.queued);
                        }
                    }
                    mark_dirty(&mut self.dirty, key, conn);
                    let next = conn.last_heard + idle_timeout;
                    self.set_deadline(key, next);
                } else {
                    let next = if pinged {
                        conn.last_heard + idle_timeout
                    } else {
                        conn.last_heard + ping_interval
                    };
                    self.set_deadline(key, next.max(now + Duration::from_millis(1)));
                }
            }
        }
    }

    /// Moves a connection to `Closing`: it flushes, shuts its write side and waits for the
    /// peer's end of stream, at most `CLOSE_TIMEOUT`.
    pub(super) fn close_after_flush(&mut self, key: usize, reason: CloseReason) {
        self.leave_room(key);
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        conn.begin_closing(reason);
        mark_dirty(&mut self.dirty, key, conn);
        let deadline = self.now + CLOSE_TIMEOUT;
        self.set_deadline(key, deadline);
        self.progress_closing(key);
    }

    /// Moves a closing connection on: input is read and discarded; once the queue is empty
    /// the write side is shut (our FIN follows the last byte); once the peer's end of stream
    /// has arrived too, the connection is removed. Called on readable, after each flush and
    /// when closing begins.
    pub(super) fn progress_closing(&mut self, key: usize) {
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        let peer_finished = conn.drain_input();
        let write_shut = conn.shut_write_when_flushed();
        if peer_finished && write_shut {
            let reason = conn.close_reason.unwrap_or(CloseReason::HttpDone);
            self.doom(key, reason);
        }
    }

    /// Starts our side of the closing handshake with the reason's close code. The member
    /// leaves its room at once; the peer has `CLOSE_TIMEOUT` to answer.
    pub(super) fn close_websocket(&mut self, key: usize, reason: CloseReason) {
        self.leave_room(key);
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        conn.send_close(reason, &mut self.scratch, &mut self.queued);
        mark_dirty(&mut self.dirty, key, conn);
        let deadline = self.now + CLOSE_TIMEOUT;
        self.set_deadline(key, deadline);
    }

    /// Closes a member over its outbound budget under `--slow-client close` (1008).
    pub(super) fn close_slow_consumer(&mut self, key: usize) {
        self.stats.slow_client_closes += 1;
        if let Some(conn) = self.connections.get(key) {
            info!(
                "conn={} peer={} slow consumer: {} bytes queued, closing with 1008",
                conn.id,
                conn.peer,
                conn.outbound.len()
            );
        }
        self.close_websocket(key, CloseReason::SlowConsumer);
    }

    /// Marks a connection for removal at the end of the pass.
    pub(super) fn doom(&mut self, key: usize, reason: CloseReason) {
        self.leave_room(key);
        if let Some(conn) = self.connections.get_mut(key) {
            // The first reason stands (a slow consumer whose close then times out was closed
            // for being slow).
            conn.close_reason.get_or_insert(reason);
            self.doomed.push(key);
        }
    }

    /// Removes the doomed connections: logs their end and counts it. Called once per pass,
    /// last.
    pub(super) fn reap_doomed(&mut self) {
        for key in std::mem::take(&mut self.doomed) {
            let Some(mut conn) = self.connections.try_remove(key) else {
                continue;
            };
            self.refusing_at_cap = false;
            let reason = conn.close_reason.unwrap_or(CloseReason::IoError);
            conn.outbound.clear(&mut self.queued);
            let _ = self.poll.registry().deregister(conn.transport.socket());
            self.stats.connections_open -= 1;
            self.stats.close(reason);
            let lived = self.now.saturating_duration_since(conn.opened_at);
            if conn.upgraded {
                info!(
                    "conn={} peer={} closed reason={} after={}.{:03}s",
                    conn.id,
                    conn.peer,
                    reason,
                    lived.as_secs(),
                    lived.subsec_millis()
                );
            } else if reason.is_ordinary() {
                trace!("conn={} peer={} closed reason={reason}", conn.id, conn.peer);
            } else {
                debug!("conn={} peer={} closed reason={reason}", conn.id, conn.peer);
            }
        }
    }
}
