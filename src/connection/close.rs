//! Why a connection ended: one reason per connection, logged at close, counted in `/metrics`
//! by its label, and mapped to the close code the server sends (RFC 6455 7.4.1).

use std::fmt;

use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::frame::Utf8Bytes;
use tungstenite::protocol::frame::coding::CloseCode;

/// Why a connection ended: logged at close and counted in `/metrics` by its label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client finished the closing handshake.
    ClientClosed,
    /// The client's TCP connection ended without a Close frame (a closed browser tab).
    ClientGone,
    /// The client broke RFC 6455 (close 1002).
    ProtocolError,
    /// A text message was not UTF-8 (close 1007).
    InvalidUtf8,
    /// A compressed message did not inflate (close 1007, as Node `ws` answers).
    InvalidCompressedData,
    /// A message or frame over the size limit (close 1009).
    MessageTooBig,
    /// The outbound budget was exceeded under the close policy (close 1008).
    SlowConsumer,
    /// Over `--max-rate` under the close policy (close 1008).
    RateLimited,
    /// Nothing heard for `--idle-timeout` (close 1001).
    IdleTimeout,
    /// The request head did not arrive within `--handshake-timeout`.
    HandshakeTimeout,
    /// A plain HTTP exchange ended (response sent, no keep-alive).
    HttpDone,
    /// An HTTP request was refused with an error status.
    HttpRefused,
    /// The server is shutting down (close 1001).
    Shutdown,
    /// The peer did not answer our Close in time.
    CloseTimeout,
    /// A socket error (reset, broken pipe, ...).
    IoError,
    /// Near the memory ceiling, it held partial input past the stall limit (close 1013).
    MemoryPressure,
}

impl CloseReason {
    /// Every reason, for metrics that list them all.
    pub const ALL: [CloseReason; 16] = [
        CloseReason::ClientClosed,
        CloseReason::ClientGone,
        CloseReason::ProtocolError,
        CloseReason::InvalidUtf8,
        CloseReason::InvalidCompressedData,
        CloseReason::MessageTooBig,
        CloseReason::SlowConsumer,
        CloseReason::RateLimited,
        CloseReason::IdleTimeout,
        CloseReason::HandshakeTimeout,
        CloseReason::HttpDone,
        CloseReason::HttpRefused,
        CloseReason::Shutdown,
        CloseReason::CloseTimeout,
        CloseReason::IoError,
        CloseReason::MemoryPressure,
    ];

    pub fn label(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client_closed",
            CloseReason::ClientGone => "client_gone",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::InvalidUtf8 => "invalid_utf8",
            CloseReason::InvalidCompressedData => "invalid_compressed_data",
            CloseReason::MessageTooBig => "message_too_big",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::RateLimited => "rate_limited",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::HttpDone => "http_done",
            CloseReason::HttpRefused => "http_refused",
            CloseReason::Shutdown => "shutdown",
            CloseReason::CloseTimeout => "close_timeout",
            CloseReason::IoError => "io_error",
            CloseReason::MemoryPressure => "memory_pressure",
        }
    }

    /// Its place in [`CloseReason::ALL`] (which lists them in declaration order).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The close frame the server sends for this reason, if it sends one.
    pub fn close_frame(self) -> Option<CloseFrame> {
        let (code, reason) = match self {
            CloseReason::ProtocolError => (CloseCode::Protocol, "protocol error"),
            CloseReason::InvalidUtf8 => (CloseCode::Invalid, "invalid UTF-8"),
            CloseReason::InvalidCompressedData => (CloseCode::Invalid, "invalid compressed data"),
            CloseReason::MessageTooBig => (CloseCode::Size, "message too big"),
            CloseReason::SlowConsumer => (CloseCode::Policy, "slow consumer"),
            CloseReason::RateLimited => (CloseCode::Policy, "rate limit"),
            CloseReason::IdleTimeout => (CloseCode::Away, "idle timeout"),
            CloseReason::Shutdown => (CloseCode::Away, "server shutting down"),
            CloseReason::MemoryPressure => (CloseCode::Again, "try again later"),
            _ => return None,
        };
        Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        })
    }

    /// Reasons that are the client's ordinary way of leaving, logged quietly.
    pub fn is_ordinary(self) -> bool {
        matches!(
            self,
            CloseReason::ClientClosed | CloseReason::ClientGone | CloseReason::HttpDone
        )
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}
