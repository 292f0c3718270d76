//! The envelope around every message on a room's channel: 10 bytes that say what the payload
//! is and which node sent it, so a node can skip its own messages when the channel echoes them.
//!
//! `0xC1` (magic + version 1: a byte that never starts valid UTF-8, so a stray
//! `redis-cli PUBLISH` of text is rejected), the kind byte (`1` text, `2` binary), the sender's
//! node id as 8 big-endian bytes, then the payload. A text payload is checked to be valid UTF-8
//! on receipt.

use std::hash::{BuildHasher, Hasher};

use crate::message::MessageKind;

/// Envelope first byte: magic + version 1. 0xC1 never occurs in valid UTF-8.
const MAGIC_V1: u8 = 0xC1;
/// Envelope header length: magic, kind, 8-byte node id.
pub(super) const HEADER_LEN: usize = 10;

/// A decoded envelope; the payload borrows from the received frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Envelope<'a> {
    pub(super) kind: MessageKind,
    /// The node that published it.
    pub(super) node_id: u64,
    pub(super) payload: &'a [u8],
}

/// The 10-byte envelope header: magic/version, kind, node id (big-endian). The payload
/// follows it in the same RESP bulk string, written without a copy into one buffer.
pub(super) fn encode_header(kind: MessageKind, node_id: u64) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[0] = MAGIC_V1;
    header[1] = match kind {
        MessageKind::Text => 1,
        MessageKind::Binary => 2,
    };
    header[2..10].copy_from_slice(&node_id.to_be_bytes());
    header
}

/// Full envelope (header + payload) as one buffer: what another node would publish.
#[cfg(test)]
pub(super) fn encode(kind: MessageKind, node_id: u64, payload: &[u8]) -> Vec<u8> {
    let mut envelope = Vec::with_capacity(HEADER_LEN + payload.len());
    envelope.extend_from_slice(&encode_header(kind, node_id));
    envelope.extend_from_slice(payload);
    envelope
}

/// Decodes an envelope. `None` if malformed: wrong magic/version, unknown kind, short
/// header, or a text payload that is not valid UTF-8.
pub(super) fn decode(data: &[u8]) -> Option<Envelope<'_>> {
    if data.len() < HEADER_LEN || data[0] != MAGIC_V1 {
        return None;
    }
    let kind = match data[1] {
        1 => MessageKind::Text,
        2 => MessageKind::Binary,
        _ => return None,
    };
    let node_id = u64::from_be_bytes(data[2..10].try_into().ok()?);
    let payload = &data[HEADER_LEN..];
    if kind == MessageKind::Text && std::str::from_utf8(payload).is_err() {
        return None;
    }
    Some(Envelope {
        kind,
        node_id,
        payload,
    })
}

/// A random, non-zero node id (std's randomly seeded hasher, pid and time): node ids must
/// differ between the processes that share a Redis, and nothing coordinates them.
pub(crate) fn random_node_id() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    if let Ok(since_epoch) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(since_epoch.as_nanos());
    }
    hasher.finish().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(kind: MessageKind, node_id: u64, payload: &[u8]) -> Option<Envelope<'_>> {
        Some(Envelope {
            kind,
            node_id,
            payload,
        })
    }

    #[test]
    fn envelope_roundtrip() {
        let encoded = encode(MessageKind::Text, 0x0102_0304_0506_0708, "héllo".as_bytes());
        assert_eq!(&encoded[..10], &[0xC1, 1, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            decode(&encoded),
            envelope(MessageKind::Text, 0x0102_0304_0506_0708, "héllo".as_bytes())
        );
        let encoded = encode(MessageKind::Binary, u64::MAX, &[0xff, 0, 0xfe]);
        assert_eq!(
            decode(&encoded),
            envelope(MessageKind::Binary, u64::MAX, &[0xff, 0, 0xfe])
        );
        let encoded = encode(MessageKind::Binary, 7, b"");
        assert_eq!(decode(&encoded), envelope(MessageKind::Binary, 7, b""));
    }

    #[test]
    fn envelope_malformed() {
        let good = encode(MessageKind::Text, 1, b"hi");
        assert_eq!(decode(&good[..9]), None); // short
        assert_eq!(decode(b""), None);
        assert_eq!(decode(b"hello world, plain text"), None); // bad magic
        let mut bad = good.clone();
        bad[1] = 3; // unknown kind
        assert_eq!(decode(&bad), None);
        let bad_utf8 = encode(MessageKind::Text, 1, &[0xff, 0xfe]);
        assert_eq!(decode(&bad_utf8), None);
        assert!(decode(&encode(MessageKind::Binary, 1, &[0xff])).is_some());
    }

    #[test]
    fn node_ids_are_non_zero_and_differ() {
        let (a, b) = (random_node_id(), random_node_id());
        assert!(a != 0 && b != 0);
        assert_ne!(a, b);
    }
}
