//! The well-behaved pair: two plain WebSocket clients in room /calm, joined before the attack,
//! each sending a 64-byte message every 20 ms while the other checks the sequence (nothing
//! lost, nothing duplicated, nothing out of order) and records the latency.
//!
//! A message is binary: sequence number (u64 LE), send time in ns since the pair's start
//! (u64 LE), then padding. Both clients live on one thread and one `mio::Poll`, so a
//! message's send and receive times come from the same clock and no lock.

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::io::ErrorKind;
use std::net::{SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};

const SIZE: usize = 64;
const PERIOD: Duration = Duration::from_millis(20);
/// After the stop, how long the last messages may take to arrive.
const DRAIN: Duration = Duration::from_secs(2);

#[derive(Default, Debug)]
pub struct PairResult {
    pub sent: u64,
    pub received: u64,
    /// Sequence numbers skipped (never seen) by a receiver.
    pub lost: u64,
    /// Messages seen twice or out of order.
    pub duplicated: u64,
    /// Latencies in µs, sorted.
    pub latencies_us: Vec<u64>,
    /// Why the pair stopped early, if it did (a disconnect, an error).
    pub error: Option<String>,
}

impl PairResult {
    pub fn p99_ms(&self) -> Option<f64> {
        percentile(&self.latencies_us, 0.99).map(|us| us as f64 / 1000.0)
    }

    pub fn max_ms(&self) -> Option<f64> {
        self.latencies_us.last().map(|&us| us as f64 / 1000.0)
    }
}

pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[idx])
}

struct Client {
    ws: WebSocket<TcpStream>,
    next_send: u64,
    expect: u64,
}

/// Joins both clients (blocking, with timeouts) and returns them ready for `run`.
pub fn join(addr: SocketAddrV4) -> Result<[WebSocket<TcpStream>; 2], String> {
    let one = || -> Result<WebSocket<TcpStream>, String> {
        let s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2))
            .map_err(|e| format!("pair connect: {e}"))?;
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
        let (ws, resp) = tungstenite::client::client(format!("ws://{addr}/calm"), s)
            .map_err(|e| format!("pair handshake: {e}"))?;
        if resp.status().as_u16() != 101 {
            return Err(format!("pair handshake: status {}", resp.status()));
        }
        ws.get_ref()
            .set_nonblocking(true)
            .map_err(|e| format!("pair: {e}"))?;
        Ok(ws)
    };
    Ok([one()?, one()?])
}

/// Exchanges messages until `stop` is set, then waits up to 2 s for those in flight.
pub fn run(pair: [WebSocket<TcpStream>; 2], stop: Arc<AtomicBool>) -> PairResult {
    let mut res = PairResult::default();
    if let Err(e) = exchange(pair, &stop, &mut res) {
        res.error = Some(e);
    }
    res.latencies_us.sort_unstable();
    res
}

fn exchange(
    pair: [WebSocket<TcpStream>; 2],
    stop: &AtomicBool,
    res: &mut PairResult,
) -> Result<(), String> {
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let mut clients: Vec<Client> = pair
        .into_iter()
        .map(|ws| Client {
            ws,
            next_send: 0,
            expect: 0,
        })
        .collect();
    for (i, c) in clients.iter().enumerate() {
        let fd = c.ws.get_ref().as_raw_fd();
        poll.registry()
            .register(&mut SourceFd(&fd), Token(i), Interest::READABLE)
            .map_err(|e| e.to_string())?;
    }
    let start = Instant::now();
    let mut next_tick = start;
    let mut drain_until: Option<Instant> = None;
    let mut events = Events::with_capacity(8);
    loop {
        let now = Instant::now();
        if drain_until.is_none() && stop.load(Ordering::Relaxed) {
            drain_until = Some(now + DRAIN);
        }
        if let Some(d) = drain_until {
            let all_in = clients[0].expect >= clients[1].next_send
                && clients[1].expect >= clients[0].next_send;
            if all_in || now >= d {
                break;
            }
        } else if now >= next_tick {
            for c in clients.iter_mut() {
                let mut msg = vec![0u8; SIZE];
                msg[..8].copy_from_slice(&c.next_send.to_le_bytes());
                let t = start.elapsed().as_nanos() as u64;
                msg[8..16].copy_from_slice(&t.to_le_bytes());
                // A WouldBlock here has queued the frame: flush later, never resend.
                match c.ws.write(Message::Binary(msg.into())) {
                    Ok(()) => {}
                    Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => return Err(format!("pair send: {e}")),
                }
                c.next_send += 1;
                res.sent += 1;
            }
            next_tick += PERIOD;
            if next_tick < now {
                // We fell behind (a stalled machine): do not burst to catch up.
                next_tick = now + PERIOD;
            }
        }
        for c in clients.iter_mut() {
            match c.ws.flush() {
                Ok(()) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("pair flush: {e}")),
            }
        }
        let wait = match drain_until {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => next_tick.saturating_duration_since(Instant::now()),
        };
        // Poll at least every 5 ms so a pending flush is retried.
        if let Err(e) = poll.poll(&mut events, Some(wait.min(Duration::from_millis(5))))
            && e.kind() != ErrorKind::Interrupted
        {
            return Err(format!("pair poll: {e}"));
        }
        // Read both every time: cheap, and spurious or coalesced events cannot starve one.
        // Each client receives what the other one sent.
        for c in clients.iter_mut() {
            loop {
                let msg = match c.ws.read() {
                    Ok(m) => m,
                    Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => return Err(format!("pair receive: {e}")),
                };
                let Message::Binary(data) = msg else {
                    if let Message::Close(f) = msg {
                        return Err(format!("pair closed by the server: {f:?}"));
                    }
                    continue; // pings are answered by tungstenite itself
                };
                if data.len() != SIZE {
                    return Err(format!("pair: message of {} bytes", data.len()));
                }
                let now = start.elapsed().as_nanos() as u64;
                let mut w = [0u8; 8];
                w.copy_from_slice(&data[..8]);
                let seq = u64::from_le_bytes(w);
                w.copy_from_slice(&data[8..16]);
                let sent_at = u64::from_le_bytes(w);
                res.received += 1;
                res.latencies_us.push(now.saturating_sub(sent_at) / 1000);
                if seq < c.expect {
                    res.duplicated += 1;
                } else {
                    res.lost += seq - c.expect;
                    c.expect = seq + 1;
                }
            }
        }
    }
    // What never arrived counts as lost (the tail after the last one received).
    for i in 0..2 {
        let other = 1 - i;
        res.lost += clients[other].next_send.saturating_sub(clients[i].expect);
    }
    for c in clients.iter_mut() {
        let _ = c.ws.close(None);
        let _ = c.ws.flush();
    }
    Ok(())
}
