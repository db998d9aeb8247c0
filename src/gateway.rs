//! The gateway's tables, compiled from a checked config: immutable, shared by
//! every request through an `Arc`, and swapped whole on reload.

use crate::aggregate::{self, Aggregate, Part, PartTemplate};
use crate::auth::{hash_key, parse_key_hash, ConsumerId, KeyStore};
use crate::config::{self, Config, ConfigErrors, Cx};
use crate::limit::{self, LimitSpec, Limiter};
use crate::metrics::{RouteMetrics, UpstreamMetrics};
use crate::router::{Lookup, Pattern, RouteSpec, Router, Segment};
use crate::tls::{CertifiedKey, LoadError};
use crate::upstream::Upstream;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use ipnet::IpNet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Headers to set and to remove, in that order of application: remove, then set.
#[derive(Debug, Clone, Default)]
pub struct HeaderRules {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderRules {
    fn from_config(conf: Option<&config::HeaderRules>) -> Self {
        let Some(conf) = conf else {
            return HeaderRules::default();
        };
        HeaderRules {
            set: conf.set.clone().map(|h| h.0).unwrap_or_default(),
            remove: conf.remove.clone().unwrap_or_default(),
        }
    }
}

/// Where a route's requests go.
pub enum Target {
    /// Proxied to an upstream (index into [`Gateway::upstreams`]).
    Upstream {
        upstream: usize,
        metrics: UpstreamMetrics,
    },
    /// Fanned out to several upstreams, the answers merged.
    Aggregate(Aggregate),
    /// Answered by the gateway itself.
    Respond {
        status: u16,
        body: Bytes,
        headers: Vec<(HeaderName, HeaderValue)>,
    },
}

pub struct Route {
    pub name: String,
    /// The path as written (`/overview/users/{id}`), for `/openapi.json`.
    pub path: String,
    pub exact: bool,
    /// Methods allowed; `None`: any method.
    pub methods: Option<Vec<Method>>,
    pub metrics: RouteMetrics,
    pub target: Target,
    /// Whether an API key is needed.
    pub needs_key: bool,
    /// Consumers allowed; `None`: every consumer.
    pub consumers: Option<Vec<ConsumerId>>,
    pub request_headers: HeaderRules,
    pub response_headers: HeaderRules,
    /// With `strip_prefix`, how many leading path segments to drop.
    pub strip_segments: Option<usize>,
    pub preserve_host: bool,
    pub max_body: Option<u64>,
    pub timeout: Option<Duration>,
    /// The route's own limit: its index in the limiter, and whom it counts.
    pub rate_limit: Option<(u32, config::LimitBy)>,
}

pub struct Gateway {
    pub router: Router,
    pub routes: Vec<Route>,
    pub upstreams: Vec<Upstream>,
    pub keys: KeyStore,
    /// Each consumer's own limit (index in the limiter), by consumer id.
    pub consumer_limits: Vec<Option<u32>>,
    pub limiter: Limiter,
    pub auth_header: HeaderName,
    pub trusted_proxies: Vec<IpNet>,
    /// Every header an upstream's `headers` sets: never sent back to a client.
    pub secret_headers: Vec<HeaderName>,
    /// Metrics of requests that match no route (`route="none"`).
    pub unrouted: RouteMetrics,
    /// TLS listeners' certificates, read with this config (a reload reads them again).
    pub certificates: Vec<(SocketAddr, Arc<CertifiedKey>)>,
    pub client_limits: ClientLimits,
}

/// What a client connection may take (`limits:`, SPEC §3), with the safe defaults.
/// Read per connection, so a reload changes them for new connections and requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// Request line and headers; larger: 431.
    pub max_header_bytes: usize,
    /// The whole head must arrive within this; else the connection is closed.
    pub header_read_timeout: Duration,
    /// A keep-alive connection idle longer than this is closed.
    pub idle_timeout: Duration,
    /// Concurrent client connections; beyond: accepted, then closed.
    pub max_connections: usize,
}

/// Pingora refuses a head past 1 MiB with its own plain 400, whatever we allow.
const PINGORA_MAX_HEAD: usize = 1_048_575;

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            max_header_bytes: 32 * 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
        }
    }
}

impl ClientLimits {
    fn from_config(conf: Option<&config::Limits>) -> Self {
        let default = ClientLimits::default();
        let Some(conf) = conf else {
            return default;
        };
        ClientLimits {
            max_header_bytes: conf.max_header_bytes.as_ref().map_or(
                default.max_header_bytes,
                |b| {
                    usize::try_from(b.0)
                        .unwrap_or(usize::MAX)
                        .min(PINGORA_MAX_HEAD)
                },
            ),
            header_read_timeout: conf
                .header_read_timeout
                .unwrap_or(default.header_read_timeout),
            idle_timeout: conf.idle_timeout.unwrap_or(default.idle_timeout),
            max_connections: conf.max_connections.map_or(default.max_connections, |n| {
                usize::try_from(n).unwrap_or(usize::MAX)
            }),
        }
    }
}

impl Gateway {
    /// Compiles a checked config. Fails on what only compiling can find: route
    /// path syntax, peers that do not resolve, one key given to two consumers,
    /// and features this version does not implement yet.
    pub fn compile(config: &Config, file: &str) -> Result<Gateway, ConfigErrors> {
        let no_env = |_: &str| None;
        let mut cx = Cx::new(file, &no_env);
        let gateway = build(&mut cx, config);
        if cx.has_errors() {
            let mut errors = cx.into_errors();
            errors.sort_by_key(|e| (e.line, e.col));
            return Err(ConfigErrors(errors));
        }
        Ok(gateway)
    }

    /// The certificate a TLS listener serves.
    pub fn certificate_for(&self, listener: SocketAddr) -> Option<&CertifiedKey> {
        self.certificates
            .iter()
            .find(|(addr, _)| *addr == listener)
            .map(|(_, cert)| cert.as_ref())
    }

    /// Finds the route for a request.
    pub fn route(&self, method: &Method, path: &str, host: Option<&str>) -> Lookup {
        self.router.lookup(method, path, host)
    }
}

fn build(cx: &mut Cx<'_>, config: &Config) -> Gateway {
    let mut upstreams = Vec::new();
    let mut upstream_index = Vec::new();
    for (name, conf) in config.upstreams.iter().flat_map(|t| t.iter()) {
        match Upstream::build(name, conf) {
            Ok(u) => {
                upstream_index.push(name.to_string());
                upstreams.push(u);
            }
            Err((i, message)) => {
                let mark = conf.peers.value.get(i).map_or(conf.peers.mark, |p| p.mark);
                cx.error_at(&format!("upstreams.{name}.peers[{i}]"), mark, message);
            }
        }
    }
    let mut secret_headers: Vec<HeaderName> = Vec::new();
    for u in &upstreams {
        for (name, _) in &u.headers {
            if !secret_headers.contains(name) {
                secret_headers.push(name.clone());
            }
        }
    }

    let mut specs: Vec<LimitSpec> = Vec::new();
    let mut add_limit = |name: String, conf: &config::RateLimit, by: config::LimitBy| {
        specs.push(LimitSpec {
            name,
            requests: conf.requests.value,
            per: conf.per.value,
            by,
        });
        (specs.len() - 1) as u32
    };

    let mut keys = KeyStore::default();
    let mut consumer_limits = Vec::new();
    for (i, consumer) in config.consumers.iter().flat_map(|c| c.iter()) {
        let id = keys.add_consumer(&consumer.name.value);
        consumer_limits.push(consumer.rate_limit.as_ref().map(|l| {
            add_limit(
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
        let target = if let Some(respond) = &r.respond {
            Target::Respond {
                status: respond.status.value,
                body: Bytes::from(respond.body.clone().unwrap_or_default()),
                headers: respond.headers.clone().map(|h| h.0).unwrap_or_default(),
            }
        } else if let Some(name) = &r.upstream {
            let Some(upstream) = upstream_index.iter().position(|n| *n == name.value) else {
                continue; // unknown or unbuildable: already reported
            };
            Target::Upstream {
                upstream,
                metrics: metrics.upstream(&name.value),
            }
        } else if let Some(parts) = &r.aggregate {
            match build_aggregate(cx, i, r, &pattern, &parts.value, &upstream_index, &metrics) {
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
        });
        routes.push(Route {
            name: r.name.value.clone(),
            path: r.path.value.clone(),
            exact: r.exact.unwrap_or(false),
            methods,
            metrics,
            target,
            needs_key: r.auth.unwrap_or_default() == config::AuthMode::ApiKey,
            consumers: r.consumers.as_ref().map(|names| {
                names
                    .iter()
                    .filter_map(|(_, n)| keys.consumer_id(&n.value))
                    .collect()
            }),
            request_headers: HeaderRules::from_config(r.request_headers.as_ref()),
            response_headers: HeaderRules::from_config(r.response_headers.as_ref()),
            strip_segments,
            preserve_host: r.preserve_host.unwrap_or(false),
            max_body: r.max_body.map(|b| b.0),
            timeout: r.timeout,
            rate_limit: r.rate_limit.as_ref().map(|l| {
                let by = l.value.by.unwrap_or(config::LimitBy::Consumer);
                (
                    add_limit(format!("route:{}", r.name.value), &l.value, by),
                    by,
                )
            }),
        });
    }

    let limit_specs = specs;
    let limiter = Limiter::new(limit_specs, build_store(cx, config), on_store_error(config));
    Gateway {
        router: Router::new(route_specs),
        routes,
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
        secret_headers,
        unrouted: RouteMetrics::new("none"),
        certificates: load_certificates(cx, config),
        client_limits: ClientLimits::from_config(config.limits.as_ref()),
    }
}

/// Reads every TLS listener's certificate and key; a file that cannot be used
/// is a config error at its field.
fn load_certificates(cx: &mut Cx<'_>, config: &Config) -> Vec<(SocketAddr, Arc<CertifiedKey>)> {
    let mut loaded = Vec::new();
    for (i, listener) in config.listen.value.iter() {
        let Some(tls) = &listener.tls else { continue };
        match CertifiedKey::load(&tls.value.cert, &tls.value.key) {
            Ok(cert) => loaded.push((listener.addr, Arc::new(cert))),
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
    upstream_index: &[String],
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
        let Some(upstream) = upstream_index.iter().position(|n| n == upstream_name) else {
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
