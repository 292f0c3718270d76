//! Writing: each dirty connection is flushed once per pass (one `writev`), after the
//! process-wide outbound budget has been enforced.

use log::{trace, warn};

use super::Server;
use crate::config::SlowClientPolicy;
use crate::connection::{CloseReason, Phase};
use crate::outbound::FlushOutcome;
use crate::stats::DropReason;

/// Flushed buffers kept for reuse may hold at most this fraction of the outbound limit
/// together: enough for every member of a busy room to reuse a pass's buffer, and bounded
/// however many members stop reading.
pub(super) const SPARE_SHARE: usize = 8;

/// See `Server::outbound_limit`.
pub(super) fn outbound_limit(max_outbound_total: usize, ceiling: usize) -> usize {
    max_outbound_total.min(ceiling / 4)
}

impl Server {
    /// The process-wide budget: when all queues together exceed `--max-outbound-total`, the
    /// largest queues are shed first by the slow-client policy. Called once per pass, before
    /// the flush.
    pub(super) fn enforce_total_budget(&mut self) {
        self.shed_outbound(self.outbound_limit());
    }

    /// All queues together may hold this much: `--max-outbound-total`, a sub-limit of the
    /// memory ceiling capped at a quarter of it: a queue's buffers can take up to twice its
    /// bytes (they grow by doubling), and queues alone must never crowd out request heads and
    /// partial messages.
    pub(super) fn outbound_limit(&self) -> usize {
        outbound_limit(self.config.max_outbound_total, self.memory.ceiling)
    }

    /// Sheds the largest queues by the slow-client policy until all of them together hold at
    /// most `limit` bytes.
    pub(super) fn shed_outbound(&mut self, limit: usize) {
        if self.queued.bytes() <= limit {
            // The episode (and its one log line) ends once the queues are well under the
            // limit: shedding brings them just under it, and a flood refills them next pass.
            if self.queued.bytes() <= limit - limit / 4 {
                self.over_total_budget = false;
            }
            return;
        }
        // This pass queued its fan-out before any flush: judge by the bytes the sockets
        // refuse, not by a burst fast readers are about to take.
        self.flush_dirty();
        // Bytes of connections already closing cannot be shed (their Close is among them);
        // they leave within CLOSE_TIMEOUT. Counting them would close innocent members.
        let mut unsheddable: usize = self
            .connections
            .iter()
            .filter(|(_, c)| c.close_reason.is_some())
            .map(|(_, c)| c.outbound.len())
            .sum();
        if self.queued.bytes().saturating_sub(unsheddable) <= limit {
            return;
        }
        let mut largest: Vec<(usize, usize)> = self
            .connections
            .iter()
            .filter(|(_, c)| {
                c.accepts_messages() && !c.outbound.is_empty() && c.close_reason.is_none()
            })
            .map(|(key, c)| (c.outbound.len(), key))
            .collect();
        largest.sort_unstable_by(|a, b| b.cmp(a));
        if !self.over_total_budget {
            // Once per episode, not once per pass.
            warn!(
                "outbound total {} bytes over its limit {}; shedding the largest queues",
                self.queued.bytes(),
                limit
            );
            self.over_total_budget = true;
        }
        for (_, key) in largest {
            if self.queued.bytes().saturating_sub(unsheddable) <= limit {
                break;
            }
            if self.config.slow_client == SlowClientPolicy::Close {
                self.close_slow_consumer(key);
                unsheddable += self.connections.get(key).map_or(0, |c| c.outbound.len());
            } else if let Some(conn) = self.connections.get_mut(key) {
                let excess = self.queued.bytes() - unsheddable - limit;
                let target = conn.outbound.len().saturating_sub(excess);
                let dropped = conn
                    .outbound
                    .drop_unstarted_messages(&mut self.queued, target);
                self.stats
                    .drop_message(DropReason::TotalBudget, dropped as u64);
            }
        }
    }

    /// Writes each dirty connection once (one `writev`), then moves closing connections on.
    /// Called once per pass, after the events and timers.
    pub(super) fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            let Some(conn) = self.connections.get_mut(key) else {
                continue;
            };
            conn.dirty = false;
            if conn.write_blocked {
                continue;
            }
            // Bytes the transport holds (TLS records the socket refused) go before the queue.
            match conn.transport.flush_pending() {
                Ok(true) => {}
                Ok(false) => {
                    conn.write_blocked = true;
                    continue;
                }
                Err(e) => {
                    trace!("conn={} write failed: {e}", conn.id);
                    self.doom(key, CloseReason::ClientGone);
                    continue;
                }
            }
            let flushed = conn
                .outbound
                .flush_once(&mut self.queued, &mut conn.transport);
            self.stats.bytes_sent += flushed.bytes as u64;
            match flushed.outcome {
                // TLS takes all the plaintext it encrypted even when the socket refused part
                // of the last records (they wait in the session): the socket is full all the
                // same. Without this, the writable event that follows is ignored (the flag is
                // not set) and those records wait for the next message or ping (tests/tls.rs:
                // records_the_socket_refused_after_the_last_message_go_out_when_it_drains).
                FlushOutcome::Open if conn.transport.has_pending_output() => {
                    conn.write_blocked = true
                }
                FlushOutcome::Open => {}
                FlushOutcome::Blocked => conn.write_blocked = true,
                FlushOutcome::Failed(e) => {
                    trace!("conn={} write failed: {e}", conn.id);
                    self.doom(key, CloseReason::ClientGone);
                    continue;
                }
            }
            if conn.outbound.is_empty()
                && !conn.transport.has_pending_output()
                && matches!(conn.phase, Phase::Closing { .. })
            {
                self.progress_closing(key);
            }
            // A read held back until the queue drained (a pipelined request, a client over its
            // budget, a closing peer with more to discard) may go on now.
            self.owe_read(key);
        }
        // Keep the list's allocation for the next pass.
        let mut dirty = dirty;
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }
}
