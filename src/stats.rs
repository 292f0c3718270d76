//! Counters kept by the loop as plain integers, and the `/metrics` page rendered from them in
//! one pass. Two of them also steer the loop: `websockets_open` is what the connection cap and
//! `/healthz` are judged on, and `loop_iterations` numbers the pass for the one-read-per-pass
//! rule.

use std::fmt::Write as _;
use std::time::Duration;

use crate::connection::CloseReason;

/// Why a connection or upgrade was refused before it became a WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    AtCapacity,
    Origin,
    BadRequest,
    Draining,
    /// Near the memory ceiling.
    MemoryPressure,
}

impl Refusal {
    pub const ALL: [Refusal; 5] = [
        Refusal::AtCapacity,
        Refusal::Origin,
        Refusal::BadRequest,
        Refusal::Draining,
        Refusal::MemoryPressure,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::AtCapacity => "at_capacity",
            Refusal::Origin => "origin",
            Refusal::BadRequest => "bad_request",
            Refusal::Draining => "draining",
            Refusal::MemoryPressure => "memory_pressure",
        }
    }
}

/// Why a message was not delivered to a member (or not relayed at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// drop-newest: the member's queue was over budget.
    SlowClientNewest,
    /// drop-oldest: older queued messages were discarded for this one.
    SlowClientOldest,
    /// The process-wide outbound budget shed it.
    TotalBudget,
    /// The sender was over `--max-rate`.
    RateLimit,
}

impl DropReason {
    pub const ALL: [DropReason; 4] = [
        DropReason::SlowClientNewest,
        DropReason::SlowClientOldest,
        DropReason::TotalBudget,
        DropReason::RateLimit,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DropReason::SlowClientNewest => "slow_client_newest",
            DropReason::SlowClientOldest => "slow_client_oldest",
            DropReason::TotalBudget => "total_budget",
            DropReason::RateLimit => "rate_limit",
        }
    }
}

/// Upper bounds of the loop-iteration histogram: 10 µs to 0.5 s.
const LOOP_BUCKETS: [Duration; 10] = [
    Duration::from_micros(10),
    Duration::from_micros(50),
    Duration::from_micros(100),
    Duration::from_micros(500),
    Duration::from_millis(1),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(500),
];

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub connections_open: u64,
    pub connections_peak: u64,
    pub connections_accepted: u64,
    pub websockets_open: u64,
    pub refused: [u64; Refusal::ALL.len()],
    pub closed: [u64; CloseReason::ALL.len()],
    pub messages_received: u64,
    pub bytes_received: u64,
    pub deliveries: u64,
    /// Deliveries that went as a shared permessage-deflate frame.
    pub deliveries_compressed: u64,
    pub bytes_sent: u64,
    pub dropped: [u64; 4],
    pub slow_client_closes: u64,
    pub http_requests: u64,
    pub accept_errors: u64,
    pub loop_iterations: u64,
    /// Per-bucket counts; the last counts passes longer than every bound.
    loop_buckets: [u64; LOOP_BUCKETS.len() + 1],
    loop_time_sum: Duration,
}

/// Values that are read off the server when the page is rendered, not counted.
pub struct Gauges {
    pub rooms_open: usize,
    pub rooms_dormant: usize,
    pub outbound_bytes: usize,
    pub outbound_largest: usize,
    pub max_connections: usize,
    pub uptime: Duration,
    pub draining: bool,
    /// Memory and descriptors from /proc.
    pub process: ProcessInfo,
    /// Extra lines (the Redis link) rendered as they are.
    pub extra: String,
    /// permessage-deflate counters, kept by the compressor and the inflater themselves.
    pub compression: CompressionFigures,
}

/// What the process-wide compressor and inflater did (all zero with compression off).
#[derive(Debug, Clone, Copy, Default)]
pub struct CompressionFigures {
    /// Room messages compressed (once each) to something smaller.
    pub compressed_messages: u64,
    /// Their payload bytes before compression.
    pub compressed_bytes_before: u64,
    /// Their payload bytes after.
    pub compressed_bytes_after: u64,
    /// Client messages inflated.
    pub inflated_messages: u64,
    /// Their compressed payload bytes.
    pub inflated_bytes_before: u64,
    /// Their payload bytes once inflated.
    pub inflated_bytes_after: u64,
}

impl Stats {
    pub fn refuse(&mut self, why: Refusal) {
        self.refused[why as usize] += 1;
    }

    pub fn drop_message(&mut self, why: DropReason, count: u64) {
        self.dropped[why as usize] += count;
    }

    pub fn close(&mut self, why: CloseReason) {
        self.closed[why.index()] += 1;
    }

    pub fn record_loop(&mut self, took: Duration) {
        self.loop_iterations += 1;
        self.loop_time_sum = self.loop_time_sum.saturating_add(took);
        let bucket = LOOP_BUCKETS
            .iter()
            .position(|&b| took <= b)
            .unwrap_or(LOOP_BUCKETS.len());
        self.loop_buckets[bucket] += 1;
    }

    pub fn opened(&mut self) {
        self.connections_accepted += 1;
        self.connections_open += 1;
        self.connections_peak = self.connections_peak.max(self.connections_open);
    }

    /// The Prometheus text exposition format, version 0.0.4.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut page = MetricsPage::default();
        let g = "gauge";
        let c = "counter";
        page.single(
            "wschat_connections_open",
            g,
            "TCP connections open now (HTTP and WebSocket).",
            self.connections_open,
        );
        page.single(
            "wschat_websockets_open",
            g,
            "WebSocket connections open now.",
            self.websockets_open,
        );
        page.single(
            "wschat_connections_peak",
            g,
            "Most connections open at once since start.",
            self.connections_peak,
        );
        page.single(
            "wschat_connections_max",
            g,
            "The WebSocket connection cap.",
            gauges.max_connections,
        );
        page.single(
            "wschat_connections_accepted_total",
            c,
            "TCP connections accepted.",
            self.connections_accepted,
        );
        page.by_reason(
            "wschat_connections_refused_total",
            "Upgrades refused before the WebSocket began, by reason.",
            Refusal::ALL
                .iter()
                .map(|r| (r.label(), self.refused[*r as usize])),
        );
        page.by_reason(
            "wschat_connections_closed_total",
            "Connections closed, by reason.",
            CloseReason::ALL
                .iter()
                .map(|r| (r.label(), self.closed[r.index()])),
        );
        page.single(
            "wschat_rooms_open",
            g,
            "Rooms with members.",
            gauges.rooms_open,
        );
        page.single(
            "wschat_rooms_dormant",
            g,
            "Rooms without members that keep history.",
            gauges.rooms_dormant,
        );
        page.single(
            "wschat_messages_received_total",
            c,
            "Text and binary messages received from clients.",
            self.messages_received,
        );
        page.single(
            "wschat_received_bytes_total",
            c,
            "Bytes read from client sockets.",
            self.bytes_received,
        );
        page.single(
            "wschat_deliveries_total",
            c,
            "Messages queued to a recipient.",
            self.deliveries,
        );
        page.single(
            "wschat_sent_bytes_total",
            c,
            "Bytes written to client sockets.",
            self.bytes_sent,
        );
        let z = &gauges.compression;
        page.single(
            "wschat_compressed_messages_total",
            c,
            "Room messages compressed once (permessage-deflate) for the members that negotiated it.",
            z.compressed_messages,
        );
        page.single(
            "wschat_compressed_input_bytes_total",
            c,
            "Payload bytes of those messages before compression.",
            z.compressed_bytes_before,
        );
        page.single(
            "wschat_compressed_output_bytes_total",
            c,
            "Payload bytes of those messages after compression.",
            z.compressed_bytes_after,
        );
        page.single(
            "wschat_compressed_deliveries_total",
            c,
            "Deliveries that went as a shared compressed frame.",
            self.deliveries_compressed,
        );
        page.single(
            "wschat_inflated_messages_total",
            c,
            "Compressed client messages inflated.",
            z.inflated_messages,
        );
        page.single(
            "wschat_inflated_input_bytes_total",
            c,
            "Compressed payload bytes of those messages.",
            z.inflated_bytes_before,
        );
        page.single(
            "wschat_inflated_output_bytes_total",
            c,
            "Payload bytes of those messages once inflated.",
            z.inflated_bytes_after,
        );
        page.by_reason(
            "wschat_messages_dropped_total",
            "Deliveries dropped, by reason.",
            DropReason::ALL
                .iter()
                .map(|d| (d.label(), self.dropped[*d as usize])),
        );
        page.single(
            "wschat_slow_client_closes_total",
            c,
            "Connections closed for exceeding the outbound budget.",
            self.slow_client_closes,
        );
        page.single(
            "wschat_outbound_queued_bytes",
            g,
            "Bytes queued for clients now, all connections.",
            gauges.outbound_bytes,
        );
        page.single(
            "wschat_outbound_queued_largest_bytes",
            g,
            "Bytes queued for the most backed-up connection.",
            gauges.outbound_largest,
        );
        page.single(
            "wschat_http_requests_total",
            c,
            "Plain HTTP requests answered.",
            self.http_requests,
        );
        page.single(
            "wschat_accept_errors_total",
            c,
            "accept() failures (EMFILE and the like).",
            self.accept_errors,
        );
        page.single(
            "wschat_loop_iterations_total",
            c,
            "Passes of the event loop.",
            self.loop_iterations,
        );
        page.histogram(
            "wschat_loop_iteration_seconds",
            "Time spent handling one batch of events.",
            &LOOP_BUCKETS,
            &self.loop_buckets,
            self.loop_time_sum,
        );
        let process = &gauges.process;
        if let Some(rss) = process.resident_bytes {
            page.single(
                "process_resident_memory_bytes",
                g,
                "Resident memory size in bytes.",
                rss,
            );
        }
        if let Some(fds) = process.open_fds {
            page.single(
                "process_open_fds",
                g,
                "Number of open file descriptors.",
                fds,
            );
        }
        page.single(
            "wschat_uptime_seconds",
            g,
            "Seconds since the server started.",
            Seconds(gauges.uptime),
        );
        page.single(
            "wschat_draining",
            g,
            "1 while shutting down.",
            u8::from(gauges.draining),
        );
        let mut out = page.finish();
        out.push_str(&gauges.extra);
        out
    }

    /// The periodic one-line summary; None when nothing happened since `previous`.
    pub fn summary_line(&self, previous: &Stats, gauges: &Gauges) -> Option<String> {
        // Plain HTTP (a Prometheus scrape every 15 s, a health check, its keep-alive timing
        // out) is not activity worth a line, or the line would never be silent.
        let quiet =
            |r: &CloseReason| matches!(r, CloseReason::HttpDone | CloseReason::HandshakeTimeout);
        let closes_changed = CloseReason::ALL
            .iter()
            .filter(|r| !quiet(r))
            .any(|r| self.closed[r.index()] != previous.closed[r.index()]);
        let changed = self.websockets_open != previous.websockets_open
            || self.messages_received != previous.messages_received
            || self.deliveries != previous.deliveries
            || self.dropped != previous.dropped
            || self.refused != previous.refused
            || closes_changed;
        if !changed {
            return None;
        }
        Some(format!(
            "stats: websockets={} connections={} rooms={} received={} (+{}) delivered={} (+{}) dropped={} queued_bytes={} rss_kib={}",
            self.websockets_open,
            self.connections_open,
            gauges.rooms_open,
            self.messages_received,
            self.messages_received - previous.messages_received,
            self.deliveries,
            self.deliveries - previous.deliveries,
            self.dropped.iter().sum::<u64>(),
            gauges.outbound_bytes,
            gauges.process.resident_bytes.unwrap_or(0) / 1024,
        ))
    }
}

/// Writes metric families in the text exposition format: `# HELP` and `# TYPE`, then the
/// samples, in one pass into one string.
#[derive(Default)]
pub struct MetricsPage {
    out: String,
}

impl MetricsPage {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.header(name, kind, help);
        let _ = writeln!(self.out, "{name} {value}");
    }

    /// A counter family with one sample per `reason` label.
    pub fn by_reason<'a>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (&'a str, u64)>,
    ) {
        self.header(name, "counter", help);
        for (reason, value) in samples {
            let _ = writeln!(self.out, "{name}{{reason=\"{reason}\"}} {value}");
        }
    }

    /// A family with one sample per value of one label.
    pub fn by_label<'a>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        label: &str,
        samples: impl IntoIterator<Item = (&'a str, u64)>,
    ) {
        self.header(name, kind, help);
        for (value_of_label, value) in samples {
            let _ = writeln!(self.out, "{name}{{{label}=\"{value_of_label}\"}} {value}");
        }
    }

    /// A histogram from per-bucket (not cumulative) counts: one per bound, then one for
    /// everything above the last bound.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        bounds: &[Duration],
        counts: &[u64],
        sum: Duration,
    ) {
        self.header(name, "histogram", help);
        let mut cumulative = 0;
        for (bound, count) in bounds.iter().zip(counts) {
            cumulative += count;
            let bound = Seconds(*bound);
            let _ = writeln!(self.out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += counts.get(bounds.len()).copied().unwrap_or(0);
        let _ = writeln!(self.out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(self.out, "{name}_sum {}", Seconds(sum));
        let _ = writeln!(self.out, "{name}_count {cumulative}");
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// A duration as decimal seconds for the metrics page (`0.00005`, `12.5`, `3`): whole seconds,
/// then the nanoseconds without their trailing zeros. Integer formatting only, so the binary
/// carries none of std's float formatting (about 14 KB; docs/targets.md, Size).
pub struct Seconds(pub Duration);

impl std::fmt::Display for Seconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (whole, mut nanos, mut width) = (self.0.as_secs(), self.0.subsec_nanos(), 9);
        if nanos == 0 {
            return write!(f, "{whole}");
        }
        while nanos % 10 == 0 {
            nanos /= 10;
            width -= 1;
        }
        write!(f, "{whole}.{nanos:0width$}")
    }
}

/// Figures about this process read from /proc (Linux); absent elsewhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessInfo {
    pub resident_bytes: Option<u64>,
    pub open_fds: Option<u64>,
}

impl ProcessInfo {
    pub fn read() -> Self {
        let resident_bytes = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| {
                let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
                // SAFETY: sysconf has no preconditions.
                let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
                Some(pages * page.max(4096) as u64)
            });
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|dir| dir.count() as u64);
        ProcessInfo {
            resident_bytes,
            open_fds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_print_as_the_floats_did() {
        for (duration, text) in [
            (Duration::ZERO, "0"),
            (Duration::from_secs(3), "3"),
            (Duration::from_micros(10), "0.00001"),
            (Duration::from_millis(500), "0.5"),
            (Duration::new(12, 340_000_000), "12.34"),
            (Duration::new(1, 1), "1.000000001"),
        ] {
            assert_eq!(Seconds(duration).to_string(), text);
        }
    }

    fn gauges() -> Gauges {
        Gauges {
            rooms_open: 2,
            rooms_dormant: 0,
            outbound_bytes: 5,
            outbound_largest: 5,
            max_connections: 100,
            uptime: Duration::from_secs(3),
            draining: false,
            process: ProcessInfo::read(),
            extra: String::new(),
            compression: CompressionFigures::default(),
        }
    }

    #[test]
    fn every_sample_has_help_and_type() {
        let mut stats = Stats::default();
        stats.opened();
        stats.record_loop(Duration::from_micros(30));
        stats.close(CloseReason::SlowConsumer);
        let page = stats.render(&gauges());
        let mut declared = std::collections::HashSet::new();
        for line in page.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let base = name
                    .trim_end_matches("_bucket")
                    .trim_end_matches("_sum")
                    .trim_end_matches("_count");
                assert!(
                    declared.contains(name) || declared.contains(base),
                    "undeclared {line}"
                );
            }
        }
        assert!(page.contains("wschat_connections_closed_total{reason=\"slow_consumer\"} 1\n"));
        assert!(page.contains("wschat_loop_iteration_seconds_bucket{le=\"0.00005\"} 1\n"));
        assert!(page.contains("wschat_rooms_open 2\n"));
    }

    #[test]
    fn summary_is_silent_when_nothing_happened() {
        let stats = Stats::default();
        assert_eq!(stats.summary_line(&stats.clone(), &gauges()), None);
        let mut scraped = stats.clone();
        scraped.opened();
        scraped.http_requests += 1;
        scraped.connections_open -= 1;
        scraped.close(CloseReason::HttpDone);
        scraped.close(CloseReason::HandshakeTimeout);
        assert_eq!(
            scraped.summary_line(&stats, &gauges()),
            None,
            "a scrape is not activity"
        );
        let mut busier = stats.clone();
        busier.messages_received = 3;
        assert!(
            busier
                .summary_line(&stats, &gauges())
                .unwrap()
                .contains("received=3 (+3)")
        );
    }
}
