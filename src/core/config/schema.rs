//! The configuration file's types (SPEC §3), as written by the operator.
//!
//! Optional fields stay `Option` here; defaults are applied when the config is
//! compiled into the gateway's tables, so that what was written stays visible.

use super::decode::{decode_enum, decode_struct, ByteSize, Cx, Decode, Indexed, Spanned, Table};
use super::types::HeaderList;
use super::yaml::{Node, NodeKind};
use http::{HeaderName, Method};
use ipnet::IpNet;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Spanned<Indexed<Listener>>,
    pub admin: Option<Admin>,
    pub threads: Option<Spanned<usize>>,
    pub shutdown_grace: Option<Duration>,
    pub limits: Option<Limits>,
    pub log: Option<LogConf>,
    pub trusted_proxies: Option<Vec<IpNet>>,
    pub auth: Option<AuthConf>,
    pub consumers: Option<Indexed<Consumer>>,
    pub upstreams: Option<Table<Upstream>>,
    pub routes: Indexed<Route>,
    pub rate_limit: Option<RateLimitStore>,
    pub docs: Option<Docs>,
    pub cache: Option<Spanned<CacheConf>>,
}
decode_struct!(Config {
    listen,
    admin,
    threads,
    shutdown_grace,
    limits,
    log,
    trusted_proxies,
    auth,
    consumers,
    upstreams,
    routes,
    rate_limit,
    docs,
    cache
});

#[derive(Debug, Clone)]
pub struct Listener {
    pub addr: Spanned<SocketAddr>,
    pub tls: Option<Spanned<ListenerTls>>,
}
decode_struct!(Listener { addr, tls });

#[derive(Debug, Clone)]
pub struct ListenerTls {
    pub cert: String,
    pub key: String,
}
decode_struct!(ListenerTls { cert, key });

#[derive(Debug, Clone)]
pub struct Admin {
    pub addr: Spanned<SocketAddr>,
}
decode_struct!(Admin { addr });

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_header_bytes: Option<ByteSize>,
    pub header_read_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub body_read_timeout: Option<Duration>,
    pub max_connections: Option<u64>,
}
decode_struct!(Limits {
    max_header_bytes,
    header_read_timeout,
    idle_timeout,
    body_read_timeout,
    max_connections
});

#[derive(Debug, Clone)]
pub struct LogConf {
    pub level: Option<LogLevel>,
    pub format: Option<LogFormat>,
}
decode_struct!(LogConf { level, format });

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}
decode_enum!(LogLevel { "error" => Error, "warn" => Warn, "info" => Info, "debug" => Debug, "trace" => Trace });

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}
decode_enum!(LogFormat { "json" => Json, "text" => Text });

#[derive(Debug, Clone)]
pub struct AuthConf {
    pub header: Option<HeaderName>,
    pub jwt: Option<Spanned<JwtConf>>,
}
decode_struct!(AuthConf { header, jwt });

/// `auth.jwt` (SPEC §8.1): who may issue bearer tokens, and how to read them.
#[derive(Debug, Clone)]
pub struct JwtConf {
    pub issuers: Spanned<Indexed<JwtIssuer>>,
    pub consumer_claim: Option<String>,
    pub leeway: Option<Duration>,
}
decode_struct!(JwtConf {
    issuers,
    consumer_claim,
    leeway
});

/// One token issuer and where its keys come from (one of `jwks_url`,
/// `jwks_file`, `secret`).
#[derive(Debug, Clone)]
pub struct JwtIssuer {
    pub issuer: Spanned<String>,
    pub audiences: Option<Vec<String>>,
    pub jwks_url: Option<Spanned<String>>,
    pub jwks_file: Option<Spanned<String>>,
    pub secret: Option<Spanned<String>>,
    pub algorithms: Option<Spanned<Vec<Spanned<JwtAlgorithm>>>>,
    pub jwks_refresh: Option<Spanned<Duration>>,
}
decode_struct!(JwtIssuer {
    issuer,
    audiences,
    jwks_url,
    jwks_file,
    secret,
    algorithms,
    jwks_refresh
});

/// A JWS `alg` an issuer's tokens may use. `none` decodes so that validation
/// can say plainly why it is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlgorithm {
    None,
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}
decode_enum!(JwtAlgorithm {
    "none" => None,
    "HS256" => HS256,
    "HS384" => HS384,
    "HS512" => HS512,
    "RS256" => RS256,
    "RS384" => RS384,
    "RS512" => RS512,
    "PS256" => PS256,
    "PS384" => PS384,
    "PS512" => PS512,
    "ES256" => ES256,
    "ES384" => ES384,
    "EdDSA" => EdDSA,
});

impl JwtAlgorithm {
    /// HMAC with a shared secret (`secret:` only).
    pub fn is_hmac(self) -> bool {
        matches!(
            self,
            JwtAlgorithm::HS256 | JwtAlgorithm::HS384 | JwtAlgorithm::HS512
        )
    }
}

#[derive(Debug, Clone)]
pub struct Consumer {
    pub name: Spanned<String>,
    pub keys: Option<Vec<Spanned<String>>>,
    pub key_hashes: Option<Vec<Spanned<String>>>,
    pub rate_limit: Option<Spanned<RateLimit>>,
}
decode_struct!(Consumer {
    name,
    keys,
    key_hashes,
    rate_limit
});

#[derive(Debug, Clone)]
pub struct RateLimit {
    pub requests: Spanned<u64>,
    pub per: Spanned<Duration>,
    pub by: Option<LimitBy>,
}
decode_struct!(RateLimit { requests, per, by });

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitBy {
    Consumer,
    Ip,
    Route,
}
decode_enum!(LimitBy { "consumer" => Consumer, "ip" => Ip, "route" => Route });

#[derive(Debug, Clone)]
pub struct Upstream {
    pub peers: Spanned<Vec<Spanned<PeerConf>>>,
    pub balance: Option<Balance>,
    pub tls: Option<bool>,
    pub sni: Option<String>,
    pub verify: Option<bool>,
    pub timeouts: Option<Timeouts>,
    pub retries: Option<u32>,
    pub health_check: Option<HealthCheck>,
    pub headers: Option<HeaderList>,
    /// Passive ejection of failing peers (SPEC §8.3).
    pub outlier: Option<Outlier>,
}
decode_struct!(Upstream {
    peers,
    balance,
    tls,
    sni,
    verify,
    timeouts,
    retries,
    health_check,
    headers,
    outlier
});

/// A peer: `"127.0.0.1:8001"` (weight 1) or `{ addr: "127.0.0.1:8011", weight: 9 }`.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerConf {
    pub addr: Spanned<String>,
    /// 1 when written as a plain address; checked to be 1..=[`MAX_WEIGHT`].
    pub weight: Spanned<i64>,
}

/// The largest peer weight: the balancer holds one slot per unit of weight.
pub const MAX_WEIGHT: i64 = 1000;

#[derive(Debug, Clone)]
struct PeerMap {
    addr: Spanned<String>,
    weight: Spanned<i64>,
}
decode_struct!(PeerMap { addr, weight });

impl Decode for PeerConf {
    fn decode(cx: &mut Cx<'_>, node: &Node) -> Option<Self> {
        if let NodeKind::Map(_) = node.kind {
            let PeerMap { addr, weight } = PeerMap::decode(cx, node)?;
            return Some(PeerConf { addr, weight });
        }
        let addr = Spanned::<String>::decode(cx, node)?;
        Some(PeerConf {
            weight: Spanned::new(1, node.mark),
            addr,
        })
    }
}

impl PeerConf {
    /// The peer as written in the config (the `peer` label and log field).
    pub fn label(&self) -> &str {
        &self.addr.value
    }
}

/// `outlier: { consecutive_failures: 5, eject_for: 30s }`.
#[derive(Debug, Clone)]
pub struct Outlier {
    pub consecutive_failures: Spanned<u32>,
    pub eject_for: Spanned<Duration>,
}
decode_struct!(Outlier {
    consecutive_failures,
    eject_for
});

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    #[default]
    RoundRobin,
    Random,
    LeastConnections,
    ConsistentHash,
}
decode_enum!(Balance {
    "round_robin" => RoundRobin,
    "random" => Random,
    "least_connections" => LeastConnections,
    "consistent_hash" => ConsistentHash,
});

#[derive(Debug, Clone)]
pub struct Timeouts {
    pub connect: Option<Duration>,
    pub read: Option<Duration>,
    pub write: Option<Duration>,
    pub idle: Option<Duration>,
}
decode_struct!(Timeouts {
    connect,
    read,
    write,
    idle
});

#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub path: Spanned<String>,
    pub interval: Option<Duration>,
}
decode_struct!(HealthCheck { path, interval });

#[derive(Debug, Clone)]
pub struct Route {
    pub name: Spanned<String>,
    pub path: Spanned<String>,
    pub methods: Option<Spanned<Vec<Method>>>,
    pub host: Option<String>,
    pub exact: Option<bool>,
    pub upstream: Option<Spanned<String>>,
    pub auth: Option<Spanned<AuthMode>>,
    pub consumers: Option<Indexed<Spanned<String>>>,
    pub scopes: Option<Spanned<Vec<String>>>,
    pub claims_to_headers: Option<Spanned<Table<String>>>,
    pub forward_token: Option<Spanned<bool>>,
    pub rate_limit: Option<Spanned<RateLimit>>,
    pub request_headers: Option<HeaderRules>,
    pub response_headers: Option<HeaderRules>,
    pub strip_prefix: Option<Spanned<bool>>,
    pub preserve_host: Option<bool>,
    pub max_body: Option<ByteSize>,
    pub timeout: Option<Duration>,
    pub respond: Option<Respond>,
    pub aggregate: Option<Spanned<Table<AggregatePart>>>,
    pub max_part_body: Option<Spanned<ByteSize>>,
    /// `match`: headers and query parameters the request must carry.
    pub matching: Option<Spanned<RouteMatch>>,
    pub cors: Option<Spanned<Cors>>,
    pub cache: Option<Spanned<RouteCache>>,
}
decode_struct!(Route {
    name,
    path,
    methods,
    host,
    exact,
    upstream,
    auth,
    consumers,
    scopes,
    claims_to_headers,
    forward_token,
    rate_limit,
    request_headers,
    response_headers,
    strip_prefix,
    preserve_host,
    max_body,
    timeout,
    respond,
    aggregate,
    max_part_body,
    matching as "match",
    cors,
    cache
});

/// `match: { headers: {...}, query: {...} }`; values are exact or `"*"`.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    pub headers: Option<Spanned<Table<Spanned<String>>>>,
    pub query: Option<Spanned<Table<Spanned<String>>>>,
}
decode_struct!(RouteMatch { headers, query });

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    #[default]
    ApiKey,
    /// A bearer token (SPEC §8.1).
    Jwt,
    /// An API key or a bearer token.
    Any,
    None,
}
decode_enum!(AuthMode { "api_key" => ApiKey, "jwt" => Jwt, "any" => Any, "none" => None });

impl AuthMode {
    /// Whether bearer tokens are read on such a route.
    pub fn takes_tokens(self) -> bool {
        matches!(self, AuthMode::Jwt | AuthMode::Any)
    }
}

#[derive(Debug, Clone, Default)]
pub struct HeaderRules {
    pub set: Option<HeaderList>,
    pub remove: Option<Vec<HeaderName>>,
}
decode_struct!(HeaderRules { set, remove });

#[derive(Debug, Clone)]
pub struct Respond {
    pub status: Spanned<u16>,
    pub body: Option<String>,
    pub headers: Option<HeaderList>,
}
decode_struct!(Respond {
    status,
    body,
    headers
});

#[derive(Debug, Clone)]
pub struct AggregatePart {
    pub upstream: Spanned<String>,
    pub path: Spanned<String>,
}
decode_struct!(AggregatePart { upstream, path });

#[derive(Debug, Clone)]
pub struct RateLimitStore {
    pub store: Option<Spanned<StoreKind>>,
    pub redis: Option<RedisConf>,
    pub on_store_error: Option<OnStoreError>,
}
decode_struct!(RateLimitStore {
    store,
    redis,
    on_store_error
});

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreKind {
    #[default]
    Local,
    Redis,
}
decode_enum!(StoreKind { "local" => Local, "redis" => Redis });

#[derive(Debug, Clone)]
pub struct RedisConf {
    pub url: Spanned<String>,
    pub prefix: Option<String>,
    pub timeout: Option<Duration>,
}
decode_struct!(RedisConf {
    url,
    prefix,
    timeout
});

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnStoreError {
    #[default]
    Allow,
    Deny,
}
decode_enum!(OnStoreError { "allow" => Allow, "deny" => Deny });

/// A route's `cors` (SPEC §8.4): who may call it from a browser page.
#[derive(Debug, Clone)]
pub struct Cors {
    /// Serialized origins (`https://app.example.com`) or `"*"`.
    pub origins: Spanned<Vec<Spanned<String>>>,
    /// Omitted: the route's methods (any method when it has none).
    pub methods: Option<Spanned<Vec<Spanned<Method>>>>,
    /// Request headers a page may send (`"*"`: any); omitted: only safelisted ones.
    pub headers: Option<Vec<Spanned<HeaderName>>>,
    pub expose_headers: Option<Vec<Spanned<HeaderName>>>,
    pub credentials: Option<Spanned<bool>>,
    pub max_age: Option<Duration>,
}
decode_struct!(Cors {
    origins,
    methods,
    headers,
    expose_headers,
    credentials,
    max_age
});

/// `docs:`: the API docs page on the public listener too.
#[derive(Debug, Clone)]
pub struct Docs {
    pub path: Spanned<String>,
}
decode_struct!(Docs { path });

/// The top-level `cache:` (SPEC §8.2): the in-memory store all routes share.
#[derive(Debug, Clone)]
pub struct CacheConf {
    pub max_size: Option<Spanned<ByteSize>>,
    pub max_object: Option<Spanned<ByteSize>>,
}
decode_struct!(CacheConf {
    max_size,
    max_object
});

/// A route's `cache:` (SPEC §8.2).
#[derive(Debug, Clone)]
pub struct RouteCache {
    pub ttl: Option<Duration>,
    pub vary: Option<Vec<HeaderName>>,
    pub per_consumer: Option<bool>,
    pub stale_while_revalidate: Option<Duration>,
    pub stale_if_error: Option<Duration>,
}
decode_struct!(RouteCache {
    ttl,
    vary,
    per_consumer,
    stale_while_revalidate,
    stale_if_error
});
