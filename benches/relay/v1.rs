//! Subscribers that speak `wschat.v1` (docs/protocol.md): each text delivery is a message
//! frame, `m<seq> <ts> <from>\n<text>`, and the generator's 16-byte header is the start of
//! its text, unchanged. Other frames (the JSON `hello`, `presence`, `ack`, `missed`) carry
//! no message and are skipped.
//!
//! Kept cheap because it runs once per delivery on the generator's CPU: a first-byte check
//! and a search for the end of the header line.

use crate::ws::HDR;

/// The subprotocol offered in `Sec-WebSocket-Protocol`.
pub const PROTOCOL: &str = "wschat.v1";
/// How every text message frame starts (JSON frames start with `{`).
const MSG_PREFIX: u8 = b'm';
/// The shortest header line before its newline, `m0 0 ` (no sender): no need to look there.
const SKIP: usize = 5;

/// What one `wschat.v1` text frame holds for the generator.
pub enum Frame {
    /// A room message; its header when the text held one.
    Msg(Option<[u8; HDR]>),
    /// hello, presence, ack or missed: not a delivery.
    Other,
}

/// Sorts one text frame's payload and, for a message, reads the header at the start of its
/// text.
pub fn unwrap(payload: &[u8]) -> Frame {
    if payload.first() != Some(&MSG_PREFIX) {
        return Frame::Other;
    }
    let hdr = payload
        .get(SKIP..)
        .and_then(|rest| {
            let at = rest.iter().position(|&b| b == b'\n')?;
            rest.get(at + 1..at + 1 + HDR)
        })
        .and_then(|h| <[u8; HDR]>::try_from(h).ok());
    Frame::Msg(hdr)
}

/// Checks the unwrapping on frames as the server writes them (benches run without a test
/// harness, so the v1 scenario calls this before its first run).
pub fn self_check() -> Result<(), String> {
    let f = b"m7 1765139723123 #3\na\"\\\n\x01\x1fbcdefghijkxxxx";
    match unwrap(f) {
        Frame::Msg(Some(h)) if &h == b"a\"\\\n\x01\x1fbcdefghijk" => {}
        _ => return Err("v1: the header of a msg frame was not recovered".into()),
    }
    let named = b"m8 1765139723123 @Ana Mar\xc3\xada\n0123456789abcdefxx";
    match unwrap(named) {
        Frame::Msg(Some(h)) if &h == b"0123456789abcdef" => {}
        _ => return Err("v1: the header of a named sender's msg frame was not recovered".into()),
    }
    if !matches!(unwrap(br#"{"t":"presence","count":2}"#), Frame::Other) {
        return Err("v1: a presence frame was taken for a message".into());
    }
    if !matches!(unwrap(b"m1 1 \nshort"), Frame::Msg(None)) {
        return Err("v1: a text shorter than the header was not flagged".into());
    }
    Ok(())
}
