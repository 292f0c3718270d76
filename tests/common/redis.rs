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
//!
//! For `rediss://`, [`TestPki`] makes a throw-away CA and server certificates with `openssl`
//! and [`RedisServer::start_tls`] starts a TLS-only redis-server (no plain port at all) with
//! one of them; its `cli` then speaks TLS too.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    extra_args: Vec<String>,
    /// TLS only: the server's certificate and key, and the CA `cli` verifies it with.
    tls: Option<ServerTls>,
}

#[derive(Clone)]
struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

/// A CA made for one test, in its own temporary directory (removed on drop), by `openssl`:
/// - `ca`: the CA certificate, for `--redis-ca`;
/// - `server_cert`/`server_key`: signed by `ca` for `localhost` and `127.0.0.1`;
/// - `wrong_name_cert`/`wrong_name_key`: signed by `ca`, but for `elsewhere.invalid` only;
/// - `other_ca`: an unrelated CA that signed none of them (the wrong `--redis-ca`).
pub struct TestPki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub wrong_name_cert: PathBuf,
    pub wrong_name_key: PathBuf,
    pub other_ca: PathBuf,
}

impl TestPki {
    /// `None` (with a message on stderr) if `openssl` is not installed; panics if it fails.
    pub fn new() -> Option<TestPki> {
        if Command::new("openssl")
            .arg("version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            eprintln!("openssl is not installed (apt-get install -y openssl): skipping TLS test");
            return None;
        }
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wschat-test-pki-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the PKI directory");
        let pki = TestPki {
            ca: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            wrong_name_cert: dir.join("wrong-name.crt"),
            wrong_name_key: dir.join("wrong-name.key"),
            other_ca: dir.join("other-ca.crt"),
            dir,
        };
        pki.make_ca("ca");
        pki.make_ca("other-ca");
        pki.make_leaf("server", "DNS:localhost,IP:127.0.0.1");
        pki.make_leaf("wrong-name", "DNS:elsewhere.invalid");
        Some(pki)
    }

    /// `<name>.crt` and `<name>.key`: a self-signed P-256 CA, valid for two days.
    fn make_ca(&self, name: &str) {
        openssl(
            &self.dir,
            &format!(
                "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
                 -subj /CN=wschat-test-{name} -keyout {name}.key -out {name}.crt"
            ),
        );
    }

    /// `<name>.crt` and `<name>.key`: a P-256 server certificate for `names` (a
    /// subjectAltName value), signed by `ca`.
    fn make_leaf(&self, name: &str, names: &str) {
        let extensions = format!(
            "subjectAltName={names}\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        );
        std::fs::write(self.dir.join(format!("{name}.ext")), extensions).unwrap();
        openssl(
            &self.dir,
            &format!(
                "req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
                 -subj /CN=wschat-test-{name} -keyout {name}.key -out {name}.csr"
            ),
        );
        openssl(
            &self.dir,
            &format!(
                "x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
                 -extfile {name}.ext -out {name}.crt"
            ),
        );
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `openssl` with `args` (split on white space) in `dir`; panics if it fails.
fn openssl(dir: &Path, args: &str) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args.split_whitespace())
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
            tls: None,
        };
        server.spawn();
        Some(server)
    }

    /// A TLS-only redis-server (`--port 0 --tls-port N`) presenting `cert`/`key`, which must
    /// chain to `pki.ca`; clients are not asked for certificates. `None` as for `start`.
    pub fn start_tls(pki: &TestPki, cert: &Path, key: &Path) -> Option<RedisServer> {
        let mut server = Self::start_with_args(&[])?;
        // That one was plain: the same free port again, for TLS this time.
        server.stop();
        server.tls = Some(ServerTls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            ca: pki.ca.clone(),
        });
        server.spawn();
        Some(server)
    }

    /// `redis://127.0.0.1:PORT`, or `rediss://` for a TLS server.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
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
            .args(self.tls_args())
            .args(self.auth_args())
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn tls_args(&self) -> Vec<String> {
        match &self.tls {
            Some(tls) => vec!["--tls".into(), "--cacert".into(), path_arg(&tls.ca)],
            None => Vec::new(),
        }
    }

    /// How the server listens: `--port N`, or `--port 0 --tls-port N` and its files.
    fn listen_args(&self) -> Vec<String> {
        let port = self.port.to_string();
        match &self.tls {
            None => vec!["--port".into(), port],
            Some(tls) => vec![
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port,
                "--tls-cert-file".into(),
                path_arg(&tls.cert),
                "--tls-key-file".into(),
                path_arg(&tls.key),
                "--tls-ca-cert-file".into(),
                path_arg(&tls.ca),
                "--tls-auth-clients".into(),
                "no".into(),
            ],
        }
    }

    /// Answers PING: over plain TCP, or through `redis-cli --tls` for a TLS server.
    fn answers(&self) -> bool {
        if self.tls.is_none() {
            return ping(self.port);
        }
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(self.tls_args())
            .arg("PING")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output();
        matches!(out, Ok(out) if String::from_utf8_lossy(&out.stdout).trim() == "PONG")
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
                .args(self.listen_args())
                .args(["--bind", "127.0.0.1"])
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
                if self.answers() {
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

fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
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
