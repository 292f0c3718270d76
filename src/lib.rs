//! wschat: a single-threaded WebSocket chat-room relay.
//!
//! The binary (`main.rs`) parses the command line into a [`Config`], binds a [`Server`] and
//! runs it. Tests and benches use the same surface: bind on port 0, take a [`ServerHandle`],
//! run the server in a thread, stop it through the handle. Only what they use is public, so
//! the compiler reports code that nothing uses.

mod assets;
pub mod cli;
pub mod config;
mod connection;
// permessage-deflate building blocks (socket-free); public so tests/deflate_memory.rs can
// measure their heap with a counting allocator.
pub mod deflate;
/// Public for the fuzz targets, which drive the parser and router directly.
pub mod http;
mod listen;
/// Public for the binary, which installs its counting allocator.
pub mod memory;
mod message;
mod outbound;
/// Public for its documentation and the integration tests' decoding of frames.
pub mod protocol_v1;
mod rate;
pub mod redis;
mod resolve;
mod room;
mod server;
mod stats;
mod systemd;
#[cfg(feature = "tls")]
mod tls;

pub use config::Config;
pub use server::{Server, ServerError, ServerHandle};
