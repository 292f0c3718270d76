//! Shared by every integration test: start the real server on 127.0.0.1:0 in a thread, talk to
//! it over real sockets with tungstenite's client (or raw bytes), stop it through its handle.
#![allow(dead_code)]

pub mod redis;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket, stream::MaybeTlsStream};
pub use wschat::Config;
use wschat::{Server, ServerError, ServerHandle};

/// How long a test waits for anything before it fails.
pub const TIMEOUT: Duration = Duration::from_secs(5);

pub type Client = WebSocket<MaybeTlsStream<TcpStream>>;

/// A server running in a thread; stopped (gracefully) on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    handle: ServerHandle,
    thread: Option<JoinHandle<Result<(), ServerError>>>,
}

/// Settings for tests: loopback, a free port, no systemd, no stats line.
pub fn config() -> Config {
    Config {
        bind: "127.0.0.1".parse().unwrap(),
        port: 0,
        systemd: false,
        stats_interval: None,
        ..Config::default()
    }
}

pub fn start(config: Config) -> TestServer {
    let server = Server::bind(config).expect("server binds");
    let addr = server.local_addr();
    let handle = server.handle();
    let thread = std::thread::spawn(move || server.run());
    TestServer {
        addr,
        handle,
        thread: Some(thread),
    }
}

pub fn start_default() -> TestServer {
    start(config())
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Begins the graceful shutdown (Close 1001 to every client) without waiting for it.
    pub fn begin_shutdown(&self) {
        self.handle.shutdown();
    }

    /// Shuts down and waits for the loop to return.
    pub fn stop(mut self) -> Result<(), ServerError> {
        self.handle.shutdown();
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("server thread did not panic")
    }

    /// A WebSocket client in `path`'s room, with read timeouts.
    pub fn client(&self, path: &str) -> Client {
        let (client, response) = tungstenite::connect(self.url(path)).expect("upgrade succeeds");
        assert_eq!(response.status(), 101);
        set_timeout(&client, TIMEOUT);
        client
    }

    /// A raw TCP connection with read and write timeouts.
    pub fn raw(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr).expect("connect");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        stream
    }

    /// A raw connection that has completed the opening handshake for `path`.
    pub fn raw_websocket(&self, path: &str) -> TcpStream {
        let mut stream = self.raw();
        stream.write_all(upgrade_request(path).as_bytes()).unwrap();
        let head = read_head(&mut stream);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        stream
    }

    /// Sends one HTTP request (with `Connection: close`) and returns status, head and body.
    pub fn http(&self, request: &str) -> HttpReply {
        let mut stream = self.raw();
        stream.write_all(request.as_bytes()).unwrap();
        read_reply(&mut stream)
    }

    pub fn get(&self, path: &str) -> HttpReply {
        self.http(&format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        ))
    }

    /// One metric's value from `/metrics` (the first sample whose name and labels match).
    pub fn metric(&self, sample: &str) -> f64 {
        let page = self.get("/metrics").body_text();
        sample_value(&page, sample)
            .unwrap_or_else(|| panic!("no sample {sample} in /metrics:\n{page}"))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.handle.shutdown();
            let _ = thread.join();
        }
    }
}

pub fn set_timeout(client: &Client, timeout: Duration) {
    if let MaybeTlsStream::Plain(stream) = client.get_ref() {
        stream.set_read_timeout(Some(timeout)).unwrap();
    }
}

pub fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Reads up to the end of an HTTP head, byte by byte (so nothing after it is consumed).
pub fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!(
                "connection ended inside a response head ({other:?}): {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    String::from_utf8(head).unwrap()
}

pub struct HttpReply {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response: head, then `Content-Length` bytes of body (or to end of stream).
pub fn read_reply(stream: &mut TcpStream) -> HttpReply {
    let head = read_head(stream);
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    let mut reply = HttpReply {
        status,
        head,
        body: Vec::new(),
    };
    match reply
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(len) => {
            reply.body = vec![0; len];
            stream.read_exact(&mut reply.body).expect("whole body");
        }
        None => {
            let _ = stream.read_to_end(&mut reply.body);
        }
    }
    reply
}

/// A client frame, masked as RFC 6455 requires (or not, to test that rule).
pub fn frame(first_byte: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![first_byte];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        len @ 0..=125 => out.push(mask_bit | len as u8),
        len @ 126..=0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// Reads one server frame from a raw socket: (first byte, payload).
pub fn read_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut header = [0u8; 2];
    stream.read_exact(&mut header).expect("frame header");
    assert_eq!(header[1] & 0x80, 0, "server frames are never masked");
    let len = match header[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            stream.read_exact(&mut b).unwrap();
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            stream.read_exact(&mut b).unwrap();
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0; len];
    stream.read_exact(&mut payload).expect("frame payload");
    (header[0], payload)
}

/// Reads frames until a Close frame; returns its code (None for an empty Close).
pub fn read_close_code(stream: &mut TcpStream) -> Option<u16> {
    loop {
        let (first, payload) = read_frame(stream);
        if first & 0x0f == 0x8 {
            return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
        }
    }
}

/// Reads the next data message, answering nothing else (pings are answered by tungstenite).
pub fn next_message(client: &mut Client) -> Message {
    loop {
        match client.read() {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => return m,
            Ok(Message::Close(frame)) => panic!("closed: {frame:?}"),
            Ok(_) => continue,
            Err(e) => panic!("read failed: {e}"),
        }
    }
}

pub fn next_text(client: &mut Client) -> String {
    match next_message(client) {
        Message::Text(text) => text.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// Asserts that nothing arrives within `wait`.
pub fn assert_silent(client: &mut Client, wait: Duration) {
    set_timeout(client, wait);
    match client.read() {
        Err(tungstenite::Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("expected silence, got {other:?}"),
    }
    set_timeout(client, TIMEOUT);
}

/// Reads until the server's Close arrives; returns its code.
pub fn expect_close(client: &mut Client) -> CloseCode {
    loop {
        match client.read() {
            Ok(Message::Close(Some(frame))) => return frame.code,
            Ok(Message::Close(None)) => panic!("close without a code"),
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

/// Reads (and discards) until the server ends the connection: end of stream or a reset.
/// Panics if the read timeout passes first.
pub fn wait_for_eof(stream: &mut TcpStream) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("the server did not end the connection")
            }
            Err(_) => return,
        }
    }
}

/// Polls `condition` until it holds or `TIMEOUT` passes.
pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < TIMEOUT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until the server counts `n` open WebSockets (joins are asynchronous to the client).
pub fn wait_for_members(server: &TestServer, n: usize) {
    eventually(&format!("{n} websockets"), || {
        server.metric("wschat_websockets_open") as usize == n
    });
}

// ------------------------------------------------------------------------------------------
// The real binary as a child process (signals, systemd, the stats log).

/// A plain HTTP GET (with `Connection: close`) to any address.
pub fn http_get(addr: SocketAddr, path: &str) -> HttpReply {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
    read_reply(&mut stream)
}

/// One sample's value from a `/metrics` page (name and labels exactly as written).
pub fn sample_value(page: &str, sample: &str) -> Option<f64> {
    page.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == sample).then(|| value.parse().ok()).flatten()
    })
}

/// The wschat binary running as a child (from [`daemon`] or [`spawn_daemon`]), its stderr
/// (the log) collected line by line.
/// Killed on drop if still running.
pub struct Spawned {
    pub child: std::process::Child,
    /// The address from its "listening on ADDR" line (0.0.0.0 replaced by 127.0.0.1).
    pub addr: SocketAddr,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// A command for the wschat binary with `args`, the systemd variables cleared.
pub fn daemon_command(args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_wschat"));
    command.args(args);
    for var in [
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "PORT",
        "WSCHAT_REDIS",
    ] {
        command.env_remove(var);
    }
    command
}

/// Runs the binary on 127.0.0.1, a free port, with `args` added.
pub fn daemon(args: &[&str]) -> Spawned {
    spawn_daemon(daemon_command(&local_args(args)))
}

/// Like [`daemon`], with the child's open-file limits set to (soft, hard) before it starts.
pub fn daemon_with_open_files(args: &[&str], soft: u64, hard: u64) -> Spawned {
    use std::os::unix::process::CommandExt;
    let mut command = daemon_command(&local_args(args));
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

fn local_args<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["--bind", "127.0.0.1", "--port", "0"];
    all.extend_from_slice(args);
    all
}

/// Spawns a prepared command and waits for its "listening on ADDR" log line.
pub fn spawn_daemon(mut command: std::process::Command) -> Spawned {
    use std::io::BufRead;
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().expect("spawn wschat");
    let stderr = child.stderr.take().unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    let mut daemon = Spawned {
        child,
        addr: "127.0.0.1:0".parse().unwrap(),
        lines,
    };
    let line = daemon.wait_for_line("the listening line", |l| l.contains("listening on "));
    let addr: SocketAddr = line
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    daemon.addr = if addr.ip().is_unspecified() {
        SocketAddr::new([127, 0, 0, 1].into(), addr.port())
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

    /// Waits for a log line matching `matches` (looking at every line so far); returns it.
    pub fn wait_for_line(&mut self, what: &str, mut matches: impl FnMut(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| matches(l)) {
                return line;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "wschat exited ({status}) before {what}; log:\n{}",
                    self.lines().join("\n")
                );
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "timed out waiting for {what}; log:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn get(&self, path: &str) -> HttpReply {
        http_get(self.addr, path)
    }

    pub fn metric(&self, sample: &str) -> f64 {
        let page = self.get("/metrics").body_text();
        sample_value(&page, sample).unwrap_or_else(|| panic!("no sample {sample} in:\n{page}"))
    }

    pub fn client(&self, path: &str) -> Client {
        let (client, response) =
            tungstenite::connect(format!("ws://{}{}", self.addr, path)).expect("upgrade succeeds");
        assert_eq!(response.status(), 101);
        set_timeout(&client, TIMEOUT);
        client
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Its log so far, one string.
    pub fn log_text(&self) -> String {
        self.lines().join("\n")
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

    /// Waits for the process to exit, at most `within`; None if it is still running.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if start.elapsed() >= within {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
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
