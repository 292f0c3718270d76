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

use crate::config::SlowClientPolicy;

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
    /// The new frame was not queued (drop-newest, or no room could be made under drop-oldest);
    /// nothing else was discarded.
    Dropped,
    /// Over budget and the policy is to close: the caller closes the connection.
    OverBudget,
    /// Queued after discarding this many older whole messages (drop-oldest).
    QueuedAfterDropping(usize),
}

/// What a flush did.
#[derive(Debug)]
pub struct Flushed {
    /// Bytes that went to the socket, whatever happened after them.
    pub bytes: usize,
    pub outcome: FlushOutcome,
}

/// How a flush ended.
#[derive(Debug)]
pub enum FlushOutcome {
    /// The queue is empty, or the socket may take more.
    Open,
    /// The socket would take no more: wait for writable.
    Blocked,
    /// The socket failed; the connection is over. Bytes written before the failure are in
    /// [`Flushed::bytes`] and already gone from the queue and the total.
    Failed(io::Error),
}

/// The bytes waiting in every connection's outbound queue together: the process-wide budget
/// (`--max-outbound-total`) is judged on it. Every queue mutation takes it by `&mut` and keeps
/// it exact, so no call site adjusts it by hand. (A shared `Rc<Cell>` would make the server
/// `!Send`; an atomic costs a locked add per delivery.)
///
/// Beside it, the capacity of the flushed buffers queues keep for reuse (`KEEP_CAPACITY`
/// each), bounded in sum: 2,000 members that never read once held a 64 KiB spare each, 125 MiB
/// that no queue counted and no shedding could free (scripts/hostile, attack 5).
#[derive(Debug)]
pub struct QueuedTotal {
    bytes: usize,
    spare: usize,
    spare_limit: usize,
}

impl Default for QueuedTotal {
    /// No limit on spare buffers (tests; the server sets one from its outbound limit).
    fn default() -> Self {
        QueuedTotal::with_spare_limit(usize::MAX)
    }
}

impl QueuedTotal {
    /// Queues may keep flushed buffers for reuse while their capacities sum to at most
    /// `spare_limit` bytes.
    pub fn with_spare_limit(spare_limit: usize) -> Self {
        QueuedTotal {
            bytes: 0,
            spare: 0,
            spare_limit,
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Capacity of the flushed buffers kept for reuse.
    pub fn spare_bytes(&self) -> usize {
        self.spare
    }
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

    fn grow(&mut self, total: &mut QueuedTotal, bytes: usize) {
        self.len += bytes;
        total.bytes += bytes;
    }

    fn shrink(&mut self, total: &mut QueuedTotal, bytes: usize) {
        self.len -= bytes;
        total.bytes -= bytes;
    }

    /// Queues bytes that are not WebSocket frames (HTTP responses, the 101).
    pub fn push_opaque(&mut self, total: &mut QueuedTotal, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        self.grow(total, bytes.len());
        self.segments.push_back(Segment::Opaque(bytes));
    }

    /// Queues whole frames that must go out whatever the budget: control frames from
    /// tungstenite, history on join; and, from fan-out, a small frame within the budget.
    /// The common case (the last buffer has room) is inlined into fan-out's loop: measured
    /// against the `limit` relay, the call per recipient was the largest cost.
    #[inline]
    pub fn push_copy(&mut self, total: &mut QueuedTotal, bytes: &[u8]) {
        if let Some(Segment::Copied(last)) = self.segments.back_mut()
            && last.capacity() - last.len() >= bytes.len()
        {
            self.len += bytes.len();
            total.bytes += bytes.len();
            last.extend_from_slice(bytes);
            return;
        }
        self.push_copy_slow(total, bytes);
    }

    #[inline(never)]
    fn push_copy_slow(&mut self, total: &mut QueuedTotal, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.grow(total, bytes.len());
        if let Some(Segment::Copied(last)) = self.segments.back_mut()
            && (last.len() + bytes.len() <= SEGMENT_CAPACITY
                || last.capacity() - last.len() >= bytes.len())
        {
            last.extend_from_slice(bytes);
            return;
        }
        let mut buffer = self.take_spare(total);
        buffer.reserve(bytes.len());
        buffer.extend_from_slice(bytes);
        self.segments.push_back(Segment::Copied(buffer));
    }

    /// Queues a shared buffer without copying it (a large frame, a static file body).
    pub fn push_shared(&mut self, total: &mut QueuedTotal, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        self.grow(total, bytes.len());
        self.segments.push_back(Segment::Shared(bytes));
    }

    /// Offers one encoded data frame under a byte budget, applying the slow-client policy when
    /// it does not fit. Called once per recipient of a broadcast; `frame` is the same encoded
    /// frame for every recipient.
    pub fn offer(
        &mut self,
        total: &mut QueuedTotal,
        frame: &EncodedFrame,
        budget: usize,
        policy: SlowClientPolicy,
    ) -> Offer {
        let size = frame.len();
        let mut dropped = 0;
        if self.len + size > budget {
            if size > budget {
                return Offer::Dropped;
            }
            match policy {
                SlowClientPolicy::Close => return Offer::OverBudget,
                SlowClientPolicy::DropNewest => return Offer::Dropped,
                SlowClientPolicy::DropOldest => {}
            }
            // Discarding older messages is only worth it if that makes room: a frame half
            // written, control frames and HTTP bytes cannot be discarded.
            if self.len - self.unstarted_data_bytes() + size > budget {
                return Offer::Dropped;
            }
            // Free a quarter of the budget beyond what this frame needs, so a reader that
            // stays slow costs one compaction per many messages, not one per message.
            let target = budget.saturating_sub(size).saturating_sub(budget / 4);
            dropped = self.drop_unstarted_messages(total, target);
        }
        match frame {
            EncodedFrame::Small(bytes) => self.push_copy(total, bytes),
            EncodedFrame::Large(bytes) => self.push_shared(total, bytes.clone()),
        }
        if dropped > 0 {
            Offer::QueuedAfterDropping(dropped)
        } else {
            Offer::Queued
        }
    }

    /// Bytes that `drop_unstarted_messages(0)` would free: whole data frames not yet started.
    fn unstarted_data_bytes(&self) -> usize {
        let mut droppable = 0;
        for (index, segment) in self.segments.iter().enumerate() {
            let written = if index == 0 { self.head } else { 0 };
            match segment {
                Segment::Opaque(_) => {}
                Segment::Shared(bytes) => {
                    if written == 0 && frame_is_data(bytes) {
                        droppable += bytes.len();
                    }
                }
                Segment::Copied(buffer) => {
                    let mut start = 0;
                    while start < buffer.len() {
                        let end = (start + frame_len(&buffer[start..])).min(buffer.len());
                        if start >= written && frame_is_data(&buffer[start..end]) {
                            droppable += end - start;
                        }
                        start = end;
                    }
                }
            }
        }
        droppable
    }

    /// Discards whole data frames that have not started to go out, oldest first, until at most
    /// `target` bytes remain; control frames, HTTP bytes and a frame already half written stay.
    /// Returns how many messages were discarded. Used by drop-oldest and by the process-wide
    /// budget; it costs a walk over the queue, so callers free a margin at once.
    pub fn drop_unstarted_messages(&mut self, total: &mut QueuedTotal, target: usize) -> usize {
        if self.len <= target {
            return 0;
        }
        let mut dropped = 0;
        let mut freed = 0;
        let segments = std::mem::take(&mut self.segments);
        let mut kept = VecDeque::with_capacity(segments.len());
        for (index, segment) in segments.into_iter().enumerate() {
            // Bytes of this segment already on the wire: frames starting before it are started.
            let written = if index == 0 { self.head } else { 0 };
            match segment {
                Segment::Opaque(bytes) => kept.push_back(Segment::Opaque(bytes)),
                Segment::Shared(bytes) => {
                    if written == 0 && self.len - freed > target && frame_is_data(&bytes) {
                        freed += bytes.len();
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
                        if droppable && self.len - freed > target {
                            freed += end - start;
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
        self.shrink(total, freed);
        dropped
    }

    /// Discards every frame not yet started, control frames too: the connection is being
    /// closed (slow consumer, memory pressure) and owes its peer nothing but the Close that
    /// follows (a ping flood's queued pongs go with the rest). HTTP bytes and a frame already
    /// half written stay.
    pub fn drop_unstarted_frames(&mut self, total: &mut QueuedTotal) {
        let mut freed = 0;
        let segments = std::mem::take(&mut self.segments);
        let mut kept = VecDeque::with_capacity(segments.len());
        for (index, segment) in segments.into_iter().enumerate() {
            let written = if index == 0 { self.head } else { 0 };
            match segment {
                Segment::Opaque(bytes) => kept.push_back(Segment::Opaque(bytes)),
                Segment::Shared(bytes) if written == 0 => freed += bytes.len(),
                Segment::Shared(bytes) => kept.push_back(Segment::Shared(bytes)),
                Segment::Copied(mut buffer) => {
                    // Keep the frame in progress whole, drop what follows it.
                    let mut end = 0;
                    while end < written {
                        end = (end + frame_len(&buffer[end..])).min(buffer.len());
                    }
                    freed += buffer.len() - end;
                    buffer.truncate(end);
                    if !buffer.is_empty() {
                        kept.push_back(Segment::Copied(buffer));
                    }
                }
            }
        }
        self.segments = kept;
        self.shrink(total, freed);
    }

    /// Writes as much as the socket takes, one `writev` of up to 64 slices at a time. Called
    /// once per dirty connection per loop pass (and again when the socket becomes writable).
    /// Whatever happens, the bytes that went out are reported and leave the queue and the
    /// total.
    pub fn flush_once(&mut self, total: &mut QueuedTotal, writer: &mut impl Write) -> Flushed {
        let mut written_total = 0;
        let outcome = loop {
            if self.len == 0 {
                break FlushOutcome::Open;
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
                    break FlushOutcome::Failed(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "socket took no bytes",
                    ));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break FlushOutcome::Blocked,
                Err(e) => break FlushOutcome::Failed(e),
            };
            let offered: usize = slices[..count].iter().map(|s| s.len()).sum();
            written_total += written;
            self.consume(total, written);
            // A short write means the socket buffer is full: the next try would only
            // return WouldBlock, a wasted system call. Wait for writable instead.
            if written < offered {
                break FlushOutcome::Blocked;
            }
        };
        Flushed {
            bytes: written_total,
            outcome,
        }
    }

    /// Empties the queue (the connection is being removed).
    pub fn clear(&mut self, total: &mut QueuedTotal) {
        let len = self.len;
        self.shrink(total, len);
        self.segments = VecDeque::new();
        self.head = 0;
        self.take_spare(total);
    }

    /// Takes the kept buffer (empty, maybe without capacity) out of the spare count.
    fn take_spare(&mut self, total: &mut QueuedTotal) -> Vec<u8> {
        let spare = std::mem::take(&mut self.spare);
        total.spare -= spare.capacity();
        spare
    }

    fn consume(&mut self, total: &mut QueuedTotal, mut written: usize) {
        self.shrink(total, written);
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
                && total.spare + buffer.capacity() <= total.spare_limit
            {
                buffer.clear();
                total.spare += buffer.capacity();
                self.spare = buffer;
            }
        }
    }

    /// Gives back memory an idle connection does not need. Called from the heartbeat timer,
    /// and for every connection near the memory ceiling.
    pub fn release_memory(&mut self, total: &mut QueuedTotal) {
        self.take_spare(total);
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

    fn drain(queue: &mut Outbound, total: &mut QueuedTotal) -> Vec<u8> {
        let mut out = Vec::new();
        while !queue.is_empty() {
            assert!(matches!(
                queue.flush_once(total, &mut out).outcome,
                FlushOutcome::Open
            ));
        }
        out
    }

    use SlowClientPolicy::{Close, DropNewest, DropOldest};

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
        let (mut queue, mut total) = (Outbound::default(), QueuedTotal::default());
        let frame = small(&[b'a'; 40]); // 42 bytes
        assert_eq!(
            queue.offer(&mut total, &frame, 100, DropNewest),
            Offer::Queued
        );
        assert_eq!(
            queue.offer(&mut total, &frame, 100, DropNewest),
            Offer::Queued
        );
        assert_eq!(
            queue.offer(&mut total, &frame, 100, DropNewest),
            Offer::Dropped
        );
        assert_eq!(queue.len(), 84);
        assert_eq!(total.bytes(), 84);
    }

    #[test]
    fn close_policy_reports_over_budget() {
        let (mut queue, mut total) = (Outbound::default(), QueuedTotal::default());
        let frame = small(&[b'a'; 40]);
        queue.offer(&mut total, &frame, 100, Close);
        queue.offer(&mut total, &frame, 100, Close);
        assert_eq!(
            queue.offer(&mut total, &frame, 100, Close),
            Offer::OverBudget
        );
    }

    #[test]
    fn drop_oldest_keeps_control_frames_and_the_newest_messages_whole() {
        let (mut queue, mut total) = (Outbound::default(), QueuedTotal::default());
        queue.offer(&mut total, &small(b"one"), 1000, DropOldest);
        queue.push_copy(&mut total, &server_frame(0x9, b"ping"));
        queue.offer(&mut total, &small(b"two"), 1000, DropOldest);
        queue.push_shared(&mut total, Bytes::from(server_frame(0x2, &[7; 100])));
        queue.push_copy(&mut total, &server_frame(0x8, &[3, 232]));
        let dropped = queue.drop_unstarted_messages(&mut total, 0);
        assert_eq!(dropped, 3);
        let expected = [server_frame(0x9, b"ping"), server_frame(0x8, &[3, 232])].concat();
        assert_eq!(queue.len(), expected.len());
        assert_eq!(total.bytes(), expected.len());
        assert_eq!(drain(&mut queue, &mut total), expected);
        assert_eq!(total.bytes(), 0);
    }

    #[test]
    fn drop_oldest_spares_a_frame_already_half_written() {
        let (mut queue, mut total) = (Outbound::default(), QueuedTotal::default());
        queue.offer(&mut total, &small(b"first message"), 1000, DropOldest);
        queue.offer(&mut total, &small(b"second"), 1000, DropOldest);
        let mut socket = Narrow {
            taken: Vec::new(),
            room: 5,
        };
        let flushed = queue.flush_once(&mut total, &mut socket);
        assert!(matches!(flushed.outcome, FlushOutcome::Blocked));
        assert_eq!(queue.drop_unstarted_messages(&mut total, 0), 1);
        socket.room = usize::MAX;
        while !queue.is_empty() {
            queue.flush_once(&mut total, &mut socket);
        }
        assert_eq!(socket.taken, server_frame(0x1, b"first message"));
        assert_eq!(total.bytes(), 0);
    }

    #[test]
    fn drop_oldest_makes_room_for_the_newest() {
        let (mut queue, mut total) = (Outbound::default(), QueuedTotal::default());
        for i in 0..10u8 {
            let outcome = queue.offer(&mut total, &small(&[i; 20]), 100, DropOldest);
            assert!(matches!(
                outcome,
                Offer::Queued | Offer::QueuedAfterDropping(_)
            ));
            assert!(queue.len() <= 100);
            assert_eq!(total.bytes(), queue.len());
        }
        // The newest is last, and every frame in the queue is whole.
        let bytes = drain(&mut queue, &mut total);
        assert_eq!(bytes.len() % 22, 0);
        assert_eq!(&bytes[bytes.len() - 22..], server_frame(0x1, &[9; 20]));
    }

    /// Review bug 2: with a half-written frame at the head and small messages behind it, one
    /// offer discarded the old messages and then dropped the new one too, and was counted as
    /// one drop. Now nothing is discarded when discarding cannot make room.
    #[test]
    fn drop_oldest_discards_nothing_when_that_cannot_make_room() {
        let (mut queue, mut total) = (Outbound::default(), QueuedTotal::default());
        queue.offer(&mut total, &small(&[1; 60]), 100, DropOldest); // 62 bytes
        let mut socket = Narrow {
            taken: Vec::new(),
            room: 2,
        };
        queue.flush_once(&mut total, &mut socket); // the head frame is now half written
        queue.offer(&mut total, &small(b"a"), 100, DropOldest); // 3 bytes
        queue.offer(&mut total, &small(b"b"), 100, DropOldest); // 3 bytes
        let before = queue.len();
        // 60 + 3 + 3 queued; a 42-byte frame fits only if the head frame could go.
        let outcome = queue.offer(&mut total, &small(&[2; 40]), 100, DropOldest);
        assert_eq!(outcome, Offer::Dropped);
        assert_eq!(
            queue.len(),
            before,
            "older messages were discarded for nothing"
        );
        socket.room = usize::MAX;
        while !queue.is_empty() {
            queue.flush_once(&mut total, &mut socket);
        }
        let tail = [server_frame(0x1, b"a"), server_frame(0x1, b"b")].concat();
        assert!(socket.taken.ends_with(&tail));
    }

    /// A writer that takes `first` bytes on its first call and fails on the next.
    struct FailsSecondTime {
        first: usize,
        calls: usize,
    }

    impl Write for FailsSecondTime {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls == 1 {
                Ok(buf.len().min(self.first))
            } else {
                Err(io::ErrorKind::BrokenPipe.into())
            }
        }

        fn write_vectored(&mut self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
            let offered = slices.iter().map(|s| s.len()).sum();
            self.write(&vec![0; offered])
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Review bug 1: a flush of more than 64 segments whose second write failed returned the
    /// error alone, and the bytes of the first write were lost from the process total.
    #[test]
    fn a_failed_flush_still_reports_and_accounts_the_bytes_written_before_it() {
        let (mut queue, mut total) = (Outbound::default(), QueuedTotal::default());
        for _ in 0..100 {
            queue.push_shared(&mut total, Bytes::from(server_frame(0x2, &[5; 10])));
        }
        let first_write = 64 * 12;
        let mut socket = FailsSecondTime {
            first: first_write,
            calls: 0,
        };
        let flushed = queue.flush_once(&mut total, &mut socket);
        assert!(matches!(flushed.outcome, FlushOutcome::Failed(_)));
        assert_eq!(flushed.bytes, first_write);
        assert_eq!(queue.len(), 100 * 12 - first_write);
        assert_eq!(total.bytes(), queue.len());
        queue.clear(&mut total);
        assert_eq!(total.bytes(), 0);
    }

    #[test]
    fn closing_drops_unstarted_control_frames_too_but_not_the_frame_in_progress() {
        let (mut queue, mut total) = (Outbound::default(), QueuedTotal::default());
        queue.push_copy(&mut total, &server_frame(0xA, b"pong-1"));
        queue.push_copy(&mut total, &server_frame(0xA, b"pong-2"));
        queue.push_shared(&mut total, Bytes::from(server_frame(0x2, &[1; 50])));
        let mut socket = Narrow {
            taken: Vec::new(),
            room: 3,
        };
        queue.flush_once(&mut total, &mut socket); // pong-1 is half written
        queue.drop_unstarted_frames(&mut total);
        assert_eq!(total.bytes(), queue.len());
        socket.room = usize::MAX;
        while !queue.is_empty() {
            queue.flush_once(&mut total, &mut socket);
        }
        assert_eq!(socket.taken, server_frame(0xA, b"pong-1"));
    }

    #[test]
    fn a_frame_larger_than_the_budget_is_dropped_under_every_policy() {
        let frame = small(&[0; 120]);
        for policy in [DropNewest, DropOldest, Close] {
            let (mut queue, mut total) = (Outbound::default(), QueuedTotal::default());
            assert_eq!(queue.offer(&mut total, &frame, 100, policy), Offer::Dropped);
            assert_eq!(total.bytes(), 0);
        }
    }

    #[test]
    fn flushed_buffers_are_kept_for_reuse_only_within_the_spare_limit() {
        let mut total = QueuedTotal::with_spare_limit(3000);
        let mut queues: Vec<Outbound> = (0..3).map(|_| Outbound::default()).collect();
        for queue in &mut queues {
            // One 1,100-byte buffer each (two frames), then flushed.
            queue.push_copy(&mut total, &[0x82; 600]);
            queue.push_copy(&mut total, &[0x82; 500]);
            drain(queue, &mut total);
        }
        // Two buffers fit the limit; the third was freed.
        let kept = total.spare_bytes();
        assert!(kept > 0 && kept <= 3000, "{kept}");
        assert_eq!(
            kept,
            queues.iter().map(|q| q.spare.capacity()).sum::<usize>()
        );
        assert!(queues.iter().any(|q| q.spare.capacity() == 0));
        // A reused spare leaves the count; clearing and releasing give back the rest.
        queues[0].push_copy(&mut total, &[0x82; 10]);
        queues[1].release_memory(&mut total);
        queues[2].clear(&mut total);
        assert_eq!(total.spare_bytes(), 0);
        assert_eq!(total.bytes(), 10);
    }
}
