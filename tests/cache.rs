//! The response cache (SPEC §8.2), black-box: the real binary in front of real
//! loopback backends that count what reaches them.

mod common;

use common::{promtool_accepts, request, Answer, Backend, Gateway, RawBackend, KEY};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const KEY2: &str = "test-key-2-5e1a9c";

/// Two consumers (`web` with KEY, `mobile` with KEY2), a cache of `cache` and
/// an upstream `u` on `backend`; `routes` is the routes' YAML list.
fn config(backend: SocketAddr, cache: &str, routes: &str) -> String {
    format!(
        "listen:\n  - addr: {{listen}}\nadmin:\n  addr: {{admin}}\nthreads: 2\nshutdown_grace: 1s\n\
         consumers:\n  - name: web\n    keys: [\"{KEY}\"]\n  - name: mobile\n    keys: [\"{KEY2}\"]\n\
         cache: {cache}\n\
         upstreams:\n  u:\n    peers: [\"{backend}\"]\n\
         routes:\n{routes}"
    )
}

fn one_route(backend: SocketAddr, route_cache: &str, route_extra: &str) -> String {
    config(
        backend,
        "{ max_size: 8MiB, max_object: 1MiB }",
        &format!("  - {{ name: r, path: /, upstream: u, cache: {route_cache}{route_extra} }}\n"),
    )
}

fn hits(backend: &Backend) -> usize {
    backend.requests().len()
}

fn status_of(r: &common::Response) -> &str {
    r.header("cache-status").unwrap_or("(none)")
}

#[test]
fn consumers_never_share_entries_a_hit_needs_a_credential_and_counts_toward_limits() {
    // The body is whoever the client says it is: a crossed entry would show.
    let backend = Backend::start(|r| {
        Answer::json(200, &format!("\"{}\"", r.header("x-user").unwrap_or("")))
            .with_header("cache-control", "max-age=60")
    });
    let gw = Gateway::start(&one_route(
        backend.addr,
        "{ ttl: 60s }",
        ", rate_limit: { requests: 4, per: 1m, by: consumer }",
    ));
    let alice = [("x-api-key", KEY), ("x-user", "alice")];
    let bob = [("x-api-key", KEY2), ("x-user", "bob")];

    let first = gw.get("/item", &alice);
    assert_eq!((first.status, first.text().as_str()), (200, "\"alice\""));
    assert_eq!(status_of(&first), "portcullis; fwd=miss; stored");
    let again = gw.get("/item", &alice);
    assert_eq!(again.text(), "\"alice\"");
    assert_eq!(status_of(&again), "portcullis; hit");
    assert!(again.header("age").is_some(), "{again:?}");

    let other = gw.get("/item", &bob);
    assert_eq!(
        other.text(),
        "\"bob\"",
        "another consumer's entry was served"
    );
    assert_eq!(status_of(&other), "portcullis; fwd=miss; stored");
    assert_eq!(hits(&backend), 2);

    // No credential, or a wrong one: refused before the cache.
    assert_eq!(gw.get("/item", &[("x-user", "alice")]).status, 401);
    assert_eq!(
        gw.get("/item", &[("x-api-key", "wrong-key"), ("x-user", "alice")])
            .status,
        401
    );

    // Hits count: two so far for alice, two more pass, the fifth is limited.
    let fourth = gw.get("/item", &alice);
    let fifth = gw.get("/item", &alice);
    assert_eq!((fourth.status, fifth.status), (200, 200));
    assert_eq!(gw.get("/item", &alice).status, 429);
    assert_eq!(hits(&backend), 2);

    let m = gw.metrics();
    let series = |result: &str| {
        gw.metric(&format!(
            "portcullis_cache_lookups_total{{result=\"{result}\",route=\"r\"}}"
        ))
    };
    assert_eq!(series("miss"), 2.0, "{m}");
    assert_eq!(series("hit"), 3.0, "{m}");
    for family in [
        "portcullis_cache_lookups_total{result=\"expired\",route=\"r\"} 0",
        "portcullis_cache_lookups_total{result=\"bypass\",route=\"r\"} 0",
        "portcullis_cache_evictions_total 0",
    ] {
        assert!(m.contains(family), "{family} missing:\n{m}");
    }
    assert!(gw.metric("portcullis_cache_size_bytes") > 0.0, "{m}");
    promtool_accepts(&m);
    // Each answer's line, found by its request id: a miss's line is written
    // after its answer has reached the client, so the next request's line
    // may come first.
    let log = gw.access_log();
    let cache_of = |answer: &common::Response| {
        let id = answer.header("x-request-id").unwrap_or("none");
        log.iter()
            .find(|l| l["request_id"] == id)
            .map(|l| l["cache"].as_str().unwrap_or("null").to_string())
    };
    let caches: Vec<Option<String>> = [&first, &again, &other, &fourth, &fifth]
        .into_iter()
        .map(cache_of)
        .collect();
    let expected = ["miss", "hit", "miss", "hit", "hit"].map(|c| Some(c.to_string()));
    assert_eq!(caches, expected, "{log:?}");
}

/// A backend whose answer depends on the path, counting requests per path.
fn rfc_backend() -> Backend {
    Backend::start(|r| {
        let path = r.target.split('?').next().unwrap_or("");
        let now = SystemTime::now();
        let date = httpdate::fmt_http_date(now);
        let ok = |cc: &str| Answer::json(200, "\"body\"").with_header("cache-control", cc);
        match path {
            "/no-store" => ok("no-store"),
            "/private" => ok("private, max-age=60"),
            "/cookie" => ok("max-age=60").with_header("set-cookie", "s=1"),
            "/vary-star" => ok("max-age=60").with_header("vary", "*"),
            "/s-maxage" => ok("max-age=0, s-maxage=60"),
            "/expires" => Answer::json(200, "\"body\"")
                .with_header("date", &date)
                .with_header(
                    "expires",
                    &httpdate::fmt_http_date(now + Duration::from_secs(60)),
                ),
            "/expires-past" => Answer::json(200, "\"body\"")
                .with_header("date", &date)
                .with_header(
                    "expires",
                    &httpdate::fmt_http_date(now - Duration::from_secs(60)),
                ),
            "/age" => ok("max-age=61").with_header("age", "60"),
            "/not-found" => ok("max-age=60").with_status(404),
            "/error" => ok("max-age=60").with_status(500),
            "/etag" => match r.header("if-none-match") {
                Some("\"v1\"") => ok("max-age=60").with_status(304).no_body(),
                _ => ok("no-cache").with_header("etag", "\"v1\""),
            },
            "/modified" => match r.header("if-modified-since") {
                Some(_) => ok("max-age=60").with_status(304).no_body(),
                _ => ok("max-age=0").with_header("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
            },
            "/vary" => Answer::json(
                200,
                &format!("\"{}\"", r.header("accept-language").unwrap_or("-")),
            )
            .with_header("cache-control", "max-age=60")
            .with_header("vary", "accept-language"),
            _ => ok("max-age=60"),
        }
    })
}

trait AnswerExt {
    fn with_status(self, status: u16) -> Answer;
    fn no_body(self) -> Answer;
}

impl AnswerExt for Answer {
    fn with_status(mut self, status: u16) -> Answer {
        self.status = status;
        self
    }
    fn no_body(mut self) -> Answer {
        self.body.clear();
        self
    }
}

fn count(backend: &Backend, path: &str) -> usize {
    backend
        .requests()
        .iter()
        .filter(|r| r.target.split('?').next() == Some(path))
        .count()
}

#[test]
fn rfc_9111_rules_decide_what_is_stored_and_for_how_long() {
    let backend = rfc_backend();
    let gw = Gateway::start(&one_route(backend.addr, "{ ttl: 60s }", ", auth: none"));
    let twice = |path: &str| {
        let a = gw.get(path, &[]);
        let b = gw.get(path, &[]);
        (a, b)
    };
    // Not stored: each request reaches the backend.
    for path in ["/no-store", "/private", "/cookie", "/vary-star", "/error"] {
        let (a, b) = twice(path);
        assert_eq!(count(&backend, path), 2, "{path} was stored");
        assert_eq!(status_of(&a), "portcullis; fwd=miss", "{path}");
        assert_eq!(status_of(&b), "portcullis; fwd=miss", "{path}");
    }
    // Stored and fresh: the second is a hit.
    for path in ["/plain", "/s-maxage", "/expires", "/not-found", "/age"] {
        let (a, b) = twice(path);
        assert_eq!(count(&backend, path), 1, "{path} was not stored: {a:?}");
        assert_eq!(status_of(&b), "portcullis; hit", "{path}");
        assert_eq!(a.status, b.status);
    }
    assert_eq!(gw.get("/not-found", &[]).status, 404);
    // Expires in the past: stored but stale at once, so fetched again.
    twice("/expires-past");
    assert_eq!(count(&backend, "/expires-past"), 2);

    // The upstream's Age counts: 60 of 61 s were used before it arrived.
    let aged = gw.get("/age", &[]);
    let age: u64 = aged
        .header("age")
        .and_then(|a| a.parse().ok())
        .expect("age");
    assert!(age >= 60, "age {age}");
    std::thread::sleep(Duration::from_millis(1600));
    gw.get("/age", &[]);
    assert_eq!(
        count(&backend, "/age"),
        2,
        "the entry outlived its freshness"
    );

    // HEAD after GET: from the GET's entry, without a body.
    let head = request(gw.addr, "HEAD", "/plain", &[], b"");
    assert_eq!((head.status, status_of(&head)), (200, "portcullis; hit"));
    assert!(head.body.is_empty());
    assert_eq!(count(&backend, "/plain"), 1);

    // Other methods bypass the cache.
    let post = request(gw.addr, "POST", "/plain", &[], b"x");
    assert_eq!(status_of(&post), "portcullis; fwd=method");
    assert_eq!(count(&backend, "/plain"), 2);

    // The upstream's Vary picks among variants.
    let lang = |l: &str| gw.get("/vary", &[("accept-language", l)]);
    assert_eq!(lang("de").text(), "\"de\"");
    assert_eq!(lang("en").text(), "\"en\"");
    let de = lang("de");
    assert_eq!(
        (de.text().as_str(), status_of(&de)),
        ("\"de\"", "portcullis; hit")
    );
    assert_eq!(count(&backend, "/vary"), 2);
}

#[test]
fn no_cache_revalidates_and_a_304_refreshes_the_entry() {
    let backend = rfc_backend();
    let gw = Gateway::start(&one_route(backend.addr, "{ ttl: 60s }", ", auth: none"));
    for (path, validator) in [
        ("/etag", "if-none-match"),
        ("/modified", "if-modified-since"),
    ] {
        let first = gw.get(path, &[]);
        assert_eq!(status_of(&first), "portcullis; fwd=miss; stored", "{path}");
        let second = gw.get(path, &[]);
        assert_eq!(second.status, 200, "{path}");
        assert_eq!(second.text(), "\"body\"", "{path}: the stored body");
        assert_eq!(
            status_of(&second),
            "portcullis; fwd=stale; fwd-status=304; stored",
            "{path}"
        );
        let revalidation = backend.last();
        assert!(
            revalidation.header(validator).is_some(),
            "{path}: no {validator}: {revalidation:?}"
        );
        // The 304 said max-age=60: fresh again, no more trips.
        let third = gw.get(path, &[]);
        assert_eq!(status_of(&third), "portcullis; hit", "{path}");
        assert_eq!(count(&backend, path), 2, "{path}");
    }
}

#[test]
fn stale_if_error_serves_the_stale_entry_within_its_window_then_502() {
    let backend =
        Backend::start(|_| Answer::json(200, "\"kept\"").with_header("cache-control", "max-age=1"));
    let gw = Gateway::start(&one_route(
        backend.addr,
        "{ ttl: 1s, stale_if_error: 2s }",
        ", auth: none",
    ));
    let stored_at = Instant::now();
    assert_eq!(gw.get("/s", &[]).text(), "\"kept\"");
    backend.stop();
    drop(backend);
    std::thread::sleep(Duration::from_millis(1300));
    let stale = gw.get("/s", &[]);
    assert!(
        stored_at.elapsed() < Duration::from_secs(3),
        "too slow to test"
    );
    assert_eq!((stale.status, stale.text().as_str()), (200, "\"kept\""));
    assert_eq!(status_of(&stale), "portcullis; fwd=stale");
    std::thread::sleep(
        Duration::from_secs(3).saturating_sub(stored_at.elapsed()) + Duration::from_millis(500),
    );
    let gone = gw.get("/s", &[]);
    assert_eq!(gone.status, 502, "{gone:?}");
    let log = gw.access_log();
    assert!(log.iter().any(|l| l["cache"] == "stale"), "{log:?}");
}

#[test]
fn stale_while_revalidate_answers_at_once_and_refreshes_behind() {
    let n = Arc::new(AtomicUsize::new(0));
    let seen = n.clone();
    let backend = Backend::start(move |_| {
        let i = seen.fetch_add(1, Ordering::SeqCst);
        Answer::json(200, &format!("{i}")).with_header("cache-control", "max-age=1")
    });
    let gw = Gateway::start(&one_route(
        backend.addr,
        "{ stale_while_revalidate: 30s }",
        ", auth: none",
    ));
    assert_eq!(gw.get("/w", &[]).text(), "0");
    std::thread::sleep(Duration::from_millis(1300));
    let stale = gw.get("/w", &[]);
    assert_eq!(
        (stale.text().as_str(), status_of(&stale)),
        ("0", "portcullis; fwd=stale")
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while n.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    let fresh = gw.get("/w", &[]);
    assert_eq!(
        (fresh.text().as_str(), status_of(&fresh)),
        ("1", "portcullis; hit")
    );
}

#[test]
fn fifty_concurrent_misses_send_one_request_upstream() {
    let backend = Backend::start(|_| {
        Answer::json(200, "\"one\"")
            .with_header("cache-control", "max-age=60")
            .after(Duration::from_millis(400))
    });
    let gw = Gateway::start(&one_route(backend.addr, "{ ttl: 60s }", ", auth: none"));
    let addr = gw.addr;
    let threads: Vec<_> = (0..50)
        .map(|_| std::thread::spawn(move || common::get(addr, "/burst", &[])))
        .collect();
    let answers: Vec<common::Response> = threads
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect();
    assert!(answers
        .iter()
        .all(|a| a.status == 200 && a.text() == "\"one\""));
    assert_eq!(hits(&backend), 1, "the backend was asked more than once");
}

/// The gateway's resident memory, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

#[test]
fn memory_stays_under_max_size_while_twenty_times_that_passes() {
    const MAX: u64 = 4 << 20;
    let body = "x".repeat(100 * 1024 - 2);
    let big = "y".repeat(300 * 1024);
    let backend = Backend::start(move |r| {
        let body = if r.target == "/big" { &big } else { &body };
        Answer::json(200, &format!("\"{body}\"")).with_header("cache-control", "max-age=600")
    });
    let gw = Gateway::start(&config(
        backend.addr,
        "{ max_size: 4MiB, max_object: 256KiB }",
        "  - { name: r, path: /, upstream: u, auth: none, cache: { ttl: 600s } }\n",
    ));
    let pid = gw.child.id();
    // Over max_object: passed through whole, not stored.
    for _ in 0..2 {
        let big = gw.get("/big", &[]);
        assert_eq!((big.status, big.body.len()), (200, 300 * 1024 + 2));
        assert_eq!(status_of(&big), "portcullis; fwd=miss");
    }
    // Warm up the process's own buffers with as much traffic as the cache holds.
    for i in 0..40 {
        assert_eq!(gw.get(&format!("/warm/{i}"), &[]).status, 200);
    }
    let before = rss_kib(pid);
    // 20x max_size of distinct answers, each twice to make them worth keeping.
    for i in 0..800 {
        let path = format!("/o/{i}");
        assert_eq!(gw.get(&path, &[]).status, 200);
        gw.get(&path, &[]);
    }
    let after = rss_kib(pid);
    let size = gw.metric("portcullis_cache_size_bytes") as u64;
    assert!(size <= MAX, "cache_size_bytes {size} > max_size {MAX}");
    assert!(gw.metric("portcullis_cache_evictions_total") > 0.0);
    let grown = after.saturating_sub(before) * 1024;
    // Unbounded, the 80 MiB would stay (20x max_size); bounded, what grows is
    // the allocator's per-thread slack and the fills' copies in flight:
    // measured 2x to 3.1x max_size with two worker threads on a quiet machine
    // and 4.4x once on a loaded one, so 6x is the line, far below unbounded.
    assert!(
        grown < 6 * MAX,
        "RSS grew {grown} bytes while 80 MiB passed (max_size {MAX})"
    );
}

fn purge(gw: &Gateway, body: &str) -> common::Response {
    request(
        gw.admin,
        "POST",
        "/cache/purge",
        &[("content-type", "application/json")],
        body.as_bytes(),
    )
}

#[test]
fn an_answer_fetched_across_a_purge_is_not_stored() {
    let served = Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    let backend = Backend::start(move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let answer = Answer::json(200, &n.to_string()).with_header("cache-control", "max-age=60");
        // The first answer is slow: the purge below lands while it is fetched.
        if n == 1 {
            answer.after(Duration::from_millis(1200))
        } else {
            answer
        }
    });
    let gw = Gateway::start(&one_route(backend.addr, "{ ttl: 60s }", ""));
    let first = std::thread::scope(|s| {
        let first = s.spawn(|| gw.get("/p/1", &[("x-api-key", KEY)]));
        // Purge once the request has reached the backend.
        let deadline = Instant::now() + Duration::from_secs(5);
        while hits(&backend) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(purge(&gw, r#"{"route": "r"}"#).status, 200);
        first.join().expect("the first request")
    });
    assert_eq!((first.status, first.body.as_slice()), (200, &b"1"[..]));
    // Fetched before the purge, so not kept: the next request goes upstream.
    let next = gw.get("/p/1", &[("x-api-key", KEY)]);
    assert_eq!(
        (next.body.as_slice(), status_of(&next)),
        (&b"2"[..], "portcullis; fwd=miss; stored")
    );
    let again = gw.get("/p/1", &[("x-api-key", KEY)]);
    assert_eq!(
        (again.body.as_slice(), status_of(&again)),
        (&b"2"[..], "portcullis; hit")
    );
}

#[test]
fn purge_by_route_and_by_path_counts_each_consumers_entry() {
    let backend =
        Backend::start(|_| Answer::json(200, "1").with_header("cache-control", "max-age=60"));
    let gw = Gateway::start(&one_route(backend.addr, "{ ttl: 60s }", ""));
    for key in [KEY, KEY2] {
        for path in ["/p/1", "/p/2", "/p/1?page=2"] {
            assert_eq!(gw.get(path, &[("x-api-key", key)]).status, 200);
        }
    }
    assert_eq!(hits(&backend), 6);
    let by_path = purge(&gw, r#"{"route": "r", "path": "/p/1"}"#);
    assert_eq!(
        (by_path.status, by_path.json()["purged"].as_u64()),
        (200, Some(4))
    );
    assert_eq!(
        status_of(&gw.get("/p/2", &[("x-api-key", KEY)])),
        "portcullis; hit"
    );
    assert_eq!(
        status_of(&gw.get("/p/1", &[("x-api-key", KEY)])),
        "portcullis; fwd=miss; stored"
    );
    let by_route = purge(&gw, r#"{"route": "r"}"#);
    assert_eq!(
        (by_route.status, by_route.json()["purged"].as_u64()),
        (200, Some(3))
    );
    assert_eq!(
        status_of(&gw.get("/p/2", &[("x-api-key", KEY2)])),
        "portcullis; fwd=miss; stored"
    );
    assert_eq!(purge(&gw, r#"{"route": "nope"}"#).status, 404);
    assert_eq!(purge(&gw, r#"{"path": "/p/1"}"#).status, 400);
}

#[test]
fn a_reload_keeps_the_entries_of_routes_whose_cache_did_not_change() {
    let backend =
        Backend::start(|_| Answer::json(200, "1").with_header("cache-control", "max-age=60"));
    let routes = |b_ttl: &str| {
        format!(
            "  - {{ name: a, path: /a, upstream: u, auth: none, cache: {{ ttl: 60s }} }}\n\
             \x20 - {{ name: b, path: /b, upstream: u, auth: none, cache: {{ ttl: {b_ttl} }} }}\n\
             \x20 - {{ name: c, path: /c, upstream: u, auth: none }}\n"
        )
    };
    let cache = "{ max_size: 8MiB }";
    let gw = Gateway::start(&config(backend.addr, cache, &routes("60s")));
    gw.get("/a", &[]);
    gw.get("/b", &[]);
    let uncached = gw.get("/c", &[]);
    assert_eq!(uncached.header("cache-status"), None);
    gw.rewrite_config(&config(backend.addr, cache, &routes("30s")));
    assert_eq!(gw.post_reload().status, 200);
    assert_eq!(status_of(&gw.get("/a", &[])), "portcullis; hit");
    assert_eq!(
        status_of(&gw.get("/b", &[])),
        "portcullis; fwd=miss; stored"
    );
    let log = gw.access_log();
    let c = log.iter().find(|l| l["path"] == "/c").expect("the /c line");
    assert!(c["cache"].is_null(), "{c}");
}

#[test]
fn a_route_cache_without_the_top_level_cache_is_an_error_with_its_position() {
    let dir = common::temp_dir("cache-config");
    let path = dir.join("gateway.yaml");
    let text = "listen:\n  - addr: 127.0.0.1:1\nupstreams:\n  u:\n    peers: [\"127.0.0.1:2\"]\n\
                routes:\n  - name: r\n    path: /\n    upstream: u\n    auth: none\n    cache: { ttl: 1s }\n";
    std::fs::write(&path, text).expect("write");
    let checked = common::check_config(&path, 2048, Duration::from_secs(20));
    assert_eq!(checked.code, Some(1), "{}", checked.stderr);
    assert!(
        checked
            .stderr
            .contains("gateway.yaml:11:12: routes[0].cache: a route's `cache` needs the top-level"),
        "{}",
        checked.stderr
    );
}

/// A backend answering every request with `chunks` x 64 KiB, one chunk each
/// `gap`; returns its address and a count of the requests it took.
fn slow_backend(chunks: usize, gap: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut writer = stream;
                loop {
                    let mut line = String::new();
                    // The head, up to its blank line.
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    seen.fetch_add(1, Ordering::SeqCst);
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncache-control: max-age=60\r\n\r\n",
                        chunks * 65536
                    );
                    if writer.write_all(head.as_bytes()).is_err() {
                        return;
                    }
                    for i in 0..chunks {
                        std::thread::sleep(gap);
                        if writer.write_all(&[b'a' + i as u8; 65536]).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, count)
}

#[test]
fn an_answer_is_streamed_to_its_first_client_while_it_is_stored() {
    use std::io::{BufRead, BufReader, Read, Write};
    // 512 KiB in 8 pieces over 1.2 s.
    let (backend, asked) = slow_backend(8, Duration::from_millis(150));
    let gw = Gateway::start(&one_route(backend, "{ ttl: 60s }", ", auth: none"));
    let started = Instant::now();
    let mut first = std::net::TcpStream::connect(gw.addr).expect("connect");
    first
        .write_all(b"GET /slow HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        .expect("send");
    let mut reader = BufReader::new(first);
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let head_after = started.elapsed();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    // A second client, while the first answer is still arriving: served from
    // the fill, not from the upstream.
    let second = gw.get("/slow", &[("host", "a")]);
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).expect("the rest");
    let whole = started.elapsed();
    assert!(
        head_after < Duration::from_millis(700),
        "the head came after {head_after:?} of {whole:?}: held back until stored"
    );
    let body: Vec<u8> = (0..8u8).flat_map(|i| [b'a' + i; 65536]).collect();
    assert!(rest.ends_with(&body), "the first client's body");
    assert_eq!(second.body, body, "the second client's body");
    assert_eq!(status_of(&second), "portcullis; hit");
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    assert_eq!(
        status_of(&gw.get("/slow", &[("host", "a")])),
        "portcullis; hit"
    );
}

#[test]
fn a_waiter_on_a_slow_fill_goes_upstream_itself_after_a_bounded_wait() {
    let n = Arc::new(AtomicUsize::new(0));
    let seen = n.clone();
    // The first fetch takes 5 s; any later one answers at once.
    let backend = Backend::start(move |_| {
        let delay = if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            5000
        } else {
            0
        };
        Answer::json(200, "\"x\"")
            .with_header("cache-control", "max-age=60")
            .after(Duration::from_millis(delay))
    });
    let gw = Gateway::start(&one_route(backend.addr, "{ ttl: 60s }", ", auth: none"));
    let addr = gw.addr;
    let first = std::thread::spawn(move || common::get(addr, "/slow-fill", &[]));
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let second = gw.get("/slow-fill", &[]);
    let waited = started.elapsed();
    assert_eq!(second.status, 200);
    assert!(
        waited >= Duration::from_millis(2500) && waited < Duration::from_millis(4500),
        "the waiter gave up after {waited:?}, expected about 3 s"
    );
    assert_eq!(
        n.load(Ordering::SeqCst),
        2,
        "the waiter went upstream itself"
    );
    assert_eq!(first.join().expect("first client").status, 200);
}

/// RFC 9111 §3.5: an answer to a request whose `authorization` reached the
/// upstream is not shared unless the upstream says so (`public`, `s-maxage`,
/// `must-revalidate`): a public route in front of a backend doing its own
/// auth must not hand one user's answer to the next caller.
#[test]
fn an_answer_to_an_authorized_request_is_shared_only_when_marked_public() {
    let backend = Backend::start(|r| {
        let who = r.header("authorization").unwrap_or("nobody").to_string();
        let answer = Answer::json(200, &format!("\"{who}\""));
        if r.target.starts_with("/public") {
            answer.with_header("cache-control", "public, max-age=60")
        } else {
            answer
        }
    });
    let gw = Gateway::start(&one_route(backend.addr, "{ ttl: 60s }", ", auth: none"));
    let alice = [("authorization", "Basic YWxpY2U6cHc=")];

    let first = gw.get("/me", &alice);
    assert_eq!(first.status, 200);
    assert_eq!(status_of(&first), "portcullis; fwd=miss");
    let anonymous = gw.get("/me", &[]);
    assert_eq!(anonymous.text(), "\"nobody\"", "alice's answer was shared");
    assert_eq!(hits(&backend), 2);

    let marked = gw.get("/public", &alice);
    assert_eq!(status_of(&marked), "portcullis; fwd=miss; stored");
    let again = gw.get("/public", &[]);
    assert_eq!(
        status_of(&again),
        "portcullis; hit",
        "public answers are shared"
    );
}

/// The route's `vary` headers are keyed with every value they carry: two
/// `accept-language` lines cannot store one language's page under another.
#[test]
fn a_repeated_vary_header_is_keyed_whole() {
    // The backend reads the last line (as many do); the key must not read the first only.
    let backend = Backend::start(|r| {
        Answer::json(
            200,
            &format!("\"{}\"", r.header("accept-language").unwrap_or("")),
        )
        .with_header("cache-control", "max-age=60")
    });
    let gw = Gateway::start(&one_route(
        backend.addr,
        "{ ttl: 60s, vary: [accept-language] }",
        ", auth: none",
    ));
    let both = gw.get(
        "/page",
        &[("accept-language", "en"), ("accept-language", "fr")],
    );
    assert_eq!(status_of(&both), "portcullis; fwd=miss; stored");
    let english = gw.get("/page", &[("accept-language", "en")]);
    assert_eq!(
        english.text(),
        "\"en\"",
        "the answer to en+fr was served for en"
    );
}

/// A route `r` on `/` with the rules `response_headers` and a secret sent to
/// its upstream, in front of a backend whose answers carry what a client
/// must never get: hop-by-hop headers, one its `connection` names, and the
/// secret echoed back.
fn header_rules_gateway(body: &'static str) -> (Backend, Gateway) {
    let backend = Backend::start(move |r| {
        Answer::json(200, body)
            .with_header("cache-control", "max-age=60")
            .with_header("etag", "\"v1\"")
            .with_header("Connection", "keep-alive, x-hop")
            .with_header("keep-alive", "timeout=5")
            .with_header("x-hop", "1")
            .with_header("proxy-authenticate", "Basic")
            .with_header(
                "x-gateway-secret",
                r.header("x-gateway-secret").unwrap_or("none"),
            )
            .with_header("X-Upstream", "a")
            .with_header("x-internal", "drop me")
    });
    let config = format!(
        "listen:\n  - addr: {{listen}}\nadmin:\n  addr: {{admin}}\nthreads: 2\nshutdown_grace: 1s\n\
         cache: {{ max_size: 8MiB }}\n\
         upstreams:\n  u:\n    peers: [\"{}\"]\n    headers: {{ x-gateway-secret: \"s3cret-up\" }}\n\
         routes:\n  - {{ name: r, path: /, upstream: u, auth: none, cache: {{ ttl: 60s }},\n\
         \x20     response_headers: {{ set: {{ x-served-by: gw }}, remove: [x-internal] }} }}\n",
        backend.addr
    );
    let gw = Gateway::start(&config);
    (backend, gw)
}

/// Header names, but those whose values differ per answer.
fn stable_names(r: &common::Response) -> Vec<String> {
    let per_answer = ["age", "cache-status", "date", "x-request-id"];
    let mut names: Vec<String> = r
        .headers
        .keys()
        .filter(|n| !per_answer.contains(&n.as_str()))
        .cloned()
        .collect();
    names.sort();
    names
}

#[test]
fn a_hit_carries_the_headers_of_the_miss_that_stored_it() {
    let (backend, gw) = header_rules_gateway("\"0123456789\"");
    let miss = gw.get("/h", &[]);
    assert_eq!(status_of(&miss), "portcullis; fwd=miss; stored");
    let hit = gw.get("/h", &[]);
    assert_eq!(status_of(&hit), "portcullis; hit");
    assert_eq!(hits(&backend), 1);
    for answer in [&miss, &hit] {
        // (`connection: close` is Pingora's, answering the client's.)
        assert_eq!(answer.header("connection"), Some("close"), "{answer:?}");
        for gone in [
            "x-gateway-secret",
            "keep-alive",
            "x-hop",
            "proxy-authenticate",
            "x-internal",
        ] {
            assert_eq!(answer.header(gone), None, "{gone}: {answer:?}");
        }
        assert_eq!(answer.header("x-served-by"), Some("gw"), "{answer:?}");
        assert_eq!(answer.header("x-upstream"), Some("a"), "{answer:?}");
        assert_eq!(answer.header("etag"), Some("\"v1\""), "{answer:?}");
        assert_eq!(answer.header("content-length"), Some("12"), "{answer:?}");
        assert!(answer.header("x-request-id").is_some(), "{answer:?}");
        assert!(answer.header("age").is_some(), "{answer:?}");
    }
    assert_eq!(stable_names(&hit), stable_names(&miss));
    assert_ne!(hit.header("x-request-id"), miss.header("x-request-id"));
    assert_eq!(hit.text(), miss.text());

    // HEAD on the hit: the same headers (its length too), no body.
    let head = request(gw.addr, "HEAD", "/h", &[], b"");
    assert_eq!((head.status, status_of(&head)), (200, "portcullis; hit"));
    assert!(head.body.is_empty(), "{head:?}");
    assert_eq!(stable_names(&head), stable_names(&hit));
    assert_eq!(head.header("content-length"), Some("12"));

    // The client's own validator matches the stored one: 304 from the hit.
    let unchanged = gw.get("/h", &[("if-none-match", "\"v1\"")]);
    assert_eq!(
        (unchanged.status, status_of(&unchanged)),
        (304, "portcullis; hit")
    );
    assert!(unchanged.body.is_empty(), "{unchanged:?}");
    assert_eq!(unchanged.header("etag"), Some("\"v1\""));
    let changed = gw.get("/h", &[("if-none-match", "\"v0\"")]);
    assert_eq!((changed.status, changed.text()), (200, hit.text()));
    assert_eq!(hits(&backend), 1);
}

#[test]
fn a_range_request_on_a_hit_gets_its_part() {
    let (backend, gw) = header_rules_gateway("\"0123456789\"");
    let whole = gw.get("/r", &[]);
    assert_eq!(status_of(&whole), "portcullis; fwd=miss; stored");
    // A stored 200 with its length can be asked for in ranges.
    assert_eq!(whole.header("accept-ranges"), Some("bytes"), "{whole:?}");

    let part = gw.get("/r", &[("range", "bytes=1-4")]);
    assert_eq!((part.status, status_of(&part)), (206, "portcullis; hit"));
    assert_eq!(part.text(), "0123");
    assert_eq!(part.header("content-range"), Some("bytes 1-4/12"));
    assert_eq!(part.header("content-length"), Some("4"));
    assert_eq!(part.header("accept-ranges"), None);
    assert_eq!(part.header("x-served-by"), Some("gw"));

    let tail = gw.get("/r", &[("range", "bytes=-3")]);
    assert_eq!((tail.status, tail.text().as_str()), (206, "89\""));

    let beyond = gw.get("/r", &[("range", "bytes=50-60")]);
    assert_eq!(beyond.status, 416, "{beyond:?}");
    assert_eq!(beyond.header("content-range"), Some("bytes */12"));
    assert!(beyond.body.is_empty());

    // An `if-range` that no longer matches: the whole answer.
    let changed = gw.get("/r", &[("range", "bytes=1-4"), ("if-range", "\"v0\"")]);
    assert_eq!(
        (changed.status, changed.text().as_str()),
        (200, "\"0123456789\"")
    );

    let plain = gw.get("/r", &[]);
    assert_eq!((plain.status, status_of(&plain)), (200, "portcullis; hit"));
    assert_eq!(plain.header("accept-ranges"), Some("bytes"));
    assert_eq!(plain.text(), "\"0123456789\"");
    assert_eq!(hits(&backend), 1);
}

/// The header names of one GET's answer, exactly as they came on the wire,
/// sorted (a hit and a miss may order them differently).
fn names_on_the_wire(gw: &Gateway, target: &str) -> Vec<String> {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::net::TcpStream::connect(gw.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let ask = format!(
        "GET {target} HTTP/1.1\r\nhost: a\r\nx-api-key: {KEY}\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(ask.as_bytes()).expect("write");
    let mut reader = BufReader::new(stream);
    let mut names = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("read");
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((name, _)) = line.split_once(':') {
            names.push(name.to_string());
        }
    }
    names.sort();
    names
}

#[test]
fn a_hit_spells_header_names_as_the_miss_did() {
    // One upstream spells its names its own way, the other as Pingora
    // would (titled where it knows the name, else lower case): the stored
    // header keeps the spelling in the first case and needs none in the second.
    let own_way = RawBackend::start(|_| {
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nX-Upstream-Case: Kept\r\n\
          Cache-Control: max-age=60\r\nContent-Length: 2\r\n\r\n{}"
            .to_vec()
    });
    let usual = RawBackend::start(|_| {
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-upstream-case: kept\r\n\
          Cache-Control: max-age=60\r\nContent-Length: 2\r\n\r\n{}"
            .to_vec()
    });
    let gw = Gateway::start(&format!(
        "listen:\n  - addr: {{listen}}\nadmin:\n  addr: {{admin}}\nshutdown_grace: 1s\n\
         consumers:\n  - name: web\n    keys: [\"{KEY}\"]\n\
         cache: {{ max_size: 8MiB }}\n\
         upstreams:\n  own: {{ peers: [\"{}\"] }}\n  usual: {{ peers: [\"{}\"] }}\n\
         routes:\n\
         \x20 - {{ name: own, path: /own, upstream: own, cache: {{ ttl: 60s }} }}\n\
         \x20 - {{ name: usual, path: /usual, upstream: usual, cache: {{ ttl: 60s }} }}\n",
        own_way.addr, usual.addr
    ));
    for (target, spelled) in [
        ("/own", ["content-type", "X-Upstream-Case", "Cache-Control"]),
        (
            "/usual",
            ["Content-Type", "x-upstream-case", "Cache-Control"],
        ),
    ] {
        let miss = names_on_the_wire(&gw, target);
        let hit = names_on_the_wire(&gw, target);
        for name in spelled {
            assert!(
                miss.iter().any(|n| n == name),
                "{target}: {name} in {miss:?}"
            );
        }
        assert_eq!(hit, miss, "{target}");
    }
    assert_eq!(own_way.heads().len(), 1);
    assert_eq!(usual.heads().len(), 1);
}
