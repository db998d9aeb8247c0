//! The in-process store: an exact sliding log per key, in sharded maps.
//!
//! Why a sliding log: it is the one algorithm that never lets more than
//! `requests` through in *any* window of length `per`. A fixed window lets 2× the
//! limit through at its edge; GCRA with a burst of `requests` lets nearly 2× through
//! in a window that starts with the burst (the burst plus the refill); a sliding
//! counter estimates. The cost is one timestamp per admitted request per active key
//! (8 bytes × `requests`), freed when the key has been idle for `per`.

use super::{Key, Window};
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

/// The admission times (ms) of one key's requests still inside its window,
/// oldest first. Never longer than the limit, nor than the requests of one window.
#[derive(Debug, Clone, Default)]
pub struct SlidingLog {
    times: VecDeque<u64>,
    /// The window of the limit that last recorded here (for forgetting idle keys).
    window: u64,
}

impl SlidingLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many entries have left the window ending at `now` (they are oldest first).
    fn expired(&self, now: u64, window: u64) -> usize {
        self.times
            .partition_point(|&t| now.saturating_sub(t) >= window)
    }

    /// What admitting one more request at `now` would say (changes nothing).
    pub fn peek(&self, now: u64, window: u64, limit: u64) -> Window {
        let first = self.expired(now, window);
        let used = (self.times.len() - first) as u64;
        self.window(now, window, limit, first, used < limit)
    }

    /// Admits one request at `now`; call after [`SlidingLog::peek`] said allowed.
    pub fn record(&mut self, now: u64, window: u64, limit: u64) -> Window {
        self.window = window;
        let expired = self.expired(now, window);
        self.times.drain(..expired);
        self.times.push_back(now);
        self.window(now, window, limit, 0, true)
    }

    /// The window as seen from `now`, the entries before `first` having expired.
    fn window(&self, now: u64, window: u64, limit: u64, first: usize, allowed: bool) -> Window {
        let used = (self.times.len() - first) as u64;
        // A slot frees when the oldest request inside the window leaves it; the
        // whole quota is back when the newest does.
        let leaves = |t: Option<&u64>| t.map_or(0, |t| (t + window).saturating_sub(now));
        Window {
            allowed,
            limit,
            remaining: limit.saturating_sub(used),
            reset_ms: if used == 0 {
                0
            } else {
                leaves(self.times.back())
            },
            retry_after_ms: if allowed {
                0
            } else {
                leaves(self.times.get(first))
            },
        }
    }

    /// Whether every request has left the window (the key can be forgotten).
    fn idle(&self, now: u64) -> bool {
        self.expired(now, self.window) == self.times.len()
    }
}

const SHARDS: usize = 64;
/// A shard forgets its idle keys once it holds this many, and then again each
/// time it has doubled since (amortised O(1), memory bounded by live keys).
const FIRST_SWEEP: usize = 1024;

struct Shard {
    logs: HashMap<Key, SlidingLog>,
    sweep_at: usize,
}

impl Shard {
    /// Records an admitted request, forgetting idle keys first when it is time.
    fn record(&mut self, c: &Check, now: u64) -> Window {
        if self.logs.len() >= self.sweep_at {
            self.logs.retain(|k, log| k == &c.key || !log.idle(now));
            self.sweep_at = (self.logs.len() * 2).max(FIRST_SWEEP);
        }
        self.logs
            .entry(c.key)
            .or_default()
            .record(now, c.window_ms, c.limit)
    }
}

impl Default for Shard {
    fn default() -> Self {
        Shard {
            logs: HashMap::new(),
            sweep_at: FIRST_SWEEP,
        }
    }
}

/// Sliding logs in 64 independently locked shards. A lock is held only for the
/// few comparisons of one decision, never across an `.await`.
pub struct LocalStore {
    shards: Vec<Mutex<Shard>>,
}

impl Default for LocalStore {
    fn default() -> Self {
        LocalStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }
}

fn shard_of(key: &Key) -> usize {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

/// One limit to apply: the key, its window and its limit.
#[derive(Debug, Clone, Copy)]
pub struct Check {
    pub key: Key,
    pub window_ms: u64,
    pub limit: u64,
}

impl LocalStore {
    /// Applies every check at `now` (ms) as one decision: the request is admitted
    /// (and counted) by all of them, or by none.
    pub fn check(&self, checks: &[Check], now: u64) -> Vec<Window> {
        if let [only] = checks {
            return vec![self.check_one(only, now)];
        }
        // Lock the shards involved in ascending order: no two decisions deadlock.
        let mut shard_ids: Vec<usize> = checks.iter().map(|c| shard_of(&c.key)).collect();
        shard_ids.sort_unstable();
        shard_ids.dedup();
        let mut guards: Vec<(usize, std::sync::MutexGuard<'_, Shard>)> = shard_ids
            .iter()
            .map(|&i| (i, self.shards[i].lock().unwrap_or_else(|p| p.into_inner())))
            .collect();
        let shard = |key: &Key| -> usize {
            let id = shard_of(key);
            guards.iter().position(|(i, _)| *i == id).unwrap_or(0)
        };
        let slots: Vec<usize> = checks.iter().map(|c| shard(&c.key)).collect();

        let peeked: Vec<Window> = checks
            .iter()
            .zip(&slots)
            .map(|(c, &s)| {
                guards[s].1.logs.get(&c.key).map_or_else(
                    || SlidingLog::new().peek(now, c.window_ms, c.limit),
                    |log| log.peek(now, c.window_ms, c.limit),
                )
            })
            .collect();
        if peeked.iter().any(|w| !w.allowed) {
            return peeked;
        }
        checks
            .iter()
            .zip(&slots)
            .map(|(c, &s)| guards[s].1.record(c, now))
            .collect()
    }

    /// One limit: one lock, no bookkeeping (the common case).
    fn check_one(&self, c: &Check, now: u64) -> Window {
        let mut shard = self.shards[shard_of(&c.key)]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(log) = shard.logs.get_mut(&c.key) {
            let w = log.peek(now, c.window_ms, c.limit);
            return if w.allowed {
                log.record(now, c.window_ms, c.limit)
            } else {
                w
            };
        }
        shard.record(c, now)
    }

    /// How many keys are remembered (for tests).
    pub fn keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |s| s.logs.len()))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::limit::Subject;

    fn take(log: &mut SlidingLog, now: u64, window: u64, limit: u64) -> Window {
        let w = log.peek(now, window, limit);
        if w.allowed {
            log.record(now, window, limit)
        } else {
            w
        }
    }

    #[test]
    fn a_burst_up_to_the_limit_then_refusal() {
        let mut log = SlidingLog::new();
        for i in 0..5 {
            let w = take(&mut log, 1_000, 10_000, 5);
            assert!(w.allowed, "request {i}");
            assert_eq!(w.remaining, 4 - i);
        }
        let refused = take(&mut log, 1_000, 10_000, 5);
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        assert_eq!(
            refused.retry_after_ms, 10_000,
            "the first slot frees when the oldest leaves"
        );
    }

    #[test]
    fn slots_come_back_one_by_one_as_requests_leave_the_window() {
        let mut log = SlidingLog::new();
        for t in [0, 1_000, 2_000] {
            assert!(take(&mut log, t, 10_000, 3).allowed);
        }
        assert!(!take(&mut log, 9_999, 10_000, 3).allowed);
        // At 10 000 the request of time 0 has left: exactly one slot.
        assert!(take(&mut log, 10_000, 10_000, 3).allowed);
        assert!(!take(&mut log, 10_000, 10_000, 3).allowed);
        assert!(take(&mut log, 11_000, 10_000, 3).allowed);
        let w = take(&mut log, 11_500, 10_000, 3);
        assert!(!w.allowed);
        assert_eq!(
            w.retry_after_ms, 500,
            "the request of 2 000 leaves at 12 000"
        );
    }

    #[test]
    fn no_double_burst_at_a_window_edge() {
        // A fixed window would admit 5 at 9 999 and 5 more at 10 000.
        let mut log = SlidingLog::new();
        let admitted_at_edge = (0..5)
            .filter(|_| take(&mut log, 9_999, 10_000, 5).allowed)
            .count();
        let admitted_after = (0..5)
            .filter(|_| take(&mut log, 10_000, 10_000, 5).allowed)
            .count();
        assert_eq!((admitted_at_edge, admitted_after), (5, 0));
        let later = (0..10)
            .filter(|_| take(&mut log, 19_999, 10_000, 5).allowed)
            .count();
        assert_eq!(
            later, 5,
            "all five slots are back once the edge burst has left"
        );
    }

    #[test]
    fn never_more_than_the_limit_in_any_window() {
        // Pseudo-random arrivals; then every window [t, t + per) is counted.
        let (limit, window) = (7u64, 1_000u64);
        let mut log = SlidingLog::new();
        let mut admitted = Vec::new();
        let mut t = 0u64;
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..5_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            t += seed % 120; // bursts (0 ms gaps) and lulls
            if take(&mut log, t, window, limit).allowed {
                admitted.push(t);
            }
        }
        assert!(
            admitted.len() > 1_000,
            "the limiter admits steadily: {}",
            admitted.len()
        );
        for (i, &start) in admitted.iter().enumerate() {
            let in_window = admitted[i..]
                .iter()
                .take_while(|&&a| a < start + window)
                .count();
            assert!(
                in_window as u64 <= limit,
                "{in_window} admitted in [{start}, {})",
                start + window
            );
        }
    }

    #[test]
    fn headers_describe_the_window() {
        let mut log = SlidingLog::new();
        let w = take(&mut log, 0, 60_000, 10);
        assert_eq!((w.limit, w.remaining, w.reset_ms), (10, 9, 60_000));
        let w = take(&mut log, 30_000, 60_000, 10);
        assert_eq!((w.remaining, w.reset_ms), (8, 60_000));
        let w = log.peek(70_000, 60_000, 10);
        assert_eq!((w.remaining, w.reset_ms), (9, 20_000));
    }

    #[test]
    fn checks_are_all_or_nothing() {
        let store = LocalStore::default();
        let tight = Check {
            key: Key {
                limit: 0,
                subject: Subject::Everyone,
            },
            window_ms: 10_000,
            limit: 1,
        };
        let loose = Check {
            key: Key {
                limit: 1,
                subject: Subject::Everyone,
            },
            window_ms: 10_000,
            limit: 5,
        };
        assert!(store.check(&[loose, tight], 0).iter().all(|w| w.allowed));
        let refused = store.check(&[loose, tight], 1);
        assert!(!refused[1].allowed);
        // The refused request did not use one of the loose limit's slots.
        let after = store.check(&[loose], 2);
        assert_eq!(after[0].remaining, 3);
    }

    #[test]
    fn idle_keys_are_forgotten() {
        let store = LocalStore::default();
        let many = (FIRST_SWEEP * SHARDS * 2) as u32;
        for ip in 0..many {
            let subject = Subject::Ip(std::net::IpAddr::from(ip.to_be_bytes()));
            store.check(
                &[Check {
                    key: Key { limit: 0, subject },
                    window_ms: 10,
                    limit: 1,
                }],
                u64::from(ip),
            );
        }
        assert!(
            store.keys() <= FIRST_SWEEP * SHARDS + SHARDS,
            "{} keys kept",
            store.keys()
        );
    }

    #[test]
    fn a_log_holds_only_the_requests_of_its_window() {
        let mut log = SlidingLog::new();
        for t in 0..100_000u64 {
            assert!(take(&mut log, t, 1_000, 100_000_000).allowed);
        }
        assert_eq!(
            log.times.len(),
            1_000,
            "a generous limit must not keep old entries"
        );
    }
}
