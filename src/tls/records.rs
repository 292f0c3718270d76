//! The record layer of an established TLS session, run by wschat instead of rustls.
//!
//! Why: rustls keeps about 2.3 KB per established session while it runs the record layer (its
//! connection struct, 1,088 bytes, the handshake deframer's span table, its traffic state and
//! two empty queues), none of which its API lets go. Once the handshake is over,
//! `UnbufferedServerConnection::dangerous_into_kernel_connection` gives the traffic keys with
//! their sequence numbers and a `KernelConnection` that derives TLS 1.3 key updates, and drops
//! the rest. An `Established` session keeps the two compact record keys of `record_keys`, the
//! sequence numbers, a few counters and, for TLS 1.3 only, the boxed `KernelConnection`.
//!
//! What it does, after rustls's own behaviour (`rustls/src/conn.rs`, `record_layer.rs`,
//! `common_state.rs`), RFC 8446 5 and RFC 5246 6:
//! - frames records: a 5-byte header of a known type and version 3.x; a TLS 1.3 record of
//!   more than 2^14 + 256 bytes of ciphertext, a TLS 1.2 one of more than 2^14 + 2048, gets a
//!   fatal record_overflow before the rest is read;
//! - decrypts each whole record with the receive sequence number (the AEADs of `record_keys`
//!   check the tag, the TLS 1.3 inner type and padding, and the 2^14 plaintext limit); a
//!   record that does not open gets a fatal bad_record_mac;
//! - application data goes to the reader (empty records are allowed, at most 32 in a row);
//!   close_notify is the end of the stream; a fatal alert, or a warning in TLS 1.3 other than
//!   user_canceled, ends the session; TLS 1.2 warnings are ignored (at most 4);
//! - TLS 1.3 KeyUpdate: the receive key moves on; when the peer asks, our KeyUpdate
//!   (update_not_requested) goes out under the old send key and the send key moves on (at most
//!   32 in a row without application data); any other handshake message is a fatal
//!   unexpected_message, as is a ChangeCipherSpec;
//! - TLS 1.2 ClientHello (renegotiation): a warning no_renegotiation the first time, the end
//!   of the session the second;
//! - seals records of at most 2^14 bytes of plaintext; before a key would pass its suite's
//!   confidentiality limit, TLS 1.3 updates it (our KeyUpdate with update_requested) and TLS
//!   1.2 sends close_notify and stops.
//!
//! Every alert it sends is encrypted. It owns no socket and no buffer: `TlsSession` reads and
//! writes and keeps what is in flight.
//!
//! Two things rustls accepts and this layer refuses (unexpected_message): a handshake message
//! split over several records (rustls joins them; a 5-byte KeyUpdate or a renegotiating
//! ClientHello in one record is what clients send), and a TLS 1.3 record whose outer type is
//! not application_data (RFC 8446 5.2: it always is).

use std::fmt;

use rustls::crypto::cipher::{
    AeadKey, InboundOpaqueMessage, Iv, MessageDecrypter, MessageEncrypter, OutboundChunks,
    OutboundPlainMessage,
};
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{
    ConnectionTrafficSecrets, ContentType, Error, ExtractedSecrets, ProtocolVersion,
    SupportedCipherSuite,
};

/// A record's header: type, version, length.
const HEADER_LEN: usize = 5;
/// The most plaintext a record carries (RFC 8446 5.1, RFC 5246 6.2.1).
const MAX_FRAGMENT: usize = 16 * 1024;
/// The most ciphertext a TLS 1.3 record may carry (RFC 8446 5.2).
const MAX_CIPHERTEXT_TLS13: usize = MAX_FRAGMENT + 256;
/// The most ciphertext a TLS 1.2 record may carry (RFC 5246 6.2.3).
const MAX_CIPHERTEXT_TLS12: usize = MAX_FRAGMENT + 2048;
/// rustls's ceiling for any key, whatever its suite allows (`record_layer.rs`).
const SEQ_SOFT_LIMIT: u64 = 0xffff_ffff_ffff_0000;
/// Empty records in a row before the peer is cut off (rustls's number).
const MAX_EMPTY_RECORDS: u8 = 32;
/// Warning alerts a peer may send in the life of a session (rustls's and BoringSSL's number).
const MAX_WARNING_ALERTS: u8 = 4;
/// KeyUpdates in a row without application data (rustls's and BoringSSL's number).
const MAX_KEY_UPDATES: u8 = 32;
/// Renegotiation requests refused with a warning; the next one ends the session (rustls).
const MAX_RENEGOTIATIONS: u8 = 1;

/// Alert levels and descriptions (RFC 8446 6, RFC 5746).
const WARNING: u8 = 1;
const FATAL: u8 = 2;
const CLOSE_NOTIFY: u8 = 0;
const UNEXPECTED_MESSAGE: u8 = 10;
const BAD_RECORD_MAC: u8 = 20;
const RECORD_OVERFLOW: u8 = 22;
const ILLEGAL_PARAMETER: u8 = 47;
const DECODE_ERROR: u8 = 50;
const INTERNAL_ERROR: u8 = 80;
const USER_CANCELED: u8 = 90;
const NO_RENEGOTIATION: u8 = 100;

/// Handshake message types seen after the handshake (RFC 8446 4, RFC 5246 7.4).
const CLIENT_HELLO: u8 = 1;
const KEY_UPDATE: u8 = 24;
/// KeyUpdateRequest values (RFC 8446 4.6.3).
const UPDATE_NOT_REQUESTED: u8 = 0;
const UPDATE_REQUESTED: u8 = 1;

/// Why an established session ended with an error. The alert owed to the peer, if any, has
/// been sealed into the caller's outgoing bytes already.
#[derive(Debug)]
pub struct Failure(&'static str);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Failure {}

/// A failure found while opening or sealing: what to tell the peer (None: nothing, as rustls
/// says nothing after a fatal alert from the peer or a limit its counters enforce), and why.
struct Fatal {
    alert: Option<u8>,
    why: &'static str,
}

fn fatal(alert: u8, why: &'static str) -> Fatal {
    Fatal {
        alert: Some(alert),
        why,
    }
}

fn silent(why: &'static str) -> Fatal {
    Fatal { alert: None, why }
}

/// What `Established::open` got through.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    /// The first `usize` bytes were whole records, all handled; the rest (fewer than a
    /// record) waits for more bytes.
    Consumed(usize),
    /// The peer sent close_notify: no more plaintext, and the bytes after it are ignored.
    PeerClosed,
}

/// What one seal wrote.
#[derive(Debug, PartialEq, Eq)]
pub enum Sealed {
    /// This many bytes of records: the plaintext (after our KeyUpdate, when the key was used
    /// up).
    Data(usize),
    /// TLS 1.2 keys used up: this many bytes of close_notify were written instead of the
    /// plaintext, and the session may seal nothing more.
    Closed(usize),
}

/// The protocol version, and what only TLS 1.3 needs.
enum Version {
    Tls12,
    /// rustls's remaining state: it derives the next traffic keys for a KeyUpdate. Boxed: 560
    /// bytes inline.
    Tls13(Box<KernelConnection<ServerConnectionData>>),
}

/// An established session's record layer (see the module doc).
pub struct Established {
    version: Version,
    sealer: Box<dyn MessageEncrypter>,
    /// The sequence number of the next record sealed.
    send_seq: u64,
    /// The first sequence number the send key must not reach: the suite's confidentiality
    /// limit (or rustls's ceiling).
    send_limit: u64,
    opener: Box<dyn MessageDecrypter>,
    /// The sequence number of the next record opened.
    receive_seq: u64,
    empty_in_a_row: u8,
    warnings_left: u8,
    key_updates_left: u8,
    renegotiations_left: u8,
}

impl Established {
    /// Takes over from rustls after its handshake (`dangerous_into_kernel_connection`).
    pub fn new(
        secrets: ExtractedSecrets,
        kernel: KernelConnection<ServerConnectionData>,
    ) -> Result<Self, Error> {
        let suite = kernel.negotiated_cipher_suite();
        let version = match kernel.protocol_version() {
            ProtocolVersion::TLSv1_3 => Version::Tls13(Box::new(kernel)),
            ProtocolVersion::TLSv1_2 => Version::Tls12,
            _ => return Err(Error::General("not TLS 1.2 or 1.3".into())),
        };
        let (send_seq, send) = secrets.tx;
        let (receive_seq, receive) = secrets.rx;
        Ok(Established {
            version,
            sealer: sealer(suite, send)?,
            send_seq,
            send_limit: send_limit(suite),
            opener: opener(suite, receive)?,
            receive_seq,
            empty_in_a_row: 0,
            warnings_left: MAX_WARNING_ALERTS,
            key_updates_left: MAX_KEY_UPDATES,
            renegotiations_left: MAX_RENEGOTIATIONS,
        })
    }

    fn is_tls13(&self) -> bool {
        matches!(self.version, Version::Tls13(_))
    }

    /// Heap this session holds beyond its place in `TlsSession`: two record keys (56 bytes
    /// each, `record_keys`) and, for TLS 1.3, the `KernelConnection` and rustls's traffic
    /// state inside it (224 bytes, heaptrack).
    pub fn heap_bytes(&self) -> usize {
        const RECORD_KEY: usize = 64;
        const TLS13_TRAFFIC_STATE: usize = 224;
        2 * RECORD_KEY
            + match self.version {
                Version::Tls12 => 0,
                Version::Tls13(_) => {
                    size_of::<KernelConnection<ServerConnectionData>>() + TLS13_TRAFFIC_STATE
                }
            }
    }

    /// Opens the whole records at the front of `records` (decrypting them in place), hands
    /// application data to `plaintext`, and answers what needs an answer (our KeyUpdate, a
    /// warning) by sealing records onto `outgoing`. On failure the fatal alert owed, if any,
    /// is on `outgoing` too, and the session must not be used again.
    pub fn open(
        &mut self,
        records: &mut [u8],
        plaintext: &mut dyn FnMut(&[u8]),
        outgoing: &mut Vec<u8>,
    ) -> Result<Opened, Failure> {
        let mut at = 0;
        loop {
            let rest = &mut records[at..];
            let Some(header) = rest.first_chunk::<HEADER_LEN>() else {
                return Ok(Opened::Consumed(at));
            };
            let (typ, version) = (header[0], [header[1], header[2]]);
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            // The header is judged before the body arrives: an oversized record is refused
            // without waiting for (and holding) its bytes.
            if let Err(fatal) = self.check_header(typ, version, len) {
                return Err(self.fail(fatal, outgoing));
            }
            let Some(record) = rest.get_mut(..HEADER_LEN + len) else {
                return Ok(Opened::Consumed(at));
            };
            at += HEADER_LEN + len;
            match self.open_one(typ, version, &mut record[HEADER_LEN..], plaintext, outgoing) {
                Ok(true) => {}
                Ok(false) => return Ok(Opened::PeerClosed),
                Err(fatal) => return Err(self.fail(fatal, outgoing)),
            }
        }
    }

    /// RFC 8446 5.1 and 5.2, RFC 5246 6.2, and rustls's own checks (`read_opaque_message_header`).
    fn check_header(&self, typ: u8, version: [u8; 2], len: usize) -> Result<(), Fatal> {
        let known = matches!(
            ContentType::from(typ),
            ContentType::ChangeCipherSpec
                | ContentType::Alert
                | ContentType::Handshake
                | ContentType::ApplicationData
        );
        if !known {
            return Err(fatal(UNEXPECTED_MESSAGE, "a record of an unknown type"));
        }
        if version[0] != 3 {
            return Err(fatal(DECODE_ERROR, "a record of an unknown version"));
        }
        if len == 0 && ContentType::from(typ) != ContentType::ApplicationData {
            return Err(fatal(
                DECODE_ERROR,
                "an empty record that is not application data",
            ));
        }
        let max = if self.is_tls13() {
            MAX_CIPHERTEXT_TLS13
        } else {
            MAX_CIPHERTEXT_TLS12
        };
        if len > max {
            return Err(fatal(RECORD_OVERFLOW, "a record over the length limit"));
        }
        Ok(())
    }

    /// Opens and handles one whole record. Ok(false) after the peer's close_notify.
    fn open_one(
        &mut self,
        typ: u8,
        version: [u8; 2],
        body: &mut [u8],
        plaintext: &mut dyn FnMut(&[u8]),
        outgoing: &mut Vec<u8>,
    ) -> Result<bool, Fatal> {
        let outer = ContentType::from(typ);
        // A ChangeCipherSpec after the handshake is never valid, and is never encrypted
        // (rustls hands it to its state machine, which refuses it). In TLS 1.3 every
        // protected record says application_data outside (RFC 8446 5.2).
        if outer == ContentType::ChangeCipherSpec {
            return Err(fatal(
                UNEXPECTED_MESSAGE,
                "a ChangeCipherSpec after the handshake",
            ));
        }
        if self.is_tls13() && outer != ContentType::ApplicationData {
            return Err(fatal(
                UNEXPECTED_MESSAGE,
                "a TLS 1.3 record that is not application data outside",
            ));
        }
        let seq = self.receive_seq;
        let Some(next_seq) = seq.checked_add(1).filter(|&next| next < u64::MAX) else {
            return Err(fatal(
                INTERNAL_ERROR,
                "the receive sequence number is used up",
            ));
        };
        let message = InboundOpaqueMessage::new(
            outer,
            ProtocolVersion::from(u16::from_be_bytes(version)),
            body,
        );
        let opened = self.opener.decrypt(message, seq).map_err(open_error)?;
        self.receive_seq = next_seq;
        let payload: &[u8] = opened.payload;
        if payload.is_empty() {
            if self.empty_in_a_row == MAX_EMPTY_RECORDS {
                return Err(fatal(UNEXPECTED_MESSAGE, "too many empty records in a row"));
            }
            self.empty_in_a_row += 1;
        } else {
            self.empty_in_a_row = 0;
        }
        match opened.typ {
            ContentType::ApplicationData => {
                if !payload.is_empty() {
                    self.key_updates_left = MAX_KEY_UPDATES;
                    plaintext(payload);
                }
                Ok(true)
            }
            ContentType::Alert => self.alert_received(payload),
            ContentType::Handshake => {
                self.handshake_received(payload, outgoing)?;
                Ok(true)
            }
            _ => Err(fatal(UNEXPECTED_MESSAGE, "a record of an unexpected type")),
        }
    }

    /// rustls's `CommonState::process_alert`. Ok(false) for close_notify.
    fn alert_received(&mut self, alert: &[u8]) -> Result<bool, Fatal> {
        let &[level, description] = alert else {
            return Err(fatal(DECODE_ERROR, "an alert that is not two bytes"));
        };
        if level != WARNING && level != FATAL {
            return Err(fatal(ILLEGAL_PARAMETER, "an alert of an unknown level"));
        }
        if description == CLOSE_NOTIFY {
            return Ok(false);
        }
        if level == FATAL {
            return Err(silent("the peer sent a fatal alert"));
        }
        if self.warnings_left == 0 {
            return Err(silent("too many warning alerts"));
        }
        self.warnings_left -= 1;
        // Warnings are outlawed in TLS 1.3, all but user_canceled (RFC 8446 6).
        if self.is_tls13() && description != USER_CANCELED {
            return Err(fatal(DECODE_ERROR, "a warning alert in TLS 1.3"));
        }
        Ok(true)
    }

    /// A handshake record after the handshake: one whole message (see the module doc).
    fn handshake_received(&mut self, record: &[u8], outgoing: &mut Vec<u8>) -> Result<(), Fatal> {
        let Some((&[typ, a, b, c], body)) = record.split_first_chunk::<4>() else {
            return Err(fatal(
                UNEXPECTED_MESSAGE,
                "a handshake message split over records",
            ));
        };
        let len = u32::from_be_bytes([0, a, b, c]) as usize;
        if body.len() < len {
            return Err(fatal(
                UNEXPECTED_MESSAGE,
                "a handshake message split over records",
            ));
        }
        let (message, after) = body.split_at(len);
        match (&self.version, typ) {
            (Version::Tls13(_), KEY_UPDATE) => {
                let &[request] = message else {
                    return Err(fatal(DECODE_ERROR, "a KeyUpdate of the wrong length"));
                };
                // A key change must end its record (RFC 8446 5.1).
                if !after.is_empty() {
                    return Err(fatal(
                        UNEXPECTED_MESSAGE,
                        "a KeyUpdate that does not end its record",
                    ));
                }
                self.key_update_received(request, outgoing)
            }
            (Version::Tls12, CLIENT_HELLO) if after.is_empty() => {
                if self.renegotiations_left == 0 {
                    return Err(silent("a second renegotiation request"));
                }
                self.renegotiations_left -= 1;
                log::debug!("TLS 1.2 renegotiation refused");
                match self.seal_onto(ContentType::Alert, &[WARNING, NO_RENEGOTIATION], outgoing)? {
                    Sealed::Data(_) => Ok(()),
                    Sealed::Closed(_) => Err(silent("the send key is used up")),
                }
            }
            _ => Err(fatal(
                UNEXPECTED_MESSAGE,
                "a handshake message after the handshake",
            )),
        }
    }

    /// RFC 8446 4.6.3; rustls's `ExpectTraffic::handle_key_update`.
    fn key_update_received(&mut self, request: u8, outgoing: &mut Vec<u8>) -> Result<(), Fatal> {
        if request != UPDATE_NOT_REQUESTED && request != UPDATE_REQUESTED {
            return Err(fatal(
                ILLEGAL_PARAMETER,
                "a KeyUpdate with an unknown request",
            ));
        }
        if self.key_updates_left == 0 {
            return Err(silent("too many KeyUpdates without application data"));
        }
        self.key_updates_left -= 1;
        if request == UPDATE_REQUESTED {
            // "...it MUST send a KeyUpdate with request_update set to update_not_requested
            // prior to sending its next Application Data record" (RFC 8446 4.6.3).
            self.update_send_key(UPDATE_NOT_REQUESTED, outgoing)?;
        }
        let Version::Tls13(kernel) = &mut self.version else {
            return Err(fatal(UNEXPECTED_MESSAGE, "a KeyUpdate in TLS 1.2"));
        };
        let (seq, secrets) = kernel
            .update_rx_secret()
            .map_err(|_| fatal(INTERNAL_ERROR, "no next receive key"))?;
        self.opener = opener(kernel.negotiated_cipher_suite(), secrets)
            .map_err(|_| fatal(INTERNAL_ERROR, "no next receive key"))?;
        self.receive_seq = seq;
        Ok(())
    }

    /// Sends our KeyUpdate under the current send key, then moves the send key on (TLS 1.3).
    fn update_send_key(&mut self, request: u8, out: &mut Vec<u8>) -> Result<(), Fatal> {
        let message = [KEY_UPDATE, 0, 0, 1, request];
        let at = out.len();
        out.resize(at + record_room(&*self.sealer, message.len()), 0);
        let written = self.seal_raw(ContentType::Handshake, &message, &mut out[at..]);
        out.truncate(at + written.as_ref().map_or(0, |n| *n));
        written?;
        self.next_send_key()
    }

    fn next_send_key(&mut self) -> Result<(), Fatal> {
        let Version::Tls13(kernel) = &mut self.version else {
            return Err(fatal(INTERNAL_ERROR, "no key update in TLS 1.2"));
        };
        let (seq, secrets) = kernel
            .update_tx_secret()
            .map_err(|_| fatal(INTERNAL_ERROR, "no next send key"))?;
        self.sealer = sealer(kernel.negotiated_cipher_suite(), secrets)
            .map_err(|_| fatal(INTERNAL_ERROR, "no next send key"))?;
        self.send_seq = seq;
        Ok(())
    }

    /// Seals `payload` (at most 2^14 bytes) as one record of application data into `out`,
    /// after our KeyUpdate if the send key would otherwise reach its limit (TLS 1.3), or
    /// close_notify instead of it (TLS 1.2). `out` must have room for two records' overhead
    /// beyond the payload (`record_room`); less is an error, never a panic.
    pub fn seal(&mut self, payload: &[u8], out: &mut [u8]) -> Result<Sealed, Failure> {
        self.seal_with_limit(ContentType::ApplicationData, payload, out)
            .map_err(|fatal| Failure(fatal.why))
    }

    /// Seals our close_notify onto `outgoing` (it may take the key's last sequence number).
    pub fn close_notify(&mut self, outgoing: &mut Vec<u8>) -> Result<(), Failure> {
        self.seal_final_alert(WARNING, CLOSE_NOTIFY, outgoing)
            .map_err(|fatal| Failure(fatal.why))
    }

    /// Sends nothing more after this: seals the alert owed for `fatal`, if any.
    fn fail(&mut self, fatal: Fatal, outgoing: &mut Vec<u8>) -> Failure {
        if let Some(description) = fatal.alert {
            let _ = self.seal_final_alert(FATAL, description, outgoing);
        }
        Failure(fatal.why)
    }

    /// A closing alert: the last record of the session, which may use the key's last
    /// sequence number.
    fn seal_final_alert(
        &mut self,
        level: u8,
        description: u8,
        outgoing: &mut Vec<u8>,
    ) -> Result<(), Fatal> {
        let at = outgoing.len();
        outgoing.resize(at + record_room(&*self.sealer, 2), 0);
        let written = self.seal_raw(
            ContentType::Alert,
            &[level, description],
            &mut outgoing[at..],
        );
        outgoing.truncate(at + written.as_ref().map_or(0, |n| *n));
        written.map(|_| ())
    }

    /// `seal_with_limit` onto the end of a `Vec`.
    fn seal_onto(
        &mut self,
        typ: ContentType,
        payload: &[u8],
        outgoing: &mut Vec<u8>,
    ) -> Result<Sealed, Fatal> {
        let at = outgoing.len();
        outgoing.resize(at + 2 * record_room(&*self.sealer, payload.len()), 0);
        let sealed = self.seal_with_limit(typ, payload, &mut outgoing[at..]);
        let written = match &sealed {
            Ok(Sealed::Data(n) | Sealed::Closed(n)) => *n,
            Err(_) => 0,
        };
        outgoing.truncate(at + written);
        sealed
    }

    /// The confidentiality limit (rustls's `PreEncryptAction::RefreshOrClose`): a record that
    /// is not the key's last must leave it one more sequence number, for our KeyUpdate (TLS
    /// 1.3) or close_notify (TLS 1.2).
    fn seal_with_limit(
        &mut self,
        typ: ContentType,
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<Sealed, Fatal> {
        let mut written = 0;
        if self.send_seq.saturating_add(1) >= self.send_limit {
            if !self.is_tls13() {
                log::debug!("TLS 1.2 send key used up: closing the session");
                let n = self.seal_raw(ContentType::Alert, &[WARNING, CLOSE_NOTIFY], out)?;
                return Ok(Sealed::Closed(n));
            }
            log::debug!("TLS 1.3 send key near its limit: updating it");
            written += self.seal_raw(
                ContentType::Handshake,
                &[KEY_UPDATE, 0, 0, 1, UPDATE_REQUESTED],
                out,
            )?;
            self.next_send_key()?;
        }
        written += self.seal_raw(typ, payload, &mut out[written..])?;
        Ok(Sealed::Data(written))
    }

    /// Seals one record at the next sequence number into `out`; returns its length. Refuses
    /// a sequence number at or past the key's limit, and an `out` too small.
    fn seal_raw(
        &mut self,
        typ: ContentType,
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<usize, Fatal> {
        if payload.len() > MAX_FRAGMENT {
            return Err(fatal(
                INTERNAL_ERROR,
                "a record of more than 16 KiB to seal",
            ));
        }
        if self.send_seq >= self.send_limit {
            return Err(fatal(INTERNAL_ERROR, "the send key is used up"));
        }
        let len = HEADER_LEN + self.sealer.encrypted_payload_len(payload.len());
        let Some(out) = out.get_mut(..len) else {
            return Err(silent("no room to seal a record"));
        };
        let message = OutboundPlainMessage {
            typ,
            // TLS 1.3 writes TLS 1.2 outside whatever it is told (RFC 8446 5.1).
            version: ProtocolVersion::TLSv1_2,
            payload: OutboundChunks::Single(payload),
        };
        let record = self
            .sealer
            .encrypt(message, self.send_seq)
            .map_err(|_| silent("a record could not be sealed"))?
            .encode();
        if record.len() != len {
            return Err(silent("a sealed record of an unexpected length"));
        }
        out.copy_from_slice(&record);
        self.send_seq += 1;
        Ok(len)
    }
}

/// Room to seal a record of `payload_len` bytes of plaintext.
fn record_room(sealer: &dyn MessageEncrypter, payload_len: usize) -> usize {
    HEADER_LEN + sealer.encrypted_payload_len(payload_len)
}

/// The send key's limit: the suite's confidentiality limit, and never past rustls's ceiling.
fn send_limit(suite: SupportedCipherSuite) -> u64 {
    let limit = match suite {
        SupportedCipherSuite::Tls12(s) => s.common.confidentiality_limit,
        SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
    };
    limit.min(SEQ_SOFT_LIMIT)
}

/// rustls's alerts for what its decrypters report (`handle_deframe_error`; RFC 8446 5.2 and
/// 5.4 for the inner plaintext).
fn open_error(error: Error) -> Fatal {
    match error {
        Error::DecryptError => fatal(BAD_RECORD_MAC, "a record that does not decrypt"),
        Error::PeerSentOversizedRecord => {
            fatal(RECORD_OVERFLOW, "a record of more than 16 KiB of plaintext")
        }
        Error::PeerMisbehaved(_) => fatal(
            UNEXPECTED_MESSAGE,
            "a protected ChangeCipherSpec or a record without an inner type",
        ),
        _ => fatal(DECODE_ERROR, "a record that could not be read"),
    }
}

fn key_and_iv(secrets: ConnectionTrafficSecrets) -> Result<(AeadKey, Iv), Error> {
    match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => Ok((key, iv)),
        _ => Err(Error::General("an AEAD wschat does not know".into())),
    }
}

/// The suite's record sealer for `secrets`. TLS 1.2's 12-byte IV is the key block's fixed IV
/// followed by its explicit nonce part (what `Tls12AeadAlgorithm::extract_keys` joined).
fn sealer(
    suite: SupportedCipherSuite,
    secrets: ConnectionTrafficSecrets,
) -> Result<Box<dyn MessageEncrypter>, Error> {
    let (key, iv) = key_and_iv(secrets)?;
    Ok(match suite {
        SupportedCipherSuite::Tls13(s) => s.aead_alg.encrypter(key, iv),
        SupportedCipherSuite::Tls12(s) => {
            let fixed = s.aead_alg.key_block_shape().fixed_iv_len;
            let (fixed_iv, explicit) = iv.as_ref().split_at(fixed.min(iv.as_ref().len()));
            s.aead_alg.encrypter(key, fixed_iv, explicit)
        }
    })
}

/// The suite's record opener for `secrets` (see `sealer`).
fn opener(
    suite: SupportedCipherSuite,
    secrets: ConnectionTrafficSecrets,
) -> Result<Box<dyn MessageDecrypter>, Error> {
    let (key, iv) = key_and_iv(secrets)?;
    Ok(match suite {
        SupportedCipherSuite::Tls13(s) => s.aead_alg.decrypter(key, iv),
        SupportedCipherSuite::Tls12(s) => {
            let fixed = s.aead_alg.key_block_shape().fixed_iv_len;
            s.aead_alg
                .decrypter(key, &iv.as_ref()[..fixed.min(iv.as_ref().len())])
        }
    })
}
