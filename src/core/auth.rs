//! Consumers and their API keys.
//!
//! Keys are kept only as SHA-256 digests. A presented key is hashed and the
//! digest looked up; the lookup's compare need not be constant-time, since its
//! timing can at most tell how much of a stored digest the attacker's own
//! digest matches, and SHA-256 makes that worthless for finding a key.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A SHA-256 digest.
pub type KeyHash = [u8; 32];

/// The index of a consumer in the compiled table.
pub type ConsumerId = usize;

/// SHA-256 of a key. Through OpenSSL's SHA-256 context, not its one-shot
/// `SHA256()`: on OpenSSL 3 that goes through `EVP_Q_digest`, which looks the
/// algorithm up and allocates a context on every call (~2.3k instructions a
/// request, benches/instructions.sh).
pub fn hash_key(key: &[u8]) -> KeyHash {
    let mut hasher = openssl::sha::Sha256::new();
    hasher.update(key);
    hasher.finish()
}

/// Parses `sha256:<64 hex digits>` (case-insensitive hex).
pub fn parse_key_hash(text: &str) -> Option<KeyHash> {
    let hex = text.strip_prefix("sha256:")?;
    // from_str_radix alone would accept a sign: "+0".
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let digits = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(digits, 16).ok()?;
    }
    Some(out)
}

/// Two consumers were given the same key (the key itself is never shown).
#[derive(Debug, thiserror::Error)]
#[error("this key is already given to consumer {0:?}")]
pub struct DuplicateKey(pub String);

/// Hashes a SHA-256 digest for the key table by taking its first eight
/// bytes: a digest is already uniformly spread, so hashing it again
/// (SipHash, the default) only costs time on every request. No flooding
/// either: the table holds the config's keys only, and a client cannot
/// choose the digest its key looks up.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        // The digest's first eight bytes, and the slice's length prefix (a
        // constant 8-byte write on 64-bit targets) XORed in; a shorter write
        // (the length on a 32-bit target) mixes in byte by byte.
        match bytes.first_chunk::<8>() {
            Some(word) => self.0 ^= u64::from_ne_bytes(*word),
            None => {
                for &b in bytes {
                    self.0 = self.0.rotate_left(8) ^ u64::from(b);
                }
            }
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Key digests to consumers.
#[derive(Debug, Default)]
pub struct KeyStore {
    by_hash: HashMap<KeyHash, ConsumerId, BuildHasherDefault<DigestHasher>>,
    names: Vec<String>,
    /// Name to id, so that routes naming consumers build in linear time.
    by_name: HashMap<String, ConsumerId>,
}

impl KeyStore {
    /// Adds a consumer and returns its id.
    pub fn add_consumer(&mut self, name: &str) -> ConsumerId {
        let id = self.names.len();
        self.names.push(name.to_string());
        // The first of two consumers with one name keeps it, as a scan would.
        self.by_name.entry(name.to_string()).or_insert(id);
        id
    }

    /// Gives `consumer` the key whose digest is `hash`.
    pub fn add_key(&mut self, consumer: ConsumerId, hash: KeyHash) -> Result<(), DuplicateKey> {
        match self.by_hash.get(&hash) {
            Some(&owner) if owner != consumer => Err(DuplicateKey(self.names[owner].clone())),
            _ => {
                self.by_hash.insert(hash, consumer);
                Ok(())
            }
        }
    }

    /// The consumer owning `key`, if any.
    pub fn find(&self, key: &[u8]) -> Option<ConsumerId> {
        self.by_hash.get(&hash_key(key)).copied()
    }

    pub fn consumer_name(&self, id: ConsumerId) -> &str {
        &self.names[id]
    }

    pub fn consumer_id(&self, name: &str) -> Option<ConsumerId> {
        self.by_name.get(name).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_test_matches_the_spec_example() {
        // SPEC §3's example hash is sha256("test").
        let spec = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        assert_eq!(parse_key_hash(spec), Some(hash_key(b"test")));
    }

    #[test]
    fn hash_parsing_rejects_malformed_text() {
        assert_eq!(parse_key_hash("md5:abcd"), None);
        assert_eq!(parse_key_hash("sha256:abc"), None);
        let not_hex = format!("sha256:{}", "zz".repeat(32));
        assert_eq!(parse_key_hash(&not_hex), None);
        let upper = format!("sha256:{}", "AB".repeat(32));
        assert_eq!(parse_key_hash(&upper), Some([0xab; 32]));
    }

    #[test]
    fn keys_and_hashes_find_their_consumer() {
        let mut store = KeyStore::default();
        let web = store.add_consumer("web");
        let partner = store.add_consumer("partner");
        store.add_key(web, hash_key(b"web-key")).expect("new key");
        store
            .add_key(
                partner,
                parse_key_hash(
                    "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                )
                .expect("hash"),
            )
            .expect("new key");
        assert_eq!(store.find(b"web-key"), Some(web));
        assert_eq!(store.find(b"test"), Some(partner));
        assert_eq!(store.find(b"web-key "), None);
        assert_eq!(store.find(b""), None);
        assert_eq!(store.consumer_name(partner), "partner");
    }

    #[test]
    fn one_key_for_two_consumers_is_refused() {
        let mut store = KeyStore::default();
        let a = store.add_consumer("a");
        let b = store.add_consumer("b");
        store.add_key(a, hash_key(b"k")).expect("new key");
        let err = store.add_key(b, hash_key(b"k")).expect_err("duplicate");
        assert!(err.to_string().contains("\"a\""));
        assert!(!err.to_string().contains("\"k\""), "the key is never shown");
    }
}
