//! W3C trace context: a valid `traceparent` goes upstream as it came, a missing
//! or invalid one is replaced by a trace the gateway starts; either way the
//! access-log line carries its trace id, and aggregate parts carry it too.

mod common;

use common::*;

const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn logged_trace_id(gw: &Gateway, request_id: &str) -> String {
    let line = gw
        .access_log()
        .into_iter()
        .find(|l| l["request_id"] == request_id)
        .expect("the request's access-log line");
    line["trace_id"].as_str().expect("trace_id").to_string()
}

#[test]
fn a_valid_traceparent_is_passed_on_and_logged() {
    let backend = Backend::echo();
    let gw = Gateway::start(&one_route_config(&[backend.addr], "", ""));
    let resp = gw.get(
        "/x",
        &[
            ("x-api-key", KEY),
            ("traceparent", VALID),
            ("tracestate", "a=1"),
        ],
    );
    assert_eq!(resp.status, 200);
    let sent = backend.last();
    assert_eq!(sent.header("traceparent"), Some(VALID));
    assert_eq!(sent.header("tracestate"), Some("a=1"));
    let id = resp.header("x-request-id").expect("id");
    assert_eq!(logged_trace_id(&gw, id), "4bf92f3577b34da6a3ce929d0e0e4736");
}

#[test]
fn a_missing_or_invalid_traceparent_starts_a_trace() {
    let backend = Backend::echo();
    let gw = Gateway::start(&one_route_config(&[backend.addr], "", ""));
    for sent_by_client in [None, Some("00-zz-bad-01")] {
        let mut headers = vec![("x-api-key", KEY), ("tracestate", "a=1")];
        if let Some(bad) = sent_by_client {
            headers.push(("traceparent", bad));
        }
        let resp = gw.get("/x", &headers);
        assert_eq!(resp.status, 200);
        let sent = backend.last();
        let traceparent = sent.header("traceparent").expect("a traceparent upstream");
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{traceparent}");
        assert_eq!((parts[0], parts[1].len(), parts[2].len()), ("00", 32, 16));
        assert_eq!(
            sent.header("tracestate"),
            None,
            "tracestate of no trace of ours"
        );
        let id = resp.header("x-request-id").expect("id");
        assert_eq!(logged_trace_id(&gw, id), parts[1]);
    }
}

#[test]
fn two_traceparents_are_invalid_and_start_a_trace() {
    let backend = Backend::echo();
    let gw = Gateway::start(&one_route_config(&[backend.addr], "", ""));
    let other = "00-11111111111111111111111111111111-2222222222222222-01";
    let resp = gw.get(
        "/x",
        &[
            ("x-api-key", KEY),
            ("traceparent", VALID),
            ("traceparent", other),
        ],
    );
    assert_eq!(resp.status, 200);
    let sent = backend.last();
    let traceparent = sent.header("traceparent").expect("one traceparent");
    assert_ne!(traceparent, VALID);
    assert_ne!(traceparent, other);
    let id = resp.header("x-request-id").expect("id");
    assert_eq!(
        logged_trace_id(&gw, id),
        traceparent.split('-').nth(1).expect("id")
    );
}

#[test]
fn aggregate_parts_carry_the_trace() {
    let backend = Backend::echo();
    let config = format!(
        "{}upstreams:\n  u:\n    peers: [\"{}\"]\nroutes:\n  - name: both\n    path: /both/{{id}}\n    aggregate:\n      a: {{ upstream: u, path: \"/a/{{id}}\" }}\n      b: {{ upstream: u, path: \"/b/{{id}}\" }}\n",
        config_head(),
        backend.addr
    );
    let gw = Gateway::start(&config);
    let resp = gw.get("/both/1", &[("x-api-key", KEY), ("traceparent", VALID)]);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let requests = backend.requests();
    assert_eq!(requests.len(), 2);
    for part in requests {
        assert_eq!(part.header("traceparent"), Some(VALID), "{}", part.target);
    }
}
