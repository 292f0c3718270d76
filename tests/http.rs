//! Plain HTTP on the WebSocket port: the page, its files, /healthz, and every error status.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;

#[test]
fn the_page_is_served_for_the_root_and_any_room_path() {
    let server = start_default();
    for path in ["/", "/lobby", "/team/dev/", "/lobby?x=1"] {
        let reply = server.get(path);
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(
            reply.header("content-type").as_deref(),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(
            reply
                .header("content-length")
                .unwrap()
                .parse::<usize>()
                .unwrap(),
            reply.body.len()
        );
        assert!(reply.body_text().contains("<html"), "{path}");
        assert_eq!(reply.header("cache-control").as_deref(), Some("no-cache"));
        assert!(reply.header("etag").is_some());
    }
}

#[test]
fn the_page_files_have_their_content_types() {
    let server = start_default();
    let js = server.get("/chat.js");
    assert_eq!(js.status, 200);
    assert_eq!(
        js.header("content-type").as_deref(),
        Some("text/javascript; charset=utf-8")
    );
    assert!(js.body_text().contains("WebSocket"));
    let css = server.get("/chat.css");
    assert_eq!(
        css.header("content-type").as_deref(),
        Some("text/css; charset=utf-8")
    );
    let index = server.get("/index.html");
    assert_eq!(index.status, 200);
}

#[test]
fn a_current_etag_gets_304_without_a_body() {
    let server = start_default();
    let etag = server.get("/chat.js").header("etag").unwrap();
    let reply = server.http(&format!(
        "GET /chat.js HTTP/1.1\r\nHost: x\r\nIf-None-Match: {etag}\r\nConnection: close\r\n\r\n"
    ));
    assert_eq!(reply.status, 304);
    assert!(reply.body.is_empty());
}

#[test]
fn head_answers_headers_only() {
    let server = start_default();
    let (mut stream, head) =
        server.raw_request(b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(length > 100, "HEAD reports the GET body's length");
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut stream, &mut rest).unwrap();
    assert!(rest.is_empty(), "no body after a HEAD response");
}

#[test]
fn error_statuses() {
    let server = start_default();
    let cases: &[(&str, u16)] = &[
        ("GET /missing.png HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            405,
        ),
        ("DELETE /lobby HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        ("GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        ("GET / HTTP/1.1\r\n\r\n", 400),
        ("NOT HTTP AT ALL\r\n\r\n", 400),
        (
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            400,
        ),
        (
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
            426,
        ),
        (
            "GET /metrics HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            404,
        ),
    ];
    for (request, status) in cases {
        let reply = server.http(request);
        assert_eq!(reply.status, *status, "{request:?}");
        assert!(!reply.body.is_empty(), "a short body says why");
        assert_eq!(reply.header("connection").as_deref(), Some("close"));
    }
    let reply = server.http("POST / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(reply.header("allow").as_deref(), Some("GET, HEAD"));
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let server = start_default();
    let mut stream = server.raw();
    // Two requests pipelined in one write, a third after the answers.
    stream
        .write_all(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /chat.css HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .unwrap();
    let first = read_reply(&mut stream);
    assert_eq!((first.status, first.body_text().as_str()), (200, "ok\n"));
    assert_eq!(first.header("connection").as_deref(), Some("keep-alive"));
    let second = read_reply(&mut stream);
    assert_eq!(second.status, 200, "{}", second.head);
    assert_eq!(
        second.header("content-type").as_deref(),
        Some("text/css; charset=utf-8")
    );
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let third = read_reply(&mut stream);
    assert_eq!(third.status, 200);
    assert_eq!(third.header("connection").as_deref(), Some("close"));
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut stream, &mut rest)
        .expect("the server closes after Connection: close");
    assert!(rest.is_empty());
}

#[test]
fn http_1_0_closes_after_the_response() {
    let server = start_default();
    let reply = server.http("GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("connection").as_deref(), Some("close"));
}

#[test]
fn a_request_split_into_many_tiny_writes_is_understood() {
    let server = start_default();
    let mut stream = server.raw();
    stream.set_nodelay(true).unwrap();
    let request = upgrade_request("/tiny");
    for byte in request.as_bytes() {
        stream.write_all(&[*byte]).unwrap();
        std::thread::sleep(Duration::from_micros(200));
    }
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
}

#[test]
fn the_first_frame_in_the_same_packet_as_the_upgrade_is_relayed() {
    let server = start_default();
    let mut listener = server.client("/same-packet");
    wait_for_members(&server, 1);
    let mut bytes = upgrade_request("/same-packet").into_bytes();
    bytes.extend(frame(0x81, b"early bird", true));
    bytes.extend(frame(0x82, &[1, 2, 3], true));
    let (_stream, head) = server.raw_request(&bytes);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(next_text(&mut listener), "early bird");
    assert_eq!(
        next_message(&mut listener),
        tungstenite::Message::binary(vec![1u8, 2, 3])
    );
}

#[test]
fn a_static_dir_is_served_and_cannot_be_escaped() {
    let dir = std::env::temp_dir().join(format!("wschat-static-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("img")).unwrap();
    std::fs::write(dir.join("index.html"), "<html>custom page</html>").unwrap();
    std::fs::write(dir.join("img/logo.svg"), "<svg/>").unwrap();
    let secret = dir
        .parent()
        .unwrap()
        .join(format!("wschat-secret-{}.txt", std::process::id()));
    std::fs::write(&secret, "secret").unwrap();
    let server = start(Config {
        page: wschat::config::PageSource::Dir(dir.clone()),
        ..config()
    });
    assert_eq!(server.get("/lobby").body_text(), "<html>custom page</html>");
    let logo = server.get("/img/logo.svg");
    assert_eq!(logo.status, 200);
    assert_eq!(
        logo.header("content-type").as_deref(),
        Some("image/svg+xml")
    );
    let secret_name = secret.file_name().unwrap().to_str().unwrap();
    for escape in [
        format!("/../{secret_name}"),
        format!("/img/../../{secret_name}"),
        format!("/%2e%2e/{secret_name}"),
        "/..%2f..%2fetc%2fpasswd".to_string(),
    ] {
        let reply = server.get(&escape);
        assert!(
            !reply.body_text().contains("secret"),
            "{escape} escaped the folder"
        );
        assert_ne!(reply.status, 200, "{escape}");
    }
    drop(server);
    let _ = std::fs::remove_file(secret);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_client_that_pipelines_without_reading_does_not_make_the_loop_spin() {
    let server = start_default();
    let mut greedy = server.raw();
    // Far more responses than the socket buffers hold, and never a read.
    let request = "GET /chat.js HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2000);
    greedy.set_nonblocking(true).unwrap();
    let _ = greedy.write(request.as_bytes());
    // Once the socket buffers are full (later on a slow target) the loop goes quiet: each
    // scrape is a few passes. A spinning loop makes tens of thousands, and never stops.
    let mut before = server.metric("wschat_loop_iterations_total");
    eventually("half a second with under 50 passes", || {
        std::thread::sleep(Duration::from_millis(500));
        let after = server.metric("wschat_loop_iterations_total");
        let passes = after - before;
        before = after;
        passes < 50.0
    });
    // Others are still served.
    assert_eq!(server.get("/healthz").status, 200);
}

/// Review bug 5: a client that pipelines requests without reading held about 100 KB of server
/// memory (a head's worth plus a whole 64 KiB read). Now it holds at most one head and one
/// response; the rest waits in the kernel, where TCP pushes back on the client.
#[test]
fn pipelining_clients_that_never_read_hold_at_most_a_head_each() {
    let server = daemon(&["--no-systemd"]);
    let idle_kib = server.status_kib("VmRSS");
    let request = "GET /chat.js HTTP/1.1\r\nHost: x\r\n\r\n".repeat(3000); // ~100 KB
    let clients = 300;
    let mut sockets = Vec::new();
    for _ in 0..clients {
        let mut socket = server.addr.raw();
        socket.set_nonblocking(true).unwrap();
        let _ = socket.write(request.as_bytes());
        sockets.push(socket);
    }
    // The server reads what fits its budget, answers until the clients' buffers are full,
    // then stops; wait until its memory has settled.
    let mut last = 0;
    eventually("the server's memory to settle", || {
        std::thread::sleep(scaled(Duration::from_millis(500)));
        let now = server.status_kib("VmRSS");
        let settled = now.abs_diff(last) < 256;
        last = now;
        settled
    });
    let per_client = last.saturating_sub(idle_kib) * 1024 / clients;
    assert!(
        per_client < 40 * 1024,
        "{per_client} bytes held per pipelining client (idle {idle_kib} KiB, now {last} KiB)"
    );
    // Others are still served.
    assert_eq!(server.addr.get("/healthz").status, 200);
    drop(sockets);
}

#[test]
fn responses_carry_a_date_and_head_errors_carry_no_body() {
    let server = start_default();
    let page = server.get("/");
    assert!(page.header("date").is_some_and(|d| d.ends_with(" GMT")));
    let (mut stream, head) = server.raw_request(b"HEAD /missing.png HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut stream, &mut rest).unwrap();
    assert!(rest.is_empty(), "no body after a HEAD response: {rest:?}");
}

#[test]
fn a_426_names_the_protocol_and_a_get_with_a_body_is_refused() {
    let server = start_default();
    let old_version = server.http(
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
    );
    assert_eq!(old_version.status, 426);
    assert_eq!(old_version.header("upgrade").as_deref(), Some("websocket"));
    assert_eq!(
        old_version.header("sec-websocket-version").as_deref(),
        Some("13")
    );
    // A body would be read as the next request: smuggling past a proxy.
    let smuggler = server.http(
        "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 41\r\n\r\n\
         GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(smuggler.status, 400);
    assert!(!smuggler.body_text().contains("wschat_"));
}

#[test]
fn an_upgrade_sent_with_the_clients_fin_leaves_no_member_behind() {
    let server = start_default();
    let mut stream = server.raw();
    stream
        .write_all(upgrade_request("/gone").as_bytes())
        .unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    eventually("the member to be gone", || {
        server.metric("wschat_websockets_open") == 0.0
    });
}

#[test]
fn config_json_tells_the_page_the_servers_echo_and_message_limit() {
    let server = start_default();
    let reply = server.get("/config.json");
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(reply.header("cache-control").as_deref(), Some("no-store"));
    assert_eq!(
        reply.body_text(),
        r#"{"echo":false,"maxMessageSize":65536}"#
    );
    drop(server);

    let server = start(Config {
        echo: true,
        max_message_size: 3000,
        ..config()
    });
    let reply = server.get("/config.json");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body_text(), r#"{"echo":true,"maxMessageSize":3000}"#);
    // HEAD: the same headers, no body.
    let mut stream = server.raw();
    stream
        .write_all(b"HEAD /config.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("Content-Type: application/json\r\n"),
        "{head}"
    );
    assert!(
        head.contains(&format!("Content-Length: {}\r\n", reply.body.len())),
        "{head}"
    );
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut stream, &mut rest).unwrap();
    assert!(rest.is_empty(), "no body after a HEAD response: {rest:?}");
}
