//! Aggregate routes, black-box: the real binary fans one call out to real
//! backends on ephemeral loopback ports and merges their JSON.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A user service: `/users/{id}` answers `{"id": "<id as received>"}`.
fn users_backend() -> Backend {
    Backend::start(|r| {
        let id = r.target.strip_prefix("/users/").unwrap_or("?");
        Answer::json(200, &serde_json::json!({ "id": id }).to_string())
    })
}

/// An order service: answers a list naming the query it received.
fn orders_backend() -> Backend {
    Backend::start(|r| {
        let query = r.target.split_once('?').map_or("", |(_, q)| q);
        Answer::json(
            200,
            &serde_json::json!([{ "order": 1, "query": query }]).to_string(),
        )
    })
}

/// A gateway with one aggregate route `/overview/users/{id}` over a `users`
/// and an `orders` upstream (each with the gateway secret); `route_extra` lines
/// are added to the route (indented 4).
fn overview_gateway(users: SocketAddr, orders: SocketAddr, route_extra: &str) -> Gateway {
    let config = format!(
        "{head}upstreams:\n\
         \x20 users:\n    peers: [\"{users}\"]\n    headers: {{ x-gateway-secret: \"${{GATEWAY_SECRET}}\" }}\n\
         \x20 orders:\n    peers: [\"{orders}\"]\n    headers: {{ x-gateway-secret: \"${{GATEWAY_SECRET}}\" }}\n\
         routes:\n\
         \x20 - name: overview\n    path: /overview/users/{{id}}\n{route_extra}\
         \x20   aggregate:\n\
         \x20     user: {{ upstream: users, path: \"/users/{{id}}\" }}\n\
         \x20     orders: {{ upstream: orders, path: \"/orders?user_id={{id}}\" }}\n",
        head = config_head(),
    );
    Gateway::start_with_env(&config, &[("GATEWAY_SECRET", SECRET)])
}

/// An address nothing listens on.
fn dead_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

#[test]
fn two_parts_are_merged_with_the_secret_and_without_the_key() {
    let (users, orders) = (users_backend(), orders_backend());
    let gw = overview_gateway(users.addr, orders.addr, "");
    let resp = gw.get(
        "/overview/users/7",
        &[("x-api-key", KEY), ("accept-encoding", "gzip")],
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let v = resp.json();
    assert_eq!(v["user"]["id"], "7", "{v}");
    assert_eq!(v["orders"][0]["query"], "user_id=7", "{v}");
    assert_eq!(
        v.as_object().map(|o| o.len()),
        Some(2),
        "one member per part"
    );
    let text = resp.text();
    assert!(
        text.find("\"user\"") < text.find("\"orders\""),
        "members in config order: {text}"
    );

    let id = resp.header("x-request-id").expect("x-request-id");
    for (backend, target) in [(&users, "/users/7"), (&orders, "/orders?user_id=7")] {
        let seen = backend.last();
        assert_eq!(seen.method, "GET");
        assert_eq!(seen.target, target);
        assert_eq!(seen.header("x-gateway-secret"), Some(SECRET));
        assert_eq!(
            seen.header("x-api-key"),
            None,
            "the key never reaches a part"
        );
        assert_eq!(seen.header("x-request-id"), Some(id));
        assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
        assert_eq!(
            seen.header("accept-encoding"),
            None,
            "parts answer plain JSON"
        );
        assert_eq!(seen.header("host"), Some(backend.addr.to_string().as_str()));
    }
    assert!(!resp.text().contains(SECRET));

    let log = gw.access_log();
    let line = log
        .iter()
        .find(|l| l["request_id"] == id)
        .expect("an access-log line");
    assert_eq!(line["route"], "overview");
    assert_eq!(line["status"], 200);
    assert_eq!(line["upstream"], "users,orders");
    assert!(line["upstream_ms"].is_number(), "{line}");

    let metrics = gw.metrics();
    for upstream in ["users", "orders"] {
        let series = format!(
            "portcullis_upstream_duration_seconds_count{{route=\"overview\",upstream=\"{upstream}\"}} 1"
        );
        assert!(metrics.contains(&series), "{series} missing");
    }
    assert!(metrics
        .contains("portcullis_requests_total{method=\"GET\",route=\"overview\",status=\"200\"} 1"));
}

#[test]
fn a_failing_part_becomes_an_error_member_and_the_answer_stays_200() {
    let failing = Backend::start(|_| Answer::json(500, "{\"oops\":true}"));
    let html = Backend::start(|_| {
        let mut a = Answer::json(200, "<html>hello</html>");
        a.headers = vec![("content-type".into(), "text/html".into())];
        a
    });
    let gw = overview_gateway(failing.addr, html.addr, "");
    let resp = gw.get_with_key("/overview/users/1");
    assert_eq!(resp.status, 502, "both parts failed: {}", resp.text());
    assert_eq!(resp.error_code(), "bad_gateway");

    let users = users_backend();
    let gw = overview_gateway(users.addr, failing.addr, "");
    let resp = gw.get_with_key("/overview/users/1");
    assert_eq!(resp.status, 200);
    let v = resp.json();
    assert_eq!(v["user"]["id"], "1");
    assert_eq!(
        v["orders"],
        serde_json::json!({"error": "upstream_error", "status": 500})
    );

    let gw = overview_gateway(users.addr, html.addr, "");
    let resp = gw.get_with_key("/overview/users/1");
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.json()["orders"],
        serde_json::json!({"error": "not_json", "status": 200})
    );
}

#[test]
fn every_part_failing_is_a_502() {
    let gw = overview_gateway(dead_addr(), dead_addr(), "");
    let resp = gw.get_with_key("/overview/users/1");
    assert_eq!(resp.status, 502, "{}", resp.text());
    assert_eq!(resp.error_code(), "bad_gateway");
    let connect_errors = gw.metric(
        "portcullis_upstream_errors_total{kind=\"connect\",route=\"overview\",upstream=\"users\"}",
    );
    assert_eq!(connect_errors, 1.0);
    let log = gw.access_log();
    assert!(
        log.iter()
            .any(|l| l["status"] == 502 && l["error"] == "bad_gateway"),
        "{log:?}"
    );
}

#[test]
fn a_part_past_the_route_timeout_fails_alone_and_in_time() {
    let users = users_backend();
    let slow = Backend::start(|_| Answer::json(200, "[]").after(Duration::from_secs(3)));
    let gw = overview_gateway(users.addr, slow.addr, "    timeout: 400ms\n");
    let started = Instant::now();
    let resp = gw.get_with_key("/overview/users/1");
    let took = started.elapsed();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let v = resp.json();
    assert_eq!(v["user"]["id"], "1");
    assert_eq!(
        v["orders"],
        serde_json::json!({"error": "gateway_timeout", "status": 504})
    );
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert_eq!(
        gw.metric("portcullis_upstream_errors_total{kind=\"timeout\",route=\"overview\",upstream=\"orders\"}"),
        1.0
    );
}

#[test]
fn parts_are_fetched_in_parallel() {
    let half_second = Duration::from_millis(500);
    let users = Backend::start(move |_| Answer::json(200, "{\"id\":1}").after(half_second));
    let orders = Backend::start(move |_| Answer::json(200, "[]").after(half_second));
    let gw = overview_gateway(users.addr, orders.addr, "");
    let started = Instant::now();
    let resp = gw.get_with_key("/overview/users/1");
    let took = started.elapsed();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["user"]["id"], 1);
    assert!(took >= half_second, "took {took:?}");
    assert!(
        took < Duration::from_millis(900),
        "two 500 ms parts took {took:?}: not in parallel"
    );
}

#[test]
fn a_parameter_cannot_reach_another_backend_path() {
    let (users, orders) = (users_backend(), orders_backend());
    let gw = overview_gateway(users.addr, orders.addr, "");
    let cases = [
        ("1%3Fx=y", "/users/1%3Fx%3Dy", "/orders?user_id=1%3Fx%3Dy"),
        (
            "1%26admin=1",
            "/users/1%26admin%3D1",
            "/orders?user_id=1%26admin%3D1",
        ),
        ("1%23frag", "/users/1%23frag", "/orders?user_id=1%23frag"),
    ];
    for (id, user_target, orders_target) in cases {
        let resp = gw.get_with_key(&format!("/overview/users/{id}"));
        assert_eq!(resp.status, 200, "{id}: {}", resp.text());
        assert_eq!(users.last().target, user_target, "{id}");
        assert_eq!(orders.last().target, orders_target, "{id}");
    }
    // A dot-segment, or a `/` that a backend decoding `%2F` would split on,
    // cannot be made safe in a path: refused, nothing sent to any part.
    let sent = (users.requests().len(), orders.requests().len());
    for id in [
        "1%2F..%2Fadmin",
        "..%2Fadmin",
        "1%5C..%5Cadmin",
        "..",
        "%2E%2E",
        "%2e",
    ] {
        let resp = gw.get_with_key(&format!("/overview/users/{id}"));
        assert_eq!(resp.status, 400, "{id}");
        assert_eq!(resp.error_code(), "bad_request");
    }
    assert_eq!((users.requests().len(), orders.requests().len()), sent);
    for r in users.requests().iter().chain(orders.requests().iter()) {
        assert!(
            r.target.starts_with("/users/") || r.target.starts_with("/orders?user_id="),
            "{}",
            r.target
        );
    }
}

#[test]
fn auth_methods_and_rate_limits_apply_as_for_proxied_routes() {
    let (users, orders) = (users_backend(), orders_backend());
    let gw = overview_gateway(
        users.addr,
        orders.addr,
        "    rate_limit: { requests: 2, per: 1m }\n    response_headers: { set: { cache-control: no-store } }\n",
    );
    let resp = gw.get("/overview/users/1", &[]);
    assert_eq!(resp.status, 401);
    assert_eq!(resp.error_code(), "missing_api_key");
    let resp = request(
        gw.addr,
        "POST",
        "/overview/users/1",
        &[("x-api-key", KEY)],
        b"{}",
    );
    assert_eq!(resp.status, 405);
    assert_eq!(resp.header("allow"), Some("GET, HEAD"));

    let head = request(
        gw.addr,
        "HEAD",
        "/overview/users/1",
        &[("x-api-key", KEY)],
        b"",
    );
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty(), "HEAD has no body");
    let resp = gw.get_with_key("/overview/users/1");
    assert_eq!(resp.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(resp.body.len().to_string().as_str()),
        "HEAD tells the length GET sends"
    );
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    assert_eq!(resp.header("ratelimit-limit"), Some("2"));
    assert_eq!(resp.header("ratelimit-remaining"), Some("0"));
    let resp = gw.get_with_key("/overview/users/1");
    assert_eq!(resp.status, 429);
    assert_eq!(resp.error_code(), "rate_limited");
    // Two aggregate calls passed (HEAD and GET): two requests per part.
    assert_eq!(users.requests().len(), 2);
    assert_eq!(orders.requests().len(), 2);
}

#[test]
fn a_part_body_over_max_part_body_fails() {
    let big = format!("[\"{}\"]", "x".repeat(4096));
    let users = users_backend();
    let large = Backend::start(move |_| Answer::json(200, &big));
    let gw = overview_gateway(users.addr, large.addr, "    max_part_body: 1KiB\n");
    let resp = gw.get_with_key("/overview/users/1");
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.json()["orders"],
        serde_json::json!({"error": "too_large", "status": 200})
    );
}

#[test]
fn parts_reuse_pooled_connections() {
    let (users, orders) = (users_backend(), orders_backend());
    let gw = overview_gateway(users.addr, orders.addr, "");
    for i in 0..30 {
        let resp = gw.get_with_key(&format!("/overview/users/{i}"));
        assert_eq!(resp.status, 200);
    }
    assert_eq!(users.requests().len(), 30);
    let opened = |b: &Backend| b.connections.load(std::sync::atomic::Ordering::SeqCst);
    let (u, o) = (opened(&users), opened(&orders));
    assert!(u <= 3 && o <= 3, "30 calls opened {u} and {o} connections");
}

#[test]
fn a_dead_peer_is_retried_on_the_live_one() {
    let (users, orders) = (users_backend(), orders_backend());
    let config = format!(
        "{head}upstreams:\n\
         \x20 users:\n    peers: [\"{dead}\", \"{users}\"]\n    retries: 1\n\
         \x20 orders:\n    peers: [\"{orders}\"]\n\
         routes:\n\
         \x20 - name: overview\n    path: /overview/users/{{id}}\n\
         \x20   aggregate:\n\
         \x20     user: {{ upstream: users, path: \"/users/{{id}}\" }}\n\
         \x20     orders: {{ upstream: orders, path: \"/orders?user_id={{id}}\" }}\n",
        head = config_head(),
        dead = dead_addr(),
        users = users.addr,
        orders = orders.addr,
    );
    let gw = Gateway::start(&config);
    for _ in 0..4 {
        let v = gw.get_with_key("/overview/users/3").json();
        assert_eq!(v["user"]["id"], "3", "{v}");
    }
}

#[test]
fn a_dead_pooled_connection_is_resent_on_a_fresh_one() {
    // The user service answers the first request on a connection and hangs up
    // on the next: a pooled connection dies with the part's request on it.
    let users = Backend::start(move |r| {
        let mut a = Answer::json(200, "{\"ok\":true}");
        a.hang_up = r.on_connection > 0;
        a
    });
    let orders = orders_backend();
    let gw = overview_gateway(users.addr, orders.addr, "");
    for _ in 0..5 {
        let v = gw.get_with_key("/overview/users/1").json();
        assert_eq!(v["user"]["ok"], true, "{v}");
    }
    let hung_up = users
        .requests()
        .iter()
        .filter(|r| r.on_connection > 0)
        .count();
    assert!(hung_up > 0, "a pooled connection was reused and died");
}

#[test]
fn an_upgrade_is_not_passed_to_parts_and_odd_answers_fail_their_part() {
    let latin1 = Backend::start(|_| {
        let mut a = Answer::json(200, "");
        a.body = [&b"{\"name\":\"caf"[..], &[0xE9], b"\"}"].concat();
        a
    });
    let redirect =
        Backend::start(|_| Answer::json(302, "{}").with_header("location", "/elsewhere"));
    let gw = overview_gateway(latin1.addr, redirect.addr, "");
    let resp = gw.get(
        "/overview/users/1",
        &[
            ("x-api-key", KEY),
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
        ],
    );
    assert_eq!(resp.status, 502, "{}", resp.text());
    for backend in [&latin1, &redirect] {
        let seen = backend.last();
        assert_eq!(seen.header("upgrade"), None);
        assert_ne!(seen.header("connection"), Some("upgrade"));
    }

    let users = users_backend();
    let switching = Backend::start(|_| {
        Answer::json(101, "")
            .with_header("upgrade", "websocket")
            .with_header("connection", "upgrade")
    });
    for (odd, expected) in [
        (
            &latin1,
            serde_json::json!({"error": "not_json", "status": 200}),
        ),
        (
            &redirect,
            serde_json::json!({"error": "upstream_error", "status": 302}),
        ),
        (
            &switching,
            serde_json::json!({"error": "bad_gateway", "status": 502}),
        ),
    ] {
        let gw = overview_gateway(users.addr, odd.addr, "    timeout: 3s\n");
        let resp = gw.get_with_key("/overview/users/1");
        assert_eq!(resp.status, 200, "{}", resp.text());
        let v = resp.json();
        assert_eq!(v["orders"], expected, "{v}");
        assert_eq!(v["user"]["id"], "1");
    }
}
