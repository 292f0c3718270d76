//! wschat: a single-threaded WebSocket chat-room relay.
//!
//! The binary (`main.rs`) parses the command line into a [`Config`], binds a [`Server`] and
//! runs it. Tests and benches use the same surface: bind on port 0, take a [`ServerHandle`],
//! run the server in a thread, stop it through the handle.

pub mod assets;
pub mod cli;
pub mod config;
pub mod connection;
pub mod http;
mod listen;
pub mod message;
pub mod outbound;
pub mod redis;
mod resolve;
pub mod room;
pub mod server;
pub mod stats;
pub mod systemd;

pub use config::Config;
pub use server::{Server, ServerError, ServerHandle};
