//! `/healthz`: 200 "ok" while accepting, 503 with a one-line reason at the connection cap and
//! while draining. A drain closes the listener at once, so the draining answer is for the
//! HTTP keep-alive connections that were already open (a load balancer's, a monitor's).

mod common;

use std::time::Duration;

use common::*;

#[test]
fn ok_while_accepting() {
    let server = start_default();
    let _client = server.client("/");
    let reply = server.get("/healthz");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body_text(), "ok\n");
    assert!(
        reply
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain"))
    );
    assert_eq!(reply.header("cache-control").as_deref(), Some("no-store"));
}

#[test]
fn unavailable_at_the_connection_cap_and_ok_again_below_it() {
    let server = start(Config {
        max_connections: Some(2),
        ..config()
    });
    let _a = server.client("/");
    let b = server.client("/");
    wait_for_members(&server, 2);
    let reply = server.get("/healthz");
    assert_eq!(reply.status, 503);
    assert_eq!(reply.body_text(), "at connection cap\n");
    drop(b);
    wait_for_members(&server, 1);
    let reply = server.get("/healthz");
    assert_eq!((reply.status, reply.body_text().as_str()), (200, "ok\n"));
}

#[test]
fn unavailable_while_draining_on_an_open_keep_alive_connection() {
    let server = start_default();
    // A WebSocket that never answers the Close keeps the drain going (up to the close
    // timeout).
    let mut stubborn = server.raw_websocket("/");
    wait_for_members(&server, 1);
    let mut monitor = server.raw();
    let reply = keep_alive_get(&mut monitor, "/healthz");
    assert_eq!((reply.status, reply.body_text().as_str()), (200, "ok\n"));
    assert_eq!(reply.header("connection").as_deref(), Some("keep-alive"));

    server.begin_shutdown();
    assert_eq!(read_close_code(&mut stubborn), Some(1001));
    let reply = keep_alive_get(&mut monitor, "/healthz");
    assert_eq!(reply.status, 503);
    assert_eq!(reply.body_text(), "draining\n");
    assert_eq!(
        reply.header("connection").as_deref(),
        Some("close"),
        "a draining server does not keep connections alive"
    );
    // New connections are not taken any more: the listener is closed (under socket
    // activation they wait in systemd's queue for the next instance).
    let refused = std::net::TcpStream::connect_timeout(&server.addr, Duration::from_secs(1));
    assert!(refused.is_err(), "the listener is closed while draining");
}

#[test]
fn an_idle_keep_alive_connection_does_not_hold_the_exit() {
    let server = start_default();
    let mut monitor = server.raw();
    assert_eq!(keep_alive_get(&mut monitor, "/healthz").status, 200);
    let mut client = server.client("/");
    wait_for_members(&server, 1);
    let started = std::time::Instant::now();
    server.begin_shutdown();
    assert_eq!(
        expect_close(&mut client),
        tungstenite::protocol::frame::coding::CloseCode::Away
    );
    // tungstenite answers the Close on the next flush; then the client hangs up.
    let _ = client.flush();
    drop(client);
    server.stop().expect("clean stop");
    assert!(
        started.elapsed() < scaled(Duration::from_secs(2)),
        "exit waited {:?} for an idle HTTP connection",
        started.elapsed()
    );
}
