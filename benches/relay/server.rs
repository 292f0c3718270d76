//! Starting, watching and stopping the servers under test.
//!
//! Every server is a fresh child process pinned to CPU 0 (the generator pins
//! itself to CPU 1), with PR_SET_PDEATHSIG so it dies with the harness, and a
//! guard whose Drop stops it (SIGTERM, then SIGKILL) also when a run panics.

use crate::stats;
use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Wschat,
    /// A second wschat binary, `$WSCHAT_BIN2` (e.g. an older commit's build), run interleaved
    /// with the first so that before/after ratios come from the same rounds.
    Wschat2,
    /// The physical limit: the minimal relay of `limit.rs`, this binary run again.
    Limit,
    Node,
    Bun,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "wschat" => Some(Kind::Wschat),
            "wschat2" => Some(Kind::Wschat2),
            "limit" => Some(Kind::Limit),
            "node" => Some(Kind::Node),
            "bun" => Some(Kind::Bun),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Wschat => "wschat",
            Kind::Wschat2 => "wschat2",
            Kind::Limit => "limit",
            Kind::Node => "node",
            Kind::Bun => "bun",
        }
    }
}

/// The wschat binary under test: the one cargo built with the bench, or `$WSCHAT_BIN` (for
/// another build of the same code, e.g. the static musl one; see docs/benchmarks.md).
pub fn wschat_bin() -> String {
    std::env::var("WSCHAT_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_wschat").to_string())
}

/// The second wschat binary (`Kind::Wschat2`): `$WSCHAT_BIN2`.
pub fn wschat2_bin() -> Option<String> {
    std::env::var("WSCHAT_BIN2").ok().filter(|s| !s.is_empty())
}

pub fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bench-peers")
}

fn bun_bin() -> PathBuf {
    // The real executable, not a wrapper, so /proc/PID is the server itself.
    peers_dir().join("node_modules/bun/bin/bun.exe")
}

/// Err explains why a server cannot run here (a peer not installed).
pub fn check_available(kind: Kind) -> Result<(), String> {
    let hint = "(run bench-peers/install.sh)";
    match kind {
        Kind::Wschat | Kind::Limit => Ok(()),
        Kind::Wschat2 => match wschat2_bin() {
            Some(_) => Ok(()),
            None => Err("wschat2: set WSCHAT_BIN2 to a wschat binary".into()),
        },
        Kind::Node => {
            let ok = Command::new("node")
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err(format!("peer node: node is not on PATH {hint}"));
            }
            if !peers_dir().join("node_modules/ws/package.json").exists() {
                return Err(format!("peer node: not installed {hint}"));
            }
            Ok(())
        }
        Kind::Bun => {
            let ok = Command::new(bun_bin())
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                Ok(())
            } else {
                Err(format!("peer bun: not installed {hint}"))
            }
        }
    }
}

/// Whether the wschat binary lists `flag` in its --help.
pub fn wschat_supports(flag: &str) -> bool {
    Command::new(wschat_bin())
        .arg("--help")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).contains(flag)
                || String::from_utf8_lossy(&o.stderr).contains(flag)
        })
        .unwrap_or(false)
}

/// `cmd` run under `$RELAY_SERVER_WRAPPER` when set (words split on spaces), e.g.
/// `valgrind --tool=callgrind`: the wrapper execs the server in the same process, so its CPU
/// is still the server's (see docs/benchmarks.md, "Where the CPU goes").
fn wrapped(cmd: Command) -> Command {
    let Ok(wrapper) = std::env::var("RELAY_SERVER_WRAPPER") else {
        return cmd;
    };
    let mut words = wrapper.split_ascii_whitespace();
    let Some(first) = words.next() else {
        return cmd;
    };
    let mut outer = Command::new(first);
    outer
        .args(words)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    outer
}

pub fn on_path(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(prog))
            .find(|p| p.is_file())
    })
}

pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub struct Options {
    pub echo: bool,
    pub max_connections: Option<usize>,
    pub extra: Vec<String>,
    /// Certificate and key: the server also listens for TLS on a second port (`tls_addr`);
    /// the first stays plain for the readiness probe and /metrics.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Listen on this port instead of a free one (several processes on one port).
    pub port: Option<u16>,
}

/// A running server process; stopped on drop.
pub struct ServerProc {
    child: Child,
    pub pid: u32,
    pub addr: SocketAddrV4,
    /// The TLS listener, when started with `Options::tls`.
    pub tls_addr: Option<SocketAddrV4>,
    pub name: String,
    log: PathBuf,
}

impl ServerProc {
    pub fn start(kind: Kind, opts: &Options, log_dir: &Path, tag: &str) -> Result<Self, String> {
        let port = match opts.port {
            Some(p) => p,
            None => free_port().map_err(|e| format!("free port: {e}"))?,
        };
        let tls_port = match opts.tls {
            Some(_) if kind == Kind::Limit => return Err("limit speaks no TLS".into()),
            Some(_) => Some(free_port().map_err(|e| format!("free port: {e}"))?),
            None => None,
        };
        let mut cmd = match kind {
            Kind::Wschat | Kind::Wschat2 => {
                let bin = match kind {
                    Kind::Wschat2 => wschat2_bin().ok_or("WSCHAT_BIN2 is not set")?,
                    _ => wschat_bin(),
                };
                let mut c = Command::new(bin);
                c.args(["--bind", "127.0.0.1", "--port", &port.to_string()]);
                c.args(["--log-level", "warn"]);
                if opts.echo {
                    c.arg("--echo");
                }
                if let Some(n) = opts.max_connections {
                    c.args(["--max-connections", &n.to_string()]);
                }
                c
            }
            Kind::Limit => {
                let exe = std::env::current_exe().map_err(|e| format!("limit: own path: {e}"))?;
                let mut c = Command::new(exe);
                c.args([crate::LIMIT_ARG, "--port", &port.to_string()]);
                if opts.echo {
                    c.arg("--echo");
                }
                c
            }
            Kind::Node => {
                let mut c = Command::new("node");
                c.arg(peers_dir().join("node-server.js"));
                c.args(["--port", &port.to_string()]);
                if opts.echo {
                    c.arg("--echo");
                }
                c
            }
            Kind::Bun => {
                let mut c = Command::new(bun_bin());
                c.arg(peers_dir().join("bun-server.js"));
                c.args(["--port", &port.to_string()]);
                if opts.echo {
                    c.arg("--echo");
                }
                c
            }
        };
        // The same flags for wschat and both peers.
        if let (Some((cert, key)), Some(tls_port)) = (&opts.tls, tls_port) {
            cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
            cmd.args(["--tls-port", &tls_port.to_string()]);
        }
        cmd.args(&opts.extra);
        let cmd = wrapped(cmd);
        // The limit has no HTTP routes: ready once its port accepts.
        let health = kind != Kind::Limit;
        let mut p = Self::spawn(cmd, kind.name(), port, log_dir, tag, health)?;
        p.tls_addr = tls_port.map(|t| SocketAddrV4::new([127, 0, 0, 1].into(), t));
        Ok(p)
    }

    /// Spawns `cmd` pinned to CPU 0, logging to `log_dir/<name>-<tag>.log`; waits
    /// for GET /healthz = 200 when `health`, else for the port to accept.
    pub fn spawn(
        mut cmd: Command,
        name: &str,
        port: u16,
        log_dir: &Path,
        tag: &str,
        health: bool,
    ) -> Result<Self, String> {
        let log = log_dir.join(format!("{name}-{tag}.log"));
        let file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let file2 = file.try_clone().map_err(|e| e.to_string())?;
        cmd.stdin(Stdio::null()).stdout(file).stderr(file2);
        let pin = crate::cpus() >= 2;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if pin {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(0, &mut set);
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("{name}: spawn {:?}: {e}", cmd.get_program()))?;
        let mut s = ServerProc {
            pid: child.id(),
            child,
            addr: SocketAddrV4::new([127, 0, 0, 1].into(), port),
            tls_addr: None,
            name: name.to_string(),
            log,
        };
        s.wait_ready(health, Instant::now() + Duration::from_secs(15))?;
        Ok(s)
    }

    fn wait_ready(&mut self, health: bool, deadline: Instant) -> Result<(), String> {
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(format!(
                    "{} exited early ({st}); {}",
                    self.name,
                    self.log_tail()
                ));
            }
            if probe(self.addr, health) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} not ready after 15 s; {}",
                    self.name,
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = s.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("log {}: {}", self.log.display(), tail.join(" | "))
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn cpu(&self) -> Duration {
        stats::proc_cpu(self.pid).unwrap_or_default()
    }

    pub fn rss_kb(&self) -> u64 {
        stats::proc_rss_kb(self.pid).unwrap_or(0)
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn probe(addr: SocketAddrV4, health: bool) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr.into(), Duration::from_millis(500)) else {
        return false;
    };
    if !health {
        return true;
    }
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let req = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    buf[..n].starts_with(b"HTTP/1.1 200")
}

/// A GET with `Connection: close`; the whole response (head and body), or None.
fn http_get(addr: SocketAddrV4, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    String::from_utf8(out).ok()
}

/// One sample of a server's `/metrics` page (a line `name value`), or None.
pub fn metric(addr: SocketAddrV4, sample: &str) -> Option<f64> {
    let page = http_get(addr, "/metrics")?;
    page.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == sample)
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

/// `PUBSUB NUMSUB channel` on a Redis server: how many connections subscribe to it.
pub fn redis_numsub(redis: SocketAddrV4, channel: &str) -> Option<i64> {
    let mut s = TcpStream::connect_timeout(&redis.into(), Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let cmd = format!(
        "*3\r\n$6\r\nPUBSUB\r\n$6\r\nNUMSUB\r\n${}\r\n{channel}\r\n",
        channel.len()
    );
    s.write_all(cmd.as_bytes()).ok()?;
    // The reply is *2 $len channel :count; read until the integer line is complete.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        let text = String::from_utf8_lossy(&buf);
        if let Some(line) = text.split("\r\n").find(|l| l.starts_with(':'))
            && text.ends_with("\r\n")
        {
            return line[1..].parse().ok();
        }
        if text.starts_with('-') && text.ends_with("\r\n") {
            return None; // an error reply
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// `INFO clients` on a Redis server: its `connected_clients`, or None.
pub fn redis_clients(redis: SocketAddrV4) -> Option<i64> {
    let mut s = TcpStream::connect_timeout(&redis.into(), Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"*2\r\n$4\r\nINFO\r\n$7\r\nclients\r\n").ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let text = String::from_utf8_lossy(&buf);
        // A bulk string: $len, then the text; the count is on its own line.
        if let Some(line) = text
            .split_inclusive('\n')
            .find(|l| l.starts_with("connected_clients:") && l.ends_with('\n'))
        {
            // This probe is a client too.
            return line["connected_clients:".len()..]
                .trim()
                .parse::<i64>()
                .ok()
                .map(|n| n - 1);
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Cross-node runs: the Redis server and the channel of the benchmark room, and the
/// wschat nodes that must all be linked to it before a run may start.
pub struct Bus {
    pub redis: SocketAddrV4,
    pub channel: String,
    pub nodes: Vec<SocketAddrV4>,
}

impl Bus {
    /// Waits until every node reports `wschat_redis_up 1` in /metrics.
    pub fn wait_links_up(&self, deadline: Instant) -> Result<(), String> {
        loop {
            let down: Vec<String> = self
                .nodes
                .iter()
                .filter(|&&n| metric(n, "wschat_redis_up") != Some(1.0))
                .map(|n| n.to_string())
                .collect();
            if down.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("Redis link not up on {}", down.join(", ")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Subscribers Redis counts on the room's channel (one per node with members).
    pub fn subscribers(&self) -> Option<i64> {
        redis_numsub(self.redis, &self.channel)
    }
}

/// The servers of one run: CPU and memory are summed over them (cross-node runs
/// have several processes).
pub struct Target {
    pub procs: Vec<ServerProc>,
    pub pub_addr: SocketAddrV4,
    pub sub_addr: SocketAddrV4,
    /// Set for cross-node runs: the generator waits for the bus before sending.
    pub bus: Option<Bus>,
}

impl Target {
    /// One server; the clients use its TLS port when it has one.
    pub fn single(p: ServerProc) -> Target {
        let addr = p.tls_addr.unwrap_or(p.addr);
        Target {
            pub_addr: addr,
            sub_addr: addr,
            procs: vec![p],
            bus: None,
        }
    }

    pub fn cpu(&self) -> Duration {
        self.procs.iter().map(|p| p.cpu()).sum()
    }

    pub fn rss_kb(&self) -> u64 {
        self.procs.iter().map(|p| p.rss_kb()).sum()
    }

    /// Err when a server process has exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        for p in &mut self.procs {
            if !p.alive() {
                return Err(format!("{} died; {}", p.name, p.log_tail()));
            }
        }
        Ok(())
    }
}
