//! The binary: flags, exit codes, one-line errors, the address it logs. (Signals are in
//! tests/signals.rs.)

mod common;

use std::net::TcpListener;

use common::*;

#[test]
fn help_and_version() {
    let help = run_binary(&["--help"]);
    assert_eq!(help.code, 0);
    for flag in [
        "--bind",
        "--port",
        "--echo",
        "--static-dir",
        "--log-level",
        "--max-outbound",
    ] {
        assert!(help.stdout.contains(flag), "--help lists {flag}");
    }
    let version = run_binary(&["--version"]);
    assert_eq!(version.code, 0);
    assert_eq!(
        version.stdout.trim(),
        format!("wschat {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_bad_flag_is_a_one_line_error_with_exit_code_2() {
    for args in [
        &["--bogus"][..],
        &["--port", "banana"],
        &["--port"],
        &["--slow-client", "x"],
    ] {
        let ran = run_binary(args);
        assert_eq!(ran.code, 2, "{args:?}");
        assert!(ran.stdout.is_empty());
        assert_eq!(ran.stderr.lines().count(), 1, "{}", ran.stderr);
        assert!(ran.stderr.starts_with("wschat: "), "{}", ran.stderr);
    }
}

#[test]
fn a_port_in_use_is_a_one_line_error_with_exit_code_1() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let ran = run_binary(&["--bind", "127.0.0.1", "--port", &port, "--log-level", "off"]);
    assert_eq!(ran.code, 1);
    assert_eq!(ran.stderr.lines().count(), 1, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("cannot listen on 127.0.0.1:"),
        "{}",
        ran.stderr
    );
}

#[test]
fn an_unreadable_static_dir_is_an_error_with_exit_code_1() {
    let ran = run_binary(&["--static-dir", "/nonexistent/wschat", "--log-level", "off"]);
    assert_eq!(ran.code, 1);
    assert_eq!(ran.stderr.lines().count(), 1, "{}", ran.stderr);
    assert!(ran.stderr.contains("/nonexistent/wschat"), "{}", ran.stderr);
}

#[test]
fn port_zero_logs_the_address_to_point_a_browser_at() {
    // `daemon` asks for port 0 and takes the address from the "listening on" line.
    let daemon = daemon(&["--no-systemd"]);
    assert_ne!(daemon.addr.port(), 0);
    assert_eq!(daemon.get("/healthz").status, 200);
}
