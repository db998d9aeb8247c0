//! Finer routing and peers (SPEC §8.3), black-box: the real binary, real
//! backends on loopback. `match` conditions and their precedence, weighted
//! peers, outlier ejection with its trial request, and the config errors.

mod common;

use common::*;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A backend that answers with its name.
fn named(name: &'static str) -> Backend {
    Backend::start(move |_| Answer::json(200, &format!("{{\"served_by\":\"{name}\"}}")))
}

fn served_by(r: &Response) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["served_by"]
        .as_str()
        .expect("served_by")
        .to_string()
}

/// One keep-alive connection to the gateway, for many requests in a row.
struct Client {
    addr: SocketAddr,
    conn: Option<(TcpStream, BufReader<TcpStream>)>,
}

impl Client {
    fn new(addr: SocketAddr) -> Client {
        Client { addr, conn: None }
    }

    fn get(&mut self, target: &str) -> Response {
        for _ in 0..2 {
            if self.conn.is_none() {
                let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))
                    .expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                let r = BufReader::new(s.try_clone().expect("clone"));
                self.conn = Some((s, r));
            }
            let Some((s, r)) = self.conn.as_mut() else {
                continue;
            };
            let head = format!("GET {target} HTTP/1.1\r\nhost: t\r\n\r\n");
            let answer = s
                .write_all(head.as_bytes())
                .and_then(|_| read_response(r, false));
            match answer {
                Ok(resp) => {
                    if resp
                        .header("connection")
                        .is_some_and(|c| c.eq_ignore_ascii_case("close"))
                    {
                        self.conn = None;
                    }
                    return resp;
                }
                // The gateway closed an idle or refused connection: once more.
                Err(_) => self.conn = None,
            }
        }
        panic!("GET {target}: no answer on two connections");
    }
}

// ---- match: { headers, query } -------------------------------------------------

fn canary_gateway(v1: &Backend, v2: &Backend, me: &Backend) -> Gateway {
    let config = format!(
        "{}upstreams:\n  v1: {{ peers: [\"{}\"] }}\n  v2: {{ peers: [\"{}\"] }}\n  me: {{ peers: [\"{}\"] }}\n\
         routes:\n\
         \x20 - {{ name: users-v2-beta, path: /users, upstream: v2, auth: none,\n\
         \x20     match: {{ headers: {{ X-Api-Version: \"2\" }}, query: {{ beta: \"*\" }} }} }}\n\
         \x20 - {{ name: users-v2, path: /users, upstream: v2, auth: none,\n\
         \x20     match: {{ headers: {{ x-api-version: \"2\" }} }} }}\n\
         \x20 - {{ name: users-blue, path: /users, upstream: v2, auth: none, match: {{ headers: {{ x-flavour: Blue }} }} }}\n\
         \x20 - {{ name: users-flag, path: /users, upstream: v2, auth: none, match: {{ headers: {{ x-flag: \"*\" }} }} }}\n\
         \x20 - {{ name: users, path: /users, upstream: v1, auth: none }}\n\
         \x20 - {{ name: me, path: /users/me, upstream: me, auth: none }}\n",
        config_head(),
        v1.addr,
        v2.addr,
        me.addr
    );
    Gateway::start(&config)
}

fn route_of(gw: &Gateway, target: &str, headers: &[(&str, &str)]) -> (String, String) {
    let resp = gw.get(target, headers);
    let served = served_by(&resp);
    let line = gw
        .access_log()
        .into_iter()
        .rev()
        .find(|l| l["request_id"] == resp.header("x-request-id").unwrap_or("-"))
        .expect("the request's access-log line");
    (line["route"].as_str().unwrap_or("").to_string(), served)
}

#[test]
fn header_and_query_conditions_pick_the_route_more_conditions_win() {
    let (v1, v2, me) = (named("v1"), named("v2"), named("me"));
    let gw = canary_gateway(&v1, &v2, &me);
    /// A request target, its headers, and the route it must take.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 13] = [
        ("/users/1", &[("x-flavour", "Blue")], "users-blue"),
        ("/users/1", &[("x-flavour", "blue")], "users"),
        ("/users/1", &[("x-flag", "")], "users-flag"),
        ("/users/1", &[("X-Flag", "anything")], "users-flag"),
        ("/users/1", &[], "users"),
        // Header names ignore case; values are exact and case-sensitive.
        ("/users/1", &[("X-API-VERSION", "2")], "users-v2"),
        ("/users/1", &[("x-api-version", "20")], "users"),
        ("/users/1", &[("x-api-version", "V2")], "users"),
        // `"*"`: present with any value, an empty one too; all must hold.
        ("/users/1?beta", &[("x-api-version", "2")], "users-v2-beta"),
        ("/users/1?beta=", &[("x-api-version", "2")], "users-v2-beta"),
        (
            "/users/1?a=1&beta=yes",
            &[("x-api-version", "2")],
            "users-v2-beta",
        ),
        ("/users/1?beta=yes", &[], "users"),
        ("/users/1?betamax=1", &[("x-api-version", "2")], "users-v2"),
    ];
    for (target, headers, want) in cases {
        let (route, _) = route_of(&gw, target, headers);
        assert_eq!(route, want, "{target} {headers:?}");
    }
    // A longer literal path still wins over conditions.
    let (route, served) = route_of(&gw, "/users/me?beta", &[("x-api-version", "2")]);
    assert_eq!((route.as_str(), served.as_str()), ("me", "me"));
    assert!(!v2.requests().is_empty() && !v1.requests().is_empty());
}

#[test]
fn a_header_condition_never_sees_a_header_the_gateway_sets() {
    let (plain, marked) = (Backend::echo(), named("marked"));
    let mut routes = String::new();
    for (i, header) in [
        "x-request-id",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "traceparent",
    ]
    .iter()
    .enumerate()
    {
        routes.push_str(&format!(
            "  - {{ name: m{i}, path: /, upstream: marked, auth: none, match: {{ headers: {{ {header}: \"*\" }} }} }}\n"
        ));
    }
    let config = format!(
        "{}upstreams:\n  plain: {{ peers: [\"{}\"] }}\n  marked: {{ peers: [\"{}\"] }}\n\
         routes:\n{routes}  - {{ name: plain, path: /, upstream: plain, auth: none }}\n",
        config_head(),
        plain.addr,
        marked.addr
    );
    let gw = Gateway::start(&config);
    let resp = gw.get("/x", &[]);
    assert_eq!(resp.status, 200, "{}", resp.text());
    // The plain route took it, though the upstream got every one of them.
    let seen = resp.json();
    for header in [
        "x-request-id",
        "x-forwarded-for",
        "x-forwarded-proto",
        "traceparent",
    ] {
        assert!(
            seen["headers"][header].is_string(),
            "{header} was set: {seen}"
        );
    }
    assert!(marked.requests().is_empty());
    // Sent by the client, the same header is the client's, and matches.
    let resp = gw.get("/x", &[("x-request-id", "client-id-1")]);
    assert_eq!(served_by(&resp), "marked");
}

// ---- weights -----------------------------------------------------------------

fn split(balance: &str) -> (usize, usize) {
    let (a, b) = (named("a"), named("b"));
    let config = format!(
        "{}upstreams:\n  u:\n    balance: {balance}\n    peers:\n      - \"{}\"\n      - {{ addr: \"{}\", weight: 9 }}\n\
         routes:\n  - {{ name: r, path: /, upstream: u, auth: none }}\n",
        config_head(),
        a.addr,
        b.addr
    );
    let gw = Gateway::start(&config);
    let mut client = Client::new(gw.addr);
    let mut counts = (0, 0);
    for _ in 0..1000 {
        match served_by(&client.get("/w")).as_str() {
            "a" => counts.0 += 1,
            _ => counts.1 += 1,
        }
    }
    counts
}

/// 1,000 requests over weights 1 and 9. Round robin follows the weights
/// exactly (one turn of ten picks at a time): 100 ± 10 allows for a pick
/// made before the loop. Random is binomial (n = 1000, p = 0.1, σ ≈ 9.5):
/// 100 ± 40 is more than four σ, a false alarm about once in 30,000 runs.
#[test]
fn weighted_peers_split_1000_requests_about_10_to_90() {
    let (a, b) = split("round_robin");
    assert_eq!(a + b, 1000);
    assert!((90..=110).contains(&a), "round_robin: a {a}, b {b}");
    let (a, b) = split("random");
    assert_eq!(a + b, 1000);
    assert!((60..=140).contains(&a), "random: a {a}, b {b}");
}

// ---- outlier ejection --------------------------------------------------------

fn peer_up(gw: &Gateway, peer: SocketAddr) -> f64 {
    gw.metric(&format!(
        "portcullis_upstream_peer_up{{peer=\"{peer}\",upstream=\"u\"}}"
    ))
}

fn wait_for(limit: Duration, what: &str, probe: impl Fn() -> bool) {
    let started = Instant::now();
    while !probe() {
        assert!(started.elapsed() < limit, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A backend that answers 503 while `failing` is set, else 200 with its name.
fn switchable(name: &'static str, failing: Arc<AtomicBool>) -> Backend {
    Backend::start(move |_| {
        if failing.load(Ordering::SeqCst) {
            Answer::json(503, "{\"error\":\"down\"}")
        } else {
            Answer::json(200, &format!("{{\"served_by\":\"{name}\"}}"))
        }
    })
}

/// Long enough for the checks made inside one window, even on a loaded machine.
const EJECT_FOR: Duration = Duration::from_millis(4000);

fn outlier_gateway(peers: &[SocketAddr], retries: u32) -> Gateway {
    let extra = format!(
        "    retries: {retries}\n    outlier: {{ consecutive_failures: 3, eject_for: {}ms }}\n",
        EJECT_FOR.as_millis()
    );
    Gateway::start(&one_route_config(peers, &extra, "auth: none"))
}

#[test]
fn a_failing_peer_is_ejected_tried_once_after_the_window_and_comes_back() {
    let failing = Arc::new(AtomicBool::new(false));
    let a = switchable("a", failing.clone());
    let b = named("b");
    let gw = outlier_gateway(&[a.addr, b.addr], 0);
    let mut client = Client::new(gw.addr);
    wait_for(Duration::from_secs(3), "both up", || {
        peer_up(&gw, a.addr) == 1.0 && peer_up(&gw, b.addr) == 1.0
    });

    failing.store(true, Ordering::SeqCst);
    // Round robin alternates: a fails every other request; its third 503 ejects it.
    let mut answered_503 = 0;
    for _ in 0..6 {
        if client.get("/x").status == 503 {
            answered_503 += 1;
        }
    }
    assert_eq!(answered_503, 3, "a's own 503s pass through to the client");
    let ejected_at = Instant::now();
    wait_for(Duration::from_secs(2), "a ejected: peer_up 0", || {
        peer_up(&gw, a.addr) == 0.0
    });
    assert_eq!(peer_up(&gw, b.addr), 1.0);
    let a_before = a.requests().len();
    for _ in 0..10 {
        assert_eq!(served_by(&client.get("/x")), "b");
    }
    assert!(
        ejected_at.elapsed() < EJECT_FOR,
        "the checks above outlasted the window: the machine is too slow for this test"
    );
    assert_eq!(
        a.requests().len(),
        a_before,
        "no request to an ejected peer"
    );

    // After the window, one trial request; it fails: ejected again at once.
    std::thread::sleep(EJECT_FOR.saturating_sub(ejected_at.elapsed()) + Duration::from_millis(100));
    let statuses: Vec<u16> = (0..6).map(|_| client.get("/x").status).collect();
    assert_eq!(
        a.requests().len(),
        a_before + 1,
        "exactly one trial request: {statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 1);
    assert_eq!(peer_up(&gw, a.addr), 0.0, "a failed trial keeps it out");

    // a recovers; after the new window its trial succeeds and it is back.
    failing.store(false, Ordering::SeqCst);
    std::thread::sleep(EJECT_FOR + Duration::from_millis(100));
    let served: Vec<String> = (0..6).map(|_| served_by(&client.get("/x"))).collect();
    assert!(
        served.iter().filter(|s| *s == "a").count() >= 2,
        "{served:?}"
    );
    wait_for(Duration::from_secs(2), "a back: peer_up 1", || {
        peer_up(&gw, a.addr) == 1.0
    });
}

#[test]
fn the_last_peer_in_is_never_ejected() {
    let failing = Arc::new(AtomicBool::new(true));
    let a = switchable("a", failing.clone());
    let b = switchable("b", failing.clone());
    let gw = outlier_gateway(&[a.addr, b.addr], 0);
    let mut client = Client::new(gw.addr);
    for _ in 0..20 {
        assert_eq!(client.get("/x").status, 503);
    }
    // One of them went out after three 503s; the other took every request after.
    wait_for(Duration::from_secs(2), "one ejected", || {
        peer_up(&gw, a.addr) + peer_up(&gw, b.addr) == 1.0
    });
    let (out, last) = if peer_up(&gw, a.addr) == 0.0 {
        (&a, &b)
    } else {
        (&b, &a)
    };
    assert_eq!(out.requests().len(), 3, "ejected at its third failure");
    assert_eq!(last.requests().len(), 17, "the last one in keeps serving");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(peer_up(&gw, last.addr), 1.0, "its peer_up stays 1");
}

#[test]
fn a_connect_error_counts_against_its_peer_though_the_retry_succeeded() {
    // Nothing listens on `dead`: every connect to it is refused.
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let b = named("b");
    let gw = outlier_gateway(&[dead, b.addr], 1);
    let mut client = Client::new(gw.addr);
    for _ in 0..10 {
        assert_eq!(served_by(&client.get("/x")), "b", "the retry on b succeeds");
    }
    wait_for(Duration::from_secs(2), "dead ejected", || {
        peer_up(&gw, dead) == 0.0
    });
    let refused = "portcullis_upstream_errors_total{kind=\"connect\",route=\"r\",upstream=\"u\"}";
    assert_eq!(
        gw.metric(refused),
        3.0,
        "three connect errors, then no attempt"
    );
    for _ in 0..10 {
        assert_eq!(served_by(&client.get("/x")), "b");
    }
    assert_eq!(gw.metric(refused), 3.0, "the ejected peer is not tried");
}

#[test]
fn an_ejection_outlives_a_reload_that_keeps_the_upstream() {
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let b = named("b");
    let gw = outlier_gateway(&[dead, b.addr], 1);
    let mut client = Client::new(gw.addr);
    for _ in 0..6 {
        assert_eq!(served_by(&client.get("/x")), "b");
    }
    wait_for(Duration::from_secs(2), "dead ejected", || {
        peer_up(&gw, dead) == 0.0
    });
    let reload = gw.post_reload();
    assert_eq!(reload.status, 200, "{}", reload.text());
    let refused = "portcullis_upstream_errors_total{kind=\"connect\",route=\"r\",upstream=\"u\"}";
    let before = gw.metric(refused);
    for _ in 0..6 {
        assert_eq!(served_by(&client.get("/x")), "b");
    }
    assert_eq!(gw.metric(refused), before, "still skipped after the reload");
    assert_eq!(peer_up(&gw, dead), 0.0);
}

#[test]
fn an_upstream_timeout_counts_as_a_failure() {
    let slow = Backend::start(|_| Answer::json(200, "{}").after(Duration::from_millis(400)));
    let b = named("b");
    let extra =
        "    timeouts: { read: 100ms }\n    outlier: { consecutive_failures: 2, eject_for: 10s }\n";
    let gw = Gateway::start(&one_route_config(&[slow.addr, b.addr], extra, "auth: none"));
    let mut client = Client::new(gw.addr);
    let mut statuses: Vec<u16> = (0..4).map(|_| client.get("/x").status).collect();
    statuses.sort();
    assert_eq!(
        statuses,
        [200, 200, 504, 504],
        "round robin over slow and b"
    );
    wait_for(Duration::from_secs(2), "slow ejected", || {
        peer_up(&gw, slow.addr) == 0.0
    });
    for _ in 0..4 {
        assert_eq!(served_by(&client.get("/x")), "b");
    }
}

// ---- config errors -----------------------------------------------------------

#[test]
fn bad_match_weights_and_outlier_settings_are_config_errors_with_positions() {
    let dir = temp_dir("routing-conf");
    let path = dir.join("bad.yaml");
    std::fs::write(
        &path,
        "listen: [{ addr: \"127.0.0.1:1\" }]\n\
         upstreams:\n\
         \x20 u:\n\
         \x20   peers:\n\
         \x20     - { addr: \"127.0.0.1:2\", weight: 0 }\n\
         \x20     - { addr: \"127.0.0.1:3\", weight: -2 }\n\
         \x20   outlier: { consecutive_failures: 0, eject_for: 0s }\n\
         \x20 v:\n\
         \x20   peers: [{ addr: \"127.0.0.1:4\", weight: 1.5 }]\n\
         routes:\n\
         \x20 - { name: a, path: /a, upstream: u, match: {} }\n\
         \x20 - { name: b, path: /b, upstream: u, match: { headers: { Connection: x } } }\n\
         \x20 - { name: c, path: /c, upstream: u, match: { headers: { \":path\": /c } } }\n\
         \x20 - { name: d, path: /d, upstream: u, match: { headers: { \"bad name\": x } } }\n",
    )
    .expect("write");
    let out = std::process::Command::new(BIN)
        .args(["--test", "-c"])
        .arg(&path)
        .output()
        .expect("run --test");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    for line in [
        "5:40: upstreams.u.peers[0].weight: a weight is a whole number from 1 to 1000, found 0",
        "6:40: upstreams.u.peers[1].weight: a weight is a whole number from 1 to 1000, found -2",
        "7:38: upstreams.u.outlier.consecutive_failures: must be at least 1",
        "7:52: upstreams.u.outlier.eject_for: must be longer than 0s",
        "9:44: upstreams.v.peers[0].weight: expected a whole number, found \"1.5\"",
        "11:46: routes[0].match: an empty `match` matches everything",
        "12:59: routes[1].match.headers.Connection: \"Connection\" is hop-by-hop",
        "13:59: routes[2].match.headers.:path: \":path\" is a pseudo-header",
        "14:59: routes[3].match.headers.bad name: \"bad name\" is not a valid header name",
    ] {
        assert!(
            stderr.contains(&format!("{file}:{line}")),
            "{line}\nin:\n{stderr}"
        );
    }
}

/// conf/gateway.yaml shows every feature above; it must stay a valid config.
#[test]
fn the_reference_config_with_its_routing_examples_is_valid() {
    let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/gateway.yaml");
    let text = std::fs::read_to_string(conf).expect("read conf/gateway.yaml");
    for example in ["match:", "weight: 9", "outlier:"] {
        assert!(text.contains(example), "conf/gateway.yaml shows {example}");
    }
    let out = std::process::Command::new(BIN)
        .args(["--test", "-c", conf])
        .env("WEB_API_KEY", "reference-key")
        .env("GATEWAY_SECRET", "reference-secret")
        .output()
        .expect("run --test");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
