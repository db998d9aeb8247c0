//! The API docs page on the public listener, at `docs.path` (SPEC §8.4):
//! before every route, without auth. The page is `core::docs`; the OpenAPI
//! document comes from the runtime, which knows how to make it.

use super::answer;
use super::ctx::RequestCtx;
use super::record;
use crate::core::docs::{self, Item};
use crate::core::reply::{Refusal, Reply};
use crate::tables::Gateway;
use http::Method;
use pingora_core::Result;
use pingora_proxy::Session;

/// Makes the OpenAPI document the public docs page shows.
pub type OpenApi = fn(&Gateway) -> serde_json::Value;

/// Answers a request for the docs page or its assets; `false` when the
/// public listener has no docs page or the path is not under it.
pub async fn answer(session: &mut Session, ctx: &mut RequestCtx, openapi: OpenApi) -> Result<bool> {
    let gw = ctx.gateway.clone();
    let Some(base) = gw.docs_path.as_deref() else {
        return Ok(false);
    };
    let Some(item) = docs::item(base, session.req_header().uri.path()) else {
        return Ok(false);
    };
    record::enter(ctx);
    let method = &session.req_header().method;
    if method != Method::GET && method != Method::HEAD {
        let allow = vec![Method::GET, Method::HEAD];
        answer::refuse(session, ctx, Refusal::MethodNotAllowed { allow }).await?;
        return Ok(true);
    }
    let reply = match item {
        Item::OpenApi => Some(Reply::json_value(200, &openapi(&gw))),
        _ => docs::reply(base, item),
    };
    match reply {
        Some(reply) => answer::plain(session, ctx, &reply).await?,
        None => answer::refuse(session, ctx, Refusal::NoRoute).await?,
    }
    Ok(true)
}
