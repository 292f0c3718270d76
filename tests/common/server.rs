//! The server in-process: the library's `Server` bound on 127.0.0.1:0 and run in a thread.

use std::net::SocketAddr;
use std::thread::JoinHandle;

use wschat::{Config, Server, ServerError, ServerHandle};

use super::Endpoint;

/// A server running in a thread; stopped (gracefully) on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    handle: ServerHandle,
    thread: Option<JoinHandle<Result<(), ServerError>>>,
}

/// Settings for tests: loopback, a free port, no systemd, no stats line.
pub fn config() -> Config {
    Config {
        bind: [127, 0, 0, 1].into(),
        port: 0,
        systemd: false,
        stats_interval: None,
        ..Config::default()
    }
}

pub fn start(config: Config) -> TestServer {
    let server = Server::bind(config).expect("server binds");
    let addr = server.local_addr();
    let handle = server.handle();
    let thread = std::thread::spawn(move || server.run());
    TestServer {
        addr,
        handle,
        thread: Some(thread),
    }
}

pub fn start_default() -> TestServer {
    start(config())
}

impl TestServer {
    /// Begins the graceful shutdown (Close 1001 to every client) without waiting for it.
    pub fn begin_shutdown(&self) {
        self.handle.shutdown();
    }

    /// Shuts down and waits for the loop to return.
    pub fn stop(mut self) -> Result<(), ServerError> {
        self.handle.shutdown();
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("server thread did not panic")
    }
}

impl Endpoint for TestServer {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.handle.shutdown();
            let _ = thread.join();
        }
    }
}
