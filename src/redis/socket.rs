//! One of the link's two TCP connections to Redis: a non-blocking socket and its RESP
//! buffers. It connects without blocking, writes what the kernel takes, and reads to
//! `WouldBlock` (mio is edge-triggered), handing every byte to the decoder in `resp.rs`.
//! For `rediss://` a TLS session sits between the socket and the RESP buffers (`tls.rs`);
//! nothing above this file knows, beyond the start-up [`Connector`].

use std::fmt;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::Path;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::link::RedisStartError;
use super::resp::{self, Incoming, PubSub, RespState, Role};
#[cfg(feature = "tls")]
use super::tls::{self, TlsClient};
use super::url::RedisUrl;

/// Read size per `read` call; the read buffer grows by this much at a time.
const READ_CHUNK: usize = 16 * 1024;
/// `publish` writes to the socket by itself once this much is queued.
pub(super) const AUTO_FLUSH_BYTES: usize = 64 * 1024;
/// Write buffers bigger than this are released once drained.
const KEEP_WRITE_CAPACITY: usize = 256 * 1024;

/// How the link opens its connections: plain TCP, or TLS over it (`rediss://`). Built once
/// at start-up, so that a bad CA file or host name stops the process there.
#[derive(Clone)]
pub(super) enum Connector {
    Plain,
    #[cfg(feature = "tls")]
    Tls(TlsClient),
}

impl Connector {
    /// The connector `url` asks for; `ca_file` (`--redis-ca`) replaces the system's roots.
    pub(super) fn new(
        url: &RedisUrl,
        ca_file: Option<&Path>,
    ) -> Result<Connector, RedisStartError> {
        #[cfg(feature = "tls")]
        if url.tls {
            let client = TlsClient::new(&url.host, ca_file).map_err(RedisStartError::Tls)?;
            return Ok(Connector::Tls(client));
        }
        // Without the feature the URL parser refuses rediss:// and the command line refuses
        // --redis-ca: there is nothing to set up.
        #[cfg(not(feature = "tls"))]
        let _ = (url, ca_file);
        Ok(Connector::Plain)
    }
}

/// For the start-up log line: empty for plain TCP.
impl fmt::Display for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Connector::Plain => f.write_str(""),
            #[cfg(feature = "tls")]
            Connector::Tls(client) => write!(f, ", {client}"),
        }
    }
}

/// What carries the RESP bytes over the socket.
enum Transport {
    Plain,
    /// Boxed: a session is about a kilobyte before its buffers, a plain connection nothing.
    #[cfg(feature = "tls")]
    Tls(Box<rustls::ClientConnection>),
}

/// Why a read failed.
pub(super) enum ReadError {
    Io(io::Error),
    /// The TLS session failed: a bad certificate, a wrong name, a protocol error.
    #[cfg(feature = "tls")]
    Tls(rustls::Error),
}

pub(super) struct RedisConnection {
    pub(super) stream: TcpStream,
    transport: Transport,
    /// The non-blocking connect has completed.
    pub(super) connected: bool,
    pub(super) resp: RespState,
}

impl RedisConnection {
    /// Starts a non-blocking connect to `addr`, registers it under `token` and queues the
    /// handshake (the TLS ClientHello, then AUTH/SELECT/PING), which leaves as soon as the
    /// connect completes.
    pub(super) fn open(
        addr: SocketAddr,
        registry: &Registry,
        token: Token,
        url: &RedisUrl,
        connector: &Connector,
    ) -> io::Result<RedisConnection> {
        let transport = match connector {
            Connector::Plain => Transport::Plain,
            #[cfg(feature = "tls")]
            Connector::Tls(client) => {
                Transport::Tls(Box::new(client.session().map_err(io::Error::other)?))
            }
        };
        let mut stream = TcpStream::connect(addr)?;
        registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
        let mut resp = RespState::default();
        resp.handshake(url);
        Ok(RedisConnection {
            stream,
            transport,
            connected: false,
            resp,
        })
    }

    /// Writes as much of the buffer as the socket takes.
    pub(super) fn write_out(&mut self) -> io::Result<()> {
        if !self.connected {
            return Ok(());
        }
        let resp = &mut self.resp;
        match &mut self.transport {
            Transport::Plain => {
                while resp.write_pos < resp.write_buf.len() {
                    match self.stream.write(&resp.write_buf[resp.write_pos..]) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => resp.write_pos += n,
                        Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                        Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                        Err(error) => return Err(error),
                    }
                }
            }
            // Called with nothing queued too: the session may owe handshake records.
            #[cfg(feature = "tls")]
            Transport::Tls(session) => {
                resp.write_pos +=
                    tls::write(session, &mut self.stream, &resp.write_buf[resp.write_pos..])?;
            }
        }
        if resp.write_pos == resp.write_buf.len() {
            resp.write_buf.clear();
            resp.write_pos = 0;
            if resp.write_buf.capacity() > KEEP_WRITE_CAPACITY {
                resp.write_buf = Vec::new();
            }
        } else if resp.write_pos >= AUTO_FLUSH_BYTES && resp.write_pos * 2 >= resp.write_buf.len() {
            resp.write_buf.drain(..resp.write_pos);
            resp.write_pos = 0;
        }
        Ok(())
    }

    /// Handles readiness: finishes the connect, writes what is queued, reads and decodes to
    /// `WouldBlock`, then writes again. `Err` = drop the link, with the reason to log.
    pub(super) fn on_ready(
        &mut self,
        pubsub: &mut PubSub,
        role: Role,
        url: &RedisUrl,
        out: &mut Vec<Incoming>,
    ) -> Result<(), String> {
        match self.check_connected() {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(error) => return Err(format!("connect to {url} failed: {error}")),
        }
        self.write_out()
            .map_err(|error| format!("write to Redis failed: {error}"))?;
        self.read_available(pubsub, role, url, out)?;
        // Replies (e.g. to PING) may have queued nothing new, but the handshake
        // bytes may still be pending after connect: write again.
        self.write_out()
            .map_err(|error| format!("write to Redis failed: {error}"))
    }

    /// Finishes a non-blocking connect. Ok(false) = still in progress.
    fn check_connected(&mut self) -> io::Result<bool> {
        if self.connected {
            return Ok(true);
        }
        if let Some(error) = self.stream.take_error()? {
            return Err(error);
        }
        match self.stream.peer_addr() {
            Ok(_) => {
                self.connected = true;
                let _ = self.stream.set_nodelay(true);
                Ok(true)
            }
            Err(error) if error.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Reads to `WouldBlock`, decoding each chunk as it comes.
    fn read_available(
        &mut self,
        pubsub: &mut PubSub,
        role: Role,
        url: &RedisUrl,
        out: &mut Vec<Incoming>,
    ) -> Result<(), String> {
        // Only TLS errors name the URL.
        #[cfg(not(feature = "tls"))]
        let _ = url;
        loop {
            let resp = &mut self.resp;
            if resp.read_pos > 0 && resp.read_pos == resp.read_buf.len() {
                resp.read_buf.clear();
                resp.read_pos = 0;
            }
            let old_len = resp.read_buf.len();
            resp.read_buf.resize(old_len + READ_CHUNK, 0);
            let read = match &mut self.transport {
                Transport::Plain => self
                    .stream
                    .read(&mut resp.read_buf[old_len..])
                    .map_err(ReadError::Io),
                #[cfg(feature = "tls")]
                Transport::Tls(session) => {
                    tls::read(session, &mut self.stream, &mut resp.read_buf[old_len..])
                }
            };
            match read {
                Ok(0) => {
                    resp.read_buf.truncate(old_len);
                    return Err("connection closed by Redis".to_string());
                }
                Ok(n) => {
                    resp.read_buf.truncate(old_len + n);
                    resp::process_input(pubsub, resp, role, out)?;
                }
                Err(ReadError::Io(error)) => {
                    resp.read_buf.truncate(old_len);
                    match error.kind() {
                        io::ErrorKind::WouldBlock => return Ok(()),
                        io::ErrorKind::Interrupted => {}
                        _ => return Err(format!("read from Redis failed: {error}")),
                    }
                }
                // A handshake that fails (unknown CA, wrong name) is a failed connect: the
                // link logs it once and retries with backoff, like a refused connection.
                #[cfg(feature = "tls")]
                Err(ReadError::Tls(error)) => {
                    resp.read_buf.truncate(old_len);
                    let handshaking = match &self.transport {
                        Transport::Tls(session) => tls::handshaking(session),
                        Transport::Plain => false,
                    };
                    return Err(if handshaking {
                        format!("TLS handshake with {url} failed: {error}")
                    } else {
                        format!("TLS error from Redis: {error}")
                    });
                }
            }
        }
    }
}
