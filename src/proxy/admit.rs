//! Admission: which route a request takes, whether its key lets it in, whether
//! its declared body fits, and what its rate limits say. [`admit`] is pure
//! (request facts + tables -> decision) and tested here without a session.

use super::ctx::RequestCtx;
use super::record;
use super::token;
use crate::core::auth::ConsumerId;
use crate::core::config::LimitBy;
use crate::core::head;
use crate::core::jwt::VerifiedToken;
use crate::core::limit::{Decision, Key, StoreError, Subject, Window};
use crate::core::reply::Refusal;
use crate::core::router::{self, host_without_port, Lookup};
use crate::tables::{Gateway, Route};
use crate::telemetry::metrics::{self, AuthFailure};
use crate::telemetry::process_log::once_a_second;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, HOST};
use http::Method;
use pingora_http::RequestHeader;
use pingora_proxy::Session;
use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// What admission needs to know of a request.
pub struct RequestFacts<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    /// The host without port, from `host` or the HTTP/2 authority.
    pub host: Option<&'a str>,
    /// The value of the gateway's key header, if sent.
    pub key: Option<&'a [u8]>,
    /// The `authorization` header, if sent (bearer tokens).
    pub authorization: Option<&'a [u8]>,
    pub content_length: Option<&'a str>,
    /// The query string, and the client's headers as received (before the
    /// gateway sets any), for routes' `match` conditions.
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
}

impl<'a> RequestFacts<'a> {
    pub fn of(req: &'a RequestHeader, key_header: &http::HeaderName) -> RequestFacts<'a> {
        // One pass over the headers, not a hashed lookup for each of the four
        // names: a request has few headers, and comparing names is cheaper
        // than hashing them. The first value of a name is the one kept, as
        // `get` gives it (each name is checked on its own: the key header
        // may be configured as `authorization`).
        let (mut host, mut key, mut authorization, mut content_length) = (None, None, None, None);
        for (name, value) in &req.headers {
            if *name == HOST {
                host.get_or_insert(value);
            }
            if name == key_header {
                key.get_or_insert(value);
            }
            if *name == AUTHORIZATION {
                authorization.get_or_insert(value);
            }
            if *name == CONTENT_LENGTH {
                content_length.get_or_insert(value);
            }
        }
        let text = |v: Option<&'a http::HeaderValue>| v.and_then(|v| v.to_str().ok());
        RequestFacts {
            method: &req.method,
            path: req.uri.path(),
            host: text(host)
                .or_else(|| req.uri.authority().map(|a| a.as_str()))
                .map(host_without_port),
            key: key.map(|v| v.as_bytes()),
            authorization: authorization.map(|v| v.as_bytes()),
            content_length: text(content_length),
            query: req.uri.query(),
            headers: &req.headers,
        }
    }

    /// What the router looks at, for `method` (the request's own, or the one
    /// a CORS preflight announces).
    pub fn for_router<'m>(&'m self, method: &'m Method) -> router::Request<'m> {
        router::Request {
            method,
            path: self.path,
            host: self.host,
            query: self.query,
            headers: self.headers,
        }
    }
}

/// Admits a request into the gateway (SPEC §4 order: route, key, body size,
/// then rate limits) and notes what was decided in `ctx`; `Err` is the refusal
/// to answer. From here on the request counts as in flight.
pub async fn admit_request(session: &Session, ctx: &mut RequestCtx) -> Result<(), Refusal> {
    let gw = ctx.gateway.clone();
    let facts = RequestFacts::of(session.req_header(), &gw.auth_header);
    let mut admission = admit(&gw, &facts);
    if let Some(issuer) = admission.await_keys {
        // An unknown `kid`: once, after the JWKS fetch it asked for.
        if token::await_keys(&gw, issuer).await {
            admission = admit(&gw, &facts);
        }
    }
    ctx.route = admission.route;
    ctx.consumer = admission.consumer;
    ctx.token = admission.token;
    record::enter(ctx);
    let route = admission.route.map(|i| &gw.routes[i]);
    if let Some(refusal) = admission.refusal {
        if let Some(route) = route {
            count_auth_failure(route, &refusal);
        }
        return Err(refusal);
    }
    let Some(route) = route else {
        return Ok(());
    };
    ctx.deadline = route.timeout.map(|t| ctx.started + t);
    let client = ctx.client.as_ref().map(|c| c.ip);
    let caller = ctx.token.as_ref().map(|t| t.caller);
    let charge = charge_rate_limits(&gw, route, ctx.consumer, caller, client).await;
    ctx.rate = charge.window;
    charge.refusal.map_or(Ok(()), Err)
}

/// What admission decided: the route and consumer (known even for most
/// refusals, for the metrics and the log) and the refusal, if any.
#[derive(Debug, PartialEq, Eq)]
pub struct Admission {
    pub route: Option<usize>,
    pub consumer: Option<ConsumerId>,
    pub refusal: Option<Refusal>,
    /// The bearer token that was verified, if any.
    pub token: Option<Arc<VerifiedToken>>,
    /// An issuer whose JWKS may hold the token's unknown `kid` after a fetch.
    pub await_keys: Option<usize>,
}

impl Admission {
    fn refused(route: Option<usize>, consumer: Option<ConsumerId>, refusal: Refusal) -> Self {
        Admission {
            route,
            consumer,
            refusal: Some(refusal),
            token: None,
            await_keys: None,
        }
    }
}

/// Route, key and declared body size.
pub fn admit(gw: &Gateway, request: &RequestFacts<'_>) -> Admission {
    // The gateway opens no tunnels and serves nothing at an authority. An
    // HTTP/1 CONNECT was refused by the connection gate; an HTTP/2 one gets
    // here (Pingora lets it through for this, `allow_connect_method_proxying`).
    if request.method == Method::CONNECT {
        let allow_none = Refusal::MethodNotAllowed { allow: Vec::new() };
        return Admission::refused(None, None, allow_none);
    }
    // HTTP/1 heads were judged whole by the connection gate; an HTTP/2 path is
    // judged here, so no protocol can climb out of a route's prefix.
    if head::check_path(request.path).is_err() {
        return Admission::refused(None, None, Refusal::BadRequest);
    }
    let lookup = gw.route(&request.for_router(request.method));
    let route_index = match lookup {
        Lookup::Found(i) => i,
        Lookup::MethodNotAllowed(allow) => {
            return Admission::refused(None, None, Refusal::MethodNotAllowed { allow })
        }
        Lookup::NotFound => return Admission::refused(None, None, Refusal::NoRoute),
    };
    let route = &gw.routes[route_index];
    let mut consumer = None;
    let mut token = None;
    if route.tokens.mode.takes_tokens() {
        let judged = token::admit_credentials(gw, route, request.key, request.authorization);
        if let Some(refusal) = judged.refusal {
            return Admission {
                await_keys: judged.await_keys,
                token: judged.token,
                ..Admission::refused(Some(route_index), judged.consumer, refusal)
            };
        }
        consumer = judged.consumer;
        token = judged.token;
    }
    if route.needs_key {
        let found = request.key.map(|key| gw.keys.find(key));
        consumer = found.flatten();
        let refusal = match (request.key, consumer) {
            (None, _) => Some(Refusal::MissingApiKey),
            (Some(_), None) => Some(Refusal::InvalidApiKey),
            (Some(_), Some(id)) if route.consumers.as_ref().is_some_and(|c| !c.contains(&id)) => {
                Some(Refusal::Forbidden)
            }
            _ => None,
        };
        if let Some(refusal) = refusal {
            return Admission::refused(Some(route_index), consumer, refusal);
        }
    }
    if let (Some(max), Some(len)) = (route.max_body, request.content_length) {
        if len.trim().parse::<u64>().map_or(true, |n| n > max) {
            return Admission::refused(Some(route_index), consumer, Refusal::PayloadTooLarge);
        }
    }
    Admission {
        route: Some(route_index),
        consumer,
        refusal: None,
        token,
        await_keys: None,
    }
}

/// Counts a refusal of a key in the route's `auth_failures_total`.
pub fn count_auth_failure(route: &Route, refusal: &Refusal) {
    let reason = match refusal {
        Refusal::MissingApiKey => AuthFailure::Missing,
        Refusal::InvalidApiKey => AuthFailure::Invalid,
        Refusal::Forbidden => AuthFailure::Forbidden,
        Refusal::MissingToken => AuthFailure::MissingToken,
        Refusal::InvalidToken(_) => AuthFailure::InvalidToken,
        Refusal::InsufficientScope { .. } => AuthFailure::InsufficientScope,
        Refusal::MissingCredentials => AuthFailure::MissingCredentials,
        _ => return,
    };
    route.metrics.auth_failure(reason).inc();
}

/// The counters a request is charged to: its route's limit and its consumer's.
pub fn limit_keys(
    gw: &Gateway,
    route: &Route,
    consumer: Option<ConsumerId>,
    caller: Option<u64>,
    client: Option<IpAddr>,
) -> Vec<Key> {
    let mut keys = Vec::new();
    let by_ip = || client.map_or(Subject::Everyone, Subject::Ip);
    if let Some((limit, by)) = route.rate_limit {
        let subject = match (by, consumer) {
            (LimitBy::Route, _) => Subject::Everyone,
            (LimitBy::Ip, _) => by_ip(),
            (LimitBy::Consumer, Some(id)) => Subject::Consumer(id as u32),
            // A token that names no consumer: its issuer and `sub` (SPEC §8.1).
            (LimitBy::Consumer, None) if caller.is_some() => {
                Subject::Caller(caller.unwrap_or_default())
            }
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

/// What charging the rate limits came to: the window the `ratelimit-*`
/// headers describe, and the refusal when over the limit (or the store is
/// down and `on_store_error` says so).
pub struct Charge {
    pub window: Option<Window>,
    pub refusal: Option<Refusal>,
}

/// Charges a request to its rate limits.
pub async fn charge_rate_limits(
    gw: &Gateway,
    route: &Route,
    consumer: Option<ConsumerId>,
    caller: Option<u64>,
    client: Option<IpAddr>,
) -> Charge {
    let keys = limit_keys(gw, route, consumer, caller, client);
    if keys.is_empty() {
        return Charge {
            window: None,
            refusal: None,
        };
    }
    let decision = match gw.limiter.decide(&keys).await {
        Ok(decision) => decision,
        Err(e) => {
            metrics::families()
                .rate_limit_store_errors
                .with_label_values(&[gw.limiter.store_name()])
                .inc();
            warn_store_error(&e);
            gw.limiter.on_failure()
        }
    };
    let (window, refusal) = match decision {
        Decision::Allowed(window) => (Some(window), None),
        Decision::AllowedBlind => (None, None),
        Decision::Limited(window) => {
            route.metrics.rate_limited.inc();
            let retry_after_secs = window.retry_after_secs();
            (
                Some(window),
                Some(Refusal::RateLimited { retry_after_secs }),
            )
        }
        Decision::Unavailable => (None, Some(Refusal::RateLimitUnavailable)),
    };
    Charge { window, refusal }
}

/// Logs a store failure at most once a second.
fn warn_store_error(e: &StoreError) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    if once_a_second(&LAST) {
        log::warn!("{e}; applying on_store_error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::load_str;

    const CONFIG: &str = r#"
listen: [{ addr: "127.0.0.1:0" }]
consumers:
  - { name: alice, keys: ["alice-key"], rate_limit: { requests: 5, per: 1s } }
  - { name: bob, keys: ["bob-key"] }
upstreams:
  users: { peers: ["127.0.0.1:9"] }
routes:
  - { name: users, path: /users, upstream: users, methods: [GET, POST], max_body: 1KiB }
  - { name: admin, path: /admin, upstream: users, consumers: [alice] }
  - { name: limited, path: /limited, upstream: users, auth: none,
      rate_limit: { requests: 10, per: 1m, by: ip } }
  - { name: open, path: /open, upstream: users, auth: none }
"#;

    fn gateway() -> Gateway {
        let config = load_str(CONFIG, "test.yaml", &|_| None).expect("valid config");
        Gateway::build(&config, "test.yaml").expect("builds")
    }

    fn facts<'a>(method: &'a Method, path: &'a str, key: Option<&'a str>) -> RequestFacts<'a> {
        RequestFacts {
            method,
            path,
            host: None,
            key: key.map(str::as_bytes),
            authorization: None,
            content_length: None,
            query: None,
            headers: &NO_HEADERS,
        }
    }

    static NO_HEADERS: std::sync::LazyLock<http::HeaderMap> =
        std::sync::LazyLock::new(http::HeaderMap::new);

    fn refusal(gw: &Gateway, request: &RequestFacts<'_>) -> Option<Refusal> {
        admit(gw, request).refusal
    }

    #[test]
    fn a_known_key_on_a_known_route_is_admitted_with_its_consumer() {
        let gw = gateway();
        let admission = admit(&gw, &facts(&Method::GET, "/users/1", Some("alice-key")));
        assert_eq!(
            admission,
            Admission {
                route: Some(0),
                consumer: gw.keys.find(b"alice-key"),
                refusal: None,
                token: None,
                await_keys: None,
            }
        );
        assert!(admission.consumer.is_some());
    }

    #[test]
    fn keys_missing_unknown_or_not_allowed_are_refused_with_the_route_known() {
        let gw = gateway();
        let get = Method::GET;
        assert_eq!(
            refusal(&gw, &facts(&get, "/users", None)),
            Some(Refusal::MissingApiKey)
        );
        assert_eq!(
            refusal(&gw, &facts(&get, "/users", Some("nope"))),
            Some(Refusal::InvalidApiKey)
        );
        let bob = admit(&gw, &facts(&get, "/admin", Some("bob-key")));
        assert_eq!(bob.refusal, Some(Refusal::Forbidden));
        assert_eq!(bob.route, Some(1));
        assert_eq!(bob.consumer, gw.keys.find(b"bob-key"));
        assert_eq!(
            refusal(&gw, &facts(&get, "/admin", Some("alice-key"))),
            None
        );
        assert_eq!(refusal(&gw, &facts(&get, "/open", None)), None);
    }

    #[test]
    fn unknown_paths_wrong_methods_and_escaping_paths_are_refused() {
        let gw = gateway();
        assert_eq!(
            refusal(&gw, &facts(&Method::GET, "/nowhere", Some("alice-key"))),
            Some(Refusal::NoRoute)
        );
        assert_eq!(
            refusal(&gw, &facts(&Method::DELETE, "/users", Some("alice-key"))),
            Some(Refusal::MethodNotAllowed {
                allow: vec![Method::GET, Method::POST]
            })
        );
        assert_eq!(
            refusal(
                &gw,
                &facts(&Method::GET, "/users/../admin", Some("bob-key"))
            ),
            Some(Refusal::BadRequest)
        );
    }

    #[test]
    fn connect_is_refused_whatever_its_target_and_key() {
        let gw = gateway();
        for path in ["", "/users", "/open"] {
            assert_eq!(
                admit(&gw, &facts(&Method::CONNECT, path, Some("alice-key"))),
                Admission::refused(None, None, Refusal::MethodNotAllowed { allow: Vec::new() }),
                "{path:?}"
            );
        }
    }

    #[test]
    fn a_declared_body_over_max_body_is_refused_before_any_byte_is_read() {
        let gw = gateway();
        let post = Method::POST;
        let with_length = |len| RequestFacts {
            content_length: Some(len),
            ..facts(&post, "/users", Some("alice-key"))
        };
        assert_eq!(refusal(&gw, &with_length("1000")), None);
        assert_eq!(
            refusal(&gw, &with_length("1025")),
            Some(Refusal::PayloadTooLarge)
        );
        assert_eq!(
            refusal(&gw, &with_length("-1")),
            Some(Refusal::PayloadTooLarge)
        );
    }

    #[test]
    fn limits_are_charged_to_the_route_and_the_consumer() {
        let gw = gateway();
        let alice = gw.keys.find(b"alice-key");
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let keys = limit_keys(&gw, &gw.routes[0], alice, None, Some(ip));
        assert_eq!(keys.len(), 1, "alice's own limit");
        assert_eq!(
            keys[0].subject,
            Subject::Consumer(alice.expect("alice") as u32)
        );
        let keys = limit_keys(&gw, &gw.routes[2], None, None, Some(ip));
        assert_eq!(keys.len(), 1, "the route's limit, by ip");
        assert_eq!(keys[0].subject, Subject::Ip(ip));
        let bob = gw.keys.find(b"bob-key");
        assert!(limit_keys(&gw, &gw.routes[3], bob, None, Some(ip)).is_empty());
    }
}
