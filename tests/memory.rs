//! The memory ceiling (`--max-memory`): the binary (with its counting allocator) under clients
//! that each hold an unfinished 60 KB frame. Near the ceiling it refuses upgrades, stops reading
//! them, closes them with 1013 past the stall limit, keeps a well-behaved pair talking, and
//! gives the memory back after they leave.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;

const MIB: u64 = 1024 * 1024;

#[test]
fn the_default_ceiling_is_derived_from_the_host_and_logged() {
    let server = daemon(&["--no-systemd"]);
    eventually("the ceiling line", || {
        server.log_text().contains("memory ceiling: ")
    });
    let log = server.log_text();
    assert!(log.contains("half of "), "{log}");
    let ceiling = server.metric("wschat_memory_ceiling_bytes");
    assert!(ceiling > 16.0 * MIB as f64, "{ceiling}");
    assert!(server.metric("wschat_memory_heap_bytes") > 0.0);
    assert_eq!(server.metric("wschat_memory_pressure"), 0.0);
}

#[test]
fn partial_frames_cannot_push_the_server_past_its_ceiling() {
    let ceiling_mib = 24;
    let ceiling = format!("{ceiling_mib}M");
    let server = daemon(&[
        "--no-systemd",
        "--max-memory",
        &ceiling,
        "--handshake-timeout",
        "2",
        "--allow-origin",
        "*",
    ]);
    eventually("the ceiling line", || {
        server
            .log_text()
            .contains(&format!("memory ceiling: {} bytes", ceiling_mib * MIB))
    });
    let idle_kib = server.status_kib("VmRSS");
    // A well-behaved pair, joined before the attack, in another room.
    let mut alice = server.client("/calm");
    let mut bob = server.client("/calm");
    wait_for_members(&server, 2);

    // 600 clients each announce a 64,000-byte frame and send 60,000 bytes of it: 36 MB of
    // partial input against a 24 MiB ceiling.
    let mut attackers: Vec<TcpStream> = Vec::new();
    let mut peak_kib = 0;
    let mut refused = 0;
    let mut payload = header_only(0x82, 64_000);
    payload.extend(std::iter::repeat_n(7u8, 60_000));
    for i in 0..600 {
        let mut socket = server.raw();
        socket
            .write_all(upgrade_request("/attack").as_bytes())
            .unwrap();
        let head = read_head(&mut socket);
        if status_of(&head) == 503 {
            refused += 1;
            continue;
        }
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        socket.set_nonblocking(true).unwrap();
        let _ = socket.write(&payload);
        attackers.push(socket);
        if i % 50 == 0 {
            // The pair keeps talking throughout.
            alice.send(Message::text(format!("ping {i}"))).unwrap();
            assert_eq!(next_text(&mut bob), format!("ping {i}"));
            peak_kib = peak_kib.max(server.status_kib("VmRSS"));
        }
    }
    assert!(refused > 0, "no upgrade was refused near the ceiling");
    // Past the stall limit the paused ones are closed with 1013.
    let deadline = Instant::now() + timeout() * 2;
    let mut sent = 0;
    while server.metric("wschat_memory_closed_total") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "nobody was closed for holding partial input"
        );
        alice.send(Message::text(format!("during {sent}"))).unwrap();
        assert_eq!(next_text(&mut bob), format!("during {sent}"));
        sent += 1;
        peak_kib = peak_kib.max(server.status_kib("VmRSS"));
        std::thread::sleep(scaled(Duration::from_millis(50)));
    }
    let health = server.get("/healthz");
    assert!(health.status == 200 || health.body_text().contains("memory pressure"));
    let fixed_overhead_kib = 16 * 1024;
    assert!(
        peak_kib < ceiling_mib * 1024 + fixed_overhead_kib,
        "peak RSS {peak_kib} KiB against a {ceiling_mib} MiB ceiling"
    );
    let mut codes = 0;
    for socket in attackers.iter_mut().take(20) {
        socket.set_nonblocking(false).unwrap();
        if read_close_code(socket) == Some(1013) {
            codes += 1;
        }
    }
    assert!(codes > 0, "no attacker saw 1013");
    drop(attackers);
    // The pair still talks, and the memory goes back.
    alice.send(Message::text("after")).unwrap();
    assert_eq!(next_text(&mut bob), "after");
    // Within 30 s of the attackers leaving, RSS is back within 2x idle + 4 MiB (issue 11).
    let deadline = Instant::now() + scaled(Duration::from_secs(30));
    loop {
        let rss = server.status_kib("VmRSS");
        if rss < idle_kib * 2 + 4 * 1024 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "RSS {rss} KiB 30 s after the attackers left (idle {idle_kib} KiB)"
        );
        std::thread::sleep(scaled(Duration::from_millis(200)));
    }
    assert_eq!(server.get("/healthz").status, 200);
}

/// One sender's bulk into a room of members that never read: every byte read is copied to
/// every member, so a read is what turns a sender's burst into memory. Before reads were sized
/// by the room, one 64 KiB read of 1 KiB messages into a room of 1,000 queued 64 MB in a single
/// loop pass, before the ceiling could act (scripts/hostile, attack 5).
#[test]
fn a_burst_into_a_room_of_non_readers_stays_under_the_ceiling() {
    let ceiling_mib = 24;
    let server = daemon(&["--no-systemd", "--max-memory", &format!("{ceiling_mib}M")]);
    eventually("the ceiling line", || {
        server.log_text().contains("memory ceiling: ")
    });
    let mut alice = server.client("/calm");
    let mut bob = server.client("/calm");
    let members = 1000;
    let mut non_readers = Vec::with_capacity(members);
    for _ in 0..members {
        let mut socket = server.raw();
        shrink_receive_buffer(&socket);
        socket
            .write_all(upgrade_request("/busy").as_bytes())
            .unwrap();
        let head = read_head(&mut socket);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        non_readers.push(socket);
    }
    let mut publisher = server.raw();
    publisher
        .write_all(upgrade_request("/busy").as_bytes())
        .unwrap();
    assert!(read_head(&mut publisher).starts_with("HTTP/1.1 101"));
    wait_for_members(&server, members + 3);

    // Bursts of 64 messages of 1 KiB, each written at once (one socket read's worth).
    let burst: Vec<u8> = (0..64)
        .flat_map(|_| frame(0x82, &[7u8; 1024], true))
        .collect();
    for round in 0..8 {
        publisher.write_all(&burst).unwrap();
        alice.send(Message::text(format!("round {round}"))).unwrap();
        assert_eq!(next_text(&mut bob), format!("round {round}"));
    }
    // The pair's messages were relayed after (or between) the bursts' passes.
    alice.send(Message::text("after")).unwrap();
    assert_eq!(next_text(&mut bob), "after");
    let peak_kib = server.status_kib("VmHWM");
    let fixed_overhead_kib = 16 * 1024;
    assert!(
        peak_kib < ceiling_mib * 1024 + fixed_overhead_kib,
        "peak RSS {peak_kib} KiB against a {ceiling_mib} MiB ceiling"
    );
    drop(non_readers);
}

/// Like a remote client's small buffers: what the server sends waits in its own memory, not in
/// the test's socket.
fn shrink_receive_buffer(socket: &TcpStream) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 4096;
    // SAFETY: a valid socket descriptor and a c_int option value of the stated size.
    let _ = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}
