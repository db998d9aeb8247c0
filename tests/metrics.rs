//! Metrics seen from outside: `promtool check metrics` on the admin output, and
//! a real Prometheus server scraping the gateway.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn gateway_with_traffic() -> (Gateway, Backend) {
    let backend = Backend::echo();
    let config = format!(
        "{}upstreams:\n  users:\n    peers: [\"{}\"]\n  dead:\n    peers: [\"127.0.0.1:{}\"]\n    retries: 0\n\
         routes:\n  - {{ name: users, path: /users, upstream: users }}\n\
         \x20 - {{ name: dead, path: /dead, upstream: dead, auth: none }}\n\
         \x20 - {{ name: quiet, path: /quiet, upstream: users }}\n",
        config_head(),
        backend.addr,
        free_port()
    );
    let gw = Gateway::start(&config);
    assert_eq!(gw.get_with_key("/users/1").status, 200);
    assert_eq!(
        request(
            gw.addr,
            "POST",
            "/users",
            &[("x-api-key", KEY)],
            b"{\"a\":1}"
        )
        .status,
        200
    );
    assert_eq!(gw.get("/users/1", &[]).status, 401);
    assert_eq!(
        gw.get("/users/1", &[("x-api-key", "not-a-key")]).status,
        401
    );
    assert_eq!(gw.get("/secret/path/nobody/knows", &[]).status, 404);
    assert_eq!(gw.get("/dead", &[]).status, 502);
    assert_eq!(
        request(gw.addr, "BREW", "/users/1", &[("x-api-key", KEY)], b"").status,
        200
    );
    (gw, backend)
}

#[test]
fn metrics_pass_promtool_and_hold_every_family() {
    let (gw, _backend) = gateway_with_traffic();
    let text = gw.metrics();

    promtool_accepts(&text);

    for family in [
        "portcullis_requests_total",
        "portcullis_request_duration_seconds",
        "portcullis_upstream_duration_seconds",
        "portcullis_requests_in_flight",
        "portcullis_request_size_bytes_total",
        "portcullis_response_size_bytes_total",
        "portcullis_auth_failures_total",
        "portcullis_upstream_errors_total",
        "portcullis_config_reloads_total",
        "portcullis_upstream_peer_up",
        "portcullis_rate_limited_total",
        "portcullis_rate_limit_store_errors_total",
        "portcullis_build_info",
        "portcullis_connections_open",
        "portcullis_config_last_reload_success_timestamp_seconds",
        "portcullis_cache_size_bytes",
        "portcullis_cache_evictions_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "{family} lacks HELP"
        );
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} lacks TYPE"
        );
    }
    let value = |series: &str| gw.metric(series);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        value(&format!(
            "portcullis_build_info{{pingora_version=\"0.9.1\",version=\"{version}\"}}"
        )),
        1.0
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    for stamp in [
        "process_start_time_seconds",
        "portcullis_config_last_reload_success_timestamp_seconds",
    ] {
        let at = value(stamp);
        assert!(
            (now - 120.0..=now + 1.0).contains(&at),
            "{stamp} {at} vs now {now}"
        );
    }
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(value("process_open_fds") >= 3.0);
    // The scrape's own connection goes to the admin listener: not counted.
    let idle = std::net::TcpStream::connect(gw.addr).expect("connect");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while value("portcullis_connections_open") < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "an open client connection is counted"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(idle);
    // A reload that takes effect moves the config's timestamp.
    let loaded = value("portcullis_config_last_reload_success_timestamp_seconds");
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(gw.post_reload().status, 200);
    assert!(value("portcullis_config_last_reload_success_timestamp_seconds") > loaded);
    assert_eq!(
        value("portcullis_requests_total{method=\"GET\",route=\"users\",status=\"200\"}"),
        1.0
    );
    assert_eq!(
        value("portcullis_requests_total{method=\"POST\",route=\"users\",status=\"200\"}"),
        1.0
    );
    assert_eq!(
        value("portcullis_requests_total{method=\"GET\",route=\"users\",status=\"401\"}"),
        2.0
    );
    assert_eq!(
        value("portcullis_requests_total{method=\"GET\",route=\"none\",status=\"404\"}"),
        1.0
    );
    assert_eq!(
        value("portcullis_requests_total{method=\"OTHER\",route=\"users\",status=\"200\"}"),
        1.0
    );
    assert_eq!(
        value("portcullis_requests_total{method=\"GET\",route=\"dead\",status=\"502\"}"),
        1.0
    );
    assert_eq!(
        value("portcullis_auth_failures_total{reason=\"invalid_api_key\",route=\"users\"}"),
        1.0
    );
    assert_eq!(
        value(
            "portcullis_upstream_errors_total{kind=\"connect\",route=\"dead\",upstream=\"dead\"}"
        ),
        1.0
    );
    assert_eq!(
        value("portcullis_request_duration_seconds_count{route=\"users\"}"),
        5.0
    );
    assert_eq!(
        value("portcullis_upstream_duration_seconds_count{route=\"users\",upstream=\"users\"}"),
        3.0
    );
    assert_eq!(
        value("portcullis_request_size_bytes_total{route=\"users\"}"),
        7.0
    );
    assert!(value("portcullis_response_size_bytes_total{route=\"users\"}") > 0.0);
    assert_eq!(value("portcullis_requests_in_flight{route=\"users\"}"), 0.0);

    // Known at load time, so exported from zero before any traffic.
    assert!(text.contains("portcullis_auth_failures_total{reason=\"forbidden\",route=\"quiet\"} 0"));
    assert!(text.contains(
        "portcullis_upstream_errors_total{kind=\"timeout\",route=\"quiet\",upstream=\"users\"} 0"
    ));
    assert!(text.contains("portcullis_config_reloads_total{result=\"error\"} 0"));

    // Bounded cardinality: no raw path, key or client address in any label.
    // (`peer_up`'s `peer` is the peer as written in the config, loopback here.)
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("portcullis_upstream_peer_up{"))
        .collect::<Vec<_>>()
        .join("\n");
    for leaked in [
        "/secret/path",
        "/users/1",
        KEY,
        "not-a-key",
        "127.0.0.1",
        "BREW",
    ] {
        assert!(!text.contains(leaked), "{leaked} appears in /metrics");
    }
}

/// Reads `portcullis_requests_total` back through a real Prometheus server.
#[test]
fn a_real_prometheus_scrapes_the_admin_listener() {
    let (gw, _backend) = gateway_with_traffic();
    let dir = temp_dir("prometheus");
    let port = free_port();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: portcullis\n    static_configs:\n      - targets: [\"{}\"]\n",
            gw.admin
        ),
    )
    .expect("write prometheus.yml");
    let mut prometheus = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::fs::File::create(dir.join("prometheus.log")).expect("log file"))
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("prometheus.err")).expect("log file"),
        ))
        .spawn()
        .expect("prometheus (Debian package `prometheus`) must be installed");

    let api: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let query = "/api/v1/query?query=portcullis_requests_total%7Broute%3D%22users%22%2Cstatus%3D%22401%22%7D";
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    let found = loop {
        if Instant::now() > deadline {
            break None;
        }
        if let Ok(resp) = send_raw(
            api,
            format!("GET {query} HTTP/1.1\r\nhost: p\r\nconnection: close\r\n\r\n").as_bytes(),
        ) {
            last = resp.text();
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&last) {
                if let Some(sample) = v["data"]["result"]
                    .as_array()
                    .and_then(|r| r.first())
                    .cloned()
                {
                    break Some(sample);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    let sample = found.unwrap_or_else(|| {
        panic!(
            "Prometheus never returned the series; last answer: {last}\n{}",
            std::fs::read_to_string(dir.join("prometheus.err")).unwrap_or_default()
        )
    });
    assert_eq!(sample["metric"]["route"], "users");
    assert_eq!(sample["metric"]["method"], "GET");
    assert_eq!(sample["value"][1], "2", "{sample}");
}
