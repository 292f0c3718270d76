//! `--history N`: a member joining a room first receives the room's last messages (at most N,
//! at most `--history-bytes`), in order, before any live traffic; a room's history outlives
//! its members for `--history-ttl`, then goes.

mod common;

use std::time::Duration;

use common::*;
use tungstenite::Message;

fn with_history(messages: usize, bytes: usize, ttl: Duration) -> Config {
    Config {
        history: messages,
        history_bytes: bytes,
        history_ttl: ttl,
        ..config()
    }
}

/// Sends `texts` from `client` and waits until the server has counted them.
fn say(server: &TestServer, client: &mut Client, texts: &[String]) {
    let before = server.metric("wschat_messages_received_total");
    for text in texts {
        client.send(Message::text(text.clone())).unwrap();
    }
    eventually("the server read them", || {
        server.metric("wschat_messages_received_total") == before + texts.len() as f64
    });
}

fn numbered(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

fn receive(client: &mut Client, n: usize) -> Vec<String> {
    (0..n).map(|_| next_text(client)).collect()
}

#[test]
fn off_by_default() {
    let server = start_default();
    let mut a = server.client("/");
    say(&server, &mut a, &numbered("m", 0..3));
    let mut late = server.client("/");
    assert_silent(&mut late, scaled(Duration::from_millis(200)));
}

#[test]
fn a_late_joiner_gets_the_last_n_in_order() {
    let server = start(with_history(3, 64 * 1024, Duration::from_secs(60)));
    let mut a = server.client("/r");
    say(&server, &mut a, &numbered("m", 0..5));
    let mut late = server.client("/r");
    assert_eq!(receive(&mut late, 3), numbered("m", 2..5));
    assert_silent(&mut late, scaled(Duration::from_millis(200)));
    // Other rooms keep their own history.
    let mut elsewhere = server.client("/elsewhere");
    assert_silent(&mut elsewhere, scaled(Duration::from_millis(100)));
    // Binary stays binary in history.
    a.send(Message::binary(vec![1u8, 2, 3])).unwrap();
    assert_eq!(next_message(&mut late), Message::binary(vec![1u8, 2, 3]));
    let mut later = server.client("/r");
    assert_eq!(next_text(&mut later), "m3");
    assert_eq!(next_text(&mut later), "m4");
    assert_eq!(next_message(&mut later), Message::binary(vec![1u8, 2, 3]));
    // Replays count as deliveries, like the live ones.
    assert_eq!(server.metric("wschat_deliveries_total"), 3.0 + 1.0 + 3.0);
}

#[test]
fn the_byte_bound_keeps_only_the_newest_that_fit() {
    // Each frame is 2 header bytes + 10 payload bytes = 12; 50 bytes hold 4 of them.
    let server = start(with_history(100, 50, Duration::from_secs(60)));
    let mut a = server.client("/");
    let texts: Vec<String> = (0..10).map(|i| format!("message-{i:02}")).collect();
    assert!(texts.iter().all(|t| t.len() == 10));
    say(&server, &mut a, &texts);
    let mut late = server.client("/");
    assert_eq!(receive(&mut late, 4), texts[6..].to_vec());
    assert_silent(&mut late, scaled(Duration::from_millis(200)));
    // A message larger than the whole bound is relayed but not kept, and keeps the rest.
    let big = "x".repeat(60);
    say(&server, &mut a, std::slice::from_ref(&big));
    assert_eq!(next_text(&mut late), big);
    let mut later = server.client("/");
    assert_eq!(receive(&mut later, 4), texts[6..].to_vec());
    assert_silent(&mut later, scaled(Duration::from_millis(100)));
}

#[test]
fn history_comes_before_live_traffic() {
    let server = start(with_history(10, 64 * 1024, Duration::from_secs(60)));
    let mut a = server.client("/");
    say(&server, &mut a, &numbered("old", 0..3));
    // The joiner's upgrade request and the next live message race; whichever the server sees
    // first, the joiner reads the old ones first and the live one once.
    let mut joiner = server.raw_websocket("/");
    a.send(Message::text("live")).unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        let (first, payload) = read_frame(&mut joiner);
        assert_eq!(first, 0x81, "a final text frame");
        got.push(String::from_utf8(payload).unwrap());
    }
    assert_eq!(got, ["old0", "old1", "old2", "live"]);
}

#[test]
fn history_survives_members_leaving_and_coming_back_before_the_ttl() {
    let server = start(with_history(10, 64 * 1024, Duration::from_secs(30)));
    let mut a = server.client("/room");
    say(&server, &mut a, &numbered("m", 0..2));
    a.close(None).unwrap();
    wait_for_members(&server, 0);
    eventually("the room is dormant", || {
        server.metric("wschat_rooms_dormant") == 1.0
    });
    assert_eq!(server.metric("wschat_rooms_open"), 0.0);
    let mut back = server.client("/room");
    assert_eq!(receive(&mut back, 2), numbered("m", 0..2));
    assert_eq!(server.metric("wschat_rooms_dormant"), 0.0);
    say(&server, &mut back, &numbered("n", 0..1));
    drop(back);
    wait_for_members(&server, 0);
    let mut again = server.client("/room");
    assert_eq!(
        receive(&mut again, 3),
        ["m0".to_string(), "m1".into(), "n0".into()]
    );
}

#[test]
fn history_expires_after_the_ttl_without_members() {
    let ttl = Duration::from_millis(300);
    let server = start(with_history(10, 64 * 1024, ttl));
    let mut a = server.client("/room");
    say(&server, &mut a, &numbered("m", 0..2));
    let left = std::time::Instant::now();
    drop(a);
    wait_for_members(&server, 0);
    eventually("the history expires", || {
        server.metric("wschat_rooms_dormant") == 0.0
    });
    assert!(left.elapsed() >= ttl, "expired early: {:?}", left.elapsed());
    let mut late = server.client("/room");
    assert_silent(&mut late, scaled(Duration::from_millis(200)));
}

#[test]
fn a_member_staying_keeps_the_history_past_the_ttl() {
    let server = start(with_history(10, 64 * 1024, Duration::from_millis(100)));
    let mut a = server.client("/room");
    say(&server, &mut a, &numbered("m", 0..2));
    std::thread::sleep(Duration::from_millis(300));
    let mut late = server.client("/room");
    assert_eq!(receive(&mut late, 2), numbered("m", 0..2));
}

#[test]
fn dormant_rooms_are_bounded_by_the_connection_cap() {
    // One client speaking in room after room must not grow memory without bound: at the
    // cap, a new room evicts the room dormant longest.
    let server = start(Config {
        max_connections: Some(2),
        ..with_history(10, 64 * 1024, Duration::from_secs(60))
    });
    for room in ["/r1", "/r2"] {
        let mut a = server.client(room);
        say(&server, &mut a, &[format!("in {room}")]);
        drop(a);
        wait_for_members(&server, 0);
    }
    eventually("two dormant rooms", || {
        server.metric("wschat_rooms_dormant") == 2.0
    });
    let mut r3 = server.client("/r3");
    assert_silent(&mut r3, scaled(Duration::from_millis(50)));
    assert_eq!(server.metric("wschat_rooms_dormant"), 1.0, "/r1 went");
    let mut r2 = server.client("/r2");
    assert_eq!(next_text(&mut r2), "in /r2");
    drop((r2, r3));
    wait_for_members(&server, 0);
    let mut r1 = server.client("/r1");
    assert_silent(&mut r1, scaled(Duration::from_millis(100)));
}
