//! The inbound frame transform: inflates compressed client messages in the byte stream
//! before tungstenite (which refuses RSV1 frames) sees it.
//!
//! It follows the client's frame headers. A message whose first frame has RSV1 set (and only
//! RSV1, on a text or binary frame, with deflate negotiated and no other message open) is
//! taken out of the stream: its frames are unmasked and collected until FIN, inflated with
//! the loop-wide [`Inflater`] under the size limit, and handed on as ONE equivalent frame
//! (FIN, RSV1 clear, same opcode, masked with the zero key, which leaves the payload as it
//! is). Every other byte passes through unchanged and in order, including control frames
//! sent between the fragments of a compressed message.
//!
//! What it leaves to tungstenite, which fails the connection with 1002: RSV1 on a control
//! frame, on a continuation frame or on a frame inside an uncompressed message; RSV2/RSV3;
//! any frame at all when deflate was not negotiated; unmasked frames; reserved opcodes. For
//! these the transform hands the frame on as it came and goes passive (tungstenite ends the
//! connection there). Only what tungstenite cannot see is judged here: a new data frame while
//! a compressed message is open (1002), an inflated message over the limit (1009), data that
//! does not inflate (1007).
//!
//! Memory: idle, the transform is a few dozen bytes inline (see the tests). While a
//! compressed message is in flight it holds the compressed bytes so far (at most
//! [`Inflater::compressed_limit`]) and then the inflated frame (at most the limit plus 14
//! bytes) until tungstenite has read it; both are freed as soon as they are used.

use std::fmt;

use super::codec::{InflateError, Inflater};

/// Why the transform failed the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundError {
    /// The inflated message (or its compressed form) is over the size limit: close 1009.
    TooBig,
    /// The compressed data does not inflate: close 1007, as Node `ws` does (RFC 7692 8 only
    /// says "_Fail the WebSocket Connection_").
    InvalidData,
    /// A new text or binary frame while a fragmented compressed message is open (RFC 6455
    /// 5.4 forbids it; tungstenite, which never saw the message start, cannot): close 1002.
    Protocol,
}

impl InboundError {
    /// The close code to fail the connection with.
    pub fn close_code(self) -> u16 {
        match self {
            InboundError::TooBig => 1009,
            InboundError::InvalidData => 1007,
            InboundError::Protocol => 1002,
        }
    }
}

impl From<InflateError> for InboundError {
    fn from(error: InflateError) -> Self {
        match error {
            InflateError::TooBig => InboundError::TooBig,
            InflateError::Invalid => InboundError::InvalidData,
        }
    }
}

impl fmt::Display for InboundError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InboundError::TooBig => f.write_str("compressed message over the size limit"),
            InboundError::InvalidData => f.write_str("invalid compressed data"),
            InboundError::Protocol => f.write_str(
                "protocol error: a new data frame inside a fragmented compressed message",
            ),
        }
    }
}

impl std::error::Error for InboundError {}

/// What one [`InboundInflate::pull`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pulled {
    /// Input bytes used up (taken in or handed on).
    pub consumed: usize,
    /// Bytes written to the output for the next stage. Zero only when every input byte was
    /// taken in: the caller must read more from the socket (this is not end of stream).
    pub produced: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting a frame header (2 to 14 bytes); held back when `holding`.
    Header,
    /// Handing on a frame's payload unchanged: this many bytes remain.
    Pass { remaining: u64 },
    /// Taking in a compressed message's payload: this many bytes of this frame remain.
    Take { remaining: u64 },
    /// Handing on the inflated frame in `in_flight.output`.
    Emit,
    /// Handing on the held header bytes from `at`, then passive: tungstenite judges the frame.
    Replay { at: u8 },
    /// Handing everything on (not negotiated, or after a Close or a frame tungstenite refuses).
    Passive,
    /// Failed: every further pull reports the error.
    Failed(InboundError),
}

/// A compressed message being collected or handed on.
struct InFlight {
    /// Text (1) or binary (2).
    opcode: u8,
    /// The current frame ends the message.
    fin: bool,
    mask: [u8; 4],
    /// Offset in the current frame's payload, modulo 4.
    mask_offset: usize,
    /// Unmasked compressed payload of the frames so far.
    compressed: Vec<u8>,
    /// The inflated frame (from `start`), and how much of it was handed on.
    output: Vec<u8>,
    emitted: usize,
}

/// Longest client frame header: 2 + 8 (length) + 4 (mask).
const MAX_HEADER: usize = 14;

/// One connection's inbound transform. See the module doc.
pub struct InboundInflate {
    state: State,
    header: [u8; MAX_HEADER],
    header_len: u8,
    /// The header being collected is held back: its frame belongs to a compressed message.
    holding: bool,
    /// An uncompressed fragmented data message is open (tungstenite is assembling it).
    plain_open: bool,
    in_flight: Option<Box<InFlight>>,
}

impl InboundInflate {
    /// `negotiated`: the 101 accepted permessage-deflate. Without it every byte passes.
    pub fn new(negotiated: bool) -> Self {
        InboundInflate {
            state: if negotiated {
                State::Header
            } else {
                State::Passive
            },
            header: [0; MAX_HEADER],
            header_len: 0,
            holding: false,
            plain_open: false,
            in_flight: None,
        }
    }

    /// True when `pull` has something to report without new input (bytes of an inflated
    /// frame or of a replayed header, or an error): call it before reading the socket.
    pub fn has_pending(&self) -> bool {
        matches!(
            self.state,
            State::Emit | State::Replay { .. } | State::Failed(_)
        )
    }

    /// Heap bytes held for a compressed message in flight (0 when idle), for memory budgets.
    pub fn held_bytes(&self) -> usize {
        self.in_flight.as_ref().map_or(0, |f| {
            std::mem::size_of::<InFlight>() + f.compressed.capacity() + f.output.capacity()
        })
    }

    /// Moves client bytes from `input` to `out` for the next stage (the UTF-8 guard, then
    /// tungstenite), taking compressed messages out and putting their inflated frame in.
    /// An error is reported only once every byte before it was handed on: `Ok` with
    /// `produced > 0` may precede it.
    pub fn pull(
        &mut self,
        input: &[u8],
        out: &mut [u8],
        inflater: &mut Inflater,
    ) -> Result<Pulled, InboundError> {
        let (mut consumed, mut produced) = (0, 0);
        while produced < out.len() {
            let (input, space) = (&input[consumed..], &mut out[produced..]);
            match self.state {
                State::Failed(error) if produced == 0 => return Err(error),
                State::Failed(_) => break,
                State::Passive => {
                    let n = input.len().min(space.len());
                    space[..n].copy_from_slice(&input[..n]);
                    consumed += n;
                    produced += n;
                    if n == input.len() {
                        break;
                    }
                }
                State::Emit => {
                    let Some(flight) = self.in_flight.as_mut() else {
                        self.state = State::Header;
                        continue;
                    };
                    let rest = &flight.output[flight.emitted..];
                    let n = rest.len().min(space.len());
                    space[..n].copy_from_slice(&rest[..n]);
                    flight.emitted += n;
                    produced += n;
                    if flight.emitted == flight.output.len() {
                        // Handed on whole: the connection holds nothing again.
                        self.in_flight = None;
                        self.state = State::Header;
                    }
                }
                State::Replay { at } => {
                    let rest = &self.header[at as usize..self.header_len as usize];
                    let n = rest.len().min(space.len());
                    space[..n].copy_from_slice(&rest[..n]);
                    produced += n;
                    self.state = if n == rest.len() {
                        self.header_len = 0;
                        State::Passive
                    } else {
                        State::Replay { at: at + n as u8 }
                    };
                }
                _ if input.is_empty() => break,
                State::Header => {
                    let byte = input[0];
                    consumed += 1;
                    if self.header_len == 0 {
                        self.holding = self.takes(byte);
                        if let State::Failed(_) = self.state {
                            // A new data frame inside a compressed message: not handed on.
                            continue;
                        }
                    }
                    self.header[self.header_len as usize] = byte;
                    self.header_len += 1;
                    if !self.holding {
                        space[0] = byte;
                        produced += 1;
                    }
                    if self.header_len as usize >= self.header_needed() {
                        self.start_frame(inflater);
                    }
                }
                State::Pass { remaining } => {
                    let n = (input.len().min(space.len()) as u64).min(remaining) as usize;
                    space[..n].copy_from_slice(&input[..n]);
                    consumed += n;
                    produced += n;
                    self.state = match remaining - n as u64 {
                        0 => State::Header,
                        remaining => State::Pass { remaining },
                    };
                }
                State::Take { remaining } => {
                    let n = (input.len() as u64).min(remaining) as usize;
                    let Some(flight) = self.in_flight.as_mut() else {
                        self.state = State::Header;
                        continue;
                    };
                    let offset = flight.mask_offset;
                    flight.compressed.extend(
                        input[..n]
                            .iter()
                            .enumerate()
                            .map(|(i, b)| b ^ flight.mask[(offset + i) % 4]),
                    );
                    flight.mask_offset = (offset + n) % 4;
                    consumed += n;
                    let remaining = remaining - n as u64;
                    self.state = State::Take { remaining };
                    if remaining == 0 {
                        self.end_taken_frame(inflater);
                    }
                }
            }
        }
        Ok(Pulled { consumed, produced })
    }

    /// At the first byte of a header: does this frame belong to a compressed message? Sets
    /// `Failed` for a data frame that starts inside an open compressed message.
    fn takes(&mut self, first: u8) -> bool {
        let (rsv, opcode) = (first & 0x70, first & 0x0f);
        if self.in_flight.is_some() {
            match opcode {
                // Its next fragment; RSV bits on it are tungstenite's to refuse.
                0x0 => rsv == 0,
                // Text or binary before the compressed message ended: RFC 6455 5.4 forbids
                // it, and tungstenite, which never saw the message start, would accept it.
                0x1 | 0x2 => {
                    self.in_flight = None;
                    self.state = State::Failed(InboundError::Protocol);
                    false
                }
                // Control frames (and reserved opcodes, which tungstenite refuses) pass.
                _ => false,
            }
        } else {
            matches!(opcode, 0x1 | 0x2) && rsv == 0x40 && !self.plain_open
        }
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

    /// A whole header is in (handed on, or held when its frame is compressed).
    fn start_frame(&mut self, inflater: &mut Inflater) {
        let (b0, b1) = (self.header[0], self.header[1]);
        let (fin, rsv, opcode, masked) = (b0 & 0x80 != 0, b0 & 0x70, b0 & 0x0f, b1 & 0x80 != 0);
        let (len, mask_at) = match b1 & 0x7f {
            126 => (
                u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
                4,
            ),
            127 => {
                let mut be = [0u8; 8];
                be.copy_from_slice(&self.header[2..10]);
                (u64::from_be_bytes(be), 10)
            }
            n => (u64::from(n), 2),
        };
        let header_len = self.header_len;
        self.header_len = 0;
        if !self.holding {
            let control = opcode & 0x08 != 0;
            // Frames tungstenite refuses end the connection there; a Close ends what we
            // follow. Either way the rest is tungstenite's.
            let refused = rsv != 0
                || !masked
                || len >> 63 != 0
                || !matches!(opcode, 0x0 | 0x1 | 0x2 | 0x8 | 0x9 | 0xA)
                || (control && (!fin || len > 125))
                || (opcode == 0x0 && !self.plain_open)
                || (matches!(opcode, 0x1 | 0x2) && self.plain_open);
            if refused || opcode == 0x8 {
                self.in_flight = None;
                self.state = State::Passive;
                return;
            }
            if !control {
                self.plain_open = !fin;
            }
            self.state = if len == 0 {
                State::Header
            } else {
                State::Pass { remaining: len }
            };
            return;
        }
        // A frame of a compressed message. Unmasked or absurdly long: hand the header on
        // as it came and let tungstenite refuse it.
        if !masked || len >> 63 != 0 {
            self.header_len = header_len;
            self.in_flight = None;
            self.state = State::Replay { at: 0 };
            return;
        }
        let collected = self.in_flight.as_ref().map_or(0, |f| f.compressed.len());
        if collected as u64 + len > inflater.compressed_limit() as u64 {
            self.in_flight = None;
            self.state = State::Failed(InboundError::TooBig);
            return;
        }
        let flight = self.in_flight.get_or_insert_with(|| {
            Box::new(InFlight {
                opcode,
                fin,
                mask: [0; 4],
                mask_offset: 0,
                compressed: Vec::new(),
                output: Vec::new(),
                emitted: 0,
            })
        });
        flight.fin = fin;
        flight
            .mask
            .copy_from_slice(&self.header[mask_at..mask_at + 4]);
        flight.mask_offset = 0;
        // Room for the announced frame: doubling (many small fragments stay linear), never
        // past the bound checked above.
        let needed = collected + len as usize;
        if needed > flight.compressed.capacity() {
            let doubled = (2 * flight.compressed.capacity()).min(inflater.compressed_limit());
            flight
                .compressed
                .reserve_exact(needed.max(doubled) - collected);
        }
        self.state = State::Take { remaining: len };
        if len == 0 {
            self.end_taken_frame(inflater);
        }
    }

    /// The current compressed frame is in. At FIN, inflate and build the frame to hand on.
    fn end_taken_frame(&mut self, inflater: &mut Inflater) {
        let Some(flight) = self.in_flight.as_mut() else {
            return;
        };
        if !flight.fin {
            self.state = State::Header;
            return;
        }
        let compressed = std::mem::take(&mut flight.compressed);
        let mut output = vec![0; MAX_HEADER];
        if let Err(error) = inflater.inflate_into(&compressed, &mut output) {
            self.in_flight = None;
            self.state = State::Failed(error.into());
            return;
        }
        drop(compressed);
        // The header goes just before the payload: FIN, the opcode, masked with key 0.
        let len = output.len() - MAX_HEADER;
        let mut header = [0u8; MAX_HEADER];
        header[0] = 0x80 | flight.opcode;
        let size = match len {
            0..=125 => {
                header[1] = 0x80 | len as u8;
                2
            }
            126..=0xffff => {
                header[1] = 0x80 | 126;
                header[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                4
            }
            _ => {
                header[1] = 0x80 | 127;
                header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
                10
            }
        } + 4;
        let start = MAX_HEADER - size;
        output[start..MAX_HEADER].copy_from_slice(&header[..size]);
        flight.output = output;
        flight.emitted = start;
        self.state = State::Emit;
    }
}

#[cfg(test)]
mod tests {
    use super::super::codec::Compressor;
    use super::*;

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    const LIMIT: usize = 64 << 10;

    /// A masked client frame with the given first byte.
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

    /// The frame the transform hands on for an inflated message.
    fn inflated_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
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
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(payload);
        out
    }

    fn deflate(payload: &[u8]) -> Vec<u8> {
        Compressor::new(6).compress(payload).expect("compressible")
    }

    fn text(len: usize) -> Vec<u8> {
        "the quick brown fox jumps over the lazy dog; "
            .repeat(len / 45 + 1)
            .into_bytes()[..len]
            .to_vec()
    }

    /// Feeds `stream` in runs of `step` with an output of `out_len`; returns what was handed
    /// on and the error, if any. Checks the `Pulled` contract on the way.
    fn run(
        transform: &mut InboundInflate,
        inflater: &mut Inflater,
        stream: &[u8],
        step: usize,
        out_len: usize,
    ) -> (Vec<u8>, Option<InboundError>) {
        let mut handed = Vec::new();
        let mut out = vec![0u8; out_len];
        for run in stream.chunks(step.max(1)) {
            let mut at = 0;
            while at < run.len() || transform.has_pending() {
                match transform.pull(&run[at..], &mut out, inflater) {
                    Ok(pulled) => {
                        if pulled.produced == 0 {
                            assert_eq!(pulled.consumed, run.len() - at, "zero output, input left");
                        }
                        at += pulled.consumed;
                        handed.extend_from_slice(&out[..pulled.produced]);
                    }
                    Err(error) => return (handed, Some(error)),
                }
            }
        }
        (handed, None)
    }

    fn run_all(stream: &[u8]) -> (Vec<u8>, Option<InboundError>) {
        let mut inflater = Inflater::new(LIMIT);
        run(
            &mut InboundInflate::new(true),
            &mut inflater,
            stream,
            stream.len(),
            64,
        )
    }

    #[test]
    fn plain_frames_pass_through_unchanged() {
        let mut stream = frame(0x81, b"hello");
        stream.extend(frame(0x02, &[1, 2, 3]));
        stream.extend(frame(0x89, b"ping"));
        stream.extend(frame(0x80, &text(300)));
        stream.extend(frame(0x88, &[0x03, 0xe8]));
        assert_eq!(run_all(&stream), (stream.clone(), None));
    }

    #[test]
    fn a_compressed_message_becomes_one_plain_frame() {
        let payload = text(5000);
        let mut stream = frame(0x81, b"before");
        stream.extend(frame(0xc1, &deflate(&payload)));
        stream.extend(frame(0x82, b"after"));
        let mut expected = frame(0x81, b"before");
        expected.extend(inflated_frame(0x1, &payload));
        expected.extend(frame(0x82, b"after"));
        let mut inflater = Inflater::new(LIMIT);
        let mut transform = InboundInflate::new(true);
        assert_eq!(
            run(&mut transform, &mut inflater, &stream, 4096, 64),
            (expected, None)
        );
        assert_eq!(transform.held_bytes(), 0);
        assert_eq!(inflater.messages, 1);
    }

    #[test]
    fn fragments_with_control_frames_between_split_at_every_byte() {
        let payload = text(3000);
        let compressed = deflate(&payload);
        let (a, rest) = compressed.split_at(compressed.len() / 3);
        let (b, c) = rest.split_at(rest.len() / 2);
        let mut stream = frame(0x41, a); // RSV1, text, no FIN
        stream.extend(frame(0x89, b"ping"));
        stream.extend(frame(0x00, b));
        stream.extend(frame(0x8a, b"pong"));
        stream.extend(frame(0x00, &[])); // an empty fragment
        stream.extend(frame(0x80, c));
        stream.extend(frame(0xc2, &deflate(&[7u8; 200]))); // a second, binary, message
        let mut expected = frame(0x89, b"ping");
        expected.extend(frame(0x8a, b"pong"));
        expected.extend(inflated_frame(0x1, &payload));
        expected.extend(inflated_frame(0x2, &[7u8; 200]));
        let mut inflater = Inflater::new(LIMIT);
        for step in 1..=stream.len() {
            for out_len in [1, 7, 64] {
                let mut transform = InboundInflate::new(true);
                let (handed, error) = run(&mut transform, &mut inflater, &stream, step, out_len);
                assert_eq!(error, None, "step {step}");
                assert!(handed == expected, "step {step} out {out_len}");
                assert_eq!(transform.held_bytes(), 0);
            }
        }
    }

    #[test]
    fn memory_is_held_only_while_a_message_is_in_flight() {
        let compressed = deflate(&text(2000));
        let mut inflater = Inflater::new(LIMIT);
        let mut transform = InboundInflate::new(true);
        let first = frame(0x41, &compressed[..10]);
        let (handed, _) = run(&mut transform, &mut inflater, &first, first.len(), 64);
        assert!(handed.is_empty());
        assert!(transform.held_bytes() > 0);
        let last = frame(0x80, &compressed[10..]);
        run(&mut transform, &mut inflater, &last, last.len(), 64);
        assert_eq!(transform.held_bytes(), 0);
        // Idle, it is a few dozen bytes inline.
        let size = std::mem::size_of::<InboundInflate>();
        assert!(size <= 48, "{size}");
    }

    #[test]
    fn one_byte_fragments_stay_within_the_compressed_bound() {
        // Pseudo-random text: compresses, but not to nothing.
        let mut x: u32 = 1;
        let payload: Vec<u8> = (0..40_000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                b'a' + (x >> 16) as u8 % 16
            })
            .collect();
        let compressed = deflate(&payload);
        let mut stream = frame(0x42, &compressed[..1]);
        for byte in &compressed[1..] {
            stream.extend(frame(0x00, std::slice::from_ref(byte)));
        }
        let mut inflater = Inflater::new(LIMIT);
        let mut transform = InboundInflate::new(true);
        let (last, rest) = (frame(0x80, &[]), stream);
        let (handed, error) = run(&mut transform, &mut inflater, &rest, 4096, 64);
        assert_eq!((handed.len(), error), (0, None));
        let held = transform.held_bytes();
        assert!(held >= compressed.len());
        assert!(held <= inflater.compressed_limit() + 256, "{held}");
        let (handed, error) = run(&mut transform, &mut inflater, &last, 64, 64);
        assert_eq!(error, None);
        assert!(handed == inflated_frame(0x2, &payload));
    }

    #[test]
    fn a_bomb_fails_with_too_big_at_the_limit() {
        let bomb = Compressor::new(9).compress(&vec![0u8; 10 << 20]).unwrap();
        let mut stream = frame(0x81, b"ok");
        stream.extend(frame(0xc2, &bomb));
        let (handed, error) = run_all(&stream);
        assert_eq!(handed, frame(0x81, b"ok"));
        assert_eq!(error, Some(InboundError::TooBig));
        assert_eq!(InboundError::TooBig.close_code(), 1009);
        // Exactly the limit is accepted.
        let stream = frame(0xc2, &deflate(&vec![0u8; LIMIT]));
        let (handed, error) = run_all(&stream);
        assert_eq!(error, None);
        assert_eq!(handed, inflated_frame(0x2, &vec![0u8; LIMIT]));
    }

    #[test]
    fn compressed_bytes_over_their_bound_fail_before_they_are_buffered() {
        let inflater = Inflater::new(LIMIT);
        let mut header = vec![0xc2, 0x80 | 127];
        header.extend_from_slice(&(inflater.compressed_limit() as u64 + 1).to_be_bytes());
        header.extend_from_slice(&KEY);
        let (handed, error) = run_all(&header);
        assert!(handed.is_empty());
        assert_eq!(error, Some(InboundError::TooBig));
    }

    #[test]
    fn invalid_data_fails_with_1007_after_earlier_frames() {
        let mut stream = frame(0x81, b"fine");
        stream.extend(frame(0xc1, &[0x07, 0x00, 0x01]));
        stream.extend(frame(0x81, b"never"));
        for step in [1, 3, 100] {
            let mut inflater = Inflater::new(LIMIT);
            let mut transform = InboundInflate::new(true);
            let (handed, error) = run(&mut transform, &mut inflater, &stream, step, 64);
            assert_eq!(handed, frame(0x81, b"fine"), "step {step}");
            assert_eq!(error, Some(InboundError::InvalidData));
            assert_eq!(InboundError::InvalidData.close_code(), 1007);
            // It stays failed.
            assert_eq!(
                transform.pull(b"x", &mut [0; 8], &mut inflater),
                Err(InboundError::InvalidData)
            );
        }
    }

    #[test]
    fn rsv1_where_it_is_not_allowed_is_left_for_tungstenite() {
        let compressed = deflate(&text(500));
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("ping with RSV1", frame(0xc9, b"x")),
            ("close with RSV1", frame(0xc8, &[0x03, 0xe8])),
            ("continuation with RSV1 after a plain fragment", {
                let mut s = frame(0x01, b"a");
                s.extend(frame(0xc0, &compressed));
                s
            }),
            ("RSV1 data frame inside a plain message", {
                let mut s = frame(0x01, b"a");
                s.extend(frame(0xc1, &compressed));
                s
            }),
            ("RSV2", frame(0xa1, b"x")),
            ("RSV1 and RSV2", frame(0xe1, &compressed)),
            ("unmasked compressed frame", {
                let mut s = vec![0xc1, compressed.len() as u8];
                s.extend_from_slice(&compressed);
                s
            }),
        ];
        for (name, mut stream) in cases {
            // Whatever follows is handed on too: tungstenite fails the connection first.
            stream.extend(frame(0xc1, &compressed));
            assert_eq!(run_all(&stream), (stream.clone(), None), "{name}");
        }
        // RSV1 on a continuation of a compressed message: the message so far is dropped and
        // tungstenite sees a continuation with RSV1 (1002).
        let mut stream = frame(0x41, &compressed[..5]);
        stream.extend(frame(0xc0, &compressed[5..]));
        assert_eq!(run_all(&stream), (frame(0xc0, &compressed[5..]), None));
        // Not negotiated: everything passes, RSV1 included.
        let stream = frame(0xc1, &compressed);
        let mut inflater = Inflater::new(LIMIT);
        let mut transform = InboundInflate::new(false);
        assert_eq!(
            run(&mut transform, &mut inflater, &stream, 7, 64),
            (stream.clone(), None)
        );
    }

    #[test]
    fn a_new_message_inside_a_compressed_one_is_a_protocol_error() {
        let compressed = deflate(&text(500));
        for first in [0x81, 0x02, 0xc1] {
            let mut stream = frame(0x41, &compressed[..5]);
            stream.extend(frame(first, b"x"));
            let (handed, error) = run_all(&stream);
            assert!(handed.is_empty(), "{first:#x}");
            assert_eq!(error, Some(InboundError::Protocol), "{first:#x}");
            assert_eq!(error.map(InboundError::close_code), Some(1002));
        }
    }

    #[test]
    fn a_close_inside_a_compressed_message_passes_and_ends_the_transform() {
        let compressed = deflate(&text(500));
        let mut stream = frame(0x41, &compressed[..5]);
        stream.extend(frame(0x88, &[0x03, 0xe8]));
        stream.extend(frame(0x80, &compressed[5..]));
        let mut inflater = Inflater::new(LIMIT);
        let mut transform = InboundInflate::new(true);
        let mut expected = frame(0x88, &[0x03, 0xe8]);
        expected.extend(frame(0x80, &compressed[5..]));
        assert_eq!(
            run(&mut transform, &mut inflater, &stream, 3, 64),
            (expected, None)
        );
        assert_eq!(transform.held_bytes(), 0);
    }

    #[test]
    fn random_streams_never_panic_and_keep_the_pull_contract() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let compressed = deflate(&text(2000));
        let firsts = [
            0xc1, 0x41, 0x00, 0x80, 0xc0, 0x89, 0x8a, 0x88, 0x81, 0x01, 0xc2, 0xe1, 0x0b,
        ];
        for _ in 0..3000 {
            let mut stream = Vec::new();
            for _ in 0..1 + next(6) {
                let first = firsts[next(firsts.len() as u64) as usize];
                let payload: Vec<u8> = match next(3) {
                    0 => {
                        let start = next(compressed.len() as u64) as usize;
                        let end = start + next((compressed.len() - start) as u64 + 1) as usize;
                        compressed[start..end].to_vec()
                    }
                    1 => (0..next(300)).map(|_| next(256) as u8).collect(),
                    _ => compressed.clone(),
                };
                let mut f = frame(first, &payload);
                if next(10) == 0 {
                    f[1] &= 0x7f; // unmasked (the key bytes become payload)
                }
                if next(10) == 0 {
                    f.truncate(next(f.len() as u64) as usize);
                }
                stream.extend(f);
            }
            let mut inflater = Inflater::new(4096);
            let mut transform = InboundInflate::new(next(8) != 0);
            let step = 1 + next(200) as usize;
            let out_len = 1 + next(100) as usize;
            let (handed, error) = run(&mut transform, &mut inflater, &stream, step, out_len);
            if error.is_none() {
                assert!(handed.len() <= stream.len() + 4096 * 6 + 100);
            }
        }
    }

    /// A client stream for tungstenite: reads the bytes handed on, discards its replies.
    struct Handed(std::io::Cursor<Vec<u8>>);

    impl std::io::Read for Handed {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(buf)
        }
    }

    impl std::io::Write for Handed {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What tungstenite makes of the bytes handed on: its messages, then its error.
    fn tungstenite_reads(handed: Vec<u8>) -> (Vec<tungstenite::Message>, tungstenite::Error) {
        use tungstenite::protocol::{Role, WebSocket};
        let mut socket =
            WebSocket::from_raw_socket(Handed(std::io::Cursor::new(handed)), Role::Server, None);
        let mut messages = Vec::new();
        loop {
            match socket.read() {
                Ok(message) => messages.push(message),
                Err(error) => return (messages, error),
            }
        }
    }

    #[test]
    fn tungstenite_accepts_the_inflated_frames() {
        use tungstenite::Message;
        let payload = text(4000);
        let compressed = deflate(&payload);
        let (a, b) = compressed.split_at(compressed.len() / 2);
        let mut stream = frame(0x41, a);
        stream.extend(frame(0x89, b"ping"));
        stream.extend(frame(0x80, b));
        stream.extend(frame(0x02, &[1, 2]));
        stream.extend(frame(0x80, &[3]));
        stream.extend(frame(0xc2, &deflate(&[9u8; 60_000])));
        let (handed, error) = run_all(&stream);
        assert_eq!(error, None);
        let (messages, _end) = tungstenite_reads(handed);
        assert_eq!(
            messages,
            vec![
                Message::Ping(b"ping".to_vec().into()),
                Message::text(String::from_utf8(payload).unwrap()),
                Message::binary(vec![1, 2, 3]),
                Message::binary(vec![9u8; 60_000]),
            ]
        );
    }

    #[test]
    fn tungstenite_refuses_what_is_left_to_it() {
        use tungstenite::error::{Error, ProtocolError};
        let compressed = deflate(&text(500));
        let mut continuation = frame(0x01, b"a");
        continuation.extend(frame(0xc0, &compressed));
        for (name, stream) in [
            ("ping with RSV1", frame(0xc9, b"x")),
            ("continuation with RSV1", continuation),
        ] {
            let (handed, error) = run_all(&stream);
            assert_eq!(error, None, "{name}");
            let (_, error) = tungstenite_reads(handed);
            assert!(
                matches!(error, Error::Protocol(ProtocolError::NonZeroReservedBits)),
                "{name}: {error:?}"
            );
        }
        // Not negotiated: a compressed message is refused.
        let stream = frame(0xc1, &compressed);
        let mut inflater = Inflater::new(LIMIT);
        let (handed, _) = run(
            &mut InboundInflate::new(false),
            &mut inflater,
            &stream,
            64,
            64,
        );
        let (_, error) = tungstenite_reads(handed);
        assert!(
            matches!(error, Error::Protocol(ProtocolError::NonZeroReservedBits)),
            "{error:?}"
        );
    }
}
