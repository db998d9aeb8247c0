//! The response cache's tables (SPEC §8.2): the store's bounds and each
//! cached route's policy and counters, compiled from `cache:`.

use crate::core::cache::RoutePolicy;
use crate::core::config::{self, Config};
use crate::telemetry::cache_metrics::CacheLookups;
use std::time::Duration;

/// The store's bounds (`cache:` at the top).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Bytes of every route's entries together.
    pub max_size: usize,
    /// Larger answers pass through and are not stored.
    pub max_object: usize,
}

/// Defaults where `cache:` leaves a bound out.
pub const DEFAULT_MAX_SIZE: usize = 256 << 20;
pub const DEFAULT_MAX_OBJECT: usize = 1 << 20;
/// A route's freshness when neither it nor the upstream gives one.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);

/// A cached route's policy and its lookup counters.
pub struct RouteCache {
    pub policy: RoutePolicy,
    pub lookups: CacheLookups,
}

pub(super) fn limits(config: &Config) -> Option<CacheLimits> {
    let conf = &config.cache.as_ref()?.value;
    let bytes = |b: &Option<config::Spanned<config::ByteSize>>, default: usize| {
        b.as_ref().map_or(default, |b| {
            usize::try_from(b.value.0).unwrap_or(usize::MAX)
        })
    };
    let max_size = bytes(&conf.max_size, DEFAULT_MAX_SIZE);
    Some(CacheLimits {
        max_size,
        max_object: bytes(&conf.max_object, DEFAULT_MAX_OBJECT).min(max_size),
    })
}

/// A route's `cache:`, with defaults: `per_consumer` is on where the route
/// needs a credential (a key or a bearer token), so one caller's answers never
/// reach another.
pub(super) fn route(name: &str, conf: &config::Route) -> Option<RouteCache> {
    let cache = &conf.cache.as_ref()?.value;
    let needs_key =
        conf.auth.as_ref().map(|a| a.value).unwrap_or_default() != config::AuthMode::None;
    Some(RouteCache {
        policy: RoutePolicy {
            ttl: cache.ttl.unwrap_or(DEFAULT_TTL),
            vary: cache.vary.clone().unwrap_or_default(),
            per_consumer: needs_key && cache.per_consumer.unwrap_or(true),
            stale_while_revalidate: cache.stale_while_revalidate.unwrap_or_default(),
            stale_if_error: cache.stale_if_error.unwrap_or_default(),
        },
        lookups: CacheLookups::new(name),
    })
}
