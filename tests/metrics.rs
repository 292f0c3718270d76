//! `/metrics` speaks the Prometheus text exposition format 0.0.4 strictly, its counters follow
//! what clients see, and the periodic stats line agrees with both (and is silent when idle).

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use tungstenite::Message;

/// Every family the issue asks for, with its type.
const REQUIRED: &[(&str, &str)] = &[
    ("wschat_connections_open", "gauge"),
    ("wschat_connections_peak", "gauge"),
    ("wschat_connections_accepted_total", "counter"),
    ("wschat_connections_refused_total", "counter"),
    ("wschat_connections_closed_total", "counter"),
    ("wschat_rooms_open", "gauge"),
    ("wschat_messages_received_total", "counter"),
    ("wschat_received_bytes_total", "counter"),
    ("wschat_deliveries_total", "counter"),
    ("wschat_sent_bytes_total", "counter"),
    ("wschat_messages_dropped_total", "counter"),
    ("wschat_slow_client_closes_total", "counter"),
    ("wschat_outbound_queued_bytes", "gauge"),
    ("wschat_outbound_queued_largest_bytes", "gauge"),
    ("wschat_loop_iterations_total", "counter"),
    ("wschat_loop_iteration_seconds", "histogram"),
    ("process_resident_memory_bytes", "gauge"),
    ("process_open_fds", "gauge"),
    ("wschat_uptime_seconds", "gauge"),
    // permessage-deflate (issue 13): present, and zero, with compression off.
    ("wschat_compressed_messages_total", "counter"),
    ("wschat_compressed_input_bytes_total", "counter"),
    ("wschat_compressed_output_bytes_total", "counter"),
    ("wschat_compressed_deliveries_total", "counter"),
    ("wschat_inflated_messages_total", "counter"),
    ("wschat_inflated_input_bytes_total", "counter"),
    ("wschat_inflated_output_bytes_total", "counter"),
];

#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

#[derive(Debug, Default)]
struct Family {
    kind: String,
    samples: Vec<Sample>,
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

/// Parses `{a="x",b="y"}` (escapes `\\`, `\"`, `\n` only); returns the labels and the rest.
fn parse_labels(text: &str, line: &str) -> (Vec<(String, String)>, String) {
    let mut labels = Vec::new();
    let mut chars = text.chars().peekable();
    assert_eq!(chars.next(), Some('{'));
    loop {
        if chars.peek() == Some(&'}') {
            chars.next();
            break;
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            name.push(c);
            chars.next();
        }
        assert!(is_label_name(&name), "bad label name {name:?}: {line}");
        assert_eq!(chars.next(), Some('='), "{line}");
        assert_eq!(
            chars.next(),
            Some('"'),
            "label value must be quoted: {line}"
        );
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    other => panic!("bad escape {other:?}: {line}"),
                },
                Some('"') => break,
                Some('\n') | None => panic!("unterminated label value: {line}"),
                Some(c) => value.push(c),
            }
        }
        assert!(
            labels.iter().all(|(n, _)| n != &name),
            "label {name} repeated: {line}"
        );
        labels.push((name, value));
        match chars.next() {
            Some(',') => continue,
            Some('}') => break,
            other => panic!("expected , or }} after a label, got {other:?}: {line}"),
        }
    }
    (labels, chars.collect())
}

fn parse_value(text: &str, line: &str) -> f64 {
    match text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        _ => {
            assert!(
                text.chars()
                    .all(|c| c.is_ascii_digit() || "+-.eE".contains(c)),
                "bad value {text:?}: {line}"
            );
            text.parse()
                .unwrap_or_else(|_| panic!("bad value {text:?}: {line}"))
        }
    }
}

/// The family a sample belongs to, given the declared types.
fn family_of<'a>(name: &'a str, families: &HashMap<String, Family>) -> &'a str {
    if families.contains_key(name) {
        return name;
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && families
                .get(base)
                .is_some_and(|f| f.kind == "histogram" || f.kind == "summary")
        {
            return base;
        }
    }
    name
}

/// Parses a whole page by the 0.0.4 text format rules, asserting each one.
fn parse_exposition(page: &str) -> HashMap<String, Family> {
    assert!(page.ends_with('\n'), "the page ends with a line feed");
    let mut families: HashMap<String, Family> = HashMap::new();
    let mut helped: HashSet<String> = HashSet::new();
    let mut finished: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut seen_samples: HashSet<String> = HashSet::new();
    for line in page.lines() {
        assert!(!line.is_empty(), "no blank lines");
        assert_eq!(line.trim_end(), line, "no trailing space: {line:?}");
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP has text");
            assert!(is_metric_name(name), "{line}");
            assert!(!help.trim().is_empty(), "empty HELP: {line}");
            assert!(helped.insert(name.to_string()), "HELP twice for {name}");
            assert!(
                families.get(name).is_none_or(|f| f.samples.is_empty()),
                "HELP after samples for {name}"
            );
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a type");
            assert!(is_metric_name(name), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(!families.contains_key(name), "TYPE twice for {name}");
            families.insert(
                name.to_string(),
                Family {
                    kind: kind.to_string(),
                    ..Family::default()
                },
            );
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment line {line:?}");
        let name_end = line.find(['{', ' ']).expect("a sample has a value");
        let name = &line[..name_end];
        assert!(is_metric_name(name), "bad metric name: {line}");
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..], line)
        } else {
            (Vec::new(), line[name_end..].to_string())
        };
        let rest = rest.strip_prefix(' ').expect("one space before the value");
        let mut parts = rest.split(' ');
        let value = parse_value(parts.next().unwrap(), line);
        if let Some(timestamp) = parts.next() {
            timestamp.parse::<i64>().expect("timestamp is an integer");
        }
        assert!(parts.next().is_none(), "extra fields: {line}");
        let family = family_of(name, &families).to_string();
        assert!(
            families.contains_key(&family),
            "sample before its # TYPE: {line}"
        );
        assert!(helped.contains(&family), "sample before its # HELP: {line}");
        assert!(
            !finished.contains(&family),
            "family {family} is not contiguous"
        );
        if current.as_deref() != Some(family.as_str()) {
            if let Some(previous) = current.take() {
                finished.insert(previous);
            }
            current = Some(family.clone());
        }
        let mut key_labels = labels.clone();
        key_labels.sort();
        assert!(
            seen_samples.insert(format!("{name}{key_labels:?}")),
            "duplicate sample: {line}"
        );
        let kind = families[&family].kind.clone();
        if kind == "counter" {
            assert!(value >= 0.0, "counters are not negative: {line}");
        }
        if kind == "histogram" {
            assert!(
                name == format!("{family}_bucket")
                    || name == format!("{family}_sum")
                    || name == format!("{family}_count"),
                "histogram samples are _bucket, _sum, _count: {line}"
            );
            assert_eq!(
                labels.iter().any(|(n, _)| n == "le"),
                name.ends_with("_bucket"),
                "only buckets carry le: {line}"
            );
        }
        families.get_mut(&family).unwrap().samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    for (name, family) in &families {
        assert!(!family.samples.is_empty(), "family {name} has no samples");
        if family.kind == "histogram" {
            check_histogram(name, family);
        }
    }
    families
}

fn check_histogram(name: &str, family: &Family) {
    let buckets: Vec<(f64, f64)> = family
        .samples
        .iter()
        .filter(|s| s.name.ends_with("_bucket"))
        .map(|s| {
            let le = &s.labels.iter().find(|(n, _)| n == "le").unwrap().1;
            (parse_value(le, le), s.value)
        })
        .collect();
    assert!(buckets.len() >= 2, "{name}: buckets");
    for pair in buckets.windows(2) {
        assert!(pair[0].0 < pair[1].0, "{name}: le ascending {pair:?}");
        assert!(pair[0].1 <= pair[1].1, "{name}: cumulative {pair:?}");
    }
    let (last_le, last_count) = *buckets.last().unwrap();
    assert_eq!(last_le, f64::INFINITY, "{name}: the last bucket is +Inf");
    let count = family
        .samples
        .iter()
        .find(|s| s.name == format!("{name}_count"))
        .expect("_count")
        .value;
    assert_eq!(last_count, count, "{name}: +Inf bucket equals _count");
    let sum = family
        .samples
        .iter()
        .find(|s| s.name == format!("{name}_sum"))
        .expect("_sum")
        .value;
    assert!(sum >= 0.0);
}

fn value(families: &HashMap<String, Family>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let family = &families[family_of(name, families)];
    family
        .samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(n, v)| s.labels.iter().any(|(sn, sv)| sn == n && sv == v))
        })
        .unwrap_or_else(|| panic!("no {name}{labels:?}"))
        .value
}

#[test]
fn the_page_is_strict_prometheus_text_0_0_4_with_every_family() {
    let server = start(Config {
        max_connections: Some(2),
        ..config()
    });
    let mut a = server.client("/");
    let mut b = server.client("/");
    wait_for_members(&server, 2);
    // Refused at the cap: a refusal with a reason label.
    let refused = server.http(&upgrade_request("/"));
    assert_eq!(refused.status, 503);
    a.send(Message::text("hello")).unwrap();
    assert_eq!(next_text(&mut b), "hello");

    let reply = server.get("/metrics");
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let page = reply.body_text();
    let families = parse_exposition(&page);
    for (name, kind) in REQUIRED {
        let family = families
            .get(*name)
            .unwrap_or_else(|| panic!("missing {name}:\n{page}"));
        assert_eq!(&family.kind, kind, "{name}");
        if *kind == "counter" {
            assert!(name.ends_with("_total"), "counters end in _total: {name}");
        }
    }
    for reason in ["at_capacity", "origin", "bad_request", "draining"] {
        value(
            &families,
            "wschat_connections_refused_total",
            &[("reason", reason)],
        );
    }
    assert_eq!(
        value(
            &families,
            "wschat_connections_refused_total",
            &[("reason", "at_capacity")]
        ),
        1.0
    );
    for reason in [
        "slow_client_newest",
        "slow_client_oldest",
        "total_budget",
        "rate_limit",
    ] {
        value(
            &families,
            "wschat_messages_dropped_total",
            &[("reason", reason)],
        );
    }
    for (name, _) in REQUIRED
        .iter()
        .filter(|(n, _)| n.contains("compressed_") || n.contains("inflated_"))
    {
        assert_eq!(
            value(&families, name, &[]),
            0.0,
            "{name} with compression off"
        );
    }
    for reason in ["invalid_utf8", "invalid_compressed_data", "message_too_big"] {
        value(
            &families,
            "wschat_connections_closed_total",
            &[("reason", reason)],
        );
    }
    assert!(value(&families, "process_resident_memory_bytes", &[]) > 1e5);
    assert!(value(&families, "process_open_fds", &[]) >= 4.0);
    assert!(value(&families, "wschat_uptime_seconds", &[]) > 0.0);
    let iterations = value(&families, "wschat_loop_iterations_total", &[]);
    assert!(iterations > 0.0);
    assert_eq!(
        value(&families, "wschat_loop_iteration_seconds_count", &[]),
        iterations
    );
    drop(a);
}

/// With `--compression on`, the deflate families count what was compressed and inflated, and
/// the page stays strict.
#[test]
fn the_compression_families_count_both_ways() {
    use std::io::Write;
    let server = start(Config {
        compression: true,
        ..config()
    });
    let request = upgrade_request_to(
        "localhost",
        "/z",
        "Sec-WebSocket-Extensions: permessage-deflate\r\n",
    );
    let (mut sender, head) = server.raw_request(request.as_bytes());
    assert!(head.contains("permessage-deflate"), "{head}");
    let mut receiver = server.raw_request(request.as_bytes()).0;
    wait_for_members(&server, 2);
    let text = "{\"user\":\"ada\",\"text\":\"hello hello hello\"}\n".repeat(60);
    let compressed = miniz_oxide::deflate::compress_to_vec(text.as_bytes(), 6);
    sender.write_all(&frame(0xc1, &compressed, true)).unwrap();
    let (first, payload) = read_frame(&mut receiver);
    assert_eq!(first, 0xc1);
    let families = parse_exposition(&server.get("/metrics").body_text());
    let count = |name: &str| value(&families, name, &[]);
    assert_eq!(count("wschat_inflated_messages_total"), 1.0);
    assert_eq!(
        count("wschat_inflated_input_bytes_total"),
        compressed.len() as f64
    );
    assert_eq!(
        count("wschat_inflated_output_bytes_total"),
        text.len() as f64
    );
    assert_eq!(count("wschat_compressed_messages_total"), 1.0);
    assert_eq!(
        count("wschat_compressed_input_bytes_total"),
        text.len() as f64
    );
    assert_eq!(
        count("wschat_compressed_output_bytes_total"),
        payload.len() as f64
    );
    assert_eq!(count("wschat_compressed_deliveries_total"), 1.0);
    assert_eq!(count("wschat_deliveries_total"), 1.0);
}

/// The Redis link's families, present whenever `--redis` is set.
const REDIS_FAMILIES: &[(&str, &str)] = &[
    ("wschat_redis_up", "gauge"),
    ("wschat_redis_published_total", "counter"),
    ("wschat_redis_publish_dropped_total", "counter"),
    ("wschat_redis_publish_lost_total", "counter"),
    ("wschat_redis_publish_errors_total", "counter"),
    ("wschat_redis_received_total", "counter"),
    ("wschat_redis_received_own_total", "counter"),
    ("wschat_redis_received_malformed_total", "counter"),
    ("wschat_redis_reconnects_total", "counter"),
    ("wschat_redis_connect_failures_total", "counter"),
    ("wschat_redis_subscribed_rooms", "gauge"),
    ("wschat_redis_queued_bytes", "gauge"),
];

/// With `--redis`, the link's families follow the same rules. Nothing listens on the port
/// (127.0.0.1, refused at once), so the link is down and its failed attempts are counted.
#[test]
fn the_redis_families_are_strict_too_and_count_failed_attempts() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    let server = start(Config {
        redis: Some(wschat::redis::RedisUrl::parse(&url).unwrap()),
        ..config()
    });
    let mut client = server.client("/cluster");
    client.send(Message::text("local only")).unwrap();
    eventually("a failed attempt counted", || {
        server.metric("wschat_redis_connect_failures_total") >= 1.0
    });
    let page = server.get("/metrics").body_text();
    let families = parse_exposition(&page);
    for (name, kind) in REQUIRED.iter().chain(REDIS_FAMILIES) {
        let family = families
            .get(*name)
            .unwrap_or_else(|| panic!("missing {name}:\n{page}"));
        assert_eq!(&family.kind, kind, "{name}");
    }
    for (name, _) in REDIS_FAMILIES {
        assert_eq!(families[*name].samples.len(), 1, "{name}");
    }
    assert_eq!(value(&families, "wschat_redis_up", &[]), 0.0);
    assert_eq!(value(&families, "wschat_redis_subscribed_rooms", &[]), 1.0);
    assert_eq!(
        value(&families, "wschat_redis_publish_dropped_total", &[]),
        1.0
    );
    assert_eq!(
        value(&families, "wschat_redis_publish_errors_total", &[]),
        0.0
    );
}

#[test]
fn the_validator_rejects_what_prometheus_would() {
    let good = "# HELP x_total X.\n# TYPE x_total counter\nx_total{a=\"1\"} 2\n";
    parse_exposition(good);
    for bad in [
        // no TYPE
        "# HELP x X.\nx 1\n",
        // no HELP
        "# TYPE x gauge\nx 1\n",
        // bad label syntax
        "# HELP x X.\n# TYPE x gauge\nx{a=1} 1\n",
        // not contiguous
        "# HELP x X.\n# TYPE x gauge\n# HELP y Y.\n# TYPE y gauge\nx{a=\"1\"} 1\ny 1\nx{a=\"2\"} 1\n",
        // histogram not cumulative
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        // +Inf not equal to _count
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 2\n",
        // no trailing line feed
        "# HELP x X.\n# TYPE x gauge\nx 1",
    ] {
        let result = std::panic::catch_unwind(|| parse_exposition(bad));
        assert!(result.is_err(), "accepted: {bad:?}");
    }
}

#[test]
fn counters_follow_what_the_clients_see() {
    let server = start(config());
    let accepted_before = server.metric("wschat_connections_accepted_total");
    let mut clients: Vec<Client> = (0..3).map(|_| server.client("/room")).collect();
    let mut other = server.client("/other");
    wait_for_members(&server, 4);
    assert_eq!(server.metric("wschat_rooms_open"), 2.0);
    let n = 5;
    let mut payload_bytes = 0;
    for i in 0..n {
        let text = format!("message {i}");
        payload_bytes += text.len();
        clients[0].send(Message::text(text)).unwrap();
    }
    let mut seen = 0;
    for client in clients.iter_mut().skip(1) {
        for i in 0..n {
            assert_eq!(next_text(client), format!("message {i}"));
            seen += 1;
        }
    }
    assert_silent(&mut other, scaled(Duration::from_millis(100)));
    assert_eq!(server.metric("wschat_messages_received_total"), n as f64);
    assert_eq!(server.metric("wschat_deliveries_total"), seen as f64);
    // Each client frame is 6 bytes of header (masked, short) plus its payload.
    assert!(server.metric("wschat_received_bytes_total") >= (payload_bytes + 6 * n) as f64);
    // Each server frame is 2 bytes of header plus its payload, to two recipients.
    assert!(server.metric("wschat_sent_bytes_total") >= (2 * (payload_bytes + 2 * n)) as f64);
    // 4 websockets + the /metrics scrapes so far (each one connection).
    let accepted = server.metric("wschat_connections_accepted_total");
    assert!(accepted >= accepted_before + 4.0);
    // 4 websockets and at least the scrape asking.
    assert!(server.metric("wschat_connections_peak") >= 5.0);

    clients.pop().unwrap().close(None).unwrap();
    eventually("a client_closed close", || {
        server.metric("wschat_connections_closed_total{reason=\"client_closed\"}") == 1.0
    });
    wait_for_members(&server, 3);
    eventually("3 websockets and this scrape open", || {
        server.metric("wschat_connections_open") == 4.0
    });
    let loops = server.metric("wschat_loop_iterations_total");
    assert!(loops > 0.0);
    assert!(server.metric("wschat_loop_iterations_total") > loops);
    drop(other);
}

#[test]
fn a_reader_that_stops_shows_in_queued_bytes_and_drops() {
    let server = start(Config {
        slow_client: wschat::config::SlowClientPolicy::DropNewest,
        max_outbound: 256 * 1024,
        ..config()
    });
    let mut sender = server.client("/");
    // A member that never reads: the kernel buffers fill, then its queue, then drops.
    let _stalled = server.raw_websocket("/");
    wait_for_members(&server, 2);
    let big = vec![b'x'; 60 * 1024];
    let mut sent = 0;
    // The kernel's buffers grow while we push, so a queue seen full may drain a little later:
    // keep pushing until one scrape sees drops and a full queue together.
    loop {
        for _ in 0..20 {
            sender.send(Message::binary(big.clone())).unwrap();
            sent += 1;
        }
        let page = server.get("/metrics").body_text();
        let dropped = sample_value(
            &page,
            "wschat_messages_dropped_total{reason=\"slow_client_newest\"}",
        )
        .unwrap();
        let queued = sample_value(&page, "wschat_outbound_queued_bytes").unwrap();
        let largest = sample_value(&page, "wschat_outbound_queued_largest_bytes").unwrap();
        assert!(
            largest <= 256.0 * 1024.0,
            "within the member's budget: {largest}"
        );
        assert!(queued >= largest);
        if dropped > 0.0 && largest > 128.0 * 1024.0 {
            assert!(
                queued <= largest + 4096.0,
                "one member holds the queue: {queued}"
            );
            break;
        }
        assert!(
            sent < 2000,
            "no full queue after {sent} messages of 60 KiB:\n{page}"
        );
    }
    eventually("every message read", || {
        server.metric("wschat_messages_received_total") == sent as f64
    });
    let page = server.get("/metrics").body_text();
    let delivered = sample_value(&page, "wschat_deliveries_total").unwrap();
    let dropped = sample_value(
        &page,
        "wschat_messages_dropped_total{reason=\"slow_client_newest\"}",
    )
    .unwrap();
    assert_eq!(
        delivered + dropped,
        sent as f64,
        "each message delivered or dropped"
    );
}

// ------------------------------------------------------------------------------------------
// The periodic stats line, from the real binary.

/// The numbers of a "stats: k=v ..." line, by key.
fn stats_fields(line: &str) -> HashMap<String, u64> {
    let rest = line.split("stats: ").nth(1).expect("a stats line");
    rest.split_whitespace()
        .filter_map(|field| {
            let (k, v) = field.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

#[test]
fn the_stats_line_and_a_scrape_agree_with_the_clients_and_idle_is_silent() {
    // The interval and every wait below scale together.
    let interval = scaled(Duration::from_millis(200));
    let mut daemon = daemon(&["--stats-interval", &interval.as_secs_f64().to_string()]);
    std::thread::sleep(interval * 7 / 2);
    assert!(
        daemon.count_lines("stats: ") == 0,
        "silent while nothing happens:\n{}",
        daemon.lines().join("\n")
    );
    let (m, n) = (4, 6);
    let mut clients: Vec<Client> = (0..m).map(|_| daemon.client("/")).collect();
    wait_for_members(&daemon, m);
    for i in 0..n {
        clients[i % m].send(Message::text(format!("m{i}"))).unwrap();
    }
    // Each client counts what it received: every message but its own, in any interleaving.
    let mut seen = 0;
    for (c, client) in clients.iter_mut().enumerate() {
        let mut expected: Vec<String> = (0..n)
            .filter(|i| i % m != c)
            .map(|i| format!("m{i}"))
            .collect();
        let mut got: Vec<String> = (0..expected.len()).map(|_| next_text(client)).collect();
        expected.sort();
        got.sort();
        assert_eq!(got, expected);
        seen += got.len();
    }
    for client in clients.iter_mut() {
        assert_silent(client, scaled(Duration::from_millis(50)));
    }
    assert_eq!(seen, n * (m - 1));
    // The scrape agrees with the clients.
    assert_eq!(daemon.metric("wschat_messages_received_total"), n as f64);
    assert_eq!(daemon.metric("wschat_deliveries_total"), seen as f64);
    // So does the next stats line that has seen all of it.
    let line = daemon.wait_for_line("a stats line with every delivery", |l| {
        l.contains("stats: ") && stats_fields(l).get("delivered") == Some(&(seen as u64))
    });
    let fields = stats_fields(&line);
    assert_eq!(fields["received"], n as u64, "{line}");
    assert_eq!(fields["websockets"], m as u64, "{line}");
    assert_eq!(fields["rooms"], 1, "{line}");
    assert!(line.contains(" INFO "), "logged at info: {line}");
    // Idle again (scrapes included): no more lines.
    std::thread::sleep(interval * 5 / 2);
    daemon.metric("wschat_deliveries_total");
    let count = daemon.count_lines("stats: ");
    std::thread::sleep(interval * 4);
    let later = daemon.count_lines("stats: ");
    assert_eq!(
        count,
        later,
        "a scrape is not activity:\n{}",
        daemon.lines().join("\n")
    );
    drop(clients);
}

#[test]
fn stats_interval_zero_turns_the_line_off() {
    let mut daemon = daemon(&["--stats-interval", "0"]);
    let mut a = daemon.client("/");
    let mut b = daemon.client("/");
    a.send(Message::text("x")).unwrap();
    assert_eq!(next_text(&mut b), "x");
    std::thread::sleep(scaled(Duration::from_millis(300)));
    drop((a, b));
    daemon.stop(libc::SIGTERM);
    assert_eq!(daemon.count_lines("stats: "), 0);
}
