//! Faults under load: a backend dies in the middle of traffic and comes back.
//! (Redis killed: `tests/ratelimit.rs`; config deleted or truncated before a
//! reload: `tests/reload.rs`.)

mod common;

use common::*;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Seconds since the start, the path, and the status (0: no answer at all).
type Outcome = (f64, &'static str, u16);

#[test]
fn a_backend_killed_mid_load_fails_only_its_own_requests_and_recovers() {
    let slow_ok = |_: &Received| Answer::json(200, "{}").after(Duration::from_millis(5));
    let a = Backend::start(slow_ok);
    let b = Backend::start(slow_ok);
    let a_addr = a.addr;
    let config = format!(
        "{head}upstreams:\n  a:\n    peers: [\"{pa}\"]\n    timeouts: {{ connect: 300ms, read: 2s }}\n\
         \x20 b:\n    peers: [\"{pb}\"]\n\
         routes:\n  - {{ name: a, path: /a, upstream: a, auth: none }}\n\
         \x20 - {{ name: b, path: /b, upstream: b, auth: none }}\n",
        head = config_head(),
        pa = a.addr,
        pb = b.addr,
    );
    let gw = Gateway::start(&config);

    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let started = Instant::now();
    let run_for = Duration::from_secs(4);
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let outcomes = outcomes.clone();
            let addr = gw.addr;
            std::thread::spawn(move || {
                let mut n = i;
                while started.elapsed() < run_for {
                    let path = if n % 2 == 0 { "/a" } else { "/b" };
                    n += 1;
                    let raw =
                        format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
                    let status = send_raw(addr, raw.as_bytes()).map_or(0, |r| r.status);
                    let at = started.elapsed().as_secs_f64();
                    outcomes.lock().expect("lock").push((at, path, status));
                }
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(1000));
    a.stop(); // listener closed, open connections dropped at their next request
    drop(a);
    let killed_at = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(1200));
    let _a = Backend::restart_on(a_addr, slow_ok);
    let back_at = started.elapsed().as_secs_f64();
    for c in clients {
        c.join().expect("client thread");
    }

    let outcomes = outcomes.lock().expect("lock").clone();
    let of = |path: &'static str| outcomes.iter().filter(move |o| o.1 == path);
    assert!(of("/b").count() > 50, "enough load: {}", of("/b").count());
    let b_failed: Vec<_> = of("/b").filter(|o| o.2 != 200).collect();
    assert!(
        b_failed.is_empty(),
        "the other backend's requests all served: {b_failed:?}"
    );

    let a_unexpected: Vec<_> = of("/a")
        .filter(|o| ![200, 502, 504].contains(&o.2))
        .collect();
    assert!(
        a_unexpected.is_empty(),
        "only 502/504 for the dead backend: {a_unexpected:?}"
    );
    let a_failed_while_down = of("/a")
        .filter(|o| o.0 > killed_at + 0.1 && o.0 < back_at && o.2 == 502)
        .count();
    assert!(
        a_failed_while_down > 0,
        "requests to the dead backend got 502"
    );
    let a_before = of("/a").filter(|o| o.0 < killed_at - 0.05);
    assert!(
        a_before.clone().all(|o| o.2 == 200),
        "all served before the kill"
    );
    // Recovered: every request sent well after the restart is served again.
    let a_after: Vec<_> = of("/a").filter(|o| o.0 > back_at + 0.5).collect();
    assert!(!a_after.is_empty());
    assert!(a_after.iter().all(|o| o.2 == 200), "recovered: {a_after:?}");

    assert!(
        gw.metric("portcullis_upstream_errors_total{kind=\"connect\",route=\"a\",upstream=\"a\"}")
            > 0.0
    );
    assert_eq!(
        gw.metric("portcullis_upstream_errors_total{kind=\"connect\",route=\"b\",upstream=\"b\"}"),
        0.0
    );
    // Every request was answered and logged.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(gw.access_log().len(), outcomes.len());
}
