//! CORS on the request path (SPEC §8.4): a preflight is answered before the
//! method check and admission, and every answer on a route with `cors` gets
//! the actual request's `access-control-*` headers. The policy itself is
//! `core::cors`; this finds the route whose policy decides. `answer` writes.

use super::admit::RequestFacts;
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
pub fn cors_route(gw: &Gateway, method: &Method, facts: &RequestFacts) -> Option<usize> {
    let with_cors = |i: usize| gw.routes[i].cors.is_some().then_some(i);
    match gw.route(&facts.for_router(method)) {
        Lookup::Found(i) => with_cors(i),
        Lookup::MethodNotAllowed(allow) => {
            allow
                .iter()
                .find_map(|m| match gw.route(&facts.for_router(m)) {
                    Lookup::Found(i) => with_cors(i),
                    _ => None,
                })
        }
        Lookup::NotFound => None,
    }
}

/// Judges a CORS preflight on a route with `cors` (and counts it in the
/// route's metrics): the 204 with its allow headers, or the refusal (403
/// `cors_rejected`). `None`: not a preflight, or no route with `cors` takes
/// it (then it is an ordinary `OPTIONS` request). `answer::preflight` writes it.
pub fn judge_preflight(session: &Session, ctx: &mut RequestCtx) -> Option<Result<Reply, Refusal>> {
    let req = session.req_header();
    let asked = cors::preflight_method(&req.method, &req.headers)?;
    let gw = ctx.gateway.clone();
    let facts = RequestFacts::of(req, &gw.auth_header);
    if head::check_path(facts.path).is_err() {
        return None; // admission refuses it
    }
    let route = cors_route(&gw, &asked, &facts)?;
    let policy = gw.routes[route].cors.as_ref()?;
    let origin = req.headers.get(ORIGIN)?;
    let decision = policy.preflight(
        origin,
        &asked,
        req.headers.get(ACCESS_CONTROL_REQUEST_HEADERS),
    );
    ctx.route = Some(route);
    record::enter(ctx);
    Some(match decision {
        Ok(headers) => {
            let mut reply = Reply::new(204);
            reply.headers = headers;
            Ok(reply)
        }
        Err(denial) => Err(Refusal::CorsRejected(denial)),
    })
}

/// Stamps an answer with the actual request's CORS headers when its route
/// (or, refused before one was found, the route of [`cors_route`]) has `cors`.
pub fn stamp(resp: &mut ResponseHeader, ctx: &RequestCtx, req: &RequestHeader) -> Result<()> {
    let gw = &ctx.gateway;
    let route = match ctx.route {
        Some(i) => Some(i),
        None if req.headers.contains_key(ORIGIN) => {
            let facts = RequestFacts::of(req, &gw.auth_header);
            cors_route(gw, &req.method, &facts)
        }
        None => None,
    };
    let Some(policy) = route.and_then(|i| gw.routes[i].cors.as_ref()) else {
        return Ok(());
    };
    policy.stamp(resp, req.headers.get(ORIGIN))
}
