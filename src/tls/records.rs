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
//!   (update_not_requested) goes out under the old send key and the send key moves on, once
//!   until we next send application data (RFC 8446 4.6.3: a peer that asks again and again and
//!   reads nothing gets no pile of answers); at most 32 in a row without application data;
//!   any other handshake message is a fatal unexpected_message, as is a ChangeCipherSpec;
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

use rustls::crypto::cipher::{AeadKey, InboundOpaqueMessage, Iv, MessageDecrypter};
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{
    AlertDescription, ConnectionTrafficSecrets, ContentType, Error, ExtractedSecrets,
    ProtocolVersion, SupportedCipherSuite,
};

use super::record_keys::RecordSealer;

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

/// Alert levels (RFC 8446 6; rustls does not export its `AlertLevel`). The descriptions are
/// rustls's `AlertDescription`.
const WARNING: u8 = 1;
const FATAL: u8 = 2;

/// Handshake message types seen after the handshake (RFC 8446 4, RFC 5246 7.4).
const CLIENT_HELLO: u8 = 1;
const KEY_UPDATE: u8 = 24;
/// A KeyUpdate message: type, 24-bit length, request.
const KEY_UPDATE_LEN: usize = 5;
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
    alert: Option<AlertDescription>,
    why: &'static str,
}

fn fatal(alert: AlertDescription, why: &'static str) -> Fatal {
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
    sealer: RecordSealer,
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
    /// Our KeyUpdate answered the peer's request and no application data went since: a
    /// further request while we are silent gets no second answer (RFC 8446 4.6.3; rustls's
    /// `should_update_key`).
    key_update_answered: bool,
    /// Our close_notify or a fatal alert is sealed: no record of ours may follow it (RFC 8446
    /// 6.1), so the peer's KeyUpdate requests and renegotiations get no answer.
    closed: bool,
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
            sealer: RecordSealer::new(suite, send)?,
            send_seq,
            send_limit: send_limit(suite),
            opener: opener(suite, receive)?,
            receive_seq,
            empty_in_a_row: 0,
            warnings_left: MAX_WARNING_ALERTS,
            key_updates_left: MAX_KEY_UPDATES,
            renegotiations_left: MAX_RENEGOTIATIONS,
            key_update_answered: false,
            closed: false,
        })
    }

    fn is_tls13(&self) -> bool {
        matches!(self.version, Version::Tls13(_))
    }

    /// Heap this session holds beyond its place in `TlsSession`: the receive key (56 bytes,
    /// `record_keys`) and, for TLS 1.3, the `KernelConnection` and rustls's traffic
    /// state inside it (224 bytes, heaptrack).
    pub fn heap_bytes(&self) -> usize {
        // The receive key's opener (the send key's sealer is inline).
        const RECORD_KEY: usize = 64;
        const TLS13_TRAFFIC_STATE: usize = 224;
        RECORD_KEY
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
            return Err(fatal(
                AlertDescription::UnexpectedMessage,
                "a record of an unknown type",
            ));
        }
        if version[0] != 3 {
            return Err(fatal(
                AlertDescription::DecodeError,
                "a record of an unknown version",
            ));
        }
        if len == 0 && ContentType::from(typ) != ContentType::ApplicationData {
            return Err(fatal(
                AlertDescription::DecodeError,
                "an empty record that is not application data",
            ));
        }
        let max = if self.is_tls13() {
            MAX_CIPHERTEXT_TLS13
        } else {
            MAX_CIPHERTEXT_TLS12
        };
        if len > max {
            return Err(fatal(
                AlertDescription::RecordOverflow,
                "a record over the length limit",
            ));
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
                AlertDescription::UnexpectedMessage,
                "a ChangeCipherSpec after the handshake",
            ));
        }
        if self.is_tls13() && outer != ContentType::ApplicationData {
            return Err(fatal(
                AlertDescription::UnexpectedMessage,
                "a TLS 1.3 record that is not application data outside",
            ));
        }
        let seq = self.receive_seq;
        let Some(next_seq) = seq.checked_add(1).filter(|&next| next < u64::MAX) else {
            return Err(fatal(
                AlertDescription::InternalError,
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
                return Err(fatal(
                    AlertDescription::UnexpectedMessage,
                    "too many empty records in a row",
                ));
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
            _ => Err(fatal(
                AlertDescription::UnexpectedMessage,
                "a record of an unexpected type",
            )),
        }
    }

    /// rustls's `CommonState::process_alert`. Ok(false) for close_notify.
    fn alert_received(&mut self, alert: &[u8]) -> Result<bool, Fatal> {
        let &[level, description] = alert else {
            return Err(fatal(
                AlertDescription::DecodeError,
                "an alert that is not two bytes",
            ));
        };
        if level != WARNING && level != FATAL {
            return Err(fatal(
                AlertDescription::IllegalParameter,
                "an alert of an unknown level",
            ));
        }
        let description = AlertDescription::from(description);
        if description == AlertDescription::CloseNotify {
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
        if self.is_tls13() && description != AlertDescription::UserCanceled {
            return Err(fatal(
                AlertDescription::DecodeError,
                "a warning alert in TLS 1.3",
            ));
        }
        Ok(true)
    }

    /// A handshake record after the handshake: one whole message (see the module doc).
    fn handshake_received(&mut self, record: &[u8], outgoing: &mut Vec<u8>) -> Result<(), Fatal> {
        let Some((&[typ, a, b, c], body)) = record.split_first_chunk::<4>() else {
            return Err(fatal(
                AlertDescription::UnexpectedMessage,
                "a handshake message split over records",
            ));
        };
        let len = u32::from_be_bytes([0, a, b, c]) as usize;
        if body.len() < len {
            return Err(fatal(
                AlertDescription::UnexpectedMessage,
                "a handshake message split over records",
            ));
        }
        let (message, after) = body.split_at(len);
        match (&self.version, typ) {
            (Version::Tls13(_), KEY_UPDATE) => {
                let &[request] = message else {
                    return Err(fatal(
                        AlertDescription::DecodeError,
                        "a KeyUpdate of the wrong length",
                    ));
                };
                // A key change must end its record (RFC 8446 5.1).
                if !after.is_empty() {
                    return Err(fatal(
                        AlertDescription::UnexpectedMessage,
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
                if self.closed {
                    return Ok(());
                }
                match self.seal_onto(
                    ContentType::Alert,
                    &[WARNING, u8::from(AlertDescription::NoRenegotiation)],
                    outgoing,
                )? {
                    Sealed::Data(_) => Ok(()),
                    Sealed::Closed(_) => Err(silent("the send key is used up")),
                }
            }
            _ => Err(fatal(
                AlertDescription::UnexpectedMessage,
                "a handshake message after the handshake",
            )),
        }
    }

    /// RFC 8446 4.6.3; rustls's `ExpectTraffic::handle_key_update`.
    fn key_update_received(&mut self, request: u8, outgoing: &mut Vec<u8>) -> Result<(), Fatal> {
        if request != UPDATE_NOT_REQUESTED && request != UPDATE_REQUESTED {
            return Err(fatal(
                AlertDescription::IllegalParameter,
                "a KeyUpdate with an unknown request",
            ));
        }
        if self.key_updates_left == 0 {
            return Err(silent("too many KeyUpdates without application data"));
        }
        self.key_updates_left -= 1;
        if request == UPDATE_REQUESTED && !self.key_update_answered && !self.closed {
            self.key_update_answered = true;
            // "...it MUST send a KeyUpdate with request_update set to update_not_requested
            // prior to sending its next Application Data record" (RFC 8446 4.6.3).
            self.update_send_key(UPDATE_NOT_REQUESTED, outgoing)?;
        }
        let Version::Tls13(kernel) = &mut self.version else {
            return Err(fatal(
                AlertDescription::UnexpectedMessage,
                "a KeyUpdate in TLS 1.2",
            ));
        };
        let (seq, secrets) = kernel
            .update_rx_secret()
            .map_err(|_| fatal(AlertDescription::InternalError, "no next receive key"))?;
        self.opener = opener(kernel.negotiated_cipher_suite(), secrets)
            .map_err(|_| fatal(AlertDescription::InternalError, "no next receive key"))?;
        self.receive_seq = seq;
        Ok(())
    }

    /// Sends our KeyUpdate under the current send key, then moves the send key on (TLS 1.3).
    fn update_send_key(&mut self, request: u8, out: &mut Vec<u8>) -> Result<(), Fatal> {
        let message = [KEY_UPDATE, 0, 0, 1, request];
        let at = out.len();
        out.resize(at + self.sealer.overhead() + message.len(), 0);
        let written = self.seal_raw(ContentType::Handshake, &message, &mut out[at..]);
        out.truncate(at + written.as_ref().map_or(0, |n| *n));
        written?;
        self.next_send_key()
    }

    fn next_send_key(&mut self) -> Result<(), Fatal> {
        let Version::Tls13(kernel) = &mut self.version else {
            return Err(fatal(
                AlertDescription::InternalError,
                "no key update in TLS 1.2",
            ));
        };
        let (seq, secrets) = kernel
            .update_tx_secret()
            .map_err(|_| fatal(AlertDescription::InternalError, "no next send key"))?;
        self.sealer = RecordSealer::new(kernel.negotiated_cipher_suite(), secrets)
            .map_err(|_| fatal(AlertDescription::InternalError, "no next send key"))?;
        self.send_seq = seq;
        Ok(())
    }

    /// Seals `payload` (at most 2^14 bytes) as one record of application data into `out`,
    /// after our KeyUpdate if the send key would otherwise reach its limit (TLS 1.3), or
    /// close_notify instead of it (TLS 1.2). `out` must have `room(payload.len())` bytes;
    /// less is an error, never a panic.
    #[cfg(test)]
    pub fn seal(&mut self, payload: &[u8], out: &mut [u8]) -> Result<Sealed, Failure> {
        self.seal_with_limit(ContentType::ApplicationData, out, copy_of(payload))
            .map_err(|fatal| Failure(fatal.why))
    }

    /// `seal`, with the plaintext written by `fill` straight into its place in the record:
    /// `fill` is given room for the record's plaintext (at most 2^14 bytes, less when `out`
    /// is shorter) and returns how much it wrote. One copy of each byte, however many pieces
    /// the record gathers (the fan-out's many messages), and no buffer of its own. `out`
    /// should have `room(16 KiB)` bytes.
    pub fn seal_with(
        &mut self,
        out: &mut [u8],
        fill: impl FnOnce(&mut [u8]) -> usize,
    ) -> Result<Sealed, Failure> {
        self.seal_with_limit(ContentType::ApplicationData, out, |room| Some(fill(room)))
            .map_err(|fatal| Failure(fatal.why))
    }

    /// Room to seal `payload_len` bytes of plaintext: its record, and our KeyUpdate before it
    /// when the send key is used up.
    pub fn room(&self, payload_len: usize) -> usize {
        payload_len + KEY_UPDATE_LEN + 2 * self.sealer.overhead()
    }

    /// Seals our close_notify onto `outgoing` (it may take the key's last sequence number).
    pub fn close_notify(&mut self, outgoing: &mut Vec<u8>) -> Result<(), Failure> {
        self.seal_final_alert(WARNING, AlertDescription::CloseNotify, outgoing)
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
        description: AlertDescription,
        outgoing: &mut Vec<u8>,
    ) -> Result<(), Fatal> {
        let at = outgoing.len();
        outgoing.resize(at + self.sealer.overhead() + 2, 0);
        let written = self.seal_raw(
            ContentType::Alert,
            &[level, u8::from(description)],
            &mut outgoing[at..],
        );
        outgoing.truncate(at + written.as_ref().map_or(0, |n| *n));
        self.closed = true;
        written.map(|_| ())
    }

    /// Our close_notify went before the session left rustls: nothing of ours may follow it.
    pub fn mark_closed(&mut self) {
        self.closed = true;
    }

    /// `seal_with_limit` onto the end of a `Vec`.
    fn seal_onto(
        &mut self,
        typ: ContentType,
        payload: &[u8],
        outgoing: &mut Vec<u8>,
    ) -> Result<Sealed, Fatal> {
        let at = outgoing.len();
        outgoing.resize(at + self.room(payload.len()), 0);
        let sealed = self.seal_with_limit(typ, &mut outgoing[at..], copy_of(payload));
        let written = match &sealed {
            Ok(Sealed::Data(n) | Sealed::Closed(n)) => *n,
            Err(_) => 0,
        };
        outgoing.truncate(at + written);
        sealed
    }

    /// The confidentiality limit (rustls's `PreEncryptAction::RefreshOrClose`): a record that
    /// is not the key's last must leave it one more sequence number, for our KeyUpdate (TLS
    /// 1.3) or close_notify (TLS 1.2). The record's plaintext is written by `fill` into the
    /// room it is given (None: it does not fit, an error).
    fn seal_with_limit(
        &mut self,
        typ: ContentType,
        out: &mut [u8],
        fill: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) -> Result<Sealed, Fatal> {
        let mut written = 0;
        if self.send_seq.saturating_add(1) >= self.send_limit {
            if !self.is_tls13() {
                let n = self.seal_raw(
                    ContentType::Alert,
                    &[WARNING, u8::from(AlertDescription::CloseNotify)],
                    out,
                )?;
                self.closed = true;
                return Ok(Sealed::Closed(n));
            }
            written += self.seal_raw(
                ContentType::Handshake,
                &[KEY_UPDATE, 0, 0, 1, UPDATE_REQUESTED],
                out,
            )?;
            self.next_send_key()?;
        }
        let record = &mut out[written..];
        let offset = self.sealer.payload_offset();
        let room = record
            .len()
            .saturating_sub(self.sealer.overhead())
            .min(MAX_FRAGMENT);
        let filled = record
            .get_mut(offset..offset + room)
            .and_then(fill)
            .filter(|&n| n <= room)
            .ok_or_else(|| silent("no room to seal a record"))?;
        written += self.seal_written(typ, filled, record)?;
        if typ == ContentType::ApplicationData {
            self.key_update_answered = false;
        }
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
        let offset = self.sealer.payload_offset();
        let Some(plain) = out.get_mut(offset..offset + payload.len()) else {
            return Err(silent("no room to seal a record"));
        };
        plain.copy_from_slice(payload);
        self.seal_written(typ, payload.len(), out)
    }

    /// Seals the `payload_len` bytes of plaintext already at `out[payload_offset..]` as one
    /// record at the next sequence number; returns its length.
    fn seal_written(
        &mut self,
        typ: ContentType,
        payload_len: usize,
        out: &mut [u8],
    ) -> Result<usize, Fatal> {
        if payload_len > MAX_FRAGMENT {
            return Err(fatal(
                AlertDescription::InternalError,
                "a record of more than 16 KiB to seal",
            ));
        }
        if self.send_seq >= self.send_limit {
            return Err(fatal(
                AlertDescription::InternalError,
                "the send key is used up",
            ));
        }
        let len = self
            .sealer
            .seal_in_place(self.send_seq, typ, payload_len, out)
            .map_err(|_| silent("a record could not be sealed"))?;
        self.send_seq += 1;
        Ok(len)
    }
}

/// A `fill` for `seal_with_limit` that copies `payload`, or refuses if it does not fit.
fn copy_of(payload: &[u8]) -> impl FnOnce(&mut [u8]) -> Option<usize> + '_ {
    move |room| {
        let place = room.get_mut(..payload.len())?;
        place.copy_from_slice(payload);
        Some(payload.len())
    }
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
        Error::DecryptError => fatal(
            AlertDescription::BadRecordMac,
            "a record that does not decrypt",
        ),
        Error::PeerSentOversizedRecord => fatal(
            AlertDescription::RecordOverflow,
            "a record of more than 16 KiB of plaintext",
        ),
        Error::PeerMisbehaved(_) => fatal(
            AlertDescription::UnexpectedMessage,
            "a protected ChangeCipherSpec or a record without an inner type",
        ),
        _ => fatal(
            AlertDescription::DecodeError,
            "a record that could not be read",
        ),
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

/// The suite's record opener for `secrets`. TLS 1.2's 12-byte IV is the key block's fixed IV
/// followed by its explicit nonce part (what `Tls12AeadAlgorithm::extract_keys` joined).
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

#[cfg(test)]
mod tests {
    //! An `Established` session against rustls's own client, in memory: the handshake by
    //! rustls on both sides (the server side as `TlsSession` runs it, unbuffered), then the
    //! server side converted, and its records read by the client and the client's by it.
    use std::io::{Read, Write};
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use rustls::server::UnbufferedServerConnection;
    use rustls::unbuffered::ConnectionState;
    use rustls::{ClientConfig, ClientConnection, RootCertStore, SupportedProtocolVersion};

    use super::*;

    const CERT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/tls/cert.pem");
    const KEY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/tls/key.pem");

    fn client(version: &'static SupportedProtocolVersion) -> ClientConnection {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(CERT).unwrap())
            .unwrap();
        let config = ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap()).unwrap()
    }

    /// Bytes the client has to send.
    fn client_output(client: &mut ClientConnection) -> Vec<u8> {
        let mut bytes = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut bytes).unwrap();
        }
        bytes
    }

    /// Gives the client `records`; returns the plaintext it can read then, and whether it saw
    /// close_notify.
    fn client_reads(client: &mut ClientConnection, records: &[u8]) -> (Vec<u8>, bool) {
        let mut input = records;
        while !input.is_empty() {
            client.read_tls(&mut input).unwrap();
            client.process_new_packets().unwrap();
        }
        let mut plaintext = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match client.reader().read(&mut buf) {
                Ok(0) => return (plaintext, true),
                Ok(n) => plaintext.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return (plaintext, false),
                Err(e) => panic!("client read: {e}"),
            }
        }
    }

    /// A handshake in memory; the server side converted as `TlsSession::establish` does.
    fn established(version: &'static SupportedProtocolVersion) -> (Established, ClientConnection) {
        let config = crate::tls::load_server_config(CERT.as_ref(), KEY.as_ref()).unwrap();
        let mut server = UnbufferedServerConnection::new(config).unwrap();
        let mut client = client(version);
        let mut incoming = Vec::new();
        for _ in 0..10 {
            incoming.extend_from_slice(&client_output(&mut client));
            let mut outgoing = Vec::new();
            let mut traffic = false;
            loop {
                let status = server.process_tls_records(&mut incoming);
                let discard = status.discard;
                let mut done = false;
                match status.state.unwrap() {
                    ConnectionState::EncodeTlsData(mut encode) => {
                        let at = outgoing.len();
                        outgoing.resize(at + 8192, 0);
                        let n = encode.encode(&mut outgoing[at..]).unwrap();
                        outgoing.truncate(at + n);
                    }
                    ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                    ConnectionState::WriteTraffic(_) => {
                        traffic = true;
                        done = true;
                    }
                    _ => done = true,
                }
                incoming.drain(..discard);
                if done {
                    break;
                }
            }
            client_reads(&mut client, &outgoing);
            if traffic && incoming.is_empty() && !server.is_handshaking() {
                let (secrets, kernel) = server.dangerous_into_kernel_connection().unwrap();
                return (Established::new(secrets, kernel).unwrap(), client);
            }
        }
        panic!("no handshake");
    }

    fn seal(session: &mut Established, payload: &[u8]) -> (Sealed, Vec<u8>) {
        let mut out = vec![0u8; session.room(payload.len())];
        let sealed = session.seal(payload, &mut out).unwrap();
        let (Sealed::Data(n) | Sealed::Closed(n)) = sealed;
        out.truncate(n);
        (sealed, out)
    }

    /// Opens `records`; the plaintext, or the failure and the alert records sent.
    fn open(
        session: &mut Established,
        records: &[u8],
    ) -> (Result<Opened, Failure>, Vec<u8>, Vec<u8>) {
        let mut records = records.to_vec();
        let mut plaintext = Vec::new();
        let mut outgoing = Vec::new();
        let opened = session.open(
            &mut records,
            &mut |p| plaintext.extend_from_slice(p),
            &mut outgoing,
        );
        (opened, plaintext, outgoing)
    }

    #[test]
    fn records_go_both_ways_in_both_versions() {
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let (mut server, mut client) = established(version);
            let (_, records) = seal(&mut server, b"from the server");
            assert_eq!(client_reads(&mut client, &records).0, b"from the server");
            client.writer().write_all(b"from the client").unwrap();
            let records = client_output(&mut client);
            let (opened, plaintext, answer) = open(&mut server, &records);
            assert_eq!(opened.unwrap(), Opened::Consumed(records.len()));
            assert_eq!(plaintext, b"from the client");
            assert!(answer.is_empty());
            // An incomplete record waits.
            client.writer().write_all(b"split").unwrap();
            let records = client_output(&mut client);
            let (opened, plaintext, _) = open(&mut server, &records[..records.len() - 1]);
            assert_eq!(opened.unwrap(), Opened::Consumed(0));
            assert!(plaintext.is_empty());
            let (opened, plaintext, _) = open(&mut server, &records);
            assert_eq!(opened.unwrap(), Opened::Consumed(records.len()));
            assert_eq!(plaintext, b"split");
        }
    }

    #[test]
    fn a_tls13_send_key_at_its_limit_is_updated_first() {
        let (mut server, mut client) = established(&rustls::version::TLS13);
        // AES-128-GCM's limit, from the suite (rustls: 2^24 records).
        assert_eq!(server.send_limit, 1 << 24);
        // Two records left under this key: the next record may take one, the one after must
        // leave the last for our KeyUpdate.
        server.send_limit = server.send_seq + 2;
        let (sealed, first) = seal(&mut server, b"one");
        assert!(matches!(sealed, Sealed::Data(_)));
        let (sealed, second) = seal(&mut server, b"two");
        assert!(matches!(sealed, Sealed::Data(_)));
        assert_eq!(server.send_seq, 1, "a new key: its record 0 was \"two\"");
        let (plaintext, closed) = client_reads(&mut client, &[first, second].concat());
        assert_eq!(plaintext, b"onetwo");
        assert!(!closed);
        // The client answered our request with its own KeyUpdate: the server's receive key
        // moves on, and the client's data under its new key opens.
        client.writer().write_all(b"after").unwrap();
        let records = client_output(&mut client);
        let (opened, plaintext, answer) = open(&mut server, &records);
        assert_eq!(opened.unwrap(), Opened::Consumed(records.len()));
        assert_eq!(plaintext, b"after");
        assert!(answer.is_empty(), "update_not_requested needs no answer");
        assert_eq!(server.receive_seq, 1);
    }

    #[test]
    fn a_tls12_send_key_at_its_limit_closes_the_session() {
        let (mut server, mut client) = established(&rustls::version::TLS12);
        assert_eq!(server.send_limit, 1 << 24);
        server.send_limit = server.send_seq + 2;
        let (sealed, first) = seal(&mut server, b"one");
        assert!(matches!(sealed, Sealed::Data(_)));
        let (sealed, second) = seal(&mut server, b"two");
        assert!(matches!(sealed, Sealed::Closed(_)));
        let (plaintext, closed) = client_reads(&mut client, &[first, second].concat());
        assert_eq!(plaintext, b"one");
        assert!(closed, "close_notify instead of \"two\"");
        // Nothing more is sealed under that key.
        let mut out = vec![0u8; 256];
        assert!(server.seal(b"three", &mut out).is_err());
    }

    #[test]
    fn a_key_update_the_client_requests_is_answered_under_the_old_key() {
        let (mut server, mut client) = established(&rustls::version::TLS13);
        // rustls's client asks for an update (update_requested).
        client.refresh_traffic_keys().unwrap();
        client.writer().write_all(b"new keys").unwrap();
        let records = client_output(&mut client);
        let (opened, plaintext, answer) = open(&mut server, &records);
        assert_eq!(opened.unwrap(), Opened::Consumed(records.len()));
        assert_eq!(plaintext, b"new keys");
        assert!(!answer.is_empty(), "our KeyUpdate");
        assert_eq!(server.send_seq, 0, "the send key moved on");
        let (_, data) = seal(&mut server, b"under the new key");
        let (plaintext, _) = client_reads(&mut client, &[answer, data].concat());
        assert_eq!(plaintext, b"under the new key");
    }

    #[test]
    fn a_record_that_does_not_open_is_a_fatal_bad_record_mac() {
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let (mut server, mut client) = established(version);
            client.writer().write_all(b"tampered").unwrap();
            let mut records = client_output(&mut client);
            let last = records.len() - 1;
            records[last] ^= 0x80;
            let (opened, plaintext, alert) = open(&mut server, &records);
            assert!(opened.is_err());
            assert!(plaintext.is_empty());
            // The client opens our alert: fatal bad_record_mac.
            let mut input = &alert[..];
            client.read_tls(&mut input).unwrap();
            let error = client.process_new_packets().unwrap_err();
            assert_eq!(
                error,
                rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac)
            );
        }
    }

    #[test]
    fn headers_are_judged_before_the_body_arrives() {
        for (version, max) in [
            (&rustls::version::TLS13, MAX_CIPHERTEXT_TLS13),
            (&rustls::version::TLS12, MAX_CIPHERTEXT_TLS12),
        ] {
            let (mut server, _client) = established(version);
            let mut header = vec![0x17, 0x03, 0x03];
            header.extend_from_slice(&(max as u16).to_be_bytes());
            let (opened, _, _) = open(&mut server, &header);
            assert_eq!(opened.unwrap(), Opened::Consumed(0), "{max} bytes may come");
            header[3..5].copy_from_slice(&(max as u16 + 1).to_be_bytes());
            let (opened, _, alert) = open(&mut server, &header);
            assert!(opened.is_err(), "{} bytes may not", max + 1);
            assert!(!alert.is_empty(), "record_overflow");
            for bad in [
                [0x99, 0x03, 0x03, 0x00, 0x20],
                [0x17, 0x02, 0x00, 0x00, 0x20],
                [0x15, 0x03, 0x03, 0x00, 0x00],
            ]
            .iter()
            .map(|header| header.to_vec())
            .chain([vec![0x14, 0x03, 0x03, 0x00, 0x01, 0x01]])
            {
                let (mut server, _client) = established(version);
                let (opened, _, alert) = open(&mut server, &bad);
                assert!(opened.is_err(), "{bad:02x?}");
                assert!(!alert.is_empty(), "{bad:02x?}: an alert");
            }
        }
    }

    /// RFC 8446 4.6.3 ("an implementation which receives multiple KeyUpdates while it is
    /// silent [responds] with a single update"; rustls: `should_update_key`). Answered each,
    /// 32 requests per byte of application data from a client that reads nothing made the
    /// server owe it about as many bytes as it sent (86 400 here; review, 2026-12-08).
    #[test]
    fn key_update_requests_while_silent_are_answered_once() {
        let (mut server, mut client) = established(&rustls::version::TLS13);
        let (mut sent, mut answered) = (0usize, 0usize);
        for _ in 0..100 {
            client.writer().write_all(b"x").unwrap();
            for _ in 0..32 {
                client.refresh_traffic_keys().unwrap();
            }
            let records = client_output(&mut client);
            sent += records.len();
            let (opened, _, answer) = open(&mut server, &records);
            opened.unwrap();
            answered += answer.len();
        }
        assert!(
            sent > 100 * 32 * 20,
            "the client sent its requests ({sent} bytes)"
        );
        assert!(
            answered <= 100 * 27,
            "{answered} bytes of KeyUpdates owed to a silent peer"
        );
    }

    /// After our close_notify nothing of ours goes out (RFC 8446 6.1), though the peer may
    /// still send until its own: its KeyUpdate request moves our receive key on, unanswered.
    #[test]
    fn nothing_is_sent_after_our_close_notify() {
        let (mut server, mut client) = established(&rustls::version::TLS13);
        let mut closing = Vec::new();
        server.close_notify(&mut closing).unwrap();
        assert!(!closing.is_empty());
        client.refresh_traffic_keys().unwrap();
        client.writer().write_all(b"still talking").unwrap();
        let records = client_output(&mut client);
        let (opened, plaintext, answer) = open(&mut server, &records);
        opened.unwrap();
        assert_eq!(plaintext, b"still talking");
        assert!(
            answer.is_empty(),
            "{} bytes sent after close_notify",
            answer.len()
        );
    }
}
