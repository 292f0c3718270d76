//! Negotiation of permessage-deflate (RFC 7692 sections 5 and 7) from a client's
//! `Sec-WebSocket-Extensions` header values.
//!
//! We always answer with both `server_no_context_takeover` and `client_no_context_takeover`
//! (RFC 7692 7.1.1.1 and 7.1.1.2 let a server add them even when not offered): no connection
//! keeps any compression state between messages, and one compressed frame serves every member.
//!
//! Window sizes:
//! - `client_max_window_bits` (what the client compresses with) only matters to an inflater that
//!   keeps a window; ours inflates a whole message into one buffer, so any size works. It may be
//!   answered only when offered (7.1.2.2): we echo its value, or 15 for the bare form.
//! - `server_max_window_bits=N` limits the distances in what we send. Our compressor (miniz_oxide)
//!   always uses a 32 KiB window, but a message of at most 2^N bytes compressed without context
//!   can only refer back less than 2^N bytes, so it honours any N in 8..15: larger messages are
//!   sent uncompressed, which RFC 7692 allows for any message. See [`Agreement::may_compress`].
//!   (miniz_oxide 0.9's `CompressorOxide::with_params` can limit the window itself, by falling
//!   back to RLE below 12 bits and to level 1 from 12 to 14; that would need one compressed
//!   variant per window size, where this rule keeps one frame for every member. Browsers never
//!   offer `server_max_window_bits`; Autobahn 13.* does.)

use std::fmt;

const EXTENSION: &str = "permessage-deflate";
/// The largest LZ77 window of deflate (RFC 1951), and of our compressor.
pub const MAX_WINDOW_BITS: u8 = 15;
/// The smallest window RFC 7692 allows (7.1.2.1).
pub const MIN_WINDOW_BITS: u8 = 8;

/// What was agreed with one client: kept per connection (two bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    /// `Some` when the client offered `server_max_window_bits=N` (its value): it must be
    /// answered with that parameter to be accepted (7.1.2.1), and it bounds what we compress.
    pub server_max_window_bits: Option<u8>,
    /// `Some` when the client offered `client_max_window_bits` (its value, 15 if bare).
    pub client_max_window_bits: Option<u8>,
}

impl Agreement {
    /// The `Sec-WebSocket-Extensions` value of the 101 response.
    pub fn response_header(&self) -> String {
        let mut value = String::from(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        );
        if let Some(bits) = self.server_max_window_bits {
            value.push_str(&format!("; server_max_window_bits={bits}"));
        }
        if let Some(bits) = self.client_max_window_bits {
            value.push_str(&format!("; client_max_window_bits={bits}"));
        }
        value
    }

    /// True when a message of `payload_len` bytes may go compressed to this client: its
    /// window is the full 32 KiB, or the message is no longer than its window (so no
    /// back-reference of a context-free compression can reach past it).
    pub fn may_compress(&self, payload_len: usize) -> bool {
        let bits = self.server_max_window_bits.unwrap_or(MAX_WINDOW_BITS);
        bits >= MAX_WINDOW_BITS || payload_len <= 1usize << bits
    }
}

/// Why no offer was accepted; logged at debug level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declined(pub String);

impl fmt::Display for Declined {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "permessage-deflate declined: {}", self.0)
    }
}

/// The outcome of negotiation for one upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Negotiation {
    /// The client did not offer permessage-deflate (or its header could not be read at all
    /// before any offer of it): no extension, nothing to log.
    NotOffered,
    /// The first acceptable offer; answer with [`Agreement::response_header`].
    Accepted(Agreement),
    /// Every permessage-deflate offer was invalid: no extension; the reason is for the log.
    Declined(Declined),
}

/// Negotiates from every `Sec-WebSocket-Extensions` value of the request, in order (several
/// header lines are one comma-separated list, RFC 9110 5.3). Other extensions are ignored;
/// the first valid permessage-deflate offer wins (RFC 7692 5: offers are in preference order).
pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a str>) -> Negotiation {
    let mut first_error: Option<String> = None;
    for value in values {
        for element in split_top_level(value, b',') {
            let Some(element) = element else {
                first_error.get_or_insert_with(|| "unbalanced quotes in the header".into());
                break;
            };
            let mut parts = split_top_level(element, b';');
            let name = match parts.next() {
                Some(Some(name)) => name.trim(),
                _ => continue,
            };
            if !name.eq_ignore_ascii_case(EXTENSION) {
                continue;
            }
            match parse_offer(parts) {
                Ok(agreement) => return Negotiation::Accepted(agreement),
                Err(reason) => {
                    first_error.get_or_insert(reason);
                }
            }
        }
    }
    match first_error {
        Some(reason) => Negotiation::Declined(Declined(reason)),
        None => Negotiation::NotOffered,
    }
}

/// Reads one offer's parameters (RFC 7692 7.1): an unknown, duplicated or ill-formed
/// parameter makes the offer invalid ("A server MUST decline an extension negotiation offer
/// for this extension if any of the following conditions are met").
fn parse_offer<'a>(params: impl Iterator<Item = Option<&'a str>>) -> Result<Agreement, String> {
    let mut server_no_context = false;
    let mut client_no_context = false;
    let mut server_bits: Option<u8> = None;
    let mut client_bits: Option<Option<u8>> = None;
    for param in params {
        let param = param.ok_or("unbalanced quotes in a parameter")?;
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(unquote(value.trim())?)),
            None => (param.trim(), None),
        };
        let duplicate = || format!("duplicate parameter {name}");
        if name.eq_ignore_ascii_case("server_no_context_takeover") {
            no_value(name, &value)?;
            if std::mem::replace(&mut server_no_context, true) {
                return Err(duplicate());
            }
        } else if name.eq_ignore_ascii_case("client_no_context_takeover") {
            no_value(name, &value)?;
            if std::mem::replace(&mut client_no_context, true) {
                return Err(duplicate());
            }
        } else if name.eq_ignore_ascii_case("server_max_window_bits") {
            let value = value.ok_or("server_max_window_bits needs a value")?;
            if server_bits.replace(window_bits(name, &value)?).is_some() {
                return Err(duplicate());
            }
        } else if name.eq_ignore_ascii_case("client_max_window_bits") {
            let bits = match value {
                Some(value) => Some(window_bits(name, &value)?),
                None => None,
            };
            if client_bits.replace(bits).is_some() {
                return Err(duplicate());
            }
        } else if name.is_empty() {
            return Err("empty parameter".into());
        } else {
            return Err(format!("unknown parameter {name}"));
        }
    }
    Ok(Agreement {
        server_max_window_bits: server_bits,
        client_max_window_bits: client_bits.map(|bits| bits.unwrap_or(MAX_WINDOW_BITS)),
    })
}

fn no_value(name: &str, value: &Option<String>) -> Result<(), String> {
    match value {
        Some(value) => Err(format!("{name} takes no value (got {value:?})")),
        None => Ok(()),
    }
}

/// A window size: "1*DIGIT" from 8 to 15 with no leading zero (RFC 7692 7.1.2.1), after
/// quoted-string unescaping.
fn window_bits(name: &str, value: &str) -> Result<u8, String> {
    let bad = || format!("{name}={value:?} is not 8..15");
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) || value.starts_with('0') {
        return Err(bad());
    }
    match value.parse::<u8>() {
        Ok(bits) if (MIN_WINDOW_BITS..=MAX_WINDOW_BITS).contains(&bits) => Ok(bits),
        _ => Err(bad()),
    }
}

/// A parameter value: a token, or a quoted-string with its quoted-pairs undone.
fn unquote(value: &str) -> Result<String, String> {
    let Some(inner) = value.strip_prefix('"') else {
        if value.is_empty() || !value.bytes().all(is_tchar) {
            return Err(format!("bad parameter value {value:?}"));
        }
        return Ok(value.to_string());
    };
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next().ok_or("dangling escape in a quoted value")?),
            '"' => {
                return if chars.as_str().is_empty() {
                    Ok(out)
                } else {
                    Err(format!("text after a quoted value {value:?}"))
                };
            }
            c => out.push(c),
        }
    }
    Err(format!("unterminated quoted value {value:?}"))
}

/// RFC 9110 tchar.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Splits `text` at `separator` outside quoted-strings. An item is `None` when the quotes
/// do not balance (the rest of the text cannot be read reliably, so it ends the split).
fn split_top_level(text: &str, separator: u8) -> impl Iterator<Item = Option<&str>> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let text = rest?;
        let bytes = text.as_bytes();
        let (mut quoted, mut escaped) = (false, false);
        for (i, &b) in bytes.iter().enumerate() {
            if escaped {
                escaped = false;
            } else if quoted && b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                quoted = !quoted;
            } else if !quoted && b == separator {
                rest = Some(&text[i + 1..]);
                return Some(Some(&text[..i]));
            }
        }
        rest = None;
        Some(if quoted { None } else { Some(text) })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agree(values: &[&str]) -> Agreement {
        match negotiate(values.iter().copied()) {
            Negotiation::Accepted(agreement) => agreement,
            other => panic!("{values:?}: {other:?}"),
        }
    }

    fn declined(values: &[&str]) -> String {
        match negotiate(values.iter().copied()) {
            Negotiation::Declined(Declined(reason)) => reason,
            other => panic!("{values:?}: {other:?}"),
        }
    }

    const BASE: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

    #[test]
    fn chrome_offer_gets_client_window_15() {
        let agreement = agree(&["permessage-deflate; client_max_window_bits"]);
        assert_eq!(
            agreement,
            Agreement {
                server_max_window_bits: None,
                client_max_window_bits: Some(15)
            }
        );
        assert_eq!(
            agreement.response_header(),
            format!("{BASE}; client_max_window_bits=15")
        );
    }

    #[test]
    fn firefox_bare_offer_gets_the_base_answer() {
        let agreement = agree(&["permessage-deflate"]);
        assert_eq!(agreement.response_header(), BASE);
        assert!(agreement.may_compress(10 << 20));
    }

    #[test]
    fn no_offer_is_not_offered() {
        assert_eq!(negotiate([]), Negotiation::NotOffered);
        assert_eq!(
            negotiate(["x-webkit-deflate-frame", "foo; bar=1"]),
            Negotiation::NotOffered
        );
    }

    #[test]
    fn first_valid_offer_wins_across_header_lines_and_unknown_extensions() {
        // Autobahn 13.7.x style: several offers in preference order.
        let agreement = agree(&[
            "x-foo; a=1, permessage-deflate; server_max_window_bits=8",
            "permessage-deflate",
        ]);
        assert_eq!(agreement.server_max_window_bits, Some(8));
        // An invalid first offer falls through to the next one.
        let agreement =
            agree(&["permessage-deflate; bogus, PerMessage-Deflate; client_max_window_bits=10"]);
        assert_eq!(agreement.client_max_window_bits, Some(10));
        let agreement = agree(&[
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate",
        ]);
        assert_eq!(agreement.server_max_window_bits, None);
    }

    #[test]
    fn autobahn_13_offers_are_accepted_as_offered() {
        // The parameter order of Autobahn's PerMessageDeflateOffer.
        for bits in 8..=15u8 {
            let offer = format!(
                "permessage-deflate; client_max_window_bits; client_no_context_takeover; \
                 server_max_window_bits={bits}; server_no_context_takeover"
            );
            let agreement = agree(&[&offer]);
            assert_eq!(agreement.server_max_window_bits, Some(bits));
            assert_eq!(agreement.client_max_window_bits, Some(15));
            // Accepting the parameter means answering it (7.1.2.1), 15 included.
            assert_eq!(
                agreement.response_header(),
                format!("{BASE}; server_max_window_bits={bits}; client_max_window_bits=15")
            );
            let offer = format!("permessage-deflate; client_max_window_bits={bits}");
            let header = agree(&[&offer]).response_header();
            assert_eq!(header, format!("{BASE}; client_max_window_bits={bits}"));
        }
    }

    #[test]
    fn server_window_8_is_honoured_by_leaving_long_messages_uncompressed() {
        let agreement = agree(&["permessage-deflate; server_max_window_bits=8"]);
        assert!(
            agreement
                .response_header()
                .ends_with("server_max_window_bits=8")
        );
        assert!(agreement.may_compress(256));
        assert!(!agreement.may_compress(257));
        let agreement = agree(&["permessage-deflate; server_max_window_bits=14"]);
        assert!(agreement.may_compress(16384));
        assert!(!agreement.may_compress(16385));
    }

    #[test]
    fn quoted_values_are_unescaped() {
        let agreement = agree(&["permessage-deflate; client_max_window_bits=\"1\\2\""]);
        assert_eq!(agreement.client_max_window_bits, Some(12));
        // A comma inside quotes does not start a new offer.
        let reason =
            declined(&["permessage-deflate; client_max_window_bits=\"10, permessage-deflate\""]);
        assert!(reason.contains("client_max_window_bits"), "{reason}");
    }

    #[test]
    fn each_invalid_form_is_declined() {
        for offer in [
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover=\"x\"",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=08",
            "permessage-deflate; server_max_window_bits=1a",
            "permessage-deflate; server_max_window_bits=",
            "permessage-deflate; client_max_window_bits=0",
            "permessage-deflate; client_max_window_bits=256",
            "permessage-deflate; client_max_window_bits=-9",
            "permessage-deflate; x-unknown",
            "permessage-deflate; ;",
            "permessage-deflate; client_max_window_bits=\"10",
            "permessage-deflate; client_max_window_bits=\"10\"x",
            "permessage-deflate; client_max_window_bits=1 0",
        ] {
            let reason = declined(&[offer]);
            assert!(!reason.is_empty(), "{offer}");
            assert!(
                Declined(reason.clone()).to_string().contains(&reason),
                "{offer}"
            );
        }
    }
}
