//! Hot reload, black-box: SIGHUP and `POST /reload` against the real binary
//! while real clients keep sending.

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One upstream `u` over `backend`, route `users` on `/users`, plus `extra_routes`.
fn config(backend: &Backend, extra_routes: &str) -> String {
    format!(
        "{head}upstreams:\n  u:\n    peers: [\"{peer}\"]\n\
         routes:\n  - {{ name: users, path: /users, upstream: u }}\n{extra_routes}",
        head = config_head(),
        peer = backend.addr,
    )
}

const ORDERS_ROUTE: &str = "  - { name: orders, path: /orders, upstream: u }\n";

fn reloads(gw: &Gateway, result: &str) -> f64 {
    gw.metric(&format!(
        "portcullis_config_reloads_total{{result=\"{result}\"}}"
    ))
}

/// Waits until `probe` holds (a reload by signal is asynchronous).
fn eventually(what: &str, probe: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !probe() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sighup_adds_a_route_under_load_and_loses_no_request() {
    let backend = Backend::echo();
    let gw = Arc::new(Gateway::start(&config(&backend, "")));
    assert_eq!(reloads(&gw, "ok"), 0.0, "exported from zero");
    assert_eq!(gw.get_with_key("/orders").status, 404);

    let halfway = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (gw, halfway) = (gw.clone(), halfway.clone());
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                for i in 0..200 {
                    if c == 0 && i == 100 {
                        halfway.store(true, Ordering::SeqCst);
                    }
                    let resp = gw.get_with_key(&format!("/users/{c}-{i}"));
                    if resp.status != 200 {
                        failures.push((i, resp.status, resp.text()));
                    }
                }
                failures
            })
        })
        .collect();
    eventually("clients halfway", || halfway.load(Ordering::SeqCst));
    gw.rewrite_config(&config(&backend, ORDERS_ROUTE));
    gw.signal("-HUP");
    eventually("the reload counted", || reloads(&gw, "ok") == 1.0);
    for client in clients {
        let failures = client.join().expect("client thread");
        assert!(failures.is_empty(), "failed during reload: {failures:?}");
    }
    assert_eq!(
        backend.requests().len(),
        800,
        "every request reached the backend"
    );
    assert_eq!(
        gw.get_with_key("/orders/1").status,
        200,
        "the new route serves"
    );
    assert!(
        gw.stderr().contains("reload: configuration from"),
        "{}",
        gw.stderr()
    );
}

#[test]
fn an_invalid_file_changes_nothing_and_is_reported() {
    let backend = Backend::echo();
    let gw = Gateway::start(&config(&backend, ""));
    let broken = config(
        &backend,
        "  - { name: orders, path: /orders, upstream: missing, timeout: 5 parsecs }\n",
    );
    gw.rewrite_config(&broken);
    gw.signal("-HUP");
    eventually("the failure counted", || reloads(&gw, "error") == 1.0);
    assert_eq!(gw.get_with_key("/users/1").status, 200, "old config serves");
    assert_eq!(
        gw.get_with_key("/orders/1").status,
        404,
        "nothing of the new one"
    );
    let stderr = gw.stderr();
    assert!(
        stderr.contains("routes[1].upstream: unknown upstream"),
        "{stderr}"
    );
    assert!(stderr.contains("5 parsecs"), "{stderr}");

    // The same through the admin listener: 400 and every error, old config kept.
    let resp = gw.post_reload();
    assert_eq!(resp.status, 400, "{}", resp.text());
    let v = resp.json();
    assert_eq!(v["error"], "invalid_config");
    let errors: Vec<&str> = v["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e.as_str())
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors
            .iter()
            .all(|e| e.contains("gateway.yaml:") && e.contains("routes[1].")),
        "{errors:?}"
    );
    assert_eq!(reloads(&gw, "error"), 2.0);

    // A deleted or truncated file is refused just the same.
    std::fs::remove_file(&gw.config_path).expect("delete config");
    assert_eq!(gw.post_reload().status, 400);
    std::fs::write(&gw.config_path, "listen:\n  - addr: ").expect("truncate config");
    assert_eq!(gw.post_reload().status, 400);
    assert_eq!(gw.get_with_key("/users/1").status, 200, "old config serves");
    assert_eq!(reloads(&gw, "ok"), 0.0);
}

#[test]
fn post_reload_applies_a_valid_file_and_names_what_needs_a_restart() {
    let backend = Backend::echo();
    let gw = Gateway::start(&config(&backend, ""));
    let resp = request(gw.admin, "GET", "/reload", &[], b"");
    assert_eq!(resp.status, 405);

    gw.rewrite_config(&config(&backend, ORDERS_ROUTE));
    let resp = gw.post_reload();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["result"], "ok");
    assert_eq!(gw.get_with_key("/orders/1").status, 200);

    // A new thread count and listener cannot be applied by a reload.
    let moved = config(&backend, ORDERS_ROUTE)
        .replace("threads: 2", "threads: 3")
        .replace("{listen}", &format!("127.0.0.1:{}", free_port()));
    gw.rewrite_config(&moved);
    let resp = gw.post_reload();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.json()["needs_restart"],
        serde_json::json!(["listen", "threads"])
    );
    assert!(gw.stderr().contains("`listen` changed"), "{}", gw.stderr());
    assert_eq!(
        gw.get_with_key("/users/1").status,
        200,
        "still on the old listener"
    );
    assert_eq!(reloads(&gw, "ok"), 2.0);
}

#[test]
fn rate_limit_counts_survive_a_reload_that_adds_a_route() {
    let backend = Backend::echo();
    let limited = |extra: &str| {
        format!(
            "{head}upstreams:\n  u:\n    peers: [\"{peer}\"]\n\
             routes:\n  - {{ name: users, path: /users, upstream: u, rate_limit: {{ requests: 3, per: 1m }} }}\n{extra}",
            head = config_head(),
            peer = backend.addr,
        )
    };
    let gw = Gateway::start(&limited(""));
    for _ in 0..3 {
        assert_eq!(gw.get_with_key("/users").status, 200);
    }
    gw.rewrite_config(&limited(ORDERS_ROUTE));
    assert_eq!(gw.post_reload().status, 200);
    assert_eq!(
        gw.get_with_key("/users").status,
        429,
        "a reload does not hand out a fresh quota"
    );
}

#[test]
fn pooled_upstream_connections_survive_a_reload() {
    let backend = Backend::echo();
    let gw = Gateway::start(&config(&backend, ""));
    for _ in 0..10 {
        assert_eq!(gw.get_with_key("/users").status, 200);
        std::thread::sleep(Duration::from_millis(20));
    }
    let opened = || backend.connections.load(Ordering::SeqCst);
    let before = opened();
    gw.rewrite_config(&config(&backend, ORDERS_ROUTE));
    assert_eq!(gw.post_reload().status, 200);
    // A connection returns to the pool just after its answer: give it the
    // moment, so that only a dropped pool could open a new one.
    let settle = || std::thread::sleep(Duration::from_millis(20));
    for _ in 0..10 {
        settle();
        assert_eq!(gw.get_with_key("/users").status, 200);
        settle();
        assert_eq!(gw.get_with_key("/orders").status, 200);
    }
    assert_eq!(
        opened(),
        before,
        "the unchanged upstream's pooled connections served the new tables"
    );
}

#[test]
fn an_aggregate_route_added_by_reload_fetches_its_parts() {
    // The fan-out connector is made at start only when the config has an
    // aggregate route; here it is made by the first aggregate request.
    let backend = Backend::echo();
    let gw = Gateway::start(&config(&backend, ""));
    assert_eq!(gw.get_with_key("/both/7").status, 404);
    let aggregate = "  - name: both\n    path: /both/{id}\n    aggregate:\n\
                     \x20     a: { upstream: u, path: \"/a/{id}\" }\n\
                     \x20     b: { upstream: u, path: \"/b/{id}\" }\n";
    gw.rewrite_config(&config(&backend, aggregate));
    assert_eq!(gw.post_reload().status, 200);
    let resp = gw.get_with_key("/both/7");
    assert_eq!(resp.status, 200, "{}", resp.text());
    let merged = resp.json();
    let mut targets: Vec<String> = backend
        .requests()
        .iter()
        .map(|r| r.target.clone())
        .collect();
    targets.sort();
    assert_eq!(
        targets,
        ["/a/7", "/b/7"],
        "each part reached the backend once"
    );
    assert!(
        merged["a"].is_object() && merged["b"].is_object(),
        "{merged}"
    );
}

#[test]
fn a_deeply_nested_file_is_refused_by_reload_and_the_gateway_keeps_serving() {
    // Thousands of levels once overflowed the reload thread's stack and aborted
    // the process; now the loader refuses them at level 65, the same as `--test`.
    let backend = Backend::echo();
    let gw = Gateway::start(&config(&backend, ""));
    gw.rewrite_config(&nested_mappings(3_000));
    let resp = gw.post_reload();
    assert_eq!(resp.status, 400, "{}", resp.text());
    let errors = resp.json()["errors"].clone();
    let first = errors[0].as_str().unwrap_or_default();
    assert!(
        first.contains("gateway.yaml:65:") && first.contains("too deeply nested"),
        "{errors}"
    );
    assert_eq!(gw.get_with_key("/users/1").status, 200, "old config serves");

    gw.signal("-HUP");
    eventually("the SIGHUP reload refused", || reloads(&gw, "error") == 2.0);
    assert_eq!(gw.get_with_key("/users/1").status, 200, "still serving");

    gw.rewrite_config(&alias_bomb());
    let resp = gw.post_reload();
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert!(
        resp.text().contains("too many alias expansions"),
        "{}",
        resp.text()
    );
    assert_eq!(gw.get_with_key("/users/1").status, 200, "still serving");
}
