//! The bottom layer of a connection: bytes in and out of its socket, as plain TCP or through
//! TLS. Everything above it (the HTTP head parser, the UTF-8 guard, tungstenite, the outbound
//! queue) sees plaintext either way.
//!
//! A plain connection pays for TLS with one `None` (8 bytes). A TLS connection keeps its
//! rustls session boxed beside the socket (see `crate::tls`).

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;

use mio::net::TcpStream;

#[cfg(feature = "tls")]
use crate::tls::TlsSession;

pub struct Transport {
    socket: TcpStream,
    #[cfg(feature = "tls")]
    tls: Option<Box<TlsSession>>,
}

impl Transport {
    pub fn plain(socket: TcpStream) -> Self {
        Transport {
            socket,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    #[cfg(feature = "tls")]
    pub fn tls(socket: TcpStream, session: TlsSession) -> Self {
        Transport {
            socket,
            tls: Some(Box::new(session)),
        }
    }

    /// The socket itself, for registering with the poll.
    pub fn socket(&mut self) -> &mut TcpStream {
        &mut self.socket
    }

    /// Reads plaintext into `out`, at most `out.len()` bytes. `Ok(0)` is the end of the
    /// stream.
    pub fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        #[cfg(feature = "tls")]
        if let Some(tls) = self.tls.as_mut() {
            return tls.read(&mut self.socket, out);
        }
        self.socket.read(out)
    }

    /// Bytes this layer holds that the socket has not taken yet (TLS records); they go out
    /// before anything else.
    pub fn has_pending_output(&self) -> bool {
        #[cfg(feature = "tls")]
        if let Some(tls) = self.tls.as_ref() {
            return tls.has_pending_output();
        }
        false
    }

    /// Writes the bytes this layer holds. Ok(true) when none are left.
    pub fn flush_pending(&mut self) -> io::Result<bool> {
        #[cfg(feature = "tls")]
        if let Some(tls) = self.tls.as_mut() {
            return tls.flush_pending(&mut self.socket);
        }
        Ok(true)
    }

    /// Ends our direction of the stream once everything owed has gone: for TLS a
    /// close_notify first. Returns true when the write side is shut.
    pub fn shutdown_write(&mut self) -> bool {
        #[cfg(feature = "tls")]
        if let Some(tls) = self.tls.as_mut()
            && !tls.close_notify(&mut self.socket)
        {
            return false;
        }
        let _ = self.socket.shutdown(Shutdown::Write);
        true
    }

    /// Reads raw bytes and throws them away (a closing connection waiting for the peer's end
    /// of stream; what a TLS peer still sends does not need decrypting).
    pub fn discard_input(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        self.socket.read(buffer)
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    /// Plain TCP: one `writev`. TLS: encrypts and sends as much as the socket takes; returns
    /// fewer bytes than offered only when the socket refused more.
    fn write_vectored(&mut self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        #[cfg(feature = "tls")]
        if let Some(tls) = self.tls.as_mut() {
            return tls.write_vectored(&mut self.socket, slices);
        }
        self.socket.write_vectored(slices)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
