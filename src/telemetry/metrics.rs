//! Metric families of SPEC §5, and their text exposition.
//!
//! Families live in the `prometheus` crate's default registry (the one Pingora's
//! own exporter reads). Each route resolves its labelled handles once, when the
//! config is compiled, so the request path never formats or hashes labels except
//! for `requests_total`, whose status label is only known at the end.

use http::Method;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::{Arc, OnceLock};

const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Every metric family, registered once per process.
pub struct Families {
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub in_flight: IntGaugeVec,
    pub request_bytes: IntCounterVec,
    pub response_bytes: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub upstream_errors: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub rate_limit_store_errors: IntCounterVec,
    pub peer_up: IntGaugeVec,
    /// JWKS fetches per token issuer (SPEC §8.1).
    pub jwks_refreshes: IntCounterVec,
    /// Client connections open now (HTTP/1 and HTTP/2, admin excluded).
    pub connections_open: IntGauge,
    /// When the configuration in force was loaded: at start, then each reload.
    pub config_loaded_at: Gauge,
}

/// The Pingora release this binary is built on (Cargo.lock; a unit test
/// keeps the two in step).
pub const PINGORA_VERSION: &str = "0.9.1";

fn counter(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    reg.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn histogram(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec());
    let h = HistogramVec::new(opts, labels).expect("valid metric definition");
    reg.register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

fn gauge(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    reg.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn single_gauge(reg: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::with_opts(Opts::new(name, help)).expect("valid metric definition");
    reg.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

/// Notes that a configuration came into force now (start or reload).
pub fn config_loaded() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    families().config_loaded_at.set(now);
}

/// The process's metric families (registered on first use).
pub fn families() -> &'static Families {
    static FAMILIES: OnceLock<Families> = OnceLock::new();
    FAMILIES.get_or_init(|| {
        let reg = prometheus::default_registry();
        let f = Families {
            requests: counter(
                reg,
                "portcullis_requests_total",
                "Requests answered, by route, method and status.",
                &["route", "method", "status"],
            ),
            request_duration: histogram(
                reg,
                "portcullis_request_duration_seconds",
                "Time from request received to response sent.",
                &["route"],
            ),
            upstream_duration: histogram(
                reg,
                "portcullis_upstream_duration_seconds",
                "Time from choosing a peer to its response header.",
                &["route", "upstream"],
            ),
            in_flight: gauge(
                reg,
                "portcullis_requests_in_flight",
                "Requests being handled.",
                &["route"],
            ),
            request_bytes: counter(
                reg,
                "portcullis_request_size_bytes_total",
                "Request body bytes received from clients.",
                &["route"],
            ),
            response_bytes: counter(
                reg,
                "portcullis_response_size_bytes_total",
                "Response body bytes sent to clients.",
                &["route"],
            ),
            auth_failures: counter(
                reg,
                "portcullis_auth_failures_total",
                "Requests refused by authentication (API key or bearer token).",
                &["route", "reason"],
            ),
            rate_limited: counter(
                reg,
                "portcullis_rate_limited_total",
                "Requests refused by a rate limit.",
                &["route"],
            ),
            upstream_errors: counter(
                reg,
                "portcullis_upstream_errors_total",
                "Failures talking to upstream peers.",
                &["route", "upstream", "kind"],
            ),
            jwks_refreshes: counter(
                reg,
                "portcullis_jwks_refreshes_total",
                "JWKS fetches of token issuers, by issuer and result (ok, error).",
                &["issuer", "result"],
            ),
            config_reloads: counter(
                reg,
                "portcullis_config_reloads_total",
                "Configuration reloads, by result.",
                &["result"],
            ),
            rate_limit_store_errors: counter(
                reg,
                "portcullis_rate_limit_store_errors_total",
                "Rate-limit decisions the store failed to make (unreachable, timed out).",
                &["store"],
            ),
            peer_up: gauge(
                reg,
                "portcullis_upstream_peer_up",
                "Whether a peer takes traffic (1) or is marked down by its health check (0).",
                &["upstream", "peer"],
            ),
            connections_open: single_gauge(
                reg,
                "portcullis_connections_open",
                "Client connections open now.",
            ),
            config_loaded_at: {
                let g = Gauge::with_opts(Opts::new(
                    "portcullis_config_last_reload_success_timestamp_seconds",
                    "When the configuration in force was loaded (start or reload), seconds since the epoch.",
                ))
                .expect("valid metric definition");
                reg.register(Box::new(g.clone()))
                    .expect("metric registered once");
                g
            },
        };
        for result in ["ok", "error"] {
            f.config_reloads.with_label_values(&[result]);
        }
        let build_info = gauge(
            reg,
            "portcullis_build_info",
            "Always 1; the labels say which build is running.",
            &["version", "pingora_version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), PINGORA_VERSION])
            .set(1);
        let process = Box::new(crate::telemetry::process_metrics::ProcessCollector::new());
        reg.register(process).expect("metric registered once");
        for store in ["local", "redis"] {
            f.rate_limit_store_errors.with_label_values(&[store]);
        }
        f
    })
}

/// The `method` labels: the standard methods, then `OTHER` (bounded cardinality).
const METHOD_LABELS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE", "OTHER",
];

fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::PATCH => 4,
        Method::DELETE => 5,
        Method::OPTIONS => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => 9,
    }
}

/// The statuses whose `requests_total` handles are kept per route and method.
const COMMON_STATUSES: [u16; 24] = [
    200, 201, 202, 204, 206, 301, 302, 304, 400, 401, 403, 404, 405, 409, 413, 422, 429, 431, 499,
    500, 502, 503, 504, 101,
];

/// `requests_total` handles by method and common status, each resolved on first
/// use: the label hashing and registry lookup happen once per route, method and
/// status instead of once per request. Clones share the handles.
#[derive(Clone)]
struct RequestCounters(Arc<[OnceLock<IntCounter>]>);

impl RequestCounters {
    fn new() -> Self {
        let slots = METHOD_LABELS.len() * COMMON_STATUSES.len();
        RequestCounters((0..slots).map(|_| OnceLock::new()).collect())
    }

    fn count(&self, route: &str, method: &Method, status: u16) {
        let method = method_index(method);
        let resolve = || {
            families().requests.with_label_values(&[
                route,
                METHOD_LABELS[method],
                status_label(status),
            ])
        };
        match COMMON_STATUSES.iter().position(|&s| s == status) {
            Some(i) => self.0[method * COMMON_STATUSES.len() + i]
                .get_or_init(resolve)
                .inc(),
            None => resolve().inc(),
        }
    }
}

/// The `status` label, from a table built once (no formatting per request).
fn status_label(status: u16) -> &'static str {
    static LABELS: OnceLock<Vec<String>> = OnceLock::new();
    let labels = LABELS.get_or_init(|| (0..600u16).map(|s| s.to_string()).collect());
    labels
        .get(usize::from(status))
        .map_or("other", String::as_str)
}

/// Why authentication failed, as the `reason` label.
#[derive(Debug, Clone, Copy)]
pub enum AuthFailure {
    Missing,
    Invalid,
    Forbidden,
    MissingToken,
    InvalidToken,
    InsufficientScope,
    MissingCredentials,
}

impl AuthFailure {
    /// The bearer-token reasons (SPEC §8.1), exported from zero on routes that take tokens.
    pub const TOKEN_REASONS: [AuthFailure; 4] = [
        AuthFailure::MissingToken,
        AuthFailure::InvalidToken,
        AuthFailure::InsufficientScope,
        AuthFailure::MissingCredentials,
    ];

    fn label(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing_api_key",
            AuthFailure::Invalid => "invalid_api_key",
            AuthFailure::Forbidden => "forbidden",
            AuthFailure::MissingToken => "missing_token",
            AuthFailure::InvalidToken => "invalid_token",
            AuthFailure::InsufficientScope => "insufficient_scope",
            AuthFailure::MissingCredentials => "missing_credentials",
        }
    }
}

/// Exports an issuer's `jwks_refreshes_total` series from zero.
pub fn jwks_refreshes_from_zero(issuer: &str) {
    for result in ["ok", "error"] {
        families()
            .jwks_refreshes
            .with_label_values(&[issuer, result]);
    }
}

/// What went wrong with an upstream, as the `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Connect,
    Timeout,
    Protocol,
}

impl UpstreamErrorKind {
    /// The kind of a Pingora error met talking to an upstream: failures to
    /// connect (TCP or TLS), timeouts, and anything else.
    pub fn of(e: &pingora_core::Error) -> UpstreamErrorKind {
        use pingora_core::ErrorType;
        match e.etype() {
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => UpstreamErrorKind::Timeout,
            ErrorType::ConnectTimedout
            | ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::TLSHandshakeFailure
            | ErrorType::TLSHandshakeTimedout
            | ErrorType::InvalidCert
            | ErrorType::HandshakeError
            | ErrorType::SocketError
            | ErrorType::BindError => UpstreamErrorKind::Connect,
            _ => UpstreamErrorKind::Protocol,
        }
    }
}

/// A route's handles to the per-upstream families.
#[derive(Clone)]
pub struct UpstreamMetrics {
    pub duration: Histogram,
    connect_errors: IntCounter,
    timeouts: IntCounter,
    protocol_errors: IntCounter,
}

impl UpstreamMetrics {
    pub fn error(&self, kind: UpstreamErrorKind) -> &IntCounter {
        match kind {
            UpstreamErrorKind::Connect => &self.connect_errors,
            UpstreamErrorKind::Timeout => &self.timeouts,
            UpstreamErrorKind::Protocol => &self.protocol_errors,
        }
    }
}

/// One route's handles, resolved when the config is compiled.
#[derive(Clone)]
pub struct RouteMetrics {
    pub route: String,
    pub duration: Histogram,
    pub in_flight: IntGauge,
    pub request_bytes: IntCounter,
    pub response_bytes: IntCounter,
    auth_missing: IntCounter,
    auth_invalid: IntCounter,
    auth_forbidden: IntCounter,
    pub rate_limited: IntCounter,
    requests: RequestCounters,
}

impl RouteMetrics {
    pub fn new(route: &str) -> Self {
        let f = families();
        RouteMetrics {
            route: route.to_string(),
            duration: f.request_duration.with_label_values(&[route]),
            in_flight: f.in_flight.with_label_values(&[route]),
            request_bytes: f.request_bytes.with_label_values(&[route]),
            response_bytes: f.response_bytes.with_label_values(&[route]),
            auth_missing: f
                .auth_failures
                .with_label_values(&[route, "missing_api_key"]),
            auth_invalid: f
                .auth_failures
                .with_label_values(&[route, "invalid_api_key"]),
            auth_forbidden: f.auth_failures.with_label_values(&[route, "forbidden"]),
            rate_limited: f.rate_limited.with_label_values(&[route]),
            requests: RequestCounters::new(),
        }
    }

    /// Handles for this route's traffic to `upstream`, exported from zero.
    pub fn upstream(&self, upstream: &str) -> UpstreamMetrics {
        let f = families();
        let labels = |kind| [self.route.as_str(), upstream, kind];
        UpstreamMetrics {
            duration: f
                .upstream_duration
                .with_label_values(&[&self.route, upstream]),
            connect_errors: f.upstream_errors.with_label_values(&labels("connect")),
            timeouts: f.upstream_errors.with_label_values(&labels("timeout")),
            protocol_errors: f.upstream_errors.with_label_values(&labels("protocol")),
        }
    }

    pub fn auth_failure(&self, reason: AuthFailure) -> IntCounter {
        match reason {
            AuthFailure::Missing => self.auth_missing.clone(),
            AuthFailure::Invalid => self.auth_invalid.clone(),
            AuthFailure::Forbidden => self.auth_forbidden.clone(),
            // Token refusals are rarer: the labelled handle is looked up then.
            token => families()
                .auth_failures
                .with_label_values(&[self.route.as_str(), token.label()]),
        }
    }

    /// Exports the bearer-token reasons of this route from zero.
    pub fn token_failures_from_zero(&self) {
        for reason in AuthFailure::TOKEN_REASONS {
            self.auth_failure(reason);
        }
    }

    /// Counts one finished request.
    pub fn count_request(&self, method: &Method, status: u16) {
        self.requests.count(&self.route, method, status);
    }
}

/// The Prometheus text exposition of every registered family.
pub fn render() -> Vec<u8> {
    let mut out = Vec::with_capacity(16 * 1024);
    let families = prometheus::default_registry().gather();
    if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
        log::error!("cannot encode metrics: {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pingora_version_label_is_the_one_in_cargo_lock() {
        let lock = include_str!("../../Cargo.lock");
        let entry = format!("name = \"pingora-core\"\nversion = \"{PINGORA_VERSION}\"");
        assert!(lock.contains(&entry), "Cargo.lock has another pingora-core");
    }
}
