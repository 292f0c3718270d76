//! Slow consumers: a member that reads nothing sits in a busy room. Its queue stays within
//! `--max-outbound` (the server's own gauges, and the RSS of the real binary), the policy
//! applies (close 1008, drop-newest, drop-oldest) and is counted, the process-wide budget
//! sheds the largest queues, and the other members keep receiving everything at full rate.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;
use wschat::config::SlowClientPolicy;

const BUDGET: usize = 64 * 1024;
const MESSAGE: usize = 8 * 1024;
/// Far more than the kernel buffers of a non-reader can absorb on loopback (a few MB).
const MESSAGES: u32 = 1500;

fn slow_config(policy: SlowClientPolicy) -> Config {
    Config {
        max_outbound: BUDGET,
        max_outbound_total: 64 * BUDGET,
        max_message_size: 16 * 1024,
        slow_client: policy,
        ..config()
    }
}

fn numbered(seq: u32) -> Message {
    let mut payload = vec![0x5a; MESSAGE];
    payload[..4].copy_from_slice(&seq.to_be_bytes());
    Message::binary(payload)
}

fn seq_of(payload: &[u8]) -> u32 {
    u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
}

/// A member that reads every message as fast as it can and checks that it got 0..count in
/// order. Returns how long it took from its first message to its last, and the client (still
/// a member).
fn fast_reader(mut client: Client, count: u32) -> JoinHandle<(Duration, Client)> {
    std::thread::spawn(move || {
        let mut started = None;
        for expected in 0..count {
            let Message::Binary(payload) = next_message(&mut client) else {
                panic!("expected binary");
            };
            started.get_or_insert_with(Instant::now);
            assert_eq!(seq_of(&payload), expected, "the fast reader lost a message");
        }
        (started.map(|s| s.elapsed()).unwrap_or_default(), client)
    })
}

/// Sends `count` numbered messages; every 100, checks the server's own queue gauges.
fn blast(server: &TestServer, sender: &mut Client, count: u32, members: usize) {
    for seq in 0..count {
        sender.send(numbered(seq)).unwrap();
        if seq % 100 == 99 {
            check_gauges(server, members);
        }
    }
}

/// The largest queue never exceeds the budget (a control frame of slack), and all queues
/// together never exceed the budget of every member.
fn check_gauges(server: &TestServer, members: usize) {
    let largest = server.metric("wschat_outbound_queued_largest_bytes") as usize;
    let total = server.metric("wschat_outbound_queued_bytes") as usize;
    assert!(largest <= BUDGET + 256, "a queue holds {largest} bytes");
    assert!(
        total <= members * (BUDGET + 256),
        "queues hold {total} bytes"
    );
}

/// Reads data frames from a non-reader that finally reads, until `last` arrives; returns the
/// sequence numbers of the numbered messages it got.
fn read_until_text(stream: &mut TcpStream, last: &str) -> Vec<u32> {
    let mut seqs = Vec::new();
    loop {
        let (first, payload) = read_frame(stream);
        match first & 0x0f {
            0x2 => seqs.push(seq_of(&payload)),
            0x1 if payload == last.as_bytes() => return seqs,
            0x9 => stream.write_all(&frame(0x8a, &payload, true)).unwrap(),
            0x8 => panic!("closed: {payload:?}"),
            other => panic!("unexpected frame {other:#x}"),
        }
    }
}

/// Lets non-readers start reading: each reads in a thread until `the end`, which is sent once
/// the server's queues are empty (so no policy can drop it). Returns what each received.
fn finish(server: &TestServer, sender: &mut Client, slow: Vec<TcpStream>) -> Vec<Vec<u32>> {
    let readers: Vec<JoinHandle<Vec<u32>>> = slow
        .into_iter()
        .map(|mut stream| std::thread::spawn(move || read_until_text(&mut stream, "the end")))
        .collect();
    eventually("the queues to drain", || {
        server.metric("wschat_outbound_queued_bytes") == 0.0
    });
    sender.send(Message::text("the end")).unwrap();
    readers
        .into_iter()
        .map(|r| r.join().expect("a non-reader got the end"))
        .collect()
}

/// The time to deliver the whole blast to one fast reader, with no slow member around.
fn baseline(policy: SlowClientPolicy) -> Duration {
    let server = start(slow_config(policy));
    let mut sender = server.client("/");
    let reader = fast_reader(server.client("/"), MESSAGES);
    wait_for_members(&server, 2);
    blast(&server, &mut sender, MESSAGES, 2);
    reader.join().expect("the fast reader got everything").0
}

fn assert_full_rate(with_slow: Duration, without: Duration) {
    assert!(
        with_slow < without * 3 + scaled(Duration::from_millis(500)),
        "the fast reader took {with_slow:?} beside a slow one, {without:?} alone"
    );
}

#[test]
fn close_policy_closes_the_non_reader_with_1008_and_the_room_keeps_full_rate() {
    let alone = baseline(SlowClientPolicy::Close);
    let server = start(slow_config(SlowClientPolicy::Close));
    let mut sender = server.client("/");
    let reader = fast_reader(server.client("/"), MESSAGES);
    let mut slow = server.raw_websocket("/");
    wait_for_members(&server, 3);
    blast(&server, &mut sender, MESSAGES, 3);
    let (took, _reader) = reader.join().expect("the fast reader got everything");
    assert_full_rate(took, alone);
    assert_eq!(server.metric("wschat_slow_client_closes_total"), 1.0);
    assert_eq!(server.metric("wschat_websockets_open"), 2.0);
    // What the kernel already held arrives, then the Close: 1008 "slow consumer".
    let mut last = None;
    loop {
        let (first, payload) = read_frame(&mut slow);
        if first & 0x0f == 0x8 {
            assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1008);
            assert_eq!(&payload[2..], b"slow consumer");
            break;
        }
        let seq = seq_of(&payload);
        assert!(last.is_none_or(|l| seq == l + 1), "a gap before the Close");
        last = Some(seq);
    }
    assert!(
        last.is_some_and(|l| l + 1 < MESSAGES),
        "nothing was held back"
    );
    slow.write_all(&frame(0x88, &1008u16.to_be_bytes(), true))
        .unwrap();
    eventually("the slow consumer to be gone", || {
        server.metric("wschat_connections_closed_total{reason=\"slow_consumer\"}") == 1.0
    });
    check_gauges(&server, 2);
}

#[test]
fn a_non_reader_that_cannot_take_the_close_is_dropped_after_the_close_timeout() {
    let server = start(slow_config(SlowClientPolicy::Close));
    let mut sender = server.client("/");
    let reader = fast_reader(server.client("/"), MESSAGES);
    let mut slow = server.raw_websocket("/");
    wait_for_members(&server, 3);
    // The close timer starts at the slow close, mid-blast: note when it is first seen.
    let mut closed_at = None;
    for seq in 0..MESSAGES {
        sender.send(numbered(seq)).unwrap();
        if closed_at.is_none()
            && seq % 50 == 49
            && server.metric("wschat_slow_client_closes_total") == 1.0
        {
            closed_at = Some(Instant::now());
        }
    }
    let _reader = reader.join().expect("the fast reader got everything");
    let closed_at = closed_at.unwrap_or_else(|| {
        eventually("the slow close", || {
            server.metric("wschat_slow_client_closes_total") == 1.0
        });
        Instant::now()
    });
    // It still reads nothing: the socket is dropped once CLOSE_TIMEOUT (3 s) passes. The
    // margins allow for the time between the close and seeing it, longer on a slow target.
    let close_timeout = Duration::from_secs(3);
    let still_open_at =
        closed_at + close_timeout.saturating_sub(scaled(Duration::from_millis(500)));
    std::thread::sleep(still_open_at.saturating_duration_since(Instant::now()));
    assert_eq!(server.metric("wschat_connections_open"), 4.0);
    eventually("the socket to be dropped", || {
        server.metric("wschat_connections_open") == 3.0
    });
    assert!(closed_at.elapsed() < close_timeout + scaled(Duration::from_millis(1500)));
    // Draining what it holds ends in end-of-stream (or a reset), not a hang.
    wait_for_eof(&mut slow);
}

#[test]
fn drop_newest_skips_messages_for_the_non_reader_only_and_counts_them() {
    let alone = baseline(SlowClientPolicy::DropNewest);
    let server = start(slow_config(SlowClientPolicy::DropNewest));
    let mut sender = server.client("/");
    let reader = fast_reader(server.client("/"), MESSAGES);
    let slow = server.raw_websocket("/");
    wait_for_members(&server, 3);
    blast(&server, &mut sender, MESSAGES, 3);
    let (took, _reader) = reader.join().expect("the fast reader got everything");
    assert_full_rate(took, alone);
    let dropped = server.metric("wschat_messages_dropped_total{reason=\"slow_client_newest\"}");
    assert!(dropped > 0.0, "nothing was dropped");
    assert_eq!(server.metric("wschat_slow_client_closes_total"), 0.0);
    assert_eq!(server.metric("wschat_websockets_open"), 3.0);
    // The non-reader starts reading: it gets the oldest messages, in order, then the rest
    // of the room's life.
    let seqs = finish(&server, &mut sender, vec![slow]).remove(0);
    assert_eq!(seqs.first(), Some(&0), "drop-newest keeps the oldest");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "out of order");
    assert_eq!(
        seqs.len() as f64 + dropped,
        MESSAGES as f64,
        "every message was either delivered or counted as dropped"
    );
}

#[test]
fn drop_oldest_discards_whole_old_messages_and_keeps_the_newest() {
    let server = start(slow_config(SlowClientPolicy::DropOldest));
    let mut sender = server.client("/");
    let reader = fast_reader(server.client("/"), MESSAGES);
    let mut slow = server.raw_websocket("/");
    wait_for_members(&server, 3);
    blast(&server, &mut sender, MESSAGES, 3);
    let _reader = reader.join().expect("the fast reader got everything");
    let dropped = server.metric("wschat_messages_dropped_total{reason=\"slow_client_oldest\"}");
    assert!(dropped > 0.0, "nothing was dropped");
    assert_eq!(server.metric("wschat_websockets_open"), 3.0);
    sender.send(Message::text("the end")).unwrap();
    // Every frame parses (whole messages were dropped, never half of one), in order, and
    // the newest message made it.
    let seqs = read_until_text(&mut slow, "the end");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "out of order");
    assert_eq!(
        seqs.last(),
        Some(&(MESSAGES - 1)),
        "drop-oldest keeps the newest"
    );
    assert_eq!(seqs.len() as f64 + dropped, MESSAGES as f64);
}

#[test]
fn the_process_wide_budget_sheds_the_largest_queues() {
    let server = start(Config {
        max_outbound: BUDGET,
        max_outbound_total: 2 * BUDGET,
        max_message_size: 16 * 1024,
        slow_client: SlowClientPolicy::DropNewest,
        ..config()
    });
    let mut sender = server.client("/");
    let reader = fast_reader(server.client("/"), MESSAGES);
    let slow: Vec<TcpStream> = (0..4).map(|_| server.raw_websocket("/")).collect();
    wait_for_members(&server, 6);
    for seq in 0..MESSAGES {
        sender.send(numbered(seq)).unwrap();
    }
    let _reader = reader.join().expect("the fast reader got everything");
    // Four queues of up to 64 KiB each would be 256 KiB: the total stays at 128 KiB.
    let total = server.metric("wschat_outbound_queued_bytes") as usize;
    assert!(total <= 2 * BUDGET, "queues hold {total} bytes");
    assert!(server.metric("wschat_messages_dropped_total{reason=\"total_budget\"}") > 0.0);
    assert_eq!(server.metric("wschat_websockets_open"), 6.0);
    // The shed members are still served in order.
    for seqs in finish(&server, &mut sender, slow) {
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "out of order");
    }
}

#[test]
fn the_binary_stays_within_its_budget_in_rss_beside_non_readers() {
    let daemon = daemon(&[
        "--max-outbound",
        "64K",
        "--max-message-size",
        "16K",
        "--slow-client",
        "drop-newest",
    ]);
    let mut sender = daemon.client("/");
    let total_messages = 6000u32;
    let reader = fast_reader(daemon.client("/"), total_messages);
    let _slow: Vec<TcpStream> = (0..3).map(|_| daemon.raw_websocket("/")).collect();
    wait_for_members(&daemon, 5);
    // Warm up: allocator pools, the queues filled to their budget.
    for seq in 0..500 {
        sender.send(numbered(seq)).unwrap();
    }
    let rss_before = daemon.status_kib("VmRSS");
    // 44 MB more to each of the three non-readers.
    for seq in 500..total_messages {
        sender.send(numbered(seq)).unwrap();
    }
    let _reader = reader.join().expect("the fast reader got everything");
    let rss_after = daemon.status_kib("VmRSS");
    let largest = daemon.metric("wschat_outbound_queued_largest_bytes") as usize;
    let queued = daemon.metric("wschat_outbound_queued_bytes") as usize;
    assert!(largest <= BUDGET + 256, "a queue holds {largest} bytes");
    assert!(queued <= 3 * (BUDGET + 256), "queues hold {queued} bytes");
    // Unbounded queues would have grown by over 100 MB; allow 8 MB for everything else.
    assert!(
        rss_after < rss_before + 8 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert!(daemon.metric("wschat_messages_dropped_total{reason=\"slow_client_newest\"}") > 0.0);
}

#[test]
fn the_process_wide_budget_counts_only_what_sockets_refuse_so_fast_readers_lose_nothing() {
    // One pass may queue a burst to every member before its flush: 4 readers at up to the
    // 64 KiB budget each is over a 64 KiB total, yet none of them is slow.
    let server = start(Config {
        max_outbound: BUDGET,
        max_outbound_total: BUDGET,
        max_message_size: 16 * 1024,
        slow_client: SlowClientPolicy::DropNewest,
        ..config()
    });
    let mut sender = server.client("/");
    let readers: Vec<_> = (0..4)
        .map(|_| fast_reader(server.client("/"), MESSAGES))
        .collect();
    wait_for_members(&server, 5);
    for seq in 0..MESSAGES {
        sender.send(numbered(seq)).unwrap();
    }
    for reader in readers {
        reader.join().expect("a fast reader got everything");
    }
    assert_eq!(
        server.metric("wschat_messages_dropped_total{reason=\"total_budget\"}"),
        0.0
    );
}

#[test]
fn a_client_that_pings_and_never_reads_is_held_to_its_budget_and_hurts_no_one() {
    let budget = 64 * 1024;
    let server = start(Config {
        max_outbound: budget,
        max_message_size: 16 * 1024,
        max_outbound_total: 256 * 1024,
        ..config()
    });
    let mut a = server.client("/elsewhere");
    let mut b = server.client("/elsewhere");
    let mut flood = server.raw_websocket("/");
    wait_for_members(&server, 3);
    // Pings as fast as the socket takes them; every one asks for a pong the flooder never
    // reads. Without a bound the pongs pile up in the server as fast as pings arrive.
    flood.set_nonblocking(true).unwrap();
    let ping = frame(0x89, &[0x55; 125], true);
    let started = std::time::Instant::now();
    let mut sent = 0usize;
    while sent < 64 << 20 && started.elapsed() < scaled(Duration::from_secs(2)) {
        match flood.write(&ping) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("flood write failed: {e}"),
        }
    }
    let largest = server.metric("wschat_outbound_queued_largest_bytes") as usize;
    let total = server.metric("wschat_outbound_queued_bytes") as usize;
    // The budget, plus the pongs for what one read had already taken in.
    assert!(
        largest <= 3 * budget,
        "the flooder holds {largest} bytes after sending {sent}"
    );
    assert!(total <= 3 * budget, "the server holds {total} bytes");
    // The rest of the server carries on, and nobody was closed for it.
    a.send(Message::text("still fine")).unwrap();
    assert_eq!(next_text(&mut b), "still fine");
    assert_eq!(
        server.metric("wschat_connections_closed_total{reason=\"slow_consumer\"}"),
        0.0
    );
}

/// `--send-buffer` fixes the kernel's send buffer of every client socket: a member that does
/// not read holds at most that much of the kernel's memory, and the rest of what it is sent
/// waits in its queue, where the server counts it and the slow-client policy sees it. With
/// the kernel's autotuning, a loopback socket takes megabytes (docs/hostile.md: 2,000 such
/// members took 1.5 GiB of kernel memory, outside the process and its ceiling).
#[test]
fn a_member_that_does_not_read_holds_at_most_the_send_buffer_in_the_kernel() {
    const SENT: usize = 3 * 1024 * 1024;
    let server = start(Config {
        send_buffer: 16 * 1024,
        max_outbound: 8 * 1024 * 1024,
        max_outbound_total: 64 * 1024 * 1024,
        max_message_size: 16 * 1024,
        ..config()
    });
    let mut sender = server.client("/");
    let _slow = server.raw_websocket("/");
    wait_for_members(&server, 2);
    for seq in 0..(SENT / MESSAGE) as u32 {
        sender.send(numbered(seq)).unwrap();
    }
    // What the kernel did not take stays queued: all but the 32 KiB send buffer (16 KiB,
    // doubled) and the reader's receive window, a few hundred KiB on loopback.
    eventually("the non-reader's bytes to wait in its queue", || {
        server.metric("wschat_outbound_queued_bytes") >= (SENT - 1024 * 1024) as f64
    });
}
