//! The key store: every key added finds its consumer, a key never added finds
//! none, and hash parsing never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::core::auth::{hash_key, parse_key_hash, KeyStore};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_key_hash(text);
    }
    // Keys are the input's NUL-separated pieces; the last one is only looked up.
    let mut pieces: Vec<&[u8]> = data.split(|&b| b == 0).collect();
    let probe = pieces.pop().unwrap_or_default();
    let mut store = KeyStore::default();
    let mut owners: Vec<(&[u8], usize)> = Vec::new();
    for (i, key) in pieces.iter().enumerate().take(256) {
        let consumer = store.add_consumer(&format!("c{i}"));
        match store.add_key(consumer, hash_key(key)) {
            Ok(()) => owners.push((key, consumer)),
            Err(_) => assert!(owners.iter().any(|(k, _)| k == key), "only a repeated key clashes"),
        }
    }
    for (key, consumer) in &owners {
        assert_eq!(store.find(key), Some(*consumer));
    }
    let expected = owners.iter().find(|(k, _)| *k == probe).map(|(_, c)| *c);
    assert_eq!(store.find(probe), expected);
});
