//! The Pingora `ProxyHttp` implementation. Each phase says in a line or two
//! what it does and calls the one module that does it:
//!
//! - `request_filter`: who asks ([`ctx`]); the docs page at `docs.path`
//!   ([`docs`]) and CORS preflights ([`cors`], [`answer`]) come first; may
//!   they ([`admit`]), then answer a refusal or a route's own answer
//!   ([`answer`], [`fan_out`]) or go on;
//! - `upstream_peer`, `fail_to_connect`, `error_while_proxy`,
//!   `upstream_request_filter`, the body filters: the upstream attempt
//!   ([`upstream`], on the kit shared with fan-out, [`attempt`]);
//! - `response_filter`: the answer's headers ([`answer`], CORS: [`cors`]);
//! - `fail_to_proxy`: the refusal an error carries, answered ([`answer`]);
//! - the cache phases (`request_cache_filter` to `should_serve_stale`): the
//!   response cache on Pingora's ([`cache`], storage in [`cache_store`]);
//! - `logging`: metrics and the access-log line ([`record`]).

pub mod admit;
pub mod answer;
pub mod attempt;
pub mod cache;
pub mod cache_store;
pub mod cors;
pub mod ctx;
pub mod docs;
pub mod fan_out;
mod headers;
pub mod record;
pub mod token;
pub mod upstream;

pub use ctx::{in_flight, RequestCtx};

use crate::core::config::LogFormat;
use crate::tables::{Gateway, Target};
use crate::telemetry::process_log::Throttle;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use fan_out::FanOut;
use pingora_cache::key::HashBinary;
use pingora_cache::{CacheKey, CacheMeta, RespCacheable};
use pingora_core::modules::http::HttpModules;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use record::TELEMETRY;
use std::sync::Arc;
use std::time::Duration;

/// Pingora's error lines for failed requests, and its warnings for retried attempts.
static PROXY_ERRORS: Throttle = Throttle::new();
static RETRIED_ERRORS: Throttle = Throttle::new();

/// The gateway as a Pingora proxy: reads the current tables for each request.
pub struct Portcullis {
    pub tables: Arc<ArcSwap<Gateway>>,
    pub log_format: LogFormat,
    /// Fetches aggregate routes' parts over its own pooled connections.
    pub fan_out: FanOut,
    /// The OpenAPI document of the docs page at `docs.path`.
    pub openapi: docs::OpenApi,
}

#[async_trait]
impl ProxyHttp for Portcullis {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.tables.load_full())
    }

    /// None: Pingora's default is a response-compression module that is off
    /// yet runs on every answer (~0.6k instructions per cache hit).
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.identify(session);
        if docs::answer(session, ctx, self.openapi).await?
            || answer::preflight(session, ctx).await?
        {
            return Ok(true);
        }
        if let Err(refusal) = admit::admit_request(session, ctx).await {
            answer::refuse(session, ctx, refusal).await?;
            return Ok(true);
        }
        let gateway = ctx.gateway.clone();
        match ctx.route.map(|i| &gateway.routes[i].target) {
            Some(Target::Respond(reply)) => answer::route_answer(session, ctx, reply).await?,
            Some(Target::Aggregate(_)) => self.fan_out.answer(session, ctx).await?,
            Some(Target::Upstream { .. }) | None => return Ok(false),
        }
        Ok(true)
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        cache::enable(session, ctx)
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        cache::key(session, ctx)
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<RespCacheable> {
        Ok(cache::cacheable(session, resp, ctx))
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        _ctx: &mut RequestCtx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        cache::variance(meta, req)
    }

    fn should_serve_stale(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
        error: Option<&Error>,
    ) -> bool {
        cache::serve_stale(error)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        upstream::next_peer(session, ctx)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing was sent yet, so another peer may take the request.
        if upstream::connect_failed(ctx) {
            e.set_retry(true);
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
        let replayable = session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated();
        upstream::proxy_failed(ctx, &mut e, replayable, client_reused);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        upstream::prepare_request(session.req_header(), upstream_request, ctx)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        upstream::body_chunk(ctx, body.as_ref().map_or(0, Bytes::len))
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        upstream::note_answer(ctx, upstream_response, TELEMETRY)
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        upstream::answer_in_time(ctx)?;
        Ok(None)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        cache::stamp(session, upstream_response, ctx)?;
        answer::rewrite_upstream_answer(upstream_response, ctx)?;
        cors::stamp(upstream_response, ctx, session.req_header())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        upstream::count_error(ctx, e);
        FailToProxy {
            error_code: answer::answer_failure(session, ctx, e).await,
            can_reuse_downstream: false,
        }
    }

    /// Pingora's "Fail to proxy" line: at most one a second, with a count of
    /// those held back, or an outage floods the log.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _e: &Error) -> bool {
        record::hold_back_error_line(&PROXY_ERRORS)
    }

    /// Pingora's warning for a failed attempt that is retried: the same.
    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &RequestCtx,
        _e: &Error,
        _context: ProxyWarnLogContext,
    ) -> bool {
        record::hold_back_error_line(&RETRIED_ERRORS)
    }

    /// What Pingora's own error lines say of a request: never the query string,
    /// which may hold secrets.
    fn request_summary(&self, session: &Session, _ctx: &RequestCtx) -> String {
        let req = session.req_header();
        format!("{} {}", req.method, req.uri.path())
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        record::record(session, ctx, self.log_format);
        // Last: the shutdown drain waits for this, and the line is queued by now.
        ctx.release();
    }
}
