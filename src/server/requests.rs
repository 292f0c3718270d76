//! HTTP before any upgrade: reading request heads, answering them one at a time (the page,
//! `/healthz`, `/metrics`, errors), keep-alive. A connection in the HTTP phase holds at most
//! one request head (`MAX_HEAD_SIZE`) and one response: the next request stays in the socket
//! until the last response has gone.

use std::io;

use bytes::Bytes;
use log::{debug, info};

use super::Server;
use crate::assets::Asset;
use crate::config::MAX_HEAD_SIZE;
use crate::connection::{CloseReason, Phase};
use crate::http::{self, Head, HttpError, Method, Request, Response, ResponseHead, Route, Status};
use crate::stats::Refusal;

impl Server {
    /// Reads request-head bytes and answers what is complete. Called when an HTTP-phase
    /// connection is readable (or owes a read).
    pub(super) fn read_http(&mut self, key: usize) {
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        if !conn.outbound.is_empty() {
            // Bounded pipelining: the next request stays in the socket until the response to
            // the last one has gone.
            conn.reads.owed = true;
            return;
        }
        // Near the memory ceiling a head gets 1 KiB (enough for /healthz; upgrades are being
        // refused anyway): thousands of half-sent 8 KiB heads must not fill the memory left.
        let head_limit = if self.memory.tight() {
            super::memory::PAUSE_THRESHOLD
        } else {
            MAX_HEAD_SIZE
        };
        let open = match conn.read_http(&mut self.scratch, head_limit, self.now) {
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
                conn.reads.owed = true;
                return;
            }
            let Phase::Http { head } = &mut conn.phase else {
                return;
            };
            match http::parse_head(head) {
                Ok(Head::Partial) => {
                    if peer_done {
                        self.doom(key, CloseReason::ClientGone);
                    }
                    return;
                }
                Err(error) => {
                    // The method could not be parsed: a head that starts like HEAD is
                    // answered like one.
                    let method = if head.starts_with(b"HEAD ") {
                        Method::Head
                    } else {
                        Method::Get
                    };
                    self.refuse_http(key, error, method);
                    return;
                }
                Ok(Head::Complete(request, len)) => {
                    // Keep only what follows this head: the next request, or the first frames.
                    head.drain(..len);
                    if self.serve_request(key, request, peer_done) {
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
                self.refuse_http(key, error, request.method);
                return false;
            }
        };
        if !matches!(route, Route::WebSocket { .. }) {
            // Counted before `/metrics` renders, so the page includes the request for it.
            self.stats.http_requests += 1;
        }
        let response = match route {
            Route::WebSocket { room, key: ws_key } => {
                return self.upgrade(key, &request, room, &ws_key, peer_done);
            }
            Route::Health => {
                let (status, text) = self.health();
                Response::new(plain_head(status), Some(Bytes::from(format!("{text}\n"))))
            }
            Route::Metrics => {
                let gauges = self.gauges();
                let page = self.stats.render(&gauges);
                let head = ResponseHead::new(Status::Ok)
                    .header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                    .header("Cache-Control", "no-store");
                Response::new(head, Some(Bytes::from(page)))
            }
            Route::Config => {
                let json = http::client_config_json(self.config.echo, self.config.max_message_size);
                let head = ResponseHead::new(Status::Ok)
                    .header("Content-Type", "application/json")
                    .header("Cache-Control", "no-store");
                Response::new(head, Some(Bytes::from(json)))
            }
            Route::Asset(path) => asset_response(self.assets.get(&path), &request),
            Route::Page => asset_response(self.assets.index(), &request),
        };
        let keep_alive = request.keep_alive && !peer_done && self.deadlines.drain.is_none();
        let Some(conn) = self.connections.get_mut(key) else {
            return false;
        };
        debug!(
            "conn={} peer={} {:?} {} -> {}",
            conn.id,
            conn.peer,
            request.method,
            request.path,
            response.status().code()
        );
        let (head, body) = response.into_wire(request.method, keep_alive);
        conn.outbound.push_opaque(&mut self.queued, head);
        if let Some(body) = body {
            conn.outbound.push_shared(&mut self.queued, body);
        }
        if keep_alive {
            // The keep-alive wait for the next request is bounded like a handshake.
            let deadline = self.now + self.config.handshake_timeout;
            self.set_deadline(key, deadline);
        } else {
            self.close_after_flush(key, CloseReason::HttpDone);
        }
        false
    }

    /// Answers a bad request with its status and closes the connection.
    pub(super) fn refuse_http(&mut self, key: usize, error: HttpError, method: Method) {
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
        if matches!(
            error,
            HttpError::BadUpgrade(_) | HttpError::WebSocketVersion
        ) {
            self.stats.refuse(Refusal::BadRequest);
        }
        let response = Response::text(error.status(), &format!("{error}\n"), extra);
        self.respond_and_close(key, response, method, CloseReason::HttpRefused);
    }

    /// Queues a final response and moves the connection to `Closing`.
    pub(super) fn respond_and_close(
        &mut self,
        key: usize,
        response: Response,
        method: Method,
        reason: CloseReason,
    ) {
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        let (head, body) = response.into_wire(method, false);
        conn.outbound.push_opaque(&mut self.queued, head);
        if let Some(body) = body {
            conn.outbound.push_shared(&mut self.queued, body);
        }
        self.close_after_flush(key, reason);
    }
}

fn plain_head(status: Status) -> ResponseHead {
    ResponseHead::new(status)
        .header("Content-Type", "text/plain; charset=utf-8")
        .header("Cache-Control", "no-store")
}

/// A page file, or 304 when the client's copy is current, or 404 when there is no such file.
/// Files are revalidated on each use (`no-cache` + `ETag`): they are not fingerprinted, so a
/// new binary must show at once.
fn asset_response(asset: Option<&Asset>, request: &Request) -> Response {
    let Some(asset) = asset else {
        return Response::new(
            plain_head(Status::NotFound),
            Some(Bytes::from_static(b"not found\n")),
        );
    };
    // If-None-Match compares weakly (RFC 9110 13.1.2): W/"x" matches "x".
    let fresh = request.if_none_match.as_deref().is_some_and(|tags| {
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
    let body = (!fresh).then(|| asset.body.clone());
    Response::new(head, body)
}
