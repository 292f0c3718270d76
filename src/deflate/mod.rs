//! permessage-deflate (RFC 7692), socket-free: negotiation, compression once per message,
//! bounded inflation, and the inbound frame transform that sits in front of tungstenite.
//!
//! With no context takeover on either side (we always answer both parameters), every
//! message is a DEFLATE stream of its own. So a room message is compressed once and the same
//! frame goes to every member that negotiated deflate, one [`Inflater`] and one
//! [`Compressor`] serve the whole process, and an idle connection holds no compression state.
//!
//! # Pieces
//! - [`negotiate`]: the `Sec-WebSocket-Extensions` values of an upgrade request ->
//!   [`Negotiation`]: `Accepted(Agreement)` (answer [`Agreement::response_header`], keep the
//!   two-byte agreement on the connection), `Declined` (log the reason at debug) or
//!   `NotOffered`.
//! - [`Compressor::compress_frame`]: a room message -> the RSV1 frame shared by members with
//!   deflate, or None (not smaller: everyone gets the plain frame). A member whose agreement
//!   has `server_max_window_bits` below 15 gets it only when
//!   [`Agreement::may_compress`]`(payload.len())` says so, else the plain frame.
//! - [`Inflater`]: one per loop, built with `--max-message-size`; it counts for `/metrics`.
//! - [`InboundInflate`]: one per WebSocket connection, built with the negotiation outcome.
//!
//! # Intended wiring (in `connection`'s stream wrapper)
//!
//! The chain of inbound stages is: loop-wide read buffer -> `InboundInflate` -> UTF-8 guard
//! -> tungstenite. The transform goes first so that the guard checks inflated text (it
//! sees ordinary masked frames) and tungstenite never sees RSV1 on a message we accepted.
//! `ReadScratch::read_into` becomes roughly:
//!
//! ```ignore
//! if guard.failed() { return Err(io::Error::new(InvalidData, InvalidUtf8Early)); }
//! loop {
//!     if self.start == self.end && !deflate.has_pending() {
//!         if self.fill(socket)? == 0 { return Ok(0); } // end of stream
//!     }
//!     let pulled = deflate
//!         .pull(&self.buffer[self.start..self.end], out, inflater)
//!         .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
//!     self.start += pulled.consumed;
//!     if pulled.produced == 0 { continue; } // all taken in: read on (not end of stream)
//!     let n = guard.scan(&out[..pulled.produced]);
//!     if n == 0 && guard.failed() { return Err(/* InvalidUtf8Early */); }
//!     return Ok(n);
//! }
//! ```
//!
//! and `classify` maps an `io::Error` whose inner error is an [`InboundError`] to a close
//! reason by [`InboundError::close_code`]: 1009 (`MessageTooBig`), 1007 (a new reason, e.g.
//! `InvalidCompressedData`: Node `ws` uses 1007 for data that does not inflate; RFC 7692 8
//! only says to fail the connection), 1002 (`ProtocolError`). The `Inflater` lives beside
//! `ReadScratch` (both loop-wide) and is lent to the stream wrapper for the read. Bytes the
//! guard withholds after the transform produced them are lost on purpose: the guard has
//! failed and every later read fails.
//!
//! Memory (tests/deflate_memory.rs counts it): the compressor ~312 KiB of heap and the
//! inflater ~10 KiB, once per process; a connection's `InboundInflate` is 48 bytes inline and
//! nothing on the heap while idle. [`InboundInflate::held_bytes`] says what it holds while a
//! compressed message is in flight (at most the compressed bound, then the inflated frame until
//! tungstenite has copied it), for the memory ceiling.

mod codec;
mod inbound;
mod negotiate;

pub use codec::{Compressor, DEFAULT_LEVEL, InflateError, Inflater, RSV1, TRAILER};
pub use inbound::{InboundError, InboundInflate, Pulled};
pub use negotiate::{
    Agreement, Declined, MAX_WINDOW_BITS, MIN_WINDOW_BITS, Negotiation, negotiate,
};
