//! The response cache's metrics (SPEC §8.2): lookups by route and result, the
//! bytes stored, and entries evicted. Every family is exported from zero.

use crate::core::cache::{Outcome, LOOKUP_RESULTS};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};
use std::sync::OnceLock;

pub struct CacheFamilies {
    pub lookups: IntCounterVec,
    /// Bytes held by the store (bodies and heads).
    pub size_bytes: IntGauge,
    pub evictions: IntCounter,
}

/// Registered on first use; the server calls it at start, so that the
/// process-wide families show before the first request.
pub fn families() -> &'static CacheFamilies {
    static FAMILIES: OnceLock<CacheFamilies> = OnceLock::new();
    FAMILIES.get_or_init(|| {
        let reg = prometheus::default_registry();
        let lookups = IntCounterVec::new(
            Opts::new(
                "portcullis_cache_lookups_total",
                "Response cache lookups, by route and result (hit, miss, stale, expired, bypass).",
            ),
            &["route", "result"],
        )
        .expect("valid metric definition");
        let size_bytes = IntGauge::with_opts(Opts::new(
            "portcullis_cache_size_bytes",
            "Bytes held by the response cache.",
        ))
        .expect("valid metric definition");
        let evictions = IntCounter::with_opts(Opts::new(
            "portcullis_cache_evictions_total",
            "Entries the response cache dropped to stay within max_size.",
        ))
        .expect("valid metric definition");
        for metric in [
            Box::new(lookups.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(size_bytes.clone()),
            Box::new(evictions.clone()),
        ] {
            reg.register(metric).expect("metric registered once");
        }
        CacheFamilies {
            lookups,
            size_bytes,
            evictions,
        }
    })
}

/// One cached route's lookup counters, resolved when the config is compiled.
#[derive(Clone)]
pub struct CacheLookups([IntCounter; 5]);

impl CacheLookups {
    pub fn new(route: &str) -> CacheLookups {
        let f = families();
        CacheLookups(LOOKUP_RESULTS.map(|result| f.lookups.with_label_values(&[route, result])))
    }

    pub fn count(&self, outcome: Outcome) {
        let label = outcome.lookup_label();
        if let Some(i) = LOOKUP_RESULTS.iter().position(|r| *r == label) {
            self.0[i].inc();
        }
    }
}
