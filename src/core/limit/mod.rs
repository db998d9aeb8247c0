//! Rate limits (SPEC §3 `rate_limit`): route and consumer limits, one decision
//! per request over every limit that applies, in-process or shared through Redis.

pub mod local;
pub mod redis;

use crate::core::config::{LimitBy, OnStoreError};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Who a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subject {
    /// Everyone together (`by: route`).
    Everyone,
    Consumer(u32),
    Ip(IpAddr),
    /// A bearer-token caller that is no consumer: its issuer and `sub`,
    /// digested (`core::jwt::caller_id`).
    Caller(u64),
}

/// One counter: which limit, whose requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    /// Index of the limit in [`Limiter::specs`].
    pub limit: u32,
    pub subject: Subject,
}

/// A limit's state after a decision, as the `ratelimit-*` headers tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    /// Until the whole quota is back.
    pub reset_ms: u64,
    /// Until the next request may pass (refusals only).
    pub retry_after_ms: u64,
}

impl Window {
    /// `ratelimit-reset` in whole seconds, rounded up.
    pub fn reset_secs(&self) -> u64 {
        self.reset_ms.div_ceil(1000)
    }

    /// `retry-after` in whole seconds, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after_ms.div_ceil(1000).max(1)
    }
}

/// A configured limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitSpec {
    /// Stable across instances and reloads: `route:NAME` or `consumer:NAME`.
    pub name: String,
    pub requests: u64,
    pub per: Duration,
    pub by: LimitBy,
}

/// Where the counts live.
pub enum Store {
    /// Shared with the tables of a reload whose limits are the same.
    Local(Arc<local::LocalStore>),
    Redis(Box<redis::RedisStore>),
}

/// The store failed (unreachable, timed out, bad answer).
#[derive(Debug, thiserror::Error)]
#[error("rate limit store: {0}")]
pub struct StoreError(pub String);

/// The outcome for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Admitted; the window to show in the headers (the one with fewer remaining).
    Allowed(Window),
    /// Refused by the tightest limit, whose window is shown.
    Limited(Window),
    /// The store failed and `on_store_error: deny`.
    Unavailable,
    /// The store failed and `on_store_error: allow`: admitted, no headers.
    AllowedBlind,
}

pub struct Limiter {
    pub specs: Vec<LimitSpec>,
    store: Store,
    on_store_error: OnStoreError,
}

/// Milliseconds on a monotonic clock shared by the whole process.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl Limiter {
    pub fn new(specs: Vec<LimitSpec>, store: Store, on_store_error: OnStoreError) -> Self {
        Limiter {
            specs,
            store,
            on_store_error,
        }
    }

    /// Takes over `previous`'s local counts when both count locally and every
    /// limit both know is the same (counts are kept by limit index), so a reload
    /// that adds a route does not hand every client a fresh quota. Whether it did.
    pub fn keep_counts_from(&mut self, previous: &Limiter) -> bool {
        let same_limits = self
            .specs
            .iter()
            .zip(&previous.specs)
            .all(|(new, old)| new == old);
        match (&mut self.store, &previous.store) {
            (Store::Local(mine), Store::Local(theirs)) if same_limits => {
                *mine = theirs.clone();
                true
            }
            // Redis keeps its counts itself, by limit name.
            (Store::Redis(_), _) => true,
            _ => self.specs.is_empty() || previous.specs.is_empty(),
        }
    }

    /// The store's name, the `store` label of its error counter.
    pub fn store_name(&self) -> &'static str {
        match self.store {
            Store::Local(_) => "local",
            Store::Redis(_) => "redis",
        }
    }

    /// Applies the limits `keys` name, together: all admit and count the request,
    /// or it is refused and counted by none.
    pub async fn decide(&self, keys: &[Key]) -> Result<Decision, StoreError> {
        let checks: Vec<local::Check> = keys
            .iter()
            .map(|k| {
                let spec = &self.specs[k.limit as usize];
                local::Check {
                    key: *k,
                    window_ms: spec.per.as_millis() as u64,
                    limit: spec.requests,
                }
            })
            .collect();
        let windows = match &self.store {
            Store::Local(store) => store.check(&checks, now_ms()),
            Store::Redis(store) => store.check(&self.specs, &checks).await?,
        };
        Ok(summarise(&windows))
    }

    /// Prepares the store before traffic (Redis: connect, load the script).
    pub async fn warm_up(&self) {
        if let Store::Redis(store) = &self.store {
            match store.warm_up().await {
                Ok(()) => log::info!("rate limit store: Redis ready"),
                Err(e) => log::warn!("{e}; requests will apply on_store_error until it answers"),
            }
        }
    }

    /// What a store failure means for the request.
    pub fn on_failure(&self) -> Decision {
        match self.on_store_error {
            OnStoreError::Allow => Decision::AllowedBlind,
            OnStoreError::Deny => Decision::Unavailable,
        }
    }
}

/// The decision over every limit's window: refused by the one that refused
/// (the longest wait if several), else shown by the one with fewer remaining.
pub fn summarise(windows: &[Window]) -> Decision {
    let refused = windows
        .iter()
        .filter(|w| !w.allowed)
        .max_by_key(|w| w.retry_after_ms);
    if let Some(w) = refused {
        return Decision::Limited(*w);
    }
    match windows.iter().min_by_key(|w| w.remaining) {
        Some(w) => Decision::Allowed(*w),
        None => Decision::AllowedBlind,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(allowed: bool, remaining: u64, retry: u64) -> Window {
        Window {
            allowed,
            limit: 10,
            remaining,
            reset_ms: 1_500,
            retry_after_ms: retry,
        }
    }

    #[test]
    fn the_tighter_limit_decides_and_is_shown() {
        assert_eq!(
            summarise(&[w(true, 7, 0), w(true, 2, 0)]),
            Decision::Allowed(w(true, 2, 0))
        );
        assert_eq!(
            summarise(&[w(true, 7, 0), w(false, 0, 900)]),
            Decision::Limited(w(false, 0, 900))
        );
        assert_eq!(
            summarise(&[w(false, 0, 300), w(false, 0, 900)]),
            Decision::Limited(w(false, 0, 900))
        );
    }

    #[test]
    fn header_seconds_round_up() {
        let x = w(false, 0, 1);
        assert_eq!((x.reset_secs(), x.retry_after_secs()), (2, 1));
        assert_eq!(
            w(false, 0, 0).retry_after_secs(),
            1,
            "retry-after is at least 1"
        );
        assert_eq!(w(false, 0, 2_001).retry_after_secs(), 3);
    }
}
