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
//! # Wiring
//!
//! - `http::parse_head` keeps the `Sec-WebSocket-Extensions` lines; `Server::upgrade`
//!   negotiates (only with `--compression on`), answers in the 101 and keeps the
//!   [`Agreement`] in the connection's `WebSocketState`; the room counts its deflate members.
//! - In: the chain of inbound stages is loop-wide read buffer -> `InboundInflate` -> UTF-8
//!   guard -> tungstenite (`ReadScratch::read_inflating` in `connection`). The transform goes
//!   first so that the guard checks inflated text (it sees ordinary masked frames) and
//!   tungstenite never sees RSV1 on a message we accepted. The [`Inflater`] lives in
//!   `ReadScratch` (both loop-wide). `classify` maps an [`InboundError`] to a close reason:
//!   1009 (`MessageTooBig`), 1007 (`InvalidCompressedData`: Node `ws` uses 1007 for data that
//!   does not inflate; RFC 7692 8 only says to fail the connection), 1002 (`ProtocolError`).
//!   Bytes that came with the request head go through the same stages at the upgrade.
//! - Out: `fan_out` compresses a message of at least `--compression-min` bytes once, at the
//!   first member that negotiated deflate and [`Agreement::may_compress`] it, and queues that
//!   frame to every such member; the others (and history) get the plain frame.
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
