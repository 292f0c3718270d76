//! `--reuse-port`: several processes share one port and the kernel spreads new connections
//! across them.

mod common;

use std::net::TcpListener;

use common::*;

/// A free port on loopback (bound and released; the daemons bind it next).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[test]
fn two_processes_share_one_port_and_both_get_clients() {
    let port = free_port().to_string();
    let args = [
        "--bind",
        "127.0.0.1",
        "--port",
        &port,
        "--reuse-port",
        "--no-systemd",
    ];
    let mut first = spawn_daemon(binary_command(&args));
    let mut second = spawn_daemon(binary_command(&args));
    assert_eq!(first.addr, second.addr, "both listen on the same address");
    // The kernel picks a process by a hash of the connection's addresses: with 24 clients the
    // chance that one process gets none is 2^-23.
    let clients: Vec<_> = (0..24).map(|_| first.addr.client("/shared")).collect();
    eventually("24 upgrades logged", || {
        first.count_lines("opened room=") + second.count_lines("opened room=") == 24
    });
    assert!(
        first.count_lines("opened room=") > 0,
        "the first process got none"
    );
    assert!(
        second.count_lines("opened room=") > 0,
        "the second process got none"
    );
    drop(clients);
    assert_eq!(first.stop(libc::SIGTERM), Some(0));
    assert_eq!(second.stop(libc::SIGTERM), Some(0));
}

#[test]
fn without_the_flag_a_second_process_cannot_bind_the_port() {
    let port = free_port().to_string();
    let mut first = spawn_daemon(binary_command(&[
        "--bind",
        "127.0.0.1",
        "--port",
        &port,
        "--no-systemd",
    ]));
    let second = run_binary(&["--bind", "127.0.0.1", "--port", &port, "--no-systemd"]);
    assert_eq!(second.code, 1);
    assert!(
        second.stderr.contains("cannot listen on"),
        "{}",
        second.stderr
    );
    assert_eq!(first.stop(libc::SIGTERM), Some(0));
}
