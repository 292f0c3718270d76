//! Fail-fast UTF-8 checking of text messages, on the raw bytes as tungstenite reads them.
//!
//! tungstenite validates a text message's UTF-8 when a frame is complete, so a single large
//! text frame with an invalid byte near its start is buffered whole (up to
//! `--max-message-size`) before it is refused. RFC 6455 §8.1: "When an endpoint is to
//! interpret a byte stream as UTF-8 but finds that the byte stream is not, in fact, a valid
//! UTF-8 stream, that endpoint MUST _Fail the WebSocket Connection_." The guard finds the
//! first byte that no continuation can make valid and stops the stream there, so the
//! connection fails with 1007 as soon as that byte arrives (Autobahn 6.4.3, 6.4.4).
//!
//! Why this is sound beside tungstenite, which still does all of the protocol:
//! - The guard only ever *withholds* bytes: it hands tungstenite every byte before the
//!   invalid one (a short read) and reports the error on the next read. Every frame that
//!   ends before the invalid byte is therefore read, relayed or refused by tungstenite
//!   exactly as without the guard, in order.
//! - It only judges frames tungstenite would accept: at the first frame header that
//!   tungstenite will refuse anyway (reserved bits or opcode, unmasked, fragmented or long
//!   control frame, a continuation with no message open, a data frame inside one) it goes
//!   passive for the rest of the connection and leaves the verdict (1002) to tungstenite.
//!   It also goes passive at a Close frame: what follows one is tungstenite's business.
//! - It never judges a truncated sequence at the end of a message (tungstenite does, when
//!   the frame completes), only a byte sequence that is invalid whatever follows.
//!
//! The cost is one more pass over each text payload (unmask into a stack buffer and
//! `str::from_utf8`, no allocation); binary payloads and control frames are skipped.

use std::fmt;

/// Bytes unmasked and checked per step (a stack buffer).
const STEP: usize = 1024;

/// The error a guarded read returns once the guard has seen invalid UTF-8 in a text message.
#[derive(Debug)]
pub struct InvalidUtf8Early;

impl fmt::Display for InvalidUtf8Early {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid UTF-8 in a text message (found before the frame ended)")
    }
}

impl std::error::Error for InvalidUtf8Early {}

/// Where the guard is in the client's frame stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting a frame header (2 to 14 bytes).
    Header,
    /// Inside a frame's payload: this many bytes remain.
    Payload { remaining: u64 },
    /// Not judging any more (the stream broke a rule tungstenite will refuse, or closed).
    Passive,
    /// Saw invalid UTF-8: every further read fails.
    Failed,
}

/// Per-connection state of the fail-fast UTF-8 check.
#[derive(Debug)]
pub struct Utf8Guard {
    state: State,
    header: [u8; 14],
    header_len: usize,
    mask: [u8; 4],
    /// Offset in the current payload, modulo 4 (where the mask key is).
    mask_offset: usize,
    /// The current frame's payload is text to check.
    checking: bool,
    /// The current frame ends its message.
    fin: bool,
    /// A fragmented data message is open (its first frame had FIN clear).
    message_open: bool,
    /// The open fragmented message is text.
    message_is_text: bool,
    /// The start of a UTF-8 sequence cut by a read or frame boundary (at most 3 bytes).
    carry: [u8; 3],
    carry_len: usize,
}

impl Default for Utf8Guard {
    fn default() -> Self {
        Utf8Guard {
            state: State::Header,
            header: [0; 14],
            header_len: 0,
            mask: [0; 4],
            mask_offset: 0,
            checking: false,
            fin: false,
            message_open: false,
            message_is_text: false,
            carry: [0; 3],
            carry_len: 0,
        }
    }
}

impl Utf8Guard {
    /// True once invalid UTF-8 was seen: the connection must fail with 1007.
    pub fn failed(&self) -> bool {
        self.state == State::Failed
    }

    /// Called with each run of client bytes, in order, before tungstenite gets them. Returns
    /// how many of them may be handed on: all of them, or (once invalid UTF-8 is seen) a
    /// prefix that ends inside the offending frame's payload, after every earlier frame.
    pub fn scan(&mut self, bytes: &[u8]) -> usize {
        let mut at = 0;
        while at < bytes.len() {
            match self.state {
                State::Passive => return bytes.len(),
                State::Failed => return at,
                State::Header => {
                    self.header[self.header_len] = bytes[at];
                    self.header_len += 1;
                    at += 1;
                    if self.header_len >= self.header_needed() {
                        self.start_frame();
                    }
                }
                State::Payload { remaining } => {
                    let take = remaining.min((bytes.len() - at) as u64) as usize;
                    if self.checking && !self.check(&bytes[at..at + take]) {
                        self.state = State::Failed;
                        return at;
                    }
                    self.mask_offset = (self.mask_offset + take) % 4;
                    at += take;
                    let remaining = remaining - take as u64;
                    self.state = State::Payload { remaining };
                    if remaining == 0 {
                        self.end_frame();
                    }
                }
            }
        }
        bytes.len()
    }

    /// Header bytes needed, given those collected so far.
    fn header_needed(&self) -> usize {
        if self.header_len < 2 {
            return 2;
        }
        let extended = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        2 + extended + mask
    }

    /// A whole header is in: decide what the frame is and whether to check its payload.
    fn start_frame(&mut self) {
        let (b0, b1) = (self.header[0], self.header[1]);
        let (fin, rsv, opcode, masked) = (b0 & 0x80 != 0, b0 & 0x70, b0 & 0x0f, b1 & 0x80 != 0);
        let (len, mask_at) = match b1 & 0x7f {
            126 => (
                u16::from_be_bytes([self.header[2], self.header[3]]) as u64,
                4,
            ),
            127 => {
                let mut be = [0u8; 8];
                be.copy_from_slice(&self.header[2..10]);
                (u64::from_be_bytes(be), 10)
            }
            n => (n as u64, 2),
        };
        self.header_len = 0;
        // Frames tungstenite refuses with 1002: leave the verdict to it.
        let control = opcode & 0x08 != 0;
        let refused = rsv != 0
            || !masked
            || len >> 63 != 0
            || (control && (!fin || len > 125))
            || !matches!(opcode, 0x0 | 0x1 | 0x2 | 0x8 | 0x9 | 0xA)
            || (opcode == 0x0 && !self.message_open)
            || (matches!(opcode, 0x1 | 0x2) && self.message_open);
        if refused || opcode == 0x8 {
            self.state = State::Passive;
            return;
        }
        self.mask
            .copy_from_slice(&self.header[mask_at..mask_at + 4]);
        self.mask_offset = 0;
        self.fin = fin;
        self.checking = match opcode {
            0x1 => {
                self.carry_len = 0;
                self.message_is_text = true;
                true
            }
            0x2 => {
                self.message_is_text = false;
                false
            }
            0x0 => self.message_is_text,
            _ => false,
        };
        if !control {
            self.message_open = !fin;
        }
        self.state = State::Payload { remaining: len };
        if len == 0 {
            self.end_frame();
        }
    }

    fn end_frame(&mut self) {
        if self.checking && self.fin {
            // A sequence still open at the end of the message is tungstenite's to refuse.
            self.carry_len = 0;
        }
        self.state = State::Header;
    }

    /// Unmasks `masked` (the next payload bytes of a text frame) and checks them, carrying an
    /// incomplete trailing sequence to the next call. False if they cannot be UTF-8.
    fn check(&mut self, masked: &[u8]) -> bool {
        let mut buffer = [0u8; STEP];
        let mut offset = self.mask_offset;
        for chunk in masked.chunks(STEP - 3) {
            let start = self.carry_len;
            buffer[..start].copy_from_slice(&self.carry[..start]);
            let end = start + chunk.len();
            for (i, (out, byte)) in buffer[start..end].iter_mut().zip(chunk).enumerate() {
                *out = byte ^ self.mask[(offset + i) % 4];
            }
            offset = (offset + chunk.len()) % 4;
            self.carry_len = 0;
            if let Err(error) = std::str::from_utf8(&buffer[..end]) {
                if error.error_len().is_some() {
                    return false;
                }
                let tail = &buffer[error.valid_up_to()..end];
                self.carry[..tail.len()].copy_from_slice(tail);
                self.carry_len = tail.len();
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        match payload.len() {
            n @ 0..=125 => out.push(0x80 | n as u8),
            n @ 126..=0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&KEY);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ KEY[i % 4]));
        out
    }

    /// Feeds `bytes` in runs of `step`; returns the total handed on.
    fn feed(guard: &mut Utf8Guard, bytes: &[u8], step: usize) -> usize {
        let mut passed = 0;
        for run in bytes.chunks(step) {
            let n = guard.scan(run);
            passed += n;
            if n < run.len() {
                break;
            }
        }
        passed
    }

    #[test]
    fn valid_text_passes_whatever_the_read_size() {
        let text = "κόσμε 𝄞 ascii ".repeat(300);
        let mut stream = frame(0x01, &text.as_bytes()[..1001]);
        stream.extend(frame(0x89, b"ping"));
        stream.extend(frame(0x80, &text.as_bytes()[1001..]));
        stream.extend(frame(0x82, &[0xff, 0xfe, 0xc0]));
        for step in [1, 2, 3, 7, 256, 5000] {
            let mut guard = Utf8Guard::default();
            assert_eq!(feed(&mut guard, &stream, step), stream.len(), "step {step}");
            assert!(!guard.failed());
        }
    }

    #[test]
    fn invalid_byte_stops_the_stream_inside_its_frame() {
        // Autobahn 6.4.4: a code point above U+10FFFF, the frame announced longer.
        let good = frame(0x81, b"fine");
        let mut stream = good.clone();
        let mut bad = frame(0x81, &[0xce, 0xba, 0xf4, 0x90, 0x80, 0x80, b'a', b'b']);
        bad.truncate(bad.len() - 4); // only up to the 0x90
        stream.extend(&bad);
        for step in [1, 4, 256] {
            let mut guard = Utf8Guard::default();
            let passed = feed(&mut guard, &stream, step);
            assert!(guard.failed(), "step {step}");
            // Everything of the earlier frame and the bad frame's header went through.
            assert!(
                passed >= good.len() + 6 && passed < stream.len(),
                "step {step}: {passed}"
            );
            assert_eq!(guard.scan(b"more"), 0);
        }
    }

    #[test]
    fn invalid_sequence_across_fragments_is_caught() {
        let mut guard = Utf8Guard::default();
        let mut stream = frame(0x01, &[b'a', 0xf4]);
        stream.extend(frame(0x80, &[0x90, 0x80, 0x80]));
        assert!(feed(&mut guard, &stream, 3) < stream.len());
        assert!(guard.failed());
    }

    #[test]
    fn truncated_sequence_at_message_end_is_left_to_tungstenite() {
        let mut guard = Utf8Guard::default();
        let mut stream = frame(0x81, &[b'a', 0xe2, 0x82]);
        stream.extend(frame(0x81, b"next"));
        assert_eq!(feed(&mut guard, &stream, 2), stream.len());
        assert!(!guard.failed());
    }

    #[test]
    fn frames_tungstenite_refuses_turn_the_guard_passive() {
        let bad_text = [0xff, 0xff];
        for first in [0xc1, 0x83, 0x0b, 0x80] {
            let mut guard = Utf8Guard::default();
            let mut stream = frame(first, b"x");
            stream.extend(frame(0x81, &bad_text));
            assert_eq!(feed(&mut guard, &stream, 1), stream.len(), "{first:#x}");
            assert!(!guard.failed());
        }
        // Unmasked.
        let mut guard = Utf8Guard::default();
        let stream = [0x81, 0x02, 0xff, 0xff];
        assert_eq!(guard.scan(&stream), 4);
        // After a Close.
        let mut guard = Utf8Guard::default();
        let mut stream = frame(0x88, &[0x03, 0xe8]);
        stream.extend(frame(0x81, &bad_text));
        assert_eq!(guard.scan(&stream), stream.len());
    }

    #[test]
    fn binary_payloads_are_not_checked() {
        let mut guard = Utf8Guard::default();
        let mut stream = frame(0x02, &[0xff; 300]);
        stream.extend(frame(0x80, &[0xc0; 10]));
        assert_eq!(feed(&mut guard, &stream, 100), stream.len());
        assert!(!guard.failed());
    }
}
