//! The memory of verified bearer tokens (SPEC §8.1): a client repeating its
//! token pays the signature check once. Bounded in bytes whatever clients
//! send, sharded so that worker threads rarely meet on one lock; entries
//! carry the key (`K`) that verified them, so a key leaving its set revokes them.

use crate::core::jwt::VerifiedToken;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

/// What the memory may hold, in token bytes (and a little more per entry).
const MEMORY_BYTES: usize = 32 << 20;
const MEMORY_SHARDS: usize = 16;

/// A verified token remembered, with the key that verified it.
pub(crate) struct Remembered<K> {
    token: Arc<VerifiedToken>,
    key: Arc<K>,
}

struct Shard<K> {
    entries: HashMap<Box<str>, Remembered<K>>,
    bytes: usize,
}

/// Verified tokens until their `exp`, bounded in bytes.
pub(crate) struct Memory<K> {
    shards: Vec<Mutex<Shard<K>>>,
    hasher: RandomState,
}

impl<K> Memory<K> {
    pub(crate) fn new() -> Memory<K> {
        Memory {
            shards: (0..MEMORY_SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        entries: HashMap::new(),
                        bytes: 0,
                    })
                })
                .collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, token: &str) -> &Mutex<Shard<K>> {
        let i = self.hasher.hash_one(token) as usize % MEMORY_SHARDS;
        &self.shards[i]
    }

    pub(crate) fn get(&self, token: &str) -> Option<(Arc<VerifiedToken>, Arc<K>)> {
        let shard = self.shard(token).lock().unwrap_or_else(|p| p.into_inner());
        shard
            .entries
            .get(token)
            .map(|r| (r.token.clone(), r.key.clone()))
    }

    pub(crate) fn forget(&self, token: &str) {
        let mut shard = self.shard(token).lock().unwrap_or_else(|p| p.into_inner());
        if shard.entries.remove(token).is_some() {
            shard.bytes = shard.bytes.saturating_sub(token.len() + ENTRY_OVERHEAD);
        }
    }

    pub(crate) fn remember(
        &self,
        token: &str,
        verified: Arc<VerifiedToken>,
        key: Arc<K>,
        now: i64,
    ) {
        let budget = MEMORY_BYTES / MEMORY_SHARDS;
        let cost = token.len() + ENTRY_OVERHEAD;
        let mut shard = self.shard(token).lock().unwrap_or_else(|p| p.into_inner());
        if shard.bytes + cost > budget {
            // Expired tokens go first; when that is not enough, the whole
            // shard: a flood of fresh tokens costs re-verification, not memory.
            shard.entries.retain(|_, r| r.token.exp > now);
            shard.bytes = shard.entries.keys().map(|t| t.len() + ENTRY_OVERHEAD).sum();
            if shard.bytes + cost > budget {
                shard.entries.clear();
                shard.bytes = 0;
            }
        }
        let replaced = shard.entries.insert(
            token.into(),
            Remembered {
                token: verified,
                key,
            },
        );
        if replaced.is_none() {
            shard.bytes += cost;
        }
    }
}

/// Rough bytes an entry costs besides its token (claims, map slot).
const ENTRY_OVERHEAD: usize = 512;
