//! Aggregate routes' fan-out: every part fetched at once over Pingora's HTTP
//! connector (its keep-alive connections pooled per peer between requests),
//! with the same attempt kit as proxied requests, then the JSON merged.

use super::answer;
use super::attempt;
use super::ctx::RequestCtx;
use crate::core::aggregate::{judge, merge, PartFailure, PartOutcome};
use crate::core::forward::{rewrite_upstream_request, Forwarding};
use crate::core::outlier::Verdict;
use crate::core::reply::{Refusal, Reply};
use crate::tables::{Aggregate, Gateway, Part, Route, Target};
use crate::telemetry::metrics::{UpstreamErrorKind, UpstreamMetrics};
use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::HeaderName;
use pingora_core::connectors::http::Connector;
use pingora_core::connectors::ConnectorOptions;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, Result};
use pingora_http::RequestHeader;
use pingora_proxy::Session;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How one attempt at a part ended, when it did not end with an answer.
enum AttemptError {
    Connect,
    /// A pooled connection turned out closed: worth one more try on a fresh one.
    DeadPooled,
    Timeout,
    TooLarge(u16),
    Protocol,
}

impl AttemptError {
    fn from_pingora(e: &mut Error, reused: bool) -> AttemptError {
        match UpstreamErrorKind::of(e) {
            UpstreamErrorKind::Connect => AttemptError::Connect,
            UpstreamErrorKind::Timeout => AttemptError::Timeout,
            UpstreamErrorKind::Protocol if attempt::resend_on_fresh_connection(e, reused) => {
                AttemptError::DeadPooled
            }
            UpstreamErrorKind::Protocol => AttemptError::Protocol,
        }
    }
}

/// A part's answer read in full.
struct Answer {
    status: u16,
    body: Bytes,
}

/// What every part of one client request shares.
struct PartRequest<'a> {
    /// The request sent to each part, before its target and per-peer headers.
    base: RequestHeader,
    forwarding: Forwarding<'a>,
    route: &'a Route,
    /// Consistent-hash key (the client address).
    hash_key: &'a [u8],
    /// The route deadline, bounding every part.
    deadline: Option<Instant>,
}

/// The client's request as every aggregate part's starting point: GET over
/// HTTP/1.1, asking for JSON, without the body's framing, an upgrade, or the
/// conditional and range headers that could make an answer partial or empty.
fn part_request_base(client: &RequestHeader) -> RequestHeader {
    use http::header::{
        ACCEPT, ACCEPT_ENCODING, EXPECT, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE,
        IF_UNMODIFIED_SINCE, RANGE, UPGRADE,
    };
    let mut base = client.clone();
    base.set_method(http::Method::GET);
    base.set_version(http::Version::HTTP_11);
    for name in [
        CONTENT_LENGTH,
        TRANSFER_ENCODING,
        EXPECT,
        ACCEPT_ENCODING,
        RANGE,
        IF_RANGE,
        IF_MATCH,
        IF_NONE_MATCH,
        IF_MODIFIED_SINCE,
        IF_UNMODIFIED_SINCE,
        UPGRADE,
        HeaderName::from_static("http2-settings"),
    ] {
        base.remove_header(&name);
    }
    // Infallible: a static, valid header value.
    let _ = base.insert_header(ACCEPT, "application/json");
    base
}

/// Fetches aggregate parts. One per process, so its connection pools outlive
/// config reloads, like the proxy's own.
pub struct FanOut {
    options: ConnectorOptions,
    /// Made on first use: a connector loads the system CA store (about 1.6 MB
    /// and 70 ms of start-up), which a gateway with no aggregate route never needs.
    connector: OnceLock<Connector>,
}

impl FanOut {
    pub fn new(options: ConnectorOptions) -> FanOut {
        FanOut {
            options,
            connector: OnceLock::new(),
        }
    }

    fn connector(&self) -> &Connector {
        self.connector
            .get_or_init(|| Connector::new(Some(self.options.clone())))
    }

    /// Makes the connector now, so the first aggregate request does not wait for it.
    pub fn warm_up(&self) {
        self.connector();
    }

    /// Answers an aggregate route: every part fetched at once, the JSON
    /// merged; 502 only when every part failed.
    pub async fn answer(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        let gw = ctx.gateway.clone();
        let route_index = ctx.route.unwrap_or(usize::MAX);
        let Some((route, Target::Aggregate(aggregate))) =
            gw.routes.get(route_index).map(|r| (r, &r.target))
        else {
            return answer::refuse(session, ctx, Refusal::Internal).await;
        };
        let req = session.req_header();
        let values: Vec<&str> = gw
            .router
            .params(route_index, req.uri.path())
            .into_iter()
            .map(|(_, value)| value)
            .collect();
        let targets: std::result::Result<Vec<String>, _> = aggregate
            .parts
            .iter()
            .map(|part| part.template.render(&values))
            .collect();
        let Ok(targets) = targets else {
            return answer::refuse(session, ctx, Refusal::BadRequest).await;
        };
        let started = Instant::now();
        let outcomes = {
            let (key, len) = ctx.hash_key();
            let mut base = part_request_base(req);
            if super::token::rewrite_upstream_request(
                &mut base,
                &route.tokens,
                ctx.token.as_deref(),
            )
            .is_err()
            {
                return answer::refuse(session, ctx, Refusal::Internal).await;
            }
            let request = PartRequest {
                base,
                forwarding: ctx.forwarding(),
                route,
                hash_key: &key[..len],
                deadline: ctx.deadline,
            };
            self.fetch_all(&gw, aggregate, &targets, &request).await
        };
        ctx.upstream_elapsed = Some(started.elapsed());
        let keys = aggregate.parts.iter().map(|part| part.member_key.as_str());
        match merge(keys.zip(&outcomes)) {
            Some(body) => answer::route_answer(session, ctx, &Reply::json(200, body)).await,
            None => answer::refuse(session, ctx, Refusal::BadGateway).await,
        }
    }

    /// Fetches every part at once; the outcomes are in the parts' order.
    async fn fetch_all(
        &self,
        gw: &Arc<Gateway>,
        aggregate: &Aggregate,
        targets: &[String],
        request: &PartRequest<'_>,
    ) -> Vec<PartOutcome> {
        let fetches =
            aggregate.parts.iter().zip(targets).map(|(part, target)| {
                self.fetch(gw, part, target, aggregate.max_part_body, request)
            });
        futures::future::join_all(fetches).await
    }

    /// One part, with the upstream's balancing and retries, within the deadline.
    async fn fetch(
        &self,
        gw: &Arc<Gateway>,
        part: &Part,
        target: &str,
        max_body: usize,
        request: &PartRequest<'_>,
    ) -> PartOutcome {
        let upstream = &gw.upstreams[part.upstream];
        let mut base = request.base.clone();
        let uri = target
            .parse::<http::Uri>()
            .map_err(|_| PartFailure::BAD_GATEWAY)?;
        base.set_uri(uri);
        let mut tried: Vec<usize> = Vec::new();
        // A dead pooled connection costs a resend but not the peer; bounded so
        // a peer that keeps closing cannot loop forever.
        let mut resends = 0;
        // Pingora's read timeout restarts with every read: without a route
        // deadline, a part still gets no longer than connect + read in all.
        let deadline = request
            .deadline
            .unwrap_or_else(|| Instant::now() + upstream.timeouts.connect + upstream.timeouts.read);
        loop {
            let budget = attempt::budget(Some(deadline))?.unwrap_or_default();
            let mut lease = attempt::lease_peer(gw, part.upstream, request.hash_key, &mut tried)?;
            let mut req = base.clone();
            let destination = attempt::destination(request.route, upstream, lease.peer());
            rewrite_upstream_request(&mut req, &request.forwarding, &destination)
                .map_err(|_| PartFailure::BAD_GATEWAY)?;
            let http_peer = upstream.http_peer(lease.peer(), Some(budget));
            let exchange = self.exchange(
                &http_peer,
                req,
                max_body,
                &part.metrics,
                upstream.timeouts.idle,
            );
            let result = tokio::time::timeout(budget, exchange)
                .await
                .unwrap_or(Err(AttemptError::Timeout));
            // A connect cut short by the deadline is a timeout, not a bad peer.
            // Its verdict goes to outlier ejection before the peer is freed.
            let result = match result {
                Err(AttemptError::Connect) if Instant::now() >= deadline => {
                    Err(AttemptError::Timeout)
                }
                other => other,
            };
            match &result {
                Ok(Answer { status, .. }) | Err(AttemptError::TooLarge(status)) => {
                    lease.judge(Verdict::of_status(*status))
                }
                Err(AttemptError::Connect | AttemptError::Timeout) => lease.judge(Verdict::Failure),
                Err(AttemptError::DeadPooled | AttemptError::Protocol) => {}
            }
            drop(lease);
            match result {
                Ok(answer) => return judge(answer.status, answer.body),
                Err(AttemptError::Connect) => {
                    part.metrics.error(UpstreamErrorKind::Connect).inc();
                    if attempt::may_try_another_peer(upstream, tried.len()) {
                        continue;
                    }
                    return Err(PartFailure::BAD_GATEWAY);
                }
                Err(AttemptError::DeadPooled) if resends < upstream.peers.len() => {
                    resends += 1;
                    tried.pop();
                }
                Err(AttemptError::Timeout) => {
                    part.metrics.error(UpstreamErrorKind::Timeout).inc();
                    return Err(PartFailure::GATEWAY_TIMEOUT);
                }
                Err(AttemptError::TooLarge(status)) => return Err(PartFailure::too_large(status)),
                Err(AttemptError::DeadPooled | AttemptError::Protocol) => {
                    part.metrics.error(UpstreamErrorKind::Protocol).inc();
                    return Err(PartFailure::BAD_GATEWAY);
                }
            }
        }
    }

    /// Sends one GET to `peer` and reads the whole answer, at most `max_body`
    /// bytes of body; a connection that served a complete answer goes back to
    /// the pool.
    async fn exchange(
        &self,
        peer: &HttpPeer,
        req: RequestHeader,
        max_body: usize,
        metrics: &UpstreamMetrics,
        idle: Duration,
    ) -> Result<Answer, AttemptError> {
        let started = Instant::now();
        let (mut session, reused) = self
            .connector()
            .get_http_session(peer)
            .await
            .map_err(|mut e| AttemptError::from_pingora(&mut e, false))?;
        session.set_read_timeout(peer.options.read_timeout);
        session.set_write_timeout(peer.options.write_timeout);
        let answer: pingora_core::Result<Result<Answer, AttemptError>> = async {
            session.write_request_header(Box::new(req)).await?;
            session.finish_request_body().await?;
            // Skip interim answers (100, 103) up to the real one; a 101 is not
            // interim here (no upgrade was asked for) and ends the exchange.
            let status = loop {
                session.read_response_header().await?;
                let status = session.response_header().map_or(0, |h| h.status.as_u16());
                if status == 101 {
                    return Ok(Err(AttemptError::Protocol));
                }
                if !(100..200).contains(&status) {
                    break status;
                }
            };
            metrics.duration.observe(started.elapsed().as_secs_f64());
            let mut body = BytesMut::new();
            while let Some(chunk) = session.read_response_body().await? {
                if body.len() + chunk.len() > max_body {
                    return Ok(Err(AttemptError::TooLarge(status)));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Ok(Answer {
                status,
                body: body.freeze(),
            }))
        }
        .await;
        match answer {
            Ok(Ok(answer)) => {
                self.connector()
                    .release_http_session(session, peer, Some(idle))
                    .await;
                Ok(answer)
            }
            // Unread body bytes: the connection cannot serve another request.
            Ok(Err(too_large)) => Err(too_large),
            Err(mut e) => Err(AttemptError::from_pingora(&mut e, reused)),
        }
    }
}
