//! A proxied request's side of its upstream attempts: which peer next, the
//! head it is sent with, its body against the route's bounds, the answer's
//! timing, and what a failure means for a retry and for the metrics.

use super::answer::refusal_error;
use super::attempt;
use super::ctx::RequestCtx;
use crate::core::forward::{self, rewrite_upstream_request};
use crate::core::outlier::Verdict;
use crate::core::reply::Refusal;
use crate::tables::{Route, Target};
use crate::telemetry::metrics::{UpstreamErrorKind, UpstreamMetrics};
use http::Uri;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use std::time::Instant;

/// The upstream metrics of a proxied request's route.
fn upstream_metrics(ctx: &RequestCtx) -> Option<&UpstreamMetrics> {
    match ctx.route() {
        Some(Route {
            target: Target::Upstream { metrics, .. },
            ..
        }) => Some(metrics),
        _ => None,
    }
}

/// Leases the next peer (a retry releases the previous one) within the
/// route's time budget. A tunnel idles as long on the client's side as on
/// the upstream's, not `body_read_timeout`, which is for request bodies; an
/// upgrade is our own judgement (`ctx.upgrade`), not Pingora's
/// `is_upgrade_req()` (`upgrade` alone): the one `upstream_request_filter`
/// forwards by.
pub fn next_peer(session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
    let peer = lease_peer(ctx)?;
    if ctx.upgrade {
        session.set_read_timeout(peer.options.read_timeout);
    }
    Ok(peer)
}

fn lease_peer(ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
    let Some(upstream_index) = ctx.upstream_index() else {
        return Err(Error::explain(
            ErrorType::InternalError,
            "route has no upstream",
        ));
    };
    let budget = attempt::budget(ctx.deadline)
        .map_err(|r| refusal_error(r, ErrorType::HTTPStatus(504), "route timeout"))?;
    ctx.lease = None;
    let (key, len) = ctx.hash_key();
    let lease = attempt::lease_peer(&ctx.gateway, upstream_index, &key[..len], &mut ctx.tried)
        .map_err(|refusal| {
            let context = match refusal {
                Refusal::NoHealthyUpstream => "no healthy peer",
                _ => "every peer failed",
            };
            let status = ErrorType::HTTPStatus(refusal.status());
            refusal_error(refusal, status, context)
        })?;
    let upstream = &ctx.gateway.upstreams[upstream_index];
    let mut peer = upstream.http_peer(lease.peer(), budget);
    if ctx.upgrade {
        // A WebSocket may sit idle between frames far longer than a read
        // takes: only the idle timeout (and any route deadline) cuts it.
        let idle = upstream.timeouts.idle.max(upstream.timeouts.read);
        peer.options.read_timeout = Some(budget.map_or(idle, |b| b.min(idle)));
    }
    ctx.lease = Some(lease);
    ctx.upstream_started = Some(Instant::now());
    Ok(peer)
}

/// After a failed connect: counts it, frees the peer, and says whether
/// another peer may take the request.
pub fn connect_failed(ctx: &mut RequestCtx) -> bool {
    let (Some(upstream_index), Some(mut lease)) = (ctx.upstream_index(), ctx.lease.take()) else {
        return false;
    };
    // Against the peer even when a retry on another one succeeds.
    lease.judge(Verdict::Failure);
    if let Some(metrics) = upstream_metrics(ctx) {
        metrics.error(UpstreamErrorKind::Connect).inc();
    }
    attempt::may_try_another_peer(&ctx.gateway.upstreams[upstream_index], ctx.tried.len())
}

/// After an error on an upstream connection: Pingora's policy decides the
/// retry (never a request that is not idempotent or whose body can no longer
/// be replayed; otherwise only when a pooled connection turned out dead), and
/// a dead pooled connection does not cost its peer a place in the rotation.
pub fn proxy_failed(ctx: &mut RequestCtx, e: &mut Error, replayable: bool, reused: bool) {
    if !replayable {
        e.set_retry(false);
    } else if attempt::resend_on_fresh_connection(e, reused) {
        if let Some(p) = ctx.peer() {
            ctx.tried.retain(|t| *t != p);
        }
    }
}

/// Counts a failed upstream exchange in the route's upstream errors, and a
/// timeout against its peer. Connect failures were counted per attempt in
/// [`connect_failed`].
pub fn count_error(ctx: &mut RequestCtx, e: &Error) {
    if e.esource() != &ErrorSource::Upstream {
        return;
    }
    let kind = UpstreamErrorKind::of(e);
    if let (UpstreamErrorKind::Timeout, Some(lease)) = (kind, ctx.lease.as_mut()) {
        lease.judge(Verdict::Failure);
    }
    if kind != UpstreamErrorKind::Connect {
        if let Some(metrics) = upstream_metrics(ctx) {
            metrics.error(kind).inc();
        }
    }
}

/// The head the upstream gets: the forwarding policy of SPEC §4 and the
/// upstream's form of the target (stripped prefix, origin-form).
pub fn prepare_request(
    client: &RequestHeader,
    upstream_request: &mut RequestHeader,
    ctx: &RequestCtx,
) -> Result<()> {
    let gw = &ctx.gateway;
    let (Some(route), Some(upstream_index), Some(peer)) =
        (ctx.route(), ctx.upstream_index(), ctx.peer())
    else {
        return Ok(());
    };
    let upstream = &gw.upstreams[upstream_index];
    let destination = attempt::destination(route, upstream, peer);
    // The client's token first, then the upstream's and route's own headers:
    // an `authorization` configured for the upstream is not the client's.
    super::token::rewrite_upstream_request(upstream_request, &route.tokens, ctx.token.as_deref())?;
    rewrite_upstream_request(upstream_request, &ctx.forwarding(), &destination)?;
    let absolute_form = !client.raw_path().starts_with(b"/") && client.raw_path() != b"*";
    let uri = &client.uri;
    if let Some(target) =
        forward::upstream_target(uri.path(), uri.query(), route.strip_segments, absolute_form)
    {
        let target: Uri = target
            .parse()
            .map_err(|_| Error::explain(ErrorType::InternalError, "stripped path is not a URI"))?;
        upstream_request.set_uri(target);
    }
    Ok(())
}

/// A chunk of the request body on its way upstream: within the route's
/// deadline and `max_body`.
pub fn body_chunk(ctx: &mut RequestCtx, len: usize) -> Result<()> {
    if ctx.deadline_passed() {
        return Err(refusal_error(
            Refusal::GatewayTimeout,
            ErrorType::WriteTimedout,
            "route timeout while sending the body",
        ));
    }
    ctx.body_bytes += len as u64;
    let max = ctx.route().and_then(|r| r.max_body);
    if max.is_some_and(|m| ctx.body_bytes > m) {
        return Err(refusal_error(
            Refusal::PayloadTooLarge,
            ErrorType::HTTPStatus(413),
            "request body too large",
        ));
    }
    Ok(())
}

/// The route timeout bounds the whole answer, not only its header.
pub fn answer_in_time(ctx: &RequestCtx) -> Result<()> {
    if ctx.deadline_passed() {
        return Err(refusal_error(
            Refusal::GatewayTimeout,
            ErrorType::ReadTimedout,
            "route timeout while reading the body",
        ));
    }
    Ok(())
}

/// Notes the upstream's answer: its status and how long it took. An answer
/// framed by a transfer-coding other than plain `chunked` is refused (502):
/// this runs before any byte of the answer is sent, and the error reaches
/// `fail_to_proxy` like any upstream failure.
pub fn note_answer(ctx: &mut RequestCtx, answer: &ResponseHeader, telemetry: bool) -> Result<()> {
    let status = answer.status;
    if status.is_informational() && status != http::StatusCode::SWITCHING_PROTOCOLS {
        return Ok(()); // a 103 or 100 before the real answer
    }
    ctx.upstream_status = Some(status.as_u16());
    if let Some(lease) = ctx.lease.as_mut() {
        lease.judge(Verdict::of_status(status.as_u16()));
    }
    if !forward::upstream_framing_is_plain(&answer.headers) {
        return Err(refusal_error(
            Refusal::BadGateway,
            ErrorType::InvalidHTTPHeader,
            "upstream answer has a transfer-coding other than chunked",
        )
        .into_up());
    }
    if let Some(started) = ctx.upstream_started {
        let elapsed = started.elapsed();
        ctx.upstream_elapsed = Some(elapsed);
        if let (true, Some(metrics)) = (telemetry, upstream_metrics(ctx)) {
            metrics.duration.observe(elapsed.as_secs_f64());
        }
    }
    Ok(())
}
