//! Active health checks on a schedule, and `portcullis_upstream_peer_up`
//! (0 for a peer marked down by its check or ejected as an outlier).
//!
//! Pingora's balancers run their checks as background services added before the
//! server starts; ours are rebuilt on every reload. So one service walks the
//! tables in force and runs each upstream's check (pingora's `HttpHealthCheck`,
//! through the upstream's health registry) when it is due, then publishes every
//! peer's state.

use super::ticks::Ticks;
use crate::tables::Gateway;
use crate::telemetry::metrics;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How often the schedule is looked at: the finest interval that means anything.
const TICK: Duration = Duration::from_millis(100);

pub struct HealthChecker {
    pub tables: Arc<ArcSwap<Gateway>>,
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, shutdown: ShutdownWatch) {
        // When each upstream (by name, so it outlives a reload) was last checked.
        let mut last_run: HashMap<String, Instant> = HashMap::new();
        let mut exported: HashSet<(String, String)> = HashSet::new();
        // The tables `peer_up` was last published for: a reload republishes;
        // so does a peer ejected or back in (SPEC §8.3).
        let mut published_for: Weak<Gateway> = Weak::new();
        let mut ejections_seen = 0u64;
        let mut ticks = Ticks::every(TICK, shutdown);
        while ticks.next().await {
            let tables = self.tables.load_full();
            let now = Instant::now();
            let due: Vec<_> = tables
                .upstreams
                .iter()
                .filter(|u| {
                    u.health_interval.is_some_and(|every| {
                        last_run
                            .get(&u.name)
                            .is_none_or(|last| now.duration_since(*last) >= every)
                    })
                })
                .collect();
            for upstream in &due {
                last_run.insert(upstream.name.clone(), now);
            }
            let reloaded = !Weak::ptr_eq(&published_for, &Arc::downgrade(&tables));
            let ejections: u64 = tables.upstreams.iter().map(|u| u.ejection_changes()).sum();
            let ejected_or_back = ejections != ejections_seen;
            ejections_seen = ejections;
            if due.is_empty() && !reloaded && !ejected_or_back {
                continue; // nothing can have changed since the last publication
            }
            futures::future::join_all(due.iter().map(|u| u.run_health_check())).await;
            publish_peer_state(&tables, &mut exported);
            published_for = Arc::downgrade(&tables);
        }
    }
}

/// Sets `peer_up` for every peer of the tables in force and drops the series
/// of peers a reload removed.
fn publish_peer_state(tables: &Gateway, exported: &mut HashSet<(String, String)>) {
    let gauge = &metrics::families().peer_up;
    let mut current = HashSet::with_capacity(exported.len());
    for upstream in &tables.upstreams {
        for (peer, up) in upstream.peers.iter().zip(upstream.peers_up()) {
            gauge
                .with_label_values(&[upstream.name.as_str(), peer.label.as_str()])
                .set(i64::from(up));
            current.insert((upstream.name.clone(), peer.label.clone()));
        }
    }
    for (upstream, peer) in exported.difference(&current) {
        let _ = gauge.remove_label_values(&[upstream.as_str(), peer.as_str()]);
    }
    *exported = current;
}
