//! The Redis store: the same sliding log as a sorted set per key, so every
//! gateway instance shares one budget.
//!
//! One Lua script (sent by `EVALSHA`, loaded on first use) checks every limit of
//! a request and records it in all of them, or in none, as one atomic step on the
//! server, timed by the server's own clock (`TIME`) so instances' clocks need not
//! agree. Keys expire by themselves after their window.

use super::local::Check;
use super::{LimitSpec, StoreError, Subject, Window};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use std::sync::OnceLock;
use std::time::Duration;

const SLIDING_LOG: &str = r#"
-- KEYS: one sorted set per limit. ARGV[1]: a unique member for this request;
-- then, per key, its limit and its window in milliseconds.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local counts = {}
local allowed = 1
for i = 1, #KEYS do
  local limit = tonumber(ARGV[2 * i])
  local window = tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
  counts[i] = redis.call('ZCARD', KEYS[i])
  if counts[i] >= limit then allowed = 0 end
end
local out = { allowed }
for i = 1, #KEYS do
  local window = tonumber(ARGV[2 * i + 1])
  if allowed == 1 then
    redis.call('ZADD', KEYS[i], now, ARGV[1])
    redis.call('PEXPIRE', KEYS[i], window)
    counts[i] = counts[i] + 1
  end
  local oldest = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
  local newest = redis.call('ZRANGE', KEYS[i], -1, -1, 'WITHSCORES')
  local first = now
  local last = now
  if oldest[2] then first = tonumber(oldest[2]) end
  if newest[2] then last = tonumber(newest[2]) end
  out[#out + 1] = counts[i]
  out[#out + 1] = math.max(0, first + window - now)
  out[#out + 1] = math.max(0, last + window - now)
end
return out
"#;

pub struct RedisStore {
    client: redis::Client,
    prefix: String,
    timeout: Duration,
    script: Script,
    /// Made on first use, inside the proxy's runtime; it reconnects by itself.
    connection: OnceLock<Result<ConnectionManager, String>>,
}

impl RedisStore {
    /// Checks the URL now (no connection is made until the first request).
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("not a Redis URL: {e}"))?;
        Ok(RedisStore {
            client,
            prefix: prefix.to_string(),
            timeout,
            script: Script::new(SLIDING_LOG),
            connection: OnceLock::new(),
        })
    }

    fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let made = self.connection.get_or_init(|| {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(self.timeout))
                .set_response_timeout(Some(self.timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            ConnectionManager::new_lazy_with_config(self.client.clone(), config)
                .map_err(|e| e.to_string())
        });
        made.clone().map_err(StoreError)
    }

    /// Connects and loads the script ahead of the first request, which would
    /// otherwise pay for both within its timeout.
    pub async fn warm_up(&self) -> Result<(), StoreError> {
        let mut connection = self.connection()?;
        let invocation = self.script.prepare_invoke();
        let load = invocation.load_async(&mut connection);
        match tokio::time::timeout(Duration::from_secs(2), load).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(StoreError(e.to_string())),
            Err(_) => Err(StoreError("no answer within 2s".to_string())),
        }
    }

    fn key(&self, spec: &LimitSpec, subject: &Subject) -> String {
        match subject {
            Subject::Everyone => format!("{}{}", self.prefix, spec.name),
            Subject::Consumer(id) => format!("{}{}:c{id}", self.prefix, spec.name),
            Subject::Ip(ip) => format!("{}{}:{ip}", self.prefix, spec.name),
            Subject::Caller(id) => format!("{}{}:t{id:016x}", self.prefix, spec.name),
        }
    }

    /// One round trip for every limit of a request, bounded by the timeout.
    pub async fn check(
        &self,
        specs: &[LimitSpec],
        checks: &[Check],
    ) -> Result<Vec<Window>, StoreError> {
        let mut connection = self.connection()?;
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(format!("{:032x}", rand::random::<u128>()));
        for c in checks {
            let spec = &specs[c.key.limit as usize];
            invocation.key(self.key(spec, &c.key.subject));
            invocation.arg(c.limit).arg(c.window_ms);
        }
        let call = invocation.invoke_async::<Vec<i64>>(&mut connection);
        let answer = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| StoreError(format!("no answer within {:?}", self.timeout)))?
            .map_err(|e| StoreError(e.to_string()))?;
        parse_answer(&answer, checks)
    }
}

fn parse_answer(answer: &[i64], checks: &[Check]) -> Result<Vec<Window>, StoreError> {
    let bad = || StoreError(format!("unexpected script answer {answer:?}"));
    if answer.len() != 1 + 3 * checks.len() {
        return Err(bad());
    }
    let allowed = answer[0] == 1;
    let as_u64 = |v: i64| u64::try_from(v).map_err(|_| bad());
    checks
        .iter()
        .zip(answer[1..].chunks(3))
        .map(|(c, v)| {
            let used = as_u64(v[0])?;
            let refused_here = !allowed && used >= c.limit;
            Ok(Window {
                allowed: !refused_here,
                limit: c.limit,
                remaining: c.limit.saturating_sub(used),
                reset_ms: as_u64(v[2])?,
                retry_after_ms: if refused_here { as_u64(v[1])? } else { 0 },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::limit::Key;

    fn check(limit: u64) -> Check {
        Check {
            key: Key {
                limit: 0,
                subject: Subject::Everyone,
            },
            window_ms: 10_000,
            limit,
        }
    }

    #[test]
    fn script_answers_become_windows() {
        let windows = parse_answer(&[1, 3, 9_000, 9_500], &[check(10)]).expect("valid");
        assert_eq!(windows[0].remaining, 7);
        assert!(windows[0].allowed);
        let windows = parse_answer(&[0, 5, 400, 9_000, 10, 300, 9_000], &[check(5), check(100)])
            .expect("valid");
        assert!(!windows[0].allowed && windows[0].retry_after_ms == 400);
        assert!(
            windows[1].allowed,
            "the limit with room is not the one that refused"
        );
        assert!(parse_answer(&[1, 2], &[check(1)]).is_err());
        assert!(parse_answer(&[1, -2, 0, 0], &[check(1)]).is_err());
    }

    #[test]
    fn a_bad_url_is_refused_at_load() {
        assert!(RedisStore::new("not a url", "p:", Duration::from_millis(50)).is_err());
        assert!(
            RedisStore::new("redis://127.0.0.1:6379/0", "p:", Duration::from_millis(50)).is_ok()
        );
    }
}
