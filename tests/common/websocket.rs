//! WebSocket traffic by hand (frames written and read as bytes, for protocol tests) and the
//! read helpers for tungstenite clients.

use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::time::Duration;

use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;

use super::{Client, set_timeout, timeout};

/// A client frame, masked as RFC 6455 requires (or not, to test that rule).
pub fn frame(first_byte: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![first_byte];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        len @ 0..=125 => out.push(mask_bit | len as u8),
        len @ 126..=0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A masked frame header announcing `len` payload bytes (the mask key included, no payload).
pub fn header_only(first_byte: u8, len: u64) -> Vec<u8> {
    let mut out = vec![first_byte, 0x80 | 127];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[0x37, 0xfa, 0x21, 0x3d]);
    out
}

/// Reads one server frame from a raw socket: (first byte, payload).
pub fn read_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut header = [0u8; 2];
    stream.read_exact(&mut header).expect("frame header");
    assert_eq!(header[1] & 0x80, 0, "server frames are never masked");
    let len = match header[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            stream.read_exact(&mut b).unwrap();
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            stream.read_exact(&mut b).unwrap();
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0; len];
    stream.read_exact(&mut payload).expect("frame payload");
    (header[0], payload)
}

/// Waits for the next frame for at most `wait`; None if nothing arrived.
pub fn frame_within(stream: &mut TcpStream, wait: Duration) -> Option<(u8, Vec<u8>)> {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut first = [0u8; 1];
    let got = match stream.peek(&mut first) {
        Ok(n) if n > 0 => true,
        Ok(_) => panic!("connection closed while waiting for a frame"),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(e) => panic!("read failed: {e}"),
    };
    stream.set_read_timeout(Some(timeout())).unwrap();
    got.then(|| read_frame(stream))
}

/// Reads frames until a Close frame; returns its code (None for an empty Close).
pub fn read_close_code(stream: &mut TcpStream) -> Option<u16> {
    loop {
        let (first, payload) = read_frame(stream);
        if first & 0x0f == 0x8 {
            return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
        }
    }
}

/// Reads (and discards) until the server ends the connection: end of stream or a reset.
/// Panics if the read timeout passes first.
pub fn wait_for_eof(stream: &mut TcpStream) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("the server did not end the connection")
            }
            Err(_) => return,
        }
    }
}

/// Reads the next data message, answering nothing else (pings are answered by tungstenite).
pub fn next_message(client: &mut Client) -> Message {
    loop {
        match client.read() {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => return m,
            Ok(Message::Close(frame)) => panic!("closed: {frame:?}"),
            Ok(_) => continue,
            Err(e) => panic!("read failed: {e}"),
        }
    }
}

pub fn next_text(client: &mut Client) -> String {
    match next_message(client) {
        Message::Text(text) => text.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// Asserts that nothing arrives within `wait` (pass it through [`super::scaled`]).
pub fn assert_silent(client: &mut Client, wait: Duration) {
    set_timeout(client, wait);
    match client.read() {
        Err(tungstenite::Error::Io(e))
            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("expected silence, got {other:?}"),
    }
    set_timeout(client, timeout());
}

/// Reads until the server's Close arrives; returns its code.
pub fn expect_close(client: &mut Client) -> CloseCode {
    loop {
        match client.read() {
            Ok(Message::Close(Some(frame))) => return frame.code,
            Ok(Message::Close(None)) => panic!("close without a code"),
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}
