//! HTTP/1.x request heads in, responses out: pure functions, no socket I/O.
//!
//! A connection starts in HTTP. Its bytes are offered to [`parse_head`] until a whole head has
//! arrived (bounded by [`MAX_HEAD_SIZE`]); [`route`] then decides what the request is: a
//! WebSocket upgrade, a page, `/healthz`, `/metrics`, `/config.json`, or an error with its status.

use std::fmt;

use bytes::Bytes;

use crate::config::{MAX_HEAD_SIZE, MAX_HEADERS, MAX_ROOM_NAME};

/// A status we answer with, and its reason phrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    SwitchingProtocols,
    Ok,
    NotModified,
    BadRequest,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    UpgradeRequired,
    HeadTooLarge,
    ServiceUnavailable,
    VersionNotSupported,
}

impl Status {
    pub fn code(self) -> u16 {
        match self {
            Status::SwitchingProtocols => 101,
            Status::Ok => 200,
            Status::NotModified => 304,
            Status::BadRequest => 400,
            Status::Forbidden => 403,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::Conflict => 409,
            Status::UpgradeRequired => 426,
            Status::HeadTooLarge => 431,
            Status::ServiceUnavailable => 503,
            Status::VersionNotSupported => 505,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Status::SwitchingProtocols => "Switching Protocols",
            Status::Ok => "OK",
            Status::NotModified => "Not Modified",
            Status::BadRequest => "Bad Request",
            Status::Forbidden => "Forbidden",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::Conflict => "Conflict",
            Status::UpgradeRequired => "Upgrade Required",
            Status::HeadTooLarge => "Request Header Fields Too Large",
            Status::ServiceUnavailable => "Service Unavailable",
            Status::VersionNotSupported => "HTTP Version Not Supported",
        }
    }
}

/// Why a request head could not be used; each maps to one status and a one-line body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The head is not valid HTTP/1.x.
    Malformed(&'static str),
    /// Over [`MAX_HEAD_SIZE`] bytes or [`MAX_HEADERS`] lines.
    HeadTooLarge,
    /// Not HTTP/1.0 or HTTP/1.1.
    Version,
    /// Not GET or HEAD.
    Method,
    /// An upgrade request that is not a valid RFC 6455 opening handshake.
    BadUpgrade(&'static str),
    /// `Sec-WebSocket-Version` other than 13.
    WebSocketVersion,
    /// A path with a file extension that the page does not have, or a reserved path.
    NotFound,
}

impl HttpError {
    pub fn status(&self) -> Status {
        match self {
            HttpError::Malformed(_) | HttpError::BadUpgrade(_) => Status::BadRequest,
            HttpError::HeadTooLarge => Status::HeadTooLarge,
            HttpError::Version => Status::VersionNotSupported,
            HttpError::Method => Status::MethodNotAllowed,
            HttpError::WebSocketVersion => Status::UpgradeRequired,
            HttpError::NotFound => Status::NotFound,
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Malformed(why) => write!(f, "malformed request: {why}"),
            HttpError::HeadTooLarge => write!(
                f,
                "request head over {MAX_HEAD_SIZE} bytes or {MAX_HEADERS} headers"
            ),
            HttpError::Version => f.write_str("only HTTP/1.0 and HTTP/1.1 are served"),
            HttpError::Method => f.write_str("only GET and HEAD are allowed"),
            HttpError::BadUpgrade(why) => write!(f, "bad WebSocket upgrade: {why}"),
            HttpError::WebSocketVersion => f.write_str("only WebSocket version 13 is supported"),
            HttpError::NotFound => f.write_str("not found"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
}

/// The parts of a request head that routing needs, copied out of the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The path without query or fragment, as sent (no decoding: rooms are raw paths).
    pub path: String,
    /// What followed the first `?` of the target (without the fragment), if anything did.
    pub query: Option<String>,
    /// Every `Sec-WebSocket-Protocol` value, joined by commas (RFC 9110 5.3).
    pub protocols: Option<String>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub keep_alive: bool,
    pub host: Option<String>,
    pub origin: Option<String>,
    pub if_none_match: Option<String>,
    /// Every `Sec-WebSocket-Extensions` line, joined with ", " (several lines are one
    /// comma-separated list, RFC 9110 5.3): the offers `deflate::negotiate` reads.
    pub extensions: Option<String>,
    /// Present when the request asks to become a WebSocket.
    pub upgrade: Option<Upgrade>,
}

/// A valid RFC 6455 opening handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    pub key: String,
}

/// The result of offering the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
// The request lives on the stack for one call per request head: boxing it would cost an
// allocation per request for nothing.
#[allow(clippy::large_enum_variant)]
pub enum Head {
    /// More bytes are needed.
    Partial,
    /// A whole head of `len` bytes; bytes after it belong to what follows.
    Complete(Request, usize),
}

/// Parses the request head at the start of `buf`. Called each time bytes arrive on a
/// connection in the HTTP phase.
pub fn parse_head(buf: &[u8]) -> Result<Head, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= MAX_HEAD_SIZE {
                Err(HttpError::HeadTooLarge)
            } else {
                Ok(Head::Partial)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
        Err(httparse::Error::Version) => return Err(version_or_malformed(buf)),
        Err(_) => return Err(HttpError::Malformed("not an HTTP/1.x request head")),
    };
    if len > MAX_HEAD_SIZE {
        return Err(HttpError::HeadTooLarge);
    }
    let minor_version = parsed.version.unwrap_or(1);
    let method = match parsed.method.unwrap_or("") {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        _ => return Err(HttpError::Method),
    };
    let target = parsed.path.unwrap_or("");
    if !target.starts_with('/') {
        return Err(HttpError::Malformed("the target must be an absolute path"));
    }
    let without_fragment = target.split('#').next().unwrap_or("/");
    let (path, query) = match without_fragment.split_once('?') {
        Some((path, query)) => (path.to_string(), Some(query.to_string())),
        None => (without_fragment.to_string(), None),
    };
    let mut protocols: Option<String> = None;

    let mut host = None;
    let mut origin = None;
    let mut if_none_match = None;
    let mut extensions: Option<String> = None;
    let mut connection_tokens = String::new();
    let mut upgrade_websocket = false;
    let mut upgrade_header = false;
    let mut ws_key = None;
    let mut ws_version = None;
    for header in parsed.headers.iter() {
        let value = std::str::from_utf8(header.value)
            .map_err(|_| HttpError::Malformed("a header value is not UTF-8"))?
            .trim();
        let name = header.name;
        if name.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return Err(HttpError::Malformed("more than one Host header"));
            }
            host = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("origin") {
            origin = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("if-none-match") {
            if_none_match = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("connection") {
            connection_tokens.push(',');
            connection_tokens.push_str(value);
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade_header = true;
            upgrade_websocket |= value
                .split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("websocket"));
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            ws_key = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            match &mut protocols {
                Some(all) => {
                    all.push(',');
                    all.push_str(value);
                }
                None => protocols = Some(value.to_string()),
            }
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            // Bounded by the head size limit, like every other header.
            match &mut extensions {
                Some(list) => {
                    list.push_str(", ");
                    list.push_str(value);
                }
                None => extensions = Some(value.to_string()),
            }
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            ws_version = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || (name.eq_ignore_ascii_case("content-length") && value != "0")
        {
            // GET and HEAD have no body here; reading on past one would take its bytes for
            // the next request (request smuggling behind a proxy).
            return Err(HttpError::Malformed(
                "a GET or HEAD request must not carry a body",
            ));
        }
    }
    if minor_version == 1 && host.is_none() {
        // RFC 9112 3.2: a server MUST respond with 400 to an HTTP/1.1 request without Host.
        return Err(HttpError::Malformed("HTTP/1.1 request without Host"));
    }
    let has_token = |token: &str| {
        connection_tokens
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    let keep_alive = if minor_version == 1 {
        !has_token("close")
    } else {
        has_token("keep-alive")
    };

    let upgrade = if upgrade_header || ws_key.is_some() {
        Some(check_upgrade(
            method,
            minor_version,
            upgrade_websocket,
            has_token("upgrade"),
            ws_key,
            ws_version,
        )?)
    } else {
        None
    };

    Ok(Head::Complete(
        Request {
            method,
            path,
            query,
            protocols,
            minor_version,
            keep_alive,
            host,
            origin,
            if_none_match,
            extensions,
            upgrade,
        },
        len,
    ))
}

/// httparse says "Version" both for `HTTP/2.0` and for garbage; answer 505 only to the first.
fn version_or_malformed(buf: &[u8]) -> HttpError {
    let first_line = buf.split(|&b| b == b'\n').next().unwrap_or(&[]);
    if first_line.windows(5).any(|w| w == b"HTTP/") {
        HttpError::Version
    } else {
        HttpError::Malformed("not an HTTP/1.x request line")
    }
}

/// RFC 6455 4.2.1: the checks a server makes on the client's opening handshake.
fn check_upgrade(
    method: Method,
    minor_version: u8,
    upgrade_websocket: bool,
    connection_upgrade: bool,
    key: Option<String>,
    version: Option<String>,
) -> Result<Upgrade, HttpError> {
    if method != Method::Get || minor_version != 1 {
        return Err(HttpError::BadUpgrade("must be an HTTP/1.1 GET"));
    }
    if !upgrade_websocket {
        return Err(HttpError::BadUpgrade("Upgrade must be websocket"));
    }
    if !connection_upgrade {
        return Err(HttpError::BadUpgrade("Connection must include Upgrade"));
    }
    match version.as_deref() {
        Some("13") => {}
        Some(_) => return Err(HttpError::WebSocketVersion),
        None => return Err(HttpError::BadUpgrade("Sec-WebSocket-Version missing")),
    }
    let key = key.ok_or(HttpError::BadUpgrade("Sec-WebSocket-Key missing"))?;
    // "a base64-encoded value that, when decoded, is 16 bytes in length": 24 characters
    // ending in "==".
    let valid_key = key.len() == 24
        && key.ends_with("==")
        && key[..22]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
    if !valid_key {
        return Err(HttpError::BadUpgrade(
            "Sec-WebSocket-Key is not 16 bytes of base64",
        ));
    }
    Ok(Upgrade { key })
}

/// What a request asks for, once its path is looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Join the room named by the path; `key` is the client's `Sec-WebSocket-Key`.
    WebSocket {
        room: String,
        key: String,
    },
    Health,
    Metrics,
    /// The settings the page needs from the server (see [`client_config_json`]).
    Config,
    /// One of the page's files, by its path.
    Asset(String),
    /// The chat page itself, for the room named by the path.
    Page,
}

pub const HEALTH_PATH: &str = "/healthz";
pub const METRICS_PATH: &str = "/metrics";
/// Reserved like the two above: the server's answer wins over a `--static-dir` file of that
/// name, because the page relies on it.
pub const CONFIG_PATH: &str = "/config.json";

/// Decides what a complete request is for. `is_asset` says whether a path names a file of the
/// page. Called once per request head.
pub fn route(request: &Request, is_asset: impl Fn(&str) -> bool) -> Result<Route, HttpError> {
    let path = request.path.as_str();
    let reserved = path == HEALTH_PATH || path == METRICS_PATH || path == CONFIG_PATH;
    if let Some(upgrade) = &request.upgrade {
        if reserved || is_asset(path) {
            return Err(HttpError::NotFound);
        }
        return Ok(Route::WebSocket {
            room: room_name(path)?,
            key: upgrade.key.clone(),
        });
    }
    if path == HEALTH_PATH {
        return Ok(Route::Health);
    }
    if path == METRICS_PATH {
        return Ok(Route::Metrics);
    }
    if path == CONFIG_PATH {
        return Ok(Route::Config);
    }
    if is_asset(path) {
        return Ok(Route::Asset(path.to_string()));
    }
    let last_segment = path.rsplit('/').next().unwrap_or("");
    if last_segment.contains('.') {
        return Err(HttpError::NotFound);
    }
    room_name(path)?;
    Ok(Route::Page)
}

/// The room a path names: the path itself, without a trailing slash (`/lobby/` is `/lobby`);
/// `/` is the default room.
pub fn room_name(path: &str) -> Result<String, HttpError> {
    if path.len() > MAX_ROOM_NAME {
        return Err(HttpError::Malformed("path too long for a room name"));
    }
    if path.bytes().any(|b| b.is_ascii_control()) {
        return Err(HttpError::Malformed("control characters in the path"));
    }
    let trimmed = path.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        "/".to_string()
    } else {
        trimmed.to_string()
    })
}

/// A response head with the headers every response carries. The body, if any, is queued after
/// it by the caller, so large static bodies are never copied.
pub struct ResponseHead {
    status: Status,
    text: String,
}

impl ResponseHead {
    pub fn new(status: Status) -> Self {
        let mut text = String::with_capacity(256);
        text.push_str("HTTP/1.1 ");
        text.push_str(&status.code().to_string());
        text.push(' ');
        text.push_str(status.reason());
        text.push_str("\r\nServer: wschat\r\nDate: ");
        text.push_str(&http_date(std::time::SystemTime::now()));
        text.push_str("\r\n");
        ResponseHead { status, text }
    }

    pub fn status(&self) -> Status {
        self.status
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.text.push_str(name);
        self.text.push_str(": ");
        self.text.push_str(value);
        self.text.push_str("\r\n");
        self
    }

    /// Ends the head; `body_len` becomes `Content-Length`, `keep_alive` the `Connection` header.
    pub fn finish(self, body_len: Option<usize>, keep_alive: bool) -> Vec<u8> {
        let mut text = self.text;
        if let Some(len) = body_len {
            text.push_str("Content-Length: ");
            text.push_str(&len.to_string());
            text.push_str("\r\n");
        }
        if self.status != Status::SwitchingProtocols {
            text.push_str(if keep_alive {
                "Connection: keep-alive\r\n"
            } else {
                "Connection: close\r\n"
            });
        }
        text.push_str("\r\n");
        text.into_bytes()
    }
}

/// The 101 that completes the WebSocket opening handshake: `protocol` is the subprotocol
/// selected from the client's offer, `extensions` the accepted `Sec-WebSocket-Extensions`
/// answer (permessage-deflate), if any.
pub fn switching_protocols(key: &str, protocol: Option<&str>, extensions: Option<&str>) -> Vec<u8> {
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut head = ResponseHead::new(Status::SwitchingProtocols)
        .header("Upgrade", "websocket")
        .header("Connection", "Upgrade")
        .header("Sec-WebSocket-Accept", &accept);
    if let Some(protocol) = protocol {
        // RFC 6455 4.2.2: the one subprotocol selected from the client's offer.
        head = head.header("Sec-WebSocket-Protocol", protocol);
    }
    if let Some(extensions) = extensions {
        head = head.header("Sec-WebSocket-Extensions", extensions);
    }
    head.finish(None, true)
}

/// One HTTP response: a head and, for most statuses, a body. It owns the rule for what goes
/// on the wire: a response to HEAD carries the head (with the length the body would have) and
/// no body; a 304 has no body at all.
pub struct Response {
    head: ResponseHead,
    body: Option<Bytes>,
}

impl Response {
    pub fn new(head: ResponseHead, body: Option<Bytes>) -> Self {
        Response { head, body }
    }

    /// An error or short plain-text answer, with extra headers.
    pub fn text(status: Status, body: &str, extra: &[(&str, &str)]) -> Self {
        let mut head = ResponseHead::new(status)
            .header("Content-Type", "text/plain; charset=utf-8")
            .header("Cache-Control", "no-store");
        for (name, value) in extra {
            head = head.header(name, value);
        }
        Response::new(head, Some(Bytes::copy_from_slice(body.as_bytes())))
    }

    pub fn status(&self) -> Status {
        self.head.status
    }

    /// The bytes to send in answer to `method`: the finished head, then the body (shared,
    /// never copied) when the method and status call for one.
    pub fn into_wire(self, method: Method, keep_alive: bool) -> (Vec<u8>, Option<Bytes>) {
        let body_len = self.body.as_ref().map(Bytes::len);
        let head = self.head.finish(body_len, keep_alive);
        let body = match method {
            Method::Head => None,
            Method::Get => self.body.filter(|body| !body.is_empty()),
        };
        (head, body)
    }
}

/// An IMF-fixdate (RFC 9110 5.6.7), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(time: std::time::SystemTime) -> String {
    let seconds = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The body of `/config.json`: what the page must know about the server it talks to. Without
/// `echo` the page never hides a received message (nothing that arrives can be its own); with
/// it, the page takes the echoes of what it sent as its own. `maxMessageSize` is in bytes
/// (UTF-8 for text), the limit over which the server closes with 1009, so the page refuses
/// such a message before sending it. Both values are a bool and an integer: no escaping needed.
pub fn client_config_json(echo: bool, max_message_size: usize) -> String {
    format!("{{\"echo\":{echo},\"maxMessageSize\":{max_message_size}}}")
}

/// Does this `Origin` belong to the same host the request was sent to?
pub fn origin_matches_host(origin: &str, host: &str) -> bool {
    let without_scheme = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    match without_scheme {
        Some(origin_host) => origin_host.eq_ignore_ascii_case(host),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &str = "GET /lobby HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
        Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    fn complete(text: &str) -> Request {
        match parse_head(text.as_bytes()) {
            Ok(Head::Complete(request, len)) => {
                assert_eq!(len, text.len());
                request
            }
            other => panic!("expected a complete head, got {other:?}"),
        }
    }

    #[test]
    fn the_query_and_the_subprotocol_offer_are_kept() {
        let request = complete(
            "GET /room?since=1:2&name=a#frag HTTP/1.1\r\nHost: x\r\n\
             Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Protocol: wschat.v1\r\n\r\n",
        );
        assert_eq!(request.path, "/room");
        assert_eq!(request.query.as_deref(), Some("since=1:2&name=a"));
        assert_eq!(request.protocols.as_deref(), Some("chat,wschat.v1"));
        let plain = complete("GET /room HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!((plain.query, plain.protocols), (None, None));
    }

    #[test]
    fn the_101_names_the_selected_subprotocol_only_when_there_is_one() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let v1 = String::from_utf8(switching_protocols(key, Some("wschat.v1"), None)).unwrap();
        assert!(v1.contains("Sec-WebSocket-Protocol: wschat.v1\r\n"));
        let raw = String::from_utf8(switching_protocols(key, None, None)).unwrap();
        assert!(!raw.contains("Sec-WebSocket-Protocol"));
    }

    fn no_assets(_: &str) -> bool {
        false
    }

    #[test]
    fn parses_an_upgrade() {
        let request = complete(UPGRADE);
        assert_eq!(request.path, "/lobby");
        assert_eq!(
            request.upgrade,
            Some(Upgrade {
                key: "dGhlIHNhbXBsZSBub25jZQ==".into()
            })
        );
        assert_eq!(
            route(&request, no_assets),
            Ok(Route::WebSocket {
                room: "/lobby".into(),
                key: "dGhlIHNhbXBsZSBub25jZQ==".into(),
            })
        );
    }

    #[test]
    fn partial_heads_wait_for_more() {
        for cut in 0..UPGRADE.len() {
            assert_eq!(
                parse_head(&UPGRADE.as_bytes()[..cut]),
                Ok(Head::Partial),
                "{cut}"
            );
        }
    }

    #[test]
    fn bytes_after_the_head_are_not_consumed() {
        let mut bytes = UPGRADE.as_bytes().to_vec();
        bytes.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]);
        match parse_head(&bytes) {
            Ok(Head::Complete(_, len)) => assert_eq!(len, UPGRADE.len()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn extension_offers_are_kept_and_several_lines_joined() {
        assert_eq!(complete(UPGRADE).extensions, None);
        let text = UPGRADE.replace(
            "Sec-WebSocket-Version: 13\r\n",
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: x-foo, permessage-deflate; \
             client_max_window_bits\r\nsec-websocket-extensions:  permessage-deflate \r\n",
        );
        assert_eq!(
            complete(&text).extensions.as_deref(),
            Some("x-foo, permessage-deflate; client_max_window_bits, permessage-deflate")
        );
        let response = String::from_utf8(switching_protocols(
            "dGhlIHNhbXBsZSBub25jZQ==",
            None,
            Some("permessage-deflate; server_no_context_takeover"),
        ))
        .unwrap();
        assert!(response.contains(
            "\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n"
        ));
        assert!(response.ends_with("\r\n\r\n"));
    }

    #[test]
    fn the_accept_key_matches_the_rfc_example() {
        let response =
            String::from_utf8(switching_protocols("dGhlIHNhbXBsZSBub25jZQ==", None, None)).unwrap();
        assert!(response.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(response.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    }

    #[test]
    fn a_head_over_the_limit_is_refused() {
        let mut text = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
        while text.len() < MAX_HEAD_SIZE {
            text.push_str("X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert_eq!(parse_head(text.as_bytes()), Err(HttpError::HeadTooLarge));
        let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
        for i in 0..MAX_HEADERS + 1 {
            many.push_str(&format!("X-{i}: 1\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(parse_head(many.as_bytes()), Err(HttpError::HeadTooLarge));
    }

    #[test]
    fn statuses_for_bad_requests() {
        let status = |text: &str| parse_head(text.as_bytes()).unwrap_err().status();
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Status::MethodNotAllowed
        );
        assert_eq!(
            status("GET / HTTP/2.0\r\nHost: x\r\n\r\n"),
            Status::VersionNotSupported
        );
        assert_eq!(status("\x01\x02 nonsense\r\n\r\n"), Status::BadRequest);
        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), Status::BadRequest);
        assert_eq!(
            status("GET nope HTTP/1.1\r\nHost: x\r\n\r\n"),
            Status::BadRequest
        );
        let bad_key = UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "short");
        assert_eq!(status(&bad_key), Status::BadRequest);
        let no_connection = UPGRADE.replace("keep-alive, Upgrade", "keep-alive");
        assert_eq!(status(&no_connection), Status::BadRequest);
        let version_8 = UPGRADE.replace("Version: 13", "Version: 8");
        assert_eq!(status(&version_8), Status::UpgradeRequired);
        let http10 = UPGRADE.replace("HTTP/1.1", "HTTP/1.0");
        assert_eq!(status(&http10), Status::BadRequest);
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_header() {
        assert!(complete("GET / HTTP/1.1\r\nHost: x\r\n\r\n").keep_alive);
        assert!(!complete("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!complete("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(complete("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
    }

    #[test]
    fn routes_plain_requests() {
        let is_asset = |p: &str| p == "/chat.js";
        let route_of = |path: &str| {
            route(
                &complete(&format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")),
                is_asset,
            )
        };
        assert_eq!(route_of("/"), Ok(Route::Page));
        assert_eq!(route_of("/lobby?x=1"), Ok(Route::Page));
        assert_eq!(route_of("/chat.js"), Ok(Route::Asset("/chat.js".into())));
        assert_eq!(route_of("/missing.png"), Err(HttpError::NotFound));
        assert_eq!(route_of("/healthz"), Ok(Route::Health));
        assert_eq!(route_of("/metrics"), Ok(Route::Metrics));
        assert_eq!(route_of("/config.json"), Ok(Route::Config));
        assert_eq!(route_of("/lobby/config.json"), Err(HttpError::NotFound));
        // The server's settings win over a page file of that name.
        let everything_is_an_asset = |_: &str| true;
        let config = complete("GET /config.json HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(route(&config, everything_is_an_asset), Ok(Route::Config));
        let upgrade = complete(&UPGRADE.replace("/lobby", "/config.json"));
        assert_eq!(route(&upgrade, no_assets), Err(HttpError::NotFound));
    }

    #[test]
    fn client_config_is_json_with_the_servers_values() {
        assert_eq!(
            client_config_json(false, 65_536),
            r#"{"echo":false,"maxMessageSize":65536}"#
        );
        assert_eq!(
            client_config_json(true, 16 << 20),
            r#"{"echo":true,"maxMessageSize":16777216}"#
        );
    }

    #[test]
    fn room_names_drop_the_trailing_slash() {
        assert_eq!(room_name("/"), Ok("/".into()));
        assert_eq!(room_name("//"), Ok("/".into()));
        assert_eq!(room_name("/lobby/"), Ok("/lobby".into()));
        assert!(room_name(&format!("/{}", "a".repeat(MAX_ROOM_NAME))).is_err());
    }

    #[test]
    fn http_dates() {
        let at = |s: u64| http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(s));
        assert_eq!(at(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(at(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(at(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(at(1_795_680_000), "Thu, 26 Nov 2026 08:00:00 GMT");
    }

    #[test]
    fn a_get_with_a_body_is_refused() {
        for header in ["Content-Length: 41", "Transfer-Encoding: chunked"] {
            let head = format!("GET / HTTP/1.1\r\nHost: x\r\n{header}\r\n\r\n");
            assert_eq!(
                parse_head(head.as_bytes()).unwrap_err().status(),
                Status::BadRequest
            );
        }
        assert!(parse_head(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").is_ok());
    }

    #[test]
    fn origins() {
        assert!(origin_matches_host(
            "http://localhost:6969",
            "localhost:6969"
        ));
        assert!(origin_matches_host("https://Chat.Example", "chat.example"));
        assert!(!origin_matches_host("http://evil.example", "chat.example"));
        assert!(!origin_matches_host("null", "chat.example"));
    }

    #[test]
    fn text_responses_carry_length_and_connection() {
        let wire = |response: Response, method, keep_alive| {
            let (head, body) = response.into_wire(method, keep_alive);
            let mut bytes = head;
            bytes.extend_from_slice(body.as_deref().unwrap_or_default());
            String::from_utf8(bytes).unwrap()
        };
        let text = wire(
            Response::text(Status::NotFound, "not found\n", &[]),
            Method::Get,
            false,
        );
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.contains("Content-Length: 10\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nnot found\n"));
        // HEAD: the length the body would have, no body.
        let head = wire(Response::text(Status::Ok, "ok\n", &[]), Method::Head, true);
        assert!(head.ends_with("Content-Length: 3\r\nConnection: keep-alive\r\n\r\n"));
        // 304: no body and no length.
        let not_modified = Response::new(ResponseHead::new(Status::NotModified), None);
        let text = wire(not_modified, Method::Get, true);
        assert!(!text.contains("Content-Length"));
        assert!(text.ends_with("\r\n\r\n"));
    }
}
