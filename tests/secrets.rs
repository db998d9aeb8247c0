//! Keys and secrets never appear in anything the gateway writes: logs at debug,
//! access log, metrics, OpenAPI, error bodies and headers, config errors from
//! `--test` and from a reload, Redis store errors, and the shutdown. (`.ci/run`
//! also greps every gateway log of the whole test run for the shared test key
//! and secret.)

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

const REDIS_PASSWORD: &str = "redis-pw-5c81d0";
const OTHER_KEY: &str = "other-key-19e4b2";

#[test]
fn no_output_of_the_gateway_holds_a_key_or_a_secret() {
    // The backend echoes the secret back in a header; the gateway must drop it.
    let backend = Backend::start(|_| {
        Answer::json(200, "{\"ok\":true}").with_header("x-gateway-secret", SECRET)
    });
    let dead = free_port();
    let config = format!(
        "{head}log: {{ level: debug, format: json }}\n\
         upstreams:\n  u:\n    peers: [\"{peer}\"]\n    headers: {{ x-gateway-secret: \"${{GATEWAY_SECRET}}\" }}\n\
         \x20 dead:\n    peers: [\"127.0.0.1:{dead}\"]\n    headers: {{ x-gateway-secret: \"${{GATEWAY_SECRET}}\" }}\n\
         routes:\n  - {{ name: r, path: /r, upstream: u, rate_limit: {{ requests: 1000, per: 1s }} }}\n\
         \x20 - {{ name: down, path: /down, upstream: dead }}\n\
         rate_limit:\n  store: redis\n  on_store_error: allow\n  redis: {{ url: \"redis://:{REDIS_PASSWORD}@127.0.0.1:{dead}/0\", timeout: 50ms }}\n",
        head = config_head(),
        peer = backend.addr,
    );
    let env = [("GATEWAY_SECRET", SECRET), ("API_KEY", KEY)];
    let gw = Gateway::start_with_env(&config, &env);
    let mut seen = String::new();
    let mut keep = |resp: Response| {
        seen.push_str(&format!("{:?}\n{}\n", resp.headers, resp.text()));
        resp.status
    };

    assert_eq!(keep(gw.get("/r/1", &[("x-api-key", KEY)])), 200);
    let query_key = format!("/r/1?api_key={KEY}&token={SECRET}");
    assert_eq!(keep(gw.get(&query_key, &[("x-api-key", KEY)])), 200);
    assert_eq!(keep(gw.get("/r/1", &[("x-api-key", OTHER_KEY)])), 401);
    assert_eq!(keep(gw.get("/down", &[("x-api-key", KEY)])), 502);
    assert_eq!(keep(gw.get("/nowhere", &[("x-api-key", KEY)])), 404);
    // A client forging the secret does not get it echoed anywhere either.
    assert_eq!(
        keep(gw.get("/r/1", &[("x-api-key", KEY), ("x-gateway-secret", SECRET)])),
        200
    );
    // Refused heads that carry the key: malformed, and too large.
    let bare_lf = format!("GET /r/1 HTTP/1.1\nhost: a\nx-api-key: {KEY}\n\n");
    assert_eq!(
        keep(send_raw(gw.addr, bare_lf.as_bytes()).expect("400")),
        400
    );
    let huge = format!(
        "GET /r/1?k={KEY} HTTP/1.1\r\nhost: a\r\nx-api-key: {KEY}\r\nx-pad: {}\r\n\r\n",
        "p".repeat(40_000)
    );
    assert_eq!(keep(send_raw(gw.addr, huge.as_bytes()).expect("431")), 431);

    // Config errors over reload and --test, with the secrets where they do not
    // belong. They come from `${VAR}`s as SPEC §3 shows; a value written
    // literally in the file is quoted back like any other ("found \"5 parsecs\"").
    let bad = format!(
        "{head}upstreams:\n  u:\n    peers: [\"{peer}\"]\n    headers: {{ x-gateway-secret: [\"${{GATEWAY_SECRET}}\"], \"bad name\": \"${{GATEWAY_SECRET}}\", x-ok: \"${{GATEWAY_SECRET}}\\u0001\" }}\n\
         consumers2: \"${{API_KEY}}\"\nroutes:\n  - {{ name: r, path: /r, upstream: u, auth: \"${{API_KEY}}\", timeout: \"${{API_KEY}}\" }}\n",
        head = config_head(),
        peer = backend.addr,
    );
    gw.rewrite_config(&bad);
    assert_eq!(keep(gw.post_reload()), 400);
    let test_run = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("-c")
        .arg(&gw.config_path)
        .arg("--test")
        .envs(env)
        .output()
        .expect("--test runs");
    assert_eq!(test_run.status.code(), Some(1));
    seen.push_str(&String::from_utf8_lossy(&test_run.stdout));
    seen.push_str(&String::from_utf8_lossy(&test_run.stderr));

    seen.push_str(&gw.metrics());
    seen.push_str(&get(gw.admin, "/openapi.json", &[]).text());
    std::thread::sleep(Duration::from_millis(200));
    gw.signal("-TERM");
    std::thread::sleep(Duration::from_millis(600));
    seen.push_str(&gw.stdout());
    seen.push_str(&gw.stderr());

    // The run did produce what it was meant to: store errors, config errors, access lines.
    assert!(seen.contains("invalid_config"), "{seen}");
    assert!(seen.contains("\"error\":\"bad_gateway\""), "{seen}");
    assert!(seen.contains("portcullis_rate_limit_store_errors_total{store=\"redis\"}"));
    assert!(
        gw.stderr().contains("rate limit store"),
        "a store error was logged"
    );
    assert!(
        seen.contains("routes[0].timeout"),
        "the reload errors were logged"
    );
    for secret in [KEY, SECRET, REDIS_PASSWORD, OTHER_KEY] {
        assert!(!seen.contains(secret), "{secret} appeared in:\n{seen}");
    }
}
