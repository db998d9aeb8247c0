//! What an upstream answers to a request without a body reaches the client as
//! it was sent, and each connection is reused only when its exchange ended
//! cleanly: chunked and large bodies, HEAD, an upstream that dies mid-body, and a
//! client that goes away while the upstream is still thinking. (Such requests
//! skip Pingora's body pipe, vendor/patches/0006; these pin what must not change.)

mod common;

use common::*;
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A backend that answers each request head with the bytes `answer` gives for
/// (the request line, how many requests came before on this connection), and
/// closes the connection after them when `answer` says so. Counts connections.
struct Scripted {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

type Script = dyn Fn(&str, usize) -> (Vec<u8>, bool) + Send + Sync;

impl Scripted {
    fn start(answer: impl Fn(&str, usize) -> (Vec<u8>, bool) + Send + Sync + 'static) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let answer: Arc<Script> = Arc::new(answer);
        let counted = connections.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                counted.fetch_add(1, Ordering::SeqCst);
                let answer = answer.clone();
                std::thread::spawn(move || serve(stream, &*answer));
            }
        });
        Scripted { addr, connections }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

fn serve(stream: TcpStream, answer: &Script) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    for before in 0.. {
        // Requests without a body: the head is all there is.
        let Some((line, _)) = read_head(&mut reader) else {
            return;
        };
        let (bytes, close) = answer(&line, before);
        if writer.write_all(&bytes).is_err() || close {
            return;
        }
    }
}

/// A gateway with one route `/` to `backend`, no auth, one worker thread (so a
/// connection back in the pool is the one the next request picks).
fn gateway_to(backend: SocketAddr) -> Gateway {
    let config = one_route_config(&[backend], "", "auth: none").replace("threads: 2", "threads: 1");
    Gateway::start(&config)
}

/// A keep-alive client connection to the gateway.
fn connect(gw: &Gateway) -> (TcpStream, BufReader<TcpStream>) {
    let stream = TcpStream::connect(gw.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let reader = BufReader::new(stream.try_clone().expect("clone"));
    (stream, reader)
}

/// A body of `len` bytes that shows where a byte went missing.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

fn chunked(chunks: &[&[u8]]) -> Vec<u8> {
    let mut out =
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec();
    for chunk in chunks {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[test]
fn a_chunked_answer_arrives_whole_and_both_connections_are_kept() {
    let big = pattern(300 * 1024);
    let body: Vec<u8> = [b"first,".as_slice(), &big, b",last"].concat();
    let backend = {
        let big = big.clone();
        Scripted::start(move |_, _| (chunked(&[b"first,", &big, b",last"]), false))
    };
    let gw = gateway_to(backend.addr);
    let (mut client, mut reader) = connect(&gw);
    for i in 0..3 {
        client
            .write_all(b"GET /stream HTTP/1.1\r\nhost: a\r\n\r\n")
            .expect("send");
        let resp = read_response(&mut reader, false).expect("an answer on the same connection");
        assert_eq!(resp.status, 200, "request {i}");
        assert_eq!(resp.body.len(), body.len(), "request {i}");
        assert!(resp.body == body, "request {i}: the body arrived changed");
        assert_ne!(resp.header("connection"), Some("close"), "request {i}");
        // The upstream connection goes back to the pool just after the answer.
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        backend.connections(),
        1,
        "a fully read answer leaves its upstream connection reusable"
    );
}

#[test]
fn a_head_request_gets_the_head_only_and_the_connections_are_kept() {
    let backend = Backend::start(|_| Answer::json(200, "{\"a\":1}"));
    let gw = gateway_to(backend.addr);
    let (mut client, mut reader) = connect(&gw);
    for i in 0..3 {
        client
            .write_all(b"HEAD / HTTP/1.1\r\nhost: a\r\n\r\n")
            .expect("send");
        let (line, headers) = read_head(&mut reader).expect("a head");
        assert!(line.starts_with("HTTP/1.1 200"), "request {i}: {line}");
        assert_eq!(headers.get("content-length").map(String::as_str), Some("7"));
        std::thread::sleep(Duration::from_millis(50));
    }
    // No body bytes came after the heads: the next answer starts right away.
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .expect("send");
    let resp = read_response(&mut reader, false).expect("an answer");
    assert_eq!((resp.status, resp.text().as_str()), (200, "{\"a\":1}"));
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
    assert_eq!(backend.requests().len(), 4);
}

#[test]
fn an_upstream_that_dies_mid_body_truncates_the_answer_and_is_not_reused() {
    let full = 200_000;
    let backend = Scripted::start(move |line, _| {
        if line.starts_with("GET /dies") {
            let mut out = format!("HTTP/1.1 200 OK\r\ncontent-length: {full}\r\n\r\n").into_bytes();
            out.extend_from_slice(&pattern(full / 2));
            (out, true)
        } else {
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
                false,
            )
        }
    });
    let gw = gateway_to(backend.addr);

    let (mut client, mut reader) = connect(&gw);
    client
        .write_all(b"GET /dies HTTP/1.1\r\nhost: a\r\n\r\n")
        .expect("send");
    let (line, headers) = read_head(&mut reader).expect("the upstream's head");
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    assert_eq!(
        headers.get("content-length").map(String::as_str),
        Some("200000")
    );
    // The gateway closes the client connection once the upstream is gone: the
    // client sees fewer bytes than announced, never a made-up end.
    let mut got = Vec::new();
    reader.read_to_end(&mut got).expect("read until the close");
    assert!(
        got.len() < full,
        "{} bytes of {full} and then a close",
        got.len()
    );
    assert!(
        got == pattern(full)[..got.len()],
        "the bytes that came are the upstream's"
    );

    // The next request is answered, on a new upstream connection.
    let resp = gw.get("/after", &[]);
    assert_eq!((resp.status, resp.text().as_str()), (200, "ok"));
    assert_eq!(backend.connections(), 2);
    let line = gw
        .access_log()
        .into_iter()
        .find(|l| l["path"] == "/dies")
        .expect("the broken request is logged");
    assert_eq!(line["status"], 200, "{line}");
    assert!(!line["error"].is_null(), "the failure is logged: {line}");
}

#[test]
fn a_client_that_goes_away_is_noticed_before_the_upstream_answers() {
    let backend = Backend::start(|r| {
        let answer = Answer::json(200, "{}");
        if r.target == "/slow" {
            answer.after(Duration::from_secs(3))
        } else {
            answer
        }
    });
    let gw = gateway_to(backend.addr);
    let (mut client, reader) = connect(&gw);
    client
        .write_all(b"GET /slow HTTP/1.1\r\nhost: a\r\n\r\n")
        .expect("send");
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend.requests().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the request never reached the backend"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(client);
    drop(reader);
    let gone = Instant::now();

    // The gateway watches the client while it waits for the upstream: the
    // request ends (logged as 499, nginx's "client closed request") well before
    // the backend's answer at 3 s.
    let logged = loop {
        let line = gw
            .stdout()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["path"] == "/slow");
        if let Some(line) = line {
            break line;
        }
        assert!(
            gone.elapsed() < Duration::from_millis(2500),
            "no log line for the abandoned request"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        gone.elapsed() < Duration::from_millis(2500),
        "logged only after {:?}",
        gone.elapsed()
    );
    assert_eq!(logged["status"], 499, "{logged}");

    // The abandoned upstream connection is not handed to the next request.
    let resp = gw.get("/fast", &[]);
    assert_eq!(resp.status, 200);
    assert_eq!(backend.connections.load(Ordering::SeqCst), 2);
}
