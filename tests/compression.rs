//! permessage-deflate (RFC 7692) with `--compression on`: what the 101 answers to the offers
//! browsers make, compressed messages in (inflated, bounded, refused when invalid) and out
//! (compressed once, to the members that negotiated it), and nothing of it when off.

mod common;

use std::io::Write;
use std::net::TcpStream;

use common::*;
use tungstenite::Message;

/// What a browser sends: Chrome offers `client_max_window_bits`, Firefox and Safari nothing.
const CHROME: &str = "permessage-deflate; client_max_window_bits";
const FIREFOX: &str = "permessage-deflate";
/// Every answer carries both no-context-takeover parameters.
const BASE_ANSWER: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

fn compression_on() -> Config {
    Config {
        compression: true,
        ..config()
    }
}

/// Chat-like text that compresses well, `len` bytes.
fn chat_text(len: usize) -> String {
    let mut text = String::new();
    let mut i = 0;
    while text.len() < len {
        text.push_str(&format!(
            "{{\"user\":\"user{}\",\"text\":\"message number {i} in the lobby\",\"ts\":{}}}\n",
            i % 7,
            1_700_000_000 + i
        ));
        i += 1;
    }
    text.truncate(len);
    text
}

/// Raw DEFLATE as a client sends it (this one ends with a final block, which RFC 7692 7.2.3.1
/// allows).
fn deflate(data: &[u8]) -> Vec<u8> {
    miniz_oxide::deflate::compress_to_vec(data, 6)
}

/// Inflates a server's compressed payload: the stripped trailer back (RFC 7692 7.2.2), then
/// an empty final block so that the stream ends.
fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut data = payload.to_vec();
    data.extend_from_slice(&[0x00, 0x00, 0xff, 0xff, 0x03, 0x00]);
    miniz_oxide::inflate::decompress_to_vec(&data).expect("the server's frame inflates")
}

/// A raw WebSocket in `path`'s room that offered `offer`; returns it and the 101's
/// `Sec-WebSocket-Extensions` answer.
fn offering(server: &impl Endpoint, path: &str, offer: &str) -> (TcpStream, Option<String>) {
    let request = upgrade_request_to(
        "localhost",
        path,
        &format!("Sec-WebSocket-Extensions: {offer}\r\n"),
    );
    let (stream, head) = server.raw_request(request.as_bytes());
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    (stream, extension_answer(&head))
}

fn extension_answer(head: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("sec-websocket-extensions")
            .then(|| value.trim().to_string())
    })
}

/// A deflate member in `path`'s room (Firefox's offer).
fn deflate_member(server: &impl Endpoint, path: &str) -> TcpStream {
    let (stream, answer) = offering(server, path, FIREFOX);
    assert_eq!(answer.as_deref(), Some(BASE_ANSWER));
    stream
}

/// Reads the next data frame (skipping pings) from a raw member.
fn next_data_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    loop {
        let (first, payload) = read_frame(stream);
        if first & 0x08 == 0 {
            return (first, payload);
        }
        assert_ne!(first & 0x0f, 0x8, "closed: {payload:?}");
    }
}

#[test]
fn browsers_offers_get_no_context_takeover_answers() {
    let server = start(compression_on());
    let (_chrome, answer) = offering(&server, "/n", CHROME);
    assert_eq!(
        answer.as_deref(),
        Some(&*format!("{BASE_ANSWER}; client_max_window_bits=15"))
    );
    let (_firefox, answer) = offering(&server, "/n", FIREFOX);
    assert_eq!(answer.as_deref(), Some(BASE_ANSWER));
    // Several offers in preference order: the first valid one wins.
    let (_many, answer) = offering(
        &server,
        "/n",
        "permessage-deflate; server_max_window_bits=16, permessage-deflate; server_max_window_bits=10",
    );
    assert_eq!(
        answer.as_deref(),
        Some(&*format!("{BASE_ANSWER}; server_max_window_bits=10"))
    );
    // Garbage is declined: the connection opens without the extension.
    for offer in [
        "permessage-deflate; foo=bar",
        "permessage-deflate; client_max_window_bits=7",
        "x-webkit-deflate-frame",
        "\"",
    ] {
        let (_declined, answer) = offering(&server, "/n", offer);
        assert_eq!(answer, None, "{offer}");
    }
}

#[test]
fn off_by_default_no_offer_is_answered_and_compressed_frames_are_refused() {
    let server = start_default();
    let (mut raw, answer) = offering(&server, "/off", CHROME);
    assert_eq!(answer, None);
    // Without the extension, RSV1 is a protocol error (RFC 6455 5.2).
    raw.write_all(&frame(0xc1, &deflate(chat_text(2000).as_bytes()), true))
        .unwrap();
    assert_eq!(read_close_code(&mut raw), Some(1002));
    assert_eq!(server.metric("wschat_inflated_messages_total"), 0.0);
}

#[test]
fn a_compressed_message_reaches_plain_and_deflate_members() {
    let server = start(compression_on());
    let mut sender = deflate_member(&server, "/mix");
    let mut other_deflate = deflate_member(&server, "/mix");
    let mut plain = server.client("/mix");
    wait_for_members(&server, 3);

    let text = chat_text(3000);
    let compressed = deflate(text.as_bytes());
    assert!(compressed.len() < text.len() / 2);
    sender.write_all(&frame(0xc1, &compressed, true)).unwrap();

    // The plain member gets the text as it was.
    assert_eq!(next_text(&mut plain), text);
    // The deflate member gets it compressed: FIN, RSV1, text; it inflates to the message.
    let (first, payload) = next_data_frame(&mut other_deflate);
    assert_eq!(first, 0xc1, "FIN + RSV1 + text");
    assert!(payload.len() < text.len() / 2, "{}", payload.len());
    assert_eq!(inflate(&payload), text.as_bytes());

    // Below --compression-min (1 KiB), everyone gets the plain frame.
    sender
        .write_all(&frame(0xc1, &deflate(b"short and sweet"), true))
        .unwrap();
    assert_eq!(next_text(&mut plain), "short and sweet");
    assert_eq!(
        next_data_frame(&mut other_deflate),
        (0x81, b"short and sweet".to_vec())
    );

    // A plain message from the plain member is compressed for the deflate members.
    let binary: Vec<u8> = chat_text(5000).into_bytes();
    plain.send(Message::binary(binary.clone())).unwrap();
    for member in [&mut sender, &mut other_deflate] {
        let (first, payload) = next_data_frame(member);
        assert_eq!(first, 0xc2, "FIN + RSV1 + binary");
        assert_eq!(inflate(&payload), binary);
    }

    assert_eq!(server.metric("wschat_inflated_messages_total"), 2.0);
    assert_eq!(
        server.metric("wschat_inflated_output_bytes_total"),
        (text.len() + "short and sweet".len()) as f64
    );
    // Compressed once per message, whatever the number of deflate members.
    assert_eq!(server.metric("wschat_compressed_messages_total"), 2.0);
    assert_eq!(
        server.metric("wschat_compressed_input_bytes_total"),
        (text.len() + binary.len()) as f64
    );
    assert!(server.metric("wschat_compressed_output_bytes_total") < (text.len() / 2) as f64);
    assert_eq!(server.metric("wschat_compressed_deliveries_total"), 3.0);
}

#[test]
fn rooms_without_deflate_members_compress_nothing() {
    let server = start(compression_on());
    let mut a = server.client("/plain");
    let mut b = server.client("/plain");
    // A deflate member elsewhere changes nothing for this room.
    let _elsewhere = deflate_member(&server, "/other");
    wait_for_members(&server, 3);
    let text = chat_text(4000);
    a.send(Message::text(text.clone())).unwrap();
    assert_eq!(next_text(&mut b), text);
    assert_eq!(server.metric("wschat_compressed_messages_total"), 0.0);
}

#[test]
fn a_small_server_window_gets_long_messages_uncompressed() {
    let server = start(compression_on());
    let (mut small, answer) = offering(
        &server,
        "/win",
        "permessage-deflate; server_max_window_bits=8",
    );
    assert_eq!(
        answer.as_deref(),
        Some(&*format!("{BASE_ANSWER}; server_max_window_bits=8"))
    );
    let mut full = deflate_member(&server, "/win");
    let mut sender = server.client("/win");
    wait_for_members(&server, 3);
    let text = chat_text(2000);
    sender.send(Message::text(text.clone())).unwrap();
    // 2000 bytes cannot be compressed within a 256-byte window: the plain frame.
    assert_eq!(
        next_data_frame(&mut small),
        (0x81, text.clone().into_bytes())
    );
    let (first, payload) = next_data_frame(&mut full);
    assert_eq!(first, 0xc1);
    assert_eq!(inflate(&payload), text.as_bytes());
}

#[test]
fn incompressible_messages_go_plain_to_everyone() {
    let server = start(compression_on());
    let mut member = deflate_member(&server, "/noise");
    let mut sender = server.client("/noise");
    wait_for_members(&server, 2);
    let mut x: u32 = 0x9e37_79b9;
    let noise: Vec<u8> = (0..3000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    sender.send(Message::binary(noise.clone())).unwrap();
    assert_eq!(next_data_frame(&mut member), (0x82, noise));
    assert_eq!(server.metric("wschat_compressed_messages_total"), 0.0);
}

#[test]
fn a_fragmented_compressed_message_with_a_ping_between_is_relayed() {
    let server = start(compression_on());
    let mut sender = deflate_member(&server, "/frag");
    let mut plain = server.client("/frag");
    wait_for_members(&server, 2);
    let text = chat_text(4000);
    let compressed = deflate(text.as_bytes());
    let (a, rest) = compressed.split_at(compressed.len() / 3);
    let (b, c) = rest.split_at(rest.len() / 2);
    let mut bytes = frame(0x41, a, true); // RSV1 on the first frame only
    bytes.extend(frame(0x89, b"are you there", true));
    bytes.extend(frame(0x00, b, true));
    bytes.extend(frame(0x80, c, true));
    // Written in small pieces, so the message arrives over several reads.
    for piece in bytes.chunks(97) {
        sender.write_all(piece).unwrap();
    }
    assert_eq!(read_frame(&mut sender), (0x8a, b"are you there".to_vec()));
    assert_eq!(next_text(&mut plain), text);
}

#[test]
fn a_compressed_message_may_come_with_the_upgrade_request() {
    let server = start(compression_on());
    let mut plain = server.client("/early");
    wait_for_members(&server, 1);
    let text = chat_text(1500);
    let mut request = upgrade_request_to(
        "localhost",
        "/early",
        &format!("Sec-WebSocket-Extensions: {FIREFOX}\r\n"),
    )
    .into_bytes();
    request.extend(frame(0xc1, &deflate(text.as_bytes()), true));
    let (_sender, head) = server.raw_request(&request);
    assert_eq!(extension_answer(&head).as_deref(), Some(BASE_ANSWER));
    assert_eq!(next_text(&mut plain), text);
}

/// Resident memory of this process (the in-process server's included).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[test]
fn a_bomb_is_refused_with_1009_at_the_size_limit() {
    // 10 MB of zeros compresses to about 10 KB; the server must stop at --max-message-size.
    let bomb = miniz_oxide::deflate::compress_to_vec(&vec![0u8; 10 << 20], 9);
    assert!(bomb.len() < 64 << 10, "{}", bomb.len());
    let server = start(compression_on());
    let mut sender = deflate_member(&server, "/bomb");
    let mut plain = server.client("/bomb");
    wait_for_members(&server, 2);
    let before = resident_bytes();
    sender.write_all(&frame(0xc2, &bomb, true)).unwrap();
    assert_eq!(read_close_code(&mut sender), Some(1009));
    drop(sender);
    let grown = resident_bytes().saturating_sub(before);
    // Inflating it whole would touch 10 MiB; the limit is 64 KiB (other tests of this file
    // run beside it, hence the margin).
    assert!(grown < 6 << 20, "resident memory grew by {grown} bytes");
    eventually("the close to be counted", || {
        server.metric("wschat_connections_closed_total{reason=\"message_too_big\"}") == 1.0
    });
    assert_eq!(server.metric("wschat_inflated_messages_total"), 0.0);
    assert_silent(&mut plain, scaled(std::time::Duration::from_millis(200)));
}

#[test]
fn invalid_compressed_data_fails_with_1007() {
    let server = start(compression_on());
    let mut sender = deflate_member(&server, "/bad");
    let mut plain = server.client("/bad");
    wait_for_members(&server, 2);
    // A block of the reserved type 3 (BFINAL 1, BTYPE 11).
    sender
        .write_all(&frame(0xc1, &[0x07, 0x00, 0x01], true))
        .unwrap();
    assert_eq!(read_close_code(&mut sender), Some(1007));
    drop(sender);
    eventually("the close to be counted", || {
        server.metric("wschat_connections_closed_total{reason=\"invalid_compressed_data\"}") == 1.0
    });
    assert_silent(&mut plain, scaled(std::time::Duration::from_millis(200)));
}

#[test]
fn inflated_text_is_still_checked_for_utf8() {
    let server = start(compression_on());
    let mut sender = deflate_member(&server, "/utf8");
    let mut invalid = chat_text(2000).into_bytes();
    invalid[1000] = 0xff;
    sender
        .write_all(&frame(0xc1, &deflate(&invalid), true))
        .unwrap();
    assert_eq!(read_close_code(&mut sender), Some(1007));
    drop(sender);
    eventually("the close to be counted", || {
        server.metric("wschat_connections_closed_total{reason=\"invalid_utf8\"}") == 1.0
    });
}
