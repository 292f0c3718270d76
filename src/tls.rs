//! TLS termination with rustls (feature `tls`): loading the certificate and key, and one
//! session per TLS connection driven by hand on the loop's non-blocking sockets.
//!
//! rustls's *unbuffered* API is used so that wschat, not rustls, owns the buffers: ciphertext
//! is read into the loop's one cipher buffer and decrypted from there; only an incomplete
//! record (between reads) or ciphertext the socket refused (between writes) is kept per
//! connection, so an idle TLS connection holds no buffer at all. Measured on this machine:
//! rustls's buffered `ServerConnection` holds about 8.5 KB per idle session (a 4 KiB read
//! buffer it never gives back among it), the unbuffered one about 3.4 KB with ring's record
//! keys and about 2.4 KB with the compact ones of `record_keys`.

mod record_keys;

use std::cell::RefCell;
use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, InsufficientSizeError};

/// The largest TLS record on the wire: 16 KiB of plaintext plus header, padding and tag.
pub const MAX_RECORD: usize = 16 * 1024 + 256;
/// The loop's cipher buffer: one read of ciphertext plus an incomplete record carried over.
pub const CIPHER_BUFFER_SIZE: usize = 64 * 1024 + MAX_RECORD;
/// rustls's state for one established session, struct and heap (measured with heaptrack,
/// 2026-12-07: the boxed session 1,168 bytes, rustls's handshake deframer 640, its traffic
/// state 224, two empty queues 96 each, record keys 56 each (`record_keys`), the SNI name).
const SESSION_STATE_BYTES: usize = 2400;
/// Plaintext encrypted per record when sending.
const PLAINTEXT_PER_RECORD: usize = 16 * 1024;
/// Ciphertext prepared per socket write when sending (several records, one `write`).
const SEND_CHUNK: usize = 4 * MAX_RECORD;

thread_local! {
    /// The loop's buffers for ciphertext: records read and being decrypted, records being
    /// sent. One loop runs per thread, and a TLS call never re-enters another, so one pair per
    /// thread serves every session in turn.
    static CIPHER: RefCell<(Vec<u8>, Vec<u8>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Why the certificate and key could not be used.
#[derive(Debug)]
pub enum TlsError {
    /// The certificate file could not be read or holds no certificate.
    Certificate(PathBuf, String),
    /// The key file could not be read or holds no private key.
    Key(PathBuf, String),
    /// rustls refused the pair (for example a key that does not match the certificate).
    Rejected(rustls::Error),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Certificate(path, why) => {
                write!(f, "TLS certificate {}: {why}", path.display())
            }
            TlsError::Key(path, why) => write!(f, "TLS key {}: {why}", path.display()),
            TlsError::Rejected(e) => write!(f, "TLS certificate and key not usable: {e}"),
        }
    }
}

impl std::error::Error for TlsError {}

/// Reads a PEM certificate chain and private key and builds the server's TLS settings: TLS 1.3
/// and 1.2 only, ALPN `http/1.1`, the `ring` provider. Called at start and on SIGHUP; a new
/// `Arc` is used by new handshakes only, sessions already open keep theirs.
pub fn load_server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| TlsError::Certificate(cert.to_path_buf(), pem_error(e)))?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Certificate(cert.to_path_buf(), pem_error(e)))?;
    if chain.is_empty() {
        return Err(TlsError::Certificate(
            cert.to_path_buf(),
            "no certificate in the file".into(),
        ));
    }
    let private_key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::Key(key.to_path_buf(), pem_error(e)))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Rejected)?
        .with_no_client_auth()
        // Checks that the key matches the certificate.
        .with_single_cert(chain, private_key)
        .map_err(TlsError::Rejected)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Resumption tickets would be one more secret to rotate; a chat page connects once.
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The cryptography wschat's TLS uses (server and `rediss://` alike): ring, with the cipher
/// suites and key-exchange groups every current browser and Redis client offers. Naming fewer
/// than ring's full set lets the linker drop the rest (AES-256 and P-384 key exchange): the
/// binary has a size budget.
///
/// `ring` is the choice: it builds with only a C compiler, also across to ARM. rustls
/// deprecates it for lacking post-quantum key exchange (aws-lc-rs has it, at the price of
/// cmake and about 1.5 MB); classical ECDHE is what browsers fall back to.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::{cipher_suite, kx_group};
    #[allow(deprecated)]
    let base = rustls::crypto::ring::default_provider();
    Arc::new(rustls::crypto::CryptoProvider {
        // The same suites with record keys kept as bytes (see `record_keys`).
        cipher_suites: record_keys::compact(&[
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ]),
        kx_groups: vec![kx_group::X25519, kx_group::SECP256R1],
        ..base
    })
}

fn pem_error(error: rustls::pki_types::pem::Error) -> String {
    match error {
        rustls::pki_types::pem::Error::Io(e) => e.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM item of the right kind".into(),
        other => format!("{other:?}"),
    }
}

/// One TLS connection's session.
pub struct TlsSession {
    conn: UnbufferedServerConnection,
    /// Bytes held between calls; boxed, and only while one of its buffers holds any: an idle
    /// session pays one pointer for them instead of three empty `Vec`s (64 bytes).
    held: Option<Box<Held>>,
    /// The peer sent close_notify: reads report the end of the stream.
    peer_closed: bool,
    /// The session failed (an alert was sent): reads report an error.
    failed: bool,
    /// Our close_notify is queued.
    close_sent: bool,
}

/// A session's bytes between calls (see `TlsSession::with_held`).
#[derive(Default)]
struct Held {
    /// Ciphertext of an incomplete record, carried to the next read.
    incoming: Vec<u8>,
    /// Ciphertext the socket has not taken yet. Empty when the socket keeps up.
    outgoing: Vec<u8>,
    /// Plaintext decrypted beyond what the last reader could take.
    plaintext: Vec<u8>,
}

impl Held {
    fn is_empty(&self) -> bool {
        self.incoming.is_empty() && self.outgoing.is_empty() && self.plaintext.is_empty()
    }
}

/// What to do after one state of the session was handled.
enum Step {
    /// Call `process_tls_records` again.
    Again,
    /// Nothing more can happen until more bytes arrive or the caller acts.
    Wait,
}

impl TlsSession {
    pub fn new(config: Arc<ServerConfig>) -> Result<Self, rustls::Error> {
        Ok(TlsSession {
            conn: UnbufferedServerConnection::new(config)?,
            held: None,
            peer_closed: false,
            failed: false,
            close_sent: false,
        })
    }

    /// Memory this session holds: rustls's own state (measured: about 2.4 KB per established
    /// session, struct and heap) and its buffers.
    pub fn held_bytes(&self) -> usize {
        SESSION_STATE_BYTES
            + self.held.as_ref().map_or(0, |held| {
                size_of::<Held>()
                    + held.incoming.capacity()
                    + held.outgoing.capacity()
                    + held.plaintext.capacity()
            })
    }

    pub fn has_pending_output(&self) -> bool {
        self.held
            .as_ref()
            .is_some_and(|held| !held.outgoing.is_empty())
    }

    /// Runs `f` with the session's held bytes, and keeps them boxed afterwards only if any are
    /// left: a call that ends with nothing held (the common case) allocates nothing.
    fn with_held<R>(&mut self, f: impl FnOnce(&mut Self, &mut Held) -> R) -> R {
        match self.held.take() {
            Some(mut held) => {
                let result = f(self, &mut held);
                if !held.is_empty() {
                    self.held = Some(held);
                }
                result
            }
            None => {
                let mut held = Held::default();
                let result = f(self, &mut held);
                if !held.is_empty() {
                    self.held = Some(Box::new(held));
                }
                result
            }
        }
    }

    /// Reads and decrypts: fills `out` with plaintext. `Ok(0)` is the end of the stream (a
    /// close_notify or a TCP end). Handshake records are answered on the way. Returns
    /// `WouldBlock` once the socket is drained and no plaintext is ready.
    pub fn read(&mut self, socket: &mut TcpStream, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        self.with_held(|this, held| {
            CIPHER.with_borrow_mut(|(cipher, _)| this.read_with(socket, out, cipher, held))
        })
    }

    fn read_with(
        &mut self,
        socket: &mut TcpStream,
        out: &mut [u8],
        cipher: &mut Vec<u8>,
        held: &mut Held,
    ) -> io::Result<usize> {
        loop {
            if !held.plaintext.is_empty() {
                let n = out.len().min(held.plaintext.len());
                out[..n].copy_from_slice(&held.plaintext[..n]);
                held.plaintext.drain(..n);
                if held.plaintext.is_empty() {
                    held.plaintext = Vec::new();
                }
                return Ok(n);
            }
            if self.failed {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS session failed",
                ));
            }
            if self.peer_closed {
                return Ok(0);
            }
            if cipher.len() < CIPHER_BUFFER_SIZE {
                cipher.resize(CIPHER_BUFFER_SIZE, 0);
            }
            let carried = held.incoming.len();
            cipher[..carried].copy_from_slice(&held.incoming);
            held.incoming = Vec::new();
            let fresh = loop {
                match socket.read(&mut cipher[carried..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        held.incoming = cipher[..carried].to_vec();
                        return Err(e);
                    }
                }
            };
            if fresh == 0 {
                // A TCP end without close_notify: the peer is gone either way.
                return Ok(0);
            }
            let produced = self.process(socket, &mut cipher[..carried + fresh], out, held)?;
            if produced > 0 {
                return Ok(produced);
            }
            // Only handshake records (or an incomplete one): read on.
        }
    }

    /// Runs the session over the ciphertext in `records`, writing plaintext to `out` (the
    /// rest to `held.plaintext`) and answering handshake flights. Keeps an incomplete record.
    fn process(
        &mut self,
        socket: &mut TcpStream,
        records: &mut [u8],
        out: &mut [u8],
        held: &mut Held,
    ) -> io::Result<usize> {
        let mut start = 0;
        let mut produced = 0;
        loop {
            let status = self.conn.process_tls_records(&mut records[start..]);
            let discard = status.discard;
            let step = match status.state {
                Err(error) => {
                    self.fail(socket, &error, &mut records[start + discard..], held);
                    return Err(io::Error::new(io::ErrorKind::InvalidData, error));
                }
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    while let Some(record) = traffic.next_record() {
                        let record =
                            record.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                        let payload = record.payload;
                        let fits = (out.len() - produced).min(payload.len());
                        out[produced..produced + fits].copy_from_slice(&payload[..fits]);
                        produced += fits;
                        held.plaintext.extend_from_slice(&payload[fits..]);
                    }
                    Step::Again
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    encode_into(&mut held.outgoing, |buf| encode.encode(buf));
                    Step::Again
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    // What the socket does not take stays in `outgoing` and goes first next
                    // time; rustls only needs to know it is on its way.
                    let _ = send(socket, &mut held.outgoing);
                    transmit.done();
                    Step::Again
                }
                Ok(ConnectionState::PeerClosed) | Ok(ConnectionState::Closed) => {
                    self.peer_closed = true;
                    Step::Wait
                }
                // Handshake waiting for the client, or established with nothing to read.
                Ok(_) => Step::Wait,
            };
            start += discard;
            if let Step::Wait = step {
                break;
            }
        }
        if start < records.len() {
            held.incoming = records[start..].to_vec();
        }
        Ok(produced)
    }

    /// The session failed: rustls has queued an alert; send it once, then give up. rustls is
    /// given the input it has not discarded (the unbuffered API tracks its progress in those
    /// bytes: any other buffer, an empty one included, makes it index out of bounds), and
    /// asked once: the alert comes first.
    fn fail(
        &mut self,
        socket: &mut TcpStream,
        error: &rustls::Error,
        undiscarded: &mut [u8],
        held: &mut Held,
    ) {
        log::debug!("TLS session failed: {error}");
        self.failed = true;
        let status = self.conn.process_tls_records(undiscarded);
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) = status.state {
            encode_into(&mut held.outgoing, |buf| encode.encode(buf));
        }
        let _ = send(socket, &mut held.outgoing);
    }

    /// Sends ciphertext held back earlier. Ok(true) when none is left.
    pub fn flush_pending(&mut self, socket: &mut TcpStream) -> io::Result<bool> {
        self.with_held(|_, held| send(socket, &mut held.outgoing))
    }

    /// Encrypts and sends plaintext; returns how much plaintext was taken. Takes less than
    /// offered only when the socket refused more (the rest of the last records waits in
    /// `outgoing`, and the caller waits for writable).
    pub fn write_vectored(
        &mut self,
        socket: &mut TcpStream,
        slices: &[IoSlice<'_>],
    ) -> io::Result<usize> {
        self.with_held(|this, held| {
            if !send(socket, &mut held.outgoing)? {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            CIPHER.with_borrow_mut(|(_, chunk)| {
                if chunk.len() < SEND_CHUNK {
                    chunk.resize(SEND_CHUNK, 0);
                }
                this.encrypt_and_send(socket, slices, chunk, held)
            })
        })
    }

    fn encrypt_and_send(
        &mut self,
        socket: &mut TcpStream,
        slices: &[IoSlice<'_>],
        chunk: &mut [u8],
        held: &mut Held,
    ) -> io::Result<usize> {
        let mut taken = 0;
        let mut pending_slices = slices.iter().map(|s| &s[..]).filter(|s| !s.is_empty());
        let mut current: &[u8] = pending_slices.next().unwrap_or_default();
        while !current.is_empty() {
            // Fill one send chunk with whole records.
            let mut used = 0;
            while !current.is_empty() && SEND_CHUNK - used >= MAX_RECORD {
                let piece = &current[..current.len().min(PLAINTEXT_PER_RECORD)];
                let written = self.encrypt(piece, &mut chunk[used..], held)?;
                used += written;
                taken += piece.len();
                current = &current[piece.len()..];
                if current.is_empty() {
                    current = pending_slices.next().unwrap_or_default();
                }
            }
            let mut sent = 0;
            while sent < used {
                match socket.write(&chunk[sent..used]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        held.outgoing.extend_from_slice(&chunk[sent..used]);
                        return Ok(taken);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(taken)
    }

    /// Encrypts one piece of plaintext (at most one record's worth) into `out`. rustls gets the
    /// undiscarded input back (the unbuffered API tracks its progress in it), and what it
    /// discards is dropped from it.
    fn encrypt(&mut self, piece: &[u8], out: &mut [u8], held: &mut Held) -> io::Result<usize> {
        let mut incoming = std::mem::take(&mut held.incoming);
        let result = loop {
            let status = self.conn.process_tls_records(&mut incoming);
            let discard = status.discard;
            let step = match status.state {
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    Some(traffic.encrypt(piece, out).map_err(encrypt_error))
                }
                // A key update or an alert rustls wants out first.
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    encode_into(&mut held.outgoing, |buf| encode.encode(buf));
                    None
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done();
                    None
                }
                Ok(_) => Some(Err(io::ErrorKind::WouldBlock.into())),
                Err(e) => Some(Err(io::Error::new(io::ErrorKind::InvalidData, e))),
            };
            incoming.drain(..discard);
            if let Some(result) = step {
                break result;
            }
        };
        held.incoming = incoming;
        result
    }

    /// Queues our close_notify (once) and sends what is held. True when all of it has gone.
    pub fn close_notify(&mut self, socket: &mut TcpStream) -> bool {
        self.with_held(|this, held| this.close_notify_with(socket, held))
    }

    fn close_notify_with(&mut self, socket: &mut TcpStream, held: &mut Held) -> bool {
        if !self.close_sent && !self.failed {
            self.close_sent = true;
            let mut incoming = std::mem::take(&mut held.incoming);
            let status = self.conn.process_tls_records(&mut incoming);
            let discard = status.discard;
            if let Ok(ConnectionState::WriteTraffic(mut traffic)) = status.state {
                let mut alert = [0u8; 64];
                if let Ok(n) = traffic.queue_close_notify(&mut alert) {
                    held.outgoing.extend_from_slice(&alert[..n]);
                }
            }
            incoming.drain(..discard);
            held.incoming = incoming;
        }
        matches!(send(socket, &mut held.outgoing), Ok(true) | Err(_))
    }
}

/// Appends an encoded handshake record to `outgoing`, growing it to the size rustls asks for.
fn encode_into(
    outgoing: &mut Vec<u8>,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) {
    let start = outgoing.len();
    let mut size = 4096;
    loop {
        outgoing.resize(start + size, 0);
        match encode(&mut outgoing[start..]) {
            Ok(n) => {
                outgoing.truncate(start + n);
                return;
            }
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                size = required_size;
            }
            Err(_) => {
                outgoing.truncate(start);
                return;
            }
        }
    }
}

fn encrypt_error(error: EncryptError) -> io::Error {
    io::Error::other(error.to_string())
}

/// Writes `bytes` to the socket until it is empty or the socket refuses more; what went is
/// removed. Ok(true) when nothing is left.
fn send(socket: &mut TcpStream, bytes: &mut Vec<u8>) -> io::Result<bool> {
    let mut sent = 0;
    let result = loop {
        if sent == bytes.len() {
            break Ok(true);
        }
        match socket.write(&bytes[sent..]) {
            Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(false),
            Err(e) => break Err(e),
        }
    };
    bytes.drain(..sent);
    if bytes.is_empty() {
        // Give the memory back: an idle session holds no buffer.
        *bytes = Vec::new();
    }
    result
}
