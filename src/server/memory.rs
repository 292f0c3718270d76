//! The memory ceiling (`--max-memory`), enforced once per pass (and, for pausing, before each
//! read). In order, as use climbs: new upgrades get 503 and `/healthz` says so, and
//! WebSockets that hold an unfinished message past the stall limit (`--handshake-timeout`)
//! are closed with 1013 (`Refusing`); the connections holding partial input stop being read,
//! so TCP pushes back on them (`Pausing`); over the ceiling, outbound queues are shed by
//! `--slow-client`, then history is trimmed (`Shedding`). Members who behave hold no partial
//! input and are never paused. Freed memory is given back after large frees.

use std::time::{Duration, Instant};

use log::{info, warn};

use super::Server;
use crate::connection::CloseReason;
use crate::memory::{self, Accounted, Pressure};
use crate::stats::MetricsPage;

/// Partial input below this is not worth pausing a connection for (a request head being read,
/// a message split across two reads).
pub(super) const PAUSE_THRESHOLD: usize = 1024;
/// The resident set (and, without the counting allocator, the accounted sum, which walks every
/// connection) is sampled at most this often.
const ACCOUNT_EVERY: Duration = Duration::from_millis(50);
/// Under pressure, connections are looked over at most this often (a walk over all of them).
const SCAN_EVERY: Duration = Duration::from_millis(100);
/// Freed memory is given back at most this often, and only after this much was freed.
const GIVE_BACK_EVERY: Duration = Duration::from_secs(1);
const GIVE_BACK_AFTER: usize = 4 << 20;

/// The loop's view of its memory.
pub(crate) struct MemoryState {
    pub ceiling: usize,
    pub pressure: Pressure,
    /// Connections not read for memory, by (key, id).
    paused: Vec<(usize, u64)>,
    /// The last sample (the resident set's growth, or without the counting allocator the
    /// accounted sum, whichever is larger) and when it was taken.
    accounted: (Instant, usize),
    /// Heap in use at the last give-back, and when.
    given_back: (Instant, usize),
    /// When the connections were last looked over for pausing and stalls.
    scanned_at: Instant,
    /// RSS when the server started: the binary, libraries and fixed buffers.
    resident_at_start: usize,
    pub closed: u64,
    pub history_trimmed: u64,
}

impl MemoryState {
    pub(crate) fn new(ceiling: usize, now: Instant) -> Self {
        MemoryState {
            ceiling,
            pressure: Pressure::None,
            paused: Vec::new(),
            accounted: (now, 0),
            given_back: (now, 0),
            scanned_at: now,
            resident_at_start: memory::resident_bytes().unwrap_or(0),
            closed: 0,
            history_trimmed: 0,
        }
    }
}

impl MemoryState {
    /// Whether a connection must stop being read before this read: the counted heap is past
    /// the pausing mark (an O(1) look, so it is checked before every read) and the connection
    /// holds a request head or an unfinished message of some size. Members who behave, and
    /// small requests such as `/healthz`, hold neither and are read on.
    pub(crate) fn must_pause(&self, conn: &crate::connection::Connection) -> bool {
        let Some(heap) = memory::heap_in_use() else {
            return false;
        };
        if Pressure::of(heap, self.ceiling) < Pressure::Pausing {
            return false;
        }
        let (partial, _) = conn.partial_input();
        partial >= PAUSE_THRESHOLD
    }

    /// The counted heap is past the pausing mark (an O(1) look).
    pub(crate) fn tight(&self) -> bool {
        memory::heap_in_use()
            .is_some_and(|heap| Pressure::of(heap, self.ceiling) >= Pressure::Pausing)
    }

    pub(crate) fn note_paused(&mut self, key: usize, id: u64) {
        self.paused.push((key, id));
    }
}

impl Server {
    /// Bytes in use: the counted heap (or, without the counting allocator, the accounted sum),
    /// or the growth of the resident set since start if that is larger: what the allocator
    /// keeps for itself (fragmentation, freed pages not yet returned) counts too, since the
    /// host sees RSS.
    fn memory_used(&mut self) -> usize {
        let (taken_at, _) = self.memory.accounted;
        if self.now.saturating_duration_since(taken_at) >= ACCOUNT_EVERY {
            let counted = match memory::heap_in_use() {
                Some(_) => 0,
                None => self.accounted().total(),
            };
            let resident = memory::resident_bytes()
                .unwrap_or(0)
                .saturating_sub(self.memory.resident_at_start);
            self.memory.accounted = (self.now, counted.max(resident));
        }
        let sampled = self.memory.accounted.1;
        memory::heap_in_use().unwrap_or(0).max(sampled)
    }

    /// The bytes the loop knows of, by kind. Walks every connection: for `/metrics`, and at
    /// most every `ACCOUNT_EVERY` without the counting allocator.
    pub(super) fn accounted(&self) -> Accounted {
        let mut accounted = Accounted {
            outbound: self.queued.bytes() + self.queued.spare_bytes(),
            history: self.rooms.history_bytes(),
            ..Accounted::default()
        };
        for (_, conn) in self.connections.iter() {
            let (partial, _) = conn.partial_input();
            if conn.upgraded {
                accounted.inbound += partial;
            } else {
                accounted.http += partial;
            }
            accounted.tls += conn.transport.session_bytes();
        }
        accounted
    }

    /// Applies the ceiling. Called once per pass, before the outbound budget and the flush.
    pub(super) fn enforce_memory_ceiling(&mut self) {
        let ceiling = self.memory.ceiling;
        let used = self.memory_used();
        let pressure = Pressure::of(used, ceiling);
        if pressure != self.memory.pressure {
            if pressure > self.memory.pressure {
                warn!("memory: {used} bytes in use of a {ceiling}-byte ceiling: {pressure:?}");
            } else {
                info!("memory: {used} bytes in use of a {ceiling}-byte ceiling: {pressure:?}");
            }
            self.memory.pressure = pressure;
        }
        // Walking the connections costs O(n): at most every SCAN_EVERY under pressure.
        let scan_due = self.now.saturating_duration_since(self.memory.scanned_at) >= SCAN_EVERY;
        if pressure >= Pressure::Refusing && scan_due {
            self.memory.scanned_at = self.now;
            if pressure >= Pressure::Pausing {
                self.pause_partial_input();
            }
            self.close_stalled();
            self.release_spare_buffers();
        }
        if pressure < Pressure::Pausing && !self.memory.paused.is_empty() {
            self.resume_paused();
        }
        if pressure == Pressure::Shedding {
            let excess = used - ceiling;
            // Queues first (by --slow-client), then history.
            let queued = self.queued.bytes();
            self.shed_outbound(queued.saturating_sub(excess));
            // Closing a consumer queues its Close frame: the total may even grow a little.
            let freed = queued.saturating_sub(self.queued.bytes());
            let still_over = excess.saturating_sub(freed);
            if still_over > 0 {
                let freed = self.rooms.trim_history(still_over);
                if freed > 0 {
                    self.memory.history_trimmed += freed as u64;
                    warn!("memory: trimmed {freed} bytes of history");
                }
            }
        }
    }

    /// Stops reading every connection that holds partial input: it cannot grow while its
    /// bytes wait in the kernel.
    fn pause_partial_input(&mut self) {
        for (key, conn) in self.connections.iter_mut() {
            if conn.memory_paused || conn.close_reason.is_some() {
                continue;
            }
            let (partial, _) = conn.partial_input();
            if partial >= PAUSE_THRESHOLD {
                conn.memory_paused = true;
                self.memory.paused.push((key, conn.id));
            }
        }
    }

    /// Closes the WebSockets that have held partial input past the stall limit
    /// (`--handshake-timeout`) with 1013 "try again later": under pressure, memory held by a
    /// message that does not finish goes to those who behave. (HTTP heads have their own
    /// deadline: the handshake timeout.)
    fn close_stalled(&mut self) {
        let stall_limit = self.config.handshake_timeout;
        let now = self.now;
        let stalled: Vec<usize> = self
            .connections
            .iter()
            .filter_map(|(key, conn)| {
                let (partial, since) = conn.partial_input();
                let held = now.saturating_duration_since(since?);
                (partial >= PAUSE_THRESHOLD && held >= stall_limit && conn.close_reason.is_none())
                    .then_some(key)
            })
            .collect();
        for key in stalled {
            self.memory.closed += 1;
            if let Some(conn) = self.connections.get(key) {
                info!(
                    "conn={} peer={} held partial input too long near the memory ceiling, closing with 1013",
                    conn.id, conn.peer
                );
            }
            self.close_websocket(key, CloseReason::MemoryPressure);
        }
    }

    /// Gives back the flushed buffers queues keep for reuse: near the ceiling, memory goes to
    /// what clients are owed, not to saving allocations.
    fn release_spare_buffers(&mut self) {
        if self.queued.spare_bytes() == 0 {
            return;
        }
        for (_, conn) in self.connections.iter_mut() {
            conn.outbound.release_memory(&mut self.queued);
        }
    }

    /// Reads again what was paused: the pressure has eased.
    fn resume_paused(&mut self) {
        for (key, id) in std::mem::take(&mut self.memory.paused) {
            if let Some(conn) = self.connections.get_mut(key).filter(|c| c.id == id) {
                conn.memory_paused = false;
                conn.reads.owed = true;
                self.owe_read(key);
            }
        }
    }

    /// Gives freed memory back to the system after large frees. Called at the end of a pass.
    pub(super) fn give_memory_back(&mut self) {
        let Some(heap) = memory::heap_in_use() else {
            return;
        };
        let (at, heap_then) = self.memory.given_back;
        if heap > heap_then {
            // Track the high-water mark since the last give-back.
            self.memory.given_back = (at, heap);
            return;
        }
        // After a large free, or under pressure (freed pages the allocator kept count in RSS).
        let freed_a_lot = heap_then - heap >= GIVE_BACK_AFTER;
        let pressed = self.memory.pressure >= Pressure::Refusing;
        if (freed_a_lot || pressed) && self.now.saturating_duration_since(at) >= GIVE_BACK_EVERY {
            memory::give_back();
            self.memory.given_back = (self.now, heap);
        }
    }

    /// The memory lines of `/metrics`.
    pub(super) fn memory_metrics(&self) -> String {
        let mut page = MetricsPage::default();
        page.single(
            "wschat_memory_ceiling_bytes",
            "gauge",
            "The memory ceiling (--max-memory).",
            self.memory.ceiling,
        );
        if let Some(heap) = memory::heap_in_use() {
            page.single(
                "wschat_memory_heap_bytes",
                "gauge",
                "Heap bytes in use, counted by the allocator.",
                heap,
            );
        }
        page.by_label(
            "wschat_memory_accounted_bytes",
            "gauge",
            "Bytes held for clients, by kind.",
            "kind",
            self.accounted()
                .by_kind()
                .iter()
                .map(|&(kind, bytes)| (kind, bytes as u64)),
        );
        page.single(
            "wschat_memory_pressure",
            "gauge",
            "0 none, 1 refusing upgrades, 2 pausing partial input, 3 shedding.",
            self.memory.pressure.level(),
        );
        page.single(
            "wschat_memory_paused_connections",
            "gauge",
            "Connections not read because of memory pressure.",
            self.memory.paused.len(),
        );
        page.single(
            "wschat_memory_closed_total",
            "counter",
            "Connections closed with 1013 for holding partial input near the ceiling.",
            self.memory.closed,
        );
        page.single(
            "wschat_memory_history_trimmed_bytes_total",
            "counter",
            "History bytes dropped near the ceiling.",
            self.memory.history_trimmed,
        );
        page.finish()
    }
}
