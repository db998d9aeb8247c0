//! The gateway's tables, built from a checked config: immutable, shared by
//! every request through an `Arc`, and swapped whole on reload.

mod build;
pub mod cache;
pub mod certs;
pub mod jwt;
pub mod plan;
mod token_memory;
pub mod upstream;

use crate::core::aggregate::PartTemplate;
use crate::core::auth::{ConsumerId, KeyStore};
use crate::core::config::{self, Config, ConfigErrors, Cx};
use crate::core::forward::HeaderRules;
use crate::core::limit::Limiter;
use crate::core::reply::Reply;
use crate::core::router::{self, Lookup, Router};
use crate::tables::certs::CertifiedKey;
use crate::tables::upstream::Upstream;
use crate::telemetry::metrics::{RouteMetrics, UpstreamMetrics};
use http::{HeaderName, Method};
use ipnet::IpNet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Where a route's requests go.
pub enum Target {
    /// Proxied to an upstream (index into [`Gateway::upstreams`]).
    Upstream {
        upstream: usize,
        metrics: UpstreamMetrics,
    },
    /// Fanned out to several upstreams, the answers merged.
    Aggregate(Aggregate),
    /// Answered by the gateway itself (`respond:`).
    Respond(Reply),
}

/// One part of an aggregate route, compiled.
pub struct Part {
    /// The part's name, as written (for `/openapi.json`).
    pub name: String,
    /// `name` as the merged answer's JSON key.
    pub member_key: String,
    /// Index into the gateway's upstreams.
    pub upstream: usize,
    pub template: PartTemplate,
    pub metrics: UpstreamMetrics,
}

/// An aggregate route's parts and bounds.
pub struct Aggregate {
    pub parts: Vec<Part>,
    pub max_part_body: usize,
    /// The parts' upstreams, for the access log's `upstream` field: `users,orders`.
    pub upstreams_label: String,
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
    /// Bearer tokens on this route (`auth: jwt | any`, SPEC §8.1).
    pub tokens: RouteTokens,
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
    /// Which browser pages may call the route (`cors:`).
    pub cors: Option<crate::core::cors::Policy>,
    /// The route's response cache, if it has one.
    pub cache: Option<cache::RouteCache>,
}

/// What a route asks of bearer tokens.
#[derive(Debug, Clone, Default)]
pub struct RouteTokens {
    pub mode: config::AuthMode,
    /// Every one needed (`scopes`), and as the challenge's `scope="..."`.
    pub scopes: Vec<String>,
    pub scope_text: String,
    /// Upstream headers set from claims: (header, claim).
    pub claims_to_headers: Vec<(HeaderName, String)>,
    /// `authorization` goes upstream (`forward_token: true`).
    pub forward_token: bool,
}

pub struct Gateway {
    pub router: Router,
    pub routes: Vec<Route>,
    pub upstreams: Vec<Upstream>,
    pub keys: KeyStore,
    /// `auth.jwt`: token issuers, their keys, verified tokens remembered.
    pub jwt: Option<jwt::TokenIssuers>,
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
    /// Where the public listener serves the API docs page (`docs.path`,
    /// without a trailing `/`); `None`: on the admin listener only.
    pub docs_path: Option<String>,
    /// The response cache's bounds; `None`: nothing is cached.
    pub cache: Option<cache::CacheLimits>,
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
    /// A request body may not pause longer than this; else 408.
    pub body_read_timeout: Duration,
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
            body_read_timeout: Duration::from_secs(10),
            max_connections: 10_000,
        }
    }
}

impl ClientLimits {
    pub(crate) fn from_config(conf: Option<&config::Limits>) -> Self {
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
            body_read_timeout: conf.body_read_timeout.unwrap_or(default.body_read_timeout),
            max_connections: conf.max_connections.map_or(default.max_connections, |n| {
                usize::try_from(n).unwrap_or(usize::MAX)
            }),
        }
    }
}

impl Gateway {
    /// Builds the tables of a checked config. Not pure: it resolves peer names
    /// (DNS), reads the TLS listeners' certificate files, registers each
    /// route's metrics in the process-wide registry, and connects nothing yet
    /// (a Redis store connects on first use). Fails on what only building can
    /// find: route path syntax, peers that do not resolve, one key given to two
    /// consumers, certificates that cannot be used.
    pub fn build(config: &Config, file: &str) -> Result<Gateway, ConfigErrors> {
        let no_env = |_: &str| None;
        let mut cx = Cx::new(file, &no_env);
        let gateway = build::gateway(&mut cx, config);
        if cx.has_errors() {
            return Err(config::sorted(cx.into_errors()));
        }
        Ok(gateway)
    }

    /// Reads, checks and builds a config file: the one path `--test`, start and
    /// reload take, so they accept and refuse alike. A file with errors is still
    /// built as far as it decoded, and the errors of both steps come together
    /// in file order: a bad port does not hide a peer that does not resolve.
    pub fn load_file(path: &Path) -> Result<(Config, Gateway), ConfigErrors> {
        let file = path.display().to_string();
        let loaded = config::read_file(path);
        let Some(config) = loaded.config else {
            return Err(config::sorted(loaded.errors));
        };
        let mut errors = loaded.errors;
        match Gateway::build(&config, &file) {
            Ok(gateway) if errors.is_empty() => return Ok((config, gateway)),
            Ok(_) => {}
            Err(built) => errors.extend(built.0),
        }
        Err(config::sorted(errors))
    }

    /// The certificate a TLS listener serves.
    pub fn certificate_for(&self, listener: SocketAddr) -> Option<&CertifiedKey> {
        self.certificates
            .iter()
            .find(|(addr, _)| *addr == listener)
            .map(|(_, cert)| cert.as_ref())
    }

    /// Finds the route for a request.
    pub fn route(&self, request: &router::Request<'_>) -> Lookup {
        self.router.lookup(request)
    }
}

#[cfg(test)]
mod tests;
