//! One connection's outbound queue: every byte the server owes a client, in order.
//!
//! Broadcast frames, tungstenite's own pongs and close frames, and HTTP responses all land
//! here, so they share one ordering and one byte count. The loop drains the queue with one
//! `writev` per connection per pass.
//!
//! Small frames are copied into a contiguous buffer (one iovec for dozens of messages); large
//! frames are shared by reference count, encoded once for the whole room. Server frames are
//! never masked and never fragmented, so the queue can find message boundaries by reading frame
//! headers: that is how `drop-oldest` discards whole messages and spares control frames.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use bytes::Bytes;

/// Frames at least this large are shared between recipients instead of copied. Below it a
/// memcpy is cheaper than an extra iovec and a reference count: measured, copying wins by 16 %
/// at 256 B and 4 % at 1 KiB, sharing by 4 % at 4 KiB and 76 % at 16 KiB (docs/benchmarks.md,
/// "Copy or share").
pub const SHARE_THRESHOLD: usize = 2048;
/// A contiguous buffer is not grown past this; a new segment starts instead.
const SEGMENT_CAPACITY: usize = 64 * 1024;
/// A flushed buffer up to this size is kept for the next pass, so a busy connection does not
/// allocate (and regrow by doubling) every pass: a 16 KiB limit cost 9 allocations per member
/// per pass in a saturated fan-out (benches/alloc.rs). The kept buffer is given back when the
/// connection falls quiet (heartbeat), and counts in the worst case logged at start-up.
pub const KEEP_CAPACITY: usize = SEGMENT_CAPACITY;
/// At most this many iovecs per write call (Linux allows 1024; more buys nothing).
const MAX_IOVECS: usize = 64;

#[derive(Debug)]
enum Segment {
    /// Whole frames copied into one buffer.
    Copied(Vec<u8>),
    /// Bytes that are not frames (an HTTP response, the 101): never appended to, never parsed,
    /// never dropped.
    Opaque(Vec<u8>),
    /// One frame or body shared with other queues.
    Shared(Bytes),
}

impl Segment {
    fn bytes(&self) -> &[u8] {
        match self {
            Segment::Copied(v) | Segment::Opaque(v) => v,
            Segment::Shared(b) => b,
        }
    }
}

/// The length of the server frame that starts `frame` (server frames are never masked).
/// A truncated header counts as the whole rest, which keeps callers' walks finite.
fn frame_len(frame: &[u8]) -> usize {
    let Some(&second) = frame.get(1) else {
        return frame.len().max(1);
    };
    let (header, payload) = match second & 0x7f {
        126 => match frame.get(2..4) {
            Some(b) => (4, u16::from_be_bytes([b[0], b[1]]) as usize),
            None => return frame.len(),
        },
        127 => match frame.get(2..10) {
            Some(b) => {
                let mut be = [0u8; 8];
                be.copy_from_slice(b);
                (10, u64::from_be_bytes(be) as usize)
            }
            None => return frame.len(),
        },
        short => (2, short as usize),
    };
    header + payload
}

/// Text, binary or continuation: a frame the slow-client policy may discard.
fn frame_is_data(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & 0x0f <= 2)
}

/// What an offer of a data frame did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// The frame was not queued: the queue was over budget (drop-newest).
    Dropped,
    /// Over budget and the policy is to close: the caller closes the connection.
    OverBudget,
    /// Queued after discarding this many older whole messages (drop-oldest).
    QueuedAfterDropping(usize),
}

/// What a flush did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    pub bytes: usize,
    /// True when the socket would take no more: wait for writable.
    pub blocked: bool,
}

#[derive(Debug, Default)]
pub struct Outbound {
    segments: VecDeque<Segment>,
    /// Bytes of the front segment already written.
    head: usize,
    /// Bytes queued and not yet written.
    len: usize,
    /// A flushed buffer kept for reuse.
    spare: Vec<u8>,
}

impl Outbound {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues bytes that are not WebSocket frames (HTTP responses, the 101).
    pub fn push_opaque(&mut self, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        self.len += bytes.len();
        self.segments.push_back(Segment::Opaque(bytes));
    }

    /// Queues whole frames that must go out whatever the budget: control frames from
    /// tungstenite, history on join.
    pub fn push_copy(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.len += bytes.len();
        if let Some(Segment::Copied(last)) = self.segments.back_mut()
            && (last.len() + bytes.len() <= SEGMENT_CAPACITY
                || last.capacity() - last.len() >= bytes.len())
        {
            last.extend_from_slice(bytes);
            return;
        }
        let mut buffer = std::mem::take(&mut self.spare);
        buffer.reserve(bytes.len());
        buffer.extend_from_slice(bytes);
        self.segments.push_back(Segment::Copied(buffer));
    }

    /// Queues a shared buffer without copying it (a large frame, a static file body).
    pub fn push_shared(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        self.len += bytes.len();
        self.segments.push_back(Segment::Shared(bytes));
    }

    /// Offers one encoded data frame under a byte budget. Called once per recipient of a
    /// broadcast; `frame` is the same encoded frame for every recipient.
    pub fn offer(
        &mut self,
        frame: &EncodedFrame,
        budget: usize,
        drop_oldest: bool,
        close: bool,
    ) -> Offer {
        let size = frame.len();
        let mut dropped = 0;
        if self.len + size > budget {
            if size > budget {
                return Offer::Dropped;
            }
            if close {
                return Offer::OverBudget;
            }
            if !drop_oldest {
                return Offer::Dropped;
            }
            // Free a quarter of the budget beyond what this frame needs, so a reader that
            // stays slow costs one compaction per many messages, not one per message.
            let target = budget.saturating_sub(size).saturating_sub(budget / 4);
            dropped = self.drop_unstarted_messages(target);
            if self.len + size > budget {
                return Offer::Dropped;
            }
        }
        match frame {
            EncodedFrame::Small(bytes) => self.push_copy(bytes),
            EncodedFrame::Large(bytes) => self.push_shared(bytes.clone()),
        }
        if dropped > 0 {
            Offer::QueuedAfterDropping(dropped)
        } else {
            Offer::Queued
        }
    }

    /// Discards whole data frames that have not started to go out, oldest first, until at most
    /// `target` bytes remain; control frames, HTTP bytes and a frame already half written stay.
    /// Returns how many messages were discarded. Used by drop-oldest and by the process-wide
    /// budget; it costs a walk over the queue, so callers free a margin at once.
    pub fn drop_unstarted_messages(&mut self, target: usize) -> usize {
        if self.len <= target {
            return 0;
        }
        let mut dropped = 0;
        let segments = std::mem::take(&mut self.segments);
        let mut kept = VecDeque::with_capacity(segments.len());
        for (index, segment) in segments.into_iter().enumerate() {
            // Bytes of this segment already on the wire: frames starting before it are started.
            let written = if index == 0 { self.head } else { 0 };
            match segment {
                Segment::Opaque(bytes) => kept.push_back(Segment::Opaque(bytes)),
                Segment::Shared(bytes) => {
                    if written == 0 && self.len > target && frame_is_data(&bytes) {
                        self.len -= bytes.len();
                        dropped += 1;
                    } else {
                        kept.push_back(Segment::Shared(bytes));
                    }
                }
                Segment::Copied(buffer) => {
                    let mut rebuilt: Option<Vec<u8>> = None;
                    let mut start = 0;
                    while start < buffer.len() {
                        let end = (start + frame_len(&buffer[start..])).min(buffer.len());
                        let droppable = start >= written && frame_is_data(&buffer[start..end]);
                        if droppable && self.len > target {
                            self.len -= end - start;
                            dropped += 1;
                            rebuilt.get_or_insert_with(|| buffer[..start].to_vec());
                        } else if let Some(out) = rebuilt.as_mut() {
                            out.extend_from_slice(&buffer[start..end]);
                        }
                        start = end;
                    }
                    match rebuilt {
                        Some(out) if out.is_empty() => {}
                        Some(out) => kept.push_back(Segment::Copied(out)),
                        None => kept.push_back(Segment::Copied(buffer)),
                    }
                }
            }
        }
        // A partly written front segment always keeps its written prefix, so `head` stays valid.
        self.segments = kept;
        dropped
    }

    /// Writes as much as the socket takes in one `writev`. Called once per dirty connection
    /// per loop pass (and again when the socket becomes writable).
    pub fn flush_once(&mut self, writer: &mut impl Write) -> io::Result<Flushed> {
        let mut written_total = 0;
        loop {
            if self.len == 0 {
                return Ok(Flushed {
                    bytes: written_total,
                    blocked: false,
                });
            }
            let empty: &[u8] = &[];
            let mut slices = [IoSlice::new(empty); MAX_IOVECS];
            let mut count = 0;
            for (index, segment) in self.segments.iter().take(MAX_IOVECS).enumerate() {
                let bytes = segment.bytes();
                slices[count] = IoSlice::new(if index == 0 {
                    &bytes[self.head..]
                } else {
                    bytes
                });
                count += 1;
            }
            let written = match writer.write_vectored(&slices[..count]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "socket took no bytes",
                    ));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(Flushed {
                        bytes: written_total,
                        blocked: true,
                    });
                }
                Err(e) => return Err(e),
            };
            let offered: usize = slices[..count].iter().map(|s| s.len()).sum();
            written_total += written;
            self.consume(written);
            // A short write means the socket buffer is full: the next try would only
            // return WouldBlock, a wasted system call. Wait for writable instead.
            if written < offered {
                return Ok(Flushed {
                    bytes: written_total,
                    blocked: true,
                });
            }
        }
    }

    fn consume(&mut self, mut written: usize) {
        self.len -= written;
        while written > 0 {
            let Some(front) = self.segments.front() else {
                break;
            };
            let remaining = front.bytes().len() - self.head;
            if written < remaining {
                self.head += written;
                return;
            }
            written -= remaining;
            self.head = 0;
            if let Some(Segment::Copied(mut buffer)) = self.segments.pop_front()
                && buffer.capacity() <= KEEP_CAPACITY
                && self.spare.capacity() == 0
            {
                buffer.clear();
                self.spare = buffer;
            }
        }
    }

    /// Gives back memory an idle connection does not need. Called from the heartbeat timer.
    pub fn release_memory(&mut self) {
        self.spare = Vec::new();
        if self.segments.is_empty() {
            self.segments = VecDeque::new();
        }
    }
}

/// One server frame, encoded once for every recipient of a message.
#[derive(Debug, Clone)]
pub enum EncodedFrame {
    Small(Vec<u8>),
    Large(Bytes),
}

impl EncodedFrame {
    pub fn len(&self) -> usize {
        match self {
            EncodedFrame::Small(v) => v.len(),
            EncodedFrame::Large(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An unmasked server frame: opcode and payload.
    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        assert!(payload.len() < 126);
        let mut frame = vec![0x80 | opcode, payload.len() as u8];
        frame.extend_from_slice(payload);
        frame
    }

    fn small(payload: &[u8]) -> EncodedFrame {
        EncodedFrame::Small(server_frame(0x1, payload))
    }

    fn drain(queue: &mut Outbound) -> Vec<u8> {
        let mut out = Vec::new();
        while !queue.is_empty() {
            queue.flush_once(&mut out).unwrap();
        }
        out
    }

    /// A writer that takes at most `room` bytes, then would block.
    struct Narrow {
        taken: Vec<u8>,
        room: usize,
    }

    impl Write for Narrow {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.taken.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn drop_newest_refuses_over_budget_and_queues_nothing() {
        let mut queue = Outbound::default();
        let frame = small(&[b'a'; 40]); // 42 bytes
        assert_eq!(queue.offer(&frame, 100, false, false), Offer::Queued);
        assert_eq!(queue.offer(&frame, 100, false, false), Offer::Queued);
        assert_eq!(queue.offer(&frame, 100, false, false), Offer::Dropped);
        assert_eq!(queue.len(), 84);
    }

    #[test]
    fn close_policy_reports_over_budget() {
        let mut queue = Outbound::default();
        let frame = small(&[b'a'; 40]);
        queue.offer(&frame, 100, false, true);
        queue.offer(&frame, 100, false, true);
        assert_eq!(queue.offer(&frame, 100, false, true), Offer::OverBudget);
    }

    #[test]
    fn drop_oldest_keeps_control_frames_and_the_newest_messages_whole() {
        let mut queue = Outbound::default();
        queue.offer(&small(b"one"), 1000, true, false);
        queue.push_copy(&server_frame(0x9, b"ping"));
        queue.offer(&small(b"two"), 1000, true, false);
        queue.push_shared(Bytes::from(server_frame(0x2, &[7; 100])));
        queue.push_copy(&server_frame(0x8, &[3, 232]));
        let dropped = queue.drop_unstarted_messages(0);
        assert_eq!(dropped, 3);
        let expected = [server_frame(0x9, b"ping"), server_frame(0x8, &[3, 232])].concat();
        assert_eq!(queue.len(), expected.len());
        assert_eq!(drain(&mut queue), expected);
    }

    #[test]
    fn drop_oldest_spares_a_frame_already_half_written() {
        let mut queue = Outbound::default();
        queue.offer(&small(b"first message"), 1000, true, false);
        queue.offer(&small(b"second"), 1000, true, false);
        let mut socket = Narrow {
            taken: Vec::new(),
            room: 5,
        };
        let flushed = queue.flush_once(&mut socket).unwrap();
        assert!(flushed.blocked);
        assert_eq!(queue.drop_unstarted_messages(0), 1);
        socket.room = usize::MAX;
        while !queue.is_empty() {
            queue.flush_once(&mut socket).unwrap();
        }
        assert_eq!(socket.taken, server_frame(0x1, b"first message"));
    }

    #[test]
    fn drop_oldest_makes_room_for_the_newest() {
        let mut queue = Outbound::default();
        for i in 0..10u8 {
            let outcome = queue.offer(&small(&[i; 20]), 100, true, false);
            assert!(matches!(
                outcome,
                Offer::Queued | Offer::QueuedAfterDropping(_)
            ));
            assert!(queue.len() <= 100);
        }
        // The newest is last, and every frame in the queue is whole.
        let bytes = drain(&mut queue);
        assert_eq!(bytes.len() % 22, 0);
        assert_eq!(&bytes[bytes.len() - 22..], server_frame(0x1, &[9; 20]));
    }

    #[test]
    fn a_frame_larger_than_the_budget_is_dropped_under_every_policy() {
        let frame = small(&[0; 120]);
        for (oldest, close) in [(false, false), (true, false), (false, true)] {
            let mut queue = Outbound::default();
            assert_eq!(queue.offer(&frame, 100, oldest, close), Offer::Dropped);
        }
    }
}
