//! Loading the YAML config: parse, decode, check cross-references; every error
//! found in one pass, each with `file:line:col`, field path and message.

mod browser;
pub mod decode;
pub mod error;
pub mod jwt;
pub mod routing;
pub mod schema;
pub mod types;
pub mod yaml;

pub use decode::{ByteSize, Cx, Indexed, Spanned, Table};
pub use error::{ConfigError, ConfigErrors};
pub use schema::*;
pub use types::HeaderList;

use decode::Decode;
use http::Method;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;

/// The largest config file accepted. Loading costs memory in proportion to the
/// file (the YAML tree, then the tables); 16 MiB holds well over 100,000 routes.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// Reads and checks a config file, substituting `${VAR}` from the process environment.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    read_file(path).into_result()
}

/// A config as far as it decoded, and every error found in it so far. Checks
/// that need the decoded config (the tables' build: peer names, route paths)
/// can still run on what did decode, so that one run lists every error.
#[derive(Debug)]
pub struct Loaded {
    /// `None` when too little decoded to check further (a YAML error, a root
    /// that is not a mapping, a required section that failed).
    pub config: Option<Config>,
    /// Unsorted; [`Loaded::into_result`] and [`sorted`] put them in file order.
    pub errors: Vec<ConfigError>,
}

impl Loaded {
    /// The config if it has no error, else every error in file order.
    pub fn into_result(self) -> Result<Config, ConfigErrors> {
        match self.config {
            Some(config) if self.errors.is_empty() => Ok(config),
            _ => Err(sorted(self.errors)),
        }
    }
}

/// Errors in file order (by line, then column; stable for equal positions).
pub fn sorted(mut errors: Vec<ConfigError>) -> ConfigErrors {
    errors.sort_by_key(|e| (e.line, e.col));
    ConfigErrors(errors)
}

/// [`load_file`], keeping what decoded alongside the errors.
pub fn read_file(path: &Path) -> Loaded {
    let file = path.display().to_string();
    match read_bounded(path) {
        Ok(source) => read_str(&source, &file, &|name| std::env::var(name).ok()),
        Err(message) => Loaded {
            config: None,
            errors: vec![ConfigError {
                file,
                line: 1,
                col: 1,
                path: String::new(),
                message,
            }],
        },
    }
}

/// The file's text, refused before reading when larger than [`MAX_FILE_BYTES`].
fn read_bounded(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let cannot = |e: std::io::Error| format!("cannot read the file: {e}");
    let too_large = || format!("the file is larger than {} MiB", MAX_FILE_BYTES >> 20);
    let file = std::fs::File::open(path).map_err(cannot)?;
    if file.metadata().map_err(cannot)?.len() > MAX_FILE_BYTES {
        return Err(too_large());
    }
    // The size is checked again while reading: the file may grow meanwhile, or
    // not be a regular file at all (a pipe, /dev/zero).
    let mut source = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut source)
        .map_err(cannot)?;
    if source.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large());
    }
    Ok(source)
}

/// Parses, decodes and checks `source`; `file` names it in errors.
pub fn load_str(
    source: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    read_str(source, file, env).into_result()
}

/// [`load_str`], keeping what decoded alongside the errors.
pub fn read_str(source: &str, file: &str, env: &dyn Fn(&str) -> Option<String>) -> Loaded {
    let root = match yaml::parse(source) {
        Ok(root) => root,
        Err(e) => {
            return Loaded {
                config: None,
                errors: vec![ConfigError {
                    file: file.to_string(),
                    line: e.mark.line,
                    col: e.mark.col,
                    path: String::new(),
                    message: e.message,
                }],
            }
        }
    };
    let mut cx = Cx::new(file, env);
    let config = Config::decode(&mut cx, &root);
    if let Some(config) = &config {
        validate(&mut cx, config);
    }
    Loaded {
        config,
        errors: cx.into_errors(),
    }
}

/// Checks what a single field cannot: names that refer to other sections,
/// duplicates, and fields that only make sense together.
fn validate(cx: &mut Cx<'_>, config: &Config) {
    if config.listen.value.is_empty() && !cx.has_errors_under("listen") {
        cx.error_at(
            "listen",
            config.listen.mark,
            "at least one listener is needed",
        );
    }
    if let Some(threads) = config.threads.as_ref().filter(|t| t.value == 0) {
        cx.error_at("threads", threads.mark, "must be at least 1");
    }
    validate_addresses(cx, config);
    let upstreams = config.upstreams.clone().unwrap_or_default();
    validate_upstreams(cx, &upstreams);
    let consumer_names = validate_consumers(cx, config);
    validate_routes(cx, config, &upstreams, &consumer_names);
    validate_store(cx, config);
    browser::check_docs(cx, config);
    validate_cache(cx, config);
    jwt::validate_jwt(cx, config);
}

/// The header clients send their key in (`auth.header`, default `x-api-key`).
pub fn key_header(config: &Config) -> http::HeaderName {
    config
        .auth
        .as_ref()
        .and_then(|a| a.header.clone())
        .unwrap_or_else(|| http::HeaderName::from_static("x-api-key"))
}

/// `cache:` and the routes' `cache:` (SPEC §8.2).
fn validate_cache(cx: &mut Cx<'_>, config: &Config) {
    if let Some(cache) = &config.cache {
        let size = cache.value.max_size.as_ref();
        if let Some(size) = size.filter(|s| s.value.0 == 0) {
            cx.error_at("cache.max_size", size.mark, "must be larger than 0");
        }
        if let (Some(size), Some(object)) = (size, &cache.value.max_object) {
            if object.value.0 > size.value.0 {
                cx.error_at(
                    "cache.max_object",
                    object.mark,
                    format!(
                        "{} is larger than `max_size` ({} bytes): nothing that large could be stored",
                        object.value.0, size.value.0
                    ),
                );
            }
        }
    }
    for (i, route) in config.routes.iter() {
        let Some(cache) = &route.cache else { continue };
        let path = format!("routes[{i}].cache");
        if config.cache.is_none() {
            cx.error_at(
                &path,
                cache.mark,
                "a route's `cache` needs the top-level `cache: { max_size: ... }`",
            );
        }
        if route.upstream.is_none() {
            cx.error_at(
                &path,
                cache.mark,
                "`cache` applies to routes with an `upstream` only",
            );
        }
        if route.auth.as_ref().map(|a| a.value) == Some(AuthMode::None)
            && cache.value.per_consumer == Some(true)
        {
            cx.error_at(
                &format!("{path}.per_consumer"),
                cache.mark,
                "`per_consumer` needs a route with auth: with `auth: none` nobody is identified",
            );
        }
    }
}

/// Where the admin listener goes when the config names none.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9100";

/// `listen` and `admin`: each address once. Two listeners on one address would
/// both bind (requests then alternate between two services), and an admin
/// listener there would serve the public its metrics and `POST /reload`.
fn validate_addresses(cx: &mut Cx<'_>, config: &Config) {
    // One port on a wildcard address (0.0.0.0, ::) takes every address's.
    let overlap = |a: &SocketAddr, b: &SocketAddr| {
        a.port() == b.port()
            && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
    };
    let mut seen: Vec<(usize, SocketAddr)> = Vec::new();
    for (i, listener) in config.listen.value.iter() {
        let addr = &listener.addr;
        if let Some((first, _)) = seen.iter().find(|(_, s)| overlap(s, &addr.value)) {
            let message = format!(
                "{} overlaps listen[{first}]: each listener needs its own address",
                addr.shown()
            );
            cx.error_at(&format!("listen[{i}].addr"), addr.mark, message);
        }
        seen.push((i, addr.value));
    }
    match &config.admin {
        Some(admin) => {
            if let Some((i, _)) = seen.iter().find(|(_, s)| overlap(s, &admin.addr.value)) {
                let message = format!(
                    "{} overlaps listen[{i}]: the admin listener needs an address of its own",
                    admin.addr.shown()
                );
                cx.error_at("admin.addr", admin.addr.mark, message);
            }
        }
        None => {
            let Ok(default) = DEFAULT_ADMIN.parse::<SocketAddr>() else {
                return;
            };
            for (i, listener) in config.listen.value.iter() {
                if overlap(&listener.addr.value, &default) {
                    let message = format!(
                        "{} overlaps the admin listener's default address {DEFAULT_ADMIN}: \
                         set `admin.addr` to another one",
                        listener.addr.shown()
                    );
                    cx.error_at(&format!("listen[{i}].addr"), listener.addr.mark, message);
                }
            }
        }
    }
}

/// `upstreams:`: peers, health checks.
fn validate_upstreams(cx: &mut Cx<'_>, upstreams: &Table<Upstream>) {
    for (name, upstream) in upstreams.iter() {
        routing::check_upstream(cx, name, upstream);
        if upstream.peers.value.is_empty()
            && !cx.has_errors_under(&format!("upstreams.{name}.peers"))
        {
            cx.error_at(
                &format!("upstreams.{name}.peers"),
                upstream.peers.mark,
                "at least one peer is needed",
            );
        }
        if let Some(hc) = &upstream.health_check {
            let valid = hc.path.value.starts_with('/')
                && hc.path.value.parse::<http::uri::PathAndQuery>().is_ok();
            if !valid {
                cx.error_at(
                    &format!("upstreams.{name}.health_check.path"),
                    hc.path.mark,
                    format!(
                        "expected a path like \"/healthz\", found {}",
                        hc.path.shown()
                    ),
                );
            }
            if hc.interval.is_some_and(|i| i.is_zero()) {
                cx.error_at(
                    &format!("upstreams.{name}.health_check.interval"),
                    hc.path.mark,
                    "must be longer than 0s",
                );
            }
        }
    }
}

/// `consumers:`: unique names, keys or key hashes, limits. Returns the names.
fn validate_consumers<'c>(cx: &mut Cx<'_>, config: &'c Config) -> HashSet<&'c str> {
    let mut consumer_names = HashSet::new();
    for (i, consumer) in config.consumers.iter().flat_map(|c| c.iter()) {
        let path = format!("consumers[{i}]");
        if !consumer_names.insert(consumer.name.value.as_str()) {
            cx.error_at(
                &format!("{path}.name"),
                consumer.name.mark,
                format!("duplicate consumer name {}", consumer.name.shown()),
            );
        }
        let keys = consumer.keys.as_deref().unwrap_or_default();
        let hashes = consumer.key_hashes.as_deref().unwrap_or_default();
        let keys_failed = cx.has_errors_under(&format!("{path}.keys"))
            || cx.has_errors_under(&format!("{path}.key_hashes"));
        if keys.is_empty() && hashes.is_empty() && !keys_failed {
            cx.error_at(
                &path,
                consumer.name.mark,
                "a consumer needs `keys` or `key_hashes`",
            );
        }
        for (k, key) in keys.iter().enumerate() {
            if key.value.is_empty() {
                cx.error_at(
                    &format!("{path}.keys[{k}]"),
                    key.mark,
                    "a key cannot be empty",
                );
            }
        }
        for (k, hash) in hashes.iter().enumerate() {
            if crate::core::auth::parse_key_hash(&hash.value).is_none() {
                // The hash is not secret, but keep messages uniform and short.
                cx.error_at(
                    &format!("{path}.key_hashes[{k}]"),
                    hash.mark,
                    "expected \"sha256:\" followed by 64 hex digits",
                );
            }
        }
        if let Some(limit) = &consumer.rate_limit {
            check_rate_limit(cx, &format!("{path}.rate_limit"), &limit.value);
        }
    }
    consumer_names
}

/// `routes:`: unique names, one target, known upstreams and consumers.
fn validate_routes(
    cx: &mut Cx<'_>,
    config: &Config,
    upstreams: &Table<Upstream>,
    consumer_names: &HashSet<&str>,
) {
    let mut route_names = HashSet::new();
    let upstream_names = UpstreamNames::new(upstreams);
    // A consumer that failed to decode may be the one a route names.
    let consumers_incomplete = config
        .consumers
        .as_ref()
        .is_some_and(|c| c.has_failed_items());
    let key_header = key_header(config);
    let gateway_set = routing::upstream_header_names(config);
    for (i, route) in config.routes.iter() {
        let path = format!("routes[{i}]");
        if let Some(matching) = &route.matching {
            routing::check_match(cx, &path, matching, &key_header, &gateway_set);
        }
        if !route_names.insert(route.name.value.as_str()) {
            cx.error_at(
                &format!("{path}.name"),
                route.name.mark,
                format!("duplicate route name {}", route.name.shown()),
            );
        }
        let target_failed = ["upstream", "respond", "aggregate"]
            .iter()
            .any(|field| cx.has_errors_under(&format!("{path}.{field}")));
        let targets = [
            route.upstream.is_some(),
            route.respond.is_some(),
            route.aggregate.is_some(),
        ];
        match targets.iter().filter(|t| **t).count() {
            1 => {}
            0 if target_failed => {}
            0 => cx.error_at(
                &path,
                route.name.mark,
                "a route needs one of `upstream`, `respond` or `aggregate`",
            ),
            _ => cx.error_at(
                &path,
                route.name.mark,
                "a route takes only one of `upstream`, `respond` or `aggregate`",
            ),
        }
        if let Some(up) = &route.upstream {
            check_upstream_name(cx, &format!("{path}.upstream"), up, &upstream_names);
        }
        if let Some(parts) = &route.aggregate {
            for (part, p) in parts.value.iter() {
                check_upstream_name(
                    cx,
                    &format!("{path}.aggregate.{part}.upstream"),
                    &p.upstream,
                    &upstream_names,
                );
            }
        }
        for (c, name) in route.consumers.iter().flat_map(|c| c.iter()) {
            if !consumer_names.contains(name.value.as_str()) && !consumers_incomplete {
                cx.error_at(
                    &format!("{path}.consumers[{c}]"),
                    name.mark,
                    format!("unknown consumer {}", name.shown()),
                );
            }
        }
        if route.consumers.is_some() && route.auth.as_ref().map(|a| a.value) == Some(AuthMode::None)
        {
            cx.error_at(
                &format!("{path}.consumers"),
                route.name.mark,
                "`consumers` needs `auth: api_key`, `jwt` or `any`: with `auth: none` nobody is identified",
            );
        }
        jwt::check_route(cx, &path, route, config);
        if let Some(limit) = &route.rate_limit {
            check_rate_limit(cx, &format!("{path}.rate_limit"), &limit.value);
        }
        browser::check_route_cors(cx, &path, route);
        if route.aggregate.is_some() {
            check_aggregate_route(cx, &path, route);
        } else if let Some(max) = &route.max_part_body {
            cx.error_at(
                &format!("{path}.max_part_body"),
                max.mark,
                "`max_part_body` applies to `aggregate` routes only",
            );
        }
        if let Some(respond) = &route.respond {
            let bodiless = matches!(respond.status.value, 100..=199 | 204 | 304);
            if bodiless && respond.body.as_ref().is_some_and(|b| !b.is_empty()) {
                cx.error_at(
                    &format!("{path}.respond.body"),
                    respond.status.mark,
                    format!("a {} answer has no body", respond.status.value),
                );
            }
            if !(100..=599).contains(&respond.status.value) {
                cx.error_at(
                    &format!("{path}.respond.status"),
                    respond.status.mark,
                    format!(
                        "expected a status from 100 to 599, found {}",
                        respond.status.value
                    ),
                );
            }
        }
    }
}

/// `rate_limit:`: a Redis store needs its settings.
fn validate_store(cx: &mut Cx<'_>, config: &Config) {
    if let Some(store) = &config.rate_limit {
        let redis = store.store.as_ref().filter(|s| s.value == StoreKind::Redis);
        if let (Some(kind), None) = (redis, &store.redis) {
            if cx.has_errors_under("rate_limit.redis") {
                return;
            }
            cx.error_at(
                "rate_limit.store",
                kind.mark,
                "`store: redis` needs `redis: { url: ... }`",
            );
        }
    }
}

/// The upstreams routes may name, looked up in constant time, and listed once
/// for messages (the first few: a message stays one readable line).
struct UpstreamNames<'c> {
    names: HashSet<&'c str>,
    listed: String,
}

impl<'c> UpstreamNames<'c> {
    const LISTED: usize = 20;

    fn new(upstreams: &'c Table<Upstream>) -> Self {
        let names: HashSet<&str> = upstreams.iter().map(|(n, _)| n).collect();
        let mut listed: Vec<&str> = upstreams
            .iter()
            .map(|(n, _)| n)
            .take(Self::LISTED)
            .collect();
        if upstreams.0.len() > Self::LISTED {
            listed.push("...");
        }
        let listed = if listed.is_empty() {
            "(none)".to_string()
        } else {
            listed.join(", ")
        };
        UpstreamNames { names, listed }
    }
}

fn check_upstream_name(
    cx: &mut Cx<'_>,
    path: &str,
    name: &Spanned<String>,
    ups: &UpstreamNames<'_>,
) {
    // An upstream that failed to decode was reported already.
    let failed = cx.has_errors_under(&format!("upstreams.{}", name.value))
        || (ups.names.is_empty() && cx.has_errors_under("upstreams"));
    if !ups.names.contains(name.value.as_str()) && !failed {
        cx.error_at(
            path,
            name.mark,
            format!(
                "unknown upstream {}; upstreams are: {}",
                name.shown(),
                ups.listed
            ),
        );
    }
}

fn check_rate_limit(cx: &mut Cx<'_>, path: &str, limit: &RateLimit) {
    if limit.requests.value == 0 {
        cx.error_at(
            &format!("{path}.requests"),
            limit.requests.mark,
            "must be at least 1",
        );
    }
    if limit.per.value.is_zero() {
        cx.error_at(
            &format!("{path}.per"),
            limit.per.mark,
            "must be longer than 0",
        );
    }
}
#[cfg(test)]
pub(crate) mod tests;

/// What an aggregate route cannot take: methods with a body to send (its parts
/// are fetched with GET, and one body cannot go to several upstreams), and
/// `strip_prefix` (each part names its own path).
fn check_aggregate_route(cx: &mut Cx<'_>, path: &str, route: &Route) {
    if let Some(parts) = route.aggregate.as_ref().filter(|p| p.value.0.is_empty()) {
        cx.error_at(
            &format!("{path}.aggregate"),
            parts.mark,
            "an aggregate route needs at least one part",
        );
    }
    if let Some(methods) = &route.methods {
        if let Some(m) = methods
            .value
            .iter()
            .find(|m| **m != Method::GET && **m != Method::HEAD)
        {
            cx.error_at(
                &format!("{path}.methods"),
                methods.mark,
                format!("an aggregate route answers GET and HEAD only, found {m}"),
            );
        }
    }
    if let Some(strip) = route.strip_prefix.as_ref().filter(|s| s.value) {
        cx.error_at(
            &format!("{path}.strip_prefix"),
            strip.mark,
            "`strip_prefix` does not apply to an aggregate route: each part names its path",
        );
    }
}
