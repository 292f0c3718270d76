//! `rediss://`: the Redis link over TLS, against a real TLS-only redis-server (no plain port)
//! presenting certificates that `openssl` makes for each test. Skipped (with a message) when
//! redis-server or openssl is not installed; `.ci/run` installs both.
#![cfg(feature = "tls")]

mod common;

use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::redis::{RedisServer, TestPki};
use common::*;
use tungstenite::Message;

/// A node in this process, linked to `url` and trusting `ca` only.
fn node(url: &str, ca: &Path) -> TestServer {
    start(Config {
        redis: Some(wschat::redis::RedisUrl::parse(url).unwrap()),
        redis_ca: Some(ca.to_path_buf()),
        ..config()
    })
}

fn numsub(redis: &RedisServer, room: &str) -> String {
    let out = redis.cli(&["PUBSUB", "NUMSUB", &format!("wschat:room:{room}")]);
    out.lines().nth(1).unwrap_or("").trim().to_string()
}

#[test]
fn two_nodes_share_a_room_over_rediss() {
    let Some(pki) = TestPki::new() else { return };
    let Some(redis) = RedisServer::start_tls(&pki, &pki.server_cert, &pki.server_key) else {
        return;
    };
    // One by IP address, one by name: the certificate carries both, and each is checked.
    let a = node(&redis.url(), &pki.ca);
    let b = node(&format!("rediss://localhost:{}", redis.port), &pki.ca);
    for node in [&a, &b] {
        eventually("the link up over TLS", || {
            node.metric("wschat_redis_up") == 1.0
        });
    }
    let mut on_a = a.client("/secure");
    let mut on_b = b.client("/secure");
    eventually("both nodes subscribed", || numsub(&redis, "/secure") == "2");
    on_a.send(Message::text("over tls")).unwrap();
    assert_eq!(next_text(&mut on_b), "over tls");
    // The publish connection of b and the subscribe connection of a, the other way round.
    on_b.send(Message::binary(vec![7u8; 5000])).unwrap();
    assert_eq!(next_message(&mut on_a), Message::binary(vec![7u8; 5000]));
    for node in [&a, &b] {
        assert_eq!(node.metric("wschat_redis_connect_failures_total"), 0.0);
        assert_eq!(node.metric("wschat_redis_publish_errors_total"), 0.0);
    }
}

/// A handshake that fails is a failed connect: counted, logged once (the repeats at debug
/// level), retried with backoff; the node keeps serving its own rooms.
fn never_comes_up(redis: &RedisServer, url: &str, ca: &Path) {
    let ca = ca.to_string_lossy();
    let node = daemon(&["--redis", url, "--redis-ca", &ca]);
    eventually("three failed handshakes", || {
        node.metric("wschat_redis_connect_failures_total") >= 3.0
    });
    assert_eq!(node.metric("wschat_redis_up"), 0.0);
    let health = node.get("/healthz").body_text();
    assert!(
        health.contains("redis down") || health.contains("redis connecting"),
        "{health}"
    );
    assert_eq!(
        node.count_lines("TLS handshake"),
        1,
        "one WARN for many failures:\n{}",
        node.log_text()
    );
    assert!(
        node.log_text().contains("invalid peer certificate"),
        "{}",
        node.log_text()
    );
    assert_eq!(numsub(redis, "/local"), "0");
    let mut x = node.client("/local");
    let mut y = node.client("/local");
    wait_for_members(&node, 2);
    x.send(Message::text("local only")).unwrap();
    assert_eq!(next_text(&mut y), "local only");
}

#[test]
fn a_node_given_the_wrong_ca_never_comes_up() {
    let Some(pki) = TestPki::new() else { return };
    let Some(redis) = RedisServer::start_tls(&pki, &pki.server_cert, &pki.server_key) else {
        return;
    };
    never_comes_up(&redis, &redis.url(), &pki.other_ca);
}

#[test]
fn a_certificate_for_another_name_is_refused() {
    let Some(pki) = TestPki::new() else { return };
    let Some(redis) = RedisServer::start_tls(&pki, &pki.wrong_name_cert, &pki.wrong_name_key)
    else {
        return;
    };
    never_comes_up(&redis, &redis.url(), &pki.ca);
}

/// Runs the binary with `args` after the usual `--bind`/`--port`, and `$SSL_CERT_FILE` set
/// when given, to its exit within the test timeout (killed and failed if it keeps running):
/// its exit code and stderr.
fn exits(args: &[&str], ssl_cert_file: Option<&Path>) -> (i32, String) {
    let mut command = daemon_command(args);
    if let Some(file) = ssl_cert_file {
        command.env("SSL_CERT_FILE", file);
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wschat");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for wschat") {
            break status;
        }
        if started.elapsed() > timeout() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("wschat {args:?} kept running instead of refusing to start");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr).expect("read stderr");
    }
    (status.code().unwrap_or(-1), stderr)
}

#[test]
fn an_unusable_ca_is_one_line_and_exit_1_at_start() {
    let Some(pki) = TestPki::new() else { return };
    let empty = pki.dir.join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let missing = pki.dir.join("missing.pem");
    let (empty, missing) = (empty.to_string_lossy(), missing.to_string_lossy());
    // A port nothing listens on: the start must fail before any connect.
    let url = "rediss://127.0.0.1:1";
    for (args, says) in [
        (
            vec!["--redis", url, "--redis-ca", &missing],
            "cannot read CA file",
        ),
        (
            vec!["--redis", url, "--redis-ca", &empty],
            "no CA certificate",
        ),
    ] {
        let (code, stderr) = exits(&args, None);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    // Without --redis-ca the system bundle is read, $SSL_CERT_FILE first.
    let (code, stderr) = exits(&["--redis", url], Some(Path::new(&*missing)));
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("missing.pem"), "{stderr}");
    // A CA for a link without TLS is a usage error.
    let ca = pki.ca.to_string_lossy();
    let (code, stderr) = exits(&["--redis", "redis://127.0.0.1:1", "--redis-ca", &ca], None);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("rediss://"), "{stderr}");
}
