//! The binary: flags, exit codes, one-line errors, signals.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_wschat");

fn run(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(BINARY)
        .args(args)
        .env_remove("PORT")
        .output()
        .expect("runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn help_and_version() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--bind",
        "--port",
        "--echo",
        "--static-dir",
        "--log-level",
        "--max-outbound",
    ] {
        assert!(out.contains(flag), "--help lists {flag}");
    }
    let (code, out, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), format!("wschat {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn a_bad_flag_is_a_one_line_error_with_exit_code_2() {
    for args in [
        &["--bogus"][..],
        &["--port", "banana"],
        &["--port"],
        &["--slow-client", "x"],
    ] {
        let (code, out, err) = run(args);
        assert_eq!(code, 2, "{args:?}");
        assert!(out.is_empty());
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("wschat: "), "{err}");
    }
}

#[test]
fn a_port_in_use_is_a_one_line_error_with_exit_code_1() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, _, err) = run(&["--bind", "127.0.0.1", "--port", &port, "--log-level", "off"]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot listen on 127.0.0.1:"), "{err}");
}

#[test]
fn an_unreadable_static_dir_is_an_error_with_exit_code_1() {
    let (code, _, err) = run(&["--static-dir", "/nonexistent/wschat", "--log-level", "off"]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/wschat"), "{err}");
}

/// Starts the binary on a free port and waits for its "listening on" line.
fn spawn(extra: &[&str]) -> (Child, u16) {
    let mut child = Command::new(BINARY)
        .args(["--bind", "127.0.0.1", "--port", "0", "--no-systemd"])
        .args(extra)
        .env_remove("PORT")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let port = loop {
        let line = lines.next().expect("a log line").expect("utf-8");
        if let Some(rest) = line.split("listening on ").nth(1) {
            let address = rest.split_whitespace().next().unwrap();
            break address.rsplit(':').next().unwrap().parse().unwrap();
        }
    };
    // Keep draining the log so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, port)
}

#[test]
fn port_zero_logs_the_address_to_point_a_browser_at() {
    let (mut child, port) = spawn(&[]);
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"));
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn sigterm_and_sigint_drain_and_exit_zero() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let (mut child, port) = spawn(&[]);
        let (mut client, _) =
            tungstenite::connect(format!("ws://127.0.0.1:{port}/")).expect("connects");
        // SAFETY: kill with a child's pid.
        unsafe { libc::kill(child.id() as i32, signal) };
        match client.read() {
            Ok(tungstenite::Message::Close(Some(frame))) => {
                assert_eq!(u16::from(frame.code), 1001)
            }
            other => panic!("expected Close 1001, got {other:?}"),
        }
        // Answer the Close (tungstenite does on the next read), then hang up.
        while client.read().is_ok() {}
        drop(client);
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "exits once clients are gone"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(status.code(), Some(0), "signal {signal}");
    }
}
