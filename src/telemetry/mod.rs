//! What the gateway tells its operator: Prometheus metrics, the access log,
//! the process log and its throttled warnings.

pub mod access_log;
pub mod cache_metrics;
pub mod metrics;
pub mod process_log;
pub mod process_metrics;
