//! One of the link's two TCP connections to Redis: a non-blocking socket and its RESP
//! buffers. It connects without blocking, writes what the kernel takes, and reads to
//! `WouldBlock` (mio is edge-triggered), handing every byte to the decoder in `resp.rs`.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::resp::{self, Incoming, PubSub, RespState, Role};
use super::url::RedisUrl;

/// Read size per `read` call; the read buffer grows by this much at a time.
const READ_CHUNK: usize = 16 * 1024;
/// `publish` writes to the socket by itself once this much is queued.
pub(super) const AUTO_FLUSH_BYTES: usize = 64 * 1024;
/// Write buffers bigger than this are released once drained.
const KEEP_WRITE_CAPACITY: usize = 256 * 1024;

pub(super) struct RedisConnection {
    pub(super) stream: TcpStream,
    /// The non-blocking connect has completed.
    pub(super) connected: bool,
    pub(super) resp: RespState,
}

impl RedisConnection {
    /// Starts a non-blocking connect to `addr`, registers it under `token` and queues the
    /// handshake, which leaves as soon as the connect completes.
    pub(super) fn open(
        addr: SocketAddr,
        registry: &Registry,
        token: Token,
        url: &RedisUrl,
    ) -> io::Result<RedisConnection> {
        let mut stream = TcpStream::connect(addr)?;
        registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
        let mut resp = RespState::default();
        resp.handshake(url);
        Ok(RedisConnection {
            stream,
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
        while resp.write_pos < resp.write_buf.len() {
            match self.stream.write(&resp.write_buf[resp.write_pos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => resp.write_pos += n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
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
        self.read_available(pubsub, role, out)?;
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
        out: &mut Vec<Incoming>,
    ) -> Result<(), String> {
        loop {
            let resp = &mut self.resp;
            if resp.read_pos > 0 && resp.read_pos == resp.read_buf.len() {
                resp.read_buf.clear();
                resp.read_pos = 0;
            }
            let old_len = resp.read_buf.len();
            resp.read_buf.resize(old_len + READ_CHUNK, 0);
            match self.stream.read(&mut resp.read_buf[old_len..]) {
                Ok(0) => {
                    resp.read_buf.truncate(old_len);
                    return Err("connection closed by Redis".to_string());
                }
                Ok(n) => {
                    resp.read_buf.truncate(old_len + n);
                    resp::process_input(pubsub, resp, role, out)?;
                }
                Err(error) => {
                    resp.read_buf.truncate(old_len);
                    match error.kind() {
                        io::ErrorKind::WouldBlock => return Ok(()),
                        io::ErrorKind::Interrupted => {}
                        _ => return Err(format!("read from Redis failed: {error}")),
                    }
                }
            }
        }
    }
}
