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
//!
//! rustls runs the handshake only. Once it is over, the session is converted
//! (`dangerous_into_kernel_connection`) and `records::Established` runs the record layer with
//! the same compact keys: what rustls kept and could not give back (its connection struct,
//! 1,088 bytes, its deframer's span table, two empty queues) is dropped, and an established
//! session holds about 1 KB (TLS 1.3) or 0.2 KB (TLS 1.2) instead of 2.3 (measured in
//! docs/benchmarks.md). `records` says what that layer checks and answers. A session whose
//! reads never end on a record boundary stays with rustls, which serves it as before.

mod record_keys;
mod records;

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

use records::{Established, Opened, Sealed};

/// The largest TLS record on the wire: 16 KiB of plaintext plus header, padding and tag.
pub const MAX_RECORD: usize = 16 * 1024 + 256;
/// The loop's cipher buffer: one read of ciphertext plus an incomplete record carried over.
pub const CIPHER_BUFFER_SIZE: usize = 64 * 1024 + MAX_RECORD;
/// rustls's state for one session while rustls runs it, struct (boxed) and heap (measured
/// with heaptrack, 2026-12-07: the connection struct 1,088 bytes, rustls's handshake deframer
/// 640, its traffic state 224, two empty queues 96 each, record keys 56 each (`record_keys`),
/// the SNI name).
const RUSTLS_SESSION_BYTES: usize = 2300;
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
    // The traffic keys leave rustls after the handshake: wschat runs the record layer
    // (`records`), which is what lets rustls's per-session state go.
    config.enable_secret_extraction = true;
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
    phase: Phase,
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

/// Who runs the session.
enum Phase {
    /// rustls: the handshake, and after it until the session can be converted (`establish`).
    /// Boxed: 1,088 bytes, dropped at the conversion.
    Rustls(Box<UnbufferedServerConnection>),
    /// wschat's record layer, with the keys rustls gave up.
    Established(Established),
    /// The conversion failed after rustls had given up the session: nothing is left.
    Gone,
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
            phase: Phase::Rustls(Box::new(UnbufferedServerConnection::new(config)?)),
            held: None,
            peer_closed: false,
            failed: false,
            close_sent: false,
        })
    }

    /// Memory this session holds: rustls's state while rustls runs it (measured: about 2.4 KB,
    /// struct and heap), then the record layer's, and the buffers either way.
    pub fn held_bytes(&self) -> usize {
        let state = match &self.phase {
            Phase::Rustls(_) => RUSTLS_SESSION_BYTES,
            Phase::Established(established) => established.heap_bytes(),
            Phase::Gone => 0,
        };
        size_of::<TlsSession>()
            + state
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
            if self.failed {
                // What a failed read decrypted before the bad record is not handed out later:
                // the reader would see the stream with a gap in it.
                held.plaintext = Vec::new();
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS session failed",
                ));
            }
            if !held.plaintext.is_empty() {
                let n = out.len().min(held.plaintext.len());
                out[..n].copy_from_slice(&held.plaintext[..n]);
                held.plaintext.drain(..n);
                if held.plaintext.is_empty() {
                    held.plaintext = Vec::new();
                }
                return Ok(n);
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
            let records = &mut cipher[..carried + fresh];
            let produced = if let Phase::Established(_) = self.phase {
                self.open(socket, records, out, held)?
            } else {
                self.process(socket, records, out, held)?
            };
            if produced > 0 {
                return Ok(produced);
            }
            // Only handshake records (or an incomplete one): read on.
        }
    }

    /// The established phase's read: opens the whole records in `records` (`Established`),
    /// plaintext to `out` and the rest of it to `held.plaintext`; keeps an incomplete record;
    /// sends what the record layer answered (a KeyUpdate, an alert).
    fn open(
        &mut self,
        socket: &mut TcpStream,
        records: &mut [u8],
        out: &mut [u8],
        held: &mut Held,
    ) -> io::Result<usize> {
        let Phase::Established(established) = &mut self.phase else {
            return Err(io::ErrorKind::InvalidData.into());
        };
        let mut produced = 0;
        let Held {
            outgoing,
            plaintext,
            ..
        } = held;
        let mut deliver = |payload: &[u8]| deliver(payload, out, &mut produced, plaintext);
        let opened = established.open(records, &mut deliver, outgoing);
        let answered = !held.outgoing.is_empty();
        match opened {
            Ok(Opened::Consumed(consumed)) => {
                if consumed < records.len() {
                    held.incoming = records[consumed..].to_vec();
                }
            }
            Ok(Opened::PeerClosed) => self.peer_closed = true,
            Err(failure) => {
                log::debug!("TLS session failed: {failure}");
                self.failed = true;
                let _ = send(socket, &mut held.outgoing);
                return Err(io::Error::new(io::ErrorKind::InvalidData, failure));
            }
        }
        if answered {
            // What the socket does not take goes first next time.
            send(socket, &mut held.outgoing)?;
        }
        Ok(produced)
    }

    /// Runs the session over the ciphertext in `records` with rustls, writing plaintext to
    /// `out` (the rest to `held.plaintext`) and answering handshake flights. Keeps an
    /// incomplete record. Hands the session to the record layer once it can (`establish`).
    fn process(
        &mut self,
        socket: &mut TcpStream,
        records: &mut [u8],
        out: &mut [u8],
        held: &mut Held,
    ) -> io::Result<usize> {
        let Phase::Rustls(conn) = &mut self.phase else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS session failed",
            ));
        };
        let mut start = 0;
        // rustls is given whole records one at a time, so that it stops at the record that
        // completes the handshake: a post-handshake record it handled itself (a KeyUpdate)
        // could leave state the conversion drops (its queued KeyUpdate answer).
        let mut end = record_end(records, 0);
        let mut produced = 0;
        // rustls's last word was: established, with nothing to send or hand over.
        let mut ready = false;
        loop {
            let status = conn.process_tls_records(&mut records[start..end]);
            let discard = status.discard;
            let mut traffic = false;
            let step = match status.state {
                Err(error) => {
                    fail(conn, socket, &error, &mut records[start + discard..], held);
                    self.failed = true;
                    return Err(io::Error::new(io::ErrorKind::InvalidData, error));
                }
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    while let Some(record) = traffic.next_record() {
                        let record =
                            record.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                        deliver(record.payload, out, &mut produced, &mut held.plaintext);
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
                Ok(ConnectionState::WriteTraffic(_)) => {
                    traffic = true;
                    Step::Wait
                }
                // Handshake waiting for the client.
                Ok(_) => Step::Wait,
            };
            start += discard;
            if let Step::Wait = step {
                if traffic && !conn.is_handshaking() && start == end {
                    ready = true;
                    break;
                }
                if end < records.len() && !self.peer_closed {
                    end = record_end(records, end);
                    continue;
                }
                break;
            }
        }
        if ready {
            self.establish();
            if end < records.len() && matches!(self.phase, Phase::Established(_)) {
                let rest = &mut records[end..];
                let (out_rest, before) = (&mut out[produced..], produced);
                return Ok(before + self.open(socket, rest, out_rest, held)?);
            }
        } else if start < records.len() {
            held.incoming = records[start..].to_vec();
        }
        Ok(produced)
    }

    /// Hands the session from rustls to the record layer. Called when rustls is established
    /// with nothing left to do: its handshake complete (both Finished messages), nothing for
    /// it to send (it said WriteTraffic, which it says only then), and every byte it was given
    /// discarded (it decrypts in the caller's buffer and may keep a partial handshake message
    /// there, so a conversion with undiscarded bytes could lose or misread them). What the
    /// socket has not taken yet (`held.outgoing`) is already sealed, and its sequence numbers
    /// are counted in the secrets. `process` gives rustls one record at a time so that this
    /// happens at the record that completes the handshake: a post-handshake record rustls
    /// handled itself could leave state the conversion drops (a KeyUpdate's answer, which
    /// rustls queues where the conversion does not look).
    ///
    /// The conversion takes the rustls session by value: if rustls refuses after all, there
    /// is no session to go back to, and this one ends (`Phase::Gone`, reads and writes fail).
    fn establish(&mut self) {
        let Phase::Rustls(conn) = std::mem::replace(&mut self.phase, Phase::Gone) else {
            return;
        };
        match conn
            .dangerous_into_kernel_connection()
            .and_then(|(secrets, kernel)| Established::new(secrets, kernel))
        {
            Ok(mut established) => {
                if self.close_sent {
                    established.mark_closed();
                }
                self.phase = Phase::Established(established);
            }
            Err(e) => {
                log::debug!("TLS session could not leave rustls, ending it: {e}");
                self.failed = true;
            }
        }
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
        if self.failed || self.close_sent {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "TLS session closed for writing",
            ));
        }
        let mut plaintext = Plaintext::new(slices);
        while !plaintext.is_empty() {
            // Fill one send chunk with whole records.
            let mut used = 0;
            let mut closed = false;
            while !plaintext.is_empty() && SEND_CHUNK - used >= MAX_RECORD {
                match self.encrypt(&mut plaintext, &mut chunk[used..], held)? {
                    Sealed::Data(written) => used += written,
                    Sealed::Closed(written) => {
                        used += written;
                        closed = true;
                        break;
                    }
                }
            }
            if closed {
                // The send key is used up (TLS 1.2): close_notify went instead of the rest.
                self.close_sent = true;
                held.outgoing.extend_from_slice(&chunk[..used]);
                let _ = send(socket, &mut held.outgoing);
                return Err(io::Error::other("TLS send key used up: session closed"));
            }
            let mut sent = 0;
            while sent < used {
                match socket.write(&chunk[sent..used]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        held.outgoing.extend_from_slice(&chunk[sent..used]);
                        return Ok(plaintext.taken);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(plaintext.taken)
    }

    /// Encrypts the next record's worth of `plaintext` into `out`, by the record layer or by
    /// rustls, whichever runs the session. The record layer gathers a record from as many
    /// slices as fill it (a fan-out queues one slice per message of 2 KiB or more), written
    /// once, in place; rustls takes one slice at a time and copies it itself.
    fn encrypt(
        &mut self,
        plaintext: &mut Plaintext<'_, '_>,
        out: &mut [u8],
        held: &mut Held,
    ) -> io::Result<Sealed> {
        match &mut self.phase {
            Phase::Established(established) => established
                .seal_with(out, |room| plaintext.gather(room))
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Phase::Rustls(conn) => {
                let piece = plaintext.peek(PLAINTEXT_PER_RECORD);
                let sealed = rustls_encrypt(conn, piece, out, held)?;
                plaintext.advance(piece.len());
                Ok(Sealed::Data(sealed))
            }
            Phase::Gone => Err(io::ErrorKind::InvalidData.into()),
        }
    }

    /// Queues our close_notify (once) and sends what is held. True when all of it has gone.
    pub fn close_notify(&mut self, socket: &mut TcpStream) -> bool {
        self.with_held(|this, held| this.close_notify_with(socket, held))
    }

    fn close_notify_with(&mut self, socket: &mut TcpStream, held: &mut Held) -> bool {
        if !self.close_sent && !self.failed {
            self.close_sent = true;
            match &mut self.phase {
                Phase::Established(established) => {
                    let _ = established.close_notify(&mut held.outgoing);
                }
                Phase::Rustls(conn) => rustls_close_notify(conn, held),
                Phase::Gone => {}
            }
        }
        matches!(send(socket, &mut held.outgoing), Ok(true) | Err(_))
    }
}

/// The end of the record at `from` in `records`, or the end of `records` if it is not whole.
fn record_end(records: &[u8], from: usize) -> usize {
    match records.get(from..from + 5) {
        Some(header) => {
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            (from + 5 + len).min(records.len())
        }
        None => records.len(),
    }
}

/// Hands decrypted `payload` to the reader: into `out` after the `produced` bytes already
/// there, and what does not fit into `spill` (the session's held plaintext).
fn deliver(payload: &[u8], out: &mut [u8], produced: &mut usize, spill: &mut Vec<u8>) {
    let fits = (out.len() - *produced).min(payload.len());
    out[*produced..*produced + fits].copy_from_slice(&payload[..fits]);
    *produced += fits;
    spill.extend_from_slice(&payload[fits..]);
}

/// The session failed under rustls: rustls has queued an alert; send it once, then give up.
/// rustls is given the input it has not discarded (the unbuffered API tracks its progress in
/// those bytes: any other buffer, an empty one included, makes it index out of bounds), and
/// asked once: the alert comes first.
fn fail(
    conn: &mut UnbufferedServerConnection,
    socket: &mut TcpStream,
    error: &rustls::Error,
    undiscarded: &mut [u8],
    held: &mut Held,
) {
    log::debug!("TLS session failed: {error}");
    let status = conn.process_tls_records(undiscarded);
    if let Ok(ConnectionState::EncodeTlsData(mut encode)) = status.state {
        encode_into(&mut held.outgoing, |buf| encode.encode(buf));
    }
    let _ = send(socket, &mut held.outgoing);
}

/// Encrypts one piece of plaintext with rustls (before the record layer takes over). rustls
/// gets the undiscarded input back (the unbuffered API tracks its progress in it), and what it
/// discards is dropped from it.
fn rustls_encrypt(
    conn: &mut UnbufferedServerConnection,
    piece: &[u8],
    out: &mut [u8],
    held: &mut Held,
) -> io::Result<usize> {
    let mut incoming = std::mem::take(&mut held.incoming);
    let result = loop {
        let status = conn.process_tls_records(&mut incoming);
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

/// Queues rustls's close_notify (before the record layer takes over).
fn rustls_close_notify(conn: &mut UnbufferedServerConnection, held: &mut Held) {
    let mut incoming = std::mem::take(&mut held.incoming);
    let status = conn.process_tls_records(&mut incoming);
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

/// The plaintext of one `write_vectored` call, taken from the front: the caller's slices and
/// how much of them has been sealed.
struct Plaintext<'s, 'a> {
    slices: &'s [IoSlice<'a>],
    /// The unsealed rest of `slices[0]`.
    current: &'s [u8],
    /// Bytes sealed so far (what `write_vectored` reports).
    taken: usize,
}

impl<'s, 'a> Plaintext<'s, 'a> {
    fn new(slices: &'s [IoSlice<'a>]) -> Self {
        let mut plaintext = Plaintext {
            slices,
            current: &[],
            taken: 0,
        };
        plaintext.skip_empty();
        plaintext
    }

    fn is_empty(&self) -> bool {
        self.current.is_empty()
    }

    /// Moves to the next non-empty slice once the current one is used up.
    fn skip_empty(&mut self) {
        while self.current.is_empty() {
            let Some((first, rest)) = self.slices.split_first() else {
                return;
            };
            self.current = first;
            self.slices = rest;
        }
    }

    /// Up to `max` bytes of the current slice, not yet taken.
    fn peek(&self, max: usize) -> &'s [u8] {
        &self.current[..self.current.len().min(max)]
    }

    fn advance(&mut self, n: usize) {
        self.current = &self.current[n..];
        self.taken += n;
        self.skip_empty();
    }

    /// Copies as much as fits into `room`, across slices; returns how much.
    fn gather(&mut self, room: &mut [u8]) -> usize {
        let mut filled = 0;
        while !self.is_empty() && filled < room.len() {
            let piece = self.peek(room.len() - filled);
            room[filled..filled + piece.len()].copy_from_slice(piece);
            filled += piece.len();
            self.advance(piece.len());
        }
        filled
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

#[cfg(test)]
mod tests {
    #[test]
    fn an_established_session_is_small() {
        // rustls's 1,088-byte connection is boxed in the handshake phase and gone after it:
        // what a `Box<TlsSession>` holds inline for every connection stays under 150 bytes
        // (the send key's 56 bytes among them: inline, it costs less than a boxed trait object
        // and its allocation).
        let size = size_of::<super::TlsSession>();
        assert!(size <= 144, "TlsSession is {size} bytes");
    }
}
