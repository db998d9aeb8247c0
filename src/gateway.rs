//! The gateway's tables, compiled from a checked config: immutable, shared by
//! every request through an `Arc`, and swapped whole on reload.

use crate::auth::{hash_key, parse_key_hash, ConsumerId, KeyStore};
use crate::config::{self, Config, ConfigErrors, Cx};
use crate::metrics::{RouteMetrics, UpstreamMetrics};
use crate::router::{Lookup, Pattern, RouteSpec, Router};
use crate::upstream::Upstream;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use ipnet::IpNet;
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
    /// Answered by the gateway itself.
    Respond {
        status: u16,
        body: Bytes,
        headers: Vec<(HeaderName, HeaderValue)>,
    },
}

pub struct Route {
    pub name: String,
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
}

pub struct Gateway {
    pub router: Router,
    pub routes: Vec<Route>,
    pub upstreams: Vec<Upstream>,
    pub keys: KeyStore,
    pub auth_header: HeaderName,
    pub trusted_proxies: Vec<IpNet>,
    /// Every header an upstream's `headers` sets: never sent back to a client.
    pub secret_headers: Vec<HeaderName>,
    /// Metrics of requests that match no route (`route="none"`).
    pub unrouted: RouteMetrics,
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

    /// Finds the route for a request.
    pub fn route(&self, method: &Method, path: &str, host: Option<&str>) -> Lookup {
        self.router.lookup(method, path, host)
    }
}

fn build(cx: &mut Cx<'_>, config: &Config) -> Gateway {
    reject_unimplemented(cx, config);

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

    let mut keys = KeyStore::default();
    for (i, consumer) in config.consumers.iter().flat_map(|c| c.iter()) {
        let id = keys.add_consumer(&consumer.name.value);
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

    let mut specs = Vec::with_capacity(config.routes.len());
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
        } else {
            continue; // aggregate: reported by reject_unimplemented
        };
        let strip_segments = r
            .strip_prefix
            .unwrap_or(false)
            .then_some(pattern.segments.len());
        specs.push(RouteSpec {
            pattern,
            exact: r.exact.unwrap_or(false),
            methods: r.methods.clone(),
            host: r.host.as_ref().map(|h| h.to_ascii_lowercase()),
        });
        routes.push(Route {
            name: r.name.value.clone(),
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
        });
    }

    Gateway {
        router: Router::new(specs),
        routes,
        upstreams,
        keys,
        auth_header: config
            .auth
            .as_ref()
            .and_then(|a| a.header.clone())
            .unwrap_or_else(|| HeaderName::from_static("x-api-key")),
        trusted_proxies: config.trusted_proxies.clone().unwrap_or_default(),
        secret_headers,
        unrouted: RouteMetrics::new("none"),
    }
}

/// Features that parse but are not implemented yet are refused, not ignored:
/// a rate limit or TLS listener silently not applied would be a security hole.
fn reject_unimplemented(cx: &mut Cx<'_>, config: &Config) {
    let later = "is not implemented in this version of portcullis";
    // Pingora's defaults apply meanwhile; say so rather than stay silent.
    if config.limits.is_some() {
        log::warn!("`limits` is accepted but not enforced yet: Pingora's defaults apply");
    }
    for (name, upstream) in config.upstreams.iter().flat_map(|t| t.iter()) {
        if upstream.health_check.is_some() {
            log::warn!("upstreams.{name}.health_check is accepted but not run yet: only failed connects are retried");
        }
    }
    for (i, l) in config.listen.value.iter() {
        if let Some(tls) = &l.tls {
            cx.error_at(
                &format!("listen[{i}].tls"),
                tls.mark,
                format!("TLS listening {later}"),
            );
        }
    }
    for (i, r) in config.routes.iter() {
        if let Some(parts) = &r.aggregate {
            cx.error_at(
                &format!("routes[{i}].aggregate"),
                parts.mark,
                format!("aggregation {later}"),
            );
        }
        if let Some(limit) = &r.rate_limit {
            cx.error_at(
                &format!("routes[{i}].rate_limit"),
                limit.mark,
                format!("rate limiting {later}"),
            );
        }
    }
    for (i, c) in config.consumers.iter().flat_map(|c| c.iter()) {
        if let Some(limit) = &c.rate_limit {
            cx.error_at(
                &format!("consumers[{i}].rate_limit"),
                limit.mark,
                format!("rate limiting {later}"),
            );
        }
    }
}
