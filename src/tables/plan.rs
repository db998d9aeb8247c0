//! How the process is run, from the config: what it listens on, its admin
//! address, threads, shutdown grace and log format. A reload cannot change it.

use crate::core::config::{Config, LogFormat};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

pub use crate::core::config::DEFAULT_ADMIN;
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What the gateway listens on and how it is run, from the config.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub listen: Vec<SocketAddr>,
    /// The listeners of `listen` that speak TLS (HTTP/2 by ALPN, and HTTP/1.1).
    pub tls_listen: Vec<SocketAddr>,
    pub admin: SocketAddr,
    pub threads: usize,
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
}

impl Plan {
    /// The fields a reload cannot change that differ in `new`.
    pub fn changed_in(&self, new: &Plan) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if self.listen != new.listen || self.tls_listen != new.tls_listen {
            changed.push("listen");
        }
        if self.admin != new.admin {
            changed.push("admin");
        }
        if self.threads != new.threads {
            changed.push("threads");
        }
        if self.shutdown_grace != new.shutdown_grace {
            changed.push("shutdown_grace");
        }
        if self.log_format != new.log_format {
            changed.push("log.format");
        }
        changed
    }

    pub fn from_config(config: &Config) -> Plan {
        let admin = config
            .admin
            .as_ref()
            .map(|a| a.addr.value)
            .or_else(|| DEFAULT_ADMIN.parse().ok())
            .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, 9100)));
        Plan {
            listen: config
                .listen
                .value
                .iter()
                .map(|(_, l)| l.addr.value)
                .collect(),
            tls_listen: config
                .listen
                .value
                .iter()
                .filter(|(_, l)| l.tls.is_some())
                .map(|(_, l)| l.addr.value)
                .collect(),
            admin,
            threads: config
                .threads
                .as_ref()
                .map(|t| t.value)
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            shutdown_grace: config.shutdown_grace.unwrap_or(DEFAULT_SHUTDOWN_GRACE),
            log_format: config
                .log
                .as_ref()
                .and_then(|l| l.format)
                .unwrap_or_default(),
        }
    }
}
