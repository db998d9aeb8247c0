//! The response cache in the request phases (SPEC §8.2), on Pingora's HTTP
//! cache: which requests use it, their key, which answers are stored and for
//! how long, and what `cache-status`, `age`, the metrics and the access log
//! say. The policy itself is pure ([`crate::core::cache`]); the storage is
//! [`super::cache_store`].
//!
//! Auth and rate limits run in `request_filter`, before any of this: a hit
//! needs a valid credential and counts toward the limits.

use super::cache_store::CacheStore;
use super::ctx::RequestCtx;
use crate::core::cache::{self as policy, KeyParts, Outcome};
use crate::core::forward::strip_hop_by_hop_response;
use crate::tables::cache::CacheLimits;
use http::header::{ACCEPT_RANGES, AGE, AUTHORIZATION, CONTENT_LENGTH, HOST, VARY};
use http::{HeaderName, HeaderValue, Method};
use pingora_cache::key::HashBinary;
use pingora_cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora_cache::{CacheKey, CacheMeta, CacheOptionOverrides, CachePhase, NoCacheReason};
use pingora_cache::{RespCacheable, VarianceBuilder};
use pingora_core::{Error, ErrorSource, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

/// `cache-status` (RFC 9211).
const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// How long requests wait for another's fill of the same key before going
/// upstream themselves (SPEC §8.2: a bounded wait).
const LOCK_WAIT: Duration = Duration::from_secs(3);
/// How long a fill may hold a key's lock before waiters give up on it.
const LOCK_AGE: Duration = Duration::from_secs(10);

static STORE: OnceLock<CacheStore> = OnceLock::new();

/// The process's store, made with the first config that has `cache:`.
pub fn store() -> Option<&'static CacheStore> {
    STORE.get()
}

/// Makes the store with the config's bounds, once; `false` when a store with
/// other bounds is already in use (they change on restart only).
pub fn init_store(limits: Option<CacheLimits>) -> bool {
    let Some(limits) = limits else { return true };
    let store = STORE.get_or_init(|| CacheStore::new(limits.max_size, limits.max_object));
    store.max_size() == limits.max_size && store.max_object() == limits.max_object
}

fn cache_lock() -> &'static CacheKeyLockImpl {
    static LOCK: OnceLock<&'static CacheKeyLockImpl> = OnceLock::new();
    *LOCK.get_or_init(|| Box::leak(CacheLock::new_boxed(LOCK_AGE)))
}

/// `request_cache_filter`: GET and HEAD on a cached route use the cache; other
/// methods there are counted as bypassing it.
pub fn enable(session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
    let (Some(_), Some(store)) = (ctx.route().and_then(|r| r.cache.as_ref()), store()) else {
        return Ok(());
    };
    let method = &session.req_header().method;
    if *method != Method::GET && *method != Method::HEAD {
        ctx.cache = Some(Outcome::Bypass { method: true });
        return Ok(());
    }
    if shares_identity(ctx) {
        ctx.cache = Some(Outcome::Bypass { method: false });
        return Ok(());
    }
    let mut overrides = CacheOptionOverrides::default();
    overrides.wait_timeout = Some(LOCK_WAIT);
    session
        .cache
        .enable(store, None, None, Some(cache_lock()), Some(overrides));
    session.cache.set_max_file_size_bytes(store.max_object());
    ctx.cache = Some(Outcome::Miss { stored: false });
    ctx.cache_purges = store.purges();
    Ok(())
}

/// `cache_key_callback`: route, host, path and query, the consumer when the
/// route keys by consumer, and the route's `vary` headers.
pub fn key(session: &Session, ctx: &RequestCtx) -> Result<CacheKey> {
    let route = ctx
        .route()
        .ok_or_else(|| Error::explain(pingora_core::ErrorType::InternalError, "no route"))?;
    let per_consumer = route.cache.as_ref().is_some_and(|c| c.policy.per_consumer);
    let req = session.req_header();
    let host = req
        .headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.host())
        .unwrap_or("");
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let host: Cow<str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
        host.to_ascii_lowercase().into()
    } else {
        host.into()
    };
    let vary: Vec<Option<Vec<u8>>> = route
        .cache
        .as_ref()
        .map(|c| c.policy.vary.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|name| policy::joined_values(&req.headers, name.as_str()))
        .collect();
    let vary: Vec<Option<&[u8]>> = vary.iter().map(Option::as_deref).collect();
    let caller = per_consumer.then(|| caller_key(ctx)).flatten();
    let parts = KeyParts {
        route: &route.name,
        host: &host,
        path: req.uri.path(),
        query: req.uri.query(),
        consumer: caller.as_deref(),
        vary: &vary,
    };
    // No user tag: nothing reads it (the store finds the route in the
    // primary key, `route_and_path`), and a copy of the name would be one
    // more allocation a request.
    Ok(CacheKey::new(parts.primary(), String::new()))
}

/// A bearer token without `sub` names no one in particular (a client
/// credential shared by a whole tenant, say): on a `per_consumer` route its
/// answers are neither read from nor stored in the cache, since every such
/// token of an issuer would share one entry.
fn shares_identity(ctx: &RequestCtx) -> bool {
    let per_consumer = ctx
        .route()
        .and_then(|r| r.cache.as_ref())
        .is_some_and(|c| c.policy.per_consumer);
    per_consumer && ctx.consumer.is_none() && ctx.token.as_ref().is_some_and(|t| t.sub.is_none())
}

/// Whether the client's `authorization` reached the upstream on a request
/// whose entry is not keyed by the caller it names: then the answer is
/// shared only when the upstream marks it so (RFC 9111 §3.5).
fn authorization_went_upstream_unkeyed(req: &RequestHeader, ctx: &RequestCtx) -> bool {
    if !req.headers.contains_key(AUTHORIZATION) {
        return false;
    }
    let Some(route) = ctx.route() else {
        return true;
    };
    let keyed_by_token =
        ctx.token.is_some() && route.cache.as_ref().is_some_and(|c| c.policy.per_consumer);
    let stripped = route.tokens.mode.takes_tokens() && !route.tokens.forward_token;
    !(keyed_by_token || stripped)
}

/// Whose entries a request reads on a `per_consumer` route: a consumer by
/// name (`k:`), or an anonymous bearer-token caller by its issuer and `sub`
/// (`t:`, SPEC §8.1), so two token holders never share an entry.
fn caller_key(ctx: &RequestCtx) -> Option<String> {
    match (ctx.consumer, &ctx.token) {
        (Some(c), _) => {
            let name = ctx.gateway.keys.consumer_name(c);
            let mut key = String::with_capacity(2 + name.len());
            key.push_str("k:");
            key.push_str(name);
            Some(key)
        }
        (None, Some(token)) => Some(format!("t:{:016x}", token.caller)),
        (None, None) => None,
    }
}

/// `response_cache_filter`: whether the upstream's answer is stored, and its
/// freshness (SPEC §8.2, RFC 9111), as Pingora's `CacheMeta`. Notes whether
/// it replaces an expired entry (the phase says so only until it is judged).
pub fn cacheable(session: &Session, resp: &ResponseHeader, ctx: &mut RequestCtx) -> RespCacheable {
    ctx.cache_expired = session.cache.phase() == CachePhase::Expired;
    let Some(cache) = ctx.route().and_then(|r| r.cache.as_ref()) else {
        return RespCacheable::Uncacheable(NoCacheReason::NeverEnabled);
    };
    // A purge while this answer was fetched: it may be what the purge was
    // for. (One that comes after this check finds the fill and cancels it, or
    // is caught by `stamp` if it comes before the fill is made.)
    if store().is_none_or(|store| store.purges() != ctx.cache_purges) {
        return RespCacheable::Uncacheable(NoCacheReason::Custom("purged while fetched"));
    }
    if authorization_went_upstream_unkeyed(session.req_header(), ctx)
        && !policy::authorized_answer_may_be_stored(&resp.headers)
    {
        return RespCacheable::Uncacheable(NoCacheReason::OriginNotCache);
    }
    let now = SystemTime::now();
    match policy::storable(resp.status.as_u16(), &resp.headers, &cache.policy, now) {
        Ok(f) => {
            let Some(header) = stored_header(resp) else {
                return RespCacheable::Uncacheable(NoCacheReason::InternalError);
            };
            // Zero freshness: stored, but revalidated before its next use.
            let fresh_until = if f.fresh_for.is_zero() {
                now - Duration::from_secs(1)
            } else {
                now + f.fresh_for
            };
            let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
            RespCacheable::Cacheable(CacheMeta::new(
                fresh_until,
                now.checked_sub(f.age).unwrap_or(now),
                secs(f.stale_while_revalidate),
                secs(f.stale_if_error),
                header,
            ))
        }
        Err(_) => RespCacheable::Uncacheable(NoCacheReason::OriginNotCache),
    }
}

/// The header an entry keeps, done once when it is stored rather than on
/// each hit: without what never reaches a client whatever the config (the
/// hop-by-hop headers: hits skip that strip, see [`stamp`]), and with
/// `accept-ranges: bytes` when the answer can be served in ranges (a 200
/// with its length), as Pingora's range filter marks such a hit (which then
/// finds it there, vendor patch 0008). Validators and the config's part (secrets, the route's
/// rules) are left for each answer. This is also the header of the miss
/// that stores it, which Pingora serves from the entry being written.
///
/// Built afresh with room for the headers each answer adds (`age`,
/// `cache-status`, `x-request-id`, `date`, the rate-limit ones): a hit's
/// copy then takes them without growing and rehashing its maps.
///
/// Without its header-name case when that changes no byte on the wire (see
/// [`without_needless_case`]).
fn stored_header(resp: &ResponseHeader) -> Option<ResponseHeader> {
    let mut header = if resp.has_case() {
        let mut header = ResponseHeader::build(resp.status, room_for(resp)).ok()?;
        for (name, value) in resp.case_header_iter() {
            header.append_header(name.clone(), value.clone()).ok()?;
        }
        header
    } else {
        plain_copy(resp)?
    };
    header.set_version(resp.version);
    header.set_reason_phrase(resp.get_reason_phrase()).ok()?;
    strip_hop_by_hop_response(&mut header, false).ok()?;
    let mut header = without_needless_case(header)?;
    let ranges = header.status == http::StatusCode::OK
        && header
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.parse::<u64>().is_ok());
    if ranges {
        header.insert_header(ACCEPT_RANGES, "bytes").ok()?;
    }
    Some(header)
}

/// Room in a stored header for the headers each answer adds.
fn room_for(resp: &ResponseHeader) -> Option<usize> {
    const ADDED_PER_ANSWER: usize = 8;
    Some(resp.headers.len() + ADDED_PER_ANSWER)
}

/// `resp`'s status, version, reason and headers, without header-name case.
fn plain_copy(resp: &ResponseHeader) -> Option<ResponseHeader> {
    let mut header = ResponseHeader::build_no_case(resp.status, room_for(resp)).ok()?;
    for (name, value) in &resp.headers {
        header.append_header(name.clone(), value.clone()).ok()?;
    }
    header.set_version(resp.version);
    header.set_reason_phrase(resp.get_reason_phrase()).ok()?;
    Some(header)
}

/// `header` without its case map when every name in it is as a header
/// without one writes it anyway (the titled form Pingora knows, `Content-Type`,
/// else lower case), which is what most upstreams send. Each hit copies the
/// stored header twice (into its `CacheMeta`, then the answer's), and a case
/// map doubles each copy; the headers every answer adds name no case either.
/// An upstream's own spelling (`X-Trace-Id`, `content-type`) keeps the map.
fn without_needless_case(header: ResponseHeader) -> Option<ResponseHeader> {
    if !header.has_case() {
        return Some(header);
    }
    let plain = plain_copy(&header)?;
    let wire = |h: &ResponseHeader| {
        let mut buf = Vec::with_capacity(256);
        h.header_to_h1_wire(&mut buf);
        buf
    };
    Some(if wire(&plain) == wire(&header) {
        plain
    } else {
        header
    })
}

/// `cache_vary_filter`: the upstream's `Vary` headers pick among variants.
pub fn variance(meta: &CacheMeta, req: &RequestHeader) -> Option<HashBinary> {
    let mut builder = VarianceBuilder::new();
    for line in meta.headers().get_all(VARY) {
        let Ok(names) = line.to_str() else { continue };
        for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let name = name.to_ascii_lowercase();
            let value = policy::joined_values(&req.headers, &name).unwrap_or_default();
            builder.add_owned_name_value(name, value);
        }
    }
    builder.finalize()
}

/// `should_serve_stale`: within the entry's windows (Pingora checks them),
/// stale is served while revalidating, and when the upstream failed.
pub fn serve_stale(error: Option<&Error>) -> bool {
    error.is_none_or(|e| e.esource() == &ErrorSource::Upstream)
}

/// What the cache did, read from Pingora's cache phase once the answer is
/// about to go out.
fn outcome(phase: CachePhase, expired: bool, status: u16) -> Outcome {
    match phase {
        CachePhase::Hit => Outcome::Hit,
        CachePhase::Stale | CachePhase::StaleUpdating => Outcome::Stale,
        CachePhase::Revalidated => Outcome::Expired {
            status: 304,
            stored: true,
        },
        CachePhase::RevalidatedNoCache(_) => Outcome::Expired {
            status: 304,
            stored: false,
        },
        CachePhase::Expired => Outcome::Expired {
            status,
            stored: true,
        },
        CachePhase::Miss => Outcome::Miss { stored: true },
        _ if expired => Outcome::Expired {
            status,
            stored: false,
        },
        _ => Outcome::Miss { stored: false },
    }
}

/// `response_filter`: `cache-status` and `age` on every answer of a cached
/// route; the outcome is kept for the metrics and the access log.
pub fn stamp(session: &Session, resp: &mut ResponseHeader, ctx: &mut RequestCtx) -> Result<()> {
    let Some(noted) = ctx.cache else {
        return Ok(());
    };
    let outcome = match noted {
        bypass @ Outcome::Bypass { .. } => bypass,
        _ => outcome(
            session.cache.phase(),
            ctx.cache_expired,
            resp.status.as_u16(),
        ),
    };
    let outcome = unstored_if_purged(session, ctx, outcome);
    ctx.cache = Some(outcome);
    match outcome.cache_status() {
        Cow::Borrowed(fixed) => {
            resp.insert_header(CACHE_STATUS, HeaderValue::from_static(fixed))?
        }
        Cow::Owned(value) => resp.insert_header(CACHE_STATUS, value)?,
    }
    match outcome {
        // Pingora's hit header (`cache_hit_header`, the upstream unused):
        // `age` is set already, from the same meta.
        Outcome::Hit | Outcome::Stale => {}
        // Revalidated: the header is the entry's merged with the 304's.
        Outcome::Expired { status: 304, .. } => {
            if let Some(meta) = session.cache.maybe_cache_meta() {
                resp.insert_header(AGE, meta.age().as_secs())?;
            }
        }
        _ if !resp.headers.contains_key(AGE) => resp.insert_header(AGE, 0)?,
        _ => {}
    }
    Ok(())
}

/// Whether the answer going out is a stored entry's header as Pingora's hit
/// path copies it (a hit, or stale), whose hop-by-hop headers went when it
/// was stored ([`stored_header`]), so the rewrite for the client skips them.
/// Known once [`stamp`] has run.
/// The second half of `cacheable`'s purge check, now that Pingora has made
/// this answer's fill: a purge that came between the check and the fill found
/// nothing to cancel, so the fill is cancelled here.
fn unstored_if_purged(session: &Session, ctx: &RequestCtx, outcome: Outcome) -> Outcome {
    // (A 304 refreshes an entry in place: no fill.)
    let stored = match outcome {
        Outcome::Miss { stored } => stored,
        Outcome::Expired { stored, status } => stored && status != 304,
        _ => false,
    };
    let (Some(store), Some(key)) = (store(), session.cache.maybe_cache_key()) else {
        return outcome;
    };
    if !stored || store.purges() == ctx.cache_purges {
        return outcome;
    }
    store.cancel_fills_of(key);
    match outcome {
        Outcome::Expired { status, .. } => Outcome::Expired {
            status,
            stored: false,
        },
        _ => Outcome::Miss { stored: false },
    }
}

pub fn serves_stored_header(ctx: &RequestCtx) -> bool {
    matches!(ctx.cache, Some(Outcome::Hit | Outcome::Stale))
}

/// `logging`: the route's lookup counter.
pub fn count(ctx: &RequestCtx) {
    if let (Some(outcome), Some(cache)) = (ctx.cache, ctx.route().and_then(|r| r.cache.as_ref())) {
        cache.lookups.count(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_map_to_outcomes() {
        assert_eq!(outcome(CachePhase::Hit, false, 200), Outcome::Hit);
        assert_eq!(outcome(CachePhase::Stale, true, 200), Outcome::Stale);
        assert_eq!(
            outcome(CachePhase::Miss, false, 200),
            Outcome::Miss { stored: true }
        );
        assert_eq!(
            outcome(
                CachePhase::Disabled(NoCacheReason::OriginNotCache),
                false,
                200
            ),
            Outcome::Miss { stored: false }
        );
        assert_eq!(
            outcome(
                CachePhase::Disabled(NoCacheReason::OriginNotCache),
                true,
                200
            ),
            Outcome::Expired {
                status: 200,
                stored: false
            }
        );
        assert_eq!(
            outcome(CachePhase::Revalidated, true, 200),
            Outcome::Expired {
                status: 304,
                stored: true
            }
        );
    }
}
