//! CORS and the docs page (SPEC §8.4), black-box: the real binary in front of
//! a real loopback backend, spoken to over HTTP/1.1 as curl would. Each CORS
//! rule of the Fetch standard the gateway answers for has a test here; the
//! browser's own view is tests/browser.rs.

mod common;

use common::*;
use std::process::Command;

const APP: &str = "https://app.example.com";
const EVIL: &str = "https://evil.example.com";

/// A `cors` route `/api` (GET, POST; rate-limited to 3 a minute per
/// consumer), a `cors` route over any origin `/open`, a credentialed one
/// `/cred`, and `/plain` without `cors`; `extra` is appended.
fn config(backend: &Backend, extra: &str) -> String {
    format!(
        "{head}upstreams:\n  u: {{ peers: [\"{peer}\"] }}\nroutes:\n\
         \x20 - name: api\n    path: /api\n    methods: [GET, POST]\n    upstream: u\n\
         \x20   rate_limit: {{ requests: 3, per: 1m }}\n\
         \x20   cors:\n      origins: [\"{APP}\", \"http://127.0.0.1:3000\"]\n\
         \x20     headers: [x-api-key, content-type]\n\
         \x20     expose_headers: [x-request-id, ratelimit-remaining]\n\
         \x20     max_age: 10m\n\
         \x20 - {{ name: open, path: /open, upstream: u, auth: none, cors: {{ origins: [\"*\"], headers: [\"*\"] }} }}\n\
         \x20 - {{ name: cred, path: /cred, upstream: u, cors: {{ origins: [\"{APP}\"], credentials: true, headers: [x-api-key] }} }}\n\
         \x20 - {{ name: plain, path: /plain, upstream: u }}\n{extra}",
        head = config_head(),
        peer = backend.addr,
    )
}

fn preflight(gw: &Gateway, path: &str, origin: &str, method: &str, headers: &str) -> Response {
    let mut sent = vec![
        ("origin", origin),
        ("access-control-request-method", method),
    ];
    if !headers.is_empty() {
        sent.push(("access-control-request-headers", headers));
    }
    request(gw.addr, "OPTIONS", path, &sent, b"")
}

/// A backend whose answers carry CORS headers of their own.
fn backend() -> Backend {
    Backend::start(|_| {
        Answer::json(200, "{\"ok\":true}")
            .with_header("access-control-allow-origin", "*")
            .with_header("vary", "accept-encoding")
    })
}

#[test]
fn a_preflight_is_answered_by_the_gateway_without_key_or_upstream() {
    let backend = backend();
    let gw = Gateway::start(&config(&backend, ""));
    let resp = preflight(&gw, "/api/users/1", APP, "POST", "X-Api-Key, content-type");
    assert_eq!(resp.status, 204, "{resp:?}");
    assert_eq!(resp.header("access-control-allow-origin"), Some(APP));
    assert_eq!(
        resp.header("access-control-allow-methods"),
        Some("GET, POST")
    );
    assert_eq!(
        resp.header("access-control-allow-headers"),
        Some("x-api-key, content-type")
    );
    assert_eq!(resp.header("access-control-max-age"), Some("600"));
    assert_eq!(resp.header("access-control-allow-credentials"), None);
    assert_eq!(resp.header("vary"), Some("origin"));
    assert_eq!(resp.header("content-length"), None, "a 204 has none");
    assert!(resp.body.is_empty());
    // Credentialed: the origin itself and allow-credentials.
    let resp = preflight(&gw, "/cred", APP, "GET", "x-api-key");
    assert_eq!(resp.status, 204, "{resp:?}");
    assert_eq!(resp.header("access-control-allow-origin"), Some(APP));
    assert_eq!(
        resp.header("access-control-allow-credentials"),
        Some("true")
    );
    // Any origin, any header: `*`, and the headers asked for named back.
    let resp = preflight(
        &gw,
        "/open",
        "http://localhost:5173",
        "PATCH",
        "authorization, x-b",
    );
    assert_eq!(resp.status, 204, "{resp:?}");
    assert_eq!(resp.header("access-control-allow-origin"), Some("*"));
    assert_eq!(resp.header("access-control-allow-methods"), Some("PATCH"));
    assert_eq!(
        resp.header("access-control-allow-headers"),
        Some("authorization, x-b")
    );
    assert!(
        backend.requests().is_empty(),
        "no preflight reaches the upstream: {:?}",
        backend.requests()
    );
    let log = gw.access_log();
    let preflights: Vec<_> = log.iter().filter(|l| l["method"] == "OPTIONS").collect();
    assert_eq!(preflights.len(), 3, "{log:?}");
    assert_eq!(preflights[0]["route"], "api");
    assert_eq!(preflights[0]["status"], 204);
    assert!(preflights[0]["upstream"].is_null());
    assert_eq!(
        gw.metric_eventually(
            "portcullis_requests_total{method=\"OPTIONS\",route=\"api\",status=\"204\"}",
            1.0
        ),
        1.0
    );
}

#[test]
fn a_preflight_for_a_disallowed_origin_method_or_header_is_refused() {
    let backend = backend();
    let gw = Gateway::start(&config(&backend, ""));
    for (origin, method, headers, why) in [
        (EVIL, "GET", "", "origin"),
        ("https://app.example.com.evil.net", "GET", "", "origin"),
        ("http://app.example.com", "GET", "", "origin (scheme)"),
        ("null", "GET", "", "origin (null)"),
        (APP, "PUT", "", "method"),
        (APP, "POST", "x-api-key, x-debug", "header"),
        (APP, "POST", "authorization", "header"),
    ] {
        let resp = preflight(&gw, "/api/x", origin, method, headers);
        assert_eq!(resp.status, 403, "{why}: {resp:?}");
        assert_eq!(resp.error_code(), "cors_rejected", "{why}");
        assert_eq!(
            resp.header("access-control-allow-origin"),
            None,
            "{why}: a refused preflight allows nothing"
        );
        assert_eq!(resp.header("access-control-allow-methods"), None, "{why}");
    }
    assert!(backend.requests().is_empty());
}

#[test]
fn a_preflight_comes_before_the_method_check_and_auth() {
    let backend = backend();
    let gw = Gateway::start(&config(&backend, ""));
    // The route takes GET and POST, not OPTIONS; no key is sent.
    let plain_options = request(gw.addr, "OPTIONS", "/api", &[("origin", APP)], b"");
    assert_eq!(plain_options.status, 405, "no request method: no preflight");
    assert_eq!(plain_options.error_code(), "method_not_allowed");
    let resp = preflight(&gw, "/api", APP, "GET", "x-api-key");
    assert_eq!(resp.status, 204, "not 405, not 401: {resp:?}");
    // A method no route on the path takes: the path's cors route refuses it
    // as CORS, not as 405.
    let resp = preflight(&gw, "/api", APP, "DELETE", "");
    assert_eq!(resp.status, 403);
    assert_eq!(resp.error_code(), "cors_rejected");
    // A route without cors: an OPTIONS preflight is an ordinary request
    // (here: a key is needed).
    let resp = preflight(&gw, "/plain", APP, "GET", "");
    assert_eq!(resp.status, 401);
    assert_eq!(resp.header("access-control-allow-origin"), None);
    // The preflight does not spend the rate limit (3 a minute).
    for _ in 0..5 {
        assert_eq!(preflight(&gw, "/api", APP, "GET", "").status, 204);
    }
    let resp = get(gw.addr, "/api", &[("x-api-key", KEY), ("origin", APP)]);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("ratelimit-remaining"), Some("2"));
    assert!(
        backend.requests().iter().all(|r| r.method == "GET"),
        "{:?}",
        backend.requests()
    );
}

#[test]
fn an_actual_request_from_an_allowed_origin_can_be_read() {
    let backend = backend();
    let gw = Gateway::start(&config(&backend, ""));
    let resp = get(gw.addr, "/api/x", &[("x-api-key", KEY), ("origin", APP)]);
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(
        resp.header("access-control-allow-origin"),
        Some(APP),
        "the route's policy, not the upstream's `*`"
    );
    assert_eq!(
        resp.header("access-control-expose-headers"),
        Some("x-request-id, ratelimit-remaining")
    );
    assert_eq!(resp.header("vary"), Some("accept-encoding, origin"));
    assert_eq!(resp.header("access-control-allow-credentials"), None);
    // The origin header reaches the upstream as any other header.
    assert_eq!(backend.last().header("origin"), Some(APP));

    let any = get(gw.addr, "/open", &[("origin", "http://localhost:5173")]);
    assert_eq!(any.header("access-control-allow-origin"), Some("*"));
    let cred = get(gw.addr, "/cred", &[("x-api-key", KEY), ("origin", APP)]);
    assert_eq!(cred.header("access-control-allow-origin"), Some(APP));
    assert_eq!(
        cred.header("access-control-allow-credentials"),
        Some("true")
    );
}

#[test]
fn a_disallowed_origin_gets_no_allow_origin() {
    let backend = backend();
    let gw = Gateway::start(&config(&backend, ""));
    let resp = get(gw.addr, "/api/x", &[("x-api-key", KEY), ("origin", EVIL)]);
    assert_eq!(
        resp.status, 200,
        "the gateway answers; the browser hides it"
    );
    assert_eq!(resp.header("access-control-allow-origin"), None);
    assert_eq!(resp.header("access-control-expose-headers"), None);
    assert_eq!(resp.header("vary"), Some("accept-encoding, origin"));
    // Without an origin (not a browser's cross-origin call): no CORS headers,
    // and the upstream's own are dropped on a cors route.
    let resp = get(gw.addr, "/api/x", &[("x-api-key", KEY)]);
    assert_eq!(resp.header("access-control-allow-origin"), None);
    // A route without cors leaves the upstream's headers alone.
    let resp = get(gw.addr, "/plain", &[("x-api-key", KEY), ("origin", EVIL)]);
    assert_eq!(resp.header("access-control-allow-origin"), Some("*"));
    assert_eq!(resp.header("vary"), Some("accept-encoding"));
}

#[test]
fn the_gateways_own_refusals_carry_cors_headers() {
    let backend = backend();
    let gw = Gateway::start(&config(&backend, ""));
    let from_app = |method: &str, path: &str, key: Option<&str>| {
        let mut headers = vec![("origin", APP)];
        if let Some(key) = key {
            headers.push(("x-api-key", key));
        }
        request(gw.addr, method, path, &headers, b"")
    };
    let mut seen = Vec::new();
    for (resp, code) in [
        (from_app("GET", "/api", None), "missing_api_key"),
        (from_app("GET", "/api", Some("wrong")), "invalid_api_key"),
        (from_app("PUT", "/api", Some(KEY)), "method_not_allowed"),
    ] {
        assert_eq!(resp.error_code(), code);
        assert_eq!(
            resp.header("access-control-allow-origin"),
            Some(APP),
            "{code}"
        );
        assert_eq!(
            resp.header("access-control-expose-headers"),
            Some("x-request-id, ratelimit-remaining"),
            "{code}"
        );
        assert_eq!(resp.header("vary"), Some("origin"), "{code}");
        seen.push(code);
    }
    // Over the limit (3 a minute): the 429 can be read, retry-after with it.
    let mut last = from_app("GET", "/api", Some(KEY));
    for _ in 0..4 {
        last = from_app("GET", "/api", Some(KEY));
    }
    assert_eq!(last.error_code(), "rate_limited");
    assert_eq!(last.header("access-control-allow-origin"), Some(APP));
    assert_eq!(last.header("ratelimit-remaining"), Some("0"));
    // No route matches: no route, no policy, no CORS headers.
    let none = from_app("GET", "/nowhere", None);
    assert_eq!(none.error_code(), "no_route");
    assert_eq!(none.header("access-control-allow-origin"), None);
    // A disallowed origin's refusal: no allow-origin.
    let evil = request(gw.addr, "GET", "/api", &[("origin", EVIL)], b"");
    assert_eq!(evil.error_code(), "missing_api_key");
    assert_eq!(evil.header("access-control-allow-origin"), None);
}

/// `--test` on a config; its stderr.
fn check(config: &str) -> (bool, String) {
    let dir = temp_dir("cors-config");
    let file = dir.join("gateway.yaml");
    std::fs::write(&file, config).expect("write");
    let out = Command::new(BIN)
        .arg("-c")
        .arg(&file)
        .arg("--test")
        .output()
        .expect("run --test");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_cors_and_docs_settings_are_config_errors_with_positions() {
    let (ok, errors) = check(
        "listen: [{ addr: \"127.0.0.1:8000\" }]\n\
         upstreams: { u: { peers: [\"127.0.0.1:8001\"] } }\n\
         routes:\n\
         \x20 - name: a\n    path: /a\n    methods: [GET]\n    upstream: u\n    cors:\n\
         \x20     origins: [\"*\"]\n\
         \x20     credentials: true\n\
         \x20 - name: b\n    path: /b\n    upstream: u\n    cors:\n\
         \x20     origins: [\"https://app.example.com/app\"]\n\
         \x20     headers: [\"x api key\"]\n\
         \x20     methods: [FETCH!]\n\
         docs: { path: / }\n",
    );
    assert!(!ok);
    let lines: Vec<&str> = errors
        .lines()
        .filter(|l| l.contains(".yaml:") && !l.contains("error(s)"))
        .collect();
    assert_eq!(lines.len(), 5, "{errors}");
    assert!(lines[0].contains(":10:20: routes[0].cors.credentials: `credentials: true` cannot go with `origins: [\"*\"]`"), "{errors}");
    assert!(
        lines[1].contains(":15:17: routes[1].cors.origins[0]: an origin has no path"),
        "{errors}"
    );
    assert!(
        lines[2].contains(
            ":16:17: routes[1].cors.headers[0]: expected a header name, found \"x api key\""
        ),
        "{errors}"
    );
    assert!(
        lines[3].contains(":17:17: routes[1].cors.methods[0]: expected an upper-case HTTP method"),
        "{errors}"
    );
    assert!(
        lines[4].contains(":18:15: docs.path: the docs page cannot take \"/\""),
        "{errors}"
    );
}

#[test]
fn the_docs_page_is_on_admin_and_at_docs_path_before_every_route() {
    let backend = backend();
    // A catch-all route `/` that needs a key: docs.path still wins.
    let gw = Gateway::start(&format!(
        "{}docs: {{ path: /api/docs/ }}\n",
        one_route_config(&[backend.addr], "", "")
    ));
    for (addr, base) in [(gw.admin, "/docs"), (gw.addr, "/api/docs")] {
        let page = get(addr, base, &[]);
        assert_eq!(page.status, 200, "{base}: {page:?}");
        assert_eq!(
            page.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        let html = page.text();
        assert!(
            html.contains(&format!("src=\"{base}/swagger-ui-bundle.js\"")),
            "{html}"
        );
        assert!(
            !html.contains("https://") && !html.contains("http://"),
            "{html}"
        );
        let bundle = get(addr, &format!("{base}/swagger-ui-bundle.js"), &[]);
        assert_eq!(bundle.status, 200);
        assert!(bundle.body.len() > 1_000_000);
        assert_eq!(
            get(addr, &format!("{base}/swagger-ui.css"), &[]).status,
            200
        );
        assert_eq!(get(addr, &format!("{base}/init.js"), &[]).status, 200);
        let doc = get(addr, &format!("{base}/openapi.json"), &[]).json();
        assert!(doc["paths"]["/"]["get"].is_object(), "{doc}");
        assert_eq!(get(addr, &format!("{base}/nothing"), &[]).status, 404);
    }
    // The public page's document points at the public listener itself; the
    // admin page's at the public listener by address.
    let public = get(gw.addr, "/api/docs/openapi.json", &[]).json();
    assert_eq!(public["servers"][0]["url"], "/");
    let admin = get(gw.admin, "/openapi.json", &[]).json();
    assert_eq!(admin["servers"][0]["url"], format!("http://{}", gw.addr));
    // Only GET and HEAD; other paths are the route's (which wants a key).
    let post = request(gw.addr, "POST", "/api/docs", &[], b"");
    assert_eq!(post.error_code(), "method_not_allowed");
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    assert_eq!(
        get(gw.addr, "/api/docsX", &[]).error_code(),
        "missing_api_key"
    );
    assert_eq!(get(gw.addr, "/docs", &[]).error_code(), "missing_api_key");
    assert!(backend.requests().is_empty());
}

#[test]
fn without_docs_path_the_public_listener_has_no_docs_page() {
    let backend = backend();
    let gw = Gateway::start(&one_route_config(&[backend.addr], "", "auth: none"));
    let resp = get(gw.addr, "/docs", &[]);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(backend.last().target, "/docs", "the route's, proxied");
    assert_eq!(get(gw.admin, "/docs", &[]).status, 200);
}

#[test]
fn the_reference_config_shows_cors_and_docs_and_is_valid() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/gateway.yaml");
    let text = std::fs::read_to_string(file).expect("conf/gateway.yaml");
    assert!(text.contains("\n    cors:\n") && text.contains("\ndocs:\n"));
    let out = Command::new(BIN)
        .args(["-c", file, "--test"])
        .env("WEB_API_KEY", "reference-key")
        .env("GATEWAY_SECRET", "reference-secret")
        .output()
        .expect("run --test");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_reload_brings_in_a_new_cors_policy_and_docs_path() {
    let backend = backend();
    let plain = one_route_config(&[backend.addr], "", "");
    let gw = Gateway::start(&plain);
    assert_eq!(
        preflight(&gw, "/x", APP, "GET", "x-api-key").status,
        401,
        "no cors yet: an ordinary OPTIONS, which needs a key"
    );
    let with_cors = one_route_config(
        &[backend.addr],
        "",
        &format!("cors: {{ origins: [\"{APP}\"], headers: [x-api-key] }}"),
    );
    gw.rewrite_config(&format!("{with_cors}docs: {{ path: /docs }}\n"));
    assert_eq!(gw.post_reload().status, 200);
    let resp = preflight(&gw, "/x", APP, "GET", "x-api-key");
    assert_eq!(resp.status, 204, "{resp:?}");
    assert_eq!(resp.header("access-control-allow-origin"), Some(APP));
    assert_eq!(get(gw.addr, "/docs", &[]).status, 200);
    assert!(backend.requests().is_empty());
}
