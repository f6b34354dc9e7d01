//! Request ids, forwarded headers, hop-by-hop headers.

use crate::support::*;

#[test]
fn request_id_kept_generated_and_sent_upstream() {
    let (_b, gw) = one_backend_gateway("");
    let r = gw.send(
        "GET /x HTTP/1.1\r\nHost: t\r\nX-Request-Id: client-id_1.2:3\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.header("x-request-id"), Some("client-id_1.2:3"));
    assert_eq!(r.json()["headers"]["x-request-id"], "client-id_1.2:3");

    let r = gw.get("/x");
    let id = r.header("x-request-id").expect("generated id").to_string();
    assert_eq!(id.len(), 20);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(r.json()["headers"]["x-request-id"], id.as_str());

    for bad in ["has space", "x\"y", &"a".repeat(200)] {
        let r = gw.send(&format!(
            "GET /x HTTP/1.1\r\nHost: t\r\nX-Request-Id: {bad}\r\nConnection: close\r\n\r\n"
        ));
        let id = r.header("x-request-id").unwrap();
        assert_ne!(id, bad);
        assert_eq!(id.len(), 20, "a fresh id replaces {bad:?}");
        assert_eq!(r.json()["headers"]["x-request-id"], id);
    }
    let ids: std::collections::HashSet<String> = (0..50)
        .map(|_| gw.get("/x").header("x-request-id").unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 50);
}

#[test]
fn forwarded_headers() {
    let (_b, gw) = one_backend_gateway("");
    let r = gw.send("GET /x HTTP/1.1\r\nHost: shop.example.com:8080\r\nX-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n");
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(
        h["x-forwarded-proto"], "http",
        "the client's claim is overwritten"
    );
    assert_eq!(h["x-forwarded-host"], "shop.example.com:8080");
    assert_eq!(h["host"], "shop.example.com:8080");

    let h = gw.get("/x").json()["headers"].clone();
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
}

#[test]
fn hop_by_hop_headers_are_not_forwarded() {
    let (_b, gw) = one_backend_gateway("");
    let r = gw.send(
        "GET /x HTTP/1.1\r\nHost: t\r\nConnection: close, X-Drop-Me\r\nX-Drop-Me: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nUpgrade: h2c\r\nX-Keep-Me: 1\r\n\r\n",
    );
    let h = &r.json()["headers"];
    for gone in [
        "x-drop-me",
        "keep-alive",
        "te",
        "proxy-authorization",
        "upgrade",
    ] {
        assert!(h.get(gone).is_none(), "{gone} reached the backend: {h}");
    }
    assert_eq!(h["x-keep-me"], "1");
    assert_ne!(h["connection"], "close, X-Drop-Me");
}
