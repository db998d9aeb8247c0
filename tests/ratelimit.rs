//! Rate limits seen from outside: the in-process store, and the Redis store
//! shared by two gateway instances, with Redis killed and restarted.

mod common;

use common::*;
use std::time::{Duration, Instant};

const OTHER_KEY: &str = "other-key-19c4";

fn head_with_two_consumers(consumer_limit: &str) -> String {
    format!(
        "{}    {consumer_limit}\n  - name: other\n    keys: [\"{OTHER_KEY}\"]\n",
        config_head()
    )
}

fn limited(resp: &Response) -> (u16, Option<&str>, Option<&str>, Option<&str>) {
    (
        resp.status,
        resp.header("ratelimit-limit"),
        resp.header("ratelimit-remaining"),
        resp.header("ratelimit-reset"),
    )
}

#[test]
fn a_route_limit_by_consumer_counts_each_consumer_apart() {
    let backend = Backend::echo();
    let config = format!(
        "{}upstreams:\n  u:\n    peers: [\"{}\"]\nroutes:\n  - {{ name: r, path: /, upstream: u, rate_limit: {{ requests: 3, per: 10s, by: consumer }} }}\n",
        head_with_two_consumers(""),
        backend.addr
    );
    let gw = Gateway::start(&config);
    for remaining in ["2", "1", "0"] {
        let resp = gw.get_with_key("/");
        assert_eq!(
            limited(&resp),
            (200, Some("3"), Some(remaining), Some("10"))
        );
    }
    let refused = gw.get_with_key("/");
    assert_eq!(
        (refused.status, refused.error_code().as_str()),
        (429, "rate_limited")
    );
    assert_eq!(refused.header("ratelimit-remaining"), Some("0"));
    let retry: u64 = refused
        .header("retry-after")
        .and_then(|r| r.parse().ok())
        .expect("retry-after");
    assert!((1..=10).contains(&retry), "retry-after {retry}");
    assert_eq!(
        backend.requests().len(),
        3,
        "the refused request never reached the backend"
    );

    let other = gw.get("/", &[("x-api-key", OTHER_KEY)]);
    assert_eq!(
        limited(&other).0,
        200,
        "another consumer has its own budget"
    );
    assert_eq!(other.header("ratelimit-remaining"), Some("2"));
    assert_eq!(
        gw.metric_eventually("portcullis_rate_limited_total{route=\"r\"}", 1.0),
        1.0
    );
    assert_eq!(
        gw.access_log()
            .iter()
            .filter(|l| l["error"] == "rate_limited")
            .count(),
        1
    );
}

#[test]
fn limits_by_ip_and_by_route() {
    let backend = Backend::echo();
    let config = format!(
        "{}trusted_proxies: [127.0.0.0/8]\nupstreams:\n  u:\n    peers: [\"{}\"]\nroutes:\n\
         \x20 - {{ name: by-ip, path: /ip, upstream: u, auth: none, rate_limit: {{ requests: 2, per: 1m, by: ip }} }}\n\
         \x20 - {{ name: by-route, path: /route, upstream: u, rate_limit: {{ requests: 2, per: 1m, by: route }} }}\n",
        head_with_two_consumers(""),
        backend.addr
    );
    let gw = Gateway::start(&config);
    let from = |ip: &str| gw.get("/ip", &[("x-forwarded-for", ip)]).status;
    assert_eq!(
        [
            from("203.0.113.1"),
            from("203.0.113.1"),
            from("203.0.113.1")
        ],
        [200, 200, 429]
    );
    assert_eq!(
        from("203.0.113.2"),
        200,
        "another address has its own budget"
    );

    // by: route is one budget for every consumer together.
    assert_eq!(gw.get("/route", &[("x-api-key", KEY)]).status, 200);
    assert_eq!(gw.get("/route", &[("x-api-key", OTHER_KEY)]).status, 200);
    assert_eq!(gw.get("/route", &[("x-api-key", KEY)]).status, 429);
}

#[test]
fn consumer_and_route_limits_both_apply_and_the_tighter_decides() {
    let backend = Backend::echo();
    let config = format!(
        "{}upstreams:\n  u:\n    peers: [\"{}\"]\nroutes:\n\
         \x20 - {{ name: a, path: /a, upstream: u, rate_limit: {{ requests: 10, per: 1m }} }}\n\
         \x20 - {{ name: b, path: /b, upstream: u }}\n",
        head_with_two_consumers("rate_limit: { requests: 3, per: 1m }"),
        backend.addr
    );
    let gw = Gateway::start(&config);
    // The consumer's limit (3) is tighter than the route's (10): its headers show.
    let first = gw.get_with_key("/a");
    assert_eq!(limited(&first), (200, Some("3"), Some("2"), Some("60")));
    // The consumer limit spans every route.
    assert_eq!(
        gw.get_with_key("/b").header("ratelimit-remaining"),
        Some("1")
    );
    assert_eq!(gw.get_with_key("/a").status, 200);
    let refused = gw.get_with_key("/b");
    assert_eq!(
        (refused.status, refused.error_code().as_str()),
        (429, "rate_limited")
    );
    // A consumer without its own limit is bound by the route's alone, which
    // counts each consumer apart (`by: consumer` is the default).
    let other = gw.get("/a", &[("x-api-key", OTHER_KEY)]);
    assert_eq!(limited(&other), (200, Some("10"), Some("9"), Some("60")));
}

/// A gateway on `redis`; `timeout` bounds each store call (a first call also
/// connects and loads the script, so a loaded machine needs some room).
fn redis_gateway(
    redis: &Redis,
    backend: &Backend,
    limit: &str,
    on_store_error: &str,
    timeout: &str,
) -> Gateway {
    let config = format!(
        "{}rate_limit:\n  store: redis\n  redis: {{ url: \"{}\", prefix: \"pc-test:\", timeout: {timeout} }}\n  on_store_error: {on_store_error}\n\
         upstreams:\n  u:\n    peers: [\"{}\"]\nroutes:\n  - {{ name: r, path: /, upstream: u, rate_limit: {limit} }}\n",
        config_head(),
        redis.url(),
        backend.addr
    );
    Gateway::start(&config)
}

#[test]
fn two_instances_share_one_budget_through_redis() {
    let redis = Redis::start();
    let backend = Backend::echo();
    let limit = "{ requests: 10, per: 10s, by: route }";
    let a = redis_gateway(&redis, &backend, limit, "allow", "1s");
    let b = redis_gateway(&redis, &backend, limit, "allow", "1s");
    for gw in [&a, &b] {
        assert!(
            gw.stderr().contains("Redis ready"),
            "the store is warmed up before traffic"
        );
    }
    let statuses: Vec<u16> = (0..12)
        .map(|i| {
            if i % 2 == 0 {
                a.get_with_key("/").status
            } else {
                b.get_with_key("/").status
            }
        })
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(backend.requests().len(), 10);
}

#[test]
fn redis_down_follows_on_store_error_and_limiting_resumes_when_it_returns() {
    let mut redis = Redis::start();
    let backend = Backend::echo();
    let limit = "{ requests: 2, per: 1m }";
    let allow = redis_gateway(&redis, &backend, limit, "allow", "1s");
    let deny = redis_gateway(&redis, &backend, limit, "deny", "1s");
    assert_eq!(allow.get_with_key("/").status, 200);
    assert_eq!(deny.get_with_key("/").status, 200);

    redis.kill();
    for _ in 0..3 {
        let started = Instant::now();
        let open = allow.get_with_key("/");
        assert_eq!(open.status, 200, "allow: served without the store");
        assert_eq!(
            open.header("ratelimit-limit"),
            None,
            "no window to describe"
        );
        let closed = deny.get_with_key("/");
        assert_eq!(
            (closed.status, closed.error_code().as_str()),
            (503, "rate_limit_unavailable")
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "two answers, each within the 1 s store timeout: {:?}",
            started.elapsed()
        );
    }
    assert!(allow.metric("portcullis_rate_limit_store_errors_total{store=\"redis\"}") >= 3.0);
    assert!(
        allow.stderr().contains("rate limit store"),
        "the outage is logged"
    );

    // Back again (empty, as after a restart): limiting resumes without restarting us.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while deny.get_with_key("/").status != 200 {
        assert!(
            Instant::now() < deadline,
            "the gateway did not reconnect to Redis"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(deny.get_with_key("/").status, 200);
    assert_eq!(
        deny.get_with_key("/").status,
        429,
        "the limit of 2 applies again"
    );
}
