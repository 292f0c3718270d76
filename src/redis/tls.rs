//! TLS for the link (`rediss://`, feature `tls`): the client configuration, built once at
//! start-up from `--redis-ca` or the system's CA bundle, and the byte pump between a rustls
//! `ClientConnection` and the non-blocking socket. Only `socket.rs` calls the pump; the state
//! machine in `link.rs` never sees TLS: a failed handshake is one more failed connect.
//!
//! rustls's buffered API is used: the link has two connections, so the few tens of KiB
//! rustls keeps per session do not matter here (unlike the server side's many clients).

use std::fmt;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use super::socket::ReadError;

/// The system's CA bundle, first found wins. rustls has no notion of a system trust store
/// (the `rustls-native-certs` crate does this lookup, one dependency more for a dozen lines),
/// so we read the PEM bundle the distribution's `ca-certificates` package maintains. The
/// environment's `$SSL_CERT_FILE`, OpenSSL's override, comes before these.
const SYSTEM_BUNDLES: &[&str] = &[
    // Debian, Ubuntu, Alpine, Arch, Gentoo
    "/etc/ssl/certs/ca-certificates.crt",
    // RHEL, Fedora, CentOS, Amazon Linux
    "/etc/pki/tls/certs/ca-bundle.crt",
    // macOS, the BSDs, Alpine's LibreSSL
    "/etc/ssl/cert.pem",
];

/// Why the link's TLS could not be set up at start-up. Each is one line on stderr and exit 1:
/// without roots every handshake would fail, so the mistake is reported before it costs a
/// night of retries.
#[derive(Debug)]
pub enum TlsSetupError {
    /// The CA file cannot be opened, or is not PEM.
    Unreadable(PathBuf, String),
    /// The CA file holds no certificate rustls can use as a root.
    NoCertificates(PathBuf),
    /// `rediss://` without `--redis-ca`, and no system bundle exists.
    NoSystemBundle,
    /// The URL's host is neither an IP address nor a DNS name a certificate can carry.
    BadServerName(String),
    /// rustls refused the configuration (its provider has no usable protocol version).
    Config(rustls::Error),
}

impl fmt::Display for TlsSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreadable(path, reason) => {
                write!(f, "cannot read CA file {}: {reason}", path.display())
            }
            Self::NoCertificates(path) => write!(
                f,
                "no CA certificate in {} (expected PEM \"BEGIN CERTIFICATE\" blocks)",
                path.display()
            ),
            Self::NoSystemBundle => write!(
                f,
                "rediss:// needs CA certificates: no system bundle found ($SSL_CERT_FILE unset, \
                 none of {}); give --redis-ca FILE",
                SYSTEM_BUNDLES.join(", ")
            ),
            Self::BadServerName(host) => write!(
                f,
                "redis host {host:?} is not a name a TLS certificate can carry"
            ),
            Self::Config(error) => write!(f, "TLS setup failed: {error}"),
        }
    }
}

impl std::error::Error for TlsSetupError {}

/// Everything needed to open TLS sessions to the one Redis: shared by both connections and
/// every reconnect.
#[derive(Clone)]
pub(super) struct TlsClient {
    config: Arc<ClientConfig>,
    /// The URL's host: the name (or IP address) the server's certificate must carry.
    server_name: ServerName<'static>,
    /// Where the roots came from and how many, for the start-up log line.
    roots: String,
}

impl TlsClient {
    /// Called once at start-up for a `rediss://` URL: loads the roots (`ca_file`, else the
    /// system bundle) and checks that `host` can be verified at all.
    pub(super) fn new(host: &str, ca_file: Option<&Path>) -> Result<TlsClient, TlsSetupError> {
        let server_name = server_name(host)?;
        let path = match ca_file {
            Some(path) => path.to_path_buf(),
            None => system_bundle(std::env::var_os("SSL_CERT_FILE").map(PathBuf::from))?,
        };
        let roots = load_roots(&path)?;
        let count = roots.len();
        let plural = if count == 1 { "" } else { "s" };
        let described = format!("{} ({count} certificate{plural})", path.display());
        // The server side's provider (ring, trimmed; see `crate::tls::provider`), named, not
        // looked up: no process-wide default is installed.
        let config = ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsSetupError::Config)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsClient {
            config: Arc::new(config),
            server_name,
            roots: described,
        })
    }

    /// A new session for a connection being opened; its ClientHello is queued at once.
    pub(super) fn session(&self) -> Result<ClientConnection, rustls::Error> {
        ClientConnection::new(self.config.clone(), self.server_name.clone())
    }
}

impl fmt::Display for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TLS, roots from {}", self.roots)
    }
}

/// The name to verify: an IP literal is matched against the certificate's IP addresses (no
/// SNI is sent for it), anything else against its DNS names.
fn server_name(host: &str) -> Result<ServerName<'static>, TlsSetupError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ServerName::from(ip));
    }
    ServerName::try_from(host.to_string())
        .map_err(|_| TlsSetupError::BadServerName(host.to_string()))
}

/// The bundle used without `--redis-ca`: `$SSL_CERT_FILE` if set (even if missing: the
/// operator asked for that file, and the read reports it), else the first of
/// [`SYSTEM_BUNDLES`] that exists.
fn system_bundle(ssl_cert_file: Option<PathBuf>) -> Result<PathBuf, TlsSetupError> {
    if let Some(path) = ssl_cert_file.filter(|path| !path.as_os_str().is_empty()) {
        return Ok(path);
    }
    SYSTEM_BUNDLES
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
        .ok_or(TlsSetupError::NoSystemBundle)
}

/// Reads every certificate of a PEM file into a root store. Certificates webpki cannot use
/// as roots are skipped (system bundles carry a few); a file with none is an error.
pub(super) fn load_roots(path: &Path) -> Result<RootCertStore, TlsSetupError> {
    let unreadable = |error: rustls::pki_types::pem::Error| {
        TlsSetupError::Unreadable(path.to_path_buf(), error.to_string())
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(unreadable)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(unreadable)?;
    let mut roots = RootCertStore::empty();
    let (added, _skipped) = roots.add_parsable_certificates(certificates);
    if added == 0 {
        return Err(TlsSetupError::NoCertificates(path.to_path_buf()));
    }
    Ok(roots)
}

/// Reads plaintext into `buf`: what the session already holds, else TLS records from the
/// socket until some arrives or the socket would block. Handshake messages are answered by
/// queuing them in the session; the caller's next `write` sends them.
/// `Ok(0)` = Redis closed the connection.
pub(super) fn read(
    tls: &mut ClientConnection,
    stream: &mut TcpStream,
    buf: &mut [u8],
) -> Result<usize, ReadError> {
    loop {
        match tls.reader().read(buf) {
            // 0: the session was closed with close_notify.
            Ok(n) => return Ok(n),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(ReadError::Io(error)),
        }
        match tls.read_tls(stream) {
            Ok(0) => return Ok(0),
            Ok(_) => {
                if let Err(error) = tls.process_new_packets() {
                    // rustls has queued an alert saying why; tell Redis, best effort.
                    let _ = tls.write_tls(stream);
                    return Err(ReadError::Tls(error));
                }
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(ReadError::Io(error)),
        }
    }
}

/// Hands as much of `data` to the session as its buffer limit takes (during the handshake it
/// holds the plaintext until the keys are ready), then writes TLS records until the socket
/// would block or nothing is left. Returns how much of `data` the session took.
pub(super) fn write(
    tls: &mut ClientConnection,
    stream: &mut TcpStream,
    data: &[u8],
) -> io::Result<usize> {
    let mut taken = 0;
    loop {
        if taken < data.len() {
            taken += tls.writer().write(&data[taken..])?;
        }
        if !tls.wants_write() {
            return Ok(taken);
        }
        match tls.write_tls(stream) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(taken),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
}

/// True until the session's handshake has finished: an error then is a failed connect.
pub(super) fn handshaking(tls: &ClientConnection) -> bool {
    tls.is_handshaking()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed CA certificate (P-256, valid until 2126), made once with `openssl req -x509`;
    /// its key was thrown away: it only has to load.
    const CA_PEM: &str = "\
-----BEGIN CERTIFICATE-----
MIIBkzCCATmgAwIBAgIUQLmYCsBdqT2Wi7HDq+n1sKgXKkIwCgYIKoZIzj0EAwIw
HjEcMBoGA1UEAwwTd3NjaGF0LXVuaXQtdGVzdC1jYTAgFw0yNjEyMDcxOTUzMTFa
GA8yMTI2MTExMzE5NTMxMVowHjEcMBoGA1UEAwwTd3NjaGF0LXVuaXQtdGVzdC1j
YTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABLLD1EdGnYGKmfyctn97WH0NglZO
qrBvfeiEoGCRp4El/8nNdwY5IDaHdPC6QXT6tDB0SAzJ6BbMGxVe9R3Rk9mjUzBR
MB0GA1UdDgQWBBR/BnoeiGNK/nkrHX71nLs5Fb2DUjAfBgNVHSMEGDAWgBR/Bnoe
iGNK/nkrHX71nLs5Fb2DUjAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gA
MEUCIDqprpXp1YPmuNqXuP1pwh0zhYHmTEynrKAFZnGILLYvAiEApGQtDgHTOc6+
iqg7NOze1qG2iC3TdWXbPhkQSSszKjM=
-----END CERTIFICATE-----
";

    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, contents: &str) -> TempFile {
            let path = std::env::temp_dir()
                .join(format!("wschat-redis-tls-{}-{name}", std::process::id()));
            std::fs::write(&path, contents).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn roots_are_loaded_from_a_pem_file() {
        let file = TempFile::new("good.pem", &format!("junk before\n{CA_PEM}\n{CA_PEM}"));
        let roots = load_roots(&file.0).unwrap();
        assert_eq!(roots.len(), 2);
        assert!(TlsClient::new("127.0.0.1", Some(&file.0)).is_ok());
        let client = TlsClient::new("redis.example", Some(&file.0)).unwrap();
        assert!(client.to_string().contains("2 certificates"), "{client}");
    }

    #[test]
    fn a_missing_empty_or_broken_ca_file_is_refused() {
        let missing = std::env::temp_dir().join("wschat-redis-tls-does-not-exist.pem");
        let error = load_roots(&missing).unwrap_err();
        assert!(matches!(error, TlsSetupError::Unreadable(..)), "{error}");
        assert!(error.to_string().contains("does-not-exist.pem"));
        let empty = TempFile::new("empty.pem", "");
        let error = load_roots(&empty.0).unwrap_err();
        assert!(matches!(error, TlsSetupError::NoCertificates(_)), "{error}");
        let key_only = TempFile::new(
            "key.pem",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        );
        assert!(matches!(
            load_roots(&key_only.0),
            Err(TlsSetupError::NoCertificates(_))
        ));
        let broken = TempFile::new(
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\n!!!not base64\n-----END CERTIFICATE-----\n",
        );
        assert!(matches!(
            load_roots(&broken.0),
            Err(TlsSetupError::Unreadable(..))
        ));
        let garbage_cert = TempFile::new(
            "garbage.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        assert!(matches!(
            load_roots(&garbage_cert.0),
            Err(TlsSetupError::NoCertificates(_))
        ));
    }

    #[test]
    fn ssl_cert_file_comes_before_the_system_bundles() {
        let chosen = PathBuf::from("/somewhere/else.pem");
        assert_eq!(system_bundle(Some(chosen.clone())).unwrap(), chosen);
        // Unset or empty: the first bundle that exists, if any.
        match system_bundle(Some(PathBuf::new())) {
            Ok(path) => assert!(SYSTEM_BUNDLES.iter().any(|b| Path::new(b) == path)),
            Err(error) => assert!(matches!(error, TlsSetupError::NoSystemBundle)),
        }
    }

    #[test]
    fn the_server_name_is_the_host_dns_or_ip() {
        assert!(matches!(
            server_name("127.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(server_name("::1"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(
            server_name("cache.example.com"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(matches!(
            server_name("not a name"),
            Err(TlsSetupError::BadServerName(_))
        ));
    }
}
