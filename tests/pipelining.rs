//! Requests must not vanish on a kept-alive connection: pipelined requests are
//! served in order, and an answer after which the gateway closes says so.

mod common;

use common::*;
use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn connect(gw: &Gateway) -> TcpStream {
    let stream = TcpStream::connect(gw.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
}

fn get_line(path: &str, version: &str, extra: &str) -> String {
    format!("GET {path} HTTP/{version}\r\nhost: gw\r\nx-api-key: {KEY}\r\n{extra}\r\n")
}

#[test]
fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let backend = Backend::echo();
    let gw = Gateway::start(&one_route_config(&[backend.addr], "", ""));
    let mut stream = connect(&gw);
    // Three requests in one write, the second with a body, then a fourth later.
    let post = format!(
        "POST /two HTTP/1.1\r\nhost: gw\r\nx-api-key: {KEY}\r\ncontent-length: 5\r\n\r\nhello"
    );
    let burst = [
        get_line("/one", "1.1", ""),
        post,
        get_line("/three", "1.1", ""),
    ]
    .concat();
    stream.write_all(burst.as_bytes()).expect("write");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut ids = Vec::new();
    for path in ["/one", "/two", "/three"] {
        let resp = read_response(&mut reader, false).expect("an answer");
        assert_eq!(resp.status, 200, "{path}: {resp:?}");
        assert_eq!(resp.json()["target"], path, "answers in request order");
        assert_ne!(resp.header("connection"), Some("close"), "{resp:?}");
        ids.push(resp.header("x-request-id").expect("id").to_string());
    }
    assert_eq!(backend.requests()[1].body, b"hello");
    stream
        .write_all(get_line("/four", "1.1", "").as_bytes())
        .expect("write");
    let resp = read_response(&mut reader, false).expect("an answer");
    assert_eq!(resp.json()["target"], "/four");
    // Each request was logged and counted as a request of its own.
    let logged = gw.access_log();
    for id in &ids {
        assert!(
            logged.iter().any(|l| l["request_id"] == id.as_str()),
            "{id} not logged"
        );
    }
}

#[test]
fn pipelined_http10_keep_alive_requests_are_all_answered() {
    let backend = Backend::echo();
    let gw = Gateway::start(&one_route_config(&[backend.addr], "", ""));
    let mut stream = connect(&gw);
    let keep = "connection: keep-alive\r\n";
    let burst = [get_line("/a", "1.0", keep), get_line("/b", "1.0", keep)].concat();
    stream.write_all(burst.as_bytes()).expect("write");
    let mut reader = BufReader::new(stream);
    for path in ["/a", "/b"] {
        let resp = read_response(&mut reader, false).expect("an answer");
        assert_eq!(resp.status, 200, "{path}: {resp:?}");
        assert_eq!(resp.json()["target"], path);
    }
}

#[test]
fn a_502_or_504_says_the_connection_closes_and_it_does() {
    let dead = free_port();
    let slow = Backend::start(|_| Answer::json(200, "{}").after(Duration::from_secs(3)));
    let config = format!(
        "{}upstreams:\n  dead:\n    peers: [\"127.0.0.1:{dead}\"]\n  slow:\n    peers: [\"{}\"]\n\
         routes:\n  - {{ name: dead, path: /dead, upstream: dead }}\n\
         \x20 - {{ name: slow, path: /slow, upstream: slow, timeout: 300ms }}\n",
        config_head(),
        slow.addr
    );
    let gw = Gateway::start(&config);
    for (path, status) in [("/dead", 502), ("/slow", 504)] {
        let mut stream = connect(&gw);
        stream
            .write_all(get_line(path, "1.1", "").as_bytes())
            .expect("write");
        let mut reader = BufReader::new(stream);
        let resp = read_response(&mut reader, false).expect("an answer");
        assert_eq!(resp.status, status, "{resp:?}");
        assert_eq!(resp.header("connection"), Some("close"), "{path}: {resp:?}");
        let mut rest = Vec::new();
        let closed = reader.read_to_end(&mut rest);
        assert!(
            matches!(closed, Ok(0)) || closed.is_err(),
            "{path}: the connection stays open after saying close"
        );
    }
}
