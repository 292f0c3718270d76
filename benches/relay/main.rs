//! Relay benchmark: wschat against peer servers (the `limit` relay of limit.rs, Node `ws`,
//! Bun), scenario by scenario, runs interleaved (A B C A B C ...), a fresh server process
//! per run.
//!
//!   cargo bench --bench relay                       all scenarios
//!   cargo bench --bench relay -- fanout --runs 3 --servers wschat,limit,bun,node
//!   cargo bench --bench relay -- --smoke            small sizes, one run
//!   cargo bench --bench relay -- compression        permessage-deflate fan-out
//!   cargo bench --bench relay -- v1                 fan-out to raw vs wschat.v1 subscribers
//!   cargo bench --bench relay -- --help
//!
//! The server runs on CPU 0, this generator on CPU 1; both CPU times are
//! reported so a generator bottleneck shows. Only 127.0.0.0/8 is used.

mod limit;
mod server;
mod stats;
mod tls;
mod v1;
mod ws;

use server::{Kind, Options, ServerProc, Target};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use ws::Gen;

const ROOM: &str = "bench";
/// The client settings of `--tls`, set once at start; every generator then speaks TLS.
pub static TLS_CLIENT: std::sync::OnceLock<tls::ClientConfig> = std::sync::OnceLock::new();

/// The hidden first argument that makes this binary the `limit` relay (a peer process).
pub const LIMIT_ARG: &str = "--limit-server";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    Fanout,
    FixedRate,
    AllToAll,
    IdleMemory,
    ManyConns,
    Large,
    CrossNode,
    Compression,
    Handshakes,
    ReusePort,
    V1Members,
}

/// The scenarios run when none is named (handshakes and reuse-port only on request).
const ALL: [Scenario; 9] = [
    Scenario::Fanout,
    Scenario::FixedRate,
    Scenario::AllToAll,
    Scenario::IdleMemory,
    Scenario::ManyConns,
    Scenario::Large,
    Scenario::CrossNode,
    Scenario::Compression,
    Scenario::V1Members,
];

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Fanout => "fanout",
            Scenario::FixedRate => "fixed-rate",
            Scenario::AllToAll => "all-to-all",
            Scenario::IdleMemory => "idle-memory",
            Scenario::ManyConns => "many-conns",
            Scenario::Large => "large",
            Scenario::CrossNode => "cross-node",
            Scenario::Compression => "compression",
            Scenario::Handshakes => "handshakes",
            Scenario::ReusePort => "reuse-port",
            Scenario::V1Members => "v1",
        }
    }

    fn parse(s: &str) -> Option<Scenario> {
        let s = s.replace('_', "-");
        ALL.into_iter()
            .chain([Scenario::Handshakes, Scenario::ReusePort])
            .find(|sc| sc.name() == s)
            .or(match s.as_str() {
                "fan-out" => Some(Scenario::Fanout),
                "rate" => Some(Scenario::FixedRate),
                "alltoall" | "echo" => Some(Scenario::AllToAll),
                "idle" | "memory" => Some(Scenario::IdleMemory),
                "many" | "conns" => Some(Scenario::ManyConns),
                "large-messages" => Some(Scenario::Large),
                "cross" | "redis" => Some(Scenario::CrossNode),
                "deflate" | "permessage-deflate" => Some(Scenario::Compression),
                "handshake" | "tls-handshakes" => Some(Scenario::Handshakes),
                "reuseport" | "reuse" => Some(Scenario::ReusePort),
                "wschat.v1" | "v1-members" | "subprotocol" => Some(Scenario::V1Members),
                _ => None,
            })
    }
}

struct Cfg {
    scenarios: Vec<Scenario>,
    runs: Option<usize>,
    servers: Vec<Kind>,
    warmup: Duration,
    duration: Duration,
    subs: usize,
    pubs: usize,
    size: usize,
    window: u64,
    rate: f64,
    clients: usize,
    idle_conns: usize,
    many_conns: usize,
    hold: Duration,
    large_subs: usize,
    large_size: usize,
    compression_size: usize,
    /// v1 scenario: the fixed-rate load instead of fan-out's saturation.
    v1_fixed_rate: bool,
    log_dir: PathBuf,
    /// `--tls`: certificate and key every server is given; the clients speak TLS.
    tls: Option<(PathBuf, PathBuf)>,
    /// Handshakes in progress at once in the handshakes scenario.
    concurrency: usize,
}

const USAGE: &str = "\
usage: cargo bench --bench relay -- [SCENARIO ...] [OPTIONS]

scenarios (default: all): fanout fixed-rate all-to-all idle-memory many-conns large cross-node
                          compression v1 (fan-out, wschat only: raw vs wschat.v1 subscribers)
  and, only when named: handshakes (connect + upgrade, then close, as fast as the server takes
  them), reuse-port (two wschat processes on one port sharing rooms through redis-server,
  against one process: fan-out and all-to-all)

options:
  --runs N            runs per server and scenario (default 5; many-conns 1)
  --servers LIST      comma-separated from wschat,limit,node,bun (default all four;
                      limit: the minimal relay of benches/relay/limit.rs), and wschat2:
                      the wschat binary $WSCHAT_BIN2 (before/after comparisons)
  --smoke             small sizes for a quick check (50 subscribers, 1 s, 1 run, ...)
  --duration S        measured seconds per run (default 5)
  --warmup S          warm-up seconds before measuring (default 1)
  --subs N            fanout/fixed-rate subscribers (default 1000)
  --pubs N            fanout/fixed-rate publishers (default 10)
  --size BYTES        fanout/fixed-rate message size (default 64, min 16)
  --window W          fanout messages in flight per publisher (default 32)
  --rate R            fixed-rate messages/s per publisher (default 100)
  --clients N         all-to-all clients (default 100)
  --idle-conns N      idle-memory connections (default 10000)
  --many-conns N      many-conns connections (default 19900, capped by the fd limit)
  --hold S            many-conns hold time (default 60)
  --large-subs N      large: subscribers (default 100)
  --large-size BYTES  large: message size (default 65536)
  --compression-size BYTES  compression: JSON-like message size (default 2048)
  --tls               every client speaks TLS 1.3 (rustls) to the server's TLS port, with an
                      ECDSA P-256 certificate made by openssl at start (limit is skipped)
  --concurrency N     handshakes: connections being opened at once (default 64)
  --v1-fixed-rate     v1: the fixed-rate load (--rate) instead of fan-out's saturation
";

fn parse_args() -> Result<Cfg, String> {
    let mut cfg = Cfg {
        scenarios: Vec::new(),
        runs: None,
        servers: vec![Kind::Wschat, Kind::Limit, Kind::Node, Kind::Bun],
        warmup: Duration::from_secs(1),
        duration: Duration::from_secs(5),
        subs: 1000,
        pubs: 10,
        size: 64,
        window: 32,
        rate: 100.0,
        clients: 100,
        idle_conns: 10_000,
        many_conns: 19_900,
        hold: Duration::from_secs(60),
        large_subs: 100,
        large_size: 64 * 1024,
        compression_size: 2048,
        v1_fixed_rate: false,
        log_dir: Path::new(env!("CARGO_TARGET_TMPDIR")).join("relay-logs"),
        tls: None,
        concurrency: 64,
    };
    let mut want_tls = false;
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Apply --smoke first so that explicit options override it.
    if args.iter().any(|a| a == "--smoke") {
        cfg.runs = Some(1);
        cfg.warmup = Duration::from_millis(300);
        cfg.duration = Duration::from_secs(1);
        cfg.subs = 50;
        cfg.pubs = 5;
        cfg.clients = 20;
        cfg.idle_conns = 500;
        cfg.many_conns = 1000;
        cfg.hold = Duration::from_secs(2);
        cfg.large_subs = 10;
    }
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = |name: &str| -> Result<String, String> {
            it.next().cloned().ok_or(format!("{name} needs a value"))
        };
        let num = |s: String| s.parse::<f64>().map_err(|e| format!("{s}: {e}"));
        let int = |s: String| s.parse::<usize>().map_err(|e| format!("{s}: {e}"));
        let secs = |s: String| num(s).map(Duration::from_secs_f64);
        match a.as_str() {
            "--bench" | "--smoke" => {} // cargo bench passes --bench
            "--v1-fixed-rate" => cfg.v1_fixed_rate = true,
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            "--runs" => cfg.runs = Some(int(val(a)?)?.max(1)),
            "--servers" => {
                cfg.servers = val(a)?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| Kind::parse(s).ok_or(format!("unknown server {s}")))
                    .collect::<Result<_, _>>()?
            }
            "--duration" => cfg.duration = secs(val(a)?)?,
            "--warmup" => cfg.warmup = secs(val(a)?)?,
            "--subs" => cfg.subs = int(val(a)?)?.max(1),
            "--pubs" => cfg.pubs = int(val(a)?)?.max(1),
            "--size" => cfg.size = int(val(a)?)?.max(ws::HDR),
            "--window" => cfg.window = int(val(a)?)?.max(1) as u64,
            "--rate" => cfg.rate = num(val(a)?)?.max(0.1),
            "--clients" => cfg.clients = int(val(a)?)?.max(2),
            "--idle-conns" => cfg.idle_conns = int(val(a)?)?.max(1),
            "--many-conns" => cfg.many_conns = int(val(a)?)?.max(2),
            "--hold" => cfg.hold = secs(val(a)?)?,
            "--large-subs" => cfg.large_subs = int(val(a)?)?.max(1),
            "--large-size" => cfg.large_size = int(val(a)?)?.max(ws::HDR),
            "--compression-size" => cfg.compression_size = int(val(a)?)?.max(ws::HDR),
            "--tls" => want_tls = true,
            "--concurrency" => cfg.concurrency = int(val(a)?)?.max(1),
            s if s.starts_with('-') => return Err(format!("unknown option {s}\n{USAGE}")),
            s => cfg
                .scenarios
                .push(Scenario::parse(s).ok_or(format!("unknown scenario {s}\n{USAGE}"))?),
        }
    }
    if cfg.scenarios.is_empty() {
        cfg.scenarios = ALL.to_vec();
    }
    if want_tls {
        // The files live as long as the process; removed at the end of main.
        let files = tls::Files::make(Path::new(env!("CARGO_TARGET_TMPDIR")))?;
        let client = tls::client_config(&files.cert)?;
        let _ = TLS_CLIENT.set(client);
        cfg.tls = Some((files.cert.clone(), files.key.clone()));
        std::mem::forget(files);
    }
    Ok(cfg)
}

pub fn cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    n.max(1) as usize
}

/// Pins this (single-threaded) generator to CPU 1; servers go to CPU 0.
fn pin_self() -> String {
    if cpus() < 2 {
        return "not pinned: fewer than 2 CPUs".into();
    }
    // SAFETY: a zeroed cpu_set_t is an empty set; the call reads it only.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(1, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        "server on CPU 0, generator on CPU 1".into()
    } else {
        format!("not pinned: {}", std::io::Error::last_os_error())
    }
}

/// One measured quantity of one run.
struct M {
    name: &'static str,
    v: f64,
}

fn m(name: &'static str, v: f64) -> M {
    M { name, v }
}

type RunResult = Result<Vec<M>, String>;

/// One server's runs of one scenario: its name, each successful run's number and metrics,
/// failed runs.
type Slot = (String, Vec<(usize, Vec<M>)>, usize);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(LIMIT_ARG) {
        limit::main(&args[2..]);
    }
    let cfg = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("relay bench: {e}");
            std::process::exit(2);
        }
    };
    let _ = std::fs::create_dir_all(&cfg.log_dir);
    ws::now_ns_global();
    println!("relay bench: {}", pin_self());
    println!(
        "open-file limit {}; server logs in {}",
        stats::nofile_limit(),
        cfg.log_dir.display()
    );
    if let Some((cert, _)) = &cfg.tls {
        println!(
            "TLS: clients speak TLS 1.3, AES-128-GCM, X25519; certificate {}",
            cert.display()
        );
    }
    let mut servers = Vec::new();
    for &k in &cfg.servers {
        if k == Kind::Limit && cfg.tls.is_some() {
            println!("limit speaks no TLS; going on without it");
            continue;
        }
        match server::check_available(k) {
            Ok(()) => servers.push(k),
            Err(e) => println!("{e}; going on without it"),
        }
    }
    for &sc in &cfg.scenarios {
        if sc == Scenario::CrossNode {
            cross_node(&cfg);
            continue;
        }
        if sc == Scenario::Compression {
            compression(&cfg, &servers);
            continue;
        }
        if sc == Scenario::ReusePort {
            reuse_port(&cfg);
            continue;
        }
        if sc == Scenario::V1Members {
            v1_members(&cfg, &servers);
            continue;
        }
        let runs = cfg
            .runs
            .unwrap_or(if sc == Scenario::ManyConns { 1 } else { 5 });
        println!("\n== {} == {}", sc.name(), describe(sc, &cfg));
        let mut results: Vec<Slot> = servers
            .iter()
            .map(|k| (k.name().to_string(), Vec::new(), 0))
            .collect();
        for run in 0..runs {
            for (si, &kind) in servers.iter().enumerate() {
                let tag = format!("{}-{run}", sc.name());
                let res = run_one(sc, kind, &cfg, &tag);
                record(&mut results[si], kind.name(), run, res);
            }
        }
        report(&results);
    }
    if let Some((cert, _)) = &cfg.tls
        && let Some(dir) = cert.parent()
    {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn record(slot: &mut Slot, name: &str, run: usize, res: RunResult) {
    match res {
        Ok(ms) => {
            let line: Vec<String> = ms
                .iter()
                .take(4)
                .map(|x| format!("{} {}", x.name, fmt(x.v)))
                .collect();
            eprintln!("  run {run} {name}: {}", line.join(", "));
            slot.1.push((run, ms));
        }
        Err(e) => {
            println!("  run {run} {name}: FAILED: {e}");
            slot.2 += 1;
        }
    }
}

fn describe(sc: Scenario, c: &Cfg) -> String {
    let d = c.duration.as_secs_f64();
    match sc {
        Scenario::Fanout => format!(
            "{} subscribers + {} publishers, one room, {} B text, window {} per publisher, {d} s",
            c.subs, c.pubs, c.size, c.window
        ),
        Scenario::FixedRate => format!(
            "{} subscribers + {} publishers at {} msg/s each ({:.0} deliveries/s offered to subscribers), {d} s",
            c.subs,
            c.pubs,
            c.rate,
            c.rate * (c.pubs * c.subs) as f64
        ),
        Scenario::AllToAll => format!(
            "{} clients, echo on; every client sends 1 and waits for all {}; {d} s",
            c.clients, c.clients
        ),
        Scenario::IdleMemory => format!("{} idle connections", c.idle_conns),
        Scenario::ManyConns => format!(
            "up to {} connections held {} s, then one message to all",
            many_target(c),
            c.hold.as_secs_f64()
        ),
        Scenario::Large => format!(
            "1 publisher, {} subscribers, {} B messages, window 4, {d} s",
            c.large_subs, c.large_size
        ),
        Scenario::Handshakes => format!(
            "connect{} + upgrade, then close; {} at once; {d} s",
            if c.tls.is_some() {
                " + TLS handshake"
            } else {
                ""
            },
            c.concurrency
        ),
        Scenario::CrossNode | Scenario::Compression | Scenario::ReusePort | Scenario::V1Members => {
            String::new()
        }
    }
}

fn many_target(c: &Cfg) -> usize {
    c.many_conns
        .min(stats::nofile_limit().saturating_sub(100) as usize)
}

fn run_one(sc: Scenario, kind: Kind, cfg: &Cfg, tag: &str) -> RunResult {
    let opts = Options {
        echo: sc == Scenario::AllToAll,
        max_connections: match sc {
            Scenario::IdleMemory => Some(cfg.idle_conns + 100),
            Scenario::ManyConns => Some(many_target(cfg) + 50),
            _ => None,
        },
        extra: Vec::new(),
        tls: cfg.tls.clone(),
        port: None,
    };
    let mut t = Target::single(ServerProc::start(kind, &opts, &cfg.log_dir, tag)?);
    match sc {
        Scenario::Fanout => fanout(&mut t, &FanParams::fanout(cfg)),
        Scenario::FixedRate => fanout(&mut t, &FanParams::fixed_rate(cfg)),
        Scenario::Large => fanout(&mut t, &FanParams::large(cfg)),
        Scenario::AllToAll => all_to_all(&mut t, cfg),
        Scenario::IdleMemory => idle_memory(&mut t, cfg),
        Scenario::ManyConns => many_conns(&mut t, cfg),
        Scenario::Handshakes => handshakes(&mut t, cfg),
        Scenario::CrossNode | Scenario::Compression | Scenario::ReusePort | Scenario::V1Members => {
            unreachable!("handled in main")
        }
    }
}

struct FanParams {
    subs: usize,
    pubs: usize,
    size: usize,
    /// Window mode: at most `window` messages of a publisher not yet received by
    /// the probe subscriber (the last to join). Rate mode when None.
    window: u64,
    rate: Option<f64>,
    warmup: Duration,
    duration: Duration,
    large: bool,
    /// Offer permessage-deflate and send JSON-like bodies (the compression scenario).
    deflate: bool,
    /// Subscribers ask for wschat.v1 and unwrap its JSON frames (publishers stay raw).
    v1: bool,
}

impl FanParams {
    fn fanout(c: &Cfg) -> Self {
        FanParams {
            subs: c.subs,
            pubs: c.pubs,
            size: c.size,
            window: c.window,
            rate: None,
            warmup: c.warmup,
            duration: c.duration,
            large: false,
            deflate: false,
            v1: false,
        }
    }
    fn fixed_rate(c: &Cfg) -> Self {
        FanParams {
            rate: Some(c.rate),
            ..Self::fanout(c)
        }
    }
    fn large(c: &Cfg) -> Self {
        FanParams {
            subs: c.large_subs,
            pubs: 1,
            size: c.large_size,
            window: 4,
            large: true,
            ..Self::fanout(c)
        }
    }
}

/// CPU and delivery counters at one instant.
struct Snap {
    at: Instant,
    delivered: u64,
    bytes: u64,
    reads: u64,
    writes: u64,
    sent: u64,
    srv_cpu: Duration,
    gen_cpu: Duration,
    wire: u64,
    inflated: u64,
}

/// Fails a run in which nothing has been delivered for 3 s (a server that stopped relaying),
/// or for `$RELAY_STALL_SECS` (a server slowed down by a profiler such as callgrind).
struct Progress {
    since: Instant,
    delivered: u64,
    limit: Duration,
}

impl Progress {
    fn new() -> Self {
        let secs = std::env::var("RELAY_STALL_SECS")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(3.0);
        Progress {
            since: Instant::now(),
            delivered: 0,
            limit: Duration::from_secs_f64(secs.max(0.1)),
        }
    }

    fn check(&mut self, now: Instant, g: &Gen, hint: &str) -> Result<(), String> {
        if g.c.delivered != self.delivered {
            self.since = now;
            self.delivered = g.c.delivered;
        } else if now - self.since > self.limit {
            return Err(format!(
                "stalled: nothing delivered for {} s ({hint}{} connections lost: {})",
                self.limit.as_secs_f64(),
                g.c.lost,
                g.c.last_error
            ));
        }
        Ok(())
    }
}

/// Closes the measured window: takes the end snapshot, stops recording latencies, then waits
/// up to 5 s for what is still in flight so the caller can count what never came.
fn end_window(
    g: &mut Gen,
    t: &Target,
    start: Option<Snap>,
    sent: u64,
    echo: bool,
) -> Result<(Snap, Snap), String> {
    let start = start.ok_or("no measurement window")?;
    let end = snap(g, t, sent);
    g.c.record_until = g.now_ns();
    g.run_until(Instant::now() + Duration::from_secs(5), |g| {
        g.tail_missing(echo) == 0
    });
    Ok((start, end))
}

fn snap(g: &Gen, t: &Target, sent: u64) -> Snap {
    Snap {
        at: Instant::now(),
        delivered: g.c.delivered,
        bytes: g.c.delivered_bytes,
        reads: g.c.reads,
        writes: g.c.writes,
        sent,
        srv_cpu: t.cpu(),
        gen_cpu: stats::self_cpu(),
        wire: g.c.wire_bytes,
        inflated: g.c.inflated,
    }
}

/// Metrics common to the throughput scenarios, from two snapshots.
fn window_metrics(g: &Gen, a: &Snap, b: &Snap, out: &mut Vec<M>) {
    let secs = (b.at - a.at).as_secs_f64();
    let delivered = (b.delivered - a.delivered).max(1) as f64;
    let q = |p| g.c.hist.quantile(p) as f64 / 1000.0;
    out.push(m("latency p50 µs", q(0.5)));
    out.push(m("latency p99 µs", q(0.99)));
    out.push(m("latency p99.9 µs", q(0.999)));
    let srv = (b.srv_cpu - a.srv_cpu).as_secs_f64();
    let gen_cpu = (b.gen_cpu - a.gen_cpu).as_secs_f64();
    out.push(m("server CPU ns/delivery", srv * 1e9 / delivered));
    out.push(m("server CPU %", 100.0 * srv / secs));
    out.push(m("generator CPU %", 100.0 * gen_cpu / secs));
    out.push(m("generator CPU ns/delivery", gen_cpu * 1e9 / delivered));
    // The generator's cost is mostly the kernel's, per read: this shows the batching.
    out.push(m(
        "deliveries per read",
        delivered / (b.reads - a.reads).max(1) as f64,
    ));
    // Each write costs the generator the server's receive path too (loopback runs it in
    // the sender's context): with few receivers per message, sending weighs.
    out.push(m(
        "messages per write",
        (b.sent - a.sent) as f64 / (b.writes - a.writes).max(1) as f64,
    ));
}

fn connect_all(
    g: &mut Gen,
    addr: std::net::SocketAddrV4,
    n: usize,
    secs: u64,
) -> Result<std::ops::Range<usize>, String> {
    let want = g.c.opened + n;
    let r = g.connect_many(addr, ROOM, n, Instant::now() + Duration::from_secs(secs));
    if g.c.opened != want {
        return Err(format!(
            "{} of {n} connections opened ({} failed, {} lost): {}",
            n - (want - g.c.opened),
            g.c.failed,
            g.c.lost,
            g.c.last_error
        ));
    }
    Ok(r)
}

/// Cross-node: every node must have subscribed the room's channel (node A too: its
/// publishers are members), or the first messages would reach nobody on node B.
fn wait_bus(g: &mut Gen, t: &Target) -> Result<(), String> {
    let Some(bus) = &t.bus else {
        return Ok(());
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = bus.subscribers();
        if n == Some(bus.nodes.len() as i64) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "channel {} has {n:?} subscribers after 10 s, want {}",
                bus.channel,
                bus.nodes.len()
            ));
        }
        g.run_until(Instant::now() + Duration::from_millis(50), |_| false);
    }
}

fn fanout(t: &mut Target, p: &FanParams) -> RunResult {
    let rbuf = (2 * (p.size + 14)).max(64 * 1024);
    let mut g = Gen::new(p.pubs, rbuf, p.size).map_err(|e| e.to_string())?;
    if p.deflate {
        g.offer_deflate = true;
        g.set_corpus(p.size + 256 * 1024);
    }
    g.v1 = p.v1;
    let subs = connect_all(&mut g, t.sub_addr, p.subs, 60)?;
    g.v1 = false;
    let pubs = connect_all(&mut g, t.pub_addr, p.pubs, 60)?;
    for (k, i) in pubs.clone().enumerate() {
        g.conns[i].pub_id = Some(k as u32);
    }
    let probe = subs.end - 1;
    wait_bus(&mut g, t)?;
    // Let every join land before the first message.
    g.run_until(Instant::now() + Duration::from_millis(300), |_| false);
    let receivers = (p.subs + p.pubs - 1) as u64;

    let start = Instant::now();
    let measure_from = start + p.warmup;
    let end = measure_from + p.duration;
    let interval = p.rate.map(|r| Duration::from_secs_f64(1.0 / r));
    let mut due: Vec<Instant> = (0..p.pubs)
        .map(|k| start + interval.unwrap_or_default() * k as u32 / p.pubs as u32)
        .collect();
    let total_sent = |g: &Gen| pubs.clone().map(|i| g.conns[i].sent).sum::<u64>();
    let mut s0: Option<Snap> = None;
    let mut progress = Progress::new();
    let mut iter = 0u32;
    loop {
        let now = Instant::now();
        if s0.is_none() && now >= measure_from {
            g.c.record_from = g.now_ns();
            s0 = Some(snap(&g, t, total_sent(&g)));
        }
        if now >= end {
            break;
        }
        let mut timeout = Duration::from_millis(10);
        match interval {
            None => {
                for k in 0..p.pubs {
                    let i = pubs.start + k;
                    while g.conns[i].sent - g.conns[probe].next_seq[k] < p.window {
                        if !g.send(i, p.size) {
                            break;
                        }
                    }
                }
            }
            Some(iv) => {
                for (k, d) in due.iter_mut().enumerate() {
                    while *d <= now {
                        g.send(pubs.start + k, p.size);
                        *d += iv;
                    }
                    timeout = timeout.min(d.saturating_duration_since(now));
                }
            }
        }
        g.flush();
        g.poll_once(Some(timeout));
        iter = iter.wrapping_add(1);
        if iter.is_multiple_of(64) {
            t.check_alive()?;
            progress.check(now, &g, "")?;
        }
    }
    let sent = total_sent(&g);
    let (s0, s1) = end_window(&mut g, t, s0, sent, false)?;
    let secs = (s1.at - s0.at).as_secs_f64();
    let mut out = Vec::new();
    if p.large {
        out.push(m(
            "delivered MB/s",
            (s1.bytes - s0.bytes) as f64 / secs / 1e6,
        ));
    }
    out.push(m(
        "delivered msg/s",
        (s1.delivered - s0.delivered) as f64 / secs,
    ));
    if p.rate.is_some() {
        let offered = (s1.sent - s0.sent) * receivers;
        out.push(m(
            "delivery ratio",
            g.c.hist.count() as f64 / offered.max(1) as f64,
        ));
    }
    window_metrics(&g, &s0, &s1, &mut out);
    if p.deflate || p.v1 {
        // Where the time goes at saturation: bytes, whatever frames carry them.
        let delivered = (s1.delivered - s0.delivered).max(1) as f64;
        out.push(m(
            "wire bytes/delivery",
            (s1.wire - s0.wire) as f64 / delivered,
        ));
    }
    if p.deflate {
        let delivered = (s1.delivered - s0.delivered).max(1) as f64;
        out.push(m(
            "compressed share",
            (s1.inflated - s0.inflated) as f64 / delivered,
        ));
    }
    out.push(m(
        "lost messages",
        (g.c.gaps + g.tail_missing(false)) as f64,
    ));
    out.push(m("duplicates", g.c.dups as f64));
    out.push(m("malformed messages", g.c.bad as f64));
    out.push(m("lost connections", g.c.lost as f64));
    g.close_all();
    Ok(out)
}

fn all_to_all(t: &mut Target, cfg: &Cfg) -> RunResult {
    let n = cfg.clients;
    let mut g = Gen::new(n, 64 * 1024, cfg.size).map_err(|e| e.to_string())?;
    let all = connect_all(&mut g, t.pub_addr, n, 60)?;
    for (k, i) in all.clone().enumerate() {
        g.conns[i].pub_id = Some(k as u32);
    }
    wait_bus(&mut g, t)?;
    g.run_until(Instant::now() + Duration::from_millis(300), |_| false);
    let start = Instant::now();
    let measure_from = start + cfg.warmup;
    let end = measure_from + cfg.duration;
    let total_sent = |g: &Gen| all.clone().map(|i| g.conns[i].sent).sum::<u64>();
    let mut s0: Option<Snap> = None;
    let mut progress = Progress::new();
    let mut iter = 0u32;
    loop {
        let now = Instant::now();
        if s0.is_none() && now >= measure_from {
            g.c.record_from = g.now_ns();
            s0 = Some(snap(&g, t, total_sent(&g)));
        }
        if now >= end {
            break;
        }
        for i in all.clone() {
            // Everyone receives its own message too (echo): n per iteration.
            if g.conns[i].received >= n as u64 * g.conns[i].sent {
                g.send(i, cfg.size);
            }
        }
        g.flush();
        g.poll_once(Some(Duration::from_millis(10)));
        iter = iter.wrapping_add(1);
        if iter.is_multiple_of(64) {
            t.check_alive()?;
            progress.check(now, &g, "does it echo? ")?;
        }
    }
    let sent = total_sent(&g);
    let (s0, s1) = end_window(&mut g, t, s0, sent, true)?;
    let secs = (s1.at - s0.at).as_secs_f64();
    let mut out = vec![
        m("iterations/s", (s1.sent - s0.sent) as f64 / n as f64 / secs),
        m(
            "delivered msg/s",
            (s1.delivered - s0.delivered) as f64 / secs,
        ),
    ];
    window_metrics(&g, &s0, &s1, &mut out);
    out.push(m("lost messages", (g.c.gaps + g.tail_missing(true)) as f64));
    out.push(m("duplicates", g.c.dups as f64));
    out.push(m("malformed messages", g.c.bad as f64));
    out.push(m("lost connections", g.c.lost as f64));
    g.close_all();
    Ok(out)
}

fn idle_memory(t: &mut Target, cfg: &Cfg) -> RunResult {
    std::thread::sleep(Duration::from_millis(300));
    let idle = t.rss_kb();
    let mut g = Gen::new(1, 4096, 64).map_err(|e| e.to_string())?;
    let started = Instant::now();
    connect_all(&mut g, t.pub_addr, cfg.idle_conns, 120)?;
    let connect_s = started.elapsed().as_secs_f64();
    g.run_until(Instant::now() + Duration::from_secs(1), |_| false);
    t.check_alive()?;
    let held = g.open_count();
    let rss = t.rss_kb();
    let out = vec![
        m(
            "KB per connection",
            (rss as f64 - idle as f64) / held.max(1) as f64,
        ),
        m("RSS idle KB", idle as f64),
        m("RSS with connections KB", rss as f64),
        m("held connections", held as f64),
        m("connect time s", connect_s),
    ];
    g.close_all();
    Ok(out)
}

/// Connections opened `concurrency` at a time, each closed by the generator as soon as its
/// upgrade is answered: the rate the server takes them at, and its CPU per connection (with
/// `--tls`, a full TLS 1.3 handshake each: no resumption).
fn handshakes(t: &mut Target, cfg: &Cfg) -> RunResult {
    let mut g = Gen::new(1, 1024, 64).map_err(|e| e.to_string())?;
    g.churn = true;
    let start = Instant::now();
    let measure_from = start + cfg.warmup;
    let end = measure_from + cfg.duration;
    let mut s0: Option<(Instant, u64, Duration, Duration)> = None;
    let mut iter = 0u32;
    let mut idle_since = Instant::now();
    let mut last = 0;
    loop {
        let now = Instant::now();
        if s0.is_none() && now >= measure_from {
            s0 = Some((now, g.c.churned, t.cpu(), stats::self_cpu()));
        }
        if now >= end {
            break;
        }
        while g.c.pending < cfg.concurrency {
            if let Err(e) = g.connect(t.pub_addr, ROOM) {
                return Err(format!("connect: {e}"));
            }
        }
        g.poll_once(Some(Duration::from_millis(10)));
        if g.c.churned != last {
            last = g.c.churned;
            idle_since = now;
        } else if now - idle_since > Duration::from_secs(3) {
            return Err(format!(
                "stalled: no upgrade for 3 s ({} failed: {})",
                g.c.failed, g.c.last_error
            ));
        }
        iter = iter.wrapping_add(1);
        if iter.is_multiple_of(64) {
            t.check_alive()?;
        }
    }
    let (at, n0, srv0, gen0) = s0.ok_or("no measurement window")?;
    let secs = at.elapsed().as_secs_f64();
    let done = (g.c.churned - n0).max(1) as f64;
    let srv = (t.cpu() - srv0).as_secs_f64();
    let gen_cpu = (stats::self_cpu() - gen0).as_secs_f64();
    let out = vec![
        m("connections/s", done / secs),
        m("server CPU µs/connection", srv * 1e6 / done),
        m("connections/s per server core", done / srv.max(1e-9)),
        m("server CPU %", 100.0 * srv / secs),
        m("generator CPU %", 100.0 * gen_cpu / secs),
        m("failed", g.c.failed as f64),
    ];
    g.close_all();
    Ok(out)
}

fn many_conns(t: &mut Target, cfg: &Cfg) -> RunResult {
    let n = many_target(cfg);
    let mut g = Gen::new(1, 4096, 64).map_err(|e| e.to_string())?;
    let started = Instant::now();
    g.connect_many(
        t.pub_addr,
        ROOM,
        n,
        Instant::now() + Duration::from_secs(180),
    );
    let connect_s = started.elapsed().as_secs_f64();
    let opened = g.c.opened;
    let failed = g.c.failed;
    let hold_end = Instant::now() + cfg.hold;
    while Instant::now() < hold_end {
        g.run_until(
            hold_end.min(Instant::now() + Duration::from_secs(1)),
            |_| false,
        );
        t.check_alive()?;
    }
    let held = g.open_count();
    let rss = t.rss_kb();
    let sender = (0..g.conns.len())
        .find(|&i| g.conns[i].phase == ws::Phase::Open)
        .ok_or(format!("no connection open: {}", g.c.last_error))?;
    g.conns[sender].pub_id = Some(0);
    let expected = held as u64 - 1;
    g.send(sender, 64);
    g.flush();
    g.run_until(Instant::now() + Duration::from_secs(20), |g| {
        g.c.delivered >= expected
    });
    let out = vec![
        m("held connections", held as f64),
        m("lost during hold", (opened - held) as f64),
        m("delivered", g.c.delivered as f64),
        m(
            "not delivered",
            expected.saturating_sub(g.c.delivered) as f64,
        ),
        m("failed to connect", failed as f64),
        m("connect time s", connect_s),
        m("server RSS KB", rss as f64),
    ];
    g.close_all();
    Ok(out)
}

/// permessage-deflate fan-out: the fanout load (subscribers, publishers, window) with
/// JSON-like chat lines of `--compression-size` bytes, every client offering deflate as Chrome
/// does and inflating every compressed delivery. wschat with `--compression on` (one
/// compression per room message) against Bun (`perMessageDeflate`, publishing compressed) and
/// Node `ws` (`perMessageDeflate`), which compress per subscriber, and wschat with
/// compression off (the same offers declined) as the baseline. Publishers send plain frames
/// (RSV1 clear, which a client may always do): what is measured is the server's delivery.
fn compression(cfg: &Cfg, servers: &[Kind]) {
    let p = FanParams {
        size: cfg.compression_size,
        deflate: true,
        ..FanParams::fanout(cfg)
    };
    println!(
        "\n== compression == {} subscribers + {} publishers, one room, {} B JSON-like text, \
         window {} per publisher, {} s; clients offer permessage-deflate and inflate every \
         compressed delivery",
        p.subs,
        p.pubs,
        p.size,
        p.window,
        p.duration.as_secs_f64()
    );
    let on = |flag: &str| vec![flag.to_string()];
    let mut variants: Vec<(&str, Kind, Vec<String>)> = Vec::new();
    if servers.contains(&Kind::Wschat) {
        variants.push((
            "wschat",
            Kind::Wschat,
            vec!["--compression".into(), "on".into()],
        ));
    }
    if servers.contains(&Kind::Bun) {
        variants.push(("bun", Kind::Bun, on("--deflate")));
    }
    if servers.contains(&Kind::Node) {
        variants.push(("node", Kind::Node, on("--deflate")));
    }
    if servers.contains(&Kind::Wschat) {
        variants.push(("wschat-off", Kind::Wschat, Vec::new()));
    }
    let mut results: Vec<Slot> = variants
        .iter()
        .map(|(name, _, _)| (name.to_string(), Vec::new(), 0))
        .collect();
    for run in 0..cfg.runs.unwrap_or(5) {
        for (vi, (name, kind, extra)) in variants.iter().enumerate() {
            let res = (|| {
                let opts = Options {
                    echo: false,
                    max_connections: None,
                    extra: extra.clone(),
                    tls: None,
                    port: None,
                };
                let tag = format!("compression-{name}-{run}");
                let mut t = Target::single(ServerProc::start(*kind, &opts, &cfg.log_dir, &tag)?);
                fanout(&mut t, &p)
            })();
            record(&mut results[vi], name, run, res);
        }
    }
    report(&results);
}

/// The fan-out scenario on wschat twice, interleaved: every subscriber raw, then every
/// subscriber speaking wschat.v1 (a JSON `msg` frame per delivery, the generator's header at
/// the start of its `text`). Issue 15's goal: v1 costs at most 1.3x the server CPU per delivery.
fn v1_members(cfg: &Cfg, servers: &[Kind]) {
    if !servers.contains(&Kind::Wschat) {
        println!("\n== v1 == skipped: needs wschat in --servers");
        return;
    }
    if let Err(e) = v1::self_check() {
        println!("\n== v1 == FAILED: {e}");
        return;
    }
    let raw = if cfg.v1_fixed_rate {
        FanParams::fixed_rate(cfg)
    } else {
        FanParams::fanout(cfg)
    };
    let load = match raw.rate {
        Some(r) => format!("{r} msg/s per publisher"),
        None => format!("window {} per publisher", raw.window),
    };
    println!(
        "\n== v1 == {} subscribers + {} raw publishers, one room, {} B text, {load}, {} s; \
         subscribers raw, then all wschat.v1",
        raw.subs,
        raw.pubs,
        raw.size,
        raw.duration.as_secs_f64()
    );
    let all_v1 = FanParams { v1: true, ..raw };
    let variants = [("raw", raw), ("v1", all_v1)];
    let mut results: Vec<Slot> = variants
        .iter()
        .map(|(name, _)| (name.to_string(), Vec::new(), 0))
        .collect();
    for run in 0..cfg.runs.unwrap_or(5) {
        for (vi, (name, p)) in variants.iter().enumerate() {
            let res = (|| {
                let opts = Options {
                    echo: false,
                    max_connections: None,
                    extra: Vec::new(),
                    tls: None,
                    port: None,
                };
                let tag = format!("v1-{name}-{run}");
                let mut t =
                    Target::single(ServerProc::start(Kind::Wschat, &opts, &cfg.log_dir, &tag)?);
                fanout(&mut t, p)
            })();
            record(&mut results[vi], name, run, res);
        }
    }
    report(&results);
    // The same round's raw run is the fairest base on a machine whose load drifts.
    let cpu = |ms: &[M]| {
        ms.iter()
            .find(|x| x.name == "server CPU ns/delivery")
            .map(|x| x.v)
    };
    let ratios: Vec<f64> = results[1]
        .1
        .iter()
        .filter_map(|(run, ms)| {
            let (_, base) = results[0].1.iter().find(|(r, _)| r == run)?;
            Some(cpu(ms)? / cpu(base)?)
        })
        .collect();
    if let Some(s) = stats::summarize(&ratios) {
        println!(
            "  server CPU ns/delivery, v1 ÷ raw round by round: {:.3} (min – max {:.3} – {:.3}, {} rounds)",
            s.median, s.min, s.max, s.n
        );
    }
}

/// Publishers on node A, subscribers on node B, one redis-server between them;
/// next to the same load on one node. Two loads, as on one node: fan-out
/// (saturation, window per publisher) for throughput, and the fixed-rate settings
/// for latency under a given load. Skipped without redis-server or a wschat that
/// accepts --redis.
fn cross_node(cfg: &Cfg) {
    println!("\n== cross-node ==");
    let Some(redis) = server::on_path("redis-server") else {
        println!("skipped: needs --redis support and redis-server (redis-server not on PATH)");
        return;
    };
    if !server::wschat_supports("--redis") {
        println!(
            "skipped: needs --redis support and redis-server (wschat --help lists no --redis)"
        );
        return;
    }
    if !cfg.servers.contains(&Kind::Wschat) {
        println!("skipped: wschat not among --servers");
        return;
    }
    println!(
        "publishers on node A, subscribers on node B, one redis-server ({}); redis and both \
         nodes share CPU 0, server CPU is their sum; each 2-node run starts a fresh redis and \
         fresh nodes",
        redis.display()
    );
    let runs = cfg.runs.unwrap_or(5);
    let loads: [(&str, FanParams); 2] = [
        ("fan-out (saturation)", FanParams::fanout(cfg)),
        ("fixed rate", FanParams::fixed_rate(cfg)),
    ];
    let mut results: Vec<Vec<Slot>> = loads
        .iter()
        .map(|_| {
            vec![
                ("wschat (1 node)".to_string(), Vec::new(), 0),
                ("wschat (2 nodes)".to_string(), Vec::new(), 0),
            ]
        })
        .collect();
    for run in 0..runs {
        for (li, (lname, p)) in loads.iter().enumerate() {
            let key = if p.rate.is_some() { "rate" } else { "fan" };
            let one = (|| {
                let opts = Options {
                    echo: false,
                    max_connections: None,
                    extra: Vec::new(),
                    tls: None,
                    port: None,
                };
                let mut t = Target::single(ServerProc::start(
                    Kind::Wschat,
                    &opts,
                    &cfg.log_dir,
                    &format!("cross1-{key}-{run}"),
                )?);
                fanout(&mut t, p)
            })();
            record(
                &mut results[li][0],
                &format!("{lname}, wschat (1 node)"),
                run,
                one,
            );
            let two = cross_run(cfg, &redis, p, &format!("{key}-{run}"));
            record(
                &mut results[li][1],
                &format!("{lname}, wschat (2 nodes)"),
                run,
                two,
            );
        }
    }
    for (li, (lname, p)) in loads.iter().enumerate() {
        let sc = if p.rate.is_some() {
            Scenario::FixedRate
        } else {
            Scenario::Fanout
        };
        println!("\n-- cross-node, {lname}: {}", describe(sc, cfg));
        report(&results[li]);
    }
}

/// One 2-node run: a fresh redis-server, nodes A (publishers) and B (subscribers)
/// linked to it, the load, then the nodes' Redis counters.
fn cross_run(cfg: &Cfg, redis: &Path, p: &FanParams, tag: &str) -> RunResult {
    let port = server::free_port().map_err(|e| e.to_string())?;
    let mut cmd = std::process::Command::new(redis);
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]);
    let r = ServerProc::spawn(
        cmd,
        "redis",
        port,
        &cfg.log_dir,
        &format!("cross-{tag}"),
        false,
    )?;
    let url = format!("redis://127.0.0.1:{port}");
    let opts = Options {
        echo: false,
        max_connections: None,
        extra: vec!["--redis".into(), url],
        tls: None,
        port: None,
    };
    let a = ServerProc::start(Kind::Wschat, &opts, &cfg.log_dir, &format!("crossA-{tag}"))?;
    let b = ServerProc::start(Kind::Wschat, &opts, &cfg.log_dir, &format!("crossB-{tag}"))?;
    let bus = server::Bus {
        redis: r.addr,
        channel: format!("wschat:room:/{ROOM}"),
        nodes: vec![a.addr, b.addr],
    };
    bus.wait_links_up(Instant::now() + Duration::from_secs(10))?;
    let (a_addr, b_addr) = (a.addr, b.addr);
    // The nodes first, so that they stop before redis (no link-down warnings).
    let mut t = Target {
        pub_addr: a_addr,
        sub_addr: b_addr,
        procs: vec![a, b, r],
        bus: Some(bus),
    };
    let mut out = fanout(&mut t, p)?;
    let get = |addr, name| server::metric(addr, name).unwrap_or(f64::NAN);
    out.push(m(
        "A: redis published",
        get(a_addr, "wschat_redis_published_total"),
    ));
    out.push(m(
        "A: redis publish dropped",
        get(a_addr, "wschat_redis_publish_dropped_total"),
    ));
    out.push(m(
        "A: redis publish lost",
        get(a_addr, "wschat_redis_publish_lost_total"),
    ));
    out.push(m(
        "B: redis received",
        get(b_addr, "wschat_redis_received_total"),
    ));
    out.push(m(
        "A+B: redis reconnects",
        get(a_addr, "wschat_redis_reconnects_total") + get(b_addr, "wschat_redis_reconnects_total"),
    ));
    t.check_alive()?;
    Ok(out)
}

/// Issue 14's question: two wschat processes on one port (`--reuse-port`, the kernel spreads
/// the connections between them) sharing the room through one redis-server, against one
/// process, for fan-out and all-to-all. All processes share CPU 0 (the machine has two cores,
/// the generator needs the other): so this measures what the second process and the bus cost
/// per delivery, from which the gain on more cores follows (docs/scaling.md).
fn reuse_port(cfg: &Cfg) {
    println!("\n== reuse-port ==");
    let Some(redis) = server::on_path("redis-server") else {
        println!("skipped: needs redis-server on PATH");
        return;
    };
    if !server::wschat_supports("--reuse-port") || !server::wschat_supports("--redis") {
        println!("skipped: wschat --help lists no --reuse-port or no --redis");
        return;
    }
    println!(
        "one port, two processes (--reuse-port --redis), one redis-server; the processes and \
         redis share CPU 0, server CPU is their sum; fresh processes every run"
    );
    let runs = cfg.runs.unwrap_or(5);
    let loads = ["fan-out", "all-to-all"];
    let mut results: Vec<Vec<Slot>> = loads
        .iter()
        .map(|_| {
            vec![
                ("wschat (1 process)".to_string(), Vec::new(), 0),
                ("wschat (2 processes)".to_string(), Vec::new(), 0),
            ]
        })
        .collect();
    for run in 0..runs {
        for (li, lname) in loads.iter().enumerate() {
            let echo = li == 1;
            let one = (|| {
                let opts = Options {
                    echo,
                    max_connections: None,
                    extra: Vec::new(),
                    tls: None,
                    port: None,
                };
                let tag = format!("reuse1-{lname}-{run}");
                let mut t =
                    Target::single(ServerProc::start(Kind::Wschat, &opts, &cfg.log_dir, &tag)?);
                reuse_load(&mut t, cfg, echo)
            })();
            record(
                &mut results[li][0],
                &format!("{lname}, 1 process"),
                run,
                one,
            );
            let two = reuse_run(cfg, &redis, echo, &format!("{lname}-{run}"));
            record(
                &mut results[li][1],
                &format!("{lname}, 2 processes"),
                run,
                two,
            );
        }
    }
    for (li, lname) in loads.iter().enumerate() {
        let sc = if li == 1 {
            Scenario::AllToAll
        } else {
            Scenario::Fanout
        };
        println!("\n-- reuse-port, {lname}: {}", describe(sc, cfg));
        report(&results[li]);
    }
}

fn reuse_load(t: &mut Target, cfg: &Cfg, echo: bool) -> RunResult {
    if echo {
        all_to_all(t, cfg)
    } else {
        fanout(t, &FanParams::fanout(cfg))
    }
}

/// One 2-process run: a fresh redis-server, two wschat processes on one port linked to it.
fn reuse_run(cfg: &Cfg, redis: &Path, echo: bool, tag: &str) -> RunResult {
    let rport = server::free_port().map_err(|e| e.to_string())?;
    let mut cmd = std::process::Command::new(redis);
    cmd.args(["--port", &rport.to_string(), "--bind", "127.0.0.1"]);
    cmd.args(["--save", "", "--appendonly", "no"]);
    let r = ServerProc::spawn(
        cmd,
        "redis",
        rport,
        &cfg.log_dir,
        &format!("reuse-{tag}"),
        false,
    )?;
    let port = server::free_port().map_err(|e| e.to_string())?;
    let opts = Options {
        echo,
        max_connections: None,
        extra: vec![
            "--reuse-port".into(),
            "--redis".into(),
            format!("redis://127.0.0.1:{rport}"),
        ],
        tls: None,
        port: Some(port),
    };
    let a = ServerProc::start(Kind::Wschat, &opts, &cfg.log_dir, &format!("reuseA-{tag}"))?;
    let b = ServerProc::start(Kind::Wschat, &opts, &cfg.log_dir, &format!("reuseB-{tag}"))?;
    // The readiness probe may have reached A twice: B is up once its Redis link is.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server::redis_clients(r.addr) < Some(2) {
        if Instant::now() >= deadline {
            return Err("the two processes did not both link to redis in 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let bus = server::Bus {
        redis: r.addr,
        channel: format!("wschat:room:/{ROOM}"),
        nodes: vec![a.addr, b.addr],
    };
    let mut t = Target {
        pub_addr: a.addr,
        sub_addr: a.addr,
        procs: vec![a, b, r],
        bus: Some(bus),
    };
    let mut out = reuse_load(&mut t, cfg, echo)?;
    // How evenly the kernel spread the work: A's share of the two processes' CPU (whole run).
    let (a_cpu, b_cpu) = (t.procs[0].cpu(), t.procs[1].cpu());
    out.push(m(
        "process A share of CPU %",
        100.0 * a_cpu.as_secs_f64() / (a_cpu + b_cpu).as_secs_f64().max(1e-9),
    ));
    out.push(m("redis CPU as % of nodes'", {
        let r = t.procs[2].cpu().as_secs_f64();
        100.0 * r / (a_cpu + b_cpu).as_secs_f64().max(1e-9)
    }));
    t.check_alive()?;
    Ok(out)
}

fn fmt(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

/// One table per metric: server, median, spread (min – max), ratio of medians against the
/// first server (wschat) and, when `limit` ran too, against `limit`; then the ratios to
/// `limit` run by run (each run next to the limit's run of the same round, minutes apart at
/// most, so that drifting noise on a shared machine cancels).
fn report(results: &[Slot]) {
    let Some(first) = results.iter().find(|r| !r.1.is_empty()) else {
        println!("  no successful runs");
        return;
    };
    // Every metric any server reported, in the order they first appear.
    let mut names: Vec<&'static str> = first.1[0].1.iter().map(|x| x.name).collect();
    for r in results {
        for (_, run) in &r.1 {
            for x in run {
                if !names.contains(&x.name) {
                    names.push(x.name);
                }
            }
        }
    }
    let limit = results
        .iter()
        .position(|r| r.0 == Kind::Limit.name())
        .filter(|&i| i > 0);
    let limit_head = match limit {
        Some(_) => format!(" {:>9}", "÷ limit"),
        None => String::new(),
    };
    let w = results.iter().map(|r| r.0.len()).max().unwrap_or(6).max(6);
    println!(
        "  {:<26} {:<w$} {:>12} {:>25} {:>10}{limit_head} {:>5}",
        "metric",
        "server",
        "median",
        "spread (min – max)",
        format!("÷ {}", results[0].0),
        "runs"
    );
    let vals = |r: &Slot, name: &str| -> Vec<f64> {
        r.1.iter()
            .filter_map(|(_, run)| run.iter().find(|x| x.name == name).map(|x| x.v))
            .collect()
    };
    let ratio = |v: f64, base: Option<f64>| match base {
        Some(b) if b != 0.0 => format!("{:.2}", v / b),
        _ => "-".into(),
    };
    for name in names {
        let base = stats::summarize(&vals(&results[0], name)).map(|s| s.median);
        let limit_base =
            limit.and_then(|i| stats::summarize(&vals(&results[i], name)).map(|s| s.median));
        for (i, r) in results.iter().enumerate() {
            let label = if i == 0 { name } else { "" };
            match stats::summarize(&vals(r, name)) {
                Some(s) => {
                    let failed = if r.2 > 0 {
                        format!(" ({} failed)", r.2)
                    } else {
                        String::new()
                    };
                    let to_limit = match limit {
                        Some(_) => format!(" {:>9}", ratio(s.median, limit_base)),
                        None => String::new(),
                    };
                    println!(
                        "  {label:<26} {:<w$} {:>12} {:>25} {:>10}{to_limit} {:>5}{failed}",
                        r.0,
                        fmt(s.median),
                        format!("{} – {}", fmt(s.min), fmt(s.max)),
                        ratio(s.median, base),
                        s.n
                    );
                }
                None => println!(
                    "  {label:<26} {:<w$} {:>12} {:>25} {:>10}{} {:>5}",
                    r.0,
                    "-",
                    if r.1.is_empty() {
                        "all runs failed"
                    } else {
                        "not measured"
                    },
                    "-",
                    if limit.is_some() { " -" } else { "" },
                    0
                ),
            }
        }
    }
    if let Some(li) = limit {
        paired_ratios(results, li);
    }
    // A before/after comparison: every other server against the second wschat binary.
    if let Some(bi) = results
        .iter()
        .position(|r| r.0 == Kind::Wschat2.name())
        .filter(|&i| i > 0)
    {
        paired_ratios(results, bi);
    }
    for r in results {
        let gen_pct = stats::summarize(&vals(r, "generator CPU %"));
        if let Some(s) = gen_pct
            && s.median > 85.0
        {
            println!(
                "  note: generator CPU {:.0}% against {}: the generator may be the bottleneck",
                s.median, r.0
            );
        }
    }
}

/// The metrics whose ratio to `limit` (or `wschat2`) is reported run by run.
const PAIRED: [&str; 4] = [
    "server CPU ns/delivery",
    "delivered msg/s",
    "iterations/s",
    "server CPU µs/connection",
];

/// For every server but the base (`limit` or `wschat2`): its value over the base's in the
/// same round, for the metrics of PAIRED; median and spread of those per-round ratios.
fn paired_ratios(results: &[Slot], li: usize) {
    let base = &results[li].0;
    let value = |run: &[M], name: &str| run.iter().find(|x| x.name == name).map(|x| x.v);
    let mut header = false;
    for name in PAIRED {
        for (i, r) in results.iter().enumerate() {
            if i == li {
                continue;
            }
            let ratios: Vec<f64> =
                r.1.iter()
                    .filter_map(|(run, ms)| {
                        let (_, lm) = results[li].1.iter().find(|(lr, _)| lr == run)?;
                        let (v, l) = (value(ms, name)?, value(lm, name)?);
                        (l != 0.0).then_some(v / l)
                    })
                    .collect();
            let Some(s) = stats::summarize(&ratios) else {
                continue;
            };
            if !header {
                println!("  ratio to {base}, run by run (same round of the interleaving):");
                header = true;
            }
            println!(
                "  {name:<26} {:<8} ÷ {base} {:>6.3} (min – max {:.3} – {:.3}, {} rounds)",
                r.0, s.median, s.min, s.max, s.n
            );
        }
    }
}
