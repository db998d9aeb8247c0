//! A request's metrics and its access-log line (SPEC §5, §6), once, at its end.

use super::ctx::{InFlight, RequestCtx};
use crate::core::config::LogFormat;
use crate::tables::Target;
use crate::telemetry::access_log::{self, Entry};
use crate::telemetry::process_log::Throttle;
use pingora_proxy::Session;

/// The status logged when the client closed the connection before any answer.
const CLIENT_CLOSED_REQUEST: u16 = 499;

/// Per-request metrics and access-log lines. Off only in the bench build of
/// `benches/telemetry_cost.sh`, which measures what they cost; never in a release.
pub const TELEMETRY: bool = !cfg!(feature = "bench-no-telemetry");

/// Counts a request in flight until its context is dropped, and in its
/// route's `requests_in_flight` until [`record`].
pub fn enter(ctx: &mut RequestCtx) {
    if TELEMETRY {
        ctx.metrics().in_flight.inc();
    }
    ctx.in_flight = Some(InFlight::enter());
}

/// Records a finished request: its metrics and its access-log line.
pub fn record(session: &Session, ctx: &RequestCtx, log_format: LogFormat) {
    if !TELEMETRY {
        return;
    }
    let gw = &ctx.gateway;
    let upstream = ctx.upstream_index().map(|i| &gw.upstreams[i]);
    let metrics = ctx.metrics();
    let req = session.req_header();
    // No answer was written: the client went away first (nginx's 499).
    let status = session
        .response_written()
        .map_or(CLIENT_CLOSED_REQUEST, |r| r.status.as_u16());
    let elapsed = ctx.started.elapsed();
    let bytes_in = session.body_bytes_read() as u64;
    let bytes_out = session.body_bytes_sent() as u64;

    metrics.count_request(&req.method, status);
    super::cache::count(ctx);
    metrics.duration.observe(elapsed.as_secs_f64());
    if ctx.in_flight.is_some() {
        metrics.in_flight.dec();
    }
    metrics.request_bytes.inc_by(bytes_in);
    metrics.response_bytes.inc_by(bytes_out);

    let upstream_name = match ctx.route().map(|r| &r.target) {
        Some(Target::Aggregate(a)) => ctx.upstream_elapsed.map(|_| a.upstreams_label.as_str()),
        _ => upstream
            .filter(|_| !ctx.tried.is_empty())
            .map(|u| u.name.as_str()),
    };
    let line = Entry {
        request_id: &ctx.request_id,
        client: ctx.client.as_ref().map(|c| c.text.as_str()),
        method: req.method.as_str(),
        path: req.uri.path(),
        route: &metrics.route,
        // A token naming no consumer is logged by its `sub` (SPEC §8.1).
        consumer: ctx
            .consumer
            .map(|c| gw.keys.consumer_name(c))
            .or_else(|| ctx.token.as_ref().and_then(|t| t.sub.as_deref())),
        status,
        upstream: upstream_name,
        peer: upstream
            .zip(ctx.tried.last())
            .map(|(u, &p)| u.peers[p].label.as_str()),
        upstream_status: ctx.upstream_status,
        duration_ms: elapsed.as_secs_f64() * 1000.0,
        upstream_ms: ctx.upstream_elapsed.map(|d| d.as_secs_f64() * 1000.0),
        bytes_in,
        bytes_out,
        error: ctx.error,
        trace_id: ctx.trace.as_ref().map(|t| t.trace_id()),
        cache: ctx.cache.map(|c| c.log_label()),
    }
    .render(log_format);
    access_log::write(line);
}

/// Whether to hold back one of Pingora's error lines (`throttle` lets one a
/// second through); the line let through is preceded by the count held back.
pub fn hold_back_error_line(throttle: &Throttle) -> bool {
    match throttle.admit() {
        None => true,
        Some(0) => false,
        Some(held_back) => {
            log::error!("{held_back} more like the next line in the last second(s), not logged");
            false
        }
    }
}
