//! The `wschat.v1` subprotocol (docs/protocol.md): members that ask for it get each message
//! with its sequence, receive time and sender, an ack for their own, a hello, recovery after
//! `since`, a missed count, and coalesced presence; names are checked before the 101. Raw
//! clients in the same rooms get exactly the bytes they always got.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use tungstenite::Message;
use tungstenite::client::IntoClientRequest;

/// A client that offers `wschat.v1`; `query` is appended to the room path.
fn v1(server: &TestServer, path_and_query: &str) -> Client {
    let url = format!("ws://{}{}", server.addr(), path_and_query);
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "wschat.v1".parse().unwrap());
    // tungstenite's client fails the handshake if the 101 does not select the protocol.
    let (client, response) = tungstenite::connect(request).expect("upgrade succeeds");
    assert_eq!(
        response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().unwrap()),
        Some("wschat.v1")
    );
    set_timeout(&client, timeout());
    client
}

/// The raw value of a top-level JSON field (a number, `null`, a string with its quotes, a
/// list): enough for the frames the server writes, which have no nested objects.
fn field<'a>(json: &'a str, name: &str) -> &'a str {
    let key = format!("\"{name}\":");
    let start = json
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {json}"))
        + key.len();
    let rest = &json[start..];
    let end = if let Some(string) = rest.strip_prefix('"') {
        // Names and texts in these tests have no escaped quotes.
        1 + string.find('"').unwrap() + 1
    } else if rest.starts_with('[') {
        rest.find(']').unwrap() + 1
    } else {
        rest.find([',', '}']).unwrap()
    };
    &rest[..end]
}

fn num(json: &str, name: &str) -> u64 {
    field(json, name).parse().unwrap()
}

/// A text message frame, `m<seq> <ts> <from>\n<text>` (docs/protocol.md), parsed strictly
/// and shown as the JSON object `field` reads (`from` as a name, `guest-<id>` or null); the
/// JSON frames are returned as they are.
fn view(frame: String) -> String {
    let Some(line) = frame.strip_prefix('m') else {
        assert!(
            frame.starts_with('{'),
            "neither a message nor JSON: {frame:?}"
        );
        return frame;
    };
    let (head, text) = line
        .split_once('\n')
        .unwrap_or_else(|| panic!("no header line in {frame:?}"));
    let mut parts = head.splitn(3, ' ');
    let mut number = |what: &str| -> u64 {
        let n = parts
            .next()
            .unwrap_or_else(|| panic!("no {what} in {frame:?}"));
        assert!(n.bytes().all(|b| b.is_ascii_digit()), "{what} in {frame:?}");
        n.parse().unwrap_or_else(|_| panic!("{what} in {frame:?}"))
    };
    let (seq, ts) = (number("seq"), number("ts"));
    let from = match parts.next() {
        Some("") => "null".to_string(),
        Some(guest) if guest.starts_with('#') => {
            let id = &guest[1..];
            assert!(
                !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()),
                "{frame:?}"
            );
            format!("\"guest-{id}\"")
        }
        Some(named) if named.starts_with('@') => format!("\"{}\"", &named[1..]),
        other => panic!("bad from {other:?} in {frame:?}"),
    };
    // The texts of these tests need no JSON escapes.
    assert!(!text.contains(['"', '\\']), "{frame:?}");
    format!(r#"{{"t":"msg","seq":{seq},"ts":{ts},"from":{from},"text":"{text}"}}"#)
}

/// The next frame of type `t`, skipping presence frames (they come when the timer fires).
fn next_of(client: &mut Client, t: &str) -> String {
    loop {
        let frame = view(next_text(client));
        if field(&frame, "t") == format!("\"{t}\"") {
            return frame;
        }
        assert_eq!(
            field(&frame, "t"),
            "\"presence\"",
            "unexpected frame {frame}"
        );
    }
}

/// Every non-presence frame until `wait` passes in silence.
fn drain(client: &mut Client, wait: Duration) -> Vec<String> {
    let mut frames = Vec::new();
    set_timeout(client, wait);
    while let Ok(message) = client.read() {
        if let Message::Text(text) = message
            && !text.contains("\"t\":\"presence\"")
        {
            frames.push(view(text.to_string()));
        }
    }
    frames
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn with_history(n: usize) -> Config {
    Config {
        history: n,
        ..config()
    }
}

/// The status an upgrade request with an `extra` header gets, and the refusal's body.
fn upgrade_status(server: &TestServer, target: &str, extra: &str) -> (u16, String) {
    let request = upgrade_request_to("localhost", target, &format!("{extra}\r\n"));
    let (mut stream, head) = server.raw_request(request.as_bytes());
    let status = status_of(&head);
    let mut body = String::new();
    if status != 101 {
        // A refusal closes the connection after its body.
        stream.read_to_string(&mut body).unwrap();
    }
    (status, body)
}

#[test]
fn raw_clients_get_the_same_bytes_beside_v1_members() {
    let server = start_default();
    let mut raw_a = server.client("/mixed");
    let mut raw_b = server.raw_websocket("/mixed");
    let mut named = v1(&server, "/mixed?name=Ana");
    next_of(&mut named, "hello");
    wait_for_members(&server, 3);
    raw_a.send(Message::text("hi there")).unwrap();
    raw_a.send(Message::binary(vec![0u8, 1, 2])).unwrap();
    // Byte-exact: the same two frames the relay always sent.
    assert_eq!(read_frame(&mut raw_b), (0x81, b"hi there".to_vec()));
    assert_eq!(read_frame(&mut raw_b), (0x82, vec![0, 1, 2]));
    // The wire form of a message from a raw member: its connection id behind `#`.
    let line = loop {
        let frame = next_text(&mut named);
        if !frame.starts_with(r#"{"t":"presence""#) {
            break frame;
        }
    };
    assert!(
        line.starts_with("m1 ") && line.contains(" #") && line.ends_with("\nhi there"),
        "{line:?}"
    );
    let msg = view(line);
    assert_eq!(num(&msg, "seq"), 1);
    assert!(field(&msg, "from").starts_with("\"guest-"), "{msg}");
    assert_eq!(field(&msg, "text"), "\"hi there\"");
    match next_message(&mut named) {
        Message::Binary(data) => {
            assert_eq!(data[0], 1, "binary message type");
            assert_eq!(u64::from_be_bytes(data[1..9].try_into().unwrap()), 2, "seq");
            let name_len = data[17] as usize;
            assert!(data[18..18 + name_len].starts_with(b"guest-"));
            assert_eq!(&data[18 + name_len..], &[0, 1, 2]);
        }
        other => panic!("expected binary, got {other:?}"),
    }
    // A raw upgrade's 101 selects no subprotocol, as before.
    let mut stream = server.raw();
    stream
        .write_all(upgrade_request("/mixed").as_bytes())
        .unwrap();
    let head = read_head(&mut stream);
    assert!(
        !head.to_ascii_lowercase().contains("sec-websocket-protocol"),
        "{head}"
    );
}

#[test]
fn v1_members_get_sequence_time_and_name_and_the_sender_an_ack() {
    for echo in [false, true] {
        let server = start(Config { echo, ..config() });
        let mut ana = v1(&server, "/r?name=Ana&key=k1");
        let mut bob = v1(&server, "/r?name=Bob");
        let hello = next_of(&mut ana, "hello");
        assert_eq!(field(&hello, "name"), "\"Ana\"");
        assert_eq!(field(&hello, "epoch").len(), 18, "16 hex digits in quotes");
        assert_eq!(num(&next_of(&mut bob, "hello"), "count"), 2);
        let before = now_ms();
        for i in 0..3 {
            ana.send(Message::text(format!("m{i}"))).unwrap();
        }
        for i in 0..3u64 {
            let msg = next_of(&mut bob, "msg");
            assert_eq!(num(&msg, "seq"), i + 1);
            assert_eq!(field(&msg, "from"), "\"Ana\"");
            assert_eq!(field(&msg, "text"), format!("\"m{i}\""));
            let ts = num(&msg, "ts");
            assert!(
                ts + 1000 >= before && ts <= now_ms() + 1000,
                "{ts} vs {before}"
            );
            // The sender learns its own sequence numbers (echo or not), never its own text.
            let ack = next_of(&mut ana, "ack");
            assert_eq!(num(&ack, "seq"), i + 1);
            assert_eq!(num(&ack, "ts"), ts);
        }
        assert!(
            drain(&mut ana, Duration::from_millis(300)).is_empty(),
            "echo={echo}"
        );
    }
}

#[test]
fn since_recovers_exactly_the_missed_messages() {
    let server = start(with_history(10));
    let mut talker = server.client("/rec");
    let mut ana = v1(&server, "/rec?name=Ana");
    let epoch = field(&next_of(&mut ana, "hello"), "epoch")
        .trim_matches('"')
        .to_string();
    for i in 1..=3 {
        talker.send(Message::text(format!("m{i}"))).unwrap();
    }
    let mut last = 0;
    for _ in 0..3 {
        last = num(&next_of(&mut ana, "msg"), "seq");
    }
    assert_eq!(last, 3);
    ana.close(None).unwrap();
    drop(ana);
    wait_for_members(&server, 1);
    for i in 4..=6 {
        talker.send(Message::text(format!("m{i}"))).unwrap();
    }
    eventually("the room read them", || {
        server.metric("wschat_messages_received_total") == 6.0
    });
    let mut back = v1(&server, &format!("/rec?name=Ana&since={epoch}:{last}"));
    let hello = next_of(&mut back, "hello");
    assert_eq!(num(&hello, "seq"), 6);
    let frames = drain(&mut back, Duration::from_millis(400));
    let texts: Vec<(u64, &str)> = frames
        .iter()
        .map(|f| (num(f, "seq"), field(f, "text")))
        .collect();
    assert_eq!(
        texts,
        vec![(4, "\"m4\""), (5, "\"m5\""), (6, "\"m6\"")],
        "exactly the missed ones, with their original sequence"
    );
    // Caught up: nothing is resent.
    let mut again = v1(&server, &format!("/rec?since={epoch}:6"));
    next_of(&mut again, "hello");
    assert!(drain(&mut again, Duration::from_millis(300)).is_empty());
}

#[test]
fn a_gap_history_no_longer_covers_is_counted() {
    let server = start(with_history(2));
    let mut talker = server.client("/gap");
    let mut ana = v1(&server, "/gap");
    let epoch = field(&next_of(&mut ana, "hello"), "epoch")
        .trim_matches('"')
        .to_string();
    drop(ana);
    for i in 1..=5 {
        talker.send(Message::text(format!("m{i}"))).unwrap();
    }
    eventually("the room read them", || {
        server.metric("wschat_messages_received_total") == 5.0
    });
    let mut back = v1(&server, &format!("/gap?since={epoch}:1"));
    next_of(&mut back, "hello");
    let frames = drain(&mut back, Duration::from_millis(400));
    assert_eq!(frames.len(), 3, "{frames:?}");
    assert_eq!(frames[0], r#"{"t":"missed","count":2}"#);
    assert_eq!(num(&frames[1], "seq"), 4);
    assert_eq!(num(&frames[2], "seq"), 5);
    // Another epoch (a restart, another node): an unknown number, and no replay to repeat.
    let mut stranger = v1(&server, "/gap?since=0123456789abcdef:3");
    next_of(&mut stranger, "hello");
    let frames = drain(&mut stranger, Duration::from_millis(300));
    assert_eq!(frames, vec![r#"{"t":"missed","count":null}"#.to_string()]);
}

#[test]
fn bad_input_is_refused_before_the_upgrade() {
    let server = start_default();
    let mut ana = v1(&server, "/n?name=Ana&key=secret1");
    let epoch = field(&next_of(&mut ana, "hello"), "epoch")
        .trim_matches('"')
        .to_string();
    let offer = "Sec-WebSocket-Protocol: wschat.v1";
    let cases = [
        ("/n?name=ana", offer, 409, "name in use"),
        ("/n?name=Ana&key=other", offer, 409, "name in use"),
        (
            &format!("/n?name={}", "x".repeat(33)) as &str,
            offer,
            400,
            "invalid name",
        ),
        ("/n?name=guest-1", offer, 400, "invalid name"),
        ("/n?name=a%00b", offer, 400, "invalid name"),
        ("/n?since=12:3", offer, 400, "invalid since"),
        ("/n?since=0123456789abcdef", offer, 400, "invalid since"),
        (&format!("/n?since={epoch}:99") as &str, offer, 400, "ahead"),
        ("/n?key=a%20b", offer, 400, "invalid key"),
        ("/n?name=a&name=b", offer, 400, "twice"),
        (
            "/n",
            "Sec-WebSocket-Protocol: wschat.v2",
            400,
            "unsupported subprotocol",
        ),
        (
            "/n",
            "Sec-WebSocket-Protocol: wschat.v1; x=1",
            400,
            "unsupported subprotocol",
        ),
    ];
    for (target, header, status, text) in cases {
        let (got, body) = upgrade_status(&server, target, header);
        assert_eq!(got, status, "{target} {header}: {body}");
        assert!(body.contains(text), "{target}: {body}");
    }
    // The same session reconnecting (its key) may take its name back at once.
    let (got, _) = upgrade_status(&server, "/n?name=Ana&key=secret1", offer);
    assert_eq!(got, 101);
    // A raw client's query is not looked at, as before.
    let (got, _) = upgrade_status(&server, "/n?since=garbage&name=ana", "X-No: 1");
    assert_eq!(got, 101);
    // Another room has its own names.
    v1(&server, "/elsewhere?name=Ana");
}

#[test]
fn presence_counts_members_and_coalesces_joins() {
    let server = start_default();
    let mut ana = v1(&server, "/p?name=Ana");
    let hello = next_of(&mut ana, "hello");
    assert_eq!(num(&hello, "count"), 1);
    let bob = v1(&server, "/p?name=Bob");
    let presence = next_of(&mut ana, "presence");
    assert!(field(&presence, "joined").contains("\"Bob\""), "{presence}");
    // A burst of arrivals: a few presence frames, not one each.
    let started = Instant::now();
    let burst: Vec<Client> = (0..30).map(|_| server.client("/p")).collect();
    wait_for_members(&server, 32);
    let mut frames = 0;
    let mut count = 0;
    set_timeout(&ana, Duration::from_millis(700));
    while let Ok(Message::Text(text)) = ana.read() {
        frames += 1;
        count = num(&text, "count");
    }
    assert_eq!(count, 32, "the last frame has the room's count");
    let seconds = started.elapsed().as_secs_f64();
    assert!(
        (frames as f64) <= 1.0 + seconds * 4.0 + 1.0,
        "{frames} presence frames in {seconds:.2} s"
    );
    drop(burst);
    drop(bob);
    set_timeout(&ana, timeout());
    // Leaves are told too, until Ana is alone.
    let mut saw_bob_leave = false;
    loop {
        let presence = next_of(&mut ana, "presence");
        saw_bob_leave |= field(&presence, "left").contains("\"Bob\"");
        if num(&presence, "count") == 1 {
            break;
        }
    }
    assert!(saw_bob_leave);
}

#[test]
fn with_redis_sequences_and_presence_are_per_node() {
    let Some(redis) = common::redis::RedisServer::start() else {
        return;
    };
    let node = || {
        let server = start(Config {
            redis: Some(wschat::redis::RedisUrl::parse(&redis.url()).unwrap()),
            ..config()
        });
        eventually("redis link up", || server.metric("wschat_redis_up") == 1.0);
        server
    };
    let (a, b) = (node(), node());
    let mut ana = v1(&a, "/c?name=Ana");
    let mut bob = v1(&b, "/c?name=Bob");
    assert_eq!(
        num(&next_of(&mut ana, "hello"), "count"),
        1,
        "this node's members"
    );
    let bob_epoch = field(&next_of(&mut bob, "hello"), "epoch").to_string();
    eventually("both nodes subscribed", || {
        let out = redis.cli(&["PUBSUB", "NUMSUB", "wschat:room:/c"]);
        out.lines().nth(1).unwrap_or("").trim() == "2"
    });
    ana.send(Message::text("across")).unwrap();
    assert_eq!(num(&next_of(&mut ana, "ack"), "seq"), 1);
    let msg = next_of(&mut bob, "msg");
    assert_eq!(num(&msg, "seq"), 1, "node B numbers it in its own epoch");
    assert_eq!(field(&msg, "from"), "null", "the sender is on another node");
    assert_eq!(field(&msg, "text"), "\"across\"");
    // Bob's page reconnects through a load balancer to node A: another epoch.
    let mut moved = v1(&a, &format!("/c?since={}:1", bob_epoch.trim_matches('"')));
    next_of(&mut moved, "hello");
    assert_eq!(
        drain(&mut moved, Duration::from_millis(300)),
        vec![r#"{"t":"missed","count":null}"#.to_string()]
    );
}
