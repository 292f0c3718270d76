//! Graceful shutdown: stop accepting, Close 1001 to every client, exit once all are gone or
//! the drain deadline passes.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::protocol::frame::coding::CloseCode;

#[test]
fn shutdown_sends_1001_to_every_client_and_returns() {
    let server = start_default();
    let mut clients: Vec<Client> = (0..5)
        .map(|i| server.client(if i % 2 == 0 { "/a" } else { "/b" }))
        .collect();
    wait_for_members(&server, 5);
    let addr = server.addr;
    server.begin_shutdown();
    for client in clients.iter_mut() {
        assert_eq!(expect_close(client), CloseCode::Away);
        // tungstenite answers the Close on its next read; the server then ends the TCP
        // connection (FIN first, as RFC 6455 7.1.1 asks of servers).
        while client.read().is_ok() {}
    }
    // Clients that have their close handshake done hang up.
    drop(clients);
    let started = Instant::now();
    server.stop().expect("clean stop");
    assert!(
        started.elapsed() < scaled(Duration::from_secs(2)),
        "no waiting for the drain deadline"
    );
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err(),
        "the listener is closed"
    );
}

#[test]
fn a_client_that_never_answers_does_not_hold_the_server_past_the_drain_deadline() {
    let server = start(Config {
        drain_timeout: Duration::from_millis(300),
        ..config()
    });
    let mut silent = server.raw_websocket("/");
    wait_for_members(&server, 1);
    server.begin_shutdown();
    assert_eq!(read_close_code(&mut silent), Some(1001));
    let started = Instant::now();
    server.stop().expect("stops");
    assert!(started.elapsed() < scaled(Duration::from_secs(4)));
    // The socket was dropped, not left hanging.
    let mut rest = Vec::new();
    let _ = silent.read_to_end(&mut rest);
}
