//! The process log (stderr, text or JSON) and warnings that must not flood it.

use crate::core::config::{Config, LogFormat, LogLevel};
use std::sync::atomic::{AtomicU64, Ordering};

/// Sets up the process log (stderr) from `log:`; `RUST_LOG` overrides the level.
pub fn init_logging(config: &Config) {
    let conf = config.log.as_ref();
    let level = match conf.and_then(|l| l.level).unwrap_or_default() {
        LogLevel::Error => log::LevelFilter::Error,
        LogLevel::Warn => log::LevelFilter::Warn,
        LogLevel::Info => log::LevelFilter::Info,
        LogLevel::Debug => log::LevelFilter::Debug,
        LogLevel::Trace => log::LevelFilter::Trace,
    };
    let format = conf.and_then(|l| l.format).unwrap_or_default();
    let mut builder = env_logger::Builder::new();
    builder.filter_level(level).parse_default_env();
    // Pingora's debug and trace lines print whole request headers (the client's
    // key, the gateway secret): its modules never log below info.
    for module in [
        "pingora",
        "pingora_core",
        "pingora_proxy",
        "pingora_http",
        "pingora_pool",
        "pingora_load_balancing",
    ] {
        builder.filter_module(module, level.min(log::LevelFilter::Info));
    }
    if format == LogFormat::Json {
        builder.format(|buf, record| {
            use std::io::Write;
            let line = serde_json::json!({
                "ts": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "level": record.level().as_str().to_ascii_lowercase(),
                "target": record.target(),
                "message": record.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    }
    // A second init (the demo after a failed start) keeps the first logger.
    let _ = builder.try_init();
}

/// Seconds since the Unix epoch.
fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether a warning last given at `last` (seconds) may be given again now: an
/// outage or a flood must not flood the log too.
pub fn once_a_second(last: &AtomicU64) -> bool {
    let now = now_secs();
    last.swap(now, Ordering::Relaxed) != now
}

/// Lets a repeated log line through at most once a second and counts the ones
/// held back, so an outage gives one line a second and a count, not one line
/// per failed request.
pub struct Throttle {
    last: AtomicU64,
    held_back: AtomicU64,
}

impl Throttle {
    pub const fn new() -> Throttle {
        Throttle {
            last: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(n)`: log this line, and say that `n` like it were held back since
    /// the last one. `None`: hold it back.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(now_secs())
    }

    fn admit_at(&self, now: u64) -> Option<u64> {
        if self.last.swap(now, Ordering::Relaxed) != now {
            Some(self.held_back.swap(0, Ordering::Relaxed))
        } else {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_lets_one_line_a_second_through_and_counts_the_rest() {
        let throttle = Throttle::new();
        assert_eq!(throttle.admit_at(100), Some(0));
        assert_eq!(throttle.admit_at(100), None);
        assert_eq!(throttle.admit_at(100), None);
        assert_eq!(throttle.admit_at(101), Some(2));
        assert_eq!(throttle.admit_at(102), Some(0));
    }
}
