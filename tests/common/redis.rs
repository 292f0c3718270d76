//! Test helper: a throw-away `redis-server` on a free 127.0.0.1 port.
//!
//! ```ignore
//! mod common;                      // tests/common/mod.rs: `pub mod redis;`
//! let Some(mut server) = common::redis::RedisServer::start() else { return }; // skipped if not installed
//! let url = server.url();          // "redis://127.0.0.1:<port>"
//! server.stop();                   // simulate an outage (same port is kept)
//! server.restart();                // back on the same port
//! server.pause(); server.resume(); // SIGSTOP/SIGCONT: a hung server
//! ```
//! Install with `apt-get install -y redis-server` (the system service is not
//! needed; this starts its own child process with no persistence).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    extra_args: Vec<String>,
}

impl RedisServer {
    /// Starts `redis-server` on a free port. `None` (with a message on
    /// stderr) if `redis-server` is not installed; panics if it is installed
    /// but does not come up.
    pub fn start() -> Option<RedisServer> {
        Self::start_with_args(&[])
    }

    /// Like `start`, with extra arguments, e.g. `&["--requirepass", "pw"]`.
    pub fn start_with_args(extra: &[&str]) -> Option<RedisServer> {
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            eprintln!(
                "redis-server is not installed (apt-get install -y redis-server): skipping Redis test"
            );
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let mut server = RedisServer {
            port,
            child: None,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.spawn();
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (an outage); `restart` brings it back on the same port.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops (if running) and starts again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Freezes the server with SIGSTOP: connections stay open but nothing is
    /// answered (a hung server / half-open link). `resume` undoes it.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args([sig, &child.id().to_string()])
                .status();
        }
    }

    /// Runs `redis-cli -p <port> args...` and returns its trimmed stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(self.auth_args())
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn auth_args(&self) -> Vec<String> {
        let mut it = self.extra_args.iter();
        while let Some(a) = it.next() {
            if a == "--requirepass"
                && let Some(pw) = it.next()
            {
                return vec!["--no-auth-warning".into(), "-a".into(), pw.clone()];
            }
        }
        Vec::new()
    }

    fn spawn(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut child = Command::new("redis-server")
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .args(["--dir", &std::env::temp_dir().to_string_lossy()])
                .args(&self.extra_args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server");
            // Wait until it answers (PING gets +PONG, or -NOAUTH with requirepass).
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // exited (e.g. port still in use after a restart): retry
                }
                if ping(self.port) {
                    self.child = Some(child);
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            if Instant::now() >= deadline {
                panic!("redis-server did not come up on port {}", self.port);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(n) if n > 0)
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
