//! Bearer-token issuers and their keys (SPEC §8.1): the signature checks (by
//! `jsonwebtoken`), each issuer's key set (a JWKS file, a secret, or a JWKS
//! URL refreshed by `runtime::jwks`), and the memory of verified tokens.
//!
//! A key set is shared with the tables of a reload that keeps the issuer and
//! its URL, so a reload does not wait for a fetch; the memory of verified
//! tokens is not (a reload forgets them).

use crate::core::auth::KeyStore;
use crate::core::config::{self, Cx, JwtAlgorithm};
use crate::core::jwt::{self, ClaimRules, TokenFault, VerifiedToken, MAX_TOKEN_BYTES};
use crate::tables::token_memory::Memory;
use crate::telemetry::metrics;
use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// An unknown `kid` fetches an issuer's JWKS at most this often, counted from
/// its last fetch of any kind.
pub const UNKNOWN_KID_REFETCH: Duration = Duration::from_secs(10);
/// How long a request with an unknown `kid` waits for the fetch it asked for.
pub const KEY_WAIT: Duration = Duration::from_secs(3);
/// `jwks_refresh` when omitted.
pub const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(600);
/// `leeway` when omitted.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// Which key a token's `alg` needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
    Secret,
}

impl KeyKind {
    /// Whether `alg` may be verified with a key of this kind: an HMAC `alg`
    /// never with a public key (the key-confusion attack), ES256 only on P-256.
    pub fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::P256 => alg == ES256,
            KeyKind::P384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
            KeyKind::Secret => matches!(alg, HS256 | HS384 | HS512),
        }
    }
}

/// One verification key.
pub struct Key {
    pub kid: Option<String>,
    pub kind: KeyKind,
    /// The JWK's own `alg`, when it names one: then only that one.
    pub alg: Option<Algorithm>,
    decoding: DecodingKey,
    /// The JWK as fetched, so a refresh that keeps a key keeps its identity
    /// (and the tokens remembered under it).
    source: String,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .finish()
    }
}

/// The keys an issuer has now.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<Arc<Key>>,
}

impl KeySet {
    /// The key for a token: by `kid`, or the only key when the token names none.
    fn find(&self, kid: Option<&str>) -> Option<&Arc<Key>> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        }
    }

    fn holds(&self, key: &Arc<Key>) -> bool {
        self.keys.iter().any(|k| Arc::ptr_eq(k, key))
    }
}

/// Parses a JWKS document. Keys of a type the gateway cannot use (`oct`,
/// P-521, encryption keys) are skipped and counted in the second value.
pub fn parse_jwks(text: &[u8], previous: &KeySet) -> Result<(KeySet, usize), String> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<Value>,
    }
    let doc: Document = serde_json::from_slice(text)
        .map_err(|_| "not a JWKS document (a JSON object with a `keys` list)".to_string())?;
    let mut keys = Vec::with_capacity(doc.keys.len());
    let mut skipped = 0;
    for value in doc.keys {
        let source = value.to_string();
        if let Some(same) = previous.keys.iter().find(|k| k.source == source) {
            keys.push(same.clone());
            continue;
        }
        match key_of(value, source) {
            Some(key) => keys.push(Arc::new(key)),
            None => skipped += 1,
        }
    }
    Ok((KeySet { keys }, skipped))
}

fn key_of(value: Value, source: String) -> Option<Key> {
    let jwk: Jwk = serde_json::from_value(value).ok()?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyKind::Rsa,
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => KeyKind::P256,
            EllipticCurve::P384 => KeyKind::P384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            KeyKind::Ed25519
        }
        // Symmetric keys are never taken from a key set: see `secret:`.
        _ => return None,
    };
    let alg = match jwk.common.key_algorithm {
        Some(a) => Some(Algorithm::try_from(a).ok()?),
        None => None,
    };
    let decoding = DecodingKey::from_jwk(&jwk).ok()?;
    Some(Key {
        kid: jwk.common.key_id.clone(),
        kind,
        alg,
        decoding,
        source,
    })
}

/// An issuer's keys, shared by the tables of reloads and the JWKS fetcher.
#[derive(Debug, Default)]
pub struct IssuerKeys {
    pub set: ArcSwap<KeySet>,
    /// When the last fetch (of any kind) started.
    last_fetch: Mutex<Option<Instant>>,
    /// A token named an unknown `kid`: fetch as soon as the bound allows.
    wanted: AtomicBool,
    /// A fetch is under way.
    fetching: AtomicBool,
    /// Woken after each fetch, for requests waiting on an unknown `kid`.
    pub fetched: tokio::sync::Notify,
}

impl IssuerKeys {
    fn with(set: KeySet) -> IssuerKeys {
        let keys = IssuerKeys::default();
        keys.set.store(Arc::new(set));
        keys
    }

    /// Asks for a fetch for an unknown `kid`. True when one will happen soon
    /// (none in the last [`UNKNOWN_KID_REFETCH`], or one under way): the
    /// caller may wait on [`IssuerKeys::fetched`].
    pub fn want_fetch(&self) -> bool {
        if self.fetching.load(Ordering::Acquire) {
            return true;
        }
        let last = *self.last_fetch.lock().unwrap_or_else(|p| p.into_inner());
        let allowed = last.is_none_or(|t| t.elapsed() >= UNKNOWN_KID_REFETCH);
        if allowed {
            self.wanted.store(true, Ordering::Release);
        }
        allowed
    }

    /// Whether a fetch is due now: never fetched, `refresh` passed, or an
    /// unknown `kid` asked and the bound allows. Marks the fetch as started.
    pub fn start_fetch_if_due(&self, refresh: Duration) -> bool {
        if self.fetching.load(Ordering::Acquire) {
            return false;
        }
        let mut last = self.last_fetch.lock().unwrap_or_else(|p| p.into_inner());
        let due = match *last {
            None => true,
            Some(t) => {
                let since = t.elapsed();
                since >= refresh
                    || (self.wanted.load(Ordering::Acquire) && since >= UNKNOWN_KID_REFETCH)
            }
        };
        if due {
            *last = Some(Instant::now());
            self.wanted.store(false, Ordering::Release);
            self.fetching.store(true, Ordering::Release);
        }
        due
    }

    /// Ends a fetch: the new set when it succeeded, and wakes the waiters.
    pub fn finish_fetch(&self, set: Option<KeySet>) {
        if let Some(set) = set {
            self.set.store(Arc::new(set));
        }
        self.fetching.store(false, Ordering::Release);
        self.fetched.notify_waiters();
    }
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Url { url: String, refresh: Duration },
    File,
    Secret,
}

/// One configured issuer.
pub struct Issuer {
    /// The `iss` its tokens carry (also the metric label).
    pub name: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub source: KeySource,
    pub keys: Arc<IssuerKeys>,
}

/// Why a token did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Fault(TokenFault),
    /// Its `kid` is not (yet) among the issuer's keys.
    UnknownKey {
        issuer: usize,
    },
}

/// `auth.jwt`, compiled.
pub struct TokenIssuers {
    pub issuers: Vec<Issuer>,
    pub consumer_claim: Option<String>,
    /// Seconds.
    pub leeway: i64,
    memory: Memory<Key>,
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn algorithm(alg: JwtAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        JwtAlgorithm::None => return None,
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::HS384 => Algorithm::HS384,
        JwtAlgorithm::HS512 => Algorithm::HS512,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::RS384 => Algorithm::RS384,
        JwtAlgorithm::RS512 => Algorithm::RS512,
        JwtAlgorithm::PS256 => Algorithm::PS256,
        JwtAlgorithm::PS384 => Algorithm::PS384,
        JwtAlgorithm::PS512 => Algorithm::PS512,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::ES384 => Algorithm::ES384,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
    })
}

impl TokenIssuers {
    /// Builds `auth.jwt`: reads `jwks_file`s, takes secrets, registers each
    /// URL issuer's refresh counters (from zero). `None` without `auth.jwt`.
    pub fn build(cx: &mut Cx<'_>, config: &config::Config) -> Option<TokenIssuers> {
        let conf = &config.auth.as_ref()?.jwt.as_ref()?.value;
        let mut issuers = Vec::new();
        for (i, c) in conf.issuers.value.iter() {
            let path = format!("auth.jwt.issuers[{i}]");
            let (source, set) = if let Some(url) = &c.jwks_url {
                let refresh = c
                    .jwks_refresh
                    .as_ref()
                    .map_or(DEFAULT_JWKS_REFRESH, |r| r.value);
                let source = KeySource::Url {
                    url: url.value.clone(),
                    refresh,
                };
                metrics::jwks_refreshes_from_zero(&c.issuer.value);
                (source, KeySet::default())
            } else if let Some(file) = &c.jwks_file {
                let read = std::fs::read(&file.value)
                    .map_err(|e| format!("cannot read {}: {e}", file.shown()))
                    .and_then(|text| parse_jwks(&text, &KeySet::default()));
                match read {
                    Ok((set, _)) if set.keys.is_empty() => {
                        cx.error_at(
                            &format!("{path}.jwks_file"),
                            file.mark,
                            "the key set holds no usable key (RSA, EC P-256/P-384, Ed25519)",
                        );
                        continue;
                    }
                    Ok((set, _)) => (KeySource::File, set),
                    Err(message) => {
                        cx.error_at(&format!("{path}.jwks_file"), file.mark, message);
                        continue;
                    }
                }
            } else if let Some(secret) = &c.secret {
                let Ok(decoding) = DecodingKey::from_secret(secret.value.as_bytes()) else {
                    // The secret itself is never shown.
                    cx.error_at(
                        &format!("{path}.secret"),
                        secret.mark,
                        "not a usable secret",
                    );
                    continue;
                };
                let key = Key {
                    kid: None,
                    kind: KeyKind::Secret,
                    alg: None,
                    decoding,
                    source: String::new(),
                };
                (
                    KeySource::Secret,
                    KeySet {
                        keys: vec![Arc::new(key)],
                    },
                )
            } else {
                continue; // reported by validation
            };
            let algorithms = match &c.algorithms {
                Some(list) => list
                    .value
                    .iter()
                    .filter_map(|a| algorithm(a.value))
                    .collect(),
                None if source == KeySource::Secret => {
                    vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512]
                }
                None => {
                    use Algorithm::*;
                    vec![
                        RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA,
                    ]
                }
            };
            issuers.push(Issuer {
                name: c.issuer.value.clone(),
                audiences: c.audiences.clone().unwrap_or_default(),
                algorithms,
                source,
                keys: Arc::new(IssuerKeys::with(set)),
            });
        }
        Some(TokenIssuers {
            issuers,
            consumer_claim: conf.consumer_claim.clone(),
            leeway: conf.leeway.unwrap_or(DEFAULT_LEEWAY).as_secs() as i64,
            memory: Memory::new(),
        })
    }

    /// Takes over the fetched keys of `previous` for every issuer whose name
    /// and URL are unchanged, so a reload needs no fetch before it verifies.
    pub fn keep_keys_from(&mut self, previous: &TokenIssuers) {
        for issuer in &mut self.issuers {
            let KeySource::Url { url, .. } = &issuer.source else {
                continue;
            };
            let same = previous.issuers.iter().find(|p| {
                p.name == issuer.name
                    && matches!(&p.source, KeySource::Url { url: u, .. } if u == url)
            });
            if let Some(same) = same {
                issuer.keys = same.keys.clone();
            }
        }
    }

    /// Waits, at most [`KEY_WAIT`], for the JWKS fetch an unknown `kid` asks
    /// of issuer `index`. False when none may happen (not a URL issuer, or
    /// one fetched within [`UNKNOWN_KID_REFETCH`]) or it did not end in time.
    pub async fn await_fetch(&self, index: usize) -> bool {
        let Some(issuer) = self.issuers.get(index) else {
            return false;
        };
        if !matches!(issuer.source, KeySource::Url { .. }) {
            return false;
        }
        let keys = &issuer.keys;
        let fetched = keys.fetched.notified();
        tokio::pin!(fetched);
        // Registered before asking, so a fetch ending meanwhile still wakes us.
        fetched.as_mut().enable();
        if !keys.want_fetch() {
            return false;
        }
        tokio::time::timeout(KEY_WAIT, fetched).await.is_ok()
    }

    /// Verifies a bearer token at `now` (Unix seconds): remembered, or its
    /// signature checked and its claims read.
    pub fn verify(
        &self,
        token: &str,
        now: i64,
        consumers: &KeyStore,
    ) -> Result<Arc<VerifiedToken>, Failure> {
        let fault = |f| Err(Failure::Fault(f));
        if token.len() > MAX_TOKEN_BYTES {
            return fault(TokenFault::Invalid);
        }
        if let Some((verified, key)) = self.memory.get(token) {
            let issuer = &self.issuers[verified.issuer];
            if issuer.keys.set.load().holds(&key) {
                if now >= verified.exp.saturating_add(self.leeway) {
                    self.memory.forget(token);
                    return fault(TokenFault::Expired);
                }
                return Ok(verified);
            }
            // Its key left the set: verify again (and most likely refuse).
            self.memory.forget(token);
        }
        let (verified, key) = self.verify_signature_and_claims(token, now, consumers)?;
        self.memory.remember(token, verified.clone(), key, now);
        Ok(verified)
    }

    /// [`TokenIssuers::verify`] without the memory: the full cost of a token
    /// seen for the first time (also what `benches/jwt.rs` calls "cold").
    pub fn verify_signature_and_claims(
        &self,
        token: &str,
        now: i64,
        consumers: &KeyStore,
    ) -> Result<(Arc<VerifiedToken>, Arc<Key>), Failure> {
        let fault = |f| Err(Failure::Fault(f));
        if token.len() > MAX_TOKEN_BYTES {
            return fault(TokenFault::Invalid);
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| Failure::Fault(TokenFault::Invalid))?;
        let unverified: Map<String, Value> = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| Failure::Fault(TokenFault::Invalid))?;
        let Some(index) = unverified
            .get("iss")
            .and_then(Value::as_str)
            .and_then(|iss| self.issuers.iter().position(|i| i.name == iss))
        else {
            return fault(TokenFault::WrongIssuerOrAudience);
        };
        let issuer = &self.issuers[index];
        if !issuer.algorithms.contains(&header.alg) {
            return fault(TokenFault::Invalid);
        }
        let set = issuer.keys.set.load();
        let Some(key) = set.find(header.kid.as_deref()) else {
            return Err(Failure::UnknownKey { issuer: index });
        };
        if !key.kind.fits(header.alg) || key.alg.is_some_and(|a| a != header.alg) {
            return fault(TokenFault::Invalid);
        }
        let mut validation = Validation::new(header.alg);
        // The claims are checked below, by SPEC's rules (`iat`, coarse reasons).
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let claims =
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &validation) {
                Ok(data) => data.claims,
                Err(e) => {
                    let f = match e.kind() {
                        jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                            TokenFault::BadSignature
                        }
                        _ => TokenFault::Invalid,
                    };
                    return fault(f);
                }
            };
        let rules = ClaimRules {
            issuer: &issuer.name,
            audiences: &issuer.audiences,
            leeway: self.leeway,
        };
        let exp = jwt::check_claims(&claims, &rules, now).map_err(Failure::Fault)?;
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .map(str::to_string);
        let consumer = self
            .consumer_claim
            .as_deref()
            .and_then(|c| claims.get(c))
            .and_then(Value::as_str)
            .and_then(|name| consumers.consumer_id(name));
        let verified = Arc::new(VerifiedToken {
            issuer: index,
            exp,
            caller: jwt::caller_id(&issuer.name, sub.as_deref()),
            sub,
            consumer,
            scopes: jwt::granted_scopes(&claims),
            claims,
        });
        Ok((verified, key.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    #[test]
    fn an_alg_fits_only_its_key_kind() {
        use Algorithm::*;
        assert!(KeyKind::Rsa.fits(RS256) && KeyKind::Rsa.fits(PS512));
        assert!(!KeyKind::Rsa.fits(HS256), "the key-confusion attack");
        assert!(KeyKind::P256.fits(ES256) && !KeyKind::P256.fits(ES384));
        assert!(KeyKind::P384.fits(ES384) && !KeyKind::P384.fits(ES256));
        assert!(KeyKind::Ed25519.fits(EdDSA) && !KeyKind::Ed25519.fits(ES256));
        assert!(KeyKind::Secret.fits(HS512) && !KeyKind::Secret.fits(RS256));
    }

    fn ed_key(kid: &str) -> (EncodingKey, Value) {
        let der = openssl::pkey::PKey::generate_ed25519()
            .and_then(|k| k.private_key_to_pkcs8())
            .expect("ed25519 key");
        let key = EncodingKey::from_ed_der(&der);
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::EdDSA).expect("jwk");
        jwk.common.key_id = Some(kid.to_string());
        (key, serde_json::to_value(jwk).expect("json"))
    }

    #[test]
    fn a_jwks_refresh_keeps_unchanged_keys_and_skips_unusable_ones() {
        let (_, a) = ed_key("a");
        let doc = json!({"keys": [
            a,
            {"kty": "oct", "kid": "sym", "k": "c2VjcmV0"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "enc", "use": "enc", "x": a["x"]},
        ]});
        let (first, skipped) =
            parse_jwks(doc.to_string().as_bytes(), &KeySet::default()).expect("jwks");
        assert_eq!((first.keys.len(), skipped), (1, 2));
        let (again, _) = parse_jwks(doc.to_string().as_bytes(), &first).expect("jwks");
        assert!(
            Arc::ptr_eq(&first.keys[0], &again.keys[0]),
            "same key, same identity"
        );
        assert!(parse_jwks(b"[1, 2]", &first).is_err());
    }

    #[test]
    fn a_remembered_token_is_checked_again_once_its_key_leaves_the_set() {
        let (key, jwk) = ed_key("k1");
        let (set, _) = parse_jwks(
            json!({"keys": [jwk]}).to_string().as_bytes(),
            &KeySet::default(),
        )
        .expect("jwks");
        let issuers = TokenIssuers {
            issuers: vec![Issuer {
                name: "idp".into(),
                audiences: Vec::new(),
                algorithms: vec![Algorithm::EdDSA],
                source: KeySource::File,
                keys: Arc::new(IssuerKeys::with(set)),
            }],
            consumer_claim: None,
            leeway: 0,
            memory: Memory::new(),
        };
        let now = unix_now();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("k1".into());
        let token = encode(
            &header,
            &json!({"iss": "idp", "sub": "s", "exp": now + 60}),
            &key,
        )
        .expect("sign");
        let consumers = KeyStore::default();
        let first = issuers.verify(&token, now, &consumers).expect("verifies");
        let again = issuers.verify(&token, now, &consumers).expect("remembered");
        assert!(
            Arc::ptr_eq(&first, &again),
            "the second time comes from memory"
        );
        assert_eq!(
            issuers.verify(&token, now + 60, &consumers),
            Err(Failure::Fault(TokenFault::Expired)),
            "remembered only until exp"
        );
        issuers
            .verify(&token, now, &consumers)
            .expect("verified again");
        issuers.issuers[0]
            .keys
            .set
            .store(Arc::new(KeySet::default()));
        assert_eq!(
            issuers.verify(&token, now, &consumers),
            Err(Failure::UnknownKey { issuer: 0 })
        );
    }
}
