//! Inbound and admission limits: message and frame size (1009), request head size and header
//! count (431), handshake timeout (slowloris), message rate (drop or 1008), Origin (403), the
//! connection cap (503 + Retry-After) and the open-file limit (EMFILE pauses accepting). Each
//! test also checks that the other clients were not affected.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;
use wschat::config::{OriginPolicy, OverRate, RateLimit};

/// Two clients in `path` that check a message still flows between them.
fn assert_room_works(a: &mut Client, b: &mut Client, text: &str) {
    a.send(Message::text(text)).unwrap();
    assert_eq!(next_text(b), text);
}

// ---------------------------------------------------------------------------------------
// Message and frame size

#[test]
fn an_oversized_frame_is_refused_with_1009_from_its_header_alone() {
    let server = start(Config {
        max_message_size: 1024,
        ..config()
    });
    let mut a = server.client("/");
    let mut b = server.client("/");
    let mut big = server.raw_websocket("/");
    wait_for_members(&server, 3);
    // A header announcing 1 GiB, and only the first bytes of its payload: the refusal must
    // come from the header, without waiting for (or buffering) the payload.
    let mut header = header_only(0x82, 1 << 30);
    header.extend_from_slice(&[0u8; 100]);
    big.write_all(&header).unwrap();
    assert_eq!(read_close_code(&mut big), Some(1009));
    assert_room_works(&mut a, &mut b, "unaffected");
    // One byte over, in a text frame, and no payload at all.
    let mut over = server.raw_websocket("/");
    over.write_all(&header_only(0x81, 1025)).unwrap();
    assert_eq!(read_close_code(&mut over), Some(1009));
    eventually("the refusals to be counted", || {
        server.metric("wschat_connections_closed_total{reason=\"message_too_big\"}") == 2.0
    });
}

#[test]
fn a_message_over_the_limit_in_small_fragments_is_refused_with_1009() {
    let server = start(Config {
        max_message_size: 1024,
        ..config()
    });
    let mut a = server.client("/");
    let mut b = server.client("/");
    let mut big = server.raw_websocket("/");
    wait_for_members(&server, 3);
    // Fragments of 600 bytes: each frame is under the limit, the message is not.
    big.write_all(&frame(0x02, &[7u8; 600], true)).unwrap();
    big.write_all(&frame(0x00, &[7u8; 600], true)).unwrap();
    big.write_all(&frame(0x80, &[7u8; 600], true)).unwrap();
    assert_eq!(read_close_code(&mut big), Some(1009));
    // Nothing of it was relayed; the room still works.
    assert_room_works(&mut a, &mut b, "after the big one");
    assert_silent(&mut a, scaled(Duration::from_millis(100)));
}

#[test]
fn a_message_at_the_limit_is_relayed_whole() {
    let server = start(Config {
        max_message_size: 1024,
        ..config()
    });
    let mut a = server.client("/");
    let mut b = server.client("/");
    let mut raw = server.raw_websocket("/");
    wait_for_members(&server, 3);
    a.send(Message::binary(vec![9u8; 1024])).unwrap();
    assert_eq!(next_message(&mut b), Message::binary(vec![9u8; 1024]));
    // In fragments that add up to exactly the limit.
    let mut bytes = frame(0x02, &[7; 1000], true);
    bytes.extend(frame(0x80, &[8; 24], true));
    raw.write_all(&bytes).unwrap();
    let mut expected = vec![7; 1000];
    expected.extend_from_slice(&[8; 24]);
    assert_eq!(next_message(&mut b), Message::binary(expected));
}

// ---------------------------------------------------------------------------------------
// Request head

#[test]
fn a_request_head_over_8k_gets_431_before_it_ends() {
    let server = start_default();
    let mut stream = server.raw();
    // No blank line: the head never ends; 431 must come once 8 KiB have arrived.
    let request = format!(
        "GET / HTTP/1.1\r\nHost: localhost\r\nX-Padding: {}\r\n",
        "a".repeat(9000)
    );
    stream.write_all(request.as_bytes()).unwrap();
    let reply = read_reply(&mut stream);
    assert_eq!(reply.status, 431);
    assert_eq!(server.get("/healthz").status, 200);
}

#[test]
fn too_many_header_lines_get_431() {
    let server = start_default();
    let mut request = String::from("GET / HTTP/1.1\r\nHost: localhost\r\n");
    for i in 0..60 {
        request.push_str(&format!("X-H{i}: {i}\r\n"));
    }
    request.push_str("\r\n");
    assert_eq!(server.http(&request).status, 431);
    // An ordinary upgrade with an ordinary number of headers still works.
    let mut a = server.client("/");
    let mut b = server.client("/");
    assert_room_works(&mut a, &mut b, "fine");
}

// ---------------------------------------------------------------------------------------
// Handshake timeout and slowloris

#[test]
fn a_request_head_that_does_not_arrive_in_time_is_closed() {
    let server = start(Config {
        handshake_timeout: Duration::from_millis(300),
        ..config()
    });
    let mut slow = server.raw();
    let started = Instant::now();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: loc").unwrap();
    wait_for_eof(&mut slow);
    let closed_after = started.elapsed();
    assert!(
        closed_after >= Duration::from_millis(250) && closed_after < scaled(Duration::from_secs(2)),
        "closed after {closed_after:?}"
    );
    // A byte at a time does not extend the deadline either.
    let mut trickle = server.raw();
    let started = Instant::now();
    let mut ended = false;
    for byte in b"GET / HTTP/1.1\r\nHost: localhost\r\n"
        .iter()
        .cycle()
        .take(40)
    {
        if trickle.write_all(&[*byte]).is_err() {
            ended = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    if !ended {
        wait_for_eof(&mut trickle);
    }
    assert!(started.elapsed() < scaled(Duration::from_millis(1500)));
    eventually("handshake timeouts to be counted", || {
        server.metric("wschat_connections_closed_total{reason=\"handshake_timeout\"}") == 2.0
    });
}

#[test]
fn a_thousand_slowloris_sockets_cost_little_and_do_not_delay_real_clients() {
    let server = start(Config {
        handshake_timeout: scaled(Duration::from_secs(4)),
        ..config()
    });
    // The server runs in this process: its RSS is ours (other tests add a little).
    let rss_before = proc_status_kib(std::process::id(), "VmRSS");
    // In batches the listen backlog holds, so no SYN waits for a retry.
    let mut loris = Vec::new();
    for batch in 1..=10 {
        for _ in 0..100 {
            let mut stream = server.raw();
            stream.write_all(b"GET / HTTP/1.1\r\nX-Slow: ").unwrap();
            loris.push(stream);
        }
        eventually("a batch of half-open requests", || {
            server.metric("wschat_connections_open") > (batch * 100) as f64
        });
    }
    // Each costs the server a few hundred bytes, not a read buffer per socket.
    let rss_grew = proc_status_kib(std::process::id(), "VmRSS").saturating_sub(rss_before);
    assert!(
        rss_grew < 32 * 1024,
        "1000 slowloris sockets cost {rss_grew} KiB"
    );
    // A real client gets through at once, and its room works.
    let started = Instant::now();
    let mut a = server.client("/");
    let mut b = server.client("/");
    assert_room_works(&mut a, &mut b, "through the crowd");
    assert_eq!(server.get("/healthz").status, 200);
    let took = started.elapsed();
    assert!(
        took < scaled(Duration::from_millis(750)),
        "real clients took {took:?}"
    );
    // Then the handshake deadline sweeps the slowloris sockets away.
    std::thread::sleep(scaled(Duration::from_secs(3)));
    eventually("the slowloris sockets to be closed", || {
        server.metric("wschat_connections_open") <= 3.0
    });
    assert_eq!(
        server.metric("wschat_connections_closed_total{reason=\"handshake_timeout\"}"),
        1000.0
    );
    assert_room_works(&mut b, &mut a, "still fine");
}

// ---------------------------------------------------------------------------------------
// Message rate

/// Two messages a second after a burst of `burst`. The refill slows with the time scale, so
/// a slow sender is not handed extra tokens.
fn rate_limited(burst: f64, over: OverRate) -> TestServer {
    start(Config {
        rate_limit: Some(RateLimit {
            per_second: 2.0 / time_scale(),
            burst,
            over,
        }),
        ..config()
    })
}

#[test]
fn over_the_rate_messages_are_dropped_and_counted() {
    let server = rate_limited(5.0, OverRate::Drop);
    let mut sender = server.client("/");
    let mut reader = server.client("/");
    wait_for_members(&server, 2);
    for i in 0..20 {
        sender.send(Message::text(format!("m{i}"))).unwrap();
    }
    // The burst goes through, in order; the rest is dropped.
    for i in 0..5 {
        assert_eq!(next_text(&mut reader), format!("m{i}"));
    }
    assert_silent(&mut reader, scaled(Duration::from_millis(200)));
    assert_eq!(
        server.metric("wschat_messages_dropped_total{reason=\"rate_limit\"}"),
        15.0
    );
    // The sender stays connected, and the bucket refills.
    std::thread::sleep(scaled(Duration::from_millis(600)));
    sender.send(Message::text("later")).unwrap();
    assert_eq!(next_text(&mut reader), "later");
}

#[test]
fn over_the_rate_with_over_rate_close_the_client_is_closed_with_1008() {
    let server = rate_limited(3.0, OverRate::Close);
    let mut flooder = server.raw_websocket("/");
    let mut a = server.client("/");
    let mut b = server.client("/");
    wait_for_members(&server, 3);
    for _ in 0..10 {
        flooder.write_all(&frame(0x81, b"flood", true)).unwrap();
    }
    assert_eq!(read_close_code(&mut flooder), Some(1008));
    // The three within the burst reached the others; then nothing more from the flooder.
    for _ in 0..3 {
        assert_eq!(next_text(&mut a), "flood");
        assert_eq!(next_text(&mut b), "flood");
    }
    assert_room_works(&mut a, &mut b, "calm");
    assert_silent(&mut b, scaled(Duration::from_millis(100)));
    // The flooder left the room at once; its close is counted when its socket goes.
    assert_eq!(server.metric("wschat_websockets_open"), 2.0);
    drop(flooder);
    eventually("the rate-limit close to be counted", || {
        server.metric("wschat_connections_closed_total{reason=\"rate_limited\"}") == 1.0
    });
    assert_eq!(
        server.metric("wschat_messages_dropped_total{reason=\"rate_limit\"}"),
        1.0
    );
}

// ---------------------------------------------------------------------------------------
// Origin

fn upgrade_status(server: &TestServer, origin: Option<&str>, host: &str) -> u16 {
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    let request = upgrade_request_to(host, "/room", &origin);
    status_of(&server.raw_request(request.as_bytes()).1)
}

#[test]
fn by_default_no_origin_and_the_same_host_are_accepted_and_others_get_403() {
    let server = start_default();
    assert_eq!(upgrade_status(&server, None, "chat.example"), 101);
    assert_eq!(
        upgrade_status(&server, Some("https://chat.example"), "chat.example"),
        101
    );
    assert_eq!(
        upgrade_status(
            &server,
            Some("http://chat.example:8080"),
            "chat.example:8080"
        ),
        101
    );
    assert_eq!(
        upgrade_status(&server, Some("https://evil.example"), "chat.example"),
        403
    );
    assert_eq!(
        upgrade_status(&server, Some("https://chat.example.evil"), "chat.example"),
        403
    );
    assert_eq!(upgrade_status(&server, Some("null"), "chat.example"), 403);
    // The refused upgrade did not disturb the accepted ones' room.
    let mut a = server.client("/room");
    let mut b = server.client("/room");
    assert_room_works(&mut a, &mut b, "same room");
}

#[test]
fn allow_origin_list_adds_origins_and_star_allows_all() {
    let listed = start(Config {
        origins: OriginPolicy::List(vec!["https://app.example".into()]),
        ..config()
    });
    assert_eq!(
        upgrade_status(&listed, Some("https://app.example"), "chat.example"),
        101
    );
    assert_eq!(
        upgrade_status(&listed, Some("https://chat.example"), "chat.example"),
        101
    );
    assert_eq!(
        upgrade_status(&listed, Some("https://other.example"), "chat.example"),
        403
    );
    let any = start(Config {
        origins: OriginPolicy::Any,
        ..config()
    });
    assert_eq!(
        upgrade_status(&any, Some("https://other.example"), "chat.example"),
        101
    );
}

// ---------------------------------------------------------------------------------------
// Connection cap and open-file limit

#[test]
fn over_the_connection_cap_upgrades_get_503_with_retry_after() {
    let server = start(Config {
        max_connections: Some(2),
        ..config()
    });
    let mut a = server.client("/");
    let mut b = server.client("/");
    wait_for_members(&server, 2);
    let reply = server.http(&upgrade_request("/"));
    assert_eq!(reply.status, 503);
    assert!(reply.header("retry-after").is_some(), "{}", reply.head);
    // Plain HTTP is still served, and the members are unaffected.
    assert_eq!(server.get("/").status, 200);
    assert_room_works(&mut a, &mut b, "two is company");
    // A place frees up: the next upgrade succeeds.
    drop(b);
    wait_for_members(&server, 1);
    let mut c = server.client("/");
    assert_room_works(&mut a, &mut c, "room for one more");
}

#[test]
fn the_soft_open_file_limit_is_raised_to_the_hard_one_and_sets_the_logged_cap() {
    let daemon = daemon_with_open_files(&[], 64, 200);
    eventually("the limits line", || {
        daemon.log_text().contains("worst-case memory")
    });
    let log = daemon.log_text();
    // 200 less the reserve of 32.
    assert!(log.contains("max-connections=168 "), "{log}");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", daemon.child.id())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        open_files.split_whitespace().nth(3),
        Some("200"),
        "{open_files}"
    );
}

#[test]
fn out_of_file_descriptors_the_server_pauses_accepting_instead_of_spinning() {
    // 64 descriptors: the cap defaults to 64 less the reserve of 32, logged at start-up.
    let daemon = daemon_with_open_files(&["--handshake-timeout", "60"], 64, 64);
    eventually("the limits line", || {
        daemon.log_text().contains("max-connections=32 ")
    });
    // Idle sockets until accept() fails with EMFILE (the kernel queues the rest).
    let idle: Vec<TcpStream> = (0..90).map(|_| daemon.raw()).collect();
    eventually("accept to hit the descriptor limit", || {
        daemon.log_text().contains("pausing accepts")
    });
    let cpu_before = daemon.cpu_time();
    std::thread::sleep(Duration::from_millis(1000));
    let cpu_used = daemon.cpu_time() - cpu_before;
    assert!(
        cpu_used < Duration::from_millis(200),
        "the loop used {cpu_used:?} of CPU in 1 s while out of descriptors"
    );
    // Descriptors come back: the server serves again.
    drop(idle);
    eventually("the server to answer again", || {
        daemon.get("/healthz").status == 200
    });
    assert!(daemon.metric("wschat_accept_errors_total") >= 1.0);
}
