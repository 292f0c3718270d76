//! A connection fed arbitrary bytes, against the real server: never panic, never stall.
//!
//! The server starts once, in a thread, on 127.0.0.1:0. Each input opens a TCP connection,
//! writes the input, shuts the write side, reads until end of stream, then asks /healthz.
//! The first byte picks the phase under test:
//! - 0: the bytes as they are (the HTTP phase: heads, pipelining, garbage);
//! - 1: a valid upgrade request, then the bytes raw (WebSocket framing, unmasked frames);
//! - 2: a valid upgrade request, then the bytes cut into masked client frames
//!   (`[first byte, length, payload...]` each), so messages, fragments and control frames
//!   reach the relay, the history and the close handshake.
//!
//! A panic in the server thread aborts the process (libfuzzer-sys installs an aborting panic
//! hook), and the loop returning at all aborts too. A server that stops answering fails the
//! input by timing out.
#![no_main]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use wschat::config::{Config, OverRate, RateLimit, SlowClientPolicy};

/// Far above anything a healthy server takes on loopback: hitting it means a stall.
const STALL: Duration = Duration::from_secs(10);

fn server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let config = Config {
                bind: "127.0.0.1".parse().unwrap(),
                port: 0,
                systemd: false,
                stats_interval: None,
                echo: true,
                history: 4,
                // Within the budget, as the server requires: 4 messages of up to 1 KiB.
                history_bytes: 2048,
                // Small limits so inputs reach the size, budget and rate paths.
                max_message_size: 1024,
                max_outbound: 4096,
                max_outbound_total: 16384,
                slow_client: SlowClientPolicy::DropOldest,
                rate_limit: Some(RateLimit {
                    per_second: 1000.0,
                    burst: 64.0,
                    over: OverRate::Drop,
                }),
                handshake_timeout: Duration::from_secs(2),
                ..Config::default()
            };
            let server = wschat::Server::bind(config).expect("server binds");
            tx.send(server.local_addr()).unwrap();
            let outcome = server.run();
            eprintln!("the server loop returned: {:?}", outcome.err());
            std::process::abort();
        });
        rx.recv().expect("server started")
    })
}

const UPGRADE: &[u8] = b"GET /fuzz HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\n\r\n";

/// Cuts `data` into masked client frames: `[first byte, length, payload...]` each.
fn masked_frames(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * 2);
    while let [first, len, rest @ ..] = data {
        let take = (*len as usize).min(rest.len());
        let (payload, tail) = rest.split_at(take);
        out.push(*first);
        let len_byte = if take < 126 { take as u8 } else { 126 };
        out.push(0x80 | len_byte);
        if len_byte == 126 {
            out.extend_from_slice(&(take as u16).to_be_bytes());
        }
        let key = [0x12, 0x34, 0x56, 0x78];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        data = tail;
    }
    out
}

/// Closes with a reset so the fuzzer's many short connections leave no TIME_WAIT behind.
fn abort_connection(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads the struct passed, on a socket this function owns.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("the server accepts");
    stream.set_read_timeout(Some(STALL)).unwrap();
    stream.set_write_timeout(Some(STALL)).unwrap();
    stream
}

/// Reads until end of stream; panics if the server goes quiet without closing.
fn read_to_end(stream: &mut TcpStream) {
    let started = Instant::now();
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("the server neither answered nor closed in {STALL:?}")
            }
            // A reset is a legitimate way for the server to end a connection.
            Err(_) => return,
        }
        assert!(
            started.elapsed() < STALL,
            "the server kept talking for {STALL:?}"
        );
    }
}

fn assert_healthy(addr: SocketAddr) {
    let mut stream = connect(addr);
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("health request");
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    assert!(
        reply.starts_with(b"HTTP/1.1 200 "),
        "/healthz answered {:?}",
        String::from_utf8_lossy(&reply)
    );
    abort_connection(stream);
}

fuzz_target!(|data: &[u8]| {
    let addr = server();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = match mode % 3 {
        0 => rest.to_vec(),
        1 => [UPGRADE, rest].concat(),
        _ => [UPGRADE, &masked_frames(rest)].concat(),
    };
    let mut stream = connect(addr);
    // The server may refuse and close before reading everything: a failed write is fine.
    let _ = stream.write_all(&bytes);
    let _ = stream.shutdown(Shutdown::Write);
    read_to_end(&mut stream);
    abort_connection(stream);
    assert_healthy(addr);
});
