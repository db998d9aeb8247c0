//! CORS on the request path (SPEC §8.4): a preflight is answered before the
//! method check and admission, and every answer on a route with `cors` gets
//! the actual request's `access-control-*` headers. The policy itself is
//! `core::cors`; this finds the route whose policy decides, and writes.

use super::admit::RequestFacts;
use super::answer;
use super::ctx::RequestCtx;
use super::record;
use crate::core::cors;
use crate::core::head;
use crate::core::reply::{Refusal, Reply};
use crate::core::router::Lookup;
use crate::tables::Gateway;
use http::header::{ACCESS_CONTROL_REQUEST_HEADERS, ORIGIN};
use http::Method;
use pingora_core::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

/// The route whose `cors` decides for `method` on this path: the route the
/// request takes; for a method no route on the path takes, the first route
/// on the path (by the methods they take) that has `cors`.
pub fn cors_route(gw: &Gateway, method: &Method, path: &str, host: Option<&str>) -> Option<usize> {
    let with_cors = |i: usize| gw.routes[i].cors.is_some().then_some(i);
    match gw.route(method, path, host) {
        Lookup::Found(i) => with_cors(i),
        Lookup::MethodNotAllowed(allow) => {
            allow.iter().find_map(|m| match gw.route(m, path, host) {
                Lookup::Found(i) => with_cors(i),
                _ => None,
            })
        }
        Lookup::NotFound => None,
    }
}

/// Answers a CORS preflight on a route with `cors`: 204 with the allow
/// headers, or 403 `cors_rejected`. `false`: not a preflight, or no route
/// with `cors` takes it (then it is an ordinary `OPTIONS` request).
pub async fn answer_preflight(session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
    let req = session.req_header();
    let Some(asked) = cors::preflight_method(&req.method, &req.headers) else {
        return Ok(false);
    };
    let gw = ctx.gateway.clone();
    let facts = RequestFacts::of(req, &gw.auth_header);
    if head::check_path(facts.path).is_err() {
        return Ok(false); // admission refuses it
    }
    let Some(route) = cors_route(&gw, &asked, facts.path, facts.host) else {
        return Ok(false);
    };
    let Some(policy) = gw.routes[route].cors.as_ref() else {
        return Ok(false);
    };
    let Some(origin) = req.headers.get(ORIGIN) else {
        return Ok(false);
    };
    let decision = policy.preflight(
        origin,
        &asked,
        req.headers.get(ACCESS_CONTROL_REQUEST_HEADERS),
    );
    ctx.route = Some(route);
    record::enter(ctx);
    match decision {
        Ok(headers) => {
            let mut reply = Reply::new(204);
            reply.headers = headers;
            answer::plain(session, ctx, &reply).await?;
        }
        Err(denial) => {
            answer::refuse_preflight(session, ctx, Refusal::CorsRejected(denial)).await?
        }
    }
    Ok(true)
}

/// Stamps an answer with the actual request's CORS headers when its route
/// (or, refused before one was found, the route of [`cors_route`]) has `cors`.
pub fn stamp(resp: &mut ResponseHeader, ctx: &RequestCtx, req: &RequestHeader) -> Result<()> {
    let gw = &ctx.gateway;
    let route = match ctx.route {
        Some(i) => Some(i),
        None if req.headers.contains_key(ORIGIN) => {
            let facts = RequestFacts::of(req, &gw.auth_header);
            cors_route(gw, &req.method, facts.path, facts.host)
        }
        None => None,
    };
    let Some(policy) = route.and_then(|i| gw.routes[i].cors.as_ref()) else {
        return Ok(());
    };
    policy.stamp(resp, req.headers.get(ORIGIN))
}
