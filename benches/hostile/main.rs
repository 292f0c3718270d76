//! The hostile-client suite (issue 11): each attack against a fresh release server started
//! with a memory ceiling, while a well-behaved pair keeps talking in another room, RSS is
//! sampled every 100 ms and /healthz probed every 200 ms. See docs/hostile.md.
//!
//!   scripts/hostile [--short] [--server-args "--max-memory 64M"] [ATTACK ...]
//!   cargo bench --bench hostile -- --help
//!
//! Only 127.0.0.0/8 is used; every run is bounded in connections and time, and the server
//! dies with this process on every exit path (PR_SET_PDEATHSIG, a watchdog, Drop).

mod attack;
mod calm;
mod server;

use attack::{Kind, Plan, Tally};
use server::{Exit, ServerProc};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MIB: f64 = 1024.0 * 1024.0;
/// What the process may use beyond the ceiling: code, stacks, the loop's own buffers.
const OVERHEAD: u64 = 16 << 20;
/// /healthz must answer within this (a 503 "memory pressure" is an answer).
const HEALTHZ_LIMIT: Duration = Duration::from_millis(100);
/// The well-behaved pair's p99 latency must stay under this.
const PAIR_P99_LIMIT_MS: f64 = 50.0;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Attack {
    Heads,
    Frames,
    Fragments,
    Pipelining,
    Busy,
    Pings,
    Churn,
    All,
}

const ALL: [Attack; 8] = [
    Attack::Heads,
    Attack::Frames,
    Attack::Fragments,
    Attack::Pipelining,
    Attack::Busy,
    Attack::Pings,
    Attack::Churn,
    Attack::All,
];

impl Attack {
    fn name(self) -> &'static str {
        match self {
            Attack::Heads => "1 heads",
            Attack::Frames => "2 frames",
            Attack::Fragments => "3 fragments",
            Attack::Pipelining => "4 pipelining",
            Attack::Busy => "5 busy-room",
            Attack::Pings => "6 pings",
            Attack::Churn => "7 churn",
            Attack::All => "8 all",
        }
    }

    fn parse(s: &str) -> Option<Attack> {
        let n = ALL.iter().position(|a| {
            let name = a.name();
            s == &name[..1] || s == &name[2..]
        })?;
        Some(ALL[n])
    }
}

struct Cfg {
    attacks: Vec<Attack>,
    bin: PathBuf,
    server_args: Vec<String>,
    heads: usize,
    frames: usize,
    fragments: usize,
    pipeliners: usize,
    members: usize,
    pingers: usize,
    hold: Duration,
    recovery: Duration,
    ramp_limit: Duration,
    report: Option<PathBuf>,
    log_dir: PathBuf,
    short: bool,
}

const USAGE: &str = "\
usage: cargo bench --bench hostile -- [ATTACK ...] [OPTIONS]   (or scripts/hostile ...)

attacks (default: all), by number or name:
  1 heads  2 frames  3 fragments  4 pipelining  5 busy-room  6 pings  7 churn  8 all

options:
  --short               a few hundred connections per attack, 3 s hold, 5 s recovery (CI)
  --server-args \"ARGS\"  extra server arguments, split on spaces (default: none; the
                        script passes --max-memory 64M)
  --bin PATH            the server binary (default: the release build cargo made)
  --report FILE         also write the table and the details as markdown to FILE
  --hold S              seconds the attackers hold once all are in (default 10; short 3)
  --recovery S          seconds to watch RSS after they leave (default 30; short 5)
  --ramp-limit S        longest the attackers may take to get in (default 60; short 20)
  --heads N             attack 1 connections (default 10000; short 400)
  --frames N            attack 2 connections (default 5000; short 300)
  --fragments N         attack 3 connections (default 5000; short 300)
  --pipeliners N        attack 4 connections (default 2000; short 200)
  --members N           attack 5 members (default 2000; short 200)
  --pingers N           attack 6 connections (default 500; short 100)
  --log-dir DIR         server logs (default target/hostile)
Attack 8 runs a third of each count at once, plus churn.
";

fn parse_args() -> Result<Cfg, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let short = args.iter().any(|a| a == "--short");
    let mut cfg = Cfg {
        attacks: Vec::new(),
        bin: PathBuf::from(env!("CARGO_BIN_EXE_wschat")),
        server_args: Vec::new(),
        heads: if short { 400 } else { 10_000 },
        frames: if short { 300 } else { 5_000 },
        fragments: if short { 300 } else { 5_000 },
        pipeliners: if short { 200 } else { 2_000 },
        members: if short { 200 } else { 2_000 },
        pingers: if short { 100 } else { 500 },
        hold: Duration::from_secs(if short { 3 } else { 10 }),
        recovery: Duration::from_secs(if short { 5 } else { 30 }),
        ramp_limit: Duration::from_secs(if short { 20 } else { 60 }),
        report: None,
        log_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("target/hostile"),
        short,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = |name: &str| it.next().cloned().ok_or(format!("{name} needs a value"));
        let int = |s: String| s.parse::<usize>().map_err(|e| format!("{s}: {e}"));
        let secs = |s: String| {
            s.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .map(Duration::from_secs_f64)
                .ok_or(format!("{s}: not a number of seconds"))
        };
        match a.as_str() {
            "--bench" | "--short" => {} // cargo bench passes --bench
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            "--server-args" => {
                cfg.server_args = val(a)?.split_whitespace().map(String::from).collect()
            }
            "--bin" => cfg.bin = PathBuf::from(val(a)?),
            "--report" => cfg.report = Some(PathBuf::from(val(a)?)),
            "--hold" => cfg.hold = secs(val(a)?)?,
            "--recovery" => cfg.recovery = secs(val(a)?)?,
            "--ramp-limit" => cfg.ramp_limit = secs(val(a)?)?,
            "--heads" => cfg.heads = int(val(a)?)?,
            "--frames" => cfg.frames = int(val(a)?)?,
            "--fragments" => cfg.fragments = int(val(a)?)?,
            "--pipeliners" => cfg.pipeliners = int(val(a)?)?,
            "--members" => cfg.members = int(val(a)?)?,
            "--pingers" => cfg.pingers = int(val(a)?)?,
            "--log-dir" => cfg.log_dir = PathBuf::from(val(a)?),
            s if s.starts_with('-') => return Err(format!("unknown option {s}\n{USAGE}")),
            s => cfg
                .attacks
                .push(Attack::parse(s).ok_or(format!("unknown attack {s}\n{USAGE}"))?),
        }
    }
    if cfg.attacks.is_empty() {
        cfg.attacks = ALL.to_vec();
    }
    // The attackers and the server share this machine's descriptors: 20,000 here.
    let limit = raise_nofile();
    let total = cfg
        .heads
        .max(cfg.frames)
        .max(cfg.fragments)
        .max(cfg.pipeliners);
    let total = total.max(cfg.members + 1).max(cfg.pingers);
    if total as u64 + 64 > limit {
        return Err(format!(
            "{total} connections do not fit the open-file limit {limit} of this process"
        ));
    }
    Ok(cfg)
}

/// Raises the soft open-file limit to the hard one; returns the limit now in force.
fn raise_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write and read the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
    }
    r.rlim_cur
}

impl Cfg {
    fn plan(&self, attack: Attack) -> Plan {
        let counts = match attack {
            Attack::Heads => vec![(Kind::Head, self.heads)],
            Attack::Frames => vec![(Kind::Frame, self.frames)],
            Attack::Fragments => vec![(Kind::Fragments, self.fragments)],
            Attack::Pipelining => vec![(Kind::Pipeline, self.pipeliners)],
            Attack::Busy => vec![(Kind::Member, self.members), (Kind::Publisher, 1)],
            Attack::Pings => vec![(Kind::Pinger, self.pingers)],
            Attack::Churn => vec![],
            Attack::All => vec![
                (Kind::Head, self.heads / 3),
                (Kind::Frame, self.frames / 3),
                (Kind::Fragments, self.fragments / 3),
                (Kind::Pipeline, self.pipeliners / 3),
                (Kind::Member, self.members / 3),
                (Kind::Pinger, self.pingers / 3),
                (Kind::Publisher, 1),
            ],
        };
        Plan {
            counts,
            churn: matches!(attack, Attack::Churn | Attack::All),
            ramp_limit: self.ramp_limit,
            hold: self.hold,
        }
    }
}

/// /healthz answers seen by the prober.
#[derive(Default)]
struct Probes {
    count: u64,
    /// No status line within 1 s, or a status other than 200/503.
    failed: u64,
    slow: u64,
    answered_503: u64,
    max: Duration,
    /// When the slow and missing answers came (seconds since the pair joined), the first 12.
    incidents: Vec<String>,
}

struct Verdict {
    name: &'static str,
    pass: Option<bool>,
    detail: String,
}

struct Outcome {
    attack: Attack,
    plan: Plan,
    error: Option<String>,
    tally: Tally,
    idle: u64,
    peak: u64,
    after: u64,
    ceiling: Option<u64>,
    pair: calm::PairResult,
    probes: Probes,
    exit: String,
    verdicts: Vec<Verdict>,
    log: PathBuf,
    /// CPU used while the attackers were there (seconds of the attack window): a server
    /// near 100 % of its core is saturated; ours shows the attackers stayed modest.
    server_cpu: f64,
    attacker_cpu: f64,
    window: f64,
    /// The server's own counters after the attack (its /metrics page).
    counters: String,
    /// Machine-wide kernel TCP memory at its highest (/proc/net/sockstat): socket buffers
    /// are not in the server's RSS, but they are the host's memory.
    tcp_mem_peak: u64,
    load: String,
    /// Listen-queue overflows during the attack (machine-wide): each one is a SYN dropped,
    /// which the client retries after 1 s.
    listen_overflows: u64,
    /// Seconds since the pair joined: attack start, all in, attackers gone, end.
    timeline: [f64; 4],
}

impl Outcome {
    fn passed(&self) -> bool {
        self.error.is_none() && self.verdicts.iter().all(|v| v.pass != Some(false))
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / MIB)
}

fn run_attack(cfg: &Cfg, attack: Attack) -> Outcome {
    let plan = cfg.plan(attack);
    let log = cfg
        .log_dir
        .join(format!("{}.log", attack.name().replace(' ', "-")));
    let mut out = Outcome {
        attack,
        plan: plan.clone(),
        error: None,
        tally: Tally::default(),
        idle: 0,
        peak: 0,
        after: 0,
        ceiling: None,
        pair: calm::PairResult::default(),
        probes: Probes::default(),
        exit: String::new(),
        verdicts: Vec::new(),
        log: log.clone(),
        server_cpu: 0.0,
        attacker_cpu: 0.0,
        window: 0.0,
        counters: String::new(),
        tcp_mem_peak: 0,
        load: String::new(),
        listen_overflows: 0,
        timeline: [0.0; 4],
    };
    let mut srv = match ServerProc::start(&cfg.bin, &cfg.server_args, &log) {
        Ok(s) => s,
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    };
    // The idle figure: after start, before anyone joins.
    std::thread::sleep(Duration::from_millis(500));
    out.idle = srv.memory().map_or(0, |m| m.0);
    out.ceiling = server::ceiling_arg(&cfg.server_args).or_else(|| srv.logged_ceiling());
    let pair = match calm::join(srv.addr) {
        Ok(p) => p,
        Err(e) => {
            out.error = Some(e);
            srv.stop(Duration::from_secs(10));
            return out;
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let pair_thread = {
        let stop = stop.clone();
        std::thread::spawn(move || calm::run(pair, stop))
    };
    let origin = Instant::now();
    let probes = Arc::new(Mutex::new(Probes::default()));
    let probe_thread = {
        let (stop, probes, addr) = (stop.clone(), probes.clone(), srv.addr);
        std::thread::spawn(move || probe_loop(addr, &stop, &probes, origin))
    };
    let mut peak = 0u64;
    let mut last_rss = out.idle;
    // A second of calm first: the pair's latency before the attack is part of the record.
    let calm_until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < calm_until {
        sample(&srv, &mut peak, &mut last_rss);
        std::thread::sleep(Duration::from_millis(100));
    }
    let cpu0 = (
        srv.cpu(),
        server::proc_cpu("/proc/self/stat"),
        Instant::now(),
    );
    out.timeline[0] = origin.elapsed().as_secs_f64();
    let overflows0 = listen_overflows();
    let leave = Arc::new(AtomicBool::new(false));
    let abort = Arc::new(AtomicBool::new(false));
    let engine = {
        let (leave, abort, addr, plan) = (leave.clone(), abort.clone(), srv.addr, plan.clone());
        std::thread::spawn(move || attack::run(addr, &plan, leave, &abort))
    };
    let mut died = false;
    let load_before = loadavg();
    while !engine.is_finished() {
        sample(&srv, &mut peak, &mut last_rss);
        out.tcp_mem_peak = out.tcp_mem_peak.max(tcp_mem().unwrap_or(0));
        if !died && !srv.alive() {
            died = true;
            abort.store(true, Ordering::SeqCst);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    out.tally = engine.join().unwrap_or_default();
    out.load = format!("{load_before} before, {} after", loadavg());
    out.window = cpu0.2.elapsed().as_secs_f64();
    out.timeline[1] = out.timeline[0] + out.tally.ramp.as_secs_f64();
    out.timeline[2] = origin.elapsed().as_secs_f64();
    if let (Some(a), Some(b)) = (cpu0.0, srv.cpu()) {
        out.server_cpu = b.saturating_sub(a).as_secs_f64();
    }
    if let (Some(a), Some(b)) = (cpu0.1, server::proc_cpu("/proc/self/stat")) {
        out.attacker_cpu = b.saturating_sub(a).as_secs_f64();
    }
    // The attackers have left: memory must come back.
    let until = Instant::now() + cfg.recovery;
    while Instant::now() < until && srv.alive() {
        sample(&srv, &mut peak, &mut last_rss);
        std::thread::sleep(Duration::from_millis(100));
    }
    sample(&srv, &mut peak, &mut last_rss);
    out.after = last_rss;
    out.peak = peak;
    out.timeline[3] = origin.elapsed().as_secs_f64();
    if let (Some(a), Some(b)) = (overflows0, listen_overflows()) {
        out.listen_overflows = b.saturating_sub(a);
    }
    stop.store(true, Ordering::SeqCst);
    out.pair = pair_thread.join().unwrap_or_default();
    let _ = probe_thread.join();
    out.probes = std::mem::take(&mut *probes.lock().unwrap_or_else(|e| e.into_inner()));
    out.counters =
        server::metrics(srv.addr).map_or("(no /metrics answer)".into(), |p| server::counters(&p));
    let alive = srv.alive();
    let exit = srv.stop(Duration::from_secs(10));
    out.exit = match &exit {
        Exit::Clean => "exit 0 after SIGTERM".into(),
        Exit::Unclean(s) => format!("{s} after SIGTERM"),
        Exit::DiedEarly(s) => format!("died during the attack: {s}"),
        Exit::Hung => "did not exit within 10 s of SIGTERM".into(),
    };
    if !alive || !matches!(exit, Exit::Clean) {
        out.exit.push_str(&format!("; log: {}", srv.log_tail(3)));
    }
    judge(&mut out, alive && matches!(exit, Exit::Clean));
    out
}

/// One RSS sample: the peak takes the kernel's own high-water mark too (VmHWM), which
/// sees spikes between two samples.
fn sample(srv: &ServerProc, peak: &mut u64, last: &mut u64) {
    if let Some((rss, hwm)) = srv.memory() {
        *peak = (*peak).max(rss).max(hwm);
        *last = rss;
    }
}

/// The 1-minute load average: other work on the machine shows in latencies too.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(String::from))
        .unwrap_or_else(|| "?".into())
}

/// `TcpExt: ListenOverflows` from /proc/net/netstat (machine-wide).
fn listen_overflows() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = s.lines().filter(|l| l.starts_with("TcpExt:"));
    let names = lines.next()?;
    let values = lines.next()?;
    let i = names
        .split_whitespace()
        .position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// Bytes of kernel memory in TCP buffers, machine-wide.
fn tcp_mem() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = s.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = line.split_whitespace();
    it.find(|w| *w == "mem")?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    Some(it.next()?.parse::<u64>().ok()? * page)
}

fn probe_loop(
    addr: std::net::SocketAddrV4,
    stop: &AtomicBool,
    probes: &Mutex<Probes>,
    origin: Instant,
) {
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let at = origin.elapsed().as_secs_f64();
        let answer = server::healthz(addr, Duration::from_secs(1));
        if let Ok(mut p) = probes.lock() {
            p.count += 1;
            let note = |p: &mut Probes, what: String| {
                if p.incidents.len() < 12 {
                    p.incidents.push(format!("+{at:.1} s {what}"));
                }
            };
            match answer {
                Some((code @ (200 | 503), took)) => {
                    p.max = p.max.max(took);
                    if took > HEALTHZ_LIMIT {
                        p.slow += 1;
                        note(&mut p, format!("{} ms", took.as_millis()));
                    }
                    if code == 503 {
                        p.answered_503 += 1;
                    }
                }
                Some((code, _)) => {
                    p.failed += 1;
                    p.max = p.max.max(Duration::from_secs(1));
                    note(&mut p, format!("status {code}"));
                }
                None => {
                    p.failed += 1;
                    p.max = p.max.max(Duration::from_secs(1));
                    note(&mut p, "no answer in 1 s".into());
                }
            }
        }
        next += Duration::from_millis(200);
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

fn judge(out: &mut Outcome, clean: bool) {
    let mut v = Vec::new();
    v.push(match out.ceiling {
        Some(c) => Verdict {
            name: "peak RSS",
            pass: Some(out.peak <= c + OVERHEAD),
            detail: format!(
                "{} against ceiling {} + {} overhead",
                mib(out.peak),
                mib(c),
                mib(OVERHEAD)
            ),
        },
        None => Verdict {
            name: "peak RSS",
            pass: None,
            detail: format!("{} (no ceiling given or logged: not judged)", mib(out.peak)),
        },
    });
    v.push(Verdict {
        name: "no crash",
        pass: Some(clean),
        detail: out.exit.clone(),
    });
    let p = &out.probes;
    v.push(Verdict {
        name: "/healthz",
        pass: Some(p.count > 0 && p.failed == 0 && p.slow == 0),
        detail: format!(
            "{} probes, max {:.1} ms, {} over 100 ms, {} unanswered, {} answered 503{}",
            p.count,
            p.max.as_secs_f64() * 1000.0,
            p.slow,
            p.failed,
            p.answered_503,
            if p.incidents.is_empty() {
                String::new()
            } else {
                format!(" (at {})", p.incidents.join(", "))
            }
        ),
    });
    let pr = &out.pair;
    let p99 = pr.p99_ms();
    v.push(Verdict {
        name: "well-behaved pair",
        pass: Some(
            pr.error.is_none()
                && pr.lost == 0
                && pr.duplicated == 0
                && pr.received > 0
                && p99.is_some_and(|p| p < PAIR_P99_LIMIT_MS),
        ),
        detail: format!(
            "{} sent, {} received, {} lost, {} duplicated, p99 {}, max {}{}",
            pr.sent,
            pr.received,
            pr.lost,
            pr.duplicated,
            p99.map_or("-".into(), |p| format!("{p:.1} ms")),
            pr.max_ms().map_or("-".into(), |p| format!("{p:.1} ms")),
            pr.error
                .as_ref()
                .map_or(String::new(), |e| format!("; {e}"))
        ),
    });
    let limit = 2 * out.idle + (4 << 20);
    v.push(Verdict {
        name: "memory goes back",
        pass: Some(out.after > 0 && out.after <= limit),
        detail: format!(
            "{} after the recovery, limit {} (2 x idle {} + 4 MiB)",
            mib(out.after),
            mib(limit),
            mib(out.idle)
        ),
    });
    out.verdicts = v;
}

fn timeline_text(o: &Outcome) -> String {
    let t = o.timeline;
    format!(
        "timeline (s since the pair joined): attack +{:.1}, all in +{:.1}, attackers gone +{:.1}, end +{:.1}",
        t[0], t[1], t[2], t[3]
    )
}

fn cpu_text(o: &Outcome) -> String {
    let pct = |c: f64| 100.0 * c / o.window.max(0.001);
    format!(
        "CPU while attacked ({:.1} s): server {:.0} % of a core, attack program {:.0} %",
        o.window,
        pct(o.server_cpu),
        pct(o.attacker_cpu)
    )
}

fn per_conn_text(o: &Outcome) -> Option<String> {
    (o.tally.established > 0 && o.peak > o.idle).then(|| {
        format!(
            "memory per connection in: {:.1} KB ((peak - idle) / {})",
            (o.peak - o.idle) as f64 / o.tally.established as f64 / 1000.0,
            o.tally.established
        )
    })
}

fn summary(map: &std::collections::BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "0".into();
    }
    let total: u64 = map.values().sum();
    let parts: Vec<String> = map.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!("{total} ({})", parts.join(", "))
}

fn plan_text(plan: &Plan) -> String {
    let mut parts: Vec<String> = plan
        .counts
        .iter()
        .map(|(k, n)| format!("{n} {k:?}"))
        .collect();
    if plan.churn {
        parts.push("churn".into());
    }
    parts.join(" + ")
}

/// The table (markdown, which also reads well on a terminal) and the details.
fn render(cfg: &Cfg, outcomes: &[Outcome], command: &str) -> (String, String) {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| attack | in / planned | peak RSS | refused | closed | pair p99 | healthz max | RSS after (idle) | verdict |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|");
    for o in outcomes {
        let verdict = if o.error.is_some() {
            "ERROR".to_string()
        } else if o.passed() {
            "PASS".to_string()
        } else {
            let failed: Vec<&str> = o
                .verdicts
                .iter()
                .filter(|v| v.pass == Some(false))
                .map(|v| v.name)
                .collect();
            format!("FAIL ({})", failed.join(", "))
        };
        let healthz_max = format!("{:.1} ms", o.probes.max.as_secs_f64() * 1000.0);
        let in_planned = if o.attack == Attack::Churn {
            format!("{} cycles", o.tally.churn_cycles)
        } else {
            format!("{} / {}", o.tally.established, o.tally.planned)
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} ({}) | {} |",
            o.attack.name(),
            in_planned,
            mib(o.peak),
            o.tally.refused_total(),
            o.tally.closed_total(),
            o.pair.p99_ms().map_or("-".into(), |p| format!(
                "{p:.1} ms{}",
                if o.pair.lost > 0 {
                    format!(", {} lost", o.pair.lost)
                } else {
                    String::new()
                }
            )),
            healthz_max,
            mib(o.after),
            mib(o.idle),
            verdict
        );
    }
    let mut d = String::new();
    for o in outcomes {
        let _ = writeln!(d, "\n### {}: {}\n", o.attack.name(), plan_text(&o.plan));
        if let Some(e) = &o.error {
            let _ = writeln!(d, "- ERROR (the suite could not run it): {e}");
            continue;
        }
        for v in &o.verdicts {
            let mark = match v.pass {
                Some(true) => "PASS",
                Some(false) => "FAIL",
                None => "SKIP",
            };
            let _ = writeln!(d, "- {mark} {}: {}", v.name, v.detail);
        }
        let tl = &o.tally;
        let _ = writeln!(
            d,
            "- connections: {} planned, {} connected, {} in, {} still held when the attackers left; ramp {:.1} s; {:.1} MiB sent",
            tl.planned,
            tl.connected,
            tl.established,
            tl.held_at_leave,
            tl.ramp.as_secs_f64(),
            tl.bytes_sent as f64 / MIB
        );
        if let Some(t) = per_conn_text(o) {
            let _ = writeln!(d, "- {t}");
        }
        let _ = writeln!(d, "- {}", timeline_text(o));
        let _ = writeln!(d, "- {}; load average {}", cpu_text(o), o.load);
        let _ = writeln!(
            d,
            "- kernel TCP buffers at their peak (machine-wide): {}; listen-queue overflows: {}",
            mib(o.tcp_mem_peak),
            o.listen_overflows
        );
        let _ = writeln!(d, "- server counters: {}", o.counters);
        if o.plan.churn {
            let _ = writeln!(
                d,
                "- churn: {} connect-upgrade-close cycles in {:.1} s ({:.0}/s)",
                tl.churn_cycles,
                tl.churn_secs,
                tl.churn_cycles as f64 / tl.churn_secs.max(0.001)
            );
        }
        let _ = writeln!(d, "- refused: {}", summary(&tl.refused));
        let _ = writeln!(d, "- closed by the server: {}", summary(&tl.closed));
        if !tl.local.is_empty() {
            let _ = writeln!(
                d,
                "- attacker-side failures (not the server's): {}",
                summary(&tl.local)
            );
        }
        let _ = writeln!(d, "- server log: {}", o.log.display());
    }
    let mut md = String::new();
    let _ = writeln!(md, "## Hostile-client suite\n");
    let _ = writeln!(md, "Command: `{command}`\n");
    let _ = writeln!(
        md,
        "Server: `{} --bind 127.0.0.1 --port <free> --no-systemd{}`; {} form (hold {} s, recovery {} s); load average at the end: {}\n",
        cfg.bin.display(),
        cfg.server_args
            .iter()
            .fold(String::new(), |acc, a| acc + " " + a),
        if cfg.short { "short" } else { "full" },
        cfg.hold.as_secs_f64(),
        cfg.recovery.as_secs_f64(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    md.push_str(&t);
    md.push_str(&d);
    (t, md)
}

fn main() {
    let cfg = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hostile: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = std::fs::create_dir_all(&cfg.log_dir) {
        eprintln!("hostile: {}: {e}", cfg.log_dir.display());
        std::process::exit(2);
    }
    // Bounded in time whatever happens: a watchdog ends the process (and, through
    // PR_SET_PDEATHSIG, the server) if the whole run takes far longer than planned.
    let per_attack = cfg.ramp_limit + cfg.hold + cfg.recovery + Duration::from_secs(60);
    let budget = per_attack * cfg.attacks.len() as u32;
    std::thread::spawn(move || {
        std::thread::sleep(budget);
        eprintln!(
            "hostile: still running after {} s: giving up",
            budget.as_secs()
        );
        std::process::exit(3);
    });
    let command = std::env::var("HOSTILE_COMMAND").unwrap_or_else(|_| {
        std::env::args()
            .skip(1)
            .filter(|a| a != "--bench")
            .collect::<Vec<_>>()
            .join(" ")
    });
    let mut outcomes = Vec::new();
    for &attack in &cfg.attacks {
        eprintln!(
            "hostile: attack {} ({})",
            attack.name(),
            plan_text(&cfg.plan(attack))
        );
        let o = run_attack(&cfg, attack);
        if let Some(e) = &o.error {
            eprintln!("hostile:   ERROR {e}");
            // A server that cannot start (a flag it does not know, say) will not start for
            // the next attack either.
            let fatal = e.starts_with("server exited at start");
            outcomes.push(o);
            if fatal {
                break;
            }
            continue;
        }
        for v in &o.verdicts {
            let mark = match v.pass {
                Some(true) => "PASS",
                Some(false) => "FAIL",
                None => "SKIP",
            };
            eprintln!("hostile:   {mark} {}: {}", v.name, v.detail);
        }
        eprintln!(
            "hostile:   in {} of {}, refused {}, closed {}",
            o.tally.established,
            o.tally.planned,
            summary(&o.tally.refused),
            summary(&o.tally.closed)
        );
        eprintln!("hostile:   {}", timeline_text(&o));
        eprintln!("hostile:   {}; load average {}", cpu_text(&o), o.load);
        eprintln!(
            "hostile:   kernel TCP buffers at their peak (machine-wide): {}; listen-queue overflows: {}",
            mib(o.tcp_mem_peak),
            o.listen_overflows
        );
        eprintln!("hostile:   server counters: {}", o.counters);
        if let Some(t) = per_conn_text(&o) {
            eprintln!("hostile:   {t}");
        }
        if o.plan.churn {
            eprintln!(
                "hostile:   churn: {} cycles ({:.0}/s)",
                o.tally.churn_cycles,
                o.tally.churn_cycles as f64 / o.tally.churn_secs.max(0.001)
            );
        }
        outcomes.push(o);
    }
    let (table, md) = render(&cfg, &outcomes, &command);
    println!("{table}");
    if let Some(path) = &cfg.report {
        if let Err(e) = std::fs::write(path, &md) {
            eprintln!("hostile: {}: {e}", path.display());
            std::process::exit(2);
        }
        eprintln!("hostile: report written to {}", path.display());
    }
    let failed = outcomes.iter().filter(|o| !o.passed()).count();
    if failed > 0 {
        eprintln!("hostile: {failed} of {} attacks failed", outcomes.len());
        std::process::exit(1);
    }
}
