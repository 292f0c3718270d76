//! The figures `/metrics`, `/healthz` and the stats line read off the server.

use std::time::Duration;

use super::Server;
use crate::http::Status;
use crate::memory::Pressure;
use crate::redis::LinkState;
use crate::stats::{CompressionFigures, Gauges, ProcessInfo};

impl Server {
    /// `/healthz`: 200 while accepting, 503 while draining or at the connection cap. A Redis
    /// link that is down keeps 200 (local rooms still work) but says so.
    pub(super) fn health(&self) -> (Status, &'static str) {
        let redis = self.redis.as_ref().map(|r| r.state());
        if self.deadlines.drain.is_some() {
            (Status::ServiceUnavailable, "draining")
        } else if self.stats.websockets_open as usize >= self.max_connections {
            (Status::ServiceUnavailable, "at connection cap")
        } else if self.memory.pressure >= Pressure::Refusing {
            (Status::ServiceUnavailable, "memory pressure")
        } else {
            match redis {
                None => (Status::Ok, "ok"),
                Some(LinkState::Up) => (Status::Ok, "ok, redis up"),
                Some(LinkState::Connecting) => (Status::Ok, "ok, redis connecting"),
                Some(LinkState::Down) => (Status::Ok, "ok, redis down (rooms are local only)"),
            }
        }
    }

    /// Figures read off the server for `/metrics` and the stats line. /proc is read at most
    /// once a second: listing /proc/self/fd costs a moment per thousand connections, and the
    /// page is open to anyone who can reach the port.
    pub(super) fn gauges(&mut self) -> Gauges {
        let fresh = self.process_info.is_some_and(|(read_at, _)| {
            self.now.saturating_duration_since(read_at) < Duration::from_secs(1)
        });
        if !fresh {
            self.process_info = Some((self.now, ProcessInfo::read()));
        }
        let process = self.process_info.map(|(_, info)| info).unwrap_or_default();
        Gauges {
            rooms_open: self.rooms.occupied(),
            rooms_dormant: self.rooms.dormant(),
            outbound_bytes: self.queued.bytes(),
            outbound_largest: self
                .connections
                .iter()
                .map(|(_, c)| c.outbound.len())
                .max()
                .unwrap_or(0),
            max_connections: self.max_connections,
            uptime: self.now.saturating_duration_since(self.started),
            draining: self.deadlines.drain.is_some(),
            process,
            extra: self.memory_metrics()
                + &self
                    .redis
                    .as_ref()
                    .map(crate::redis::metrics::render)
                    .unwrap_or_default(),
            compression: self.compression_figures(),
        }
    }

    /// The compressor's and the inflater's own counters.
    fn compression_figures(&self) -> CompressionFigures {
        let inflater = &self.scratch.inflater;
        let mut figures = CompressionFigures {
            inflated_messages: inflater.messages,
            inflated_bytes_before: inflater.bytes_in,
            inflated_bytes_after: inflater.bytes_out,
            ..CompressionFigures::default()
        };
        if let Some(compressor) = &self.compressor {
            figures.compressed_messages = compressor.messages;
            figures.compressed_bytes_before = compressor.bytes_in;
            figures.compressed_bytes_after = compressor.bytes_out;
        }
        figures
    }

    /// Debug builds (every test) check the running total of queued bytes against the queues
    /// themselves once per pass: the queues keep it, and a drift would skew the process-wide
    /// budget.
    #[cfg(debug_assertions)]
    pub(super) fn check_queued_total(&self) {
        let actual: usize = self.connections.iter().map(|(_, c)| c.outbound.len()).sum();
        assert_eq!(
            self.queued.bytes(),
            actual,
            "the queued total drifted from the queues"
        );
    }
}
