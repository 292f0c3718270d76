//! TLS for the tests (feature `tls`): certificates made at test time with the `openssl` command
//! into a temporary directory (a test CA, server certificates for localhost and 127.0.0.1 with
//! ECDSA P-256, Ed25519 or RSA keys), and a real TLS client: rustls's `ClientConnection` in a
//! `StreamOwned` over a blocking `TcpStream`, which tungstenite's client speaks `wss://` over
//! and the HTTP helpers ([`super::read_reply`], [`super::keep_alive_get`]) read from.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use tungstenite::WebSocket;

use super::{HttpReply, OnSocket, read_reply, sample_value, timeout};

/// A TLS client stream: what [`TlsTarget::connect`] returns.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;
/// A `wss://` client.
pub type TlsClient = WebSocket<TlsStream>;

impl OnSocket for TlsStream {
    fn socket(&self) -> Option<&TcpStream> {
        Some(&self.sock)
    }
}

/// The kinds of server key the issue names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    EcdsaP256,
    Ed25519,
    /// RSA 2048, written in the traditional PKCS#1 form ("RSA PRIVATE KEY"), so the PKCS#1
    /// path of the key loader is covered too (the others are PKCS#8).
    Rsa,
}

/// A server certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct Pair {
    /// The certificate chain: the leaf, then the CA (a full chain, as certbot writes it).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The leaf certificate in DER, to recognise it in a handshake.
    pub leaf: Vec<u8>,
}

/// A temporary directory with a test CA; issues server pairs signed by it. Removed on drop.
pub struct TestPki {
    pub dir: PathBuf,
    /// The CA certificate (PEM), what clients trust.
    pub ca: PathBuf,
    serial: AtomicU32,
}

/// Runs `openssl` with `args` in `dir`; panics with its stderr when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command is installed (the TLS tests make their certificates)");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl TestPki {
    /// A new directory and CA (ECDSA P-256, valid two days).
    pub fn new() -> TestPki {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wschat-tls-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        openssl(
            &dir,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                "ca.key",
            ],
        );
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                "ca.key",
                "-subj",
                "/CN=wschat test CA",
                "-days",
                "2",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-out",
                "ca.pem",
            ],
        );
        TestPki {
            ca: dir.join("ca.pem"),
            dir,
            serial: AtomicU32::new(1),
        }
    }

    /// A server certificate for `localhost` and `127.0.0.1` with a new key of `kind`, signed
    /// by the CA; files named `name.pem` and `name.key`.
    pub fn issue(&self, name: &str, kind: KeyKind) -> Pair {
        let key = format!("{name}.key");
        match kind {
            KeyKind::EcdsaP256 => openssl(
                &self.dir,
                &[
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-out",
                    &key,
                ],
            ),
            KeyKind::Ed25519 => openssl(
                &self.dir,
                &["genpkey", "-algorithm", "ED25519", "-out", &key],
            ),
            KeyKind::Rsa => {
                openssl(
                    &self.dir,
                    &[
                        "genpkey",
                        "-algorithm",
                        "RSA",
                        "-pkeyopt",
                        "rsa_keygen_bits:2048",
                        "-out",
                        &key,
                    ],
                );
                openssl(
                    &self.dir,
                    &["rsa", "-in", &key, "-traditional", "-out", &key],
                );
            }
        }
        let csr = format!("{name}.csr");
        let ext = format!("{name}.ext");
        let leaf = format!("{name}.leaf.pem");
        openssl(
            &self.dir,
            &[
                "req",
                "-new",
                "-key",
                &key,
                "-subj",
                "/CN=localhost",
                "-out",
                &csr,
            ],
        );
        std::fs::write(
            self.dir.join(&ext),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        let serial = self.serial.fetch_add(1, Ordering::Relaxed).to_string();
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                &serial,
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &leaf,
            ],
        );
        let leaf_pem = std::fs::read(self.dir.join(&leaf)).unwrap();
        let ca_pem = std::fs::read(&self.ca).unwrap();
        let cert = self.dir.join(format!("{name}.pem"));
        std::fs::write(&cert, [leaf_pem.as_slice(), ca_pem.as_slice()].concat()).unwrap();
        let leaf_der = CertificateDer::from_pem_slice(&leaf_pem)
            .expect("openssl wrote a certificate")
            .to_vec();
        Pair {
            cert,
            key: self.dir.join(key),
            leaf: leaf_der,
        }
    }

    /// A client's settings that trust this CA only; ALPN `http/1.1` as browsers offer it.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client_config_for(&[&rustls::version::TLS13, &rustls::version::TLS12])
    }

    /// Like [`Self::client_config`], offering only `versions`.
    pub fn client_config_for(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<ClientConfig> {
        #[allow(deprecated)]
        let provider = rustls::crypto::ring::default_provider();
        self.client_config_with(versions, provider.cipher_suites)
    }

    /// Like [`Self::client_config_for`], offering only `suites` (rustls's ring ones).
    pub fn client_config_with(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
        suites: Vec<rustls::SupportedCipherSuite>,
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&self.ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::CryptoProvider {
            cipher_suites: suites,
            ..rustls::crypto::ring::default_provider()
        });
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// Where a test talks TLS to: `addr`, trusting this CA.
    pub fn target(&self, addr: SocketAddr) -> TlsTarget {
        TlsTarget {
            addr,
            config: self.client_config(),
        }
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TLS address and the client settings to reach it: what a test does with a TLS port.
#[derive(Clone)]
pub struct TlsTarget {
    pub addr: SocketAddr,
    pub config: Arc<ClientConfig>,
}

impl TlsTarget {
    /// A TCP connection with read and write timeouts, TLS not started.
    pub fn tcp(&self) -> TcpStream {
        let socket = TcpStream::connect(self.addr).expect("connect");
        socket.set_read_timeout(Some(timeout())).unwrap();
        socket.set_write_timeout(Some(timeout())).unwrap();
        socket
    }

    /// A TLS connection to `localhost` with the handshake done (panics if it fails).
    pub fn connect(&self) -> TlsStream {
        let mut stream = self.try_connect().expect("TLS handshake");
        // The handshake has finished once rustls has nothing more to exchange first.
        assert!(!stream.conn.is_handshaking());
        let _ = stream.flush();
        stream
    }

    /// A TLS connection with the handshake attempted: the error if it failed.
    pub fn try_connect(&self) -> std::io::Result<TlsStream> {
        self.handshake_on(self.tcp())
    }

    /// TLS over a socket already connected to [`Self::addr`].
    pub fn handshake_on(&self, socket: TcpStream) -> std::io::Result<TlsStream> {
        let name = ServerName::try_from("localhost").unwrap();
        let conn = ClientConnection::new(self.config.clone(), name).unwrap();
        let mut stream = StreamOwned::new(conn, socket);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(stream)
    }

    /// A `wss://` client in `path`'s room (TLS to `localhost`, read timeouts set).
    pub fn client(&self, path: &str) -> TlsClient {
        self.client_on(self.tcp(), path)
    }

    /// A `wss://` client over a socket already connected to [`Self::addr`].
    pub fn client_on(&self, socket: TcpStream, path: &str) -> TlsClient {
        let stream = self.handshake_on(socket).expect("TLS handshake");
        let url = format!("wss://localhost:{}{}", self.addr.port(), path);
        let (client, response) = tungstenite::client(url, stream).expect("upgrade succeeds");
        assert_eq!(response.status(), 101);
        client
    }

    /// Sends one HTTP request over a new TLS connection and reads one response.
    pub fn http(&self, request: &str) -> HttpReply {
        let mut stream = self.connect();
        stream.write_all(request.as_bytes()).unwrap();
        read_reply(&mut stream)
    }

    /// A GET with `Connection: close`.
    pub fn get(&self, path: &str) -> HttpReply {
        self.http(&format!(
            "GET {path} HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n",
            self.addr.port()
        ))
    }

    /// One metric's value from `/metrics` over TLS.
    pub fn metric(&self, sample: &str) -> f64 {
        let page = self.get("/metrics").body_text();
        sample_value(&page, sample)
            .unwrap_or_else(|| panic!("no sample {sample} in /metrics:\n{page}"))
    }
}

/// The leaf certificate the server presented (DER).
pub fn presented_leaf(stream: &TlsStream) -> Vec<u8> {
    stream
        .conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("the server presented a certificate")
        .to_vec()
}

/// A real ClientHello (TLS 1.3 and 1.2, for `localhost`) as the bytes a client sends first.
pub fn client_hello(config: Arc<ClientConfig>) -> Vec<u8> {
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = ClientConnection::new(config, name).unwrap();
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    hello
}

/// What the server sent after a bad first flight (an alert starts with 0x15) until it ended
/// the connection; panics if it kept the connection open past the socket's read timeout.
pub fn answer_to(socket: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match socket.read(&mut buffer) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buffer[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("the server kept the connection open (received {got:02x?})")
            }
            // A reset after the alert is an end too.
            Err(_) => return got,
        }
    }
}
