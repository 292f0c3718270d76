//! The server under attack: a fresh `wschat` process per attack, its memory read from
//! /proc, stopped with SIGTERM at the end (and killed with the harness on any other exit).

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How the server ended when we stopped it.
pub enum Exit {
    /// Exited by itself with this status after our SIGTERM.
    Clean,
    /// Exited with a non-zero status or by a signal (the text says which).
    Unclean(String),
    /// Had already exited before we stopped it: a crash (or an OOM kill).
    DiedEarly(String),
    /// Did not exit within the grace period and was killed.
    Hung,
}

/// A running server; killed on drop unless `stop` ran. PR_SET_PDEATHSIG kills it too when
/// the harness dies by a signal (Ctrl-C, `timeout`), so no exit path leaves it behind.
pub struct ServerProc {
    child: Child,
    pub pid: u32,
    pub addr: SocketAddrV4,
    pub log: PathBuf,
    stopped: bool,
}

pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl ServerProc {
    /// Starts `bin --bind 127.0.0.1 --port <free> --no-systemd ARGS`, logging to `log`, and
    /// waits for GET /healthz to answer 200.
    pub fn start(bin: &Path, args: &[String], log: &Path) -> Result<ServerProc, String> {
        let port = free_port().map_err(|e| format!("free port: {e}"))?;
        let file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let file2 = file.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(bin);
        cmd.args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--no-systemd",
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(file2);
        // SAFETY: only an async-signal-safe call between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        let mut s = ServerProc {
            pid: child.id(),
            child,
            addr: SocketAddrV4::new([127, 0, 0, 1].into(), port),
            log: log.to_path_buf(),
            stopped: false,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(st)) = s.child.try_wait() {
                s.stopped = true;
                return Err(format!("server exited at start ({st}): {}", s.log_tail(3)));
            }
            if healthz(s.addr, Duration::from_secs(1)).is_some_and(|(code, _)| code == 200) {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                return Err(format!("server not ready after 15 s: {}", s.log_tail(3)));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_tail(&self, n: usize) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut tail: Vec<&str> = s.lines().rev().take(n).collect();
        tail.reverse();
        format!("{} [{}]", tail.join(" | "), self.log.display())
    }

    /// The ceiling the server states in its log (`memory ceiling: N bytes`), if it does.
    pub fn logged_ceiling(&self) -> Option<u64> {
        let s = std::fs::read_to_string(&self.log).ok()?;
        s.lines().find_map(|line| {
            let rest = &line[line.find("memory ceiling: ")? + "memory ceiling: ".len()..];
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            rest[digits.len()..]
                .starts_with(" bytes")
                .then(|| digits.parse().ok())
                .flatten()
        })
    }

    /// True while the process runs (a zombie does not count: it has exited).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `VmRSS` and `VmHWM` (peak) in bytes, or None once the process is gone.
    pub fn memory(&self) -> Option<(u64, u64)> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let field = |name: &str| -> Option<u64> {
            let line = s.lines().find(|l| l.starts_with(name))?;
            let kb: u64 = line[name.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            Some(kb * 1024)
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// CPU time (user + system) the server has used so far.
    pub fn cpu(&self) -> Option<Duration> {
        proc_cpu(&format!("/proc/{}/stat", self.pid))
    }

    /// Sends SIGTERM and waits up to `grace` for the exit.
    pub fn stop(&mut self, grace: Duration) -> Exit {
        self.stopped = true;
        if let Ok(Some(st)) = self.child.try_wait() {
            return Exit::DiedEarly(describe(st));
        }
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return if st.success() {
                    Exit::Clean
                } else {
                    Exit::Unclean(describe(st))
                };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Exit::Hung
    }
}

/// User + system CPU time of a process from its `/proc/.../stat`.
pub fn proc_cpu(path: &str) -> Option<Duration> {
    let s = std::fs::read_to_string(path).ok()?;
    // The command name may hold spaces: the fields we want follow its closing ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_millis(ticks * 1000 / hz))
}

fn describe(st: std::process::ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => st.to_string(),
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// GET /healthz on a fresh connection: the status code and the time from connect to the
/// status line, or None when no status line came within `timeout`.
pub fn healthz(addr: SocketAddrV4, timeout: Duration) -> Option<(u16, Duration)> {
    let t0 = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr.into(), timeout).ok()?;
    let _ = s.set_nodelay(true);
    let left = timeout.checked_sub(t0.elapsed())?;
    s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut buf[n..]) {
            Ok(0) | Err(_) => return None,
            Ok(k) => n += k,
        }
    }
    let took = t0.elapsed();
    let code = std::str::from_utf8(&buf[9..12]).ok()?.parse().ok()?;
    Some((code, took))
}

/// The server's /metrics page, or None.
pub fn metrics(addr: SocketAddrV4) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    String::from_utf8(out).ok()
}

/// What the server counted during an attack, from its /metrics page: refusals and closes
/// by reason, dropped messages, slow loop passes, and its memory figures if it has them.
pub fn counters(page: &str) -> String {
    let mut parts = Vec::new();
    let mut loop_le = std::collections::BTreeMap::new();
    let mut loop_all = 0.0;
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        if let Some(le) = name
            .strip_prefix("wschat_loop_iteration_seconds_bucket{le=\"")
            .and_then(|r| r.strip_suffix("\"}"))
        {
            if le == "+Inf" {
                loop_all = v;
            } else {
                loop_le.insert(le.to_string(), v);
            }
            continue;
        }
        let wanted = name.starts_with("wschat_connections_refused_total")
            || name.starts_with("wschat_connections_closed_total")
            || name.starts_with("wschat_messages_dropped_total")
            || name.starts_with("wschat_slow_client_closes_total")
            || name.contains("memory") && !name.starts_with("process_");
        if wanted && v != 0.0 {
            let short = name.strip_prefix("wschat_").unwrap_or(name);
            parts.push(format!("{short} {value}"));
        }
    }
    for le in ["0.05", "0.1", "0.5"] {
        if let Some(n) = loop_le.get(le) {
            let over = loop_all - n;
            if over > 0.0 {
                parts.push(format!("loop passes over {le} s: {over}"));
            }
        }
    }
    if parts.is_empty() {
        "nothing refused, closed or dropped".into()
    } else {
        parts.join("; ")
    }
}

/// A size with an optional K, M or G suffix (powers of 1024), as wschat reads them.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 1u64 << 10),
        (i, 'm' | 'M') => (&s[..i], 1 << 20),
        (i, 'g' | 'G') => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

/// The value of `--max-memory` in a server argument list, if given.
pub fn ceiling_arg(args: &[String]) -> Option<u64> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--max-memory" {
            return it.next().and_then(|v| parse_size(v));
        }
        if let Some(v) = a.strip_prefix("--max-memory=") {
            return parse_size(v);
        }
    }
    None
}
