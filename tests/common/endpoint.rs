//! What a test does with a running server, in-process or the binary: connect a client, open a
//! raw socket or a raw WebSocket, send an HTTP request, read a metric.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use tungstenite::WebSocket;
use tungstenite::stream::MaybeTlsStream;

use super::timeout;

pub type Client = WebSocket<MaybeTlsStream<TcpStream>>;

/// A server's address and everything a test does with it. Implemented by the in-process
/// [`super::TestServer`], the spawned [`super::Spawned`], and a bare `SocketAddr`.
pub trait Endpoint {
    fn addr(&self) -> SocketAddr;

    /// A WebSocket client in `path`'s room, with read timeouts.
    fn client(&self, path: &str) -> Client {
        let url = format!("ws://{}{}", self.addr(), path);
        let (client, response) = tungstenite::connect(url).expect("upgrade succeeds");
        assert_eq!(response.status(), 101);
        set_timeout(&client, timeout());
        client
    }

    /// A raw TCP connection with read and write timeouts.
    fn raw(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr()).expect("connect");
        stream.set_read_timeout(Some(timeout())).unwrap();
        stream.set_write_timeout(Some(timeout())).unwrap();
        stream
    }

    /// A raw connection that has written `bytes` (a request: an upgrade perhaps with frames
    /// after it, a HEAD) and read the response head, nothing after it; returns both.
    fn raw_request(&self, bytes: &[u8]) -> (TcpStream, String) {
        let mut stream = self.raw();
        stream.write_all(bytes).unwrap();
        let head = read_head(&mut stream);
        (stream, head)
    }

    /// A raw connection that has completed the opening handshake for `path`.
    fn raw_websocket(&self, path: &str) -> TcpStream {
        let (stream, head) = self.raw_request(upgrade_request(path).as_bytes());
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        stream
    }

    /// Sends one HTTP request on a new connection and reads one response.
    fn http(&self, request: &str) -> HttpReply {
        let mut stream = self.raw();
        stream.write_all(request.as_bytes()).unwrap();
        read_reply(&mut stream)
    }

    /// A GET with `Connection: close`.
    fn get(&self, path: &str) -> HttpReply {
        self.http(&format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr()
        ))
    }

    /// One metric's value from `/metrics` (the first sample whose name and labels match).
    fn metric(&self, sample: &str) -> f64 {
        let page = self.get("/metrics").body_text();
        sample_value(&page, sample)
            .unwrap_or_else(|| panic!("no sample {sample} in /metrics:\n{page}"))
    }
}

impl Endpoint for SocketAddr {
    fn addr(&self) -> SocketAddr {
        *self
    }
}

pub fn set_timeout(client: &Client, timeout: std::time::Duration) {
    if let MaybeTlsStream::Plain(stream) = client.get_ref() {
        stream.set_read_timeout(Some(timeout)).unwrap();
    }
}

/// A valid opening handshake for `path` with `Host: host` and `extra_headers` (each line
/// ending in CRLF) before the blank line.
pub fn upgrade_request_to(host: &str, path: &str, extra_headers: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         {extra_headers}Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

pub fn upgrade_request(path: &str) -> String {
    upgrade_request_to("localhost", path, "")
}

/// A GET on a connection that stays open (no `Connection: close`), and its response.
pub fn keep_alive_get(stream: &mut TcpStream, path: &str) -> HttpReply {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .unwrap();
    read_reply(stream)
}

/// Reads up to the end of an HTTP head, byte by byte (so nothing after it is consumed).
pub fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!(
                "connection ended inside a response head ({other:?}): {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    String::from_utf8(head).unwrap()
}

/// The status code of a response head.
pub fn status_of(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"))
}

pub struct HttpReply {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response: head, then `Content-Length` bytes of body (or to end of stream).
pub fn read_reply(stream: &mut TcpStream) -> HttpReply {
    let head = read_head(stream);
    let mut reply = HttpReply {
        status: status_of(&head),
        head,
        body: Vec::new(),
    };
    match reply
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(len) => {
            reply.body = vec![0; len];
            stream.read_exact(&mut reply.body).expect("whole body");
        }
        None => {
            let _ = stream.read_to_end(&mut reply.body);
        }
    }
    reply
}

/// One sample's value from a `/metrics` page (name and labels exactly as written).
pub fn sample_value(page: &str, sample: &str) -> Option<f64> {
    page.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == sample).then(|| value.parse().ok()).flatten()
    })
}
