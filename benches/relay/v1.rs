//! Subscribers that speak `wschat.v1` (docs/protocol.md): each text delivery is a JSON
//! frame, `{"t":"msg","seq":..,"ts":..,"from":"..","text":"<message>"}`, and the
//! generator's 16-byte header is the start of its `text`. Other frames (`hello`,
//! `presence`, `ack`, `missed`) carry no message and are skipped.
//!
//! Kept cheap because it runs once per delivery on the generator's CPU: a fixed prefix
//! check, one search for `"text":"`, and a JSON unescape of the first 16 characters only
//! (the header's 7-bit bytes may include quotes, backslashes and control characters,
//! which the server escapes; the 'x' padding after it needs no unescaping).

use crate::ws::HDR;

/// The subprotocol offered in `Sec-WebSocket-Protocol`.
pub const PROTOCOL: &str = "wschat.v1";
/// How every `msg` frame starts: the server writes `t` first (docs/protocol.md).
const MSG_PREFIX: &[u8] = br#"{"t":"msg","#;
/// `"text":"`, exactly 8 bytes: compared as one word at each position.
const TEXT_KEY: [u8; 8] = *br#""text":""#;
/// The shortest `"seq":0,"ts":0,"from":null,` before the text key: no need to look there.
const SKIP: usize = 27;

/// What one `wschat.v1` text frame holds for the generator.
pub enum Frame {
    /// A room message; its header when the `text` field held one.
    Msg(Option<[u8; HDR]>),
    /// hello, presence, ack or missed: not a delivery.
    Other,
}

/// Sorts one text frame's payload and, for a `msg`, unescapes the header of its `text`.
pub fn unwrap(payload: &[u8]) -> Frame {
    if !payload.starts_with(MSG_PREFIX) {
        return Frame::Other;
    }
    let rest = payload.get(MSG_PREFIX.len() + SKIP..).unwrap_or_default();
    let key = u64::from_ne_bytes(TEXT_KEY);
    let hdr = rest
        .windows(TEXT_KEY.len())
        .position(|w| <[u8; 8]>::try_from(w).is_ok_and(|w| u64::from_ne_bytes(w) == key))
        .and_then(|at| unescape_header(&rest[at + TEXT_KEY.len()..]));
    Frame::Msg(hdr)
}

/// The first HDR bytes of the JSON string whose body starts `s` (RFC 8259 7 escapes);
/// None if the string ends first or an escape is malformed or not ASCII.
fn unescape_header(s: &[u8]) -> Option<[u8; HDR]> {
    let mut out = [0u8; HDR];
    let mut i = 0;
    for slot in out.iter_mut() {
        let b = *s.get(i)?;
        i += 1;
        *slot = match b {
            b'"' => return None,
            b'\\' => {
                let e = *s.get(i)?;
                i += 1;
                match e {
                    b'"' | b'\\' | b'/' => e,
                    b'b' => 0x08,
                    b'f' => 0x0c,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'u' => {
                        // The header is 7-bit: only \u00XX with XX < 0x80 can stand for a byte.
                        let [b'0', b'0', hi, lo] = *s.get(i..i + 4)? else {
                            return None;
                        };
                        i += 4;
                        let v = nibble(hi)? << 4 | nibble(lo)?;
                        v.is_ascii().then_some(v)?
                    }
                    _ => return None,
                }
            }
            b => b,
        };
    }
    Some(out)
}

/// The value of one hex digit (either case).
fn nibble(h: u8) -> Option<u8> {
    match h {
        b'0'..=b'9' => Some(h - b'0'),
        b'a'..=b'f' => Some(h - b'a' + 10),
        b'A'..=b'F' => Some(h - b'A' + 10),
        _ => None,
    }
}

/// Checks the unwrapping on frames as the server writes them (benches run without a test
/// harness, so the v1 scenario calls this before its first run).
pub fn self_check() -> Result<(), String> {
    let f = br#"{"t":"msg","seq":7,"ts":1,"from":"guest-3","text":"a\"\\\n\u0001\u001fbcdefghijkxxxx"}"#;
    match unwrap(f) {
        Frame::Msg(Some(h)) if &h == b"a\"\\\n\x01\x1fbcdefghijk" => {}
        _ => return Err("v1: the header of an escaped msg frame was not recovered".into()),
    }
    if !matches!(unwrap(br#"{"t":"presence","count":2}"#), Frame::Other) {
        return Err("v1: a presence frame was taken for a message".into());
    }
    let short = br#"{"t":"msg","seq":1,"ts":1,"from":"a","text":"short"}"#;
    if !matches!(unwrap(short), Frame::Msg(None)) {
        return Err("v1: a text shorter than the header was not flagged".into());
    }
    Ok(())
}
