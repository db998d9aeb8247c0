//! Request smuggling and malformed HTTP/1, over raw sockets against the real
//! binary. Every case carries a second, smuggled request behind the first; the
//! backend's record says whether it ever got through.

mod common;

use common::*;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// `/public` needs no key; `/private` does. Both go to one recording backend.
fn two_route_gateway(extra: &str) -> (Gateway, Backend) {
    let backend = Backend::echo();
    let config = format!(
        "{head}{extra}upstreams:\n  u:\n    peers: [\"{peer}\"]\n    headers: {{ x-gateway-secret: \"{SECRET}\" }}\n\
         routes:\n  - {{ name: public, path: /public, upstream: u, auth: none }}\n\
         \x20 - {{ name: private, path: /private, upstream: u }}\n",
        head = config_head(),
        peer = backend.addr,
    );
    (Gateway::start(&config), backend)
}

/// Every response the gateway sends on one connection for `bytes`, until it
/// closes the connection or goes quiet; and whether it closed.
fn conversation(addr: SocketAddr, bytes: &[u8]) -> (Vec<Response>, bool) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .expect("timeout");
    stream.write_all(bytes).expect("write");
    let mut reader = BufReader::new(stream);
    let mut responses = Vec::new();
    loop {
        let Some((line, headers)) = read_head(&mut reader) else {
            // EOF (sticky) or a reset means closed; a timeout means still open.
            let mut probe = [0u8; 1];
            let closed = match std::io::Read::read(&mut reader, &mut probe) {
                Ok(n) => n == 0,
                Err(e) => !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
            };
            return (responses, closed);
        };
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        let body = read_body(&mut reader, &headers, false).expect("body");
        responses.push(Response {
            status,
            headers,
            body,
        });
    }
}

const SMUGGLED: &str = "GET /private/smuggled HTTP/1.1\r\nhost: a\r\n\r\n";

/// The cases a front door must refuse: (name, request bytes).
fn refused_cases() -> Vec<(&'static str, String)> {
    let post = |headers: &str, body: &str| {
        format!("POST /public/x HTTP/1.1\r\nhost: a\r\n{headers}\r\n{body}{SMUGGLED}")
    };
    vec![
        (
            "CL then TE",
            post("content-length: 5\r\ntransfer-encoding: chunked\r\n", "0\r\n\r\n"),
        ),
        (
            "TE then CL",
            post("transfer-encoding: chunked\r\ncontent-length: 5\r\n", "0\r\n\r\n"),
        ),
        (
            "two different content-lengths",
            post("content-length: 5\r\ncontent-length: 49\r\n", "hello"),
        ),
        ("content-length list", post("content-length: 5, 49\r\n", "hello")),
        ("signed content-length", post("content-length: +5\r\n", "hello")),
        (
            "xchunked",
            post("transfer-encoding: xchunked\r\n", "0\r\n\r\n"),
        ),
        (
            "chunked, identity",
            post("transfer-encoding: chunked, identity\r\n", "0\r\n\r\n"),
        ),
        (
            "identity",
            post("transfer-encoding: identity\r\n", "0\r\n\r\n"),
        ),
        (
            "TE twice",
            post(
                "transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
        ),
        (
            "TE with a space before the colon",
            post("transfer-encoding : chunked\r\n", "0\r\n\r\n"),
        ),
        (
            "TE folded onto a second line",
            post("transfer-encoding:\r\n chunked\r\n", "0\r\n\r\n"),
        ),
        (
            "TE in HTTP/1.0",
            format!("POST /public/x HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "bare LF line ends",
            format!("GET /public/x HTTP/1.1\nhost: a\n\n{SMUGGLED}"),
        ),
        (
            "CR injected in a header value",
            format!("GET /public/x HTTP/1.1\r\nhost: a\r\nx-note: a\rx-api-key: stolen\r\n\r\n{SMUGGLED}"),
        ),
        (
            "NUL in a header value",
            format!("GET /public/x HTTP/1.1\r\nhost: a\r\nx-note: a\0b\r\n\r\n{SMUGGLED}"),
        ),
        (
            "two hosts",
            format!("GET /public/x HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n{SMUGGLED}"),
        ),
        (
            "HTTP/1.1 without host",
            format!("GET /public/x HTTP/1.1\r\n\r\n{SMUGGLED}"),
        ),
        (
            "absolute-form to another host",
            format!("GET http://b/public/x HTTP/1.1\r\nhost: a\r\n\r\n{SMUGGLED}"),
        ),
        ("garbage request line", format!("HELLO\r\n\r\n{SMUGGLED}")),
        (
            "HTTP/2 preface on cleartext",
            format!("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n{SMUGGLED}"),
        ),
        (
            "dot-dot out of the public prefix",
            format!("GET /public/../private/x HTTP/1.1\r\nhost: a\r\n\r\n{SMUGGLED}"),
        ),
        (
            "encoded slash dot-dot",
            format!("GET /public/..%2Fprivate/x HTTP/1.1\r\nhost: a\r\n\r\n{SMUGGLED}"),
        ),
        (
            "encoded dots",
            format!("GET /public/%2e%2e/private/x HTTP/1.1\r\nhost: a\r\n\r\n{SMUGGLED}"),
        ),
        (
            "backslash dot-dot",
            format!("GET /public/..%5Cprivate/x HTTP/1.1\r\nhost: a\r\n\r\n{SMUGGLED}"),
        ),
        (
            "absolute-form dot-dot",
            format!("GET http://a/public/../private/x HTTP/1.1\r\nhost: a\r\n\r\n{SMUGGLED}"),
        ),
        (
            "NUL in the path",
            format!("GET /public/x%00.json HTTP/1.1\r\nhost: a\r\n\r\n{SMUGGLED}"),
        ),
    ]
}

#[test]
fn ambiguous_and_malformed_requests_are_refused_with_json_and_closed() {
    let (gw, backend) = two_route_gateway("");
    let cases = refused_cases();
    for (name, raw) in &cases {
        let (responses, closed) = conversation(gw.addr, raw.as_bytes());
        assert_eq!(responses.len(), 1, "{name}: one answer, then nothing");
        let resp = &responses[0];
        assert_eq!(
            (resp.status, resp.error_code().as_str()),
            (400, "bad_request"),
            "{name}"
        );
        assert_eq!(resp.header("connection"), Some("close"), "{name}");
        assert!(resp.header("x-request-id").is_some(), "{name}");
        assert!(closed, "{name}: the connection is closed after the 400");
    }
    std::thread::sleep(Duration::from_millis(200));
    let reached: Vec<String> = backend
        .requests()
        .iter()
        .map(|r| r.target.clone())
        .collect();
    assert!(
        reached.is_empty(),
        "nothing reached the backend: {reached:?}"
    );

    // Each refusal is one access-log line and one request counted as route="none".
    let log = gw.access_log();
    let refused: Vec<_> = log.iter().filter(|l| l["error"] == "bad_request").collect();
    assert_eq!(refused.len(), cases.len(), "{log:?}");
    assert!(refused
        .iter()
        .all(|l| l["route"] == "none" && l["status"] == 400));
    let counted: f64 = ["GET", "POST", "OTHER"]
        .iter()
        .map(|m| {
            gw.metric(&format!(
                "portcullis_requests_total{{method=\"{m}\",route=\"none\",status=\"400\"}}"
            ))
        })
        .sum();
    assert_eq!(counted as usize, cases.len());
}

#[test]
fn oversized_heads_get_431() {
    let (gw, backend) = two_route_gateway("limits: { max_header_bytes: 2KiB }\n");
    let fits = format!(
        "GET /public/x HTTP/1.1\r\nhost: a\r\nx-pad: {}\r\nconnection: close\r\n\r\n",
        "p".repeat(1500)
    );
    assert_eq!(
        send_raw(gw.addr, fits.as_bytes()).expect("answer").status,
        200
    );
    for (name, raw) in [
        (
            "one long header",
            format!(
                "GET /public/x HTTP/1.1\r\nhost: a\r\nx-pad: {}\r\n\r\n",
                "p".repeat(3000)
            ),
        ),
        (
            "a long path",
            format!(
                "GET /public/{} HTTP/1.1\r\nhost: a\r\n\r\n",
                "p".repeat(3000)
            ),
        ),
        (
            "many short headers",
            format!(
                "GET /public/x HTTP/1.1\r\nhost: a\r\n{}\r\n",
                "x: 1\r\n".repeat(300)
            ),
        ),
        (
            "a head that never ends",
            format!(
                "GET /public/x HTTP/1.1\r\nhost: a\r\nx-pad: {}",
                "p".repeat(8000)
            ),
        ),
    ] {
        let (responses, closed) = conversation(gw.addr, raw.as_bytes());
        assert_eq!(responses.len(), 1, "{name}");
        assert_eq!(
            (responses[0].status, responses[0].error_code().as_str()),
            (431, "headers_too_large"),
            "{name}"
        );
        assert!(closed, "{name}");
    }
    assert_eq!(
        backend.requests().len(),
        1,
        "only the head that fits got through"
    );
    // The default is 32 KiB: a 40 KiB header is refused without any limits section.
    let (gw, _backend) = two_route_gateway("");
    let big = format!(
        "GET /public/x HTTP/1.1\r\nhost: a\r\nx-pad: {}\r\n\r\n",
        "p".repeat(40 * 1024)
    );
    assert_eq!(
        send_raw(gw.addr, big.as_bytes()).expect("answer").status,
        431
    );
}

#[test]
fn bad_chunked_bodies_never_let_a_second_request_through() {
    let (gw, backend) = two_route_gateway("");
    for (name, body) in [
        ("chunk size not hex", "zz\r\nhello\r\n0\r\n\r\n"),
        ("negative chunk size", "-5\r\nhello\r\n0\r\n\r\n"),
        (
            "chunk size overflowing 64 bits",
            "fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        ),
        ("chunk longer than its size", "3\r\nhello\r\n0\r\n\r\n"),
    ] {
        let raw = format!(
            "POST /public/x HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n{body}{SMUGGLED}"
        );
        let (responses, _) = conversation(gw.addr, raw.as_bytes());
        assert!(responses.len() <= 1, "{name}: at most one answer");
        if let Some(resp) = responses.first() {
            assert_eq!(resp.status, 400, "{name}: {}", resp.text());
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let smuggled = backend
        .requests()
        .iter()
        .any(|r| r.target.contains("smuggled"));
    assert!(!smuggled, "no smuggled request reached the backend");
    // The gateway still serves.
    let ok = "GET /public/x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";
    assert_eq!(
        send_raw(gw.addr, ok.as_bytes()).expect("answer").status,
        200
    );
}

#[test]
fn well_formed_edge_cases_are_served_unchanged() {
    let (gw, backend) = two_route_gateway("");
    // Absolute-form, which RFC 9112 says a server must accept, reaches the
    // backend in origin-form; the key check still applies to /private.
    let raw = "GET http://a/public/x?q=1 HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";
    assert_eq!(
        send_raw(gw.addr, raw.as_bytes()).expect("answer").status,
        200
    );
    assert_eq!(backend.last().target, "/public/x?q=1");
    let raw = "GET http://a/private/x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";
    assert_eq!(
        send_raw(gw.addr, raw.as_bytes()).expect("answer").status,
        401
    );

    // A chunked body passes through whole; whitespace around `chunked` is not part
    // of the value (RFC 9110 §5.5) and is read the same by every layer.
    let raw = "POST /public/x HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked \r\nconnection: close\r\n\r\n5\r\nhello\r\n6; ext=1\r\n world\r\n0\r\n\r\n";
    assert_eq!(
        send_raw(gw.addr, raw.as_bytes()).expect("answer").status,
        200
    );
    assert_eq!(backend.last().body, b"hello world");

    // Identical repeated content-lengths are one length (RFC 9110 §8.6).
    let raw = "POST /public/x HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello";
    assert_eq!(
        send_raw(gw.addr, raw.as_bytes()).expect("answer").status,
        200
    );
    assert_eq!(backend.last().body, b"hello");

    // Encoded slashes and dots inside a segment are data, matched raw.
    for path in ["/public/a%2Fb", "/public/v1.2/x..y", "/public/%41"] {
        let raw = format!("GET {path} HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n");
        assert_eq!(
            send_raw(gw.addr, raw.as_bytes()).expect("answer").status,
            200,
            "{path}"
        );
        assert_eq!(backend.last().target, path);
    }

    // An empty line before the request line is ignored (RFC 9112 §2.2).
    let raw = "\r\nGET /public/x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";
    assert_eq!(
        send_raw(gw.addr, raw.as_bytes()).expect("answer").status,
        200
    );

    // Two requests in one write: the second is either served as its own request
    // through every check, or dropped with the connection; never glued to the first.
    let raw =
        "GET /public/one HTTP/1.1\r\nhost: a\r\n\r\nGET /private/two HTTP/1.1\r\nhost: a\r\n\r\n";
    let (responses, _) = conversation(gw.addr, raw.as_bytes());
    assert_eq!(responses[0].status, 200);
    if let Some(second) = responses.get(1) {
        assert_eq!(second.status, 401, "the second request has no key");
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(!backend
        .requests()
        .iter()
        .any(|r| r.target == "/private/two"));
}

#[test]
fn connect_gets_the_gateways_own_405_and_is_closed() {
    let (gw, backend) = two_route_gateway("");
    let raw =
        format!("CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n{SMUGGLED}");
    let (responses, closed) = conversation(gw.addr, raw.as_bytes());
    assert_eq!(responses.len(), 1, "one answer, then nothing");
    let resp = &responses[0];
    assert_eq!(
        (resp.status, resp.error_code().as_str()),
        (405, "method_not_allowed")
    );
    // No method is allowed at an authority: an empty `allow`, not Pingora's bare 405.
    assert_eq!(resp.header("allow"), Some(""));
    assert_eq!(resp.header("server"), None);
    assert!(closed, "what follows a CONNECT is never read as a request");
    std::thread::sleep(Duration::from_millis(200));
    assert!(backend.requests().is_empty(), "nothing reached the backend");
    let line = gw.access_log().pop().expect("logged");
    assert_eq!(
        (line["method"].as_str(), line["status"].as_u64()),
        (Some("CONNECT"), Some(405))
    );
}
