//! The Redis host's address, found off the loop. The system resolver blocks (for seconds when
//! DNS is slow), so each lookup runs on a short-lived thread; the loop only collects results.
//!
//! Until a lookup has found an address the link has nowhere to connect: it waits, and the
//! lookup thread wakes the loop when it is done by closing its end of a socket pair whose other
//! end is registered with the poll under one of the link's tokens. Once an address is known,
//! every connect attempt uses the last one found and starts a fresh lookup beside it, so a host
//! that moves is followed without ever stalling an attempt.

use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc::{self, Receiver, TryRecvError};

use mio::net::UnixStream;
use mio::{Interest, Registry, Token};

/// Where the link can connect now.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Address {
    Known(SocketAddr),
    /// No address yet: a lookup runs and its end makes the token given to
    /// [`HostLookup::address`] ready.
    Pending,
    /// The lookup ended without an address and none was found before: the reason.
    Failed(String),
}

pub(super) struct HostLookup {
    host: String,
    port: u16,
    /// The URL names an IP address: it is the answer, and no lookup ever runs.
    literal: Option<SocketAddr>,
    /// The address the last successful lookup gave.
    last_found: Option<SocketAddr>,
    /// The lookup in flight, if any.
    running: Option<Running>,
}

struct Running {
    /// The lookup's one answer.
    answer: Receiver<Result<SocketAddr, String>>,
    /// The loop's end of the socket pair: readable once the thread has answered and closed
    /// its end.
    done: UnixStream,
    /// `done` is registered with the poll: the link is waiting for this answer.
    registered: bool,
}

impl HostLookup {
    pub(super) fn new(host: &str, port: u16) -> HostLookup {
        HostLookup {
            host: host.to_string(),
            port,
            literal: host
                .parse::<IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, port)),
            last_found: None,
            running: None,
        }
    }

    /// Called at every connect attempt, and again when the token of a pending lookup is ready:
    /// the address to connect to now, if one is known (a fresh lookup then starts beside it),
    /// or whether to wait for the running lookup. Only the first address found is used.
    pub(super) fn address(&mut self, registry: &Registry, token: Token) -> Address {
        if let Some(addr) = self.literal {
            return Address::Known(addr);
        }
        match self.collect(registry) {
            Some(Ok(addr)) => self.last_found = Some(addr),
            Some(Err(reason)) => match self.last_found {
                None => return Address::Failed(reason),
                Some(addr) => log::warn!("redis: {reason}; using {addr}, found earlier"),
            },
            None => {}
        }
        if self.running.is_none()
            && let Err(error) = self.start()
        {
            let reason = format!("cannot start a lookup of {}: {error}", self.host);
            match self.last_found {
                None => return Address::Failed(reason),
                Some(addr) => log::warn!("redis: {reason}; using {addr}, found earlier"),
            }
        }
        if let Some(addr) = self.last_found {
            return Address::Known(addr);
        }
        let Some(running) = self.running.as_mut() else {
            return Address::Failed(format!("no lookup of {} is running", self.host));
        };
        if !running.registered {
            // Registering an end that is already readable still reports it: no lost wake-up
            // if the thread finished since `collect` looked.
            if let Err(error) = registry.register(&mut running.done, token, Interest::READABLE) {
                return Address::Failed(format!(
                    "cannot wait for the lookup of {}: {error}",
                    self.host
                ));
            }
            running.registered = true;
        }
        Address::Pending
    }

    /// The answer of a lookup that has ended, once; `None` while it runs (or none ran).
    fn collect(&mut self, registry: &Registry) -> Option<Result<SocketAddr, String>> {
        let answer = match self.running.as_ref()?.answer.try_recv() {
            Ok(answer) => answer,
            Err(TryRecvError::Empty) => return None,
            Err(TryRecvError::Disconnected) => Err(format!(
                "the lookup of {} ended without an answer",
                self.host
            )),
        };
        if let Some(mut running) = self.running.take()
            && running.registered
        {
            let _ = registry.deregister(&mut running.done);
        }
        Some(answer)
    }

    /// Starts a lookup thread; it answers once, then closes its end of the socket pair.
    fn start(&mut self) -> std::io::Result<()> {
        let (done, thread_end) = UnixStream::pair()?;
        let (sender, answer) = mpsc::channel();
        let (host, port) = (self.host.clone(), self.port);
        std::thread::Builder::new()
            .name("redis-lookup".into())
            .spawn(move || {
                let found = crate::resolve::resolve(&host, port)
                    .map_err(|error| format!("cannot resolve {host}: {error}"));
                let _ = sender.send(found);
                // The answer is in the channel before the loop can see this end close.
                drop(thread_end);
            })?;
        self.running = Some(Running {
            answer,
            done,
            registered: false,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll};
    use std::time::{Duration, Instant};

    #[test]
    fn an_ip_address_needs_no_lookup() {
        let poll = Poll::new().unwrap();
        let mut lookup = HostLookup::new("127.0.0.1", 7000);
        let want = Address::Known("127.0.0.1:7000".parse().unwrap());
        assert_eq!(lookup.address(poll.registry(), Token(1)), want);
        assert!(lookup.running.is_none());
        let mut lookup = HostLookup::new("::1", 7000);
        assert_eq!(
            lookup.address(poll.registry(), Token(1)),
            Address::Known("[::1]:7000".parse().unwrap())
        );
    }

    #[test]
    fn the_first_lookup_is_waited_for_and_wakes_the_poll() {
        let mut poll = Poll::new().unwrap();
        let mut lookup = HostLookup::new("localhost", 7000);
        // A fresh lookup has not answered yet: wait, do not fail.
        assert_eq!(lookup.address(poll.registry(), Token(7)), Address::Pending);
        let mut events = Events::with_capacity(4);
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = loop {
            assert!(Instant::now() < deadline, "the lookup never woke the poll");
            poll.poll(&mut events, Some(Duration::from_secs(1)))
                .unwrap();
            if events.iter().any(|event| event.token() == Token(7)) {
                match lookup.address(poll.registry(), Token(7)) {
                    Address::Known(addr) => break addr,
                    Address::Pending => {} // spurious wake-up
                    Address::Failed(reason) => panic!("{reason}"),
                }
            }
        };
        assert_eq!(addr.port(), 7000);
        assert!(addr.ip().is_loopback());
        // Later attempts use the address found while a fresh lookup runs beside them.
        assert!(lookup.running.is_some());
        assert_eq!(
            lookup.address(poll.registry(), Token(7)),
            Address::Known(addr)
        );
    }
}
