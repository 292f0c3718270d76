//! The `wschat.v1` subprotocol (docs/protocol.md): what a client asks for on the upgrade
//! (the `Sec-WebSocket-Protocol` offer, `since`, `name` and `key` in the query) and the frames
//! the server sends to the members that speak it. Pure functions, no I/O; the loop calls them.
//!
//! A client that does not offer `wschat.v1` never sees any of this: its bytes are relayed
//! exactly as today.

use std::fmt;
use std::fmt::Write as _;

use crate::message::MessageKind;

/// The subprotocol token a client offers and the server echoes in the 101.
pub const SUBPROTOCOL: &str = "wschat.v1";
/// A display name is at most this many characters (Unicode scalar values)...
pub const MAX_NAME_CHARS: usize = 32;
/// ...and this many bytes, so a name of wide characters stays small in every frame.
pub const MAX_NAME_BYTES: usize = 96;
/// Names the server makes up start with this; a client may not choose one (no impersonation
/// of a generated name).
pub const GENERATED_PREFIX: &str = "guest-";
/// A reconnect key is at most this many characters of `[0-9A-Za-z_-]`.
pub const MAX_KEY_LEN: usize = 64;
/// First byte of a binary message frame (room traffic that was binary).
pub const BINARY_MESSAGE: u8 = 0x01;

/// Why an upgrade asking for `wschat.v1` was refused (each maps to an HTTP status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum V1Error {
    /// A `wschat.*` token other than `wschat.v1`, or a malformed offer naming `wschat`.
    Subprotocol,
    /// `since` is not `EPOCH:SEQ` (16 hex digits, a decimal number), or is ahead of the room.
    Since(&'static str),
    /// The name is empty, too long, not printable, or reserved.
    Name(&'static str),
    /// The key is not 1..=64 characters of `[0-9A-Za-z_-]`.
    Key,
    /// A parameter appears twice, or is not percent-encoded UTF-8.
    Query(&'static str),
    /// Another connected member of the room uses this name.
    NameTaken,
}

impl V1Error {
    /// 409 for a name in use (the client may pick another), 400 for the rest.
    pub fn is_conflict(&self) -> bool {
        matches!(self, V1Error::NameTaken)
    }
}

impl fmt::Display for V1Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            V1Error::Subprotocol => write!(
                f,
                "unsupported subprotocol (this server speaks {SUBPROTOCOL})"
            ),
            V1Error::Since(why) => write!(f, "invalid since: {why}"),
            V1Error::Name(why) => write!(f, "invalid name: {why}"),
            V1Error::Key => write!(
                f,
                "invalid key: 1 to {MAX_KEY_LEN} characters of [0-9A-Za-z_-]"
            ),
            V1Error::Query(why) => write!(f, "invalid query: {why}"),
            V1Error::NameTaken => f.write_str("name in use by another member of the room"),
        }
    }
}

impl std::error::Error for V1Error {}

/// Whether a `Sec-WebSocket-Protocol` offer (all its header values joined by commas) asks for
/// `wschat.v1`. Tokens of other protocols are ignored as today (RFC 6455 4.2.2: the server
/// selects one offered protocol or none); a token that names `wschat` but is not exactly
/// `wschat.v1` (`wschat.v2`, `wschat.v1;x=1`) is refused, so a client never silently gets raw
/// bytes when it meant to speak the subprotocol.
pub fn offered(header: Option<&str>) -> Result<bool, V1Error> {
    let Some(header) = header else {
        return Ok(false);
    };
    let mut v1 = false;
    for token in header.split(',').map(str::trim) {
        if token == SUBPROTOCOL {
            v1 = true;
        } else if token
            .get(..6)
            .is_some_and(|p| p.eq_ignore_ascii_case("wschat"))
        {
            return Err(V1Error::Subprotocol);
        }
    }
    Ok(v1)
}

/// Where a reconnecting client left off: the room's epoch and the last sequence it saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Since {
    pub epoch: u64,
    pub seq: u64,
}

/// What a `wschat.v1` client asked for in the upgrade URL's query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    pub since: Option<Since>,
    /// Validated and trimmed.
    pub name: Option<String>,
    /// A secret the client keeps for its session: a member reconnecting with the same key may
    /// take the name its previous (not yet timed-out) connection still holds.
    pub key: Option<String>,
}

/// Parses the query (without the `?`). Unknown parameters are ignored (a later client may send
/// more); known ones must be valid and appear once.
pub fn parse_query(query: &str) -> Result<Params, V1Error> {
    let mut params = Params::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "since" => {
                if params.since.is_some() {
                    return Err(V1Error::Query("since appears twice"));
                }
                params.since = Some(parse_since(&percent_decode(value)?)?);
            }
            "name" => {
                if params.name.is_some() {
                    return Err(V1Error::Query("name appears twice"));
                }
                let decoded = percent_decode(value)?;
                // An empty name means "none": the server makes one up.
                if !decoded.trim().is_empty() {
                    params.name = Some(validate_name(&decoded)?);
                }
            }
            "key" => {
                if params.key.is_some() {
                    return Err(V1Error::Query("key appears twice"));
                }
                let valid = !value.is_empty()
                    && value.len() <= MAX_KEY_LEN
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if !valid {
                    return Err(V1Error::Key);
                }
                params.key = Some(value.to_string());
            }
            _ => {}
        }
    }
    Ok(params)
}

/// `EPOCH:SEQ`: the epoch as the 16 hex digits the hello gave, the sequence in decimal.
pub fn parse_since(text: &str) -> Result<Since, V1Error> {
    let (epoch, seq) = text
        .split_once(':')
        .ok_or(V1Error::Since("expected EPOCH:SEQ"))?;
    if epoch.len() != 16 || !epoch.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(V1Error::Since("the epoch must be 16 hex digits"));
    }
    let epoch = u64::from_str_radix(epoch, 16).map_err(|_| V1Error::Since("bad epoch"))?;
    if seq.is_empty() || seq.len() > 20 || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return Err(V1Error::Since("the sequence must be a decimal number"));
    }
    let seq = seq
        .parse()
        .map_err(|_| V1Error::Since("the sequence is out of range"))?;
    Ok(Since { epoch, seq })
}

/// Checks a display name: trimmed, 1..=32 characters and at most 96 bytes, no control or
/// invisible formatting characters (which could make two names look alike or reorder the
/// text around them), not a generated name. Returns the trimmed name.
pub fn validate_name(name: &str) -> Result<String, V1Error> {
    let name = name.trim();
    if name.is_empty() {
        return Err(V1Error::Name("empty"));
    }
    if name.chars().count() > MAX_NAME_CHARS || name.len() > MAX_NAME_BYTES {
        return Err(V1Error::Name("longer than 32 characters"));
    }
    if name.chars().any(|c| c.is_control() || is_invisible(c)) {
        return Err(V1Error::Name("control or invisible characters"));
    }
    if name
        .get(..GENERATED_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(GENERATED_PREFIX))
    {
        return Err(V1Error::Name(
            "names starting with guest- are given by the server",
        ));
    }
    Ok(name.to_string())
}

/// Formatting characters that render as nothing: zero-width spaces and joiners, bidi controls,
/// the byte-order mark, soft hyphen, variation selectors, tags.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00ad}' | '\u{034f}' | '\u{061c}' | '\u{115f}' | '\u{1160}' | '\u{180e}'
        | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{206f}'
        | '\u{3164}' | '\u{fe00}'..='\u{fe0f}' | '\u{feff}' | '\u{ffa0}'
        | '\u{e0000}'..='\u{e007f}')
}

/// Two names are the same person's if they match ignoring case.
pub fn same_name(a: &str, b: &str) -> bool {
    a.to_lowercase() == b.to_lowercase()
}

/// The name of a member that gave none (and of a member that does not speak `wschat.v1`):
/// unique among connected members, since connection ids are never reused.
pub fn generated_name(connection_id: u64) -> String {
    format!("{GENERATED_PREFIX}{connection_id}")
}

/// `%XX` escapes and `+` as space; the result must be UTF-8.
fn percent_decode(text: &str) -> Result<String, V1Error> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(V1Error::Query("a bad %-escape"))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| V1Error::Query("not UTF-8 after %-decoding"))
}

/// Who sent a message, as the frames show it.
#[derive(Debug, Clone, Copy)]
pub enum From<'a> {
    /// A member with a name (its own or a generated one).
    Named(&'a str),
    /// A member that does not speak `wschat.v1`: shown under its generated name.
    Guest(u64),
    /// Another node of the cluster (`--redis`): the sender is not known here.
    Remote,
}

/// One room message as `wschat.v1` members receive it.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    pub seq: u64,
    /// The server's receive time, milliseconds since the Unix epoch.
    pub ts_ms: u64,
    pub from: From<'a>,
    pub kind: MessageKind,
    pub payload: &'a [u8],
}

/// First byte of a text message frame: never `{`, which starts the JSON frames.
pub const TEXT_MESSAGE: char = 'm';
/// In a text message frame, `from` starts with this for a member's name...
pub const FROM_NAME: char = '@';
/// ...and with this for a member that does not speak `wschat.v1`, followed by the connection
/// id that its generated name (`guest-<id>`) ends with.
pub const FROM_GUEST: char = '#';

/// Encodes one message for every `wschat.v1` member: the frame's opcode and payload. Text
/// becomes a text frame of one header line and the text unchanged,
/// `m<seq> <ts> <from>\n<text>` (docs/protocol.md): it goes to every such member of the
/// room, so it is as short as it can stay readable, and the text needs no escaping. Binary
/// keeps its bytes behind a small binary header.
pub fn encode_message(d: &Delivery<'_>) -> (MessageKind, Vec<u8>) {
    match d.kind {
        MessageKind::Text => {
            // Text messages were validated as UTF-8 on arrival (and by the sending node); a
            // browser closes the connection on a text frame that is not.
            let text = String::from_utf8_lossy(d.payload);
            let mut out = String::with_capacity(text.len() + 48);
            let _ = write!(out, "{TEXT_MESSAGE}{} {} ", d.seq, d.ts_ms);
            match d.from {
                From::Named(name) => {
                    out.push(FROM_NAME);
                    // Names have no control characters (validate_name): the line cannot end
                    // early. Kept true here whatever a caller passes.
                    out.extend(
                        name.chars()
                            .map(|c| if c.is_control() { '\u{fffd}' } else { c }),
                    );
                }
                From::Guest(id) => {
                    let _ = write!(out, "{FROM_GUEST}{id}");
                }
                From::Remote => {}
            }
            out.push('\n');
            out.push_str(&text);
            (MessageKind::Text, out.into_bytes())
        }
        MessageKind::Binary => {
            let mut name = String::new();
            match d.from {
                From::Named(n) => name.push_str(n),
                From::Guest(id) => name = generated_name(id),
                From::Remote => {}
            }
            let name = &name.as_bytes()[..name.len().min(255)];
            let mut out = Vec::with_capacity(d.payload.len() + 18 + name.len());
            out.push(BINARY_MESSAGE);
            out.extend_from_slice(&d.seq.to_be_bytes());
            out.extend_from_slice(&d.ts_ms.to_be_bytes());
            out.push(name.len() as u8);
            out.extend_from_slice(name);
            out.extend_from_slice(d.payload);
            (MessageKind::Binary, out)
        }
    }
}

/// The first frame on a `wschat.v1` connection.
pub fn hello(epoch: u64, last_seq: u64, name: &str, count: usize) -> String {
    let mut out = String::with_capacity(96 + name.len());
    let _ = write!(
        out,
        "{{\"t\":\"hello\",\"v\":1,\"epoch\":\"{epoch:016x}\",\"seq\":{last_seq},\"name\":"
    );
    push_json_string(&mut out, name);
    let _ = write!(out, ",\"count\":{count}}}");
    out
}

/// Tells a sender the sequence and time its message got (instead of an echo).
pub fn ack(seq: u64, ts_ms: u64) -> String {
    format!("{{\"t\":\"ack\",\"seq\":{seq},\"ts\":{ts_ms}}}")
}

/// Messages a reconnecting client cannot get: `count` of them, or an unknown number (`null`)
/// when its epoch is not the room's.
pub fn missed(count: Option<u64>) -> String {
    match count {
        Some(n) => format!("{{\"t\":\"missed\",\"count\":{n}}}"),
        None => "{\"t\":\"missed\",\"count\":null}".to_string(),
    }
}

/// The room's member count and who came and went since the last presence frame. `more` counts
/// names left out to keep the frame bounded.
pub fn presence<S: AsRef<str>>(count: usize, joined: &[S], left: &[S], more: usize) -> String {
    let mut out = String::with_capacity(64);
    let _ = write!(out, "{{\"t\":\"presence\",\"count\":{count},\"joined\":");
    push_json_list(&mut out, joined);
    out.push_str(",\"left\":");
    push_json_list(&mut out, left);
    if more > 0 {
        let _ = write!(out, ",\"more\":{more}");
    }
    out.push('}');
    out
}

fn push_json_list<S: AsRef<str>>(out: &mut String, items: &[S]) {
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(out, item.as_ref());
    }
    out.push(']');
}

/// A JSON string literal (RFC 8259 7): quote, backslash and control characters escaped.
fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offer_selects_v1_ignores_others_and_refuses_other_wschat_tokens() {
        assert_eq!(offered(None), Ok(false));
        assert_eq!(offered(Some("chat, superchat")), Ok(false));
        assert_eq!(offered(Some("chat, wschat.v1")), Ok(true));
        assert_eq!(offered(Some("wschat.v1")), Ok(true));
        assert_eq!(offered(Some("wschat.v2")), Err(V1Error::Subprotocol));
        assert_eq!(offered(Some("wschat.v1;x=1")), Err(V1Error::Subprotocol));
        assert_eq!(offered(Some("WSCHAT")), Err(V1Error::Subprotocol));
    }

    #[test]
    fn since_is_epoch_colon_seq() {
        assert_eq!(
            parse_since("00000000000000ff:42"),
            Ok(Since {
                epoch: 255,
                seq: 42
            })
        );
        for bad in [
            "",
            "ff:1",
            "00000000000000ff",
            "00000000000000ff:",
            "00000000000000fg:1",
            "00000000000000ff:-1",
            "00000000000000ff:99999999999999999999",
            "00000000000000ff:1x",
        ] {
            assert!(parse_since(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_query_is_decoded_and_checked() {
        let p =
            parse_query("since=00000000000000ff%3A3&name=Ana+Mar%C3%ADa&key=abc_1-2&x=y").unwrap();
        assert_eq!(p.since, Some(Since { epoch: 255, seq: 3 }));
        assert_eq!(p.name.as_deref(), Some("Ana María"));
        assert_eq!(p.key.as_deref(), Some("abc_1-2"));
        assert_eq!(
            parse_query("name=").unwrap().name,
            None,
            "empty means generated"
        );
        assert!(parse_query("name=a&name=b").is_err());
        assert!(parse_query("name=%ZZ").is_err());
        assert!(parse_query("name=%FF").is_err(), "not UTF-8");
        assert!(parse_query("key=a%20b").is_err());
        assert!(parse_query("since=1:2").is_err());
    }

    #[test]
    fn names_are_bounded_printable_and_not_generated() {
        assert_eq!(validate_name("  bob  ").unwrap(), "bob");
        assert!(validate_name(&"x".repeat(32)).is_ok());
        assert!(validate_name(&"x".repeat(33)).is_err());
        assert!(validate_name(&"é".repeat(32)).is_ok());
        assert!(validate_name(&"😀".repeat(25)).is_err(), "over 96 bytes");
        assert!(validate_name("a\u{7}b").is_err());
        assert!(validate_name("a\u{202e}b").is_err());
        assert!(validate_name("bo\u{200b}b").is_err());
        assert!(validate_name("Guest-7").is_err());
        assert!(same_name("Bob", "bOB"));
    }

    #[test]
    fn text_messages_are_a_header_line_and_the_text_unchanged() {
        let d = Delivery {
            seq: 7,
            ts_ms: 1_700_000_000_123,
            from: From::Named("Ana María"),
            kind: MessageKind::Text,
            payload: "hi \"you\"\n\u{1}".as_bytes(),
        };
        let (kind, bytes) = encode_message(&d);
        assert_eq!(kind, MessageKind::Text);
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "m7 1700000000123 @Ana María\nhi \"you\"\n\u{1}"
        );
        let guest = Delivery {
            from: From::Guest(12),
            payload: b"x",
            ..d
        };
        assert_eq!(encode_message(&guest).1, b"m7 1700000000123 #12\nx");
        let remote = Delivery {
            from: From::Remote,
            payload: b"",
            ..d
        };
        assert_eq!(encode_message(&remote).1, b"m7 1700000000123 \n");
        let odd = Delivery {
            from: From::Named("a\nb"),
            payload: b"x",
            ..d
        };
        assert_eq!(
            String::from_utf8(encode_message(&odd).1).unwrap(),
            "m7 1700000000123 @a\u{fffd}b\nx",
            "a name never ends the header line"
        );
    }

    #[test]
    fn binary_messages_keep_their_bytes_behind_a_header() {
        let d = Delivery {
            seq: 1,
            ts_ms: 2,
            from: From::Named("ab"),
            kind: MessageKind::Binary,
            payload: &[0, 255],
        };
        let (kind, bytes) = encode_message(&d);
        assert_eq!(kind, MessageKind::Binary);
        let mut want = vec![BINARY_MESSAGE];
        want.extend_from_slice(&1u64.to_be_bytes());
        want.extend_from_slice(&2u64.to_be_bytes());
        want.extend_from_slice(&[2, b'a', b'b', 0, 255]);
        assert_eq!(bytes, want);
    }

    #[test]
    fn control_frames_are_json() {
        assert_eq!(
            hello(0xab, 5, "bob", 3),
            r#"{"t":"hello","v":1,"epoch":"00000000000000ab","seq":5,"name":"bob","count":3}"#
        );
        assert_eq!(ack(4, 9), r#"{"t":"ack","seq":4,"ts":9}"#);
        assert_eq!(missed(Some(3)), r#"{"t":"missed","count":3}"#);
        assert_eq!(missed(None), r#"{"t":"missed","count":null}"#);
        assert_eq!(
            presence(2, &["a"], &[] as &[&str], 0),
            r#"{"t":"presence","count":2,"joined":["a"],"left":[]}"#
        );
        assert!(presence(2, &["a"], &["b"], 4).ends_with(r#","more":4}"#));
    }
}
