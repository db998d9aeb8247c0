//! `limits:` (SPEC §3) against the real binary: header-read and idle timeouts,
//! the connection cap, and 1,000 slow or idle clients beside normal traffic.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn gateway_with_limits(limits: &str) -> (Gateway, Backend) {
    let backend = Backend::echo();
    let config = one_route_config(&[backend.addr], "", "auth: none") + limits;
    (Gateway::start(&config), backend)
}

/// Waits until the gateway closes `stream` (EOF or reset); how long that took.
fn time_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let mut buf = [0u8; 4096];
    while started.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

const GET: &[u8] = b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n";

#[test]
fn a_head_dripped_slowly_is_cut_at_header_read_timeout_for_the_whole_head() {
    let (gw, backend) = gateway_with_limits("limits: { header_read_timeout: 1s }\n");
    let mut stream = TcpStream::connect(gw.addr).expect("connect");
    let started = Instant::now();
    stream
        .write_all(b"GET /x HTTP/1.1\r\nhost: a\r\n")
        .expect("write");
    // One byte every 100 ms: each read is quick, the head never completes.
    let mut closed_at = None;
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(100));
        if stream.write_all(b"x").is_err() {
            closed_at = Some(started.elapsed());
            break;
        }
        let mut probe = [0u8; 1];
        stream
            .set_read_timeout(Some(Duration::from_millis(1)))
            .expect("timeout");
        if matches!(stream.read(&mut probe), Ok(0)) {
            closed_at = Some(started.elapsed());
            break;
        }
    }
    let closed_at = closed_at.expect("the gateway closed the dripping connection");
    assert!(
        closed_at >= Duration::from_millis(900) && closed_at < Duration::from_millis(2500),
        "closed after {closed_at:?}"
    );
    // A connection that never sends anything is closed too.
    let mut silent = TcpStream::connect(gw.addr).expect("connect");
    let took = time_until_closed(&mut silent, Duration::from_secs(4)).expect("closed");
    assert!(took >= Duration::from_millis(800), "{took:?}");
    assert!(backend.requests().is_empty());
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_idle_timeout() {
    let (gw, backend) = gateway_with_limits("limits: { idle_timeout: 1s }\n");
    let mut stream = TcpStream::connect(gw.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    // Requests 500 ms apart keep the connection.
    let mut buf = [0u8; 4096];
    for _ in 0..3 {
        stream.write_all(GET).expect("write");
        let n = stream.read(&mut buf).expect("answer");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        std::thread::sleep(Duration::from_millis(500));
    }
    let took = time_until_closed(&mut stream, Duration::from_secs(4)).expect("closed");
    // 500 ms of idling already passed before the measurement started.
    assert!(took < Duration::from_millis(1500), "closed {took:?} later");
    let served = backend.requests();
    assert_eq!(served.len(), 3);
    assert_eq!(served[2].on_connection, 2, "one upstream connection reused");
}

#[test]
fn connections_beyond_max_connections_are_accepted_then_closed() {
    let (gw, _backend) = gateway_with_limits("limits: { max_connections: 5 }\n");
    let mut open: Vec<TcpStream> = (0..5)
        .map(|_| {
            let mut s = TcpStream::connect(gw.addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            s.write_all(GET).expect("write");
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).expect("answer");
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            s
        })
        .collect();
    let mut sixth = TcpStream::connect(gw.addr).expect("the kernel accepts it");
    let _ = sixth.write_all(GET);
    let took = time_until_closed(&mut sixth, Duration::from_secs(2));
    assert!(took.is_some(), "the sixth connection is closed");
    // One closes: a new one is served again.
    drop(open.pop());
    std::thread::sleep(Duration::from_millis(200));
    let resp = send_raw(
        gw.addr,
        b"GET /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    )
    .expect("answer");
    assert_eq!(resp.status, 200);
    // The admin listener is not counted.
    assert!(gw.metrics().contains("portcullis_requests_total"));
}

/// 1,000 connections: half idle, half dripping a head one byte at a time.
/// Requests on fresh connections are still each answered within a second, and
/// the slow ones are all cut at the header-read timeout.
#[test]
fn a_thousand_slow_and_idle_clients_do_not_stop_normal_requests() {
    let (gw, backend) = gateway_with_limits("limits: { header_read_timeout: 3s }\n");
    let mut slow: Vec<TcpStream> = Vec::with_capacity(1000);
    for i in 0..1000 {
        let mut s = TcpStream::connect(gw.addr).expect("connect");
        if i % 2 == 0 {
            s.write_all(b"GET /x HTTP/1.1\r\nhost: a\r\nx-slow: ")
                .expect("write");
        }
        slow.push(s);
    }
    let dripping = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let drip = {
        let streams: Vec<TcpStream> = slow
            .iter()
            .step_by(2)
            .map(|s| s.try_clone().expect("clone"))
            .collect();
        let dripping = dripping.clone();
        std::thread::spawn(move || {
            let mut streams = streams;
            while dripping.load(std::sync::atomic::Ordering::SeqCst) {
                for s in &mut streams {
                    let _ = s.write_all(b"z");
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        let resp = send_raw(
            gw.addr,
            b"GET /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
        )
        .expect("answer");
        assert_eq!(resp.status, 200);
        slowest = slowest.max(started.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        slowest < Duration::from_secs(1),
        "slowest answer {slowest:?}"
    );
    assert_eq!(
        backend.requests().len(),
        20,
        "only the normal requests got through"
    );

    // Past the header-read timeout every slow connection has been closed.
    std::thread::sleep(Duration::from_secs(3));
    dripping.store(false, std::sync::atomic::Ordering::SeqCst);
    let _ = drip.join();
    let still_open = slow
        .iter_mut()
        .filter(|s| {
            time_until_closed(
                &mut s.try_clone().expect("clone"),
                Duration::from_millis(20),
            )
            .is_none()
        })
        .count();
    assert_eq!(still_open, 0, "slow connections left open");
}

#[test]
fn a_body_that_stops_is_answered_408_and_not_blamed_on_the_upstream() {
    let (gw, backend) = gateway_with_limits("limits: { body_read_timeout: 1s }\n");
    let mut stream = TcpStream::connect(gw.addr).expect("connect");
    stream
        .write_all(b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 100\r\n\r\nonly ten..")
        .expect("write");
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let resp = read_response(&mut std::io::BufReader::new(&stream), false).expect("an answer");
    let took = started.elapsed();
    assert_eq!(resp.status, 408, "{resp:?}");
    assert_eq!(resp.error_code(), "request_timeout");
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "answered after {took:?}"
    );
    assert!(time_until_closed(&mut stream, Duration::from_secs(3)).is_some());
    assert!(
        backend.requests().is_empty(),
        "no whole request reached the backend"
    );
    let errors =
        gw.metric("portcullis_upstream_errors_total{kind=\"timeout\",route=\"r\",upstream=\"u\"}");
    assert_eq!(errors, 0.0, "a stalled client is not an upstream timeout");
    assert_eq!(
        gw.metric_eventually(
            "portcullis_requests_total{method=\"POST\",route=\"r\",status=\"408\"}",
            1.0
        ),
        1.0
    );
}
