//! The event loop: one `mio::Poll`, the listener, the only `Slab<Connection>`, the timers, and
//! the dirty and doomed lists. Everything that involves more than one connection happens here.
//!
//! One pass of the loop: wait for events (the timeout is the nearest deadline), handle each
//! (reads parse frames and queue copies to recipients), fire due timers, enforce the
//! process-wide outbound budget, flush every dirty connection once, then remove the doomed.
//!
//! `Server` is one struct whose methods live in one file per concern:
//!
//! | file | concern |
//! |---|---|
//! | `mod.rs` | the struct, bind, the run loop, the poll timeout |
//! | `accept.rs` | accepting and admitting sockets, the open-file limit |
//! | `requests.rs` | HTTP requests and responses before any upgrade |
//! | `websocket.rs` | readiness, the read schedule, the upgrade, WebSocket reads |
//! | `relay.rs` | rooms, fan-out, the rate limit, messages from other nodes |
//! | `write.rs` | flushing dirty connections, the process-wide outbound budget |
//! | `lifecycle.rs` | timers and deadlines, closing, doom and reap |
//! | `shutdown.rs` | signals, reload, drain |
//! | `metrics.rs` | the figures `/metrics`, `/healthz` and the stats line read |
//! | `timers.rs`, `read_schedule.rs` | small types that own their invariants |

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use log::{info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use tungstenite::protocol::WebSocketConfig;

use crate::assets::{AssetError, Assets};
use crate::config::{Config, ConfigError, PageSource, RESERVED_FDS};
use crate::connection::{Connection, ReadScratch};
use crate::deflate::{Compressor, DEFAULT_LEVEL};
use crate::listen;
use crate::outbound::QueuedTotal;
use crate::redis::{Incoming, RedisConfig, RedisLink};
use crate::room::{HistoryLimits, Rooms};
use crate::stats::{ProcessInfo, Stats};
use crate::systemd::{self, Notifier};

mod accept;
mod lifecycle;
mod memory;
mod metrics;
pub(crate) mod read_schedule;
mod relay;
mod requests;
mod shutdown;
pub(crate) mod timers;
mod websocket;
mod write;

use read_schedule::ReadSchedule;
use timers::{ConnectionTimers, LoopDeadlines};
use write::{SPARE_SHARE, outbound_limit};

const LISTENER: Token = Token(usize::MAX - 1);
/// The second listener of `--tls-port`.
const TLS_LISTENER: Token = Token(usize::MAX - 6);
const WAKER: Token = Token(usize::MAX - 2);
const SIGNALS: Token = Token(usize::MAX - 3);
const REDIS_SUBSCRIBE: Token = Token(usize::MAX - 4);
const REDIS_PUBLISH: Token = Token(usize::MAX - 5);
/// Connection keys stay below this, clear of the special tokens above.
const MAX_KEY: usize = usize::MAX - 16;
/// Events taken per poll call.
const EVENTS_CAPACITY: usize = 1024;

/// Why the server could not start or stopped abnormally.
#[derive(Debug)]
pub enum ServerError {
    Config(ConfigError),
    Bind(SocketAddr, io::Error),
    SocketActivation(io::Error),
    /// `--send-buffer` could not be set on a listening socket.
    SendBuffer(io::Error),
    Assets(AssetError),
    Poll(io::Error),
    Signals(io::Error),
    #[cfg(feature = "tls")]
    Tls(crate::tls::TlsError),
    /// The Redis link cannot start: `rediss://` roots or host unusable (see `--redis-ca`).
    Redis(crate::redis::RedisStartError),
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::Config(e) => write!(f, "invalid settings: {e}"),
            ServerError::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            ServerError::SocketActivation(e) => write!(f, "systemd socket activation: {e}"),
            ServerError::SendBuffer(e) => write!(f, "--send-buffer: {e}"),
            ServerError::Assets(e) => write!(f, "{e}"),
            ServerError::Poll(e) => write!(f, "event loop failure: {e}"),
            ServerError::Signals(e) => write!(f, "cannot install signal handlers: {e}"),
            #[cfg(feature = "tls")]
            ServerError::Tls(e) => write!(f, "{e}"),
            ServerError::Redis(e) => write!(f, "--redis: {e}"),
        }
    }
}

impl std::error::Error for ServerError {}

/// Stops a running server from another thread (tests, embedding).
#[derive(Clone)]
pub struct ServerHandle {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl ServerHandle {
    /// Begins a graceful shutdown, as SIGTERM does.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Err(e) = self.waker.wake() {
            warn!("cannot wake the event loop: {e}");
        }
    }
}

/// A listening socket and whether what it accepts speaks TLS.
struct Listener {
    socket: TcpListener,
    token: Token,
    tls: bool,
}

pub struct Server {
    poll: Poll,
    /// Empty once draining has begun.
    listeners: Vec<Listener>,
    local_addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    /// The TLS settings new handshakes use (replaced on SIGHUP; open sessions keep theirs).
    #[cfg(feature = "tls")]
    tls: Option<Arc<rustls::ServerConfig>>,
    connections: Slab<Connection>,
    rooms: Rooms,
    config: Config,
    websocket_config: WebSocketConfig,
    assets: Assets,
    stats: Stats,
    /// The read buffer every connection uses in turn (and the loop's inflater).
    scratch: ReadScratch,
    /// With `--compression on`: compresses a room message once for every member that
    /// negotiated permessage-deflate (about 300 KiB of tables, once per process).
    compressor: Option<Compressor>,
    /// Every connection's deadline.
    timers: ConnectionTimers,
    /// The loop's own deadlines.
    deadlines: LoopDeadlines,
    /// Connections that stopped reading before `WouldBlock` and must be read again.
    reads: ReadSchedule,
    /// Connections with bytes to flush this pass.
    dirty: Vec<usize>,
    /// Connections to remove at the end of this pass.
    doomed: Vec<usize>,
    next_id: u64,
    max_connections: usize,
    /// Sum of every connection's outbound queue, kept by the queues themselves.
    queued: QueuedTotal,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    started: Instant,
    now: Instant,
    notifier: Option<Notifier>,
    stats_at_last_line: Stats,
    /// The link to the other wschat processes sharing rooms through Redis (`--redis`).
    redis: Option<RedisLink>,
    /// Messages from other nodes, delivered after the batch of events.
    redis_incoming: Vec<Incoming>,
    /// Over `--max-outbound-total` since the last pass (the warning is logged once).
    over_total_budget: bool,
    /// Connections that may read in this pass (readable events and owed reads): they share
    /// the pass's read budget (see `read_budget`).
    readers_this_pass: usize,
    /// The last /proc reading and when it was taken.
    process_info: Option<(Instant, ProcessInfo)>,
    /// The memory ceiling and how close the process is to it.
    memory: memory::MemoryState,
    /// How the ceiling was found, for the start-up line.
    ceiling_source: String,
    /// New sockets are being refused at the connection cap (logged once per episode).
    refusing_at_cap: bool,
    /// Rooms that owe their `wschat.v1` members a presence frame at `deadlines.presence`.
    presence_rooms: Vec<crate::room::RoomKey>,
    /// Wall-clock milliseconds at `started`: message times are derived from the loop's
    /// monotonic clock, with no system call per message.
    wall_at_start_ms: u64,
}

impl Server {
    /// Checks the settings, raises the open-file limit, loads the page and binds the listening
    /// socket (or takes the one systemd passed). Nothing is served until [`Server::run`].
    pub fn bind(config: Config) -> Result<Server, ServerError> {
        config.validate().map_err(ServerError::Config)?;
        let assets = match &config.page {
            PageSource::BuiltIn => Assets::built_in(),
            PageSource::Dir(dir) => Assets::load_dir(dir).map_err(ServerError::Assets)?,
        };
        let fd_limit = accept::raise_open_file_limit();
        let fd_allowed = fd_limit.saturating_sub(RESERVED_FDS).max(1);
        let max_connections = match config.max_connections {
            Some(wanted) if wanted > fd_allowed => {
                warn!(
                    "--max-connections {wanted} exceeds what the open-file limit ({fd_limit}) allows; using {fd_allowed}"
                );
                fd_allowed
            }
            Some(wanted) => wanted,
            None => fd_allowed,
        };

        let activated = if config.systemd {
            systemd::take_listener().map_err(ServerError::SocketActivation)?
        } else {
            None
        };
        #[cfg(feature = "tls")]
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                Some(crate::tls::load_server_config(cert, key).map_err(ServerError::Tls)?)
            }
            _ => None,
        };
        #[cfg(feature = "tls")]
        let tls_on = tls.is_some();
        #[cfg(not(feature = "tls"))]
        let tls_on = false;
        let bind = |port: u16| {
            let address = SocketAddr::new(config.bind, port);
            listen::bind_listener(address, config.reuse_port)
                .map(TcpListener::from_std)
                .map_err(|e| ServerError::Bind(address, e))
        };
        let main_socket = match activated {
            Some(std_listener) => {
                if config.reuse_port {
                    info!("--reuse-port is ignored: systemd passed the listening socket");
                }
                TcpListener::from_std(std_listener)
            }
            None => bind(config.port)?,
        };
        let mut listeners = vec![Listener {
            socket: main_socket,
            token: LISTENER,
            // With `--tls-port`, the main port stays plain.
            tls: tls_on && config.tls_port.is_none(),
        }];
        if let (true, Some(port)) = (tls_on, config.tls_port) {
            listeners.push(Listener {
                socket: bind(port)?,
                token: TLS_LISTENER,
                tls: true,
            });
        }
        // Set on the listeners (systemd's too), inherited by every accepted socket.
        if config.send_buffer > 0 {
            for listener in &listeners {
                listen::set_send_buffer(&listener.socket, config.send_buffer)
                    .map_err(ServerError::SendBuffer)?;
            }
        }
        let address_of = |listener: &Listener| {
            listener
                .socket
                .local_addr()
                .map_err(|e| ServerError::Bind(SocketAddr::new(config.bind, config.port), e))
        };
        let local_addr = address_of(&listeners[0])?;
        let tls_addr = match listeners.iter().find(|l| l.tls) {
            Some(listener) => Some(address_of(listener)?),
            None => None,
        };
        let poll = Poll::new().map_err(ServerError::Poll)?;
        for listener in &mut listeners {
            poll.registry()
                .register(&mut listener.socket, listener.token, Interest::READABLE)
                .map_err(ServerError::Poll)?;
        }
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(ServerError::Poll)?);
        let now = Instant::now();
        let (ceiling, ceiling_source) = match config.max_memory {
            Some(bytes) => (bytes, "--max-memory".to_string()),
            None => {
                let (bytes, how) = crate::memory::default_ceiling();
                (usize::try_from(bytes).unwrap_or(usize::MAX), how)
            }
        };
        if ceiling / 4 < config.max_outbound {
            return Err(ServerError::Config(ConfigError(format!(
                "--max-memory {ceiling} is too small: a quarter of it must hold one client's --max-outbound ({})",
                config.max_outbound
            ))));
        }
        let notifier = if config.systemd {
            Notifier::from_env()
        } else {
            None
        };
        let redis = match &config.redis {
            Some(url) => {
                let mut link_config = RedisConfig::new(url.clone(), crate::redis::random_node_id());
                link_config.sharded = config.redis_sharded;
                link_config.max_message_size = config.max_message_size;
                link_config.ca_file = config.redis_ca.clone();
                Some(
                    RedisLink::new(
                        link_config,
                        poll.registry(),
                        REDIS_SUBSCRIBE,
                        REDIS_PUBLISH,
                        now,
                    )
                    .map_err(ServerError::Redis)?,
                )
            }
            None => None,
        };
        Ok(Server {
            poll,
            listeners,
            local_addr,
            tls_addr,
            #[cfg(feature = "tls")]
            tls,
            connections: Slab::new(),
            rooms: Rooms::new(HistoryLimits {
                messages: config.history,
                bytes: config.history_bytes,
                rooms: max_connections,
            }),
            websocket_config: config.websocket_config(),
            assets,
            stats: Stats::default(),
            scratch: ReadScratch::new(config.max_message_size),
            compressor: config.compression.then(|| Compressor::new(DEFAULT_LEVEL)),
            timers: ConnectionTimers::default(),
            deadlines: LoopDeadlines {
                stats: config.stats_interval.map(|every| now + every),
                ..LoopDeadlines::default()
            },
            reads: ReadSchedule::default(),
            dirty: Vec::new(),
            doomed: Vec::new(),
            next_id: 1,
            max_connections,
            queued: QueuedTotal::with_spare_limit(
                outbound_limit(config.max_outbound_total, ceiling) / SPARE_SHARE,
            ),
            stop: Arc::new(AtomicBool::new(false)),
            waker,
            signals: None,
            started: now,
            now,
            stats_at_last_line: Stats::default(),
            redis,
            redis_incoming: Vec::new(),
            over_total_budget: false,
            readers_this_pass: 0,
            process_info: None,
            memory: memory::MemoryState::new(ceiling, now),
            ceiling_source,
            refusing_at_cap: false,
            presence_rooms: Vec::new(),
            wall_at_start_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            notifier,
            config,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address that speaks TLS: the main one, or the `--tls-port` one; None without TLS.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            stop: self.stop.clone(),
            waker: self.waker.clone(),
        }
    }

    /// Runs the loop until a shutdown has drained. Returns an error only if polling fails.
    pub fn run(mut self) -> Result<(), ServerError> {
        info!(
            "memory ceiling: {} bytes ({}); near it upgrades get 503, partial input stops being read, queues are shed",
            self.memory.ceiling, self.ceiling_source
        );
        if self.config.send_buffer == 0 {
            info!(
                "kernel send buffer: autotuned (--send-buffer 0), up to tcp_wmem's maximum per connection"
            );
        } else if let Some(Ok(bytes)) = self
            .listeners
            .first()
            .map(|l| listen::send_buffer(&l.socket))
        {
            info!(
                "kernel send buffer: {bytes} bytes per connection (--send-buffer {}, doubled by the kernel and capped at net.core.wmem_max)",
                self.config.send_buffer
            );
        }
        info!(
            "limits: max-connections={} max-message-size={} max-outbound={} max-outbound-total={} slow-client={} compression={}",
            self.max_connections,
            self.config.max_message_size,
            self.config.max_outbound,
            self.outbound_limit(),
            self.config.slow_client,
            if self.config.compression {
                format!("on (from {} bytes)", self.config.compression_min)
            } else {
                "off".to_string()
            },
        );
        if let Some(notifier) = &self.notifier {
            notifier.notify("READY=1");
            if let Some(every) = notifier.watchdog_every {
                self.deadlines.watchdog = Some(self.now + every);
            }
        }
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        loop {
            if let Some(redis) = self.redis.as_mut() {
                // Every publish of the last pass leaves in one write.
                redis.flush(self.now);
            }
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(ServerError::Poll(e));
            }
            let pass_started = Instant::now();
            self.now = pass_started;
            // Reads owed from earlier passes; reads owed during this one wait for the next.
            let owed = self.reads.take(&mut self.connections);
            self.readers_this_pass = owed.len()
                + events
                    .iter()
                    .filter(|e| e.is_readable() || e.is_read_closed())
                    .count();
            for event in events.iter() {
                match event.token() {
                    LISTENER | TLS_LISTENER => self.accept_all(),
                    WAKER => {}
                    SIGNALS => self.on_signals(),
                    REDIS_SUBSCRIBE | REDIS_PUBLISH => {
                        if let Some(redis) = self.redis.as_mut() {
                            redis.on_event(event, &mut self.redis_incoming, self.now);
                        }
                    }
                    Token(key) => {
                        let readable =
                            event.is_readable() || event.is_read_closed() || event.is_error();
                        let writable = event.is_writable() || event.is_write_closed();
                        self.on_connection_event(key, readable, writable);
                    }
                }
            }
            if self.stop.load(Ordering::SeqCst) && self.deadlines.drain.is_none() {
                self.begin_drain();
            }
            self.serve_owed_reads(&owed);
            self.reads.give_back(owed);
            self.fire_timers();
            self.deliver_from_redis();
            self.enforce_memory_ceiling();
            self.enforce_total_budget();
            self.flush_dirty();
            self.reap_doomed();
            self.give_memory_back();
            #[cfg(debug_assertions)]
            self.check_queued_total();
            self.stats.record_loop(pass_started.elapsed());
            if self.drained() {
                break;
            }
        }
        Ok(())
    }

    /// The poll timeout: zero when reads are owed, else the time to the nearest deadline, or
    /// forever when nothing is scheduled (an idle server does not wake up).
    fn poll_timeout(&mut self) -> Option<std::time::Duration> {
        if self.reads.any_owed() {
            return Some(std::time::Duration::ZERO);
        }
        let connections = &self.connections;
        let next_connection = self.timers.next_wake(|key, id, at| {
            connections
                .get(key)
                .is_some_and(|c| c.id == id && timers::entry_is_live(&c.timer, at))
        });
        let nearest = [
            next_connection,
            self.deadlines.nearest(),
            self.redis.as_ref().and_then(|r| r.next_deadline()),
        ]
        .into_iter()
        .flatten()
        .min();
        timers::poll_timeout(nearest, Instant::now())
    }
}

impl Server {
    /// The loop's time as milliseconds since the Unix epoch: when a message was received.
    fn wall_ms(&self) -> u64 {
        self.wall_at_start_ms + self.now.duration_since(self.started).as_millis() as u64
    }
}

impl timers::TimerTable for Slab<Connection> {
    fn timer(&mut self, key: usize) -> Option<(u64, &mut timers::ConnectionTimer)> {
        self.get_mut(key).map(|c| (c.id, &mut c.timer))
    }
}

impl read_schedule::ReadTable for Slab<Connection> {
    fn read_flags(&mut self, key: usize) -> Option<&mut read_schedule::ReadFlags> {
        self.get_mut(key).map(|c| &mut c.reads)
    }
}

/// Puts a connection on the dirty list once per pass.
fn mark_dirty(dirty: &mut Vec<usize>, key: usize, conn: &mut Connection) {
    if !conn.dirty && (!conn.outbound.is_empty() || conn.transport.has_pending_output()) {
        conn.dirty = true;
        dirty.push(key);
    }
}
