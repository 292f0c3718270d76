//! The TLS listener fed arbitrary bytes, against the real server: never panic, never stall,
//! never stop serving.
//!
//! The server starts once, in a thread: plain HTTP on 127.0.0.1:0 and TLS on a second port
//! (`--tls-port`), with the fixed test certificate in fuzz/tls/ (self-signed, for localhost;
//! its key is for this target only). Each input opens a TCP connection to the TLS port,
//! writes, shuts the write side, reads until end of stream, then asks /healthz on the plain
//! port. The first byte picks what the bytes meet:
//! - 0: the bytes as they are (record layer, ClientHello parsing, plain HTTP, garbage);
//! - 1: a real ClientHello (rustls client), then the bytes raw (the second flight, alerts,
//!   records out of order, in the middle of the handshake);
//! - 2: a complete handshake, then the bytes as application data through the session
//!   (HTTP and WebSocket over TLS, close_notify, what follows it).
//!
//! A panic in the server thread aborts the process (libfuzzer-sys installs an aborting panic
//! hook), and the loop returning at all aborts too. A server that stops answering fails the
//! input by timing out.
#![no_main]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use wschat::config::Config;

/// Far above anything a healthy server takes on loopback: hitting it means a stall.
const STALL: Duration = Duration::from_secs(10);

const CERT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tls/cert.pem");
const KEY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tls/key.pem");

/// (plain address, TLS address).
fn server() -> (SocketAddr, SocketAddr) {
    static ADDRS: OnceLock<(SocketAddr, SocketAddr)> = OnceLock::new();
    *ADDRS.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let config = Config {
                bind: "127.0.0.1".parse().unwrap(),
                port: 0,
                tls_port: Some(0),
                tls_cert: Some(CERT.into()),
                tls_key: Some(KEY.into()),
                systemd: false,
                stats_interval: None,
                echo: true,
                max_message_size: 1024,
                max_outbound: 4096,
                max_outbound_total: 16384,
                handshake_timeout: Duration::from_secs(2),
                ..Config::default()
            };
            let server = wschat::Server::bind(config).expect("server binds");
            let tls = server.tls_addr().expect("a TLS listener");
            tx.send((server.local_addr(), tls)).unwrap();
            let outcome = server.run();
            eprintln!("the server loop returned: {:?}", outcome.err());
            std::process::abort();
        });
        rx.recv().expect("server started")
    })
}

fn client_config() -> Arc<ClientConfig> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_file(CERT).expect("the test certificate"))
                .expect("a usable root");
            #[allow(deprecated)]
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            Arc::new(
                ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            )
        })
        .clone()
}

fn client() -> ClientConnection {
    ClientConnection::new(client_config(), ServerName::try_from("localhost").unwrap()).unwrap()
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
}

fuzz_target!(|data: &[u8]| {
    let (plain, tls) = server();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut stream = connect(tls);
    match mode % 3 {
        0 => {
            // The server may alert and close before reading everything: a failed write is
            // fine.
            let _ = stream.write_all(rest);
        }
        1 => {
            let mut conn = client();
            let mut hello = Vec::new();
            while conn.wants_write() {
                conn.write_tls(&mut hello).unwrap();
            }
            hello.extend_from_slice(rest);
            let _ = stream.write_all(&hello);
        }
        _ => {
            let mut conn = client();
            while conn.is_handshaking() {
                // The server under test completes every honest handshake.
                conn.complete_io(&mut stream).expect("the TLS handshake");
            }
            let _ = conn.writer().write_all(rest);
            while conn.wants_write() {
                if conn.write_tls(&mut stream).is_err() {
                    break;
                }
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
    read_to_end(&mut stream);
    assert_healthy(plain);
});
