//! Record protection that keeps only the key bytes per session.
//!
//! rustls's ring provider gives every session an encrypter and a decrypter holding ring's
//! expanded key: `LessSafeKey` is sized for its largest variant (AES-GCM's round keys and
//! GHASH table), 560 bytes each, which were a third of an idle TLS connection's heap (dhat,
//! docs/benchmarks.md). An idle connection does not encrypt, so here each encrypter and
//! decrypter keeps the raw key (at most 32 bytes) and the IV, and expands the key on the stack
//! for each record: 64 bytes on the heap instead of 560, for a key expansion per record
//! (AES-NI and CLMUL make it a small fraction of sealing one record; measured in
//! docs/benchmarks.md).
//!
//! This is rustls's public extension point for cipher suites (`Tls13AeadAlgorithm`,
//! `Tls12AeadAlgorithm`, `MessageEncrypter`, `MessageDecrypter`), and the record formats below
//! are those of rustls's own ring glue (`rustls/src/crypto/ring/tls13.rs`, `tls12.rs`) line for
//! line: RFC 8446 5.2 for TLS 1.3, RFC 5288 (GCM, explicit nonce) and RFC 7905 (ChaCha20-Poly1305)
//! for TLS 1.2. The key schedule stays rustls's; rustls runs the record layer during the handshake,
//! `super::records` after it, both with these keys.

use std::sync::OnceLock;

use ring::aead;
use rustls::crypto::cipher::{
    AeadKey, InboundOpaqueMessage, InboundPlainMessage, Iv, KeyBlockShape, MessageDecrypter,
    MessageEncrypter, NONCE_LEN, Nonce, OutboundOpaqueMessage, OutboundPlainMessage,
    PrefixedPayload, Tls12AeadAlgorithm, Tls13AeadAlgorithm, UnsupportedOperationError,
    make_tls12_aad, make_tls13_aad,
};
use rustls::{
    CipherSuite, CipherSuiteCommon, ConnectionTrafficSecrets, ContentType, Error, ProtocolVersion,
    SupportedCipherSuite, Tls12CipherSuite, Tls13CipherSuite,
};
use zeroize::Zeroize;

/// The largest plaintext of a TLS record (RFC 8446 5.1, RFC 5246 6.2.1).
const MAX_FRAGMENT_LEN: usize = 16 * 1024;
/// TLS 1.2 AES-GCM: the nonce's explicit part, sent before the ciphertext (RFC 5288 3).
const GCM_EXPLICIT_NONCE_LEN: usize = 8;
const TAG_LEN: usize = 16;

/// `suites` with each AEAD this module knows replaced by its compact form; other suites are
/// kept as they are. The suites are built once per process (rustls wants `'static` ones) and
/// shared by every config, reloads included.
pub fn compact(suites: &[SupportedCipherSuite]) -> Vec<SupportedCipherSuite> {
    static BUILT: OnceLock<Vec<SupportedCipherSuite>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        use rustls::crypto::ring::cipher_suite as ring_suites;
        [
            ring_suites::TLS13_AES_128_GCM_SHA256,
            ring_suites::TLS13_AES_256_GCM_SHA384,
            ring_suites::TLS13_CHACHA20_POLY1305_SHA256,
            ring_suites::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            ring_suites::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            ring_suites::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            ring_suites::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            ring_suites::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            ring_suites::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ]
        .into_iter()
        .filter_map(compact_one)
        .collect()
    });
    suites
        .iter()
        .map(|suite| {
            built
                .iter()
                .find(|c| c.suite() == suite.suite())
                .copied()
                .unwrap_or(*suite)
        })
        .collect()
}

/// The compact twin of one of ring's suites: the same hash, key schedule and limits, the AEAD
/// swapped. Leaks the new suite: called once per suite per process.
fn compact_one(suite: SupportedCipherSuite) -> Option<SupportedCipherSuite> {
    match suite {
        SupportedCipherSuite::Tls13(s) => {
            let aead_alg: &'static dyn Tls13AeadAlgorithm = match s.common.suite {
                CipherSuite::TLS13_AES_128_GCM_SHA256 => &TLS13_AES_128_GCM,
                CipherSuite::TLS13_AES_256_GCM_SHA384 => &TLS13_AES_256_GCM,
                CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => &TLS13_CHACHA20_POLY1305,
                _ => return None,
            };
            Some(SupportedCipherSuite::Tls13(Box::leak(Box::new(
                Tls13CipherSuite {
                    common: common(&s.common),
                    hkdf_provider: s.hkdf_provider,
                    aead_alg,
                    quic: s.quic,
                },
            ))))
        }
        SupportedCipherSuite::Tls12(s) => {
            let aead_alg: &'static dyn Tls12AeadAlgorithm = match s.common.suite {
                CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => &TLS12_AES_128_GCM,
                CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                | CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => &TLS12_AES_256_GCM,
                CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
                | CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => &Tls12ChaCha,
                _ => return None,
            };
            Some(SupportedCipherSuite::Tls12(Box::leak(Box::new(
                Tls12CipherSuite {
                    common: common(&s.common),
                    prf_provider: s.prf_provider,
                    kx: s.kx,
                    sign: s.sign,
                    aead_alg,
                },
            ))))
        }
    }
}

static TLS13_AES_128_GCM: Tls13Aead = Tls13Aead(&aead::AES_128_GCM);
static TLS13_AES_256_GCM: Tls13Aead = Tls13Aead(&aead::AES_256_GCM);
static TLS13_CHACHA20_POLY1305: Tls13Aead = Tls13Aead(&aead::CHACHA20_POLY1305);
static TLS12_AES_128_GCM: Tls12Gcm = Tls12Gcm(&aead::AES_128_GCM);
static TLS12_AES_256_GCM: Tls12Gcm = Tls12Gcm(&aead::AES_256_GCM);

fn common(c: &CipherSuiteCommon) -> CipherSuiteCommon {
    CipherSuiteCommon {
        suite: c.suite,
        hash_provider: c.hash_provider,
        confidentiality_limit: c.confidentiality_limit,
    }
}

/// A record key as bytes; expanded for one record at a time. Zeroed when dropped, as rustls
/// does with its `AeadKey`.
struct RecordKey {
    algorithm: &'static aead::Algorithm,
    bytes: [u8; 32],
}

impl RecordKey {
    fn new(algorithm: &'static aead::Algorithm, key: &AeadKey) -> Self {
        let mut bytes = [0u8; 32];
        let key = key.as_ref();
        // rustls hands over `key_len()` bytes (the suite's key length, at most 32).
        let len = key.len().min(bytes.len());
        bytes[..len].copy_from_slice(&key[..len]);
        RecordKey { algorithm, bytes }
    }

    /// The key expanded for ring, on the caller's stack.
    fn expand(&self) -> Result<aead::LessSafeKey, Error> {
        let len = self.algorithm.key_len();
        aead::UnboundKey::new(self.algorithm, &self.bytes[..len])
            .map(aead::LessSafeKey::new)
            .map_err(|_| Error::EncryptError)
    }
}

impl Drop for RecordKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

/// A record key and the IV that, XORed with a record's sequence number, is its nonce: what
/// every sealer and opener here holds but TLS 1.2 AES-GCM's opener, whose nonce comes with
/// the record.
struct SequencedKey {
    key: RecordKey,
    iv: [u8; NONCE_LEN],
}

impl SequencedKey {
    fn new(algorithm: &'static aead::Algorithm, key: &AeadKey, iv: [u8; NONCE_LEN]) -> Self {
        SequencedKey {
            key: RecordKey::new(algorithm, key),
            iv,
        }
    }

    fn nonce(&self, seq: u64) -> aead::Nonce {
        aead::Nonce::assume_unique_for_key(Nonce::new(&Iv::from(self.iv), seq).0)
    }

    /// Encrypts `payload` in place and appends the tag.
    fn seal(
        &self,
        seq: u64,
        aad: impl AsRef<[u8]>,
        payload: &mut PrefixedPayload,
    ) -> Result<(), Error> {
        self.key
            .expand()?
            .seal_in_place_append_tag(self.nonce(seq), aead::Aad::from(aad), payload)
            .map_err(|_| Error::EncryptError)
    }

    /// Decrypts `payload` (ciphertext and tag) in place; returns the plaintext's length.
    fn open(&self, seq: u64, aad: impl AsRef<[u8]>, payload: &mut [u8]) -> Result<usize, Error> {
        let key = self.key.expand().map_err(|_| Error::DecryptError)?;
        key.open_in_place(self.nonce(seq), aead::Aad::from(aad), payload)
            .map(|plain| plain.len())
            .map_err(|_| Error::DecryptError)
    }
}

/// A record's header: type, version, length.
const HEADER_LEN: usize = 5;

/// Seals records straight into the caller's buffer, for the record layer wschat runs once the
/// handshake is over (`super::records`). rustls's `MessageEncrypter` returns each record in a
/// buffer of its own, which the caller then copies out: at 4 KiB per message that allocation
/// and the second copy of every byte were a tenth of the server's CPU in a TLS fan-out
/// (perf, docs/benchmarks.md). Here the caller writes the plaintext once, at
/// `payload_offset()` of its buffer, and `seal_in_place` writes the header, TLS 1.2 GCM's
/// explicit nonce, TLS 1.3's inner type and the tag around it. The records are those of the
/// sealers below, byte for byte (unit test).
pub struct RecordSealer {
    key: SequencedKey,
    format: RecordFormat,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum RecordFormat {
    /// RFC 8446 5.2: outer type application_data, the real type after the plaintext.
    Tls13,
    /// RFC 5288: an 8-byte explicit nonce before the ciphertext.
    Tls12Gcm,
    /// RFC 7905: nothing but the ciphertext and the tag.
    Tls12ChaCha,
}

impl RecordSealer {
    /// The sealer for one direction's traffic secrets (`dangerous_into_kernel_connection`,
    /// `KernelConnection::update_tx_secret`) of a session of `suite`.
    pub fn new(
        suite: SupportedCipherSuite,
        secrets: ConnectionTrafficSecrets,
    ) -> Result<Self, Error> {
        let (algorithm, key, iv): (&'static aead::Algorithm, _, _) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => return Err(Error::General("an AEAD wschat does not know".into())),
        };
        let format = match suite {
            SupportedCipherSuite::Tls13(_) => RecordFormat::Tls13,
            SupportedCipherSuite::Tls12(_) if algorithm == &aead::CHACHA20_POLY1305 => {
                RecordFormat::Tls12ChaCha
            }
            SupportedCipherSuite::Tls12(_) => RecordFormat::Tls12Gcm,
        };
        // TLS 1.2's IV here is the whole nonce base: the GCM salt and explicit part joined, or
        // ChaCha20-Poly1305's 12 bytes (what `extract_keys` below hands rustls).
        Ok(RecordSealer {
            key: SequencedKey::new(algorithm, &key, iv_bytes(&iv)),
            format,
        })
    }

    /// Where a record's plaintext starts in its buffer.
    pub fn payload_offset(&self) -> usize {
        match self.format {
            RecordFormat::Tls12Gcm => HEADER_LEN + GCM_EXPLICIT_NONCE_LEN,
            RecordFormat::Tls13 | RecordFormat::Tls12ChaCha => HEADER_LEN,
        }
    }

    /// The bytes a record adds to its plaintext.
    pub fn overhead(&self) -> usize {
        self.payload_offset()
            + TAG_LEN
            + match self.format {
                RecordFormat::Tls13 => 1,
                RecordFormat::Tls12Gcm | RecordFormat::Tls12ChaCha => 0,
            }
    }

    /// Seals the record whose `payload_len` bytes of plaintext of type `typ` the caller wrote
    /// at `record[payload_offset()..]`, with sequence number `seq`; returns the record's
    /// length. A buffer shorter than the record, or more than 2^14 bytes of plaintext, is an
    /// error, never a panic.
    pub fn seal_in_place(
        &self,
        seq: u64,
        typ: ContentType,
        payload_len: usize,
        record: &mut [u8],
    ) -> Result<usize, Error> {
        let len = payload_len + self.overhead();
        if payload_len > MAX_FRAGMENT_LEN || record.len() < len {
            return Err(Error::EncryptError);
        }
        let body_len = len - HEADER_LEN;
        let nonce = self.key.nonce(seq);
        let key = self.key.key.expand()?;
        let (outer_type, sealed) = match self.format {
            RecordFormat::Tls13 => {
                record[HEADER_LEN + payload_len] = typ.to_array()[0];
                let aad = aead::Aad::from(make_tls13_aad(body_len));
                let plain = &mut record[HEADER_LEN..HEADER_LEN + payload_len + 1];
                (
                    ContentType::ApplicationData,
                    key.seal_in_place_separate_tag(nonce, aad, plain),
                )
            }
            RecordFormat::Tls12Gcm | RecordFormat::Tls12ChaCha => {
                let start = self.payload_offset();
                record[HEADER_LEN..start]
                    .copy_from_slice(&nonce.as_ref()[4..4 + start - HEADER_LEN]);
                let aad = aead::Aad::from(make_tls12_aad(
                    seq,
                    typ,
                    ProtocolVersion::TLSv1_2,
                    payload_len,
                ));
                let plain = &mut record[start..start + payload_len];
                (typ, key.seal_in_place_separate_tag(nonce, aad, plain))
            }
        };
        let tag = sealed.map_err(|_| Error::EncryptError)?;
        record[len - TAG_LEN..len].copy_from_slice(tag.as_ref());
        record[0] = outer_type.to_array()[0];
        // Every record says TLS 1.2 outside, TLS 1.3's too (RFC 8446 5.1).
        record[1..3].copy_from_slice(&[3, 3]);
        record[3..5].copy_from_slice(&(body_len as u16).to_be_bytes());
        Ok(len)
    }
}

fn iv_bytes(iv: &Iv) -> [u8; NONCE_LEN] {
    let mut bytes = [0u8; NONCE_LEN];
    bytes.copy_from_slice(iv.as_ref());
    bytes
}

/// TLS 1.3's record protection for one AEAD (RFC 8446 5.2).
struct Tls13Aead(&'static aead::Algorithm);

impl Tls13AeadAlgorithm for Tls13Aead {
    fn encrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageEncrypter> {
        Box::new(Tls13Sealer(SequencedKey::new(self.0, &key, iv_bytes(&iv))))
    }

    fn decrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageDecrypter> {
        Box::new(Tls13Opener(SequencedKey::new(self.0, &key, iv_bytes(&iv))))
    }

    fn key_len(&self) -> usize {
        self.0.key_len()
    }

    fn extract_keys(
        &self,
        key: AeadKey,
        iv: Iv,
    ) -> Result<ConnectionTrafficSecrets, UnsupportedOperationError> {
        traffic_secrets(self.0, key, iv)
    }
}

fn traffic_secrets(
    algorithm: &'static aead::Algorithm,
    key: AeadKey,
    iv: Iv,
) -> Result<ConnectionTrafficSecrets, UnsupportedOperationError> {
    if algorithm == &aead::AES_128_GCM {
        Ok(ConnectionTrafficSecrets::Aes128Gcm { key, iv })
    } else if algorithm == &aead::AES_256_GCM {
        Ok(ConnectionTrafficSecrets::Aes256Gcm { key, iv })
    } else if algorithm == &aead::CHACHA20_POLY1305 {
        Ok(ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv })
    } else {
        Err(UnsupportedOperationError)
    }
}

struct Tls13Sealer(SequencedKey);

struct Tls13Opener(SequencedKey);

impl MessageEncrypter for Tls13Sealer {
    fn encrypt(
        &mut self,
        msg: OutboundPlainMessage<'_>,
        seq: u64,
    ) -> Result<OutboundOpaqueMessage, Error> {
        let total_len = self.encrypted_payload_len(msg.payload.len());
        let mut payload = PrefixedPayload::with_capacity(total_len);
        payload.extend_from_chunks(&msg.payload);
        payload.extend_from_slice(&msg.typ.to_array());
        self.0.seal(seq, make_tls13_aad(total_len), &mut payload)?;
        // Every TLS 1.3 record says application data and TLS 1.2 (RFC 8446 5.1, 5.2).
        Ok(OutboundOpaqueMessage::new(
            rustls::ContentType::ApplicationData,
            ProtocolVersion::TLSv1_2,
            payload,
        ))
    }

    fn encrypted_payload_len(&self, payload_len: usize) -> usize {
        payload_len + 1 + TAG_LEN
    }
}

impl MessageDecrypter for Tls13Opener {
    fn decrypt<'a>(
        &mut self,
        mut msg: InboundOpaqueMessage<'a>,
        seq: u64,
    ) -> Result<InboundPlainMessage<'a>, Error> {
        let payload = &mut msg.payload;
        if payload.len() < TAG_LEN {
            return Err(Error::DecryptError);
        }
        let aad = make_tls13_aad(payload.len());
        let plain_len = self.0.open(seq, aad, payload)?;
        payload.truncate(plain_len);
        msg.into_tls13_unpadded_message()
    }
}

/// TLS 1.2 AES-GCM (RFC 5288): a 4-byte salt from the key block, an 8-byte explicit nonce sent
/// with each record (the IV's tail XOR the sequence number, as rustls does).
struct Tls12Gcm(&'static aead::Algorithm);

impl Tls12AeadAlgorithm for Tls12Gcm {
    fn encrypter(&self, key: AeadKey, iv: &[u8], extra: &[u8]) -> Box<dyn MessageEncrypter> {
        Box::new(Tls12GcmSealer(SequencedKey::new(
            self.0,
            &key,
            gcm_iv(iv, extra),
        )))
    }

    fn decrypter(&self, key: AeadKey, iv: &[u8]) -> Box<dyn MessageDecrypter> {
        let mut salt = [0u8; 4];
        let len = iv.len().min(salt.len());
        salt[..len].copy_from_slice(&iv[..len]);
        Box::new(Tls12GcmOpener {
            key: RecordKey::new(self.0, &key),
            salt,
        })
    }

    fn key_block_shape(&self) -> KeyBlockShape {
        KeyBlockShape {
            enc_key_len: self.0.key_len(),
            fixed_iv_len: 4,
            explicit_nonce_len: GCM_EXPLICIT_NONCE_LEN,
        }
    }

    fn extract_keys(
        &self,
        key: AeadKey,
        iv: &[u8],
        explicit: &[u8],
    ) -> Result<ConnectionTrafficSecrets, UnsupportedOperationError> {
        traffic_secrets(self.0, key, Iv::from(gcm_iv(iv, explicit)))
    }
}

fn gcm_iv(salt: &[u8], explicit: &[u8]) -> [u8; NONCE_LEN] {
    let mut iv = [0u8; NONCE_LEN];
    let salt_len = salt.len().min(4);
    iv[..salt_len].copy_from_slice(&salt[..salt_len]);
    let explicit_len = explicit.len().min(GCM_EXPLICIT_NONCE_LEN);
    iv[4..4 + explicit_len].copy_from_slice(&explicit[..explicit_len]);
    iv
}

struct Tls12GcmSealer(SequencedKey);

struct Tls12GcmOpener {
    key: RecordKey,
    salt: [u8; 4],
}

impl MessageEncrypter for Tls12GcmSealer {
    fn encrypt(
        &mut self,
        msg: OutboundPlainMessage<'_>,
        seq: u64,
    ) -> Result<OutboundOpaqueMessage, Error> {
        let key = self.0.key.expand()?;
        let total_len = self.encrypted_payload_len(msg.payload.len());
        let mut payload = PrefixedPayload::with_capacity(total_len);
        let nonce = self.0.nonce(seq);
        let aad = aead::Aad::from(make_tls12_aad(seq, msg.typ, msg.version, msg.payload.len()));
        payload.extend_from_slice(&nonce.as_ref()[4..]);
        payload.extend_from_chunks(&msg.payload);
        let tag = key
            .seal_in_place_separate_tag(nonce, aad, &mut payload.as_mut()[GCM_EXPLICIT_NONCE_LEN..])
            .map_err(|_| Error::EncryptError)?;
        payload.extend_from_slice(tag.as_ref());
        Ok(OutboundOpaqueMessage::new(msg.typ, msg.version, payload))
    }

    fn encrypted_payload_len(&self, payload_len: usize) -> usize {
        payload_len + GCM_EXPLICIT_NONCE_LEN + TAG_LEN
    }
}

impl MessageDecrypter for Tls12GcmOpener {
    fn decrypt<'a>(
        &mut self,
        mut msg: InboundOpaqueMessage<'a>,
        seq: u64,
    ) -> Result<InboundPlainMessage<'a>, Error> {
        let payload = &msg.payload;
        if payload.len() < GCM_EXPLICIT_NONCE_LEN + TAG_LEN {
            return Err(Error::DecryptError);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..4].copy_from_slice(&self.salt);
        nonce[4..].copy_from_slice(&payload[..GCM_EXPLICIT_NONCE_LEN]);
        let nonce = aead::Nonce::assume_unique_for_key(nonce);
        let aad = aead::Aad::from(make_tls12_aad(
            seq,
            msg.typ,
            msg.version,
            payload.len() - GCM_EXPLICIT_NONCE_LEN - TAG_LEN,
        ));
        let key = self.key.expand().map_err(|_| Error::DecryptError)?;
        let payload = &mut msg.payload;
        let plain_len = key
            .open_within(nonce, aad, payload, GCM_EXPLICIT_NONCE_LEN..)
            .map_err(|_| Error::DecryptError)?
            .len();
        if plain_len > MAX_FRAGMENT_LEN {
            return Err(Error::PeerSentOversizedRecord);
        }
        payload.truncate(plain_len);
        Ok(msg.into_plain_message())
    }
}

/// TLS 1.2 ChaCha20-Poly1305 (RFC 7905): the nonce is the 12-byte IV XOR the sequence number.
struct Tls12ChaCha;

impl Tls12AeadAlgorithm for Tls12ChaCha {
    fn encrypter(&self, key: AeadKey, iv: &[u8], _extra: &[u8]) -> Box<dyn MessageEncrypter> {
        Box::new(Tls12ChaChaSealer(SequencedKey::new(
            &aead::CHACHA20_POLY1305,
            &key,
            chacha_iv(iv),
        )))
    }

    fn decrypter(&self, key: AeadKey, iv: &[u8]) -> Box<dyn MessageDecrypter> {
        Box::new(Tls12ChaChaOpener(SequencedKey::new(
            &aead::CHACHA20_POLY1305,
            &key,
            chacha_iv(iv),
        )))
    }

    fn key_block_shape(&self) -> KeyBlockShape {
        KeyBlockShape {
            enc_key_len: 32,
            fixed_iv_len: NONCE_LEN,
            explicit_nonce_len: 0,
        }
    }

    fn extract_keys(
        &self,
        key: AeadKey,
        iv: &[u8],
        _explicit: &[u8],
    ) -> Result<ConnectionTrafficSecrets, UnsupportedOperationError> {
        traffic_secrets(&aead::CHACHA20_POLY1305, key, Iv::from(chacha_iv(iv)))
    }
}

fn chacha_iv(iv: &[u8]) -> [u8; NONCE_LEN] {
    let mut bytes = [0u8; NONCE_LEN];
    let len = iv.len().min(NONCE_LEN);
    bytes[..len].copy_from_slice(&iv[..len]);
    bytes
}

struct Tls12ChaChaSealer(SequencedKey);

struct Tls12ChaChaOpener(SequencedKey);

impl MessageEncrypter for Tls12ChaChaSealer {
    fn encrypt(
        &mut self,
        msg: OutboundPlainMessage<'_>,
        seq: u64,
    ) -> Result<OutboundOpaqueMessage, Error> {
        let total_len = self.encrypted_payload_len(msg.payload.len());
        let mut payload = PrefixedPayload::with_capacity(total_len);
        let aad = make_tls12_aad(seq, msg.typ, msg.version, msg.payload.len());
        payload.extend_from_chunks(&msg.payload);
        self.0.seal(seq, aad, &mut payload)?;
        Ok(OutboundOpaqueMessage::new(msg.typ, msg.version, payload))
    }

    fn encrypted_payload_len(&self, payload_len: usize) -> usize {
        payload_len + TAG_LEN
    }
}

impl MessageDecrypter for Tls12ChaChaOpener {
    fn decrypt<'a>(
        &mut self,
        mut msg: InboundOpaqueMessage<'a>,
        seq: u64,
    ) -> Result<InboundPlainMessage<'a>, Error> {
        let payload = &msg.payload;
        if payload.len() < TAG_LEN {
            return Err(Error::DecryptError);
        }
        let aad = make_tls12_aad(seq, msg.typ, msg.version, payload.len() - TAG_LEN);
        let payload = &mut msg.payload;
        let plain_len = self.0.open(seq, aad, payload)?;
        if plain_len > MAX_FRAGMENT_LEN {
            return Err(Error::PeerSentOversizedRecord);
        }
        payload.truncate(plain_len);
        Ok(msg.into_plain_message())
    }
}

#[cfg(test)]
mod tests {
    //! The compact encrypters against rustls's own ring glue: the same key, IV and sequence
    //! numbers must give the same records, and each side must open the other's. rustls's public
    //! `AeadKey` can only be made 32 bytes long, so the byte-for-byte comparison runs on the
    //! 32-byte-key AEADs (AES-256-GCM, ChaCha20-Poly1305); AES-128-GCM runs the same code with
    //! another `ring` algorithm, and tests/tls.rs negotiates it with a real rustls client.
    use super::*;
    use rustls::crypto::cipher::OutboundChunks;
    use rustls::crypto::ring::cipher_suite as ring_suites;

    const KEY: [u8; 32] = [7; 32];
    const IV: [u8; NONCE_LEN] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    fn plain(payload: &[u8], version: ProtocolVersion) -> OutboundPlainMessage<'_> {
        OutboundPlainMessage {
            typ: rustls::ContentType::ApplicationData,
            version,
            payload: OutboundChunks::Single(payload),
        }
    }

    /// Seals with both, compares the records, and opens each with the other's decrypter.
    fn same_records(
        ours: (Box<dyn MessageEncrypter>, Box<dyn MessageDecrypter>),
        theirs: (Box<dyn MessageEncrypter>, Box<dyn MessageDecrypter>),
        version: ProtocolVersion,
    ) {
        let (mut our_sealer, mut our_opener) = ours;
        let (mut their_sealer, mut their_opener) = theirs;
        for (seq, len) in [
            (0u64, 0usize),
            (1, 1),
            (2, 300),
            (u32::MAX as u64 + 5, 16 * 1024),
        ] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 31 + seq as usize) as u8).collect();
            let a = our_sealer
                .encrypt(plain(&payload, version), seq)
                .unwrap()
                .encode();
            let b = their_sealer
                .encrypt(plain(&payload, version), seq)
                .unwrap()
                .encode();
            assert_eq!(a, b, "record {seq} of {len} bytes differs");
            assert_eq!(
                our_sealer.encrypted_payload_len(len),
                their_sealer.encrypted_payload_len(len)
            );
            for (record, opener) in [(a, &mut their_opener), (b, &mut our_opener)] {
                let mut body = record[5..].to_vec();
                let msg = InboundOpaqueMessage::new(
                    rustls::ContentType::ApplicationData,
                    ProtocolVersion::TLSv1_2,
                    &mut body,
                );
                let opened = opener.decrypt(msg, seq).unwrap();
                assert_eq!(opened.payload, &payload[..]);
            }
        }
        // A flipped bit is refused.
        let mut record = our_sealer
            .encrypt(plain(b"hello", version), 9)
            .unwrap()
            .encode();
        let last = record.len() - 1;
        record[last] ^= 1;
        let msg = InboundOpaqueMessage::new(
            rustls::ContentType::ApplicationData,
            ProtocolVersion::TLSv1_2,
            &mut record[5..],
        );
        assert!(matches!(
            our_opener.decrypt(msg, 9),
            Err(Error::DecryptError)
        ));
    }

    fn tls13(suite: SupportedCipherSuite) -> &'static Tls13CipherSuite {
        match suite {
            SupportedCipherSuite::Tls13(s) => s,
            SupportedCipherSuite::Tls12(_) => panic!("not TLS 1.3"),
        }
    }

    fn tls12(suite: SupportedCipherSuite) -> &'static Tls12CipherSuite {
        match suite {
            SupportedCipherSuite::Tls12(s) => s,
            SupportedCipherSuite::Tls13(_) => panic!("not TLS 1.2"),
        }
    }

    #[test]
    fn tls13_records_match_rustls_ring() {
        for suite in [
            ring_suites::TLS13_AES_256_GCM_SHA384,
            ring_suites::TLS13_CHACHA20_POLY1305_SHA256,
        ] {
            let ours = tls13(compact(&[suite])[0]).aead_alg;
            let theirs = tls13(suite).aead_alg;
            assert_eq!(ours.key_len(), theirs.key_len());
            same_records(
                (
                    ours.encrypter(AeadKey::from(KEY), Iv::from(IV)),
                    ours.decrypter(AeadKey::from(KEY), Iv::from(IV)),
                ),
                (
                    theirs.encrypter(AeadKey::from(KEY), Iv::from(IV)),
                    theirs.decrypter(AeadKey::from(KEY), Iv::from(IV)),
                ),
                ProtocolVersion::TLSv1_3,
            );
        }
    }

    #[test]
    fn tls12_records_match_rustls_ring() {
        for suite in [
            ring_suites::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            ring_suites::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ] {
            let ours = tls12(compact(&[suite])[0]).aead_alg;
            let theirs = tls12(suite).aead_alg;
            let shape = ours.key_block_shape();
            let their_shape = theirs.key_block_shape();
            assert_eq!(
                (
                    shape.enc_key_len,
                    shape.fixed_iv_len,
                    shape.explicit_nonce_len
                ),
                (
                    their_shape.enc_key_len,
                    their_shape.fixed_iv_len,
                    their_shape.explicit_nonce_len
                )
            );
            let iv = &IV[..shape.fixed_iv_len];
            let extra = &[0xa5; 8][..shape.explicit_nonce_len];
            same_records(
                (
                    ours.encrypter(AeadKey::from(KEY), iv, extra),
                    ours.decrypter(AeadKey::from(KEY), iv),
                ),
                (
                    theirs.encrypter(AeadKey::from(KEY), iv, extra),
                    theirs.decrypter(AeadKey::from(KEY), iv),
                ),
                ProtocolVersion::TLSv1_2,
            );
        }
    }

    /// A record sealed in place by `RecordSealer` against the same record from rustls's ring
    /// glue, for each record format, two content types and the sequence numbers of
    /// `same_records`.
    fn same_as_in_place(
        suite: SupportedCipherSuite,
        secrets: impl Fn() -> ConnectionTrafficSecrets,
        mut theirs: Box<dyn MessageEncrypter>,
    ) {
        let sealer = RecordSealer::new(suite, secrets()).unwrap();
        let version = match suite {
            SupportedCipherSuite::Tls13(_) => ProtocolVersion::TLSv1_3,
            SupportedCipherSuite::Tls12(_) => ProtocolVersion::TLSv1_2,
        };
        for typ in [
            rustls::ContentType::ApplicationData,
            rustls::ContentType::Alert,
        ] {
            for (seq, len) in [(0u64, 0usize), (1, 2), (2, 300), (1 << 40, 16 * 1024)] {
                let payload: Vec<u8> = (0..len).map(|i| (i * 7 + seq as usize) as u8).collect();
                let message = OutboundPlainMessage {
                    typ,
                    version: ProtocolVersion::TLSv1_2,
                    payload: OutboundChunks::Single(&payload),
                };
                let expected = theirs.encrypt(message, seq).unwrap().encode();
                // Room to spare: the record must say its own length.
                let mut buffer = vec![0xee; len + sealer.overhead() + 9];
                let at = sealer.payload_offset();
                buffer[at..at + len].copy_from_slice(&payload);
                let n = sealer.seal_in_place(seq, typ, len, &mut buffer).unwrap();
                assert_eq!(
                    &buffer[..n],
                    &expected[..],
                    "{version:?} {typ:?} record {seq}"
                );
            }
        }
        // Too little room, or too much plaintext, is an error.
        let mut short = vec![0; 10 + sealer.overhead() - 1];
        assert!(
            sealer
                .seal_in_place(0, rustls::ContentType::ApplicationData, 10, &mut short)
                .is_err()
        );
        let mut big = vec![0; 16 * 1024 + 1 + sealer.overhead()];
        assert!(
            sealer
                .seal_in_place(
                    0,
                    rustls::ContentType::ApplicationData,
                    16 * 1024 + 1,
                    &mut big
                )
                .is_err()
        );
    }

    #[test]
    fn records_sealed_in_place_match_rustls_ring() {
        let key = || AeadKey::from(KEY);
        for suite in [
            ring_suites::TLS13_AES_256_GCM_SHA384,
            ring_suites::TLS13_CHACHA20_POLY1305_SHA256,
        ] {
            let secrets = || {
                tls13(compact(&[suite])[0])
                    .aead_alg
                    .extract_keys(key(), Iv::from(IV))
                    .unwrap()
            };
            let theirs = tls13(suite).aead_alg.encrypter(key(), Iv::from(IV));
            same_as_in_place(suite, secrets, theirs);
        }
        for suite in [
            ring_suites::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            ring_suites::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ] {
            let shape = tls12(suite).aead_alg.key_block_shape();
            let iv = &IV[..shape.fixed_iv_len];
            let extra = &[0xa5; 8][..shape.explicit_nonce_len];
            let secrets = || {
                tls12(compact(&[suite])[0])
                    .aead_alg
                    .extract_keys(key(), iv, extra)
                    .unwrap()
            };
            let theirs = tls12(suite).aead_alg.encrypter(key(), iv, extra);
            same_as_in_place(suite, secrets, theirs);
        }
    }

    #[test]
    fn the_compact_suites_keep_rustls_suite_parameters_and_order() {
        let suites = [
            ring_suites::TLS13_AES_128_GCM_SHA256,
            ring_suites::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ];
        let compacted = compact(&suites);
        for (ours, theirs) in compacted.iter().zip(suites) {
            assert_eq!(ours.suite(), theirs.suite());
            assert_eq!(ours.version(), theirs.version());
        }
        // Compacted: the AEAD is this module's, not ring's.
        let ours = tls13(compacted[0]).aead_alg as *const dyn Tls13AeadAlgorithm as *const ();
        let theirs = tls13(suites[0]).aead_alg as *const dyn Tls13AeadAlgorithm as *const ();
        assert_ne!(ours, theirs);
    }

    #[test]
    fn a_session_key_holds_no_expanded_key() {
        // What an idle session keeps per direction (was ring's 560-byte `LessSafeKey` and IV).
        assert!(std::mem::size_of::<Tls13Sealer>() <= 64);
        assert!(std::mem::size_of::<Tls12GcmOpener>() <= 64);
    }
}
