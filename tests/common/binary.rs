//! The real `wschat` binary as a child process: for what only a process has (flags and exit
//! codes, signals, systemd's descriptors and variables, the log, its RSS and CPU time).
//!
//! `WSCHAT_TEST_RUNNER`, when set, is the command that runs the binary, split on white space
//! (`qemu-aarch64`, `qemu-arm -L /usr/arm-linux-gnueabihf`): the child is then
//! `$WSCHAT_TEST_RUNNER <binary> args...`. qemu-user runs the guest in its own process, so
//! the child's pid, signals, descriptors and rlimits are the binary's.

use std::ffi::OsString;
use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Endpoint, eventually, timeout};

/// Variables that would change what the binary does (systemd's, the port, Redis): cleared in
/// every child so the test's own environment cannot leak in.
const CLEARED: &[&str] = &[
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "PORT",
    "WSCHAT_REDIS",
];

/// The words that start the binary: `$WSCHAT_TEST_RUNNER`'s (if any), then its path.
pub fn binary_argv() -> Vec<OsString> {
    let mut argv: Vec<OsString> = std::env::var("WSCHAT_TEST_RUNNER")
        .unwrap_or_default()
        .split_whitespace()
        .map(OsString::from)
        .collect();
    argv.push(env!("CARGO_BIN_EXE_wschat").into());
    argv
}

/// A command for the binary with `args`, through the runner, the variables in [`CLEARED`]
/// removed.
pub fn binary_command(args: &[&str]) -> Command {
    let argv = binary_argv();
    let mut command = Command::new(&argv[0]);
    command.args(&argv[1..]).args(args);
    for var in CLEARED {
        command.env_remove(var);
    }
    command
}

/// What a run to completion printed, and how it ended.
pub struct Ran {
    /// The exit code; -1 if a signal ended it.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the binary with `args` (and no other input) to completion.
pub fn run_binary(args: &[&str]) -> Ran {
    let output = binary_command(args)
        .stdin(Stdio::null())
        .output()
        .expect("run wschat");
    Ran {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A command for the binary on 127.0.0.1, a free port, with `args` added.
pub fn daemon_command(args: &[&str]) -> Command {
    let mut all = vec!["--bind", "127.0.0.1", "--port", "0"];
    all.extend_from_slice(args);
    binary_command(&all)
}

/// Runs the binary on 127.0.0.1, a free port, with `args` added.
pub fn daemon(args: &[&str]) -> Spawned {
    spawn_daemon(daemon_command(args))
}

/// Like [`daemon`], with the child's open-file limits set to (soft, hard) before it starts.
pub fn daemon_with_open_files(args: &[&str], soft: libc::rlim_t, hard: libc::rlim_t) -> Spawned {
    use std::os::unix::process::CommandExt;
    let mut command = daemon_command(args);
    // SAFETY: setrlimit is async-signal-safe; it runs in the child before exec.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    spawn_daemon(command)
}

/// The binary running as a child (from [`daemon`] or [`spawn_daemon`]), its stderr (the log)
/// collected line by line. Killed on drop if still running.
pub struct Spawned {
    pub child: Child,
    /// The address from its "listening on ADDR" line (0.0.0.0 replaced by 127.0.0.1).
    pub addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    /// Set once the log reader has seen the end of stderr: every line is in `lines`.
    log_ended: Arc<AtomicBool>,
}

/// Spawns a prepared command and waits for its "listening on ADDR" log line.
pub fn spawn_daemon(mut command: Command) -> Spawned {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn wschat");
    let stderr = child.stderr.take().expect("stderr is piped");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let log_ended = Arc::new(AtomicBool::new(false));
    let (sink, ended) = (lines.clone(), log_ended.clone());
    // Drains the log for as long as the child writes, so it never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
        ended.store(true, Ordering::Release);
    });
    let mut daemon = Spawned {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        lines,
        log_ended,
    };
    let line = daemon.wait_for_line("the listening line", |l| l.contains("listening on "));
    let addr: SocketAddr = line
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    daemon.addr = if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    daemon
}

impl Spawned {
    /// Every log line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Its log so far, one string.
    pub fn log_text(&self) -> String {
        self.lines().join("\n")
    }

    /// How many log lines so far contain `text`.
    pub fn count_lines(&self, text: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(text)).count()
    }

    /// Waits for a log line matching `matches` (looking at every line so far); returns it.
    pub fn wait_for_line(&mut self, what: &str, mut matches: impl FnMut(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            // Checked before the lines: once it is set, no line can come after this look.
            let log_ended = self.log_ended.load(Ordering::Acquire);
            if let Some(line) = self.lines().into_iter().find(|l| matches(l)) {
                return line;
            }
            // An exit is final only once its last lines have been read from the pipe.
            if let (true, Ok(Some(status))) = (log_ended, self.child.try_wait()) {
                panic!(
                    "wschat exited ({status}) before {what}; log:\n{}",
                    self.log_text()
                );
            }
            assert!(
                start.elapsed() < timeout(),
                "timed out waiting for {what}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// One line of `/proc/<pid>/status` as a number (e.g. "VmRSS" in KiB).
    pub fn status_kib(&self, field: &str) -> u64 {
        proc_status_kib(self.child.id(), field)
    }

    /// CPU time (user + system) the process has used, from `/proc/<pid>/stat`.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the command name (which may contain spaces) start after the last ')'.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf only reads a constant.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_millis(ticks * 1000 / per_second)
    }

    /// Sends a signal to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our own child.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0, "kill failed");
    }

    /// Waits for the process to exit, at most `within`; None if it is still running. After
    /// an exit, [`Self::lines`] holds the whole log.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                eventually("the end of the log", || {
                    self.log_ended.load(Ordering::Acquire)
                });
                return Some(status);
            }
            if start.elapsed() >= within {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` and waits (at most [`timeout`]) for the exit; returns the exit code.
    pub fn stop(&mut self, signal: i32) -> Option<i32> {
        self.signal(signal);
        let status = self.wait_exit(timeout());
        status
            .unwrap_or_else(|| panic!("still running after signal {signal}"))
            .code()
    }
}

impl Endpoint for Spawned {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A number from `/proc/<pid>/status` ("VmRSS", "VmHWM", ... in KiB).
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix(field)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}
