//! The Pingora `ProxyHttp` implementation. Each phase has one job and delegates
//! the deciding to the pure modules: `request_filter` decides (route, key, body
//! size) and answers or records the decision; `upstream_peer` picks a peer;
//! `upstream_request_filter` rewrites the outgoing headers; `response_filter`
//! rewrites the answer; `logging` records metrics and the access-log line once.

use crate::access_log::{self, Entry};
use crate::aggregate::{self, Aggregate, FanOut, FanOutRequest};
use crate::config::{LimitBy, LogFormat};
use crate::forward;
use crate::gateway::{Gateway, HeaderRules, Route, Target};
use crate::limit::{Decision, Key, Subject, Window};
use crate::metrics::{AuthFailure, RouteMetrics, UpstreamErrorKind};
use crate::reply::Refusal;
use crate::router::{host_without_port, strip_segments, Lookup};
use crate::upstream::{NoPeer, Upstream};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderName, HeaderValue, Uri};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Requests between `request_filter` and `logging`, process-wide: a graceful
/// shutdown exits as soon as this reaches zero.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Whether a warning last given at `last` (seconds) may be given again now: an
/// outage or a flood must not flood the log too.
pub fn once_a_second(last: &AtomicU64) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    last.swap(now, Ordering::Relaxed) != now
}

/// Logs a store failure at most once a second.
fn warn_store_error(e: &crate::limit::StoreError) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    if once_a_second(&LAST) {
        log::warn!("{e}; applying on_store_error");
    }
}

/// How many requests are being handled right now.
pub fn in_flight() -> usize {
    IN_FLIGHT.load(Ordering::Acquire)
}

/// The status logged when the client closed the connection before any answer.
const CLIENT_CLOSED_REQUEST: u16 = 499;
/// Per-request metrics and access-log lines. Off only in the bench build of
/// `benches/telemetry_cost.sh`, which measures what they cost; never in a release.
const TELEMETRY: bool = !cfg!(feature = "bench-no-telemetry");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The gateway as a Pingora proxy: reads the current tables for each request.
pub struct Portcullis {
    pub tables: Arc<ArcSwap<Gateway>>,
    pub log_format: LogFormat,
    /// Fetches aggregate routes' parts over its own pooled connections.
    pub fan_out: FanOut,
}

/// What earlier phases decided, for the later ones.
pub struct RequestCtx {
    /// The tables this request started with, kept to its end across reloads.
    gateway: Arc<Gateway>,
    started: Instant,
    request_id: String,
    client: Option<IpAddr>,
    /// `client` as text, for the access log.
    client_text: Option<String>,
    forwarded_for: String,
    route: Option<usize>,
    consumer: Option<usize>,
    refusal: Option<Refusal>,
    deadline: Option<Instant>,
    /// The peer in use and every peer tried, for retries on another one.
    peer: Option<usize>,
    tried: Vec<usize>,
    upstream_started: Option<Instant>,
    upstream_elapsed: Option<Duration>,
    upstream_status: Option<u16>,
    body_bytes: u64,
    /// Whether this request was counted in `requests_in_flight` (and the drain count).
    in_flight: bool,
    /// The rate-limit window the `ratelimit-*` headers describe.
    rate: Option<Window>,
    /// Whether the client came over TLS (`x-forwarded-proto: https`).
    https: bool,
}

impl RequestCtx {
    fn route<'g>(&self, gateway: &'g Gateway) -> Option<&'g Route> {
        self.route.map(|i| &gateway.routes[i])
    }

    fn metrics(&self) -> &RouteMetrics {
        self.route(&self.gateway)
            .map_or(&self.gateway.unrouted, |r| &r.metrics)
    }

    /// The upstream this request is proxied to, if any.
    fn upstream_index(&self) -> Option<usize> {
        match self.route(&self.gateway)?.target {
            Target::Upstream { upstream, .. } => Some(upstream),
            Target::Aggregate(_) | Target::Respond { .. } => None,
        }
    }
}

fn header_str(req: &RequestHeader, name: impl http::header::AsHeaderName) -> Option<&str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

/// The request's host without port, from `host` or the HTTP/2 authority.
fn request_host(req: &RequestHeader) -> Option<&str> {
    header_str(req, HOST)
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .map(host_without_port)
}

/// A route's `response_headers`: remove, then set.
fn apply_response_rules(rules: &HeaderRules, resp: &mut ResponseHeader) -> Result<()> {
    for name in &rules.remove {
        resp.remove_header(name);
    }
    for (name, value) in &rules.set {
        resp.insert_header(name.clone(), value.clone())?;
    }
    Ok(())
}

impl Portcullis {
    /// Sends one of the gateway's own JSON answers.
    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        refusal: Refusal,
    ) -> Result<()> {
        let body = refusal.body(&ctx.request_id);
        let mut resp = ResponseHeader::build(refusal.status(), Some(5))?;
        resp.insert_header(CONTENT_TYPE, "application/json")?;
        resp.insert_header(CONTENT_LENGTH, body.len())?;
        resp.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
        for (name, value) in refusal.extra_headers(ctx.gateway.auth_header.as_str()) {
            resp.insert_header(name, value)?;
        }
        insert_rate_headers(&mut resp, ctx.rate)?;
        if refusal.closes_connection() || !session.is_body_empty() {
            // Unread request bytes must not be parsed as the next request.
            session.set_keepalive(None);
        }
        ctx.refusal = Some(refusal);
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await
    }

    /// Answers a `respond:` route.
    async fn respond(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        route: &Route,
        status: u16,
        body: &Bytes,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Result<()> {
        let mut resp = ResponseHeader::build(status, Some(4 + headers.len()))?;
        resp.insert_header(CONTENT_LENGTH, body.len())?;
        for (name, value) in headers {
            resp.insert_header(name.clone(), value.clone())?;
        }
        apply_response_rules(&route.response_headers, &mut resp)?;
        resp.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
        insert_rate_headers(&mut resp, ctx.rate)?;
        if !session.is_body_empty() {
            session.set_keepalive(None);
        }
        session
            .write_response_header(Box::new(resp), body.is_empty())
            .await?;
        if !body.is_empty() {
            session
                .write_response_body(Some(body.clone()), true)
                .await?;
        }
        Ok(())
    }

    /// Answers an aggregate route: every part fetched at once, the JSON merged;
    /// 502 only when every part failed.
    async fn answer_aggregate(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
        aggregate: &Aggregate,
    ) -> Result<()> {
        let gw = ctx.gateway.clone();
        let req = session.req_header();
        let Some(route_index) = ctx.route else {
            return self.refuse(session, ctx, Refusal::Internal).await;
        };
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
            return self.refuse(session, ctx, Refusal::BadRequest).await;
        };
        let base = part_request_base(req);
        let (key, len) = hash_key(ctx.client);
        let started = Instant::now();
        let outcomes = {
            let ctx: &RequestCtx = ctx;
            let prepare = |req: &mut RequestHeader, upstream: &Upstream, peer: usize| {
                rewrite_upstream_request(req, ctx, route, upstream, peer)
            };
            let request = FanOutRequest {
                base: &base,
                prepare: &prepare,
                hash_key: &key[..len],
                deadline: ctx.deadline,
            };
            self.fan_out
                .fetch_all(&gw.upstreams, aggregate, &targets, &request)
                .await
        };
        ctx.upstream_elapsed = Some(started.elapsed());
        let keys = aggregate.parts.iter().map(|part| part.member_key.as_str());
        match aggregate::merge(keys.zip(&outcomes)) {
            Some(body) => {
                let json = [(CONTENT_TYPE, HeaderValue::from_static("application/json"))];
                self.respond(session, ctx, route, 200, &Bytes::from(body), &json)
                    .await
            }
            None => self.refuse(session, ctx, Refusal::BadGateway).await,
        }
    }

    /// Charges the request to its rate limits; `Err` is the refusal to send.
    async fn apply_rate_limits(&self, ctx: &mut RequestCtx) -> std::result::Result<(), Refusal> {
        let gw = ctx.gateway.clone();
        let Some(route) = ctx.route(&gw) else {
            return Ok(());
        };
        let keys = limit_keys(&gw, route, ctx.consumer, ctx.client);
        if keys.is_empty() {
            return Ok(());
        }
        let decision = match gw.limiter.decide(&keys).await {
            Ok(decision) => decision,
            Err(e) => {
                let store = gw.limiter.store_name();
                crate::metrics::families()
                    .rate_limit_store_errors
                    .with_label_values(&[store])
                    .inc();
                warn_store_error(&e);
                gw.limiter.on_failure()
            }
        };
        match decision {
            Decision::Allowed(window) => {
                ctx.rate = Some(window);
                Ok(())
            }
            Decision::AllowedBlind => Ok(()),
            Decision::Limited(window) => {
                ctx.rate = Some(window);
                route.metrics.rate_limited.inc();
                Err(Refusal::RateLimited {
                    retry_after_secs: window.retry_after_secs(),
                })
            }
            Decision::Unavailable => Err(Refusal::RateLimitUnavailable),
        }
    }

    /// Route, key and body-size checks; `Err` is the refusal to send.
    fn admit(&self, session: &Session, ctx: &mut RequestCtx) -> std::result::Result<(), Refusal> {
        let gw = &ctx.gateway;
        let req = session.req_header();
        // HTTP/1 heads were judged whole in `connection.rs`; an HTTP/2 path is
        // judged here, so no protocol can climb out of a route's prefix.
        if crate::head::check_path(req.uri.path()).is_err() {
            return Err(Refusal::BadRequest);
        }
        let route_index = match gw.route(&req.method, req.uri.path(), request_host(req)) {
            Lookup::Found(i) => i,
            Lookup::MethodNotAllowed(allow) => return Err(Refusal::MethodNotAllowed { allow }),
            Lookup::NotFound => return Err(Refusal::NoRoute),
        };
        ctx.route = Some(route_index);
        let route = &gw.routes[route_index];

        if route.needs_key {
            let (consumer, failure) = match req.headers.get(&gw.auth_header) {
                None => (None, Some((AuthFailure::Missing, Refusal::MissingApiKey))),
                Some(key) => match gw.keys.find(key.as_bytes()) {
                    None => (None, Some((AuthFailure::Invalid, Refusal::InvalidApiKey))),
                    Some(id) if route.consumers.as_ref().is_some_and(|c| !c.contains(&id)) => {
                        (Some(id), Some((AuthFailure::Forbidden, Refusal::Forbidden)))
                    }
                    Some(id) => (Some(id), None),
                },
            };
            ctx.consumer = consumer;
            if let Some((reason, refusal)) = failure {
                route.metrics.auth_failure(reason).inc();
                return Err(refusal);
            }
        }

        if let (Some(max), Some(len)) = (route.max_body, header_str(req, CONTENT_LENGTH)) {
            if len.trim().parse::<u64>().map_or(true, |n| n > max) {
                return Err(Refusal::PayloadTooLarge);
            }
        }
        ctx.deadline = route.timeout.map(|t| ctx.started + t);
        Ok(())
    }
}

/// `ratelimit-limit`, `-remaining`, `-reset` for an answer on a limited route.
fn insert_rate_headers(resp: &mut ResponseHeader, window: Option<Window>) -> Result<()> {
    if let Some(w) = window {
        resp.insert_header("ratelimit-limit", w.limit)?;
        resp.insert_header("ratelimit-remaining", w.remaining)?;
        resp.insert_header("ratelimit-reset", w.reset_secs())?;
    }
    Ok(())
}

/// The counters a request is charged to: its route's limit and its consumer's.
fn limit_keys(
    gw: &Gateway,
    route: &Route,
    consumer: Option<usize>,
    client: Option<IpAddr>,
) -> Vec<Key> {
    let mut keys = Vec::with_capacity(2);
    let by_ip = || client.map_or(Subject::Everyone, Subject::Ip);
    if let Some((limit, by)) = route.rate_limit {
        let subject = match (by, consumer) {
            (LimitBy::Route, _) => Subject::Everyone,
            (LimitBy::Ip, _) => by_ip(),
            (LimitBy::Consumer, Some(id)) => Subject::Consumer(id as u32),
            // A route without auth has no consumer: count by address instead.
            (LimitBy::Consumer, None) => by_ip(),
        };
        keys.push(Key { limit, subject });
    }
    if let Some(id) = consumer {
        if let Some(limit) = gw.consumer_limits.get(id).copied().flatten() {
            keys.push(Key {
                limit,
                subject: Subject::Consumer(id as u32),
            });
        }
    }
    keys
}

/// How an error from Pingora is told to the client.
fn refusal_for(e: &Error, ctx: &RequestCtx) -> Option<Refusal> {
    if let Some(r) = &ctx.refusal {
        return Some(r.clone());
    }
    let deadline_passed = ctx.deadline.is_some_and(|d| Instant::now() >= d);
    match (e.esource(), e.etype()) {
        (_, ErrorType::HTTPStatus(413)) => Some(Refusal::PayloadTooLarge),
        (ErrorSource::Upstream, ErrorType::ReadTimedout | ErrorType::WriteTimedout) => {
            Some(Refusal::GatewayTimeout)
        }
        (ErrorSource::Upstream, _) if deadline_passed => Some(Refusal::GatewayTimeout),
        (ErrorSource::Upstream, _) => Some(Refusal::BadGateway),
        (
            ErrorSource::Downstream,
            ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed,
        ) => {
            None // the client is gone: nobody to answer
        }
        (ErrorSource::Downstream, ErrorType::ReadTimedout) => None,
        (ErrorSource::Downstream, _) => Some(Refusal::BadRequest),
        (
            _,
            ErrorType::ConnectTimedout
            | ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError,
        ) => Some(Refusal::BadGateway),
        _ => Some(Refusal::Internal),
    }
}

/// The client's request as every aggregate part's starting point: GET over
/// HTTP/1.1, asking for JSON, without the body's framing, an upgrade, or the
/// conditional and range headers that could make an answer partial or empty.
fn part_request_base(client: &RequestHeader) -> RequestHeader {
    use http::header::{
        ACCEPT, ACCEPT_ENCODING, EXPECT, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE,
        IF_UNMODIFIED_SINCE, RANGE, TRANSFER_ENCODING, UPGRADE,
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

/// The headers an upstream gets (SPEC §4): the client's key and hop-by-hop
/// headers removed, the upstream's and route's headers set, `x-forwarded-*`,
/// `x-request-id` and `host`. Shared by proxied requests and aggregate parts.
fn rewrite_upstream_request(
    req: &mut RequestHeader,
    ctx: &RequestCtx,
    route: &Route,
    upstream: &Upstream,
    peer: usize,
) -> Result<()> {
    let gw = &ctx.gateway;
    req.remove_header(&gw.auth_header);
    let is_upgrade = req.headers.contains_key(http::header::UPGRADE);
    let listed: Vec<String> = req
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(forward::connection_listed)
        .map(str::to_ascii_lowercase)
        .collect();
    for name in &listed {
        if !(is_upgrade && name == "upgrade") {
            req.remove_header(name.as_str());
        }
    }
    for name in &forward::HOP_BY_HOP {
        req.remove_header(name);
    }
    if is_upgrade {
        req.insert_header(http::header::CONNECTION, "upgrade")?;
    }

    let original_host = req.headers.get(HOST).cloned();
    for name in &route.request_headers.remove {
        req.remove_header(name);
    }
    for (name, value) in upstream.headers.iter().chain(&route.request_headers.set) {
        req.insert_header(name.clone(), value.clone())?;
    }
    req.insert_header(X_FORWARDED_FOR, ctx.forwarded_for.as_str())?;
    req.insert_header(X_FORWARDED_PROTO, if ctx.https { "https" } else { "http" })?;
    if let Some(host) = &original_host {
        req.insert_header(X_FORWARDED_HOST, host.clone())?;
    }
    req.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
    if !route.preserve_host {
        if upstream.tls && !upstream.sni.is_empty() {
            req.insert_header(HOST, upstream.sni.as_str())?;
        } else {
            req.insert_header(HOST, upstream.peers[peer].host.clone())?;
        }
    }
    Ok(())
}

/// Consistent-hash key: the client address's bytes.
fn hash_key(client: Option<IpAddr>) -> ([u8; 16], usize) {
    let mut key = [0u8; 16];
    match client {
        Some(IpAddr::V4(v4)) => {
            key[..4].copy_from_slice(&v4.octets());
            (key, 4)
        }
        Some(IpAddr::V6(v6)) => (v6.octets(), 16),
        None => (key, 0),
    }
}

impl Portcullis {
    /// The request's metrics and its access-log line (SPEC §5, §6).
    fn record(&self, session: &Session, ctx: &RequestCtx) {
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
        metrics.duration.observe(elapsed.as_secs_f64());
        if ctx.in_flight {
            metrics.in_flight.dec();
        }
        metrics.request_bytes.inc_by(bytes_in);
        metrics.response_bytes.inc_by(bytes_out);

        let upstream_name = match ctx.route(gw).map(|r| &r.target) {
            Some(Target::Aggregate(a)) => ctx.upstream_elapsed.map(|_| a.upstreams_label.as_str()),
            _ => upstream
                .filter(|_| !ctx.tried.is_empty())
                .map(|u| u.name.as_str()),
        };
        let line = Entry {
            request_id: &ctx.request_id,
            client: ctx.client_text.as_deref(),
            method: req.method.as_str(),
            path: req.uri.path(),
            route: &metrics.route,
            consumer: ctx.consumer.map(|c| gw.keys.consumer_name(c)),
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
            error: ctx.refusal.as_ref().map(Refusal::code),
        }
        .render(self.log_format);
        access_log::write(line);
    }
}

#[async_trait]
impl ProxyHttp for Portcullis {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            gateway: self.tables.load_full(),
            started: Instant::now(),
            request_id: String::new(),
            client: None,
            client_text: None,
            forwarded_for: String::new(),
            route: None,
            consumer: None,
            refusal: None,
            deadline: None,
            peer: None,
            tried: Vec::new(),
            upstream_started: None,
            upstream_elapsed: None,
            upstream_status: None,
            body_bytes: 0,
            in_flight: false,
            rate: None,
            https: false,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let req = session.req_header();
        ctx.request_id = match req.headers.get(&X_REQUEST_ID) {
            Some(id) if forward::is_valid_request_id(id.as_bytes()) => {
                String::from_utf8_lossy(id.as_bytes()).into_owned()
            }
            _ => forward::new_request_id(),
        };
        if let Some(peer) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        {
            // Several x-forwarded-for lines form one list (RFC 9110 §5.3).
            let lines: Vec<&str> = req
                .headers
                .get_all(X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            let incoming = (!lines.is_empty()).then(|| lines.join(", "));
            let forwarded =
                forward::forwarded_for(peer, incoming.as_deref(), &ctx.gateway.trusted_proxies);
            ctx.client = Some(forwarded.client);
            ctx.client_text = Some(forwarded.client_text);
            ctx.forwarded_for = forwarded.header;
        }
        ctx.https = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let admitted = self.admit(session, ctx);
        if TELEMETRY {
            ctx.metrics().in_flight.inc();
        }
        ctx.in_flight = true;
        IN_FLIGHT.fetch_add(1, Ordering::AcqRel);
        if let Err(refusal) = admitted {
            self.refuse(session, ctx, refusal).await?;
            return Ok(true);
        }
        if let Err(refusal) = self.apply_rate_limits(ctx).await {
            self.refuse(session, ctx, refusal).await?;
            return Ok(true);
        }
        let gateway = ctx.gateway.clone();
        let Some(route) = ctx.route(&gateway) else {
            return Ok(false);
        };
        match &route.target {
            Target::Upstream { .. } => Ok(false),
            Target::Respond {
                status,
                body,
                headers,
            } => {
                self.respond(session, ctx, route, *status, body, headers)
                    .await?;
                Ok(true)
            }
            Target::Aggregate(aggregate) => {
                self.answer_aggregate(session, ctx, route, aggregate)
                    .await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let gateway = ctx.gateway.clone();
        let Some(upstream_index) = ctx.upstream_index() else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "route has no upstream",
            ));
        };
        let upstream = &gateway.upstreams[upstream_index];
        let budget = match ctx.deadline {
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => {
                    ctx.refusal = Some(Refusal::GatewayTimeout);
                    return Err(Error::explain(ErrorType::HTTPStatus(504), "route timeout"));
                }
            },
            None => None,
        };
        if let Some(previous) = ctx.peer.take() {
            upstream.release(previous);
        }
        let (key, len) = hash_key(ctx.client);
        match upstream.pick_peer(&key[..len], &ctx.tried) {
            Ok(i) => {
                upstream.acquire(i);
                ctx.peer = Some(i);
                ctx.tried.push(i);
                ctx.upstream_started = Some(Instant::now());
                let mut peer = upstream.http_peer(i, budget);
                if session.is_upgrade_req() {
                    // A WebSocket may sit idle between frames far longer than a
                    // read takes: only the idle timeout (and any route deadline) cuts it.
                    let idle = upstream.timeouts.idle.max(upstream.timeouts.read);
                    peer.options.read_timeout = Some(budget.map_or(idle, |b| b.min(idle)));
                }
                Ok(peer)
            }
            Err(NoPeer::AllUnhealthy) => {
                ctx.refusal = Some(Refusal::NoHealthyUpstream);
                Err(Error::explain(
                    ErrorType::HTTPStatus(503),
                    "no healthy peer",
                ))
            }
            Err(NoPeer::AllTried) => {
                ctx.refusal = Some(Refusal::BadGateway);
                Err(Error::explain(
                    ErrorType::HTTPStatus(502),
                    "every peer failed",
                ))
            }
        }
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let gateway = ctx.gateway.clone();
        if let (
            Some(Route {
                target: Target::Upstream { upstream, metrics },
                ..
            }),
            Some(peer),
        ) = (ctx.route(&gateway), ctx.peer.take())
        {
            metrics.error(UpstreamErrorKind::Connect).inc();
            let upstream = &gateway.upstreams[*upstream];
            upstream.release(peer);
            // Nothing was sent yet, so another peer may take the request.
            let attempts = ctx.tried.len() as u32;
            if attempts <= upstream.retries && attempts < upstream.peers.len() as u32 {
                e.set_retry(true);
            }
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer {peer}"));
        // Pingora's policy: never retry a request that is not idempotent or whose
        // body can no longer be replayed; otherwise retry only when a pooled
        // connection turned out dead.
        if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        if e.retry() {
            // The peer is fine, its old connection was not: it may be picked
            // again, on a fresh connection.
            if let Some(p) = ctx.peer {
                ctx.tried.retain(|t| *t != p);
            }
        }
        e
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        // The route timeout bounds the whole answer, not only its header.
        if ctx.deadline.is_some_and(|d| Instant::now() >= d) {
            ctx.refusal = Some(Refusal::GatewayTimeout);
            return Err(Error::explain(
                ErrorType::ReadTimedout,
                "route timeout while reading the body",
            ));
        }
        Ok(None)
    }

    /// What Pingora's own error lines say of a request: never the query string,
    /// which may hold secrets.
    fn request_summary(&self, session: &Session, _ctx: &RequestCtx) -> String {
        let req = session.req_header();
        format!("{} {}", req.method, req.uri.path())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let gw = &ctx.gateway;
        let (Some(route), Some(upstream_index), Some(peer)) =
            (ctx.route(gw), ctx.upstream_index(), ctx.peer)
        else {
            return Ok(());
        };
        rewrite_upstream_request(
            upstream_request,
            ctx,
            route,
            &gw.upstreams[upstream_index],
            peer,
        )?;
        let req = upstream_request;
        // Origin-form for the upstream: strip_prefix, and an absolute-form target
        // (`GET http://host/path`) is sent as its path (the host is in `host`).
        let client = session.req_header();
        let absolute_form = !client.raw_path().starts_with(b"/") && client.raw_path() != b"*";
        let client_uri = &client.uri;
        if route.strip_segments.is_some() || absolute_form {
            let path = route
                .strip_segments
                .map_or(client_uri.path(), |n| strip_segments(client_uri.path(), n));
            let uri = match client_uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path.to_string(),
            };
            let uri: Uri = uri.parse().map_err(|_| {
                Error::explain(ErrorType::InternalError, "stripped path is not a URI")
            })?;
            req.set_uri(uri);
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.deadline.is_some_and(|d| Instant::now() >= d) {
            ctx.refusal = Some(Refusal::GatewayTimeout);
            return Err(Error::explain(
                ErrorType::WriteTimedout,
                "route timeout while sending the body",
            ));
        }
        if let Some(chunk) = body {
            ctx.body_bytes += chunk.len() as u64;
            let max = ctx.route(&ctx.gateway).and_then(|r| r.max_body);
            if max.is_some_and(|m| ctx.body_bytes > m) {
                ctx.refusal = Some(Refusal::PayloadTooLarge);
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body too large",
                ));
            }
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = upstream_response.status;
        if status.is_informational() && status != http::StatusCode::SWITCHING_PROTOCOLS {
            return Ok(()); // a 103 or 100 before the real answer
        }
        ctx.upstream_status = Some(status.as_u16());
        if let Some(started) = ctx.upstream_started {
            let elapsed = started.elapsed();
            ctx.upstream_elapsed = Some(elapsed);
            if let Some(Route {
                target: Target::Upstream { metrics, .. },
                ..
            }) = ctx.route(&ctx.gateway)
            {
                if TELEMETRY {
                    metrics.duration.observe(elapsed.as_secs_f64());
                }
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let resp = upstream_response;
        for name in &ctx.gateway.secret_headers {
            resp.remove_header(name);
        }
        if resp.status != http::StatusCode::SWITCHING_PROTOCOLS {
            for name in &forward::HOP_BY_HOP {
                resp.remove_header(name);
            }
        }
        if let Some(route) = ctx.route(&ctx.gateway) {
            apply_response_rules(&route.response_headers, resp)?;
        }
        resp.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
        insert_rate_headers(resp, ctx.rate)?;
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        if e.esource() == &ErrorSource::Upstream {
            let kind = UpstreamErrorKind::of(e);
            // Connect failures were counted per attempt in `fail_to_connect`.
            if kind != UpstreamErrorKind::Connect {
                if let Some(Route {
                    target: Target::Upstream { metrics, .. },
                    ..
                }) = ctx.route(&ctx.gateway)
                {
                    metrics.error(kind).inc();
                }
            }
        }
        let refusal = refusal_for(e, ctx);
        let code = match refusal {
            Some(refusal) if session.response_written().is_none() => {
                let status = refusal.status();
                if let Err(write_error) = self.refuse(session, ctx, refusal).await {
                    log::debug!("cannot send the error answer: {write_error}");
                }
                status
            }
            Some(refusal) => {
                // The answer had started: the connection is cut instead.
                let status = refusal.status();
                ctx.refusal = Some(refusal);
                status
            }
            None => 0,
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        if TELEMETRY {
            self.record(session, ctx);
        }
        let gw = &ctx.gateway;
        if let (Some(i), Some(peer)) = (ctx.upstream_index(), ctx.peer) {
            gw.upstreams[i].release(peer);
        }
        // Last: the shutdown drain waits for this, and the line is queued by now.
        if ctx.in_flight {
            IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
        }
    }
}
