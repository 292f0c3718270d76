//! Signals to the real binary: SIGHUP reloads `--static-dir` (and nothing else, and never
//! kills); SIGINT/SIGTERM drain with Close 1001 and exit 0; a second one exits at once.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tungstenite::protocol::frame::coding::CloseCode;

#[test]
fn sighup_reloads_the_static_dir() {
    let dir = std::env::temp_dir().join(format!("wschat-sighup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), "<p>first</p>\n").unwrap();
    let mut daemon = daemon(&["--static-dir", dir.to_str().unwrap()]);
    assert_eq!(daemon.get("/").body_text(), "<p>first</p>\n");

    std::fs::write(dir.join("index.html"), "<p>second</p>\n").unwrap();
    assert_eq!(
        daemon.get("/").body_text(),
        "<p>first</p>\n",
        "loaded once, not per request"
    );
    daemon.signal(libc::SIGHUP);
    eventually("the new page", || {
        daemon.get("/").body_text() == "<p>second</p>\n"
    });
    daemon.wait_for_line("the reload log line", |l| l.contains("SIGHUP: reloaded"));

    // A reload that fails keeps the page that works.
    std::fs::remove_dir_all(&dir).unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_line("the failed reload", |l| {
        l.contains("SIGHUP: keeping the current page")
    });
    assert_eq!(daemon.get("/").body_text(), "<p>second</p>\n");
    assert!(daemon.is_running());
}

#[test]
fn sighup_without_a_static_dir_is_logged_and_harmless() {
    let mut daemon = daemon(&[]);
    let mut a = daemon.client("/");
    let mut b = daemon.client("/");
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_line("the SIGHUP log line", |l| {
        l.contains("SIGHUP: nothing to reload")
    });
    assert!(daemon.is_running());
    a.send(tungstenite::Message::text("still here")).unwrap();
    assert_eq!(next_text(&mut b), "still here");
    assert_eq!(daemon.get("/healthz").status, 200);
}

#[test]
fn sigterm_and_sigint_drain_with_1001_and_exit_0() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut daemon = daemon(&[]);
        let mut client = daemon.client("/");
        wait_for_members(&daemon, 1);
        daemon.signal(signal);
        assert_eq!(expect_close(&mut client), CloseCode::Away);
        // tungstenite answers the Close on the next flush; then the client hangs up.
        let _ = client.flush();
        drop(client);
        let status = daemon.wait_exit(timeout()).expect("exits after the drain");
        assert_eq!(status.code(), Some(0), "signal {signal}");
        daemon.wait_for_line("the drained line", |l| l.contains("drained"));
    }
}

#[test]
fn a_second_signal_exits_at_once() {
    let mut daemon = daemon(&[]);
    // Never answers the Close: alone it would hold the drain for the close timeout (3 s).
    let mut stubborn = daemon.raw_websocket("/");
    wait_for_members(&daemon, 1);
    daemon.signal(libc::SIGTERM);
    assert_eq!(read_close_code(&mut stubborn), Some(1001));
    // Not scaled: the close timeout (3 s) is the server's, and this must stay well inside it.
    assert!(
        daemon.wait_exit(Duration::from_millis(300)).is_none(),
        "the drain waits for the stubborn client"
    );
    let second = Instant::now();
    assert_eq!(daemon.stop(libc::SIGTERM), Some(0));
    assert!(
        second.elapsed() < scaled(Duration::from_secs(1)),
        "took {:?}",
        second.elapsed()
    );
    daemon.wait_for_line("the second-signal line", |l| {
        l.contains("second stop signal")
    });
}
