//! `limit`: the physical limit the relay bench measures wschat against (issue 10).
//!
//! A minimal relay on mio, run as its own process: the relay bench binary starts itself with
//! the hidden first argument `--limit-server` (see `server::Kind::Limit`), pinned to CPU 0
//! like every other peer. Per message it does only what any relay must: read the frame,
//! unmask it, encode it unmasked once, copy it into one buffer per recipient, and write each
//! recipient's buffer once per loop pass. No HTTP routes, no limits or budgets, no UTF-8
//! check, no timers, no metrics, no logging: what wschat spends beyond this per delivery is
//! the price of its checks and of its structure.
//!
//! Just enough WebSocket for the generator: the upgrade request's path names the room and
//! its `Sec-WebSocket-Key` is answered; data frames (continuations too) go to the other
//! members of the room (to every member with `--echo`) with their first byte unchanged; a
//! ping is answered with a pong; a close frame is answered with a close and ends the
//! connection, as does end of stream or any error. Interleaved fragmented messages of two
//! senders would mix: the generator never fragments.

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::collections::HashMap;
use std::io::{self, Read, Write};

const LISTENER: Token = Token(usize::MAX);
/// The loop-wide read buffer, the size wschat reads with.
const READ_BUF: usize = 64 * 1024;
/// A request head longer than this ends the connection (the generator's is ~200 bytes).
const MAX_HEAD: usize = 8 * 1024;

struct Conn {
    stream: TcpStream,
    /// Before the upgrade the request head so far; after it the bytes of a partial frame.
    inbuf: Vec<u8>,
    /// The room and the slot in its member list, once upgraded.
    member: Option<(usize, usize)>,
    out: Vec<u8>,
    /// Bytes at the front of `out` already written (after a partial write).
    out_pos: usize,
    dirty: bool,
    /// The socket took less than offered: wait for its writable event.
    blocked: bool,
    doomed: bool,
}

/// The connection table and the rooms: split from the poll so that a frame read into the
/// loop buffer can be copied to the other connections without a second borrow of either.
struct Relay {
    conns: Slab<Conn>,
    rooms: Vec<Vec<usize>>,
    room_keys: HashMap<String, usize>,
    dirty: Vec<usize>,
    doomed: Vec<usize>,
    echo: bool,
}

/// Runs the limit relay until killed. `args`: `--port P [--echo]`.
pub fn main(args: &[String]) -> ! {
    let mut port = None;
    let mut echo = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--port" => port = it.next().and_then(|p| p.parse::<u16>().ok()),
            "--echo" => echo = true,
            _ => {}
        }
    }
    let Some(port) = port else {
        eprintln!("limit: usage: --limit-server --port P [--echo]");
        std::process::exit(2);
    };
    if let Err(e) = run(port, echo) {
        eprintln!("limit: {e}");
        std::process::exit(1);
    }
    std::process::exit(0);
}

fn run(port: u16, echo: bool) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(([127, 0, 0, 1], port).into())?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; READ_BUF].into_boxed_slice();
    let mut relay = Relay {
        conns: Slab::new(),
        rooms: Vec::new(),
        room_keys: HashMap::new(),
        dirty: Vec::new(),
        doomed: Vec::new(),
        echo,
    };
    loop {
        match poll.poll(&mut events, None) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                accept_all(&poll, &mut listener, &mut relay.conns);
                continue;
            }
            let key = ev.token().0;
            if ev.is_writable() || ev.is_write_closed() {
                relay.unblock(key);
            }
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                relay.read(key, &mut buf);
            }
        }
        relay.flush();
        for key in relay.doomed.drain(..) {
            if let Some(mut c) = relay.conns.try_remove(key) {
                let _ = poll.registry().deregister(&mut c.stream);
            }
        }
    }
}

fn accept_all(poll: &Poll, listener: &mut TcpListener, conns: &mut Slab<Conn>) {
    loop {
        match listener.accept() {
            Ok((mut stream, _)) => {
                let _ = stream.set_nodelay(true);
                let entry = conns.vacant_entry();
                let interest = Interest::READABLE | Interest::WRITABLE;
                if poll
                    .registry()
                    .register(&mut stream, Token(entry.key()), interest)
                    .is_ok()
                {
                    entry.insert(Conn {
                        stream,
                        inbuf: Vec::new(),
                        member: None,
                        out: Vec::new(),
                        out_pos: 0,
                        dirty: false,
                        blocked: false,
                        doomed: false,
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // WouldBlock, or EMFILE and the like: the next listener event tries again.
            Err(_) => return,
        }
    }
}

impl Relay {
    fn unblock(&mut self, key: usize) {
        if let Some(c) = self.conns.get_mut(key)
            && c.blocked
        {
            c.blocked = false;
            mark_dirty(&mut self.dirty, key, c);
        }
    }

    fn read(&mut self, key: usize, buf: &mut [u8]) {
        if self
            .conns
            .get(key)
            .is_some_and(|c| c.member.is_none() && !c.doomed)
        {
            self.read_head(key);
        }
        // After an upgrade too: the socket is read until drained (edge-triggered readiness).
        if self
            .conns
            .get(key)
            .is_some_and(|c| c.member.is_some() && !c.doomed)
        {
            self.read_frames(key, buf);
        }
    }

    /// Reads the upgrade request until its head is complete, answers it and joins the room.
    fn read_head(&mut self, key: usize) {
        let mut chunk = [0u8; 4096];
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let end = loop {
            match c.stream.read(&mut chunk) {
                Ok(0) => return self.doom(key),
                Ok(n) => {
                    c.inbuf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = c.inbuf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break end;
                    }
                    if c.inbuf.len() > MAX_HEAD {
                        return self.doom(key);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.doom(key),
            }
        };
        let Some((path, accept)) = parse_upgrade(&c.inbuf[..end]) else {
            let _ = c
                .stream
                .write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
            return self.doom(key);
        };
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        // A fresh socket's send buffer takes ~130 bytes in one write.
        if !matches!(c.stream.write(response.as_bytes()), Ok(n) if n == response.len()) {
            return self.doom(key);
        }
        let mut rest = c.inbuf.split_off(end + 4);
        c.inbuf.clear();
        let next = self.rooms.len();
        let room = *self.room_keys.entry(path).or_insert(next);
        if room == next {
            self.rooms.push(Vec::new());
        }
        let members = &mut self.rooms[room];
        members.push(key);
        c.member = Some((room, members.len() - 1));
        // Frames that came with the head: no readable event will announce them again.
        match self.frames(key, &mut rest) {
            Ok(used) => {
                if let Some(c) = self.conns.get_mut(key) {
                    c.inbuf.extend_from_slice(&rest[used..]);
                }
            }
            Err(()) => self.doom(key),
        }
    }

    /// Reads frames until the socket is drained: a partial frame of the last read goes in
    /// front of the new bytes in the loop buffer (or, when larger than half of it, grows in
    /// the connection's own buffer).
    fn read_frames(&mut self, key: usize, buf: &mut [u8]) {
        loop {
            let Some(c) = self.conns.get_mut(key) else {
                return;
            };
            if c.doomed {
                return;
            }
            let carry = c.inbuf.len();
            if carry > buf.len() / 2 {
                let mut data = std::mem::take(&mut c.inbuf);
                data.resize(carry + READ_BUF, 0);
                let read = read_some(&mut c.stream, &mut data[carry..]);
                data.truncate(carry + *read.as_ref().unwrap_or(&0));
                let n = match read {
                    Ok(0) => return self.doom(key),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        c.inbuf = data;
                        return;
                    }
                    Err(_) => return self.doom(key),
                };
                let drained = n < READ_BUF;
                match self.frames(key, &mut data) {
                    Ok(used) => {
                        data.drain(..used);
                        if let Some(c) = self.conns.get_mut(key) {
                            c.inbuf = data;
                        }
                    }
                    Err(()) => return self.doom(key),
                }
                if drained {
                    return;
                }
                continue;
            }
            buf[..carry].copy_from_slice(&c.inbuf);
            let space = buf.len() - carry;
            let n = match read_some(&mut c.stream, &mut buf[carry..]) {
                Ok(0) => return self.doom(key),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return self.doom(key),
            };
            c.inbuf.clear();
            let data = &mut buf[..carry + n];
            match self.frames(key, data) {
                Ok(used) => {
                    if used < data.len()
                        && let Some(c) = self.conns.get_mut(key)
                    {
                        c.inbuf.extend_from_slice(&data[used..]);
                    }
                }
                Err(()) => return self.doom(key),
            }
            if n < space {
                // A short read drained the socket; edge-triggered epoll reports the next
                // arrival, so the read that would only say WouldBlock is skipped.
                return;
            }
        }
    }

    /// Handles every complete frame at the front of `data` (client frames, masked) and
    /// returns the bytes used; Err ends the connection.
    fn frames(&mut self, sender: usize, data: &mut [u8]) -> Result<usize, ()> {
        let mut pos = 0;
        while let [b0, b1, ..] = data[pos..] {
            if b1 & 0x80 == 0 {
                return Err(()); // RFC 6455 5.1: a client frame must be masked
            }
            let rest = &mut data[pos..];
            let (len, hl) = match b1 & 0x7f {
                126 => match rest.get(2..4) {
                    Some(b) => (u16::from_be_bytes([b[0], b[1]]) as usize, 4),
                    None => break,
                },
                127 => match rest.get(2..10) {
                    Some(b) => {
                        let mut be = [0u8; 8];
                        be.copy_from_slice(b);
                        (usize::try_from(u64::from_be_bytes(be)).map_err(|_| ())?, 10)
                    }
                    None => break,
                },
                n => (n as usize, 2),
            };
            let total = len.checked_add(hl + 4).ok_or(())?;
            if rest.len() < total {
                break;
            }
            let mut mask = [0u8; 4];
            mask.copy_from_slice(&rest[hl..hl + 4]);
            for (i, b) in rest[hl + 4..total].iter_mut().enumerate() {
                *b ^= mask[i & 3];
            }
            // The unmasked header goes where the key was, right before the payload: the
            // frame is then one slice, encoded once for every recipient.
            rest.copy_within(0..hl, 4);
            rest[5] &= 0x7f;
            pos += total;
            let frame = &mut rest[4..total];
            match b0 & 0x0f {
                0x0..=0x2 => self.fan_out(sender, frame),
                0x8 => {
                    self.queue(sender, frame); // echo the close, then end
                    return Err(());
                }
                0x9 => {
                    frame[0] = 0x8a; // pong, same payload
                    self.queue(sender, frame);
                }
                _ => {}
            }
        }
        Ok(pos)
    }

    /// Copies one encoded frame into the buffer of every other member of the sender's room.
    fn fan_out(&mut self, sender: usize, frame: &[u8]) {
        let Some((room, _)) = self.conns.get(sender).and_then(|c| c.member) else {
            return;
        };
        let Relay {
            conns,
            rooms,
            dirty,
            echo,
            ..
        } = self;
        for &m in &rooms[room] {
            if m == sender && !*echo {
                continue;
            }
            if let Some(c) = conns.get_mut(m) {
                c.out.extend_from_slice(frame);
                mark_dirty(dirty, m, c);
            }
        }
    }

    fn queue(&mut self, key: usize, frame: &[u8]) {
        if let Some(c) = self.conns.get_mut(key) {
            c.out.extend_from_slice(frame);
            mark_dirty(&mut self.dirty, key, c);
        }
    }

    /// One write per dirty connection, at the end of the pass.
    fn flush(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            let Some(c) = self.conns.get_mut(key) else {
                continue;
            };
            c.dirty = false;
            if c.blocked {
                continue;
            }
            match c.stream.write(&c.out[c.out_pos..]) {
                Ok(n) => {
                    c.out_pos += n;
                    if c.out_pos == c.out.len() {
                        c.out.clear();
                        c.out_pos = 0;
                    } else {
                        // Short: the send buffer is full and the kernel reports its space.
                        c.blocked = true;
                        if c.out_pos > c.out.len() / 2 {
                            c.out.drain(..c.out_pos);
                            c.out_pos = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.blocked = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    mark_dirty(&mut self.dirty, key, c);
                }
                Err(_) => self.doom(key),
            }
        }
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty; // keep the allocation
        }
    }

    /// Takes a connection out of its room now and off the table at the end of the pass.
    fn doom(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.doomed {
            return;
        }
        c.doomed = true;
        self.doomed.push(key);
        if let Some((room, slot)) = c.member.take() {
            let members = &mut self.rooms[room];
            members.swap_remove(slot);
            if let Some(&moved) = members.get(slot)
                && let Some(m) = self.conns.get_mut(moved)
            {
                m.member = Some((room, slot));
            }
        }
    }
}

fn mark_dirty(dirty: &mut Vec<usize>, key: usize, c: &mut Conn) {
    if !c.dirty {
        c.dirty = true;
        dirty.push(key);
    }
}

fn read_some(stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match stream.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// The room (the request path) and the `Sec-WebSocket-Accept` value of an upgrade request
/// head; None when it is not one.
fn parse_upgrade(head: &[u8]) -> Option<(String, String)> {
    let head = std::str::from_utf8(head).ok()?;
    let mut lines = head.split("\r\n");
    let mut request = lines.next()?.split(' ');
    if request.next()? != "GET" {
        return None;
    }
    let path = request.next()?.to_string();
    let key = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("sec-websocket-key")
            .then(|| value.trim())
    })?;
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    Some((path, accept))
}
