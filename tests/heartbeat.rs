//! Heartbeat and close timers: silent connections are pinged, still-silent ones are closed with
//! 1001 "idle timeout", busy ones are left alone, a peer that never answers our Close is dropped
//! after CLOSE_TIMEOUT, and an idle server with no clients does not wake up.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// The server's heartbeat settings, scaled with the test's waits: every assertion on them
/// below is a ratio of the two, so it holds under emulation too.
fn ping_interval() -> Duration {
    scaled(Duration::from_millis(200))
}

fn idle_timeout() -> Duration {
    scaled(Duration::from_millis(600))
}

/// The server's CLOSE_TIMEOUT (not configurable, so not scaled).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

fn heartbeat_config() -> Config {
    Config {
        ping_interval: ping_interval(),
        idle_timeout: idle_timeout(),
        handshake_timeout: scaled(Duration::from_millis(300)),
        ..config()
    }
}

#[test]
fn a_silent_connection_is_pinged_then_closed_with_1001_idle_timeout() {
    let server = start(heartbeat_config());
    let started = Instant::now();
    let mut silent = server.raw_websocket("/");
    let (first, _) = read_frame(&mut silent);
    let pinged_after = started.elapsed();
    assert_eq!(first, 0x89, "the first frame is a ping");
    assert!(
        pinged_after >= ping_interval() - Duration::from_millis(20),
        "pinged after {pinged_after:?}, before --ping-interval"
    );
    // The ping goes unanswered: the next frame is a Close 1001 "idle timeout".
    let (first, payload) = read_frame(&mut silent);
    let closed_after = started.elapsed();
    assert_eq!(first, 0x88, "then a Close");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1001);
    assert_eq!(&payload[2..], b"idle timeout");
    assert!(
        closed_after >= idle_timeout() - Duration::from_millis(20),
        "closed after {closed_after:?}, before --idle-timeout"
    );
    assert!(
        closed_after < idle_timeout() * 3,
        "closed after {closed_after:?}"
    );
    eventually("the idle close to be counted", || {
        server.metric("wschat_connections_closed_total{reason=\"idle_timeout\"}") == 1.0
    });
}

#[test]
fn pongs_count_as_activity_and_keep_a_connection_open() {
    let server = start(heartbeat_config());
    let mut answering = server.raw_websocket("/");
    wait_for_members(&server, 1);
    let started = Instant::now();
    let mut pings = 0;
    // Three idle timeouts of answering every ping and saying nothing else.
    while started.elapsed() < idle_timeout() * 3 {
        if let Some((first, payload)) =
            frame_within(&mut answering, scaled(Duration::from_millis(50)))
        {
            assert_eq!(first, 0x89, "only pings arrive, never a Close");
            pings += 1;
            answering.write_all(&frame(0x8a, &payload, true)).unwrap();
        }
    }
    assert!(pings >= 3, "{pings} pings in {:?}", started.elapsed());
    // Still a member: a message reaches it.
    let mut other = server.client("/");
    other
        .send(tungstenite::Message::text("still here?"))
        .unwrap();
    loop {
        let (first, payload) = read_frame(&mut answering);
        if first == 0x89 {
            answering.write_all(&frame(0x8a, &payload, true)).unwrap();
            continue;
        }
        assert_eq!((first, payload.as_slice()), (0x81, &b"still here?"[..]));
        break;
    }
}

#[test]
fn a_busy_connection_is_never_pinged() {
    let server = start(heartbeat_config());
    let mut busy = server.raw_websocket("/");
    let started = Instant::now();
    // Alone in its room (no echo): every message goes nowhere, so anything read is a ping.
    while started.elapsed() < idle_timeout() * 2 {
        busy.write_all(&frame(0x81, b"busy", true)).unwrap();
        assert_eq!(
            frame_within(&mut busy, scaled(Duration::from_millis(50))),
            None,
            "a connection that keeps sending got a frame after {:?}",
            started.elapsed()
        );
    }
    assert_eq!(server.metric("wschat_websockets_open"), 1.0);
}

#[test]
fn a_peer_that_never_answers_close_is_dropped_after_the_close_timeout() {
    let server = start(heartbeat_config());
    let mut mute = server.raw_websocket("/");
    // Neither pongs nor a Close answer: the idle close comes, then the socket is dropped.
    assert_eq!(read_close_code(&mut mute), Some(1001));
    let close_sent = Instant::now();
    wait_for_eof(&mut mute);
    let dropped_after = close_sent.elapsed();
    // The Close was read a little after the server sent it: allow for that.
    assert!(
        dropped_after >= CLOSE_TIMEOUT.saturating_sub(scaled(Duration::from_millis(300))),
        "dropped {dropped_after:?} after the Close, before CLOSE_TIMEOUT"
    );
    assert!(
        dropped_after < CLOSE_TIMEOUT + scaled(Duration::from_millis(1500)),
        "dropped only {dropped_after:?} after the Close"
    );
    // Counted under its first reason: the idle timeout.
    eventually("the idle close to be counted", || {
        server.metric("wschat_connections_closed_total{reason=\"idle_timeout\"}") == 1.0
    });
}

#[test]
fn a_peer_that_answers_close_is_released_at_once() {
    let server = start(heartbeat_config());
    let mut polite = server.raw_websocket("/");
    assert_eq!(read_close_code(&mut polite), Some(1001));
    let close_sent = Instant::now();
    polite
        .write_all(&frame(0x88, &1001u16.to_be_bytes(), true))
        .unwrap();
    wait_for_eof(&mut polite);
    assert!(close_sent.elapsed() < scaled(Duration::from_secs(1)));
}

/// A sample from `/metrics`, asked on a keep-alive connection: one request, one pass.
fn ask(stream: &mut TcpStream, sample: &str) -> f64 {
    let page = keep_alive_get(stream, "/metrics").body_text();
    sample_value(&page, sample).unwrap_or_else(|| panic!("no {sample}"))
}

#[test]
fn an_idle_server_does_not_wake_up() {
    let server = start(Config {
        // The one connection kept for asking has a deadline far away.
        handshake_timeout: Duration::from_secs(60),
        ..heartbeat_config()
    });
    // Leave timers behind: heartbeat and close deadlines of WebSockets that come and go,
    // and the close deadlines (3 s) of plain requests spread over half a second, so that
    // they would fall due one by one while the server sits idle.
    for _ in 0..5 {
        let mut client = server.client("/");
        client.close(None).unwrap();
        while client.read().is_ok() {}
    }
    for _ in 0..10 {
        assert_eq!(server.get("/healthz").status, 200);
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut asking = server.raw();
    eventually("every other connection to be gone", || {
        ask(&mut asking, "wschat_connections_open") == 1.0
    });
    let passes = |stream: &mut TcpStream| ask(stream, "wschat_loop_iterations_total");
    let a = passes(&mut asking);
    let b = passes(&mut asking);
    let per_request = b - a;
    // Past every timer those clients could have left: ping, idle, close (3 s).
    std::thread::sleep(CLOSE_TIMEOUT.max(idle_timeout()) + scaled(Duration::from_millis(300)));
    let c = passes(&mut asking);
    let idle_passes = c - b - per_request;
    // One pass of slack: a response that filled the socket buffer costs a writable event.
    assert!(
        idle_passes <= 1.0,
        "the loop woke {idle_passes} times with nothing to do (a request costs {per_request} passes)"
    );
}
