//! The HTTP head parser and router on arbitrary bytes: never panic, and keep the contracts the
//! loop relies on (a complete head lies inside the buffer and under the size limit, a partial
//! one is under it, every error maps to a client-error status).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wschat::config::{MAX_HEAD_SIZE, MAX_ROOM_NAME};
use wschat::http::{self, Head, Route};
use wschat::protocol_v1;

fuzz_target!(|data: &[u8]| {
    match http::parse_head(data) {
        Ok(Head::Partial) => assert!(data.len() < MAX_HEAD_SIZE, "partial head over the limit"),
        Ok(Head::Complete(request, len)) => {
            assert!(
                len <= data.len() && len <= MAX_HEAD_SIZE,
                "head length {len}"
            );
            assert!(request.path.starts_with('/'));
            if let (Some(origin), Some(host)) = (&request.origin, &request.host) {
                let _ = http::origin_matches_host(origin, host);
            }
            if let Some(upgrade) = &request.upgrade {
                let response = http::switching_protocols(&upgrade.key, None, None);
                assert!(response.starts_with(b"HTTP/1.1 101 "));
            }
            // The wschat.v1 parameters come from the same head: refused or parsed, no panic.
            let _ = protocol_v1::offered(request.protocols.as_deref());
            if let Some(query) = &request.query {
                if let Ok(params) = protocol_v1::parse_query(query) {
                    if let Some(name) = &params.name {
                        assert!(protocol_v1::validate_name(name).is_ok(), "a parsed name is valid");
                    }
                }
            }
            for is_asset in [false, true] {
                match http::route(&request, |path| is_asset && path.ends_with(".js")) {
                    Ok(Route::WebSocket { room, .. }) => {
                        assert!(room.starts_with('/') && room.len() <= MAX_ROOM_NAME);
                        assert!(room == "/" || !room.ends_with('/'));
                    }
                    Ok(_) => {}
                    Err(error) => check_error(error),
                }
            }
        }
        Err(error) => check_error(error),
    }
});

fn check_error(error: http::HttpError) {
    let code = error.status().code();
    assert!((400..600).contains(&code), "error status {code}");
    let body = format!("{error}\n");
    let (response, _) = http::Response::text(error.status(), &body, &[]).into_wire(http::Method::Get, false);
    assert!(response.starts_with(b"HTTP/1.1 "));
}
