//! The systemd protocols, spoken to the real binary the way systemd speaks them: a listening
//! socket passed as descriptor 3 with LISTEN_FDS/LISTEN_PID (socket activation), and a
//! datagram socket named by NOTIFY_SOCKET receiving READY=1, WATCHDOG=1 and STOPPING=1.

mod common;

use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;

/// The manager's end of NOTIFY_SOCKET: a bound datagram socket.
struct Manager {
    socket: UnixDatagram,
    /// What to put in NOTIFY_SOCKET.
    name: String,
    path: Option<std::path::PathBuf>,
}

impl Manager {
    fn at_path(tag: &str) -> Manager {
        let path = std::env::temp_dir().join(format!("wschat-notify-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(timeout())).unwrap();
        Manager {
            socket,
            name: path.to_str().unwrap().to_string(),
            path: Some(path),
        }
    }

    fn abstract_name(tag: &str) -> Manager {
        let name = format!("wschat-notify-{tag}-{}", std::process::id());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&address).unwrap();
        socket.set_read_timeout(Some(timeout())).unwrap();
        Manager {
            socket,
            name: format!("@{name}"),
            path: None,
        }
    }

    /// The next state datagram, as text.
    fn next(&self) -> String {
        let mut buffer = [0u8; 4096];
        let n = self.socket.recv(&mut buffer).expect("a notification");
        String::from_utf8(buffer[..n].to_vec()).unwrap()
    }

    /// Waits for `state`, returning the ones seen before it.
    fn wait_for(&self, state: &str) -> Vec<String> {
        let mut before = Vec::new();
        loop {
            let got = self.next();
            if got == state {
                return before;
            }
            before.push(got);
        }
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The binary started as systemd starts a socket-activated service: `listener` as descriptor
/// 3, LISTEN_FDS=1, and LISTEN_PID set to the pid that execs wschat (by a shell wrapper that
/// sets it to its own pid and then execs, as systemd sets it in the forked child).
fn activated(listener: &TcpListener, extra_env: &[(&str, &str)], args: &[&str]) -> Spawned {
    let mut command = std::process::Command::new("/bin/sh");
    // Through the runner, if any: qemu-user keeps the pid, so LISTEN_PID still matches.
    command
        .arg("-c")
        .arg(r#"LISTEN_PID=$$ exec "$0" "$@""#)
        .args(binary_argv())
        .args(args);
    // The same clean environment as every other spawned daemon.
    for (key, _) in binary_command(&[]).get_envs() {
        command.env_remove(key);
    }
    command.env("LISTEN_FDS", "1");
    for (key, value) in extra_env {
        command.env(key, value);
    }
    let fd = listener.as_raw_fd();
    // SAFETY: between fork and exec only async-signal-safe calls (dup2, fcntl) are made.
    unsafe {
        command.pre_exec(move || {
            if fd == 3 {
                // dup2 onto itself would keep close-on-exec: clear it instead.
                if libc::fcntl(3, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) != 3 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    spawn_daemon(command)
}

fn loopback_listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").unwrap()
}

#[test]
fn socket_activation_serves_the_passed_socket() {
    let listener = loopback_listener();
    let addr = listener.local_addr().unwrap();
    // Told to bind the very port the passed socket holds: that bind would fail with
    // EADDRINUSE, so serving at all proves the passed socket is used.
    let port = addr.port().to_string();
    let mut daemon = activated(
        &listener,
        &[],
        &[
            "--bind",
            "127.0.0.1",
            "--port",
            &port,
            "--stats-interval",
            "0",
        ],
    );
    assert_eq!(daemon.addr, addr, "listening on the passed socket");
    drop(listener);
    let mut a = daemon.client("/room");
    let mut b = daemon.client("/room");
    wait_for_members(&daemon, 2);
    a.send(Message::text("through systemd's socket")).unwrap();
    assert_eq!(next_text(&mut b), "through systemd's socket");
    drop((a, b));
    assert_eq!(daemon.stop(libc::SIGTERM), Some(0));
}

#[test]
fn a_listen_pid_for_another_process_is_ignored() {
    // The variables were meant for some other process (a parent that did not unset them):
    // wschat binds its own socket.
    let mut command = daemon_command(&["--stats-interval", "0"]);
    command.env("LISTEN_FDS", "1").env("LISTEN_PID", "1");
    let daemon = spawn_daemon(command);
    assert_eq!(daemon.get("/healthz").status, 200);
}

#[test]
fn notify_ready_watchdog_and_stopping() {
    let manager = Manager::at_path("path");
    let listener = loopback_listener();
    // The watchdog period and the time it is watched for scale together, so the count of
    // pings asserted below holds under emulation too.
    let watchdog = scaled(Duration::from_millis(200));
    let watchdog_usec = watchdog.as_micros().to_string();
    let mut daemon = activated(
        &listener,
        &[
            ("NOTIFY_SOCKET", manager.name.as_str()),
            ("WATCHDOG_USEC", watchdog_usec.as_str()),
        ],
        &["--stats-interval", "0"],
    );
    drop(listener);
    assert_eq!(manager.next(), "READY=1", "READY=1 comes first");
    // Ready means serving.
    assert_eq!(daemon.get("/healthz").status, 200);
    // WATCHDOG=1 every half of WATCHDOG_USEC (100 ms), from the loop, even when idle.
    let start = Instant::now();
    let mut pings = 0;
    while start.elapsed() < watchdog * 5 {
        assert_eq!(manager.next(), "WATCHDOG=1");
        pings += 1;
    }
    assert!(
        (6..=14).contains(&pings),
        "{pings} watchdog pings in {:?}",
        start.elapsed()
    );
    let mut client = daemon.client("/");
    wait_for_members(&daemon, 1);
    daemon.signal(libc::SIGTERM);
    let before = manager.wait_for("STOPPING=1");
    assert!(before.iter().all(|s| s == "WATCHDOG=1"), "{before:?}");
    assert_eq!(
        expect_close(&mut client),
        tungstenite::protocol::frame::coding::CloseCode::Away
    );
    let _ = client.flush();
    drop(client);
    assert_eq!(daemon.wait_exit(timeout()).and_then(|s| s.code()), Some(0));
}

#[test]
fn notify_to_an_abstract_socket() {
    let manager = Manager::abstract_name("abstract");
    let mut command = daemon_command(&["--stats-interval", "0"]);
    command.env("NOTIFY_SOCKET", &manager.name);
    let mut daemon = spawn_daemon(command);
    assert_eq!(manager.next(), "READY=1");
    daemon.signal(libc::SIGTERM);
    assert_eq!(manager.wait_for("STOPPING=1"), Vec::<String>::new());
    assert_eq!(daemon.wait_exit(timeout()).and_then(|s| s.code()), Some(0));
}

#[test]
fn no_systemd_ignores_the_environment() {
    let manager = Manager::at_path("off");
    let mut command = daemon_command(&["--no-systemd"]);
    command.env("NOTIFY_SOCKET", &manager.name);
    let daemon = spawn_daemon(command);
    assert_eq!(daemon.get("/healthz").status, 200);
    manager
        .socket
        .set_read_timeout(Some(scaled(Duration::from_millis(300))))
        .unwrap();
    let mut buffer = [0u8; 64];
    assert!(manager.socket.recv(&mut buffer).is_err(), "no notification");
}
