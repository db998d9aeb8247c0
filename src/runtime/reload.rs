//! Config reload (SIGHUP, admin `POST /reload`): the file is read, checked and
//! compiled off the request path, then the tables are swapped whole. Requests
//! in flight keep the tables they started with; an invalid file changes
//! nothing. What only a restart can change is named in the log.

use crate::core::config::ConfigErrors;
use crate::runtime::cache_admin;
use crate::tables::plan::Plan;
use crate::tables::Gateway;
use crate::telemetry::metrics;
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Reloads one config file into the running gateway's tables.
pub struct Reloader {
    path: PathBuf,
    tables: Arc<ArcSwap<Gateway>>,
    /// How the process was started: a reload cannot change it.
    started: Plan,
    /// One reload at a time (SIGHUP and `POST /reload` may race).
    serial: Mutex<()>,
}

/// A reload that took effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Fields that changed but keep their old value until a restart.
    pub needs_restart: Vec<&'static str>,
}

impl Reloader {
    pub fn new(path: PathBuf, tables: Arc<ArcSwap<Gateway>>, started: Plan) -> Reloader {
        Reloader {
            path,
            tables,
            started,
            serial: Mutex::new(()),
        }
    }

    /// Reads, checks and compiles the file, then swaps it in. Blocking (file
    /// reads, peer name resolution): call it off the runtime's worker threads.
    pub fn reload(&self) -> Result<Reloaded, ConfigErrors> {
        let _one_at_a_time = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        let file = self.path.display().to_string();
        let compiled = Gateway::load_file(&self.path);
        let reloads = &metrics::families().config_reloads;
        let (config, mut gateway) = match compiled {
            Ok(compiled) => compiled,
            Err(errors) => {
                reloads.with_label_values(&["error"]).inc();
                log::error!(
                    "reload of {file} refused, the running configuration stays in force:\n{errors}"
                );
                return Err(errors);
            }
        };
        let previous = self.tables.load_full();
        if !gateway.limiter.keep_counts_from(&previous.limiter) {
            log::info!("reload: rate limits changed, their counts start afresh");
        }
        if let (Some(jwt), Some(old)) = (gateway.jwt.as_mut(), previous.jwt.as_ref()) {
            jwt.keep_keys_from(old);
        }
        let needs_restart = self.started.changed_in(&Plan::from_config(&config));
        for field in &needs_restart {
            log::warn!(
                "reload: `{field}` changed in {file} but needs a restart (or --upgrade) to take effect"
            );
        }
        if !crate::proxy::cache::init_store(gateway.cache) {
            log::warn!(
                "reload: `cache.max_size` or `cache.max_object` changed in {file} but needs a restart to take effect"
            );
        }
        cache_admin::drop_changed_routes(&previous, &gateway);
        self.tables.store(Arc::new(gateway));
        reloads.with_label_values(&["ok"]).inc();
        metrics::config_loaded();
        log::info!("reload: configuration from {file} in force");
        Ok(Reloaded { needs_restart })
    }

    /// Reloads on a blocking thread and then prepares the new tables' stores.
    pub async fn reload_async(self: &Arc<Self>) -> Result<Reloaded, ConfigErrors> {
        let this = self.clone();
        let outcome = tokio::task::spawn_blocking(move || this.reload())
            .await
            .unwrap_or_else(|e| {
                log::error!("reload: the reload task failed: {e}");
                Err(ConfigErrors(Vec::new()))
            });
        if outcome.is_ok() {
            self.tables.load().limiter.warm_up().await;
        }
        outcome
    }
}
