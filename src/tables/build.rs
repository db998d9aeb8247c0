//! Builds the tables from a checked config, one section at a time.

use super::{Aggregate, ClientLimits, Gateway, Part, Route, Target};
use crate::core::aggregate::{self, PartTemplate};
use crate::core::auth::{hash_key, parse_key_hash, KeyStore};
use crate::core::config::{self, Config, Cx};
use crate::core::cors;
use crate::core::forward::HeaderRules;
use crate::core::limit::{self, LimitSpec, Limiter};
use crate::core::reply::Reply;
use crate::core::router::{Pattern, RouteSpec, Router, Segment};
use crate::tables::certs::{CertifiedKey, LoadError};
use crate::tables::upstream::Upstream;
use crate::telemetry::metrics::RouteMetrics;
use bytes::Bytes;
use http::{HeaderName, Method};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The whole gateway: one builder per config section, each reporting its
/// errors into `cx`.
pub(super) fn gateway(cx: &mut Cx<'_>, config: &Config) -> Gateway {
    let (upstreams, upstream_names) = build_upstreams(cx, config);
    let mut limits = Vec::new();
    let (keys, consumer_limits) = build_consumers(cx, config, &mut limits);
    let (routes, route_specs) = build_routes(cx, config, &upstream_names, &keys, &mut limits);
    let limiter = Limiter::new(limits, build_store(cx, config), on_store_error(config));
    let jwt = super::jwt::TokenIssuers::build(cx, config);
    Gateway {
        jwt,
        router: Router::new(route_specs),
        routes,
        secret_headers: secret_headers(&upstreams),
        upstreams,
        keys,
        consumer_limits,
        limiter,
        auth_header: config
            .auth
            .as_ref()
            .and_then(|a| a.header.clone())
            .unwrap_or_else(|| HeaderName::from_static("x-api-key")),
        trusted_proxies: config.trusted_proxies.clone().unwrap_or_default(),
        unrouted: RouteMetrics::new("none"),
        certificates: load_certificates(cx, config),
        client_limits: ClientLimits::from_config(config.limits.as_ref()),
        docs_path: config
            .docs
            .as_ref()
            .map(|d| d.path.value.trim_end_matches('/').to_string()),
        cache: super::cache::limits(config),
    }
}

/// An upstream's index in the tables by its name: routes find theirs in constant
/// time, so that many routes over many upstreams build in linear time.
type UpstreamIndex = HashMap<String, usize>;

/// `upstreams:`, in config order, with their names (an upstream whose peers do
/// not resolve is reported and left out).
fn build_upstreams(cx: &mut Cx<'_>, config: &Config) -> (Vec<Upstream>, UpstreamIndex) {
    let mut upstreams = Vec::new();
    let mut names = UpstreamIndex::new();
    for (name, conf) in config.upstreams.iter().flat_map(|t| t.iter()) {
        match Upstream::build(name, conf) {
            Ok(u) => {
                // Names are unique once decoded (a duplicate is an error).
                names.entry(name.to_string()).or_insert(upstreams.len());
                upstreams.push(u);
            }
            Err(failed) => {
                for (i, message) in failed {
                    let mark = conf.peers.value.get(i).map_or(conf.peers.mark, |p| p.mark);
                    cx.error_at(&format!("upstreams.{name}.peers[{i}]"), mark, message);
                }
            }
        }
    }
    (upstreams, names)
}

/// Every header an upstream's `headers` sets: never sent back to a client.
fn secret_headers(upstreams: &[Upstream]) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = Vec::new();
    for u in upstreams {
        for (name, _) in &u.headers {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
    }
    names
}

/// Adds a limit to the limiter's list; its index is how a route or consumer names it.
fn add_limit(
    limits: &mut Vec<LimitSpec>,
    name: String,
    conf: &config::RateLimit,
    by: config::LimitBy,
) -> u32 {
    limits.push(LimitSpec {
        name,
        requests: conf.requests.value,
        per: conf.per.value,
        by,
    });
    (limits.len() - 1) as u32
}

/// `consumers:`: the key store and each consumer's own limit.
fn build_consumers(
    cx: &mut Cx<'_>,
    config: &Config,
    limits: &mut Vec<LimitSpec>,
) -> (KeyStore, Vec<Option<u32>>) {
    let mut keys = KeyStore::default();
    let mut consumer_limits = Vec::new();
    for (i, consumer) in config.consumers.iter().flat_map(|c| c.iter()) {
        let id = keys.add_consumer(&consumer.name.value);
        consumer_limits.push(consumer.rate_limit.as_ref().map(|l| {
            add_limit(
                limits,
                format!("consumer:{}", consumer.name.value),
                &l.value,
                config::LimitBy::Consumer,
            )
        }));
        let plain = consumer.keys.iter().flatten().enumerate().map(|(k, key)| {
            (
                format!("keys[{k}]"),
                key,
                Some(hash_key(key.value.as_bytes())),
            )
        });
        let hashed = consumer
            .key_hashes
            .iter()
            .flatten()
            .enumerate()
            .map(|(k, hash)| {
                (
                    format!("key_hashes[{k}]"),
                    hash,
                    parse_key_hash(&hash.value),
                )
            });
        for (field, written, digest) in plain.chain(hashed) {
            let Some(digest) = digest else { continue };
            if let Err(e) = keys.add_key(id, digest) {
                cx.error_at(
                    &format!("consumers[{i}].{field}"),
                    written.mark,
                    e.to_string(),
                );
            }
        }
    }
    (keys, consumer_limits)
}

/// `routes:`: each route's target and rules, and the router's view of it.
fn build_routes(
    cx: &mut Cx<'_>,
    config: &Config,
    upstream_names: &UpstreamIndex,
    keys: &KeyStore,
    limits: &mut Vec<LimitSpec>,
) -> (Vec<Route>, Vec<RouteSpec>) {
    let key_header = config::key_header(config);
    let mut route_specs = Vec::with_capacity(config.routes.len());
    let mut routes = Vec::with_capacity(config.routes.len());
    for (i, r) in config.routes.iter() {
        let pattern = match Pattern::parse(&r.path.value) {
            Ok(p) => p,
            Err(message) => {
                let message = format!("{message}, found {}", r.path.shown());
                cx.error_at(&format!("routes[{i}].path"), r.path.mark, message);
                continue;
            }
        };
        let metrics = RouteMetrics::new(&r.name.value);
        let tokens = route_tokens(r, &metrics);
        let target = if let Some(respond) = &r.respond {
            let body = Bytes::from(respond.body.clone().unwrap_or_default());
            let mut reply = Reply::new(respond.status.value).body(body);
            reply.headers = respond.headers.clone().map(|h| h.0).unwrap_or_default();
            Target::Respond(reply)
        } else if let Some(name) = &r.upstream {
            let Some(&upstream) = upstream_names.get(&name.value) else {
                continue; // unknown or unbuildable: already reported
            };
            Target::Upstream {
                upstream,
                metrics: metrics.upstream(&name.value),
            }
        } else if let Some(parts) = &r.aggregate {
            match build_aggregate(cx, i, r, &pattern, &parts.value, upstream_names, &metrics) {
                Some(aggregate) => Target::Aggregate(aggregate),
                None => continue,
            }
        } else {
            continue; // no target: reported by validation
        };
        let strip_segments = r
            .strip_prefix
            .as_ref()
            .is_some_and(|s| s.value)
            .then_some(pattern.segments.len());
        // Aggregate parts are fetched with GET: other methods get 405.
        let default_methods =
            matches!(target, Target::Aggregate(_)).then(|| vec![Method::GET, Method::HEAD]);
        let methods = r
            .methods
            .as_ref()
            .map(|m| m.value.clone())
            .or(default_methods);
        route_specs.push(RouteSpec {
            pattern,
            exact: r.exact.unwrap_or(false),
            methods: methods.clone(),
            host: r.host.as_ref().map(|h| h.to_ascii_lowercase()),
            conditions: config::routing::conditions(r.matching.as_ref(), &key_header),
        });
        let cors = r
            .cors
            .as_ref()
            .map(|c| cors_policy(&c.value, methods.as_ref()));
        routes.push(Route {
            name: r.name.value.clone(),
            path: r.path.value.clone(),
            exact: r.exact.unwrap_or(false),
            methods,
            metrics,
            target,
            needs_key: r.auth.as_ref().map(|a| a.value).unwrap_or_default()
                == config::AuthMode::ApiKey,
            tokens,
            consumers: r.consumers.as_ref().map(|names| {
                names
                    .iter()
                    .filter_map(|(_, n)| keys.consumer_id(&n.value))
                    .collect()
            }),
            request_headers: header_rules(r.request_headers.as_ref()),
            response_headers: header_rules(r.response_headers.as_ref()),
            strip_segments,
            preserve_host: r.preserve_host.unwrap_or(false),
            max_body: r.max_body.map(|b| b.0),
            timeout: r.timeout,
            rate_limit: r.rate_limit.as_ref().map(|l| {
                let by = l.value.by.unwrap_or(config::LimitBy::Consumer);
                let name = format!("route:{}", r.name.value);
                (add_limit(limits, name, &l.value, by), by)
            }),
            cors,
            cache: super::cache::route(&r.name.value, r),
        });
    }
    (routes, route_specs)
}

/// A route's `cors`; without `methods` of its own, the route's methods.
fn cors_policy(conf: &config::Cors, route_methods: Option<&Vec<Method>>) -> cors::Policy {
    let names = |list: &Option<Vec<config::Spanned<HeaderName>>>| {
        list.iter().flatten().map(|h| h.value.clone()).collect()
    };
    cors::Policy::new(&cors::Spec {
        origins: conf.origins.value.iter().map(|o| o.value.clone()).collect(),
        methods: match &conf.methods {
            Some(m) => Some(m.value.iter().map(|m| m.value.clone()).collect()),
            None => route_methods.cloned(),
        },
        headers: names(&conf.headers),
        expose_headers: names(&conf.expose_headers),
        credentials: conf.credentials.as_ref().is_some_and(|c| c.value),
        max_age_secs: conf.max_age.map(|d| d.as_secs()),
    })
}

/// A route's `auth`, `scopes`, `claims_to_headers` and `forward_token`.
fn route_tokens(r: &config::Route, metrics: &RouteMetrics) -> super::RouteTokens {
    let mode = r.auth.as_ref().map(|a| a.value).unwrap_or_default();
    if mode.takes_tokens() {
        metrics.token_failures_from_zero();
    }
    let scopes = r
        .scopes
        .as_ref()
        .map(|s| s.value.clone())
        .unwrap_or_default();
    super::RouteTokens {
        mode,
        scope_text: scopes.join(" "),
        scopes,
        claims_to_headers: r
            .claims_to_headers
            .iter()
            .flat_map(|t| t.value.0.iter())
            .filter_map(|(name, claim)| {
                let header = HeaderName::from_bytes(name.value.to_ascii_lowercase().as_bytes());
                Some((header.ok()?, claim.clone()))
            })
            .collect(),
        forward_token: r.forward_token.as_ref().is_some_and(|f| f.value),
    }
}

/// A route's `request_headers` or `response_headers`.
fn header_rules(conf: Option<&config::HeaderRules>) -> HeaderRules {
    let Some(conf) = conf else {
        return HeaderRules::default();
    };
    HeaderRules {
        set: conf.set.clone().map(|h| h.0).unwrap_or_default(),
        remove: conf.remove.clone().unwrap_or_default(),
    }
}

/// Reads every TLS listener's certificate and key; a file that cannot be used
/// is a config error at its field.
fn load_certificates(cx: &mut Cx<'_>, config: &Config) -> Vec<(SocketAddr, Arc<CertifiedKey>)> {
    let mut loaded = Vec::new();
    for (i, listener) in config.listen.value.iter() {
        let Some(tls) = &listener.tls else { continue };
        match CertifiedKey::load(&tls.value.cert, &tls.value.key) {
            Ok(cert) => loaded.push((listener.addr.value, Arc::new(cert))),
            Err(LoadError::Cert(message)) => {
                cx.error_at(&format!("listen[{i}].tls.cert"), tls.mark, message)
            }
            Err(LoadError::Key(message)) => {
                cx.error_at(&format!("listen[{i}].tls.key"), tls.mark, message)
            }
        }
    }
    loaded
}

/// An aggregate route's parts: each part's upstream and path template, whose
/// `{param}`s must be the route path's own.
fn build_aggregate(
    cx: &mut Cx<'_>,
    i: usize,
    r: &config::Route,
    pattern: &Pattern,
    parts: &config::Table<config::AggregatePart>,
    upstream_index: &UpstreamIndex,
    metrics: &RouteMetrics,
) -> Option<Aggregate> {
    let params: Vec<&str> = pattern
        .segments
        .iter()
        .filter_map(|s| match s {
            Segment::Param(name) => Some(name.as_str()),
            Segment::Literal(_) => None,
        })
        .collect();
    let mut built = Vec::new();
    let mut upstream_names: Vec<&str> = Vec::new();
    for (name, part) in parts.iter() {
        let template = PartTemplate::parse(&part.path.value, &params);
        let template = match template {
            Ok(t) => t,
            Err(message) => {
                let field = format!("routes[{i}].aggregate.{name}.path");
                cx.error_at(&field, part.path.mark, message);
                continue;
            }
        };
        let upstream_name = part.upstream.value.as_str();
        let Some(&upstream) = upstream_index.get(upstream_name) else {
            continue; // unknown or unbuildable: already reported
        };
        if !upstream_names.contains(&upstream_name) {
            upstream_names.push(upstream_name);
        }
        built.push(Part {
            name: name.to_string(),
            member_key: aggregate::member_key(name),
            upstream,
            template,
            metrics: metrics.upstream(upstream_name),
        });
    }
    (built.len() == parts.0.len()).then(|| Aggregate {
        parts: built,
        max_part_body: r
            .max_part_body
            .as_ref()
            .map_or(aggregate::DEFAULT_MAX_PART_BODY, |b| {
                usize::try_from(b.value.0).unwrap_or(usize::MAX)
            }),
        upstreams_label: upstream_names.join(","),
    })
}

/// The rate-limit store of `rate_limit:` (local when omitted).
fn build_store(cx: &mut Cx<'_>, config: &Config) -> limit::Store {
    let Some(conf) = &config.rate_limit else {
        return limit::Store::Local(Arc::default());
    };
    let kind = conf.store.as_ref().map(|s| s.value).unwrap_or_default();
    match (kind, &conf.redis) {
        (config::StoreKind::Redis, Some(redis)) => {
            let prefix = redis.prefix.as_deref().unwrap_or("portcullis:");
            let timeout = redis.timeout.unwrap_or(Duration::from_millis(50));
            match limit::redis::RedisStore::new(&redis.url.value, prefix, timeout) {
                Ok(store) => limit::Store::Redis(Box::new(store)),
                Err(message) => {
                    cx.error_at("rate_limit.redis.url", redis.url.mark, message);
                    limit::Store::Local(Arc::default())
                }
            }
        }
        // `store: redis` without `redis:` was reported by validation.
        _ => limit::Store::Local(Arc::default()),
    }
}

fn on_store_error(config: &Config) -> config::OnStoreError {
    config
        .rate_limit
        .as_ref()
        .and_then(|r| r.on_store_error)
        .unwrap_or_default()
}
