//! RFC 6455 conformance, checked frame by frame over raw sockets (independently of the
//! Autobahn suite that `scripts/conformance` runs): each test sends a raw frame sequence and
//! expects a close code, an echo or a relay.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use tungstenite::Message;

const TEXT: u8 = 0x81;
const TEXT_FIRST: u8 = 0x01;
const BINARY: u8 = 0x82;
const CONTINUATION: u8 = 0x00;
const CONTINUATION_LAST: u8 = 0x80;
const PING: u8 = 0x89;
const PONG: u8 = 0x8a;
const CLOSE: u8 = 0x88;

/// A masked frame of which only the first `sent` payload bytes are written, with its header
/// announcing all of `payload`.
fn frame_start(first_byte: u8, payload: &[u8], sent: usize) -> Vec<u8> {
    let mut bytes = frame(first_byte, payload, true);
    let header_len = bytes.len() - payload.len();
    bytes.truncate(header_len + sent);
    bytes
}

/// Sends `bytes` on a fresh connection in `/` and returns the server's close code.
fn close_code_after(server: &TestServer, bytes: &[u8]) -> Option<u16> {
    let mut ws = server.raw_websocket("/");
    ws.write_all(bytes).unwrap();
    read_close_code(&mut ws)
}

/// After the server's Close, the server ends the TCP connection (EOF, or a reset).
fn assert_tcp_ends(ws: &mut TcpStream) {
    let mut rest = Vec::new();
    match ws.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "bytes after the close: {rest:?}"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// UTF-8 (close 1007)

#[test]
fn invalid_utf8_in_a_single_text_frame_closes_1007() {
    let server = start_default();
    // 0xED 0xA0 0x80 is a UTF-16 surrogate, never valid UTF-8.
    let bad = frame(TEXT, b"abc\xed\xa0\x80def", true);
    assert_eq!(close_code_after(&server, &bad), Some(1007));
}

#[test]
fn invalid_utf8_in_a_fragmented_text_message_closes_1007() {
    let server = start_default();
    let mut bytes = frame(TEXT_FIRST, "κόσμε".as_bytes(), true);
    bytes.extend(frame(CONTINUATION, b"ok so far", true));
    bytes.extend(frame(CONTINUATION_LAST, b"\xc0\xaf", true)); // overlong '/'
    assert_eq!(close_code_after(&server, &bytes), Some(1007));
}

#[test]
fn invalid_utf8_split_across_fragments_closes_1007() {
    let server = start_default();
    // 0xF4 0x90 0x80 0x80 would be U+110000, past the last code point.
    let mut bytes = frame(TEXT_FIRST, b"abc\xf4", true);
    bytes.extend(frame(CONTINUATION_LAST, b"\x90\x80\x80", true));
    assert_eq!(close_code_after(&server, &bytes), Some(1007));
}

#[test]
fn truncated_utf8_at_the_end_of_a_message_closes_1007() {
    let server = start_default();
    let bad = frame(TEXT, b"euro sign cut short \xe2\x82", true);
    assert_eq!(close_code_after(&server, &bad), Some(1007));
}

/// Fail fast (Autobahn 6.4.3/6.4.4): the 1007 comes as soon as the invalid byte arrives,
/// before the rest of the frame the header announced.
#[test]
fn invalid_utf8_fails_fast_inside_a_frame_that_is_not_complete() {
    let server = start_default();
    let mut payload = "κόσμε".as_bytes().to_vec();
    payload.extend_from_slice(b"\xf4\x90\x80\x80");
    payload.resize(1000, b'a');
    let mut ws = server.raw_websocket("/");
    ws.write_all(&frame_start(TEXT, &payload, 12)).unwrap();
    assert_eq!(read_close_code(&mut ws), Some(1007));
}

/// The same in a continuation frame, and with the request head, the first fragment and the
/// bad bytes in one write (the bytes after the head take another path into tungstenite).
#[test]
fn invalid_utf8_fails_fast_in_a_continuation_sent_with_the_upgrade() {
    let server = start_default();
    let mut bytes = upgrade_request("/").into_bytes();
    bytes.extend(frame(TEXT_FIRST, b"fine ", true));
    bytes.extend(frame_start(CONTINUATION_LAST, &[0xff; 500], 1));
    let (mut ws, head) = server.raw_request(&bytes);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(read_close_code(&mut ws), Some(1007));
}

/// Failing fast never costs an earlier message: one sent in the same write before the bad
/// one still reaches the room.
#[test]
fn messages_before_invalid_utf8_are_still_relayed() {
    let server = start_default();
    let mut listener = server.client("/");
    let mut ws = server.raw_websocket("/");
    wait_for_members(&server, 2);
    let mut bytes = frame(TEXT, "before the bad one ✓".as_bytes(), true);
    bytes.extend(frame(BINARY, &[0xff, 0xfe], true));
    bytes.extend(frame_start(TEXT, b"\xff and then much more", 3));
    ws.write_all(&bytes).unwrap();
    assert_eq!(read_close_code(&mut ws), Some(1007));
    assert_eq!(next_text(&mut listener), "before the bad one ✓");
    assert_eq!(
        next_message(&mut listener),
        Message::binary(vec![0xff, 0xfe])
    );
    assert_silent(&mut listener, scaled(Duration::from_millis(100)));
}

#[test]
fn multibyte_characters_split_across_fragments_and_pings_are_relayed() {
    let server = start_default();
    let mut listener = server.client("/");
    let mut ws = server.raw_websocket("/");
    wait_for_members(&server, 2);
    let text = "κόσμε 𝄞";
    let bytes = text.as_bytes();
    let mut sequence = frame(TEXT_FIRST, &bytes[..1], true); // κ cut after its first byte
    sequence.extend(frame(PING, b"mid", true));
    sequence.extend(frame(CONTINUATION, &bytes[1..9], true));
    sequence.extend(frame(CONTINUATION_LAST, &bytes[9..], true)); // 𝄞 cut too
    ws.write_all(&sequence).unwrap();
    assert_eq!(read_frame(&mut ws), (PONG, b"mid".to_vec()));
    assert_eq!(next_text(&mut listener), text);
}

// ---------------------------------------------------------------------------------------------
// Framing errors (close 1002)

#[test]
fn reserved_data_opcode_closes_1002() {
    let server = start_default();
    assert_eq!(
        close_code_after(&server, &frame(0x83, b"x", true)),
        Some(1002)
    );
}

#[test]
fn reserved_control_opcode_closes_1002() {
    let server = start_default();
    assert_eq!(
        close_code_after(&server, &frame(0x8b, b"x", true)),
        Some(1002)
    );
}

#[test]
fn each_reserved_bit_closes_1002() {
    let server = start_default();
    for rsv in [0x40, 0x20, 0x10] {
        let code = close_code_after(&server, &frame(TEXT | rsv, b"hello", true));
        assert_eq!(code, Some(1002), "RSV bit {rsv:#x}");
    }
}

#[test]
fn unmasked_client_frame_closes_1002() {
    let server = start_default();
    assert_eq!(
        close_code_after(&server, &frame(TEXT, b"hello", false)),
        Some(1002)
    );
}

#[test]
fn fragmented_or_oversized_control_frames_close_1002() {
    let server = start_default();
    assert_eq!(
        close_code_after(&server, &frame(0x09, b"x", true)),
        Some(1002)
    );
    assert_eq!(
        close_code_after(&server, &frame(PING, &[b'p'; 126], true)),
        Some(1002)
    );
}

#[test]
fn continuation_without_a_message_and_a_new_message_inside_one_close_1002() {
    let server = start_default();
    assert_eq!(
        close_code_after(&server, &frame(CONTINUATION_LAST, b"x", true)),
        Some(1002)
    );
    let mut bytes = frame(TEXT_FIRST, b"one", true);
    bytes.extend(frame(TEXT, b"two", true));
    assert_eq!(close_code_after(&server, &bytes), Some(1002));
}

/// The server does not negotiate permessage-deflate (Autobahn 12.*/13.* are UNIMPLEMENTED),
/// so a compressed frame (RSV1) is a protocol error.
#[test]
fn permessage_deflate_is_not_negotiated() {
    let server = start_default();
    let request = upgrade_request_to(
        "localhost",
        "/",
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
    );
    let (mut ws, head) = server.raw_request(request.as_bytes());
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("sec-websocket-extensions"),
        "{head}"
    );
    ws.write_all(&frame(TEXT | 0x40, b"\xf2\x48\xcd\xc9\xc9\x07\x00", true))
        .unwrap();
    assert_eq!(read_close_code(&mut ws), Some(1002));
}

// ---------------------------------------------------------------------------------------------
// Control frames

#[test]
fn ping_gets_a_pong_with_the_same_payload() {
    let server = start_default();
    let mut ws = server.raw_websocket("/");
    for payload in [&b""[..], b"hello", &[0xfe; 125]] {
        ws.write_all(&frame(PING, payload, true)).unwrap();
        assert_eq!(read_frame(&mut ws), (PONG, payload.to_vec()));
    }
}

#[test]
fn fragmented_message_interleaved_with_a_ping_is_relayed_whole() {
    let server = start_default();
    let mut listener = server.client("/");
    let mut ws = server.raw_websocket("/");
    wait_for_members(&server, 2);
    ws.write_all(&frame(TEXT_FIRST, b"Hello, ", true)).unwrap();
    ws.write_all(&frame(PING, b"between", true)).unwrap();
    // The pong comes back while the message is still open.
    assert_eq!(read_frame(&mut ws), (PONG, b"between".to_vec()));
    ws.write_all(&frame(CONTINUATION, b"fragmented ", true))
        .unwrap();
    ws.write_all(&frame(CONTINUATION_LAST, b"world", true))
        .unwrap();
    assert_eq!(next_text(&mut listener), "Hello, fragmented world");
    assert_silent(&mut listener, scaled(Duration::from_millis(150)));
}

#[test]
fn close_is_echoed_with_its_code_and_then_the_connection_ends() {
    let server = start_default();
    for code in [1000u16, 1001, 3000, 4999] {
        let mut ws = server.raw_websocket("/");
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        ws.write_all(&frame(CLOSE, &payload, true)).unwrap();
        assert_eq!(read_close_code(&mut ws), Some(code));
        assert_tcp_ends(&mut ws);
    }
}

#[test]
fn empty_close_is_answered_and_the_connection_ends() {
    let server = start_default();
    let mut ws = server.raw_websocket("/");
    ws.write_all(&frame(CLOSE, b"", true)).unwrap();
    let (first, _) = read_frame(&mut ws);
    assert_eq!(first, CLOSE);
    assert_tcp_ends(&mut ws);
}

#[test]
fn invalid_close_frames_close_1002() {
    let server = start_default();
    // A one-byte payload; codes 999, 1005 (reserved for "no code"), 1016 (unassigned).
    for payload in [
        &[0x03][..],
        &999u16.to_be_bytes(),
        &1005u16.to_be_bytes(),
        &1016u16.to_be_bytes(),
    ] {
        let code = close_code_after(&server, &frame(CLOSE, payload, true));
        assert_eq!(code, Some(1002), "close payload {payload:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Isolation

#[test]
fn other_members_are_unaffected_by_one_members_protocol_error() {
    let server = start_default();
    let mut a = server.client("/");
    let mut b = server.client("/");
    let mut bad = server.raw_websocket("/");
    wait_for_members(&server, 3);
    // A broken message midway through a fragmented one, and a half-sent frame.
    bad.write_all(&frame(TEXT_FIRST, b"never ", true)).unwrap();
    bad.write_all(&frame(0x83, b"x", true)).unwrap();
    bad.write_all(&frame_start(TEXT, b"relayed", 2)).unwrap();
    assert_eq!(read_close_code(&mut bad), Some(1002));
    wait_for_members(&server, 2);
    a.send(Message::text("still here")).unwrap();
    assert_eq!(next_text(&mut b), "still here");
    b.send(Message::binary(vec![1, 2, 3])).unwrap();
    assert_eq!(next_message(&mut a), Message::binary(vec![1, 2, 3]));
    assert_silent(&mut a, scaled(Duration::from_millis(100)));
    assert_silent(&mut b, scaled(Duration::from_millis(50)));
}
