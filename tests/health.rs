//! Active health checks, black-box: real backends killed and restarted under
//! the real binary; `portcullis_upstream_peer_up` read from the admin listener.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const INTERVAL: Duration = Duration::from_millis(300);

/// A backend whose `/healthz` answers 200 only with the gateway secret, as a
/// real backend behind the gateway would; anything else answers its own name.
fn service(name: &'static str) -> impl Fn(&Received) -> Answer + Send + Sync + 'static {
    move |r| {
        if r.target == "/healthz" {
            let status = if r.header("x-gateway-secret") == Some(SECRET) {
                200
            } else {
                403
            };
            return Answer::json(status, "{}");
        }
        Answer::json(200, &format!("{{\"served_by\":\"{name}\"}}"))
    }
}

fn checked_gateway(peers: &[SocketAddr]) -> Gateway {
    let upstream_extra = format!(
        "    health_check: {{ path: /healthz, interval: {}ms }}\n    headers: {{ x-gateway-secret: \"{SECRET}\" }}\n",
        INTERVAL.as_millis()
    );
    Gateway::start(&one_route_config(peers, &upstream_extra, ""))
}

fn peer_up(gw: &Gateway, peer: SocketAddr) -> f64 {
    gw.metric(&format!(
        "portcullis_upstream_peer_up{{peer=\"{peer}\",upstream=\"u\"}}"
    ))
}

/// How long until `probe` holds; fails after `limit`.
fn time_until(limit: Duration, what: &str, probe: impl Fn() -> bool) -> Duration {
    let started = Instant::now();
    while !probe() {
        assert!(started.elapsed() < limit, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

fn health_checks(b: &Backend) -> usize {
    b.requests()
        .iter()
        .filter(|r| r.target == "/healthz")
        .count()
}

fn traffic(b: &Backend) -> usize {
    b.requests()
        .iter()
        .filter(|r| r.target != "/healthz")
        .count()
}

#[test]
fn a_killed_peer_is_marked_down_gets_no_traffic_and_comes_back() {
    let a = Backend::start(service("a"));
    let b = Backend::start(service("b"));
    let gw = checked_gateway(&[a.addr, b.addr]);
    time_until(Duration::from_secs(5), "both peers checked and up", || {
        health_checks(&a) > 0 && peer_up(&gw, a.addr) == 1.0 && peer_up(&gw, b.addr) == 1.0
    });
    let seen = a.requests()[0].clone();
    assert_eq!(
        seen.header("x-gateway-secret"),
        Some(SECRET),
        "checks carry the secret"
    );

    let a_addr = a.addr;
    a.stop();
    let took = time_until(4 * INTERVAL, "a marked down", || {
        peer_up(&gw, a_addr) == 0.0
    });
    assert!(
        took <= 2 * INTERVAL + Duration::from_millis(200),
        "marked down after {took:?}"
    );
    let before = traffic(&a);
    for _ in 0..20 {
        let resp = gw.get_with_key("/work");
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.json()["served_by"], "b");
    }
    assert_eq!(traffic(&a), before, "no request sent to the down peer");

    let a = Backend::restart_on(a_addr, service("a"));
    time_until(4 * INTERVAL, "a back up", || peer_up(&gw, a_addr) == 1.0);
    let served: Vec<String> = (0..10)
        .map(|_| gw.get_with_key("/work").json()["served_by"].to_string())
        .collect();
    assert!(
        served.iter().any(|s| s == "\"a\""),
        "a takes traffic again: {served:?}"
    );
    assert!(traffic(&a) > 0);
}

#[test]
fn no_healthy_peer_left_is_a_503() {
    let a = Backend::start(service("a"));
    let gw = checked_gateway(&[a.addr]);
    time_until(Duration::from_secs(5), "a up", || {
        peer_up(&gw, a.addr) == 1.0
    });
    a.stop();
    time_until(4 * INTERVAL, "a down", || peer_up(&gw, a.addr) == 0.0);
    let resp = gw.get_with_key("/work");
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert_eq!(resp.error_code(), "no_healthy_upstream");
}

#[test]
fn a_check_answered_outside_2xx_marks_the_peer_down() {
    // This backend wants a secret the gateway was not given: 403 to every check.
    let a = Backend::start(service("a"));
    let config = one_route_config(
        &[a.addr],
        "    health_check: { path: /healthz, interval: 300ms }\n",
        "",
    );
    let gw = Gateway::start(&config);
    time_until(Duration::from_secs(5), "checked", || health_checks(&a) > 0);
    time_until(Duration::from_secs(2), "a down", || {
        peer_up(&gw, a.addr) == 0.0
    });
    assert_eq!(gw.get_with_key("/work").status, 503);
}

#[test]
fn peers_without_a_check_are_exported_up() {
    let a = Backend::start(service("a"));
    let gw = Gateway::start(&one_route_config(&[a.addr], "", ""));
    time_until(Duration::from_secs(2), "exported", || {
        peer_up(&gw, a.addr) == 1.0
    });
    assert_eq!(health_checks(&a), 0, "no active check without health_check");
}

#[test]
fn a_peer_down_stays_down_across_a_reload() {
    let a = Backend::start(service("a"));
    let b = Backend::start(service("b"));
    let gw = checked_gateway(&[a.addr, b.addr]);
    time_until(Duration::from_secs(5), "a up", || {
        peer_up(&gw, a.addr) == 1.0
    });
    a.stop();
    time_until(4 * INTERVAL, "a down", || peer_up(&gw, a.addr) == 0.0);
    let before = traffic(&a);
    let connect_errors = || {
        gw.metric("portcullis_upstream_errors_total{kind=\"connect\",route=\"r\",upstream=\"u\"}")
    };
    let errors_before = connect_errors();
    assert_eq!(gw.post_reload().status, 200);
    // Right after the swap, before any new check: the down peer gets nothing.
    for _ in 0..10 {
        assert_eq!(gw.get_with_key("/work").json()["served_by"], "b");
    }
    assert_eq!(traffic(&a), before);
    assert_eq!(
        connect_errors(),
        errors_before,
        "the down peer was not even tried"
    );
    assert_eq!(peer_up(&gw, a.addr), 0.0);
}
