//! Accepting and admission: new sockets become connections in the HTTP phase. The connection
//! cap itself is applied at the upgrade (an HTTP exchange is short and bounded by the
//! handshake timeout); the open-file limit is raised once at start.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use log::{debug, trace, warn};
use mio::net::TcpStream;
use mio::{Interest, Token};

use super::{MAX_KEY, Server};
use crate::connection::{Connection, Transport};

/// After `EMFILE`/`ENFILE`, accepting pauses this long instead of spinning on the error.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

impl Server {
    /// Accepts every pending connection on every listener. Called on a listener event and
    /// after an accept pause.
    pub(super) fn accept_all(&mut self) {
        for index in 0..self.listeners.len() {
            self.accept_from(index);
        }
    }

    fn accept_from(&mut self, index: usize) {
        loop {
            if self.deadlines.accept_paused_until.is_some() {
                return;
            }
            let Some(listener) = self.listeners.get_mut(index) else {
                return;
            };
            let tls = listener.tls;
            match listener.socket.accept() {
                Ok((socket, peer)) => self.admit(socket, peer, tls),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_resource_exhaustion(&e) => {
                    self.stats.accept_errors += 1;
                    warn!(
                        "accept failed ({e}); pausing accepts for {} ms (connections open: {})",
                        ACCEPT_PAUSE.as_millis(),
                        self.connections.len()
                    );
                    self.deadlines.accept_paused_until = Some(self.now + ACCEPT_PAUSE);
                    return;
                }
                Err(e) => {
                    // ECONNABORTED and the like concern one would-be client only.
                    self.stats.accept_errors += 1;
                    debug!("accept failed: {e}");
                }
            }
        }
    }

    /// Registers a freshly accepted socket as a connection in the HTTP phase (after a TLS
    /// handshake, for a TLS listener: the handshake timeout covers both).
    fn admit(&mut self, socket: TcpStream, peer: SocketAddr, tls: bool) {
        if self.connections.len() >= MAX_KEY {
            return;
        }
        // Frames are coalesced per loop pass already; Nagle would only add latency.
        let _ = socket.set_nodelay(true);
        let mut transport = if tls {
            match self.tls_transport(socket) {
                Ok(transport) => transport,
                Err(e) => {
                    warn!("peer={peer} cannot start a TLS session: {e}");
                    return;
                }
            }
        } else {
            Transport::plain(socket)
        };
        let entry = self.connections.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(
            transport.socket(),
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("peer={peer} cannot register socket: {e}");
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        let deadline = self.now + self.config.handshake_timeout;
        entry.insert(Connection::new(id, transport, peer, self.now, deadline));
        self.set_deadline(key, deadline);
        self.stats.opened();
        trace!("conn={id} peer={peer} accepted");
        // No read here: registering reports a request that is already waiting as an event.
    }
}

impl Server {
    #[cfg(feature = "tls")]
    fn tls_transport(&self, socket: TcpStream) -> Result<Transport, String> {
        let config = self.tls.clone().ok_or("no TLS settings")?;
        let session = crate::tls::TlsSession::new(config).map_err(|e| e.to_string())?;
        Ok(Transport::tls(socket, session))
    }

    /// Without the `tls` feature no listener is a TLS one.
    #[cfg(not(feature = "tls"))]
    fn tls_transport(&self, socket: TcpStream) -> Result<Transport, String> {
        Ok(Transport::plain(socket))
    }
}

fn is_resource_exhaustion(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Raises the soft open-file limit to the hard limit; returns the soft limit in force.
pub(super) fn raise_open_file_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
    }
    usize::try_from(limit.rlim_cur)
        .unwrap_or(usize::MAX)
        .min(1 << 24)
}
