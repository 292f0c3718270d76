//! The event loop: one `mio::Poll`, the listener, the only `Slab<Connection>`, the timers, and
//! the dirty and doomed lists. Everything that involves more than one connection happens here:
//! accepting, routing an upgrade into a room, fanning a message out, shedding load, shutdown.
//!
//! One pass of the loop: wait for events (the timeout is the nearest deadline), handle each
//! (reads parse frames and queue copies to recipients), fire due timers, enforce the
//! process-wide outbound budget, flush every dirty connection once, then remove the doomed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use log::{debug, info, trace, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use tungstenite::protocol::{Message, WebSocketConfig};

use crate::assets::{Asset, AssetError, Assets};
use crate::config::{
    CLOSE_TIMEOUT, Config, ConfigError, MAX_HEAD_SIZE, OriginPolicy, OverRate, PageSource,
    RESERVED_FDS, SlowClientPolicy,
};
use crate::connection::{CloseReason, Connection, Phase, ReadScratch, WsRead};
use crate::http::{self, Head, HttpError, Method, Request, ResponseHead, Route, Status};
use crate::message::MessageKind;
use crate::outbound::{EncodedFrame, Offer, SHARE_THRESHOLD};
use crate::redis::metrics::render as redis_metrics;
use crate::redis::{Incoming, LinkState, RedisConfig, RedisLink};
use crate::room::{HistoryLimits, Rooms};
use crate::stats::{DropReason, Gauges, ProcessInfo, Refusal, Stats};
use crate::systemd::{self, Notifier};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
const SIGNALS: Token = Token(usize::MAX - 3);
const REDIS_SUBSCRIBE: Token = Token(usize::MAX - 4);
const REDIS_PUBLISH: Token = Token(usize::MAX - 5);
/// Connection keys stay below this, clear of the special tokens above.
const MAX_KEY: usize = usize::MAX - 16;

/// A WebSocket's room slot once it has left its room.
const NOT_A_MEMBER: usize = usize::MAX;
/// After `EMFILE`/`ENFILE`, accepting pauses this long instead of spinning on the error.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// How long a client refused at the connection cap is told to wait.
const RETRY_AFTER_SECONDS: &str = "5";
/// Events taken per poll call.
const EVENTS_CAPACITY: usize = 1024;

/// Why the server could not start or stopped abnormally.
#[derive(Debug)]
pub enum ServerError {
    Config(ConfigError),
    Bind(SocketAddr, io::Error),
    SocketActivation(io::Error),
    Assets(AssetError),
    Poll(io::Error),
    Signals(io::Error),
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::Config(e) => write!(f, "invalid settings: {e}"),
            ServerError::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            ServerError::SocketActivation(e) => write!(f, "systemd socket activation: {e}"),
            ServerError::Assets(e) => write!(f, "{e}"),
            ServerError::Poll(e) => write!(f, "event loop failure: {e}"),
            ServerError::Signals(e) => write!(f, "cannot install signal handlers: {e}"),
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

/// A timer entry: (when, connection key, connection id). Stale entries (the connection is
/// gone, or its deadline moved) are skipped when they come up.
type TimerEntry = Reverse<(Instant, usize, u64)>;

pub struct Server {
    poll: Poll,
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    connections: Slab<Connection>,
    rooms: Rooms,
    config: Config,
    websocket_config: WebSocketConfig,
    assets: Assets,
    stats: Stats,
    /// The read buffer every connection uses in turn.
    scratch: ReadScratch,
    timers: BinaryHeap<TimerEntry>,
    /// Connections with bytes to flush this pass.
    dirty: Vec<usize>,
    /// Connections to remove at the end of this pass, and why.
    doomed: Vec<usize>,
    /// Connections that stopped reading before `WouldBlock` and must be read again.
    owed_reads: Vec<usize>,
    next_id: u64,
    max_connections: usize,
    /// Sum of every connection's outbound queue.
    queued_total: usize,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    drain_deadline: Option<Instant>,
    accept_paused_until: Option<Instant>,
    started: Instant,
    now: Instant,
    notifier: Option<Notifier>,
    next_watchdog: Option<Instant>,
    next_stats: Option<Instant>,
    stats_at_last_line: Stats,
    next_history_expiry: Option<Instant>,
    /// The link to the other wschat processes sharing rooms through Redis (`--redis`).
    redis: Option<RedisLink>,
    /// Messages from other nodes, delivered after the batch of events.
    redis_incoming: Vec<Incoming>,
    /// Over `--max-outbound-total` since the last pass (the warning is logged once).
    over_total_budget: bool,
    /// The last /proc reading and when it was taken.
    process_info: Option<(Instant, ProcessInfo)>,
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
        let fd_limit = raise_open_file_limit();
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
        let listener = match activated {
            Some(std_listener) => TcpListener::from_std(std_listener),
            None => {
                let address = SocketAddr::new(config.bind, config.port);
                TcpListener::bind(address).map_err(|e| ServerError::Bind(address, e))?
            }
        };
        let local_addr = listener
            .local_addr()
            .map_err(|e| ServerError::Bind(SocketAddr::new(config.bind, config.port), e))?;
        let poll = Poll::new().map_err(ServerError::Poll)?;
        let mut listener = listener;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(ServerError::Poll)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(ServerError::Poll)?);
        let now = Instant::now();
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
                Some(
                    RedisLink::new(
                        link_config,
                        poll.registry(),
                        REDIS_SUBSCRIBE,
                        REDIS_PUBLISH,
                        now,
                    )
                    .map_err(ServerError::Poll)?,
                )
            }
            None => None,
        };
        Ok(Server {
            poll,
            listener: Some(listener),
            local_addr,
            connections: Slab::new(),
            rooms: Rooms::new(HistoryLimits {
                messages: config.history,
                bytes: config.history_bytes,
                rooms: max_connections,
            }),
            websocket_config: config.websocket_config(),
            assets,
            stats: Stats::default(),
            scratch: ReadScratch::default(),
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            doomed: Vec::new(),
            owed_reads: Vec::new(),
            next_id: 1,
            max_connections,
            queued_total: 0,
            stop: Arc::new(AtomicBool::new(false)),
            waker,
            signals: None,
            drain_deadline: None,
            accept_paused_until: None,
            started: now,
            now,
            next_watchdog: None,
            next_stats: config.stats_interval.map(|every| now + every),
            stats_at_last_line: Stats::default(),
            next_history_expiry: None,
            redis,
            redis_incoming: Vec::new(),
            over_total_budget: false,
            process_info: None,
            notifier,
            config,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
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

    /// Runs the loop until a shutdown has drained. Returns an error only if polling fails.
    pub fn run(mut self) -> Result<(), ServerError> {
        info!(
            "limits: max-connections={} max-message-size={} max-outbound={} max-outbound-total={} slow-client={}; worst-case memory the limits allow: {} MiB",
            self.max_connections,
            self.config.max_message_size,
            self.config.max_outbound,
            self.config.max_outbound_total,
            self.config.slow_client,
            self.config.worst_case_memory(self.max_connections) / (1024 * 1024)
        );
        if let Some(notifier) = &self.notifier {
            notifier.notify("READY=1");
            if let Some(every) = notifier.watchdog_every {
                self.next_watchdog = Some(self.now + every);
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
            let owed = std::mem::take(&mut self.owed_reads);
            for &key in &owed {
                if let Some(conn) = self.connections.get_mut(key) {
                    conn.owed_queued = false;
                }
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
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
            if self.stop.load(Ordering::SeqCst) && self.drain_deadline.is_none() {
                self.begin_drain();
            }
            self.serve_owed_reads(&owed);
            self.fire_timers();
            self.deliver_from_redis();
            self.enforce_total_budget();
            self.flush_dirty();
            self.reap_doomed();
            #[cfg(debug_assertions)]
            self.check_queued_total();
            self.stats.record_loop(pass_started.elapsed());
            if let Some(deadline) = self.drain_deadline {
                // Idle keep-alive HTTP connections may still ask /healthz; they do not hold
                // the exit.
                if self.connections.iter().all(|(_, c)| is_idle_http(c)) {
                    info!("drained: every client is gone");
                    break;
                }
                if self.now >= deadline {
                    info!(
                        "drain deadline passed: dropping {} connections",
                        self.connections.len()
                    );
                    break;
                }
            }
        }
        Ok(())
    }

    /// The poll timeout: zero when work is owed, else the time to the nearest deadline, or
    /// forever when nothing is scheduled (an idle server does not wake up).
    fn poll_timeout(&mut self) -> Option<Duration> {
        if !self.owed_reads.is_empty() {
            return Some(Duration::ZERO);
        }
        // Superseded entries (a connection gone, an earlier entry armed) would wake the loop
        // for nothing, and an idle server after its last client: discard them now.
        while let Some(&Reverse((at, key, id))) = self.timers.peek()
            && !self
                .connections
                .get(key)
                .is_some_and(|c| c.id == id && c.timer_at == Some(at))
        {
            self.timers.pop();
        }
        let candidates = [
            self.timers.peek().map(|Reverse((at, _, _))| *at),
            self.accept_paused_until,
            self.next_watchdog,
            self.next_stats,
            self.drain_deadline,
            self.next_history_expiry,
            self.redis.as_ref().and_then(|r| r.next_deadline()),
        ];
        let nearest = candidates.into_iter().flatten().min()?;
        let now = Instant::now();
        // Round up to the next millisecond so epoll does not wake a hair early and spin.
        Some(nearest.saturating_duration_since(now) + Duration::from_micros(999))
    }

    // ----------------------------------------------------------------------------------
    // Accepting

    /// Accepts every pending connection. Called on a listener event and after an accept pause.
    fn accept_all(&mut self) {
        if self.accept_paused_until.is_some() {
            return;
        }
        loop {
            let Some(listener) = self.listener.as_mut() else {
                return;
            };
            match listener.accept() {
                Ok((socket, peer)) => self.admit(socket, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_resource_exhaustion(&e) => {
                    self.stats.accept_errors += 1;
                    warn!(
                        "accept failed ({e}); pausing accepts for {} ms (connections open: {})",
                        ACCEPT_PAUSE.as_millis(),
                        self.connections.len()
                    );
                    self.accept_paused_until = Some(self.now + ACCEPT_PAUSE);
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

    /// Registers a freshly accepted socket as a connection in the HTTP phase.
    fn admit(&mut self, mut socket: TcpStream, peer: SocketAddr) {
        if self.connections.len() >= MAX_KEY {
            return;
        }
        // Frames are coalesced per loop pass already; Nagle would only add latency.
        let _ = socket.set_nodelay(true);
        let entry = self.connections.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut socket,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("peer={peer} cannot register socket: {e}");
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        let deadline = self.now + self.config.handshake_timeout;
        entry.insert(Connection::new(id, socket, peer, self.now, deadline));
        self.set_deadline(key, deadline);
        self.stats.opened();
        trace!("conn={id} peer={peer} accepted");
        // No read here: registering reports a request that is already waiting as an event.
    }

    // ----------------------------------------------------------------------------------
    // Reading

    /// Handles readiness for one connection.
    fn on_connection_event(&mut self, key: usize, readable: bool, writable: bool) {
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        if writable && conn.write_blocked {
            conn.write_blocked = false;
            mark_dirty(&mut self.dirty, key, conn);
        }
        if readable {
            self.read_connection(key);
        }
    }

    /// Serves the reads owed at the start of this pass (read budget, a full queue drained
    /// since). A connection already read in this pass waits for the next one.
    fn serve_owed_reads(&mut self, owed: &[usize]) {
        for &key in owed {
            if self.connections.get(key).is_some_and(|c| c.read_owed) {
                self.read_connection(key);
            }
        }
    }

    /// Reads what a connection has for us, according to its phase, until `WouldBlock` or the
    /// read budget (once per pass). Called on readable events and for owed reads.
    fn read_connection(&mut self, key: usize) {
        self.scratch.begin();
        let pass = self.stats.loop_iterations;
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        if conn.read_pass == pass {
            // Its budget for this pass is spent: the rest waits for the next pass.
            conn.read_owed = true;
            self.owe_read(key);
            return;
        }
        conn.read_pass = pass;
        conn.read_owed = false;
        match conn.phase {
            Phase::Http { .. } => self.read_http(key),
            Phase::WebSocket(_) => self.read_websocket(key),
            Phase::Closing { .. } => self.progress_closing(key),
        }
        self.owe_read(key);
        if let Some(conn) = self.connections.get_mut(key) {
            mark_dirty(&mut self.dirty, key, conn);
        }
    }

    /// Puts a connection that owes a read on the list for the next pass, unless its own queue
    /// must drain first: an HTTP response not yet sent (bounded pipelining), or a WebSocket
    /// over its outbound budget (a client that does not read cannot make the server write
    /// more, pongs included). `flush_dirty` calls it again once the queue has drained.
    fn owe_read(&mut self, key: usize) {
        let max_outbound = self.config.max_outbound;
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        let queue_limit = match conn.phase {
            Phase::Http { .. } => 0,
            Phase::WebSocket(_) => max_outbound,
            Phase::Closing { .. } => usize::MAX,
        };
        if conn.read_owed && !conn.owed_queued && conn.outbound.len() <= queue_limit {
            conn.owed_queued = true;
            self.owed_reads.push(key);
        }
    }

    fn read_http(&mut self, key: usize) {
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        if !conn.outbound.is_empty() {
            // Bounded pipelining: the next request stays in the socket until the response to
            // the last one has gone.
            conn.read_owed = true;
            return;
        }
        // Hold at most a head's worth plus one read of what follows it.
        let limit = MAX_HEAD_SIZE + crate::connection::READ_SCRATCH_SIZE;
        let open = match conn.read_http(&mut self.scratch, limit, self.now) {
            Ok(open) => open,
            Err(e) => {
                debug!("conn={} peer={} read error: {e}", conn.id, conn.peer);
                let reason = if e.kind() == io::ErrorKind::ConnectionReset {
                    CloseReason::ClientGone
                } else {
                    CloseReason::IoError
                };
                self.doom(key, reason);
                return;
            }
        };
        self.serve_http(key, !open);
    }

    /// Answers the complete requests in a connection's HTTP buffer, one at a time: the next is
    /// served only once the previous response has been flushed (bounded pipelining).
    fn serve_http(&mut self, key: usize, peer_done: bool) {
        loop {
            let Some(conn) = self.connections.get_mut(key) else {
                return;
            };
            if !conn.outbound.is_empty() {
                // Come back after the flush.
                conn.read_owed = true;
                return;
            }
            let Phase::Http { head } = &mut conn.phase else {
                return;
            };
            let parsed = http::parse_head(head);
            match parsed {
                Ok(Head::Partial) => {
                    if peer_done {
                        self.doom(key, CloseReason::ClientGone);
                    }
                    return;
                }
                Err(error) => {
                    let head_only = head.starts_with(b"HEAD ");
                    self.refuse_http(key, error, head_only);
                    return;
                }
                Ok(Head::Complete(request, len)) => {
                    // Keep only what follows this head: the next request, or the first frames.
                    head.drain(..len);
                    let upgraded = self.serve_request(key, request, peer_done);
                    if upgraded {
                        return;
                    }
                }
            }
        }
    }

    /// Answers one request. Returns true if the connection became a WebSocket.
    fn serve_request(&mut self, key: usize, request: Request, peer_done: bool) -> bool {
        let route = match http::route(&request, |path| self.assets.contains(path)) {
            Ok(route) => route,
            Err(error) => {
                self.refuse_http(key, error, request.method == Method::Head);
                return false;
            }
        };
        if let Route::WebSocket { room } = route {
            return self.upgrade(key, &request, room, peer_done);
        }
        self.stats.http_requests += 1;
        let keep_alive = request.keep_alive && !peer_done && self.drain_deadline.is_none();
        let head_only = request.method == Method::Head;
        let (head, body): (ResponseHead, Option<Bytes>) = match route {
            Route::Health => {
                let (status, text) = self.health();
                let body = Bytes::from(format!("{text}\n"));
                (plain_head(status), Some(body))
            }
            Route::Metrics => {
                let gauges = self.gauges();
                let page = self.stats.render(&gauges);
                let head = ResponseHead::new(Status::Ok)
                    .header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                    .header("Cache-Control", "no-store");
                (head, Some(Bytes::from(page)))
            }
            Route::Asset(path) => match self.assets.get(&path) {
                Some(asset) => asset_response(asset, request.if_none_match.as_deref()),
                None => (
                    plain_head(Status::NotFound),
                    Some(Bytes::from_static(b"not found\n")),
                ),
            },
            Route::Page => match self.assets.index() {
                Some(asset) => asset_response(asset, request.if_none_match.as_deref()),
                None => (
                    plain_head(Status::NotFound),
                    Some(Bytes::from_static(b"not found\n")),
                ),
            },
            Route::WebSocket { .. } => return false,
        };
        let body_len = body.as_ref().map(|b| b.len());
        let status = head.status();
        let Some(conn) = self.connections.get_mut(key) else {
            return false;
        };
        debug!(
            "conn={} peer={} {:?} {} -> {}",
            conn.id,
            conn.peer,
            request.method,
            request.path,
            status.code()
        );
        conn.outbound.push_opaque(head.finish(body_len, keep_alive));
        if let (Some(body), false) = (body, head_only) {
            conn.outbound.push_shared(body);
        }
        self.queued_total += conn.outbound.len();
        if keep_alive {
            // The keep-alive wait for the next request is bounded like a handshake.
            let deadline = self.now + self.config.handshake_timeout;
            self.set_deadline(key, deadline);
        } else {
            self.close_after_flush(key, CloseReason::HttpDone);
        }
        false
    }

    /// `/healthz`: 200 while accepting, 503 while draining or at the connection cap. A Redis
    /// link that is down keeps 200 (local rooms still work) but says so.
    fn health(&self) -> (Status, &'static str) {
        let redis = self.redis.as_ref().map(|r| r.state());
        if self.drain_deadline.is_some() {
            (Status::ServiceUnavailable, "draining")
        } else if self.stats.websockets_open as usize >= self.max_connections {
            (Status::ServiceUnavailable, "at connection cap")
        } else {
            match redis {
                None => (Status::Ok, "ok"),
                Some(LinkState::Up) => (Status::Ok, "ok, redis up"),
                Some(LinkState::Connecting) => (Status::Ok, "ok, redis connecting"),
                Some(LinkState::Down) => (Status::Ok, "ok, redis down (rooms are local only)"),
            }
        }
    }

    /// Answers a bad request with its status and closes the connection.
    fn refuse_http(&mut self, key: usize, error: HttpError, head_only: bool) {
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        info!(
            "conn={} peer={} refused: {} ({})",
            conn.id,
            conn.peer,
            error.status().code(),
            error
        );
        let extra: &[(&str, &str)] = match error {
            HttpError::Method => &[("Allow", "GET, HEAD")],
            // RFC 9110 15.5.22: a 426 names the protocol to switch to.
            HttpError::WebSocketVersion => {
                &[("Sec-WebSocket-Version", "13"), ("Upgrade", "websocket")]
            }
            _ => &[],
        };
        let response = http::text_response(
            error.status(),
            &format!("{error}\n"),
            extra,
            false,
            head_only,
        );
        if matches!(
            error,
            HttpError::BadUpgrade(_) | HttpError::WebSocketVersion
        ) {
            self.stats.refuse(Refusal::BadRequest);
        }
        self.queue_response_and_close(key, response, CloseReason::HttpRefused);
    }

    fn queue_response_and_close(&mut self, key: usize, response: Vec<u8>, reason: CloseReason) {
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        self.queued_total += response.len();
        conn.outbound.push_opaque(response);
        self.close_after_flush(key, reason);
    }

    /// Moves a connection to `Closing`: it flushes, shuts its write side and waits for the
    /// peer's end of stream, at most `CLOSE_TIMEOUT`.
    fn close_after_flush(&mut self, key: usize, reason: CloseReason) {
        self.leave_room(key);
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        conn.begin_closing(reason);
        mark_dirty(&mut self.dirty, key, conn);
        let deadline = self.now + CLOSE_TIMEOUT;
        self.set_deadline(key, deadline);
        self.progress_closing(key);
    }

    /// Moves a closing connection on: input is read and discarded; once the queue is empty
    /// the write side is shut (our FIN follows the last byte); once the peer's end of stream
    /// has arrived too, the connection is removed. Called on readable, after each flush and
    /// when closing begins.
    fn progress_closing(&mut self, key: usize) {
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        let peer_finished = conn.drain_input();
        let write_shut = conn.shut_write_when_flushed();
        if peer_finished && write_shut {
            let reason = conn.close_reason.unwrap_or(CloseReason::HttpDone);
            self.doom(key, reason);
        }
    }

    // ----------------------------------------------------------------------------------
    // WebSocket

    /// Completes the opening handshake (or refuses it with a status) and joins the room.
    fn upgrade(&mut self, key: usize, request: &Request, room: String, peer_done: bool) -> bool {
        let refusal = if self.drain_deadline.is_some() {
            Some((
                Refusal::Draining,
                Status::ServiceUnavailable,
                "server shutting down",
            ))
        } else if self.stats.websockets_open as usize >= self.max_connections {
            Some((
                Refusal::AtCapacity,
                Status::ServiceUnavailable,
                "at connection cap, retry later",
            ))
        } else if !self.origin_allowed(request) {
            Some((Refusal::Origin, Status::Forbidden, "origin not allowed"))
        } else {
            None
        };
        let Some(upgrade) = request.upgrade.as_ref() else {
            return false;
        };
        if let Some((why, status, text)) = refusal {
            self.stats.refuse(why);
            if let Some(conn) = self.connections.get(key) {
                info!(
                    "conn={} peer={} upgrade refused: {} {} (origin {:?})",
                    conn.id,
                    conn.peer,
                    status.code(),
                    text,
                    request.origin.as_deref().unwrap_or("-")
                );
            }
            let extra: &[(&str, &str)] = if status == Status::ServiceUnavailable {
                &[("Retry-After", RETRY_AFTER_SECONDS)]
            } else {
                &[]
            };
            let response = http::text_response(status, &format!("{text}\n"), extra, false, false);
            self.queue_response_and_close(key, response, CloseReason::HttpRefused);
            return false;
        }

        let joined = self.rooms.join(&room, key);
        if let (true, Some(redis)) = (joined.first_member, self.redis.as_mut()) {
            redis.subscribe(&room, self.now);
        }
        let Some(conn) = self.connections.get_mut(key) else {
            return false;
        };
        let response = http::switching_protocols(&upgrade.key);
        // Bytes that arrived behind the head are the first frames: tungstenite gets them.
        let rest = match &mut conn.phase {
            Phase::Http { head } => std::mem::take(head),
            _ => Vec::new(),
        };
        // A fresh socket takes the 101 at once; writing it now, not through the queue, keeps
        // an idle connection from holding queue memory it will not use again.
        let sent = write_now(&mut conn.socket, &response);
        self.stats.bytes_sent += sent as u64;
        if sent < response.len() {
            self.queued_total += response.len() - sent;
            conn.outbound.push_opaque(response[sent..].to_vec());
        }
        // The socket was read to WouldBlock already: only frames that came with the head, or
        // an end of stream already seen, need reading now (one read per connection saved at
        // connection storms; edge-triggered readiness will not report that end again).
        let frames_waiting = !rest.is_empty() || peer_done;
        conn.upgrade(rest, self.websocket_config, joined.room, joined.slot);
        // Late joiners get the room's recent messages before any live traffic.
        if let Some(room_entry) = self.rooms.get(joined.room) {
            for frame in room_entry.history() {
                self.queued_total += frame.len();
                self.stats.deliveries += 1;
                conn.outbound.push_shared(frame.clone());
            }
        }
        conn.upgraded = true;
        info!("conn={} peer={} opened room={}", conn.id, conn.peer, room);
        mark_dirty(&mut self.dirty, key, conn);
        self.stats.websockets_open += 1;
        let deadline = self.now + self.config.ping_interval;
        self.set_deadline(key, deadline);
        if frames_waiting {
            self.read_websocket(key);
        }
        true
    }

    fn origin_allowed(&self, request: &Request) -> bool {
        let Some(origin) = request.origin.as_deref() else {
            return true;
        };
        let same_host = request
            .host
            .as_deref()
            .is_some_and(|host| http::origin_matches_host(origin, host));
        match &self.config.origins {
            OriginPolicy::Any => true,
            OriginPolicy::SameHost => same_host,
            OriginPolicy::List(allowed) => {
                same_host || allowed.iter().any(|a| a.eq_ignore_ascii_case(origin))
            }
        }
    }

    /// Reads messages until `WouldBlock` and relays each as it arrives.
    fn read_websocket(&mut self, key: usize) {
        loop {
            let Some(conn) = self.connections.get_mut(key) else {
                return;
            };
            if conn.outbound.len() > self.config.max_outbound {
                // Over its own budget (its pongs, its echoes): finish what was read, then
                // leave the rest in its socket until the queue drains.
                self.scratch.stop_socket_reads();
            }
            let before = conn.outbound.len();
            let outcome = conn.read_websocket(&mut self.scratch, self.now);
            self.queued_total += conn.outbound.len() - before;
            match outcome {
                WsRead::Message(message) => {
                    // A member being closed (or doomed mid-read) has left its room: what it
                    // still sends is read and dropped.
                    if conn.close_reason.is_none() {
                        self.relay(key, message);
                    }
                }
                WsRead::Control => {}
                WsRead::WouldBlock => break,
                WsRead::Ended(reason) => {
                    self.end_websocket(key, reason);
                    break;
                }
            }
        }
        self.stats.bytes_received += std::mem::take(&mut self.scratch.bytes_read);
    }

    /// A WebSocket connection is over (its final Close, if any, is queued).
    fn end_websocket(&mut self, key: usize, reason: CloseReason) {
        if matches!(reason, CloseReason::ClientGone | CloseReason::IoError) {
            self.doom(key, reason);
        } else {
            self.close_after_flush(key, reason);
        }
    }

    /// Takes a member out of its room (no more messages are queued to it).
    fn leave_room(&mut self, key: usize) {
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        let Some(ws) = conn.websocket() else { return };
        if ws.slot == NOT_A_MEMBER {
            return;
        }
        let (room, slot) = (ws.room, ws.slot);
        ws.slot = NOT_A_MEMBER;
        self.stats.websockets_open -= 1;
        let left = self.rooms.leave(room, slot, self.now);
        if let Some(moved) = left.moved
            && let Some(ws) = self.connections.get_mut(moved).and_then(|c| c.websocket())
        {
            ws.slot = slot;
        }
        if let (Some(redis), Some(name)) = (self.redis.as_mut(), &left.emptied) {
            redis.unsubscribe(name, self.now);
        }
        if left.last_member && self.config.history > 0 {
            let due = self.now + self.config.history_ttl;
            self.next_history_expiry = Some(self.next_history_expiry.map_or(due, |d| d.min(due)));
        }
    }

    /// Sends one client message to the other members of its room (and back, with `--echo`),
    /// and once to the other nodes of the cluster.
    fn relay(&mut self, sender: usize, message: Message) {
        self.stats.messages_received += 1;
        if !self.take_rate_token(sender) {
            return;
        }
        let Some(ws) = self.connections.get_mut(sender).and_then(|c| c.websocket()) else {
            return;
        };
        if ws.slot == NOT_A_MEMBER {
            return;
        }
        let room = ws.room;
        let (kind, payload) = match &message {
            Message::Text(text) => (MessageKind::Text, text.as_bytes()),
            Message::Binary(data) => (MessageKind::Binary, &data[..]),
            _ => return,
        };
        let except = if self.config.echo { None } else { Some(sender) };
        self.fan_out(room, kind, payload, except);
        if let (Some(redis), Some(entry)) = (self.redis.as_mut(), self.rooms.get(room)) {
            redis.publish(&entry.name, kind, payload, self.now);
        }
    }

    /// Delivers the messages other nodes published to rooms that have members here.
    fn deliver_from_redis(&mut self) {
        let Some(redis) = self.redis.as_mut() else {
            return;
        };
        redis.on_timer(self.now);
        let mut incoming = std::mem::take(&mut self.redis_incoming);
        for message in incoming.drain(..) {
            if let Some(room) = self.rooms.key_of(&message.room) {
                self.fan_out(room, message.kind, &message.payload, None);
            }
        }
        self.redis_incoming = incoming;
    }

    /// Queues one message to every member of a room but `except`. The frame is encoded once;
    /// each recipient gets a copy (small) or a shared reference (large) in its queue, under
    /// its byte budget.
    fn fan_out(&mut self, room: usize, kind: MessageKind, payload: &[u8], except: Option<usize>) {
        let opcode = match kind {
            MessageKind::Text => 0x1,
            MessageKind::Binary => 0x2,
        };
        let frame = encode_frame(opcode, payload);
        if self.config.history > 0 {
            // The encoded frame is a fresh buffer, never a slice of the sender's read buffer,
            // so keeping it pins nothing else.
            let kept = match &frame {
                EncodedFrame::Large(shared) => shared.clone(),
                EncodedFrame::Small(bytes) => Bytes::copy_from_slice(bytes),
            };
            self.rooms.remember(room, kept);
        }
        let Server {
            rooms,
            connections,
            dirty,
            stats,
            config,
            queued_total,
            ..
        } = self;
        let Some(room_entry) = rooms.get(room) else {
            return;
        };
        let budget = config.max_outbound;
        let drop_oldest = config.slow_client == SlowClientPolicy::DropOldest;
        let close = config.slow_client == SlowClientPolicy::Close;
        let mut slow = Vec::new();
        let mut gone = Vec::new();
        for &member in room_entry.members() {
            if Some(member) == except {
                continue;
            }
            let Some(recipient) = connections.get_mut(member) else {
                continue;
            };
            // A member that is closing has left its room already; a close deferred to the end
            // of this pass (slow) is marked here. Checked on the connection itself, not on
            // tungstenite's state behind a pointer: this loop runs once per delivery.
            if recipient.close_reason.is_some() {
                continue;
            }
            // The budget counts bytes the socket would not take, not what this pass queued
            // before its flush: write now what the socket takes before judging a member slow
            // (one pass may read a burst larger than the budget from one sender).
            if recipient.outbound.len() + frame.len() > budget && !recipient.write_blocked {
                match recipient.outbound.flush_once(&mut recipient.socket) {
                    Ok(flushed) => {
                        *queued_total -= flushed.bytes;
                        stats.bytes_sent += flushed.bytes as u64;
                        recipient.write_blocked = flushed.blocked;
                    }
                    Err(_) => {
                        gone.push(member);
                        continue;
                    }
                }
            }
            let before = recipient.outbound.len();
            match recipient.outbound.offer(&frame, budget, drop_oldest, close) {
                Offer::Queued => stats.deliveries += 1,
                Offer::QueuedAfterDropping(n) => {
                    stats.deliveries += 1;
                    stats.drop_message(DropReason::SlowClientOldest, n as u64);
                }
                Offer::Dropped => stats.drop_message(DropReason::SlowClientNewest, 1),
                Offer::OverBudget => slow.push(member),
            }
            *queued_total = *queued_total + recipient.outbound.len() - before;
            mark_dirty(dirty, member, recipient);
        }
        for member in slow {
            self.close_slow_consumer(member);
        }
        for member in gone {
            self.doom(member, CloseReason::ClientGone);
        }
    }

    /// `--max-rate`: takes a token from the sender's bucket. False if the message must not be
    /// relayed (dropped, or the sender is being closed).
    fn take_rate_token(&mut self, sender: usize) -> bool {
        let Some(limit) = self.config.rate_limit else {
            return true;
        };
        let now = self.now;
        let Some(ws) = self.connections.get_mut(sender).and_then(|c| c.websocket()) else {
            return false;
        };
        let elapsed = now
            .saturating_duration_since(ws.rate_refilled)
            .as_secs_f64();
        ws.rate_refilled = now;
        let tokens = (ws.rate_tokens as f64).min(limit.burst) + elapsed * limit.per_second;
        let tokens = tokens.min(limit.burst);
        if tokens >= 1.0 {
            ws.rate_tokens = (tokens - 1.0) as f32;
            return true;
        }
        ws.rate_tokens = tokens as f32;
        self.stats.drop_message(DropReason::RateLimit, 1);
        if limit.over == OverRate::Close {
            self.close_websocket(sender, CloseReason::RateLimited);
        }
        false
    }

    fn close_slow_consumer(&mut self, key: usize) {
        self.stats.slow_client_closes += 1;
        if let Some(conn) = self.connections.get(key) {
            info!(
                "conn={} peer={} slow consumer: {} bytes queued, closing with 1008",
                conn.id,
                conn.peer,
                conn.outbound.len()
            );
        }
        self.close_websocket(key, CloseReason::SlowConsumer);
    }

    /// Starts our side of the closing handshake with the reason's close code. The member
    /// leaves its room at once; the peer has `CLOSE_TIMEOUT` to answer.
    fn close_websocket(&mut self, key: usize, reason: CloseReason) {
        self.leave_room(key);
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        let before = conn.outbound.len();
        conn.send_close(reason, &mut self.scratch);
        self.queued_total = self.queued_total + conn.outbound.len() - before;
        mark_dirty(&mut self.dirty, key, conn);
        let deadline = self.now + CLOSE_TIMEOUT;
        self.set_deadline(key, deadline);
    }

    // ----------------------------------------------------------------------------------
    // Time

    /// Gives a connection a new deadline. Each connection has one live heap entry: a later
    /// deadline reuses it (when it fires early, it is re-armed for the real deadline), so a
    /// heartbeat costs O(log n) once per interval and nothing per message.
    fn set_deadline(&mut self, key: usize, deadline: Instant) {
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        conn.deadline = deadline;
        if conn.timer_at.is_none_or(|armed| deadline < armed) {
            conn.timer_at = Some(deadline);
            self.timers.push(Reverse((deadline, key, conn.id)));
        }
    }

    /// Fires every due timer: connection deadlines, the accept pause, the watchdog, the
    /// stats line, history expiry.
    fn fire_timers(&mut self) {
        let now = self.now;
        while let Some(&Reverse((at, key, id))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(conn) = self.connections.get_mut(key) else {
                continue;
            };
            if conn.id != id || conn.timer_at != Some(at) {
                // Superseded by an earlier entry, or the key now belongs to another client.
                continue;
            }
            conn.timer_at = None;
            if conn.deadline <= now {
                self.on_deadline(key);
            } else {
                let deadline = conn.deadline;
                self.set_deadline(key, deadline);
            }
        }
        // Superseded entries (a deadline moved earlier, a connection gone) are dropped when
        // they come up; rebuild the heap if they ever outnumber the live ones.
        if self.timers.len() > 2 * self.connections.len() + 1024 {
            let connections = &self.connections;
            self.timers.retain(|Reverse((at, key, id))| {
                connections
                    .get(*key)
                    .is_some_and(|c| c.id == *id && c.timer_at == Some(*at))
            });
        }
        if self.accept_paused_until.is_some_and(|t| t <= now) {
            self.accept_paused_until = None;
            self.accept_all();
        }
        if let (Some(at), Some(notifier)) = (self.next_watchdog, &self.notifier)
            && at <= now
        {
            notifier.notify("WATCHDOG=1");
            self.next_watchdog = notifier.watchdog_every.map(|every| now + every);
        }
        if let (Some(at), Some(every)) = (self.next_stats, self.config.stats_interval)
            && at <= now
        {
            let gauges = self.gauges();
            if let Some(line) = self.stats.summary_line(&self.stats_at_last_line, &gauges) {
                info!("{line}");
            }
            self.stats_at_last_line = self.stats.clone();
            self.next_stats = Some(now + every);
        }
        if self.next_history_expiry.is_some_and(|t| t <= now) {
            self.next_history_expiry = self.rooms.expire_history(now, self.config.history_ttl);
        }
    }

    /// A connection's deadline came: handshake timeout, heartbeat, idle close, close timeout.
    fn on_deadline(&mut self, key: usize) {
        let now = self.now;
        let ping_interval = self.config.ping_interval;
        let idle_timeout = self.config.idle_timeout;
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        match &conn.phase {
            Phase::Http { .. } => self.doom(key, CloseReason::HandshakeTimeout),
            Phase::Closing { .. } => self.doom(key, CloseReason::CloseTimeout),
            Phase::WebSocket(_) => {
                if !conn.accepts_messages() {
                    // We sent Close and the peer did not answer in time.
                    self.doom(key, CloseReason::CloseTimeout);
                    return;
                }
                let silence = now.saturating_duration_since(conn.last_heard);
                let pinged = conn.websocket().is_some_and(|ws| ws.pinged);
                if silence >= idle_timeout {
                    info!(
                        "conn={} peer={} idle for {:?}, closing",
                        conn.id, conn.peer, silence
                    );
                    self.close_websocket(key, CloseReason::IdleTimeout);
                } else if silence >= ping_interval && !pinged {
                    let before = conn.outbound.len();
                    conn.send_ping(&mut self.scratch);
                    if before == 0 && !conn.write_blocked {
                        // A quiet connection: send the ping now and give back the queue's
                        // memory, so an idle client costs only its connection state.
                        if let Ok(flushed) = conn.outbound.flush_once(&mut conn.socket) {
                            self.stats.bytes_sent += flushed.bytes as u64;
                            conn.write_blocked = flushed.blocked;
                        }
                        if conn.outbound.is_empty() {
                            conn.outbound.release_memory();
                        }
                    }
                    self.queued_total = self.queued_total + conn.outbound.len() - before;
                    mark_dirty(&mut self.dirty, key, conn);
                    let next = conn.last_heard + idle_timeout;
                    self.set_deadline(key, next);
                } else {
                    let next = if pinged {
                        conn.last_heard + idle_timeout
                    } else {
                        conn.last_heard + ping_interval
                    };
                    self.set_deadline(key, next.max(now + Duration::from_millis(1)));
                }
            }
        }
    }

    // ----------------------------------------------------------------------------------
    // Writing

    /// The process-wide budget: when all queues together exceed `--max-outbound-total`, the
    /// largest queues are shed first by the slow-client policy.
    fn enforce_total_budget(&mut self) {
        let limit = self.config.max_outbound_total;
        if self.queued_total <= limit {
            self.over_total_budget = false;
            return;
        }
        // This pass queued its fan-out before any flush: judge by the bytes the sockets
        // refuse, not by a burst fast readers are about to take.
        self.flush_dirty();
        // Bytes of connections already closing cannot be shed (their Close is among them);
        // they leave within CLOSE_TIMEOUT. Counting them would close innocent members.
        let mut unsheddable: usize = self
            .connections
            .iter()
            .filter(|(_, c)| c.close_reason.is_some())
            .map(|(_, c)| c.outbound.len())
            .sum();
        if self.queued_total.saturating_sub(unsheddable) <= limit {
            return;
        }
        let mut largest: Vec<(usize, usize)> = self
            .connections
            .iter()
            .filter(|(_, c)| {
                c.accepts_messages() && !c.outbound.is_empty() && c.close_reason.is_none()
            })
            .map(|(key, c)| (c.outbound.len(), key))
            .collect();
        largest.sort_unstable_by(|a, b| b.cmp(a));
        if !self.over_total_budget {
            // Once per episode, not once per pass.
            warn!(
                "outbound total {} bytes over --max-outbound-total {}; shedding the largest queues",
                self.queued_total, limit
            );
            self.over_total_budget = true;
        }
        for (_, key) in largest {
            if self.queued_total.saturating_sub(unsheddable) <= limit {
                break;
            }
            if self.config.slow_client == SlowClientPolicy::Close {
                self.close_slow_consumer(key);
                unsheddable += self.connections.get(key).map_or(0, |c| c.outbound.len());
            } else if let Some(conn) = self.connections.get_mut(key) {
                let before = conn.outbound.len();
                let excess = self.queued_total - unsheddable - limit;
                let dropped = conn
                    .outbound
                    .drop_unstarted_messages(before.saturating_sub(excess));
                self.queued_total -= before - conn.outbound.len();
                self.stats
                    .drop_message(DropReason::TotalBudget, dropped as u64);
            }
        }
    }

    /// Writes each dirty connection once (one `writev`), then moves closing connections on.
    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            let Some(conn) = self.connections.get_mut(key) else {
                continue;
            };
            conn.dirty = false;
            if conn.write_blocked {
                continue;
            }
            match conn.outbound.flush_once(&mut conn.socket) {
                Ok(flushed) => {
                    self.queued_total -= flushed.bytes;
                    self.stats.bytes_sent += flushed.bytes as u64;
                    conn.write_blocked = flushed.blocked;
                }
                Err(e) => {
                    trace!("conn={} write failed: {e}", conn.id);
                    self.doom(key, CloseReason::ClientGone);
                    continue;
                }
            }
            if conn.outbound.is_empty() && matches!(conn.phase, Phase::Closing { .. }) {
                self.progress_closing(key);
            }
            // A read held back until the queue drained (a pipelined request, a client over its
            // budget, a closing peer with more to discard) may go on now.
            self.owe_read(key);
        }
        // Keep the list's allocation for the next pass.
        let mut dirty = dirty;
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    // ----------------------------------------------------------------------------------
    // Ending

    /// Marks a connection for removal at the end of the pass (never mid-batch: its key could
    /// be reused by an accept while a stale event for it is still queued).
    fn doom(&mut self, key: usize, reason: CloseReason) {
        self.leave_room(key);
        if let Some(conn) = self.connections.get_mut(key) {
            // The first reason stands (a slow consumer whose close then times out was closed
            // for being slow).
            conn.close_reason.get_or_insert(reason);
            self.doomed.push(key);
        }
    }

    /// Removes the doomed connections: logs their end and counts it.
    fn reap_doomed(&mut self) {
        for key in std::mem::take(&mut self.doomed) {
            let Some(mut conn) = self.connections.try_remove(key) else {
                continue;
            };
            let reason = conn.close_reason.unwrap_or(CloseReason::IoError);
            self.queued_total -= conn.outbound.len();
            let _ = self.poll.registry().deregister(&mut conn.socket);
            self.stats.connections_open -= 1;
            self.stats.close(reason);
            let lived = self.now.saturating_duration_since(conn.opened_at);
            if conn.upgraded {
                info!(
                    "conn={} peer={} closed reason={} after={:.3}s",
                    conn.id,
                    conn.peer,
                    reason,
                    lived.as_secs_f64()
                );
            } else if reason.is_ordinary() {
                trace!("conn={} peer={} closed reason={reason}", conn.id, conn.peer);
            } else {
                debug!("conn={} peer={} closed reason={reason}", conn.id, conn.peer);
            }
        }
    }

    // ----------------------------------------------------------------------------------
    // Signals and shutdown

    fn on_signals(&mut self) {
        let Some(signals) = self.signals.as_mut() else {
            return;
        };
        let received: Vec<i32> = signals.pending().collect();
        for signal in received {
            match signal {
                libc::SIGINT | libc::SIGTERM => {
                    if self.drain_deadline.is_some() {
                        info!("second stop signal: exiting now");
                        self.drain_deadline = Some(self.now);
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

    /// SIGHUP: reload `--static-dir` (the only thing read from disk); nothing else.
    fn reload(&mut self) {
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

    /// Stops accepting and says goodbye: Close 1001 to every WebSocket, HTTP exchanges finish.
    fn begin_drain(&mut self) {
        self.drain_deadline = Some(self.now + self.config.drain_timeout);
        if let Some(notifier) = &self.notifier {
            notifier.notify("STOPPING=1");
        }
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        info!("draining {} connections", self.connections.len());
        let keys: Vec<usize> = self.connections.iter().map(|(key, _)| key).collect();
        for key in keys {
            let Some(conn) = self.connections.get(key) else {
                continue;
            };
            match conn.phase {
                Phase::WebSocket(_) if conn.accepts_messages() => {
                    self.close_websocket(key, CloseReason::Shutdown)
                }
                // HTTP connections stay: a request on an open keep-alive connection is
                // answered (with `Connection: close`), so /healthz can say "draining".
                _ => {}
            }
        }
    }

    /// Debug builds (every test) check the running total of queued bytes against the queues
    /// themselves once per pass: the bookkeeping is spread over every place that queues or
    /// writes, and a drift would skew the process-wide budget.
    #[cfg(debug_assertions)]
    fn check_queued_total(&self) {
        let actual: usize = self.connections.iter().map(|(_, c)| c.outbound.len()).sum();
        assert_eq!(
            self.queued_total, actual,
            "queued_total drifted from the queues"
        );
    }

    /// Figures read off the server for `/metrics` and the stats line. /proc is read at most
    /// once a second: listing /proc/self/fd costs a moment per thousand connections, and the
    /// page is open to anyone who can reach the port.
    fn gauges(&mut self) -> Gauges {
        let fresh = self.process_info.is_some_and(|(read_at, _)| {
            self.now.saturating_duration_since(read_at) < Duration::from_secs(1)
        });
        if !fresh {
            self.process_info = Some((self.now, ProcessInfo::read()));
        }
        let process = self.process_info.map(|(_, info)| info).unwrap_or_default();
        Gauges {
            rooms_open: self.rooms.occupied(),
            rooms_dormant: self.rooms.dormant(),
            outbound_bytes: self.queued_total,
            outbound_largest: self
                .connections
                .iter()
                .map(|(_, c)| c.outbound.len())
                .max()
                .unwrap_or(0),
            max_connections: self.max_connections,
            uptime: self.now.saturating_duration_since(self.started),
            draining: self.drain_deadline.is_some(),
            process,
            extra: self.redis.as_ref().map(redis_metrics).unwrap_or_default(),
        }
    }
}

/// Writes what the socket takes right now, without queueing; returns how many bytes went.
fn write_now(socket: &mut TcpStream, bytes: &[u8]) -> usize {
    use std::io::Write;
    loop {
        match socket.write(bytes) {
            Ok(n) => return n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return 0,
        }
    }
}

/// An HTTP connection waiting for its next request, with nothing half-read or unsent.
fn is_idle_http(conn: &Connection) -> bool {
    matches!(&conn.phase, Phase::Http { head } if head.is_empty()) && conn.outbound.is_empty()
}

/// Puts a connection on the dirty list once per pass.
fn mark_dirty(dirty: &mut Vec<usize>, key: usize, conn: &mut Connection) {
    if !conn.dirty && !conn.outbound.is_empty() {
        conn.dirty = true;
        dirty.push(key);
    }
}

/// Encodes one unmasked, unfragmented server frame: the same bytes for every recipient.
pub fn encode_frame(opcode: u8, payload: &[u8]) -> EncodedFrame {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(0x80 | opcode);
    match payload.len() {
        len @ 0..=125 => frame.push(len as u8),
        len @ 126..=0xffff => {
            frame.push(126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    if frame.len() >= SHARE_THRESHOLD {
        EncodedFrame::Large(Bytes::from(frame))
    } else {
        EncodedFrame::Small(frame)
    }
}

fn plain_head(status: Status) -> ResponseHead {
    ResponseHead::new(status)
        .header("Content-Type", "text/plain; charset=utf-8")
        .header("Cache-Control", "no-store")
}

/// A page file, or 304 when the client's copy is current. Files are revalidated on each use
/// (`no-cache` + `ETag`): they are not fingerprinted, so a new binary must show at once.
fn asset_response(asset: &Asset, if_none_match: Option<&str>) -> (ResponseHead, Option<Bytes>) {
    // If-None-Match compares weakly (RFC 9110 13.1.2): W/"x" matches "x".
    let fresh = if_none_match.is_some_and(|tags| {
        tags.split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == asset.etag)
    });
    let head = ResponseHead::new(if fresh {
        Status::NotModified
    } else {
        Status::Ok
    })
    .header("Content-Type", asset.content_type)
    .header("Cache-Control", "no-cache")
    .header("ETag", &asset.etag)
    .header("X-Content-Type-Options", "nosniff");
    if fresh {
        (head, None)
    } else {
        (head, Some(asset.body.clone()))
    }
}

fn is_resource_exhaustion(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Raises the soft open-file limit to the hard limit; returns the soft limit in force.
fn raise_open_file_limit() -> usize {
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
