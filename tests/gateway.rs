//! Black-box tests: the real binary, real HTTP backends on ephemeral loopback
//! ports, raw HTTP clients.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// A gateway with one echo backend behind `/users` (the gateway secret injected).
fn users_gateway(route_extra: &str) -> (Gateway, Backend) {
    let backend = Backend::echo();
    let gw = Gateway::start_with_env(
        &users_config(&backend, route_extra),
        &[("GATEWAY_SECRET", SECRET)],
    );
    (gw, backend)
}

fn users_config(backend: &Backend, route_extra: &str) -> String {
    format!(
        "{head}upstreams:\n  users:\n    peers: [\"{peer}\"]\n    headers: {{ x-gateway-secret: \"${{GATEWAY_SECRET}}\" }}\n\
         routes:\n  - name: users\n    path: /users\n    upstream: users\n{route_extra}",
        head = config_head(),
        peer = backend.addr,
    )
}

#[test]
fn proxies_with_the_secret_and_never_the_client_key() {
    let (gw, backend) = users_gateway("");
    let resp = gw.get(
        "/users/1?expand=orders",
        &[("x-api-key", KEY), ("host", "api.example.com")],
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let seen = backend.last();
    assert_eq!(
        seen.target, "/users/1?expand=orders",
        "path and query preserved"
    );
    assert_eq!(seen.header("x-gateway-secret"), Some(SECRET));
    assert_eq!(
        seen.header("x-api-key"),
        None,
        "the client's key never reaches a backend"
    );
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("api.example.com"));
    assert_eq!(
        seen.header("host"),
        Some(backend.addr.to_string().as_str()),
        "host is the peer"
    );
    let id = resp
        .header("x-request-id")
        .expect("x-request-id to the client");
    assert_eq!(seen.header("x-request-id"), Some(id));
    assert_eq!(id.len(), 32);
}

#[test]
fn a_client_cannot_forge_the_secret_or_the_forwarding_headers() {
    let (gw, backend) = users_gateway("");
    let resp = gw.get(
        "/users",
        &[
            ("x-api-key", KEY),
            ("x-gateway-secret", "forged"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=6.6.6.6;proto=https"),
            ("x-real-ip", "6.6.6.6"),
        ],
    );
    assert_eq!(resp.status, 200);
    let seen = backend.last();
    assert_eq!(seen.header("x-gateway-secret"), Some(SECRET));
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("127.0.0.1"),
        "untrusted peer: replaced"
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    // A backend that believes these would take the client for 6.6.6.6.
    assert_eq!(seen.header("forwarded"), None, "untrusted peer: dropped");
    assert_eq!(seen.header("x-real-ip"), None, "untrusted peer: dropped");
}

#[test]
fn trusted_proxies_extend_x_forwarded_for() {
    let backend = Backend::echo();
    let config =
        one_route_config(&[backend.addr], "", "auth: none") + "trusted_proxies: [127.0.0.0/8]\n";
    let gw = Gateway::start(&config);
    gw.get(
        "/",
        &[
            ("x-forwarded-for", "203.0.113.7"),
            ("forwarded", "for=203.0.113.7"),
            ("x-real-ip", "203.0.113.7"),
        ],
    );
    let seen = backend.last();
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );
    // A trusted proxy's own claims pass as it sent them.
    assert_eq!(seen.header("forwarded"), Some("for=203.0.113.7"));
    assert_eq!(seen.header("x-real-ip"), Some("203.0.113.7"));
    let log = gw.access_log();
    assert_eq!(log.last().expect("a log line")["client"], "203.0.113.7");
}

#[test]
fn request_ids_are_kept_when_valid_and_replaced_otherwise() {
    let (gw, backend) = users_gateway("");
    let kept = gw.get(
        "/users",
        &[("x-api-key", KEY), ("x-request-id", "abc-123.X:y_z")],
    );
    assert_eq!(kept.header("x-request-id"), Some("abc-123.X:y_z"));
    assert_eq!(backend.last().header("x-request-id"), Some("abc-123.X:y_z"));
    let long = "a".repeat(129);
    for bad in ["has space", "semi;colon", long.as_str()] {
        let replaced = gw.get("/users", &[("x-api-key", KEY), ("x-request-id", bad)]);
        let id = replaced.header("x-request-id").expect("id");
        assert_ne!(id, bad);
        assert_eq!(backend.last().header("x-request-id"), Some(id));
    }
}

#[test]
fn auth_answers_401_and_403_as_the_spec_says() {
    let backend = Backend::echo();
    let config = format!(
        "{head}  - name: partner\n    key_hashes: [\"sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"]\n\
         upstreams:\n  u:\n    peers: [\"{peer}\"]\n\
         routes:\n  - name: web-only\n    path: /web\n    upstream: u\n    consumers: [web]\n\
         \x20 - name: open\n    path: /open\n    auth: none\n    upstream: u\n\
         \x20 - name: any\n    path: /any\n    upstream: u\n",
        head = config_head(),
        peer = backend.addr
    );
    let gw = Gateway::start(&config);

    let missing = gw.get("/any", &[]);
    assert_eq!(
        (missing.status, missing.error_code().as_str()),
        (401, "missing_api_key")
    );
    assert_eq!(
        missing.header("www-authenticate"),
        Some("ApiKey header=\"x-api-key\"")
    );
    let invalid = gw.get("/any", &[("x-api-key", "nope")]);
    assert_eq!(
        (invalid.status, invalid.error_code().as_str()),
        (401, "invalid_api_key")
    );
    let forbidden = gw.get("/web", &[("x-api-key", "test")]);
    assert_eq!(
        (forbidden.status, forbidden.error_code().as_str()),
        (403, "forbidden")
    );

    assert_eq!(
        gw.get("/any", &[("x-api-key", "test")]).status,
        200,
        "key_hashes consumer"
    );
    assert_eq!(gw.get("/web", &[("x-api-key", KEY)]).status, 200);
    assert_eq!(gw.get("/open", &[]).status, 200, "auth: none");
    assert_eq!(
        backend.requests().len(),
        3,
        "refused requests never reach the backend"
    );

    assert_eq!(
        gw.metric_eventually(
            "portcullis_auth_failures_total{reason=\"missing_api_key\",route=\"any\"}",
            1.0
        ),
        1.0
    );
    assert_eq!(
        gw.metric_eventually(
            "portcullis_auth_failures_total{reason=\"forbidden\",route=\"web-only\"}",
            1.0
        ),
        1.0
    );
    let log = gw.access_log();
    let refused = log.iter().find(|l| l["status"] == 403).expect("403 logged");
    assert_eq!(refused["error"], "forbidden");
    assert_eq!(refused["consumer"], "partner");
    assert_eq!(refused["upstream"], serde_json::Value::Null);
}

#[test]
fn a_custom_auth_header_is_used_and_stripped() {
    let backend = Backend::echo();
    let config = one_route_config(&[backend.addr], "", "") + "auth:\n  header: X-Token\n";
    let gw = Gateway::start(&config);
    let missing = gw.get("/", &[("x-api-key", KEY)]);
    assert_eq!(missing.status, 401);
    assert_eq!(
        missing.header("www-authenticate"),
        Some("ApiKey header=\"x-token\"")
    );
    assert_eq!(gw.get("/", &[("x-token", KEY)]).status, 200);
    assert_eq!(backend.last().header("x-token"), None);
}

#[test]
fn unmatched_paths_and_methods_get_404_and_405() {
    let backend = Backend::echo();
    let config = format!(
        "{}upstreams:\n  u:\n    peers: [\"{}\"]\nroutes:\n  - name: users\n    path: /users\n    methods: [GET, POST]\n    upstream: u\n",
        config_head(),
        backend.addr
    );
    let gw = Gateway::start(&config);
    let none = gw.get_with_key("/usersX");
    assert_eq!((none.status, none.error_code().as_str()), (404, "no_route"));
    let wrong = request(gw.addr, "DELETE", "/users/1", &[("x-api-key", KEY)], b"");
    assert_eq!(
        (wrong.status, wrong.error_code().as_str()),
        (405, "method_not_allowed")
    );
    assert_eq!(wrong.header("allow"), Some("GET, POST"));
    assert_eq!(
        gw.metric_eventually(
            "portcullis_requests_total{method=\"GET\",route=\"none\",status=\"404\"}",
            1.0
        ),
        1.0
    );
    assert!(backend.requests().is_empty());
}

#[test]
fn routing_precedence_params_exact_host_and_strip_prefix() {
    let backend = Backend::echo();
    let config = format!(
        "{}upstreams:\n  u:\n    peers: [\"{}\"]\nroutes:\n\
         \x20 - {{ name: api, path: /api, upstream: u, auth: none, strip_prefix: true }}\n\
         \x20 - {{ name: v1, path: /api/v1, upstream: u, auth: none }}\n\
         \x20 - {{ name: user, path: \"/api/v1/users/{{id}}\", upstream: u, auth: none }}\n\
         \x20 - {{ name: exact, path: /ping, exact: true, auth: none, respond: {{ status: 200, body: exact }} }}\n\
         \x20 - {{ name: prefix, path: /ping, auth: none, respond: {{ status: 200, body: prefix }} }}\n\
         \x20 - {{ name: hosted, path: /h, host: api.example.com, auth: none, respond: {{ status: 200, body: hosted }} }}\n\
         \x20 - {{ name: hostless, path: /h, auth: none, respond: {{ status: 200, body: hostless }} }}\n",
        config_head(),
        backend.addr
    );
    let gw = Gateway::start(&config);
    let route_of = |path: &str| {
        gw.get(path, &[]);
        gw.access_log().last().expect("log")["route"]
            .as_str()
            .expect("route")
            .to_string()
    };
    assert_eq!(route_of("/api/v1/users/7"), "user");
    assert_eq!(
        route_of("/api/v1/users/7/orders"),
        "v1",
        "{{param}} matches exactly"
    );
    assert_eq!(route_of("/api/v2/x"), "api");
    assert_eq!(backend.last().target, "/v2/x", "strip_prefix");
    gw.get("/api?q=1", &[]);
    assert_eq!(
        backend.last().target,
        "/?q=1",
        "whole path stripped leaves /, query kept"
    );
    assert_eq!(gw.get("/ping", &[]).text(), "exact");
    assert_eq!(gw.get("/ping/deeper", &[]).text(), "prefix");
    assert_eq!(
        gw.get("/h", &[("host", "API.example.com:8000")]).text(),
        "hosted"
    );
    assert_eq!(
        gw.get("/h", &[("host", "other.example.com")]).text(),
        "hostless"
    );
}

#[test]
fn header_rules_apply_and_the_secret_never_leaks_back() {
    let backend = Backend::start(|_| {
        Answer::json(200, "{}")
            .with_header("x-gateway-secret", SECRET)
            .with_header("server", "leaky/1.0")
            .with_header("x-backend", "yes")
    });
    let config = format!(
        "{}upstreams:\n  u:\n    peers: [\"{}\"]\n    headers: {{ x-gateway-secret: \"{SECRET}\" }}\n\
         routes:\n  - name: r\n    path: /\n    upstream: u\n\
         \x20   request_headers: {{ set: {{ x-tenant: acme }}, remove: [cookie] }}\n\
         \x20   response_headers: {{ set: {{ cache-control: no-store }}, remove: [server] }}\n",
        config_head(),
        backend.addr
    );
    let gw = Gateway::start(&config);
    let resp = gw.get(
        "/",
        &[
            ("x-api-key", KEY),
            ("cookie", "session=1"),
            ("x-tenant", "evil"),
        ],
    );
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("x-gateway-secret"),
        None,
        "secret stripped from the response"
    );
    assert_eq!(resp.header("server"), None);
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    assert_eq!(resp.header("x-backend"), Some("yes"));
    let seen = backend.last();
    assert_eq!(seen.header("cookie"), None);
    assert_eq!(seen.header("x-tenant"), Some("acme"));
}

#[test]
fn hop_by_hop_headers_are_not_forwarded() {
    let (gw, backend) = users_gateway("");
    let raw = format!(
        "GET /users HTTP/1.1\r\nhost: a\r\nx-api-key: {KEY}\r\nconnection: keep-alive, x-private\r\n\
         x-private: 1\r\nkeep-alive: timeout=5\r\nproxy-connection: keep-alive\r\nte: trailers\r\n\r\n"
    );
    let resp = send_raw(gw.addr, raw.as_bytes()).expect("response");
    assert_eq!(resp.status, 200);
    let seen = backend.last();
    for name in ["x-private", "keep-alive", "proxy-connection", "te"] {
        assert_eq!(seen.header(name), None, "{name} forwarded");
    }
}

#[test]
fn post_bodies_stream_through_and_max_body_answers_413() {
    let (gw, backend) = users_gateway("    max_body: 1KiB\n");
    let ok = request(
        gw.addr,
        "POST",
        "/users",
        &[("x-api-key", KEY)],
        &[b'a'; 1000],
    );
    assert_eq!(ok.status, 200);
    assert_eq!(backend.last().body.len(), 1000);

    let too_big = request(
        gw.addr,
        "POST",
        "/users",
        &[("x-api-key", KEY)],
        &[b'a'; 2000],
    );
    assert_eq!(
        (too_big.status, too_big.error_code().as_str()),
        (413, "payload_too_large")
    );
    assert_eq!(
        backend.requests().len(),
        1,
        "a declared oversized body is refused before proxying"
    );

    // Without content-length the body is counted as it streams.
    let mut chunked = format!(
        "POST /users HTTP/1.1\r\nhost: a\r\nx-api-key: {KEY}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..4 {
        chunked.extend_from_slice(format!("{:x}\r\n{}\r\n", 600, "b".repeat(600)).as_bytes());
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let resp = send_raw(gw.addr, &chunked).expect("response");
    assert_eq!(resp.status, 413, "{}", resp.text());
}

#[test]
fn respond_routes_are_answered_by_the_gateway() {
    let config = format!(
        "{}routes:\n  - name: health\n    path: /health\n    exact: true\n    auth: none\n    respond: {{ status: 200, body: ok }}\n",
        config_head()
    );
    let gw = Gateway::start(&config);
    let resp = gw.get("/health", &[]);
    assert_eq!((resp.status, resp.text().as_str()), (200, "ok"));
    assert!(resp.header("x-request-id").is_some());
    assert_eq!(gw.get("/health/x", &[]).status, 404);
}

#[test]
fn keep_alive_reuses_backend_connections() {
    // Every worker thread runs its own current-thread runtime (server.rs) and
    // they share one upstream pool: a connection released by one worker and
    // picked by another must be reused (cloudflare/pingora#998, vendor/patches/0001).
    for threads in ["threads: 1", "threads: 2", "threads: 4"] {
        let backend = Backend::echo();
        let config = users_config(&backend, "").replace("threads: 2", threads);
        let gw = Gateway::start_with_env(&config, &[("GATEWAY_SECRET", SECRET)]);
        for _ in 0..200 {
            assert_eq!(gw.get_with_key("/users").status, 200);
            // A connection returns to the pool just after its answer is sent; a
            // client that sends the next request at once on a busy machine can
            // beat it there and cause a new connection.
            std::thread::sleep(Duration::from_millis(5));
        }
        let opened = backend
            .connections
            .load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(backend.requests().len(), 200);
        assert!(
            opened <= 10,
            "{threads}: 200 requests opened {opened} backend connections"
        );
    }
}

#[test]
fn round_robin_spreads_requests_over_peers() {
    let (a, b) = (Backend::echo(), Backend::echo());
    let config = format!(
        "{}upstreams:\n  u:\n    peers: [\"{}\", \"{}\"]\n    balance: round_robin\nroutes:\n  - {{ name: r, path: /, upstream: u, auth: none }}\n",
        config_head(),
        a.addr,
        b.addr
    );
    let gw = Gateway::start(&config);
    for _ in 0..10 {
        gw.get("/", &[]);
    }
    assert_eq!(a.requests().len(), 5);
    assert_eq!(b.requests().len(), 5);
}

#[test]
fn a_dead_peer_is_retried_on_another_and_all_dead_is_502() {
    let live = Backend::echo();
    let dead = format!("127.0.0.1:{}", free_port());
    let config = format!(
        "{}upstreams:\n  mixed:\n    peers: [\"{dead}\", \"{}\"]\n    retries: 1\n\
         \x20 dead:\n    peers: [\"{dead}\", \"127.0.0.1:{}\"]\n    retries: 1\n\
         routes:\n  - {{ name: mixed, path: /mixed, upstream: mixed, auth: none }}\n\
         \x20 - {{ name: dead, path: /dead, upstream: dead, auth: none }}\n",
        config_head(),
        live.addr,
        free_port()
    );
    let gw = Gateway::start(&config);
    for _ in 0..6 {
        assert_eq!(
            gw.get("/mixed", &[]).status,
            200,
            "the retry reaches the live peer"
        );
    }
    assert_eq!(live.requests().len(), 6);
    let resp = gw.get("/dead", &[]);
    assert_eq!(
        (resp.status, resp.error_code().as_str()),
        (502, "bad_gateway")
    );
    let connect_errors = gw.metric(
        "portcullis_upstream_errors_total{kind=\"connect\",route=\"dead\",upstream=\"dead\"}",
    );
    assert_eq!(connect_errors, 2.0, "both peers were tried");
    let line = gw
        .access_log()
        .into_iter()
        .find(|l| l["route"] == "dead")
        .expect("logged");
    assert_eq!(line["error"], "bad_gateway");
    assert_eq!(line["upstream"], "dead");
}

#[test]
fn a_slow_peer_past_the_read_timeout_is_504() {
    let slow = Backend::start(|_| Answer::json(200, "{}").after(Duration::from_secs(2)));
    let config = format!(
        "{}upstreams:\n  slow:\n    peers: [\"{}\"]\n    timeouts: {{ read: 300ms }}\n\
         routes:\n  - {{ name: slow, path: /, upstream: slow, auth: none }}\n",
        config_head(),
        slow.addr
    );
    let gw = Gateway::start(&config);
    let started = Instant::now();
    let resp = gw.get("/", &[]);
    assert_eq!(
        (resp.status, resp.error_code().as_str()),
        (504, "gateway_timeout")
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        gw.metric(
            "portcullis_upstream_errors_total{kind=\"timeout\",route=\"slow\",upstream=\"slow\"}"
        ),
        1.0
    );
}

#[test]
fn the_route_timeout_bounds_the_whole_request() {
    let slow = Backend::start(|_| Answer::json(200, "{}").after(Duration::from_secs(2)));
    let config = format!(
        "{}upstreams:\n  slow:\n    peers: [\"{}\"]\nroutes:\n  - {{ name: slow, path: /, upstream: slow, auth: none, timeout: 400ms }}\n",
        config_head(),
        slow.addr
    );
    let gw = Gateway::start(&config);
    let started = Instant::now();
    let resp = gw.get("/", &[]);
    assert_eq!(
        (resp.status, resp.error_code().as_str()),
        (504, "gateway_timeout")
    );
    assert!(started.elapsed() < Duration::from_millis(1500));
}

#[test]
fn preserve_host_sends_the_client_host() {
    let (gw, backend) = users_gateway("    preserve_host: true\n");
    gw.get("/users", &[("x-api-key", KEY), ("host", "api.example.com")]);
    assert_eq!(backend.last().header("host"), Some("api.example.com"));
}

#[test]
fn the_access_log_is_one_json_line_per_request_without_secrets() {
    let (gw, _backend) = users_gateway("");
    gw.get("/users/1?token=hush", &[("x-api-key", KEY)]);
    gw.get("/users/1", &[("x-api-key", "wrong-key-value")]);
    let log = gw.access_log();
    assert_eq!(log.len(), 2, "{}", gw.stdout());
    let ok = &log[0];
    assert_eq!(ok["path"], "/users/1", "no query string");
    assert_eq!(ok["route"], "users");
    assert_eq!(ok["consumer"], "web");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["upstream"], "users");
    assert_eq!(ok["upstream_status"], 200);
    assert_eq!(ok["client"], "127.0.0.1");
    assert!(ok["duration_ms"].is_number() && ok["upstream_ms"].is_number());
    assert!(ok["bytes_out"].as_u64().is_some_and(|b| b > 0));
    assert_eq!(ok["error"], serde_json::Value::Null);
    assert_eq!(log[1]["error"], "invalid_api_key");
    let all = format!("{}{}", gw.stdout(), gw.stderr());
    for secret in [KEY, SECRET, "wrong-key-value", "hush"] {
        assert!(!all.contains(secret), "{secret} appeared in the output");
    }
}

#[test]
fn sigterm_lets_in_flight_requests_finish_then_exits_0() {
    let slow =
        Backend::start(|_| Answer::json(200, "{\"done\":true}").after(Duration::from_millis(800)));
    let config = format!(
        "{}upstreams:\n  slow:\n    peers: [\"{}\"]\nroutes:\n  - {{ name: slow, path: /, upstream: slow, auth: none }}\n",
        config_head(),
        slow.addr
    );
    let mut gw = Gateway::start(&config);
    let addr = gw.addr;
    let in_flight = std::thread::spawn(move || get(addr, "/", &[]));
    std::thread::sleep(Duration::from_millis(200));
    let signalled = Instant::now();
    gw.signal("-TERM");
    let resp = in_flight.join().expect("client thread");
    assert_eq!(resp.status, 200, "the in-flight request finished");
    let status = gw
        .wait_exit(Duration::from_secs(5))
        .expect("exited within the grace period");
    assert!(status.success(), "{status}");
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "exited once drained, not after the full grace"
    );
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "listener closed"
    );
}

#[test]
fn config_test_flag_lists_every_error_and_exits_1() {
    let dir = temp_dir("conftest");
    let path = dir.join("bad.yaml");
    std::fs::write(
        &path,
        "listen:\n  - addr: nowhere\nconsumers:\n  - name: web\n    keys: [\"${PC_TEST_KEY}\"]\n\
         routes:\n  - name: r\n    path: /r\n    upstream: missing\n    timeout: 5 parsecs\n",
    )
    .expect("write");
    let out = std::process::Command::new(BIN)
        .args(["--test", "-c"])
        .arg(&path)
        .env("PC_TEST_KEY", "super-secret-key-value")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    assert!(
        stderr.contains(&format!("{file}:2:11: listen[0].addr: expected an address")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{file}:9:15: routes[0].upstream: unknown upstream"
        )),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("{file}:10:14: routes[0].timeout: expected a duration like \"10s\", found \"5 parsecs\"")), "{stderr}");
    assert!(!stderr.contains("super-secret-key-value"));

    let good = dir.join("good.yaml");
    std::fs::write(&good, "listen: [{ addr: \"127.0.0.1:1\" }]\nroutes: [{ name: h, path: /, auth: none, respond: { status: 204 } }]\n")
        .expect("write");
    let out = std::process::Command::new(BIN)
        .args(["-t", "-c"])
        .arg(&good)
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn config_test_lists_decoding_and_build_errors_together() {
    // A bad listener port once stopped the check before peers were resolved,
    // hiding the peer that does not resolve (`.invalid` never does).
    let dir = temp_dir("every-error");
    let path = dir.join("bad.yaml");
    std::fs::write(
        &path,
        "listen:\n  - addr: 127.0.0.1:99999\nupstreams:\n  u:\n\
         \x20   peers: [\"127.0.0.1:70000\", \"backend.invalid:80\"]\n\
         routes:\n  - { name: r, path: /r, upstream: u }\n\
         \x20 - { name: s, path: \"no-slash\", auth: none, respond: { status: 204 } }\n",
    )
    .expect("write");
    let out = check_config(&path, 1024, Duration::from_secs(20));
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let file = path.display().to_string();
    let expected = [
        format!("{file}:2:11: listen[0].addr: expected an address"),
        format!("{file}:5:13: upstreams.u.peers[0]: "),
        format!("{file}:5:32: upstreams.u.peers[1]: "),
        format!("{file}:8:22: routes[1].path: "),
    ];
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), expected.len() + 1, "{}", out.stderr);
    for (line, start) in lines.iter().zip(&expected) {
        assert!(line.starts_with(start.as_str()), "{line:?} vs {start:?}");
    }
    assert!(lines[2].contains("backend.invalid"), "{}", lines[2]);
    assert_eq!(lines[4], format!("{file}: 4 error(s)"));
}

#[test]
fn config_test_refuses_deep_nesting_with_a_position() {
    let dir = temp_dir("deep");
    let path = dir.join("deep.yaml");
    std::fs::write(&path, nested_mappings(5_000)).expect("write");
    let out = check_config(&path, 1024, Duration::from_secs(10));
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let file = path.display().to_string();
    // The root mapping is level 1: the 65th `a:` is one too many (marked at its `:`).
    assert!(
        out.stderr.contains(&format!(
            "{file}:65:66: too deeply nested: more than 64 levels"
        )),
        "{}",
        out.stderr
    );
}

#[test]
fn config_test_refuses_an_alias_bomb_quickly_and_in_little_memory() {
    let dir = temp_dir("bomb");
    let path = dir.join("bomb.yaml");
    std::fs::write(&path, alias_bomb()).expect("write");
    // Capped at 1 GiB and 10 s: unbounded, the expansion needs far more of both.
    let out = check_config(&path, 1024, Duration::from_secs(10));
    assert_eq!(out.code, Some(1), "after {:?}: {}", out.took, out.stderr);
    let file = path.display().to_string();
    assert!(
        out.stderr.contains(&format!("{file}:"))
            && out.stderr.contains(": too many alias expansions"),
        "{}",
        out.stderr
    );
}

#[test]
fn help_and_version() {
    let help = std::process::Command::new(BIN)
        .arg("--help")
        .output()
        .expect("run");
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in ["--conf", "--test", "--daemon", "--upgrade", "demo"] {
        assert!(text.contains(flag), "--help lacks {flag}: {text}");
    }
    let version = std::process::Command::new(BIN)
        .arg("--version")
        .output()
        .expect("run");
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("portcullis {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn the_demo_serves_users_and_orders_behind_the_gateway() {
    let listen = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let dir = temp_dir("demo");
    let mut child = std::process::Command::new(BIN)
        .args(["demo", "--listen", &listen, "--admin", &admin])
        .stdout(std::fs::File::create(dir.join("out")).expect("file"))
        .stderr(std::fs::File::create(dir.join("err")).expect("file"))
        .spawn()
        .expect("start demo");
    let addr = listen.parse().expect("addr");
    let admin = admin.parse().expect("addr");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !send_raw(admin, b"GET /readyz HTTP/1.1\r\nhost: a\r\n\r\n")
        .is_ok_and(|r| r.status == 200)
    {
        assert!(Instant::now() < deadline, "demo not ready");
        std::thread::sleep(Duration::from_millis(25));
    }
    let key = ("x-api-key", "pk_demo_portcullis");
    let user = get(addr, "/users/1", &[key]);
    assert_eq!(user.status, 200);
    assert_eq!(user.json()["name"], "Ada Lovelace");
    let orders = get(addr, "/orders?user_id=1", &[key]);
    assert_eq!(orders.json().as_array().map(Vec::len), Some(2));
    // The seed scenario users of other gateways try first.
    let order = get(addr, "/orders/1", &[key]);
    assert_eq!(order.status, 200, "{}", order.text());
    assert_eq!(order.json()["user_id"], 1);
    let overview = get(addr, "/overview/users/1", &[key]);
    assert_eq!(overview.status, 200, "{}", overview.text());
    assert_eq!(overview.json()["user"]["name"], "Ada Lovelace");
    assert_eq!(overview.json()["orders"].as_array().map(Vec::len), Some(2));
    assert_eq!(get(addr, "/users/1", &[]).status, 401);

    let printed = std::fs::read_to_string(dir.join("out")).expect("stdout");
    assert!(
        printed.contains("pk_demo_portcullis") && printed.contains("curl"),
        "{printed}"
    );
    let users_addr = printed
        .lines()
        .find_map(|l| l.trim().strip_prefix("user service"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|url| url.strip_prefix("http://"))
        .expect("the user service address is printed");
    let direct = get(users_addr.parse().expect("addr"), "/users/1", &[]);
    assert_eq!(
        direct.status, 403,
        "the backend refuses requests without the gateway secret"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_dead_pooled_connection_is_retried_on_a_fresh_one() {
    // The backend closes every connection after one answer without saying so:
    // each pooled connection the gateway reuses turns out dead.
    let backend = Backend::start(|_| {
        let mut answer = Answer::json(200, "{}");
        answer.then_close = true;
        answer
    });
    let config = one_route_config(
        &[backend.addr],
        "    balance: least_connections\n",
        "auth: none",
    );
    let gw = Gateway::start(&config);
    for i in 0..5 {
        assert_eq!(gw.get("/", &[]).status, 200, "request {i}");
    }
}

#[test]
fn the_route_timeout_also_bounds_a_trickling_body() {
    let trickle = Backend::start(|_| {
        let mut answer = Answer::json(200, "0123456789");
        answer.trickle = Some(Duration::from_millis(200));
        answer
    });
    let config = format!(
        "{}upstreams:\n  t:\n    peers: [\"{}\"]\nroutes:\n  - {{ name: t, path: /, upstream: t, auth: none, timeout: 500ms }}\n",
        config_head(),
        trickle.addr
    );
    let gw = Gateway::start(&config);
    let started = Instant::now();
    let raw = send_raw(
        gw.addr,
        b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    if let Ok(resp) = raw {
        assert!(
            resp.body.len() < 10,
            "the whole body arrived past the deadline"
        );
    }
    let line = gw.access_log().pop().expect("logged");
    assert_eq!(line["error"], "gateway_timeout");
}

#[test]
fn informational_answers_are_passed_over_by_the_upstream_timing() {
    let backend = Backend::start(|_| {
        let mut answer = Answer::json(200, "{}");
        answer.early_hints = true;
        answer
    });
    let config = one_route_config(&[backend.addr], "", "auth: none");
    let gw = Gateway::start(&config);
    assert_eq!(gw.get("/", &[]).status, 200);
    assert_eq!(
        gw.metric_eventually(
            "portcullis_upstream_duration_seconds_count{route=\"r\",upstream=\"u\"}",
            1.0
        ),
        1.0
    );
    assert_eq!(
        gw.access_log().pop().expect("logged")["upstream_status"],
        200
    );
}

#[test]
fn every_x_forwarded_for_line_of_a_trusted_proxy_counts() {
    let backend = Backend::echo();
    let config =
        one_route_config(&[backend.addr], "", "auth: none") + "trusted_proxies: [127.0.0.0/8]\n";
    let gw = Gateway::start(&config);
    let raw = b"GET / HTTP/1.1\r\nhost: a\r\nx-forwarded-for: 6.6.6.6\r\nx-forwarded-for: 198.51.100.7\r\nconnection: close\r\n\r\n";
    assert_eq!(send_raw(gw.addr, raw).expect("response").status, 200);
    assert_eq!(
        backend.last().header("x-forwarded-for"),
        Some("6.6.6.6, 198.51.100.7, 127.0.0.1")
    );
    assert_eq!(
        gw.access_log().pop().expect("logged")["client"],
        "198.51.100.7"
    );
}

#[test]
fn content_length_with_transfer_encoding_is_refused_and_closed() {
    let (gw, backend) = users_gateway("");
    let raw = format!(
        "POST /users HTTP/1.1\r\nhost: a\r\nx-api-key: {KEY}\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /users/smuggled HTTP/1.1\r\nhost: a\r\n\r\n"
    );
    let resp = send_raw(gw.addr, raw.as_bytes()).expect("response");
    assert_eq!(
        (resp.status, resp.error_code().as_str()),
        (400, "bad_request")
    );
    assert_eq!(resp.header("connection"), Some("close"));
    std::thread::sleep(Duration::from_millis(200));
    assert!(backend.requests().is_empty(), "nothing reached the backend");
}

#[test]
fn debug_logging_never_prints_the_key_or_the_secret() {
    let backend = Backend::echo();
    let secret = format!("    headers: {{ x-gateway-secret: \"{SECRET}\" }}\n");
    let config =
        one_route_config(&[backend.addr], &secret, "") + "log: { level: trace, format: text }\n";
    let gw = Gateway::start(&config);
    assert_eq!(
        gw.get("/?q=query-secret", &[("x-api-key", KEY)]).status,
        200
    );
    assert_eq!(gw.get("/", &[("x-api-key", "wrong-key-7f3a")]).status, 401);
    std::thread::sleep(Duration::from_millis(200));
    let all = format!("{}{}", gw.stdout(), gw.stderr());
    assert!(
        all.contains("DEBUG") || all.contains("TRACE") || all.contains("INFO"),
        "the log ran: {all}"
    );
    for secret in [KEY, SECRET, "wrong-key-7f3a", "query-secret"] {
        assert!(!all.contains(secret), "{secret} appeared in the logs");
    }
}

/// What a backend's answer says about its own connection: headers its
/// `connection` names, and an `upgrade` offer on a plain answer.
const NAMED_IN_CONNECTION: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\
connection: x-internal, keep-alive\r\nkeep-alive: timeout=5\r\nx-internal: 10.0.0.7\r\n\
upgrade: h2c\r\nx-kept: 1\r\n\r\nok";

#[test]
fn what_the_upstreams_connection_header_names_never_reaches_the_client() {
    let backend = RawBackend::start(|_| NAMED_IN_CONNECTION.to_vec());
    let gw = Gateway::start(&one_route_config(&[backend.addr], "", "auth: none"));
    let resp = gw.get("/", &[]);
    assert_eq!((resp.status, resp.text().as_str()), (200, "ok"));
    for gone in ["x-internal", "keep-alive", "upgrade"] {
        assert_eq!(resp.header(gone), None, "{gone} reached the client");
    }
    assert_eq!(resp.header("x-kept"), Some("1"));
}

#[test]
fn an_upstream_framing_other_than_chunked_is_a_502_at_once() {
    // Each body would be read to the close that never comes.
    let backend = RawBackend::start(|head| {
        let te = match head.split_whitespace().nth(1) {
            Some("/identity") => "transfer-encoding: identity",
            Some("/chunked-identity") => "transfer-encoding: chunked, identity",
            _ => "transfer-encoding: chunked\r\ntransfer-encoding: identity",
        };
        format!("HTTP/1.1 200 OK\r\n{te}\r\n\r\n5\r\nhello\r\n0\r\n\r\n").into_bytes()
    });
    let gw = Gateway::start(&one_route_config(&[backend.addr], "", "auth: none"));
    for path in ["/identity", "/chunked-identity", "/two"] {
        let started = Instant::now();
        let resp = gw.get(path, &[]);
        assert_eq!(
            (resp.status, resp.error_code().as_str()),
            (502, "bad_gateway"),
            "{path}"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{path}");
    }
    let log = gw.access_log();
    assert!(
        log.iter()
            .all(|l| l["status"] == 502 && l["error"] == "bad_gateway"),
        "{log:?}"
    );
}

#[test]
fn a_repeated_equal_content_length_is_forwarded_once() {
    let backend = RawBackend::start(|_| b"HTTP/1.1 204 No Content\r\n\r\n".to_vec());
    let gw = Gateway::start(&one_route_config(&[backend.addr], "", "auth: none"));
    let raw = b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ncontent-length: 3\r\nconnection: close\r\n\r\nabc";
    assert_eq!(send_raw(gw.addr, raw).expect("response").status, 204);
    let heads = backend.heads();
    let head = heads.last().expect("the backend got the request");
    let lengths = head
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("content-length:"))
        .count();
    assert_eq!(lengths, 1, "{head}");
}

#[test]
fn a_lone_upgrade_header_is_not_turned_into_an_upgrade() {
    let (gw, backend) = users_gateway("");
    let raw = format!(
        "GET /users HTTP/1.1\r\nhost: a\r\nx-api-key: {KEY}\r\nupgrade: websocket\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
    );
    let resp = send_raw(gw.addr, raw.as_bytes()).expect("response");
    assert_eq!(resp.status, 200);
    let seen = backend.last();
    assert_eq!(seen.header("upgrade"), None);
    assert_eq!(seen.header("connection"), None);
}
