//! One client connection: its socket, its phase (`Http` → `WebSocket` → `Closing`) and its
//! outbound queue. It never sees the slab or any other connection; the loop in `server.rs`
//! drives it and does everything that involves more than one connection.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tungstenite::protocol::{Message, Role, WebSocketConfig, WebSocketContext};

use crate::deflate::{Agreement, InboundError, InboundInflate, Inflater};
use crate::outbound::{Outbound, QueuedTotal};
use crate::rate::TokenBucket;
use crate::room::RoomKey;
use crate::server::read_schedule::ReadFlags;
use crate::server::timers::ConnectionTimer;

mod close;
mod transport;
pub use close::CloseReason;
mod utf8_guard;
pub use transport::Transport;
use utf8_guard::{InvalidUtf8Early, Utf8Guard};

/// Size of the loop's one read buffer, shared by every connection in turn.
pub const READ_SCRATCH_SIZE: usize = 64 * 1024;
/// At most this many bytes are read from one socket per readiness event, so one fast sender
/// cannot hold the loop; the rest is read on the next pass.
pub const READ_BUDGET_PER_EVENT: usize = 64 * 1024;

/// The loop's one read buffer. Bytes read from a socket are handed to that connection's
/// parser before the loop moves on, so between connections it is always empty. Beside it,
/// the loop's one inflater for compressed client messages (each message inflates alone, so
/// one serves every connection in turn).
pub struct ReadScratch {
    /// Inflates permessage-deflate messages, bounded by `--max-message-size`; its counters
    /// feed `/metrics`.
    pub inflater: Inflater,
    buffer: Box<[u8]>,
    start: usize,
    end: usize,
    /// Bytes this connection may still read from its socket in this event.
    budget: usize,
    /// Set when the budget, not the socket, stopped reading: the connection owes a read.
    pub budget_exhausted: bool,
    /// Bytes read from sockets since the counter was last taken (for metrics).
    pub bytes_read: u64,
    /// Bytes handed to tungstenite, ever: what it holds of an unfinished message is what it
    /// was handed since its last whole message (it reads 64 bytes at a time).
    handed: u64,
}

impl ReadScratch {
    /// `max_message_size`: the largest inflated message accepted (close 1009 past it).
    pub fn new(max_message_size: usize) -> Self {
        ReadScratch {
            inflater: Inflater::new(max_message_size),
            buffer: vec![0; READ_SCRATCH_SIZE].into_boxed_slice(),
            start: 0,
            end: 0,
            budget: READ_BUDGET_PER_EVENT,
            budget_exhausted: false,
            bytes_read: 0,
            handed: 0,
        }
    }
}

impl ReadScratch {
    /// From now until the next `begin`, bytes already read are still handed out but the
    /// socket is not read again: the connection reads on once its queue has drained.
    pub fn stop_socket_reads(&mut self) {
        self.budget = 0;
    }

    /// Readies the scratch for another connection's event, which may read at most `budget`
    /// bytes from its socket (see `Server::read_budget`).
    pub fn begin(&mut self, budget: usize) {
        self.start = 0;
        self.end = 0;
        self.budget = budget;
        self.budget_exhausted = false;
    }

    fn pending(&self) -> &[u8] {
        &self.buffer[self.start..self.end]
    }

    /// Reads at most `max` bytes from the socket once, retrying `Interrupted`. `Ok(0)` is end
    /// of stream.
    fn fill(&mut self, transport: &mut Transport, max: usize) -> io::Result<usize> {
        if self.budget == 0 {
            self.budget_exhausted = true;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let room = self.buffer.len().min(self.budget).min(max);
        loop {
            match transport.read(&mut self.buffer[..room]) {
                Ok(n) => {
                    self.start = 0;
                    self.end = n;
                    self.budget -= n;
                    self.bytes_read += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Copies pending bytes into `out`, reading the socket first when none are pending. The
    /// guard may withhold the bytes from an invalid UTF-8 sequence on: the bytes before it
    /// are handed on, and the read after them fails with `InvalidUtf8Early`. With deflate
    /// negotiated, the bytes pass the inbound transform first (see `read_inflating`).
    fn read_into(
        &mut self,
        transport: &mut Transport,
        out: &mut [u8],
        guard: &mut Utf8Guard,
        inflate: Option<&mut InboundInflate>,
    ) -> io::Result<usize> {
        if guard.failed() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, InvalidUtf8Early));
        }
        if let Some(inflate) = inflate {
            return self.read_inflating(transport, out, guard, inflate);
        }
        if self.start == self.end && self.fill(transport, usize::MAX)? == 0 {
            return Ok(0);
        }
        let n = out.len().min(self.end - self.start);
        let n = guard.scan(&self.buffer[self.start..self.start + n]);
        if n == 0 && guard.failed() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, InvalidUtf8Early));
        }
        out[..n].copy_from_slice(&self.buffer[self.start..self.start + n]);
        self.start += n;
        self.handed += n as u64;
        Ok(n)
    }

    /// `read_into` for a connection that negotiated permessage-deflate. The chain is: this
    /// buffer -> the connection's `InboundInflate` (compressed messages out, their inflated
    /// frame in) -> the UTF-8 guard (which so checks inflated text) -> tungstenite, which
    /// never sees RSV1 on a message we accepted. A transform error comes back as an
    /// `InvalidData` error carrying the `InboundError`, for `classify`. Bytes the guard
    /// withholds after the transform produced them are dropped on purpose: the guard has
    /// failed, and every later read fails.
    fn read_inflating(
        &mut self,
        transport: &mut Transport,
        out: &mut [u8],
        guard: &mut Utf8Guard,
        inflate: &mut InboundInflate,
    ) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if self.start == self.end
                && !inflate.has_pending()
                && self.fill(transport, usize::MAX)? == 0
            {
                return Ok(0);
            }
            let pulled = inflate
                .pull(&self.buffer[self.start..self.end], out, &mut self.inflater)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            self.start += pulled.consumed;
            if pulled.produced == 0 {
                // Every byte went into a compressed message in flight: read on (this is not
                // the end of the stream).
                continue;
            }
            let n = guard.scan(&out[..pulled.produced]);
            if n == 0 && guard.failed() {
                return Err(io::Error::new(io::ErrorKind::InvalidData, InvalidUtf8Early));
            }
            return Ok(n);
        }
    }
}

/// The stream tungstenite sees: reads come from the loop's scratch buffer (filled from the
/// socket) through the connection's UTF-8 guard, writes go into the connection's outbound
/// queue and never block. The loop flushes the queue to the socket once per pass.
struct LoopStream<'a> {
    transport: &'a mut Transport,
    scratch: &'a mut ReadScratch,
    outbound: &'a mut Outbound,
    queued_total: &'a mut QueuedTotal,
    guard: &'a mut Utf8Guard,
    /// The permessage-deflate transform, when negotiated.
    inflate: Option<&'a mut InboundInflate>,
}

impl Read for LoopStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let inflate = self.inflate.as_deref_mut();
        self.scratch
            .read_into(self.transport, buf, self.guard, inflate)
    }
}

impl Write for LoopStream<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outbound.push_copy(self.queued_total, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Bytes of an unfinished message and since when they have been held, in 8 bytes: every
/// connection carries it.
#[derive(Debug, Default, Clone, Copy)]
struct Partial {
    bytes: u32,
    /// Milliseconds after the connection opened, plus one (0: nothing held).
    since_ms: u32,
}

impl Partial {
    fn hold(&mut self, bytes: usize, now: Instant, opened_at: Instant) {
        self.bytes = self
            .bytes
            .saturating_add(u32::try_from(bytes).unwrap_or(u32::MAX));
        if self.since_ms == 0 {
            let after = now.saturating_duration_since(opened_at).as_millis();
            self.since_ms = u32::try_from(after).unwrap_or(u32::MAX - 1) + 1;
        }
    }
}

/// A connection upgraded to WebSocket.
pub struct WebSocketState {
    context: WebSocketContext,
    /// Fails a text message at its first invalid UTF-8 byte, before its frame is complete.
    guard: Utf8Guard,
    pub room: RoomKey,
    /// This member's index in its room's member list; None once it has left the room.
    pub slot: Option<usize>,
    /// A ping was sent after the last thing heard; the next timer closes instead.
    pub pinged: bool,
    /// `--max-rate`.
    pub rate: TokenBucket,
    /// permessage-deflate as agreed in the 101 (four bytes, in what was padding): fan-out
    /// reads it for the members of rooms that have deflate members.
    pub deflate: Option<Agreement>,
    /// The inbound transform for compressed messages, boxed: only connections that
    /// negotiated deflate have one (48 bytes idle), and the box pointer keeps this struct in
    /// the allocator's size class it had before.
    inflate: Option<Box<InboundInflate>>,
}

pub enum Phase {
    /// Reading a request head; `head` holds the bytes so far (and any after the head).
    Http {
        head: Vec<u8>,
    },
    WebSocket(Box<WebSocketState>),
    /// Everything owed is being flushed; then the write side is shut and the connection waits
    /// for the peer's end of stream (or the deadline) before the socket is dropped, so that
    /// unread input does not turn into a reset that destroys the last frames in flight.
    Closing {
        write_shut: bool,
    },
}

/// What one read of a WebSocket connection produced.
pub enum WsRead {
    /// A text or binary message for the room.
    Message(Message),
    /// A control frame was handled (pong queued, pong received); keep reading.
    Control,
    /// Nothing more to read now.
    WouldBlock,
    /// The connection is over; the queue may hold a final Close frame.
    Ended(CloseReason),
}

pub struct Connection {
    /// Monotonic, never reused (unlike the slab key): names the connection in every log line.
    pub id: u64,
    pub peer: SocketAddr,
    /// The socket, plain or through TLS.
    pub transport: Transport,
    pub opened_at: Instant,
    pub phase: Phase,
    pub outbound: Outbound,
    /// The last time anything arrived from the client.
    pub last_heard: Instant,
    /// The next time the loop must look at this connection (handshake, heartbeat, close).
    pub timer: ConnectionTimer,
    /// On the loop's dirty list: has bytes to flush this pass.
    pub dirty: bool,
    /// The socket refused bytes; wait for a writable event before writing again.
    pub write_blocked: bool,
    /// Reads owed and the pass that last read it (one read budget per pass).
    pub reads: ReadFlags,
    /// Why it is closing, once it is.
    pub close_reason: Option<CloseReason>,
    /// It became a WebSocket at some point: its end is logged at info.
    pub upgraded: bool,
    /// Not read while the process is near its memory ceiling (it holds partial input).
    pub memory_paused: bool,
    /// What tungstenite holds of an unfinished message: the memory ceiling sheds by it.
    partial: Partial,
    /// It speaks `wschat.v1` (docs/protocol.md). Kept here, beside the other flags fan-out
    /// reads per delivery, not behind the WebSocket state's pointer; it fits their padding,
    /// so a raw member costs nothing more. Its name lives in its room.
    pub v1: bool,
}

impl Connection {
    pub fn new(
        id: u64,
        transport: Transport,
        peer: SocketAddr,
        now: Instant,
        deadline: Instant,
    ) -> Self {
        Connection {
            id,
            peer,
            transport,
            opened_at: now,
            phase: Phase::Http { head: Vec::new() },
            outbound: Outbound::default(),
            last_heard: now,
            timer: ConnectionTimer::new(deadline),
            dirty: false,
            write_blocked: false,
            reads: ReadFlags::default(),
            close_reason: None,
            upgraded: false,
            v1: false,
            memory_paused: false,
            partial: Partial::default(),
        }
    }

    /// Bytes of partial input it holds (a request head, an unfinished message) and, for a
    /// WebSocket, since when. What the memory ceiling pauses and closes by.
    pub fn partial_input(&self) -> (usize, Option<Instant>) {
        match &self.phase {
            Phase::Http { head } => (head.capacity(), None),
            Phase::WebSocket(ws) => {
                // A compressed message in flight is held by the inflate transform as well.
                let inflating = ws.inflate.as_ref().map_or(0, |i| i.held_bytes());
                let since = (self.partial.since_ms > 0).then(|| {
                    self.opened_at + Duration::from_millis(u64::from(self.partial.since_ms - 1))
                });
                (self.partial.bytes as usize + inflating, since)
            }
            Phase::Closing { .. } => (0, None),
        }
    }

    /// A member that can still be sent data (not closing).
    pub fn accepts_messages(&self) -> bool {
        match &self.phase {
            Phase::WebSocket(ws) => ws.context.can_write(),
            _ => false,
        }
    }

    pub fn websocket(&mut self) -> Option<&mut WebSocketState> {
        match &mut self.phase {
            Phase::WebSocket(ws) => Some(ws),
            _ => None,
        }
    }

    /// Reads request-head bytes into the HTTP buffer, never holding more than `limit` bytes
    /// (the socket is read for no more than what fits; the rest stays in the kernel, where TCP
    /// pushes back on the client). Returns Ok(false) at end of stream.
    pub fn read_http(
        &mut self,
        scratch: &mut ReadScratch,
        limit: usize,
        now: Instant,
    ) -> io::Result<bool> {
        let Phase::Http { head } = &mut self.phase else {
            return Ok(true);
        };
        while head.len() < limit {
            match scratch.fill(&mut self.transport, limit - head.len()) {
                Ok(0) => return Ok(false),
                Ok(_) => {
                    head.extend_from_slice(scratch.pending());
                    scratch.start = scratch.end;
                    self.last_heard = now;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.reads.owed = scratch.budget_exhausted;
                    return Ok(true);
                }
                Err(e) => return Err(e),
            }
        }
        // The buffer is full; what is left in the socket is read once it has been used.
        self.reads.owed = true;
        Ok(true)
    }

    /// Switches to WebSocket after the 101 is queued; `rest` is what followed the head.
    /// `deflate`: the permessage-deflate agreement of the 101, if any.
    pub fn upgrade(
        &mut self,
        rest: Vec<u8>,
        config: WebSocketConfig,
        room: RoomKey,
        slot: usize,
        deflate: Option<Agreement>,
        inflater: &mut Inflater,
    ) {
        if !rest.is_empty() {
            self.partial
                .hold(rest.len(), self.last_heard, self.opened_at);
        }
        let mut inflate = deflate.map(|_| Box::new(InboundInflate::new(true)));
        // The bytes after the head go to tungstenite directly, through the same stages as
        // every later read: the transform, then the guard. An error stays in the transform
        // (failed), which reports it on the first read.
        let rest = match &mut inflate {
            Some(inflate) => inflate_all(inflate, &rest, inflater),
            None => rest,
        };
        let mut guard = Utf8Guard::default();
        let passed = guard.scan(&rest);
        let mut rest = if passed < rest.len() {
            rest[..passed].to_vec()
        } else {
            rest
        };
        // `rest` is the request head's buffer with the head drained: tungstenite keeps it as
        // its read buffer (its capacity, a whole head, for as long as the connection lives;
        // a browser's head is 400-600 bytes). Empty, it is given back; tungstenite then
        // allocates its READ_BUFFER_SIZE on its own.
        rest.shrink_to_fit();
        self.phase = Phase::WebSocket(Box::new(WebSocketState {
            context: WebSocketContext::from_partially_read(rest, Role::Server, Some(config)),
            guard,
            room,
            slot: Some(slot),
            pinged: false,
            rate: TokenBucket::new(self.last_heard),
            deflate,
            inflate,
        }));
    }

    /// Reads one message (or control frame) from a WebSocket connection. tungstenite does the
    /// protocol: it unmasks, validates, reassembles fragments and queues pong and close
    /// replies into our outbound queue.
    pub fn read_websocket(
        &mut self,
        scratch: &mut ReadScratch,
        queued_total: &mut QueuedTotal,
        now: Instant,
    ) -> WsRead {
        let Phase::WebSocket(ws) = &mut self.phase else {
            return WsRead::WouldBlock;
        };
        let before = scratch.bytes_read;
        let handed_before = scratch.handed;
        let mut stream = LoopStream {
            transport: &mut self.transport,
            scratch,
            outbound: &mut self.outbound,
            queued_total,
            guard: &mut ws.guard,
            inflate: ws.inflate.as_deref_mut(),
        };
        let result = ws.context.read(&mut stream);
        if stream.scratch.bytes_read != before {
            self.last_heard = now;
            ws.pinged = false;
        }
        let handed = (stream.scratch.handed - handed_before) as usize;
        if result.is_ok() {
            // A whole message or control frame: tungstenite holds nothing unfinished.
            self.partial = Partial::default();
        } else if handed > 0 {
            self.partial.hold(handed, now, self.opened_at);
        }
        match result {
            Ok(message @ (Message::Text(_) | Message::Binary(_))) => WsRead::Message(message),
            Ok(Message::Close(_)) => {
                // tungstenite queued the reply; the next read reports the end.
                WsRead::Control
            }
            Ok(_) => WsRead::Control,
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                self.reads.owed = stream.scratch.budget_exhausted;
                WsRead::WouldBlock
            }
            Err(error) => {
                let reason = classify(&error);
                if let Some(frame) = reason.close_frame() {
                    // "_Fail the WebSocket Connection_": send the close code, then close.
                    let _ = ws.context.close(&mut stream, Some(frame));
                }
                WsRead::Ended(reason)
            }
        }
    }

    /// Starts the closing handshake from our side (shutdown, idle, slow consumer, rate).
    /// Bytes not yet started are discarded for a slow consumer so the Close goes out next.
    pub fn send_close(
        &mut self,
        reason: CloseReason,
        scratch: &mut ReadScratch,
        queued_total: &mut QueuedTotal,
    ) {
        self.close_reason.get_or_insert(reason);
        let Phase::WebSocket(ws) = &mut self.phase else {
            return;
        };
        if matches!(
            reason,
            CloseReason::SlowConsumer | CloseReason::MemoryPressure
        ) {
            // Owed nothing but the Close: its queue (pongs included) goes now.
            self.outbound.drop_unstarted_frames(queued_total);
        }
        let mut stream = LoopStream {
            transport: &mut self.transport,
            scratch,
            outbound: &mut self.outbound,
            queued_total,
            guard: &mut ws.guard,
            inflate: ws.inflate.as_deref_mut(),
        };
        let _ = ws.context.close(&mut stream, reason.close_frame());
    }

    /// Queues a ping (heartbeat).
    pub fn send_ping(&mut self, scratch: &mut ReadScratch, queued_total: &mut QueuedTotal) {
        let Phase::WebSocket(ws) = &mut self.phase else {
            return;
        };
        let mut stream = LoopStream {
            transport: &mut self.transport,
            scratch,
            outbound: &mut self.outbound,
            queued_total,
            guard: &mut ws.guard,
            inflate: ws.inflate.as_deref_mut(),
        };
        if ws
            .context
            .write(&mut stream, Message::Ping(Default::default()))
            .is_ok()
        {
            let _ = ws.context.flush(&mut stream);
            ws.pinged = true;
        }
    }

    /// Enters the final phase: flush, shut the write side, wait for end of stream.
    pub fn begin_closing(&mut self, reason: CloseReason) {
        self.close_reason.get_or_insert(reason);
        self.phase = Phase::Closing { write_shut: false };
    }

    /// In `Closing`: once the queue is empty, shut the write side (FIN after our last bytes).
    /// Returns true when the write side is shut.
    pub fn shut_write_when_flushed(&mut self) -> bool {
        if let Phase::Closing { write_shut } = &mut self.phase {
            if !*write_shut && self.outbound.is_empty() {
                *write_shut = self.transport.shutdown_write();
            }
            return *write_shut;
        }
        false
    }

    /// In `Closing`: reads and discards until end of stream, into a buffer of its own (the
    /// loop's scratch may hold another connection's bytes). Returns true at end of stream or
    /// on an error: the peer is finished.
    pub fn drain_input(&mut self) -> bool {
        let mut discard = [0u8; 4096];
        // Bounded like any read: a peer that keeps sending is cut off by the close deadline.
        for _ in 0..64 {
            match self.transport.discard_input(&mut discard) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(_) => return true,
            }
        }
        self.reads.owed = true;
        false
    }
}

/// Runs bytes that arrived with the request head through a new connection's transform, as a
/// read would: what comes out is what tungstenite gets first.
fn inflate_all(inflate: &mut InboundInflate, input: &[u8], inflater: &mut Inflater) -> Vec<u8> {
    let mut handed = Vec::with_capacity(input.len());
    let mut out = [0u8; 4096];
    let mut at = 0;
    while at < input.len() || inflate.has_pending() {
        match inflate.pull(&input[at..], &mut out, inflater) {
            Ok(pulled) if pulled.consumed == 0 && pulled.produced == 0 => break,
            Ok(pulled) => {
                at += pulled.consumed;
                handed.extend_from_slice(&out[..pulled.produced]);
            }
            Err(_) => break,
        }
    }
    handed
}

/// Maps tungstenite's read errors to our close reasons (and so to close codes).
fn classify(error: &WsError) -> CloseReason {
    match error {
        WsError::ConnectionClosed | WsError::AlreadyClosed => CloseReason::ClientClosed,
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => CloseReason::ClientGone,
        WsError::Protocol(_) => CloseReason::ProtocolError,
        WsError::Utf8(_) => CloseReason::InvalidUtf8,
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => CloseReason::MessageTooBig,
        WsError::Capacity(_) => CloseReason::MessageTooBig,
        WsError::Io(e)
            if e.get_ref()
                .is_some_and(|inner| inner.is::<InvalidUtf8Early>()) =>
        {
            CloseReason::InvalidUtf8
        }
        WsError::Io(e) if e.get_ref().is_some_and(|inner| inner.is::<InboundError>()) => {
            match e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<InboundError>())
            {
                Some(InboundError::TooBig) => CloseReason::MessageTooBig,
                Some(InboundError::InvalidData) => CloseReason::InvalidCompressedData,
                _ => CloseReason::ProtocolError,
            }
        }
        WsError::Io(e)
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::BrokenPipe
            ) =>
        {
            CloseReason::ClientGone
        }
        WsError::Io(_) => CloseReason::IoError,
        _ => CloseReason::ProtocolError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_are_listed_in_declaration_order() {
        for (place, reason) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), place, "{reason}");
        }
    }

    #[test]
    fn deflate_leaves_an_idle_websocket_in_the_same_allocation() {
        // Before permessage-deflate, a WebSocketState was 384 bytes. The agreement fits in
        // its padding and the transform is boxed (only for connections that negotiated it),
        // so it grows by one pointer, which glibc serves from the same 400-byte chunk.
        let size = std::mem::size_of::<WebSocketState>();
        assert!(size <= 392, "{size}");
        assert!(std::mem::size_of::<Connection>() <= 248);
        // glibc's chunk for a request of n bytes on 64-bit targets: n plus an 8-byte header,
        // rounded up to 16 (at least 32). (Asking malloc_usable_size is not reliable: a
        // chunk split from a free one may come out larger.)
        #[cfg(target_pointer_width = "64")]
        {
            let chunk = |n: usize| ((n + 8 + 15) & !15).max(32);
            assert_eq!(chunk(size), chunk(384), "{size}");
        }
    }

    #[test]
    fn inbound_errors_map_to_their_close_codes() {
        let code = |e: InboundError| {
            let error = WsError::Io(io::Error::new(io::ErrorKind::InvalidData, e));
            classify(&error).close_frame().map(|f| u16::from(f.code))
        };
        assert_eq!(code(InboundError::TooBig), Some(1009));
        assert_eq!(code(InboundError::InvalidData), Some(1007));
        assert_eq!(code(InboundError::Protocol), Some(1002));
    }

    #[test]
    fn close_codes_follow_rfc_6455() {
        let code = |r: CloseReason| r.close_frame().map(|f| u16::from(f.code));
        assert_eq!(code(CloseReason::ProtocolError), Some(1002));
        assert_eq!(code(CloseReason::InvalidUtf8), Some(1007));
        assert_eq!(code(CloseReason::MessageTooBig), Some(1009));
        assert_eq!(code(CloseReason::SlowConsumer), Some(1008));
        assert_eq!(code(CloseReason::RateLimited), Some(1008));
        assert_eq!(code(CloseReason::Shutdown), Some(1001));
        assert_eq!(code(CloseReason::IdleTimeout), Some(1001));
        assert_eq!(code(CloseReason::ClientGone), None);
    }
}
