//! Signals and shutdown: SIGINT/SIGTERM drain (Close 1001 to every WebSocket, the listener
//! closed, HTTP exchanges finish), a second one exits at once; SIGHUP reloads `--static-dir`.

use log::{info, warn};
use mio::Interest;

use super::{SIGNALS, Server, ServerError};
use crate::assets::Assets;
use crate::config::PageSource;
use crate::connection::{Connection, Phase};

impl Server {
    /// SIGINT and SIGTERM drain and stop the server; SIGHUP reloads `--static-dir`. Only the
    /// binary calls this: a library user (tests) keeps its own signal handling.
    pub fn handle_signals(&mut self) -> Result<(), ServerError> {
        let mut signals =
            signal_hook_mio::v1_0::Signals::new([libc::SIGINT, libc::SIGTERM, libc::SIGHUP])
                .map_err(ServerError::Signals)?;
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(ServerError::Signals)?;
        self.signals = Some(signals);
        Ok(())
    }

    /// Handles the signals delivered since the last event on the signal pipe.
    pub(super) fn on_signals(&mut self) {
        let Some(signals) = self.signals.as_mut() else {
            return;
        };
        let received: Vec<i32> = signals.pending().collect();
        for signal in received {
            match signal {
                libc::SIGINT | libc::SIGTERM => {
                    if self.deadlines.drain.is_some() {
                        info!("second stop signal: exiting now");
                        self.deadlines.drain = Some(self.now);
                    } else {
                        info!("stop signal received: draining");
                        self.begin_drain();
                    }
                }
                libc::SIGHUP => self.reload(),
                _ => {}
            }
        }
    }

    /// SIGHUP: reload `--static-dir` and the TLS certificate and key (the only things read
    /// from disk); nothing else.
    fn reload(&mut self) {
        #[cfg(feature = "tls")]
        self.reload_tls();
        match &self.config.page {
            PageSource::Dir(dir) => match Assets::load_dir(dir) {
                Ok(assets) => {
                    info!(
                        "SIGHUP: reloaded {} ({} bytes)",
                        dir.display(),
                        assets.total_bytes()
                    );
                    self.assets = assets;
                }
                Err(e) => warn!("SIGHUP: keeping the current page: {e}"),
            },
            PageSource::BuiltIn => info!("SIGHUP: nothing to reload (the page is built in)"),
        }
    }

    /// SIGHUP with TLS: new handshakes use the new pair; open sessions keep the old one (it
    /// lives as long as they do). A pair that fails to load keeps the current one.
    #[cfg(feature = "tls")]
    fn reload_tls(&mut self) {
        let (Some(cert), Some(key), Some(_)) =
            (&self.config.tls_cert, &self.config.tls_key, &self.tls)
        else {
            return;
        };
        match crate::tls::load_server_config(cert, key) {
            Ok(config) => {
                info!("SIGHUP: reloaded the TLS certificate {}", cert.display());
                self.tls = Some(config);
            }
            Err(e) => warn!("SIGHUP: keeping the current TLS certificate: {e}"),
        }
    }

    /// Stops accepting and says goodbye: Close 1001 to every WebSocket, HTTP exchanges finish.
    pub(super) fn begin_drain(&mut self) {
        self.deadlines.drain = Some(self.now + self.config.drain_timeout);
        if let Some(notifier) = &self.notifier {
            notifier.notify("STOPPING=1");
        }
        for mut listener in std::mem::take(&mut self.listeners) {
            let _ = self.poll.registry().deregister(&mut listener.socket);
        }
        info!("draining {} connections", self.connections.len());
        let keys: Vec<usize> = self.connections.iter().map(|(key, _)| key).collect();
        for key in keys {
            let Some(conn) = self.connections.get(key) else {
                continue;
            };
            match conn.phase {
                Phase::WebSocket(_) if conn.accepts_messages() => {
                    self.close_websocket(key, crate::connection::CloseReason::Shutdown)
                }
                // HTTP connections stay: a request on an open keep-alive connection is
                // answered (with `Connection: close`), so /healthz can say "draining".
                _ => {}
            }
        }
    }

    /// True when the loop may exit: draining, and every client gone (idle keep-alive HTTP
    /// connections may still ask /healthz; they do not hold the exit) or the deadline passed.
    pub(super) fn drained(&self) -> bool {
        let Some(deadline) = self.deadlines.drain else {
            return false;
        };
        if self.connections.iter().all(|(_, c)| is_idle_http(c)) {
            info!("drained: every client is gone");
            return true;
        }
        if self.now >= deadline {
            info!(
                "drain deadline passed: dropping {} connections",
                self.connections.len()
            );
            return true;
        }
        false
    }
}

/// An HTTP connection waiting for its next request, with nothing half-read or unsent.
fn is_idle_http(conn: &Connection) -> bool {
    matches!(&conn.phase, Phase::Http { head } if head.is_empty()) && conn.outbound.is_empty()
}
