//! The heartbeat of the background services (health checks, JWKS fetches):
//! a fixed tick that ends when the server shuts down.

use pingora_core::server::ShutdownWatch;
use std::time::Duration;

pub struct Ticks {
    interval: tokio::time::Interval,
    shutdown: ShutdownWatch,
}

impl Ticks {
    /// Ticks every `period`; a late tick is delayed, not made up for in a burst.
    pub fn every(period: Duration, shutdown: ShutdownWatch) -> Ticks {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ticks { interval, shutdown }
    }

    /// Waits for the next tick (or a change of the shutdown flag that is not
    /// a shutdown); `false` once the server shuts down.
    pub async fn next(&mut self) -> bool {
        tokio::select! {
            changed = self.shutdown.changed() => {
                changed.is_ok() && !*self.shutdown.borrow()
            }
            _ = self.interval.tick() => true,
        }
    }
}
