//! An outage must not flood the process log: Pingora's line per failed request
//! is let through once a second, with a count of those held back.

mod common;

use common::*;
use std::time::{Duration, Instant};

#[test]
fn failed_requests_in_an_outage_log_one_line_a_second_and_a_count() {
    let dead = free_port();
    let config = format!(
        "{}upstreams:\n  dead:\n    peers: [\"127.0.0.1:{dead}\"]\n\
         routes:\n  - {{ name: dead, path: /, upstream: dead }}\n",
        config_head()
    );
    let gw = Gateway::start(&config);
    let started = Instant::now();
    let sent = 60;
    for _ in 0..sent {
        assert_eq!(gw.get_with_key("/x").status, 502);
    }
    let seconds = started.elapsed().as_secs() + 1;
    // One more in a later second: it carries the count of the held-back lines.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(gw.get_with_key("/x").status, 502);
    // Pingora logs after the answer is written: wait for the count and for
    // the line it precedes (two writes: a reader may fall between them).
    let waited = Instant::now();
    let failures_logged = |log: &str| log.lines().filter(|l| l.contains("Fail to proxy")).count();
    while !(gw.stderr().contains("more like the next line") && failures_logged(&gw.stderr()) >= 2)
        && waited.elapsed().as_secs() < 5
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = gw.stderr();
    let lines = failures_logged(&log) as u64;
    assert!(
        lines >= 2 && lines <= seconds + 2,
        "{lines} error lines for {sent} failures in {seconds} s:\n{log}"
    );
    assert!(
        log.contains("more like the next line"),
        "the held-back lines are counted:\n{log}"
    );
    // Every failure is still in the access log and the metrics.
    let failed = gw
        .access_log()
        .iter()
        .filter(|l| l["status"] == 502)
        .count();
    assert_eq!(failed, sent + 1);
}
