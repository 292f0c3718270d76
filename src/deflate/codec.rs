//! The process-wide compressor and inflater, and the frame encoding of a compressed message.
//!
//! Both work on whole messages with no context takeover (RFC 7692 7.1.1): every message is
//! a raw DEFLATE stream of its own, so one compressor and one inflater serve every connection
//! in turn and no connection keeps any compression state between messages.

use std::fmt;

use bytes::{Buf, Bytes};
use miniz_oxide::deflate::core::{
    CompressorOxide, TDEFLFlush, TDEFLStatus, compress_to_output, create_comp_flags_from_zip_params,
};
use miniz_oxide::inflate::TINFLStatus;
use miniz_oxide::inflate::core::{DecompressorOxide, decompress, inflate_flags};

use crate::outbound::{EncodedFrame, SHARE_THRESHOLD};

/// What a sync flush ends with (an empty stored block's LEN and NLEN): the sender strips it,
/// the receiver appends it before inflating (RFC 7692 7.2.1 and 7.2.2).
pub const TRAILER: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// RSV1 in a frame's first byte: "Per-Message Compressed" (RFC 7692 6).
pub const RSV1: u8 = 0x40;

/// zlib's default level, which Node `ws` and Bun use too, so bytes on the wire compare; the
/// relay compresses once per room message, so the cost of level 6 over level 1 is shared by
/// every member.
pub const DEFAULT_LEVEL: u8 = 6;

/// Turns a message into the payload of a compressed frame. One per process: it holds about
/// 300 KiB of tables (see the module tests), reset before each message.
pub struct Compressor {
    inner: Box<CompressorOxide>,
    /// Messages compressed to something smaller, for `/metrics`.
    pub messages: u64,
    /// Payload bytes of those messages before compression.
    pub bytes_in: u64,
    /// Their compressed payload bytes.
    pub bytes_out: u64,
}

impl Compressor {
    /// `level` 1 (fastest) to 9 (smallest); see [`DEFAULT_LEVEL`].
    pub fn new(level: u8) -> Self {
        // Negative window bits: raw DEFLATE, no zlib header or Adler-32 (RFC 7692 7.2.1).
        let flags = create_comp_flags_from_zip_params(i32::from(level.clamp(1, 9)), -15, 0);
        Compressor {
            inner: Box::new(CompressorOxide::new(flags)),
            messages: 0,
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    /// The compressed payload of a one-frame message (sync flush, trailer stripped), or None
    /// when it would not be smaller than `payload`: such a message goes uncompressed.
    pub fn compress(&mut self, payload: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(payload.len() / 2 + 16);
        self.deflate_into(payload, &mut out).then_some(out)
    }

    /// The whole server frame of a compressed message (FIN, RSV1, `opcode`, unmasked), encoded
    /// once for every member that negotiated deflate, or None when compression does not make
    /// the payload smaller. Small and large frames follow `encode_frame`'s sharing rule.
    pub fn compress_frame(&mut self, opcode: u8, payload: &[u8]) -> Option<EncodedFrame> {
        // Compress behind room for the longest header, then write the real header just
        // before the payload: no copy of the compressed bytes for large frames.
        let mut frame = Vec::with_capacity(MAX_SERVER_HEADER + payload.len() / 2 + 16);
        frame.resize(MAX_SERVER_HEADER, 0);
        if !self.deflate_into(payload, &mut frame) {
            return None;
        }
        let len = frame.len() - MAX_SERVER_HEADER;
        let header = frame_header(0x80 | RSV1 | opcode, len);
        let start = MAX_SERVER_HEADER - header.len();
        frame[start..MAX_SERVER_HEADER].copy_from_slice(&header);
        Some(if frame.len() - start >= SHARE_THRESHOLD {
            let mut shared = Bytes::from(frame);
            shared.advance(start);
            EncodedFrame::Large(shared)
        } else {
            frame.drain(..start);
            EncodedFrame::Small(frame)
        })
    }

    /// Appends the compressed form of `payload` to `out`. False (with `out` holding some
    /// garbage past its old length) when the result would not be smaller than `payload`.
    fn deflate_into(&mut self, payload: &[u8], out: &mut Vec<u8>) -> bool {
        let base = out.len();
        // Output may overshoot by the trailer, which is stripped afterwards.
        let bound = base + payload.len() + TRAILER.len();
        // No context takeover: every message starts from an empty dictionary. (The reset
        // clears ~380 KB of tables, about 6 µs; a 2 KiB message then takes ~30 µs more, most
        // of it building its Huffman tables. A full flush instead of the reset saves little.)
        self.inner.reset();
        let (status, consumed) =
            compress_to_output(&mut self.inner, payload, TDEFLFlush::Sync, |chunk| {
                if out.len() + chunk.len() >= bound {
                    return false;
                }
                out.extend_from_slice(chunk);
                true
            });
        let smaller = status == TDEFLStatus::Okay
            && consumed == payload.len()
            && out[base..].ends_with(&TRAILER)
            && out.len() - TRAILER.len() - base < payload.len();
        if !smaller {
            return false;
        }
        out.truncate(out.len() - TRAILER.len());
        self.messages += 1;
        self.bytes_in += payload.len() as u64;
        self.bytes_out += (out.len() - base) as u64;
        true
    }
}

/// The longest header of a server frame (unmasked, 64-bit length).
const MAX_SERVER_HEADER: usize = 10;

/// A server frame's header: `first` byte, then the payload length (never masked).
fn frame_header(first: u8, len: usize) -> Vec<u8> {
    let mut header = Vec::with_capacity(MAX_SERVER_HEADER);
    header.push(first);
    match len {
        0..=125 => header.push(len as u8),
        126..=0xffff => {
            header.push(126);
            header.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            header.push(127);
            header.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    header
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// The inflated message would exceed the size limit: close 1009. Inflation stopped at the
    /// limit, so it cost no more than a message of that size.
    TooBig,
    /// Not valid DEFLATE data: close 1007 (as Node `ws` does).
    Invalid,
}

impl fmt::Display for InflateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InflateError::TooBig => "inflated message over the size limit",
            InflateError::Invalid => "invalid compressed data",
        })
    }
}

impl std::error::Error for InflateError {}

/// The first output allocation for a message, before it doubles towards the limit.
const FIRST_OUTPUT: usize = 4096;

/// Inflates whole messages. One per process (about 11 KiB, no window: the message is
/// inflated into one buffer that back-references read from), reset per message.
pub struct Inflater {
    inner: Box<DecompressorOxide>,
    /// The largest inflated message accepted (`--max-message-size`).
    limit: usize,
    /// Messages inflated, for `/metrics`.
    pub messages: u64,
    /// Their compressed payload bytes.
    pub bytes_in: u64,
    /// Their inflated payload bytes.
    pub bytes_out: u64,
}

impl Inflater {
    pub fn new(limit: usize) -> Self {
        Inflater {
            inner: Box::default(),
            limit,
            messages: 0,
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    /// The largest inflated message accepted.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The most compressed bytes a message may carry: what DEFLATE can add to an
    /// incompressible message of the size limit (zlib's `deflateBound` is smaller), so
    /// nothing that inflates within the limit is refused for its compressed size.
    pub fn compressed_limit(&self) -> usize {
        self.limit
            .saturating_add(self.limit >> 11)
            .saturating_add(64)
    }

    /// Inflates a message's compressed payload (the trailer is appended here) and appends the
    /// result to `out`. Stops as soon as the output would pass the limit; `out` may then hold
    /// part of the message past its old length. The buffer grows by doubling, never past
    /// the limit plus one byte.
    pub fn inflate_into(
        &mut self,
        compressed: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), InflateError> {
        let base = out.len();
        // One byte past the limit tells "exactly the limit" from "over it".
        let cap = self.limit.saturating_add(1);
        let mut size = FIRST_OUTPUT
            .max(compressed.len().saturating_mul(2))
            .min(cap);
        // Exact reservations: amortised growth would overshoot the limit by up to 2x.
        out.reserve_exact(base + size - out.len());
        out.resize(base + size, 0);
        let mut written = 0;
        self.inner.init();
        // Back-references read the output itself: all of the message stays in `out`.
        let flags = inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF
            | inflate_flags::TINFL_FLAG_HAS_MORE_INPUT;
        let mut result = Ok(());
        'inputs: for input in [compressed, &TRAILER[..]] {
            let mut input = input;
            loop {
                let (status, read, wrote) =
                    decompress(&mut self.inner, input, &mut out[base..], written, flags);
                input = &input[read..];
                written += wrote;
                match status {
                    TINFLStatus::NeedsMoreInput if input.is_empty() => break,
                    // A block with BFINAL set ends the stream: what follows is ignored, as
                    // zlib-based peers do.
                    TINFLStatus::Done => break 'inputs,
                    TINFLStatus::HasMoreOutput if size < cap => {
                        size = size.saturating_mul(2).min(cap);
                        out.reserve_exact(base + size - out.len());
                        out.resize(base + size, 0);
                    }
                    TINFLStatus::HasMoreOutput => {
                        result = Err(InflateError::TooBig);
                        break 'inputs;
                    }
                    _ => {
                        result = Err(InflateError::Invalid);
                        break 'inputs;
                    }
                }
            }
        }
        if result.is_ok() && written > self.limit {
            result = Err(InflateError::TooBig);
        }
        out.truncate(base + written);
        if result.is_ok() {
            self.messages += 1;
            self.bytes_in += compressed.len() as u64;
            self.bytes_out += written as u64;
        }
        result
    }

    /// Inflates into a new buffer (tests and callers without a frame around the payload).
    pub fn inflate(&mut self, compressed: &[u8]) -> Result<Vec<u8>, InflateError> {
        let mut out = Vec::new();
        self.inflate_into(compressed, &mut out).map(|()| out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat_line(i: usize) -> String {
        format!(
            "{{\"type\":\"chat\",\"room\":\"lobby\",\"user\":\"user{}\",\"text\":\"hello number {i}, \
             how is everyone doing today?\",\"ts\":{}}}\n",
            i % 17,
            1_700_000_000 + i
        )
    }

    fn compressible(len: usize) -> Vec<u8> {
        let mut text = String::new();
        let mut i = 0;
        while text.len() < len {
            text.push_str(&chat_line(i));
            i += 1;
        }
        text.truncate(len);
        text.into_bytes()
    }

    /// Pseudo-random bytes (xorshift), which deflate cannot shrink.
    fn noise(len: usize) -> Vec<u8> {
        let mut x: u32 = 0x9e37_79b9;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    #[test]
    fn round_trips_at_many_sizes_with_one_compressor_and_one_inflater() {
        let mut compressor = Compressor::new(DEFAULT_LEVEL);
        let mut inflater = Inflater::new(1 << 20);
        for len in [40, 300, 1000, 2048, 4096, 40_000, 70_000, 1 << 20] {
            let payload = compressible(len);
            let compressed = compressor.compress(&payload).expect("compressible");
            assert!(
                compressed.len() < payload.len(),
                "{len}: {}",
                compressed.len()
            );
            if len >= 1000 {
                assert!(
                    compressed.len() < payload.len() / 2,
                    "{len}: {}",
                    compressed.len()
                );
            }
            assert!(!compressed.ends_with(&TRAILER), "{len}: trailer kept");
            assert_eq!(inflater.inflate(&compressed).unwrap(), payload, "{len}");
        }
        assert_eq!(inflater.messages, 8);
        assert_eq!(compressor.messages, 8);
        assert!(compressor.bytes_out < compressor.bytes_in / 2);
    }

    #[test]
    fn each_message_stands_alone() {
        // No context takeover: the same message twice, the second inflates without the first
        // (a reference back into the first would fail: the inflater has nothing before it).
        let mut compressor = Compressor::new(DEFAULT_LEVEL);
        let first = compressor.compress(&compressible(3000)).unwrap();
        let second = compressor.compress(&compressible(3000)).unwrap();
        let mut inflater = Inflater::new(1 << 20);
        assert_eq!(inflater.inflate(&second).unwrap(), compressible(3000));
        assert_eq!(inflater.inflate(&first).unwrap(), compressible(3000));
        // Reset per message: the same bytes each time, and the same a fresh compressor makes.
        assert_eq!(first, second);
    }

    #[test]
    fn every_message_inflates_alone_after_many_others() {
        // Messages that share text, so a compressor that kept its dictionary would refer back
        // into earlier ones; the inflater starts each with nothing before it and fails on such
        // a reference. Incompressible ones between them abort a compression midway.
        let mut compressor = Compressor::new(DEFAULT_LEVEL);
        let mut inflater = Inflater::new(1 << 20);
        for i in 0..200 {
            let payload = if i % 7 == 3 {
                noise(100 + i * 13)
            } else {
                compressible(200 + (i * 997) % 5000)
            };
            match compressor.compress(&payload) {
                Some(compressed) => assert_eq!(inflater.inflate(&compressed).unwrap(), payload),
                None => assert!(i % 7 == 3, "{i}"),
            }
        }
    }

    #[test]
    fn incompressible_and_tiny_payloads_go_uncompressed() {
        let mut compressor = Compressor::new(DEFAULT_LEVEL);
        assert_eq!(compressor.compress(&noise(5000)), None);
        assert_eq!(compressor.compress(b""), None);
        assert_eq!(compressor.compress(b"a"), None);
        assert!(compressor.compress_frame(0x2, &noise(300)).is_none());
        assert_eq!(compressor.messages, 0);
        // The compressor is still usable afterwards.
        assert!(compressor.compress(&compressible(500)).is_some());
    }

    #[test]
    fn sync_flush_trailer_is_stripped_and_restored() {
        let mut compressor = Compressor::new(DEFAULT_LEVEL);
        let payload = compressible(1000);
        let compressed = compressor.compress(&payload).unwrap();
        // With the trailer appended by the sender, the stream is an ordinary sync flush.
        let mut with_trailer = compressed.clone();
        with_trailer.extend_from_slice(&TRAILER);
        let mut inflater = Inflater::new(4096);
        // A peer that leaves the trailer in produces an empty stored block too many: harmless.
        assert_eq!(inflater.inflate(&with_trailer).unwrap(), payload);
        assert_eq!(inflater.inflate(&compressed).unwrap(), payload);
        // The examples of RFC 7692 7.2.3: "Hello" compressed (7.2.3.1), the same in a block
        // with BFINAL set, which ends the stream before the appended trailer (7.2.3.4), and
        // in a stored block (7.2.3.3).
        assert_eq!(
            inflater
                .inflate(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00])
                .unwrap(),
            b"Hello"
        );
        assert_eq!(
            inflater
                .inflate(&[0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00])
                .unwrap(),
            b"Hello"
        );
        assert_eq!(
            inflater
                .inflate(&[
                    0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00
                ])
                .unwrap(),
            b"Hello"
        );
        // An empty message: an empty payload, or the one byte a compressor makes of it.
        assert_eq!(inflater.inflate(&[]).unwrap(), b"");
        assert_eq!(inflater.inflate(&[0x00]).unwrap(), b"");
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 10 << 20];
        let bomb = Compressor::new(9).compress(&zeros).unwrap();
        assert!(bomb.len() < 20 << 10, "{}", bomb.len());
        let limit = 1 << 20;
        let mut inflater = Inflater::new(limit);
        let mut out = Vec::new();
        assert_eq!(
            inflater.inflate_into(&bomb, &mut out),
            Err(InflateError::TooBig)
        );
        // It never held more than the limit (plus the one byte that shows it was passed).
        assert!(out.capacity() <= limit + 1, "{}", out.capacity());
        assert_eq!(inflater.messages, 0);
        // Exactly the limit is fine; one more byte is not.
        let at_limit = Compressor::new(6).compress(&zeros[..limit]).unwrap();
        assert_eq!(inflater.inflate(&at_limit).unwrap().len(), limit);
        let over = Compressor::new(6).compress(&zeros[..limit + 1]).unwrap();
        assert_eq!(inflater.inflate(&over), Err(InflateError::TooBig));
    }

    #[test]
    fn invalid_data_is_reported() {
        let mut inflater = Inflater::new(1 << 16);
        // Reserved block type 3.
        assert_eq!(inflater.inflate(&[0x07, 0x00]), Err(InflateError::Invalid));
        // A stored block whose NLEN is not the complement of LEN.
        assert_eq!(
            inflater.inflate(&[0x00, 0x05, 0x00, 0x00, 0x00, b'h']),
            Err(InflateError::Invalid)
        );
        // A back-reference before the start of the message (distance 1 at offset 0).
        let mut compressor = Compressor::new(DEFAULT_LEVEL);
        let valid = compressor.compress(&compressible(2000)).unwrap();
        let mut corrupt = valid.clone();
        for byte in corrupt.iter_mut().skip(3).step_by(5) {
            *byte ^= 0x5a;
        }
        assert_ne!(inflater.inflate(&corrupt).ok(), Some(compressible(2000)));
        // The inflater recovers at the next message.
        assert_eq!(inflater.inflate(&valid).unwrap(), compressible(2000));
    }

    #[test]
    fn compressed_frames_carry_rsv1_and_the_right_length() {
        let mut compressor = Compressor::new(DEFAULT_LEVEL);
        let mut inflater = Inflater::new(1 << 20);
        for (len, header_len) in [(300, 2), (5000, 4), (300_000, 4), (1 << 20, 10)] {
            let payload = if len == 1 << 20 {
                // Compresses to more than 64 KiB: the 64-bit length form.
                let mut p = noise(len);
                for b in p.iter_mut().step_by(2) {
                    *b = b'a';
                }
                p
            } else {
                compressible(len)
            };
            let frame = compressor.compress_frame(0x1, &payload).unwrap();
            let bytes: Vec<u8> = match &frame {
                EncodedFrame::Small(v) => v.clone(),
                EncodedFrame::Large(b) => b.to_vec(),
            };
            assert_eq!(bytes[0], 0x80 | RSV1 | 0x1);
            let payload_len = bytes.len() - header_len;
            let announced = match bytes[1] {
                n @ 0..=125 => n as usize,
                126 => u16::from_be_bytes([bytes[2], bytes[3]]) as usize,
                _ => u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
            };
            assert_eq!(announced, payload_len, "{len}");
            assert_eq!(
                matches!(frame, EncodedFrame::Large(_)),
                bytes.len() >= SHARE_THRESHOLD
            );
            assert_eq!(inflater.inflate(&bytes[header_len..]).unwrap(), payload);
        }
    }
}
