//! Shared by every integration test. Two ways to run the server, one way to talk to it:
//!
//! - [`server`]: the library's server in a thread of the test process on 127.0.0.1:0
//!   ([`start`], [`start_default`]), stopped through its handle.
//! - [`binary`]: the real `wschat` binary as a child process ([`daemon`], [`run_binary`]),
//!   started through `$WSCHAT_TEST_RUNNER` when that is set (an emulator such as
//!   `qemu-aarch64`), stopped with a signal.
//! - [`endpoint`]: what a test does with either: a tungstenite client, a raw TCP socket, a raw
//!   WebSocket, an HTTP request, one metric. [`websocket`] reads and writes frames by hand.
//!
//! Time: every wait and read timeout goes through [`scaled`], so `WSCHAT_TEST_TIME_SCALE=10`
//! gives a slow emulated target ten times as long without skipping any test. Server-side
//! settings a test asserts on exactly stay as they are, unless the test scales both.
#![allow(dead_code)]

pub mod binary;
pub mod endpoint;
pub mod redis;
pub mod server;
pub mod websocket;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

// Every test file takes what it needs with `use common::*`; none needs all of it.
#[allow(unused_imports)]
pub use {binary::*, endpoint::*, server::*, websocket::*, wschat::Config};

/// How long a test waits for anything before it fails, before scaling: see [`timeout`].
const BASE_TIMEOUT: Duration = Duration::from_secs(5);

/// The factor from `WSCHAT_TEST_TIME_SCALE` (default 1), read once.
pub fn time_scale() -> f64 {
    static SCALE: OnceLock<f64> = OnceLock::new();
    *SCALE.get_or_init(|| match std::env::var("WSCHAT_TEST_TIME_SCALE") {
        Err(_) => 1.0,
        Ok(text) => match text.trim().parse::<f64>() {
            // A typo must not quietly run the tests at the wrong speed.
            Ok(scale) if scale.is_finite() && scale > 0.0 => scale,
            _ => panic!("WSCHAT_TEST_TIME_SCALE={text:?} is not a positive number"),
        },
    })
}

/// `wait` stretched by `WSCHAT_TEST_TIME_SCALE`: for the waits, read timeouts and upper
/// bounds of timing-based tests, which an emulated target needs longer for.
pub fn scaled(wait: Duration) -> Duration {
    wait.mul_f64(time_scale())
}

/// How long a test waits for anything before it fails (5 s, scaled).
pub fn timeout() -> Duration {
    scaled(BASE_TIMEOUT)
}

/// Polls `condition` until it holds or [`timeout`] passes.
pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < timeout(), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until the server counts `n` open WebSockets (joins are asynchronous to the client).
pub fn wait_for_members(server: &impl Endpoint, n: usize) {
    eventually(&format!("{n} websockets"), || {
        server.metric("wschat_websockets_open") as usize == n
    });
}
