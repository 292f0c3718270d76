//! TLS for the load generator (`--tls`): a throw-away ECDSA P-256 certificate made with
//! `openssl` at start, and a rustls client session per connection over the generator's mio
//! sockets.
//!
//! Every server under test gets the same certificate and key; every client session offers
//! TLS 1.3, AES-128-GCM and X25519 only, so that the servers negotiate the same suite and
//! group (wschat's provider, Bun's BoringSSL and Node's OpenSSL all prefer them anyway).
//!
//! The client pins the certificate (the server must present exactly the one made here) and
//! does not check the handshake's signature: on loopback the signature proves nothing the pin
//! does not, and an ECDSA verification per handshake would cost the generator's one core more
//! than the server's signing costs the server, so the handshake rate would measure the
//! generator. Without the feature `tls` the bench builds without all of this.

use std::path::{Path, PathBuf};

/// The certificate and key files of one bench run, in their own temporary directory.
pub struct Files {
    pub dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Files {
    /// Makes a self-signed ECDSA P-256 certificate for `localhost` and 127.0.0.1 in a fresh
    /// directory under `parent`.
    pub fn make(parent: &Path) -> Result<Files, String> {
        let dir = parent.join(format!("tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let out = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .map_err(|e| format!("openssl (apt-get install -y openssl): {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "openssl req failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(Files { dir, cert, key })
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(feature = "tls")]
pub use imp::{Client, ClientConfig, client_config};

#[cfg(feature = "tls")]
mod imp {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{CryptoProvider, ring};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};
    use std::io::{self, Read, Write};
    use std::sync::Arc;

    pub type ClientConfig = Arc<rustls::ClientConfig>;

    /// Accepts the one certificate the bench made, and no other.
    #[derive(Debug)]
    struct Pinned(CertificateDer<'static>);

    impl ServerCertVerifier for Pinned {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            if end_entity.as_ref() == self.0.as_ref() {
                Ok(ServerCertVerified::assertion())
            } else {
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer,
                ))
            }
        }

        // The signature is not checked: see the module comment.
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }

        fn verify_tls13_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            vec![SignatureScheme::ECDSA_NISTP256_SHA256]
        }
    }

    /// The client settings for the certificate in `cert` (PEM): TLS 1.3, AES-128-GCM, X25519,
    /// no session resumption (every connection is a full handshake), ALPN http/1.1.
    pub fn client_config(cert: &std::path::Path) -> Result<ClientConfig, String> {
        let der =
            CertificateDer::from_pem_file(cert).map_err(|e| format!("{}: {e}", cert.display()))?;
        // Deprecated for lacking post-quantum key exchange; the server's ring provider lacks
        // it too (src/tls.rs), and X25519 is what every server here picks.
        #[allow(deprecated)]
        let base = ring::default_provider();
        let provider = CryptoProvider {
            cipher_suites: vec![ring::cipher_suite::TLS13_AES_128_GCM_SHA256],
            kx_groups: vec![ring::kx_group::X25519],
            ..base
        };
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned(der)))
            .with_no_client_auth();
        cfg.resumption = rustls::client::Resumption::disabled();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// One client session.
    pub struct Client(rustls::ClientConnection);

    impl Client {
        pub fn new(cfg: &ClientConfig) -> io::Result<Client> {
            let name = ServerName::try_from("localhost").map_err(io::Error::other)?;
            let mut c =
                rustls::ClientConnection::new(cfg.clone(), name).map_err(io::Error::other)?;
            // The generator queues whole windows of messages; it bounds them itself.
            c.set_buffer_limit(None);
            Ok(Client(c))
        }

        /// Takes all of `buf` as plaintext to send (buffered until the handshake is done).
        pub fn queue(&mut self, buf: &[u8]) -> io::Result<()> {
            self.0.writer().write_all(buf)
        }

        /// Writes ciphertext to `sock` until nothing is left or it would block; the number of
        /// successful writes.
        pub fn flush(&mut self, sock: &mut impl Write) -> io::Result<u64> {
            let mut writes = 0;
            while self.0.wants_write() {
                match self.0.write_tls(sock) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(_) => writes += 1,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(writes)
        }

        /// One read of ciphertext from `sock` and its decryption: Ok(None) when the socket
        /// would block, Ok(Some(0)) at its end, else Ok(Some(bytes read)).
        pub fn read_tls(&mut self, sock: &mut impl Read) -> io::Result<Option<usize>> {
            let n = match self.0.read_tls(sock) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            };
            self.0
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            Ok(Some(n))
        }

        /// Decrypted bytes into `out`: how many (0 when none are waiting).
        pub fn read_plain(&mut self, out: &mut [u8]) -> io::Result<usize> {
            match self.0.reader().read(out) {
                Ok(n) => Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                Err(e) => Err(e),
            }
        }
    }
}

/// Without the feature the generator has no TLS: these types exist so that it builds, and
/// `client_config` says why `--tls` cannot run.
#[cfg(not(feature = "tls"))]
mod imp {
    use std::io::{self, Read, Write};

    /// Never made: `client_config` fails in this build.
    #[derive(Clone)]
    pub struct ClientConfig;

    pub enum Client {}

    pub fn client_config(_cert: &std::path::Path) -> Result<ClientConfig, String> {
        Err("--tls: the bench was built without the \"tls\" feature".into())
    }

    impl Client {
        pub fn new(_cfg: &ClientConfig) -> io::Result<Client> {
            Err(io::Error::other("no TLS in this build"))
        }
        pub fn queue(&mut self, _buf: &[u8]) -> io::Result<()> {
            match *self {}
        }
        pub fn flush(&mut self, _sock: &mut impl Write) -> io::Result<u64> {
            match *self {}
        }
        pub fn read_tls(&mut self, _sock: &mut impl Read) -> io::Result<Option<usize>> {
            match *self {}
        }
        pub fn read_plain(&mut self, _out: &mut [u8]) -> io::Result<usize> {
            match *self {}
        }
    }
}

#[cfg(not(feature = "tls"))]
pub use imp::{Client, ClientConfig, client_config};
