//! Bearer tokens (SPEC §8.1), black-box: the real binary, a real JWKS endpoint
//! on a loopback port (a test backend), keys and tokens made here at run time
//! (RSA 2048, EC P-256, Ed25519, HS256). Every token and secret made is noted
//! in a `*.secrets` file that `.ci/secret-scan` greps the logs for.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use common::*;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const JWKS_PATH: &str = "/.well-known/jwks.json";
const AUDIENCE: &str = "orders-api";

/// Notes a token or secret for the secret scan, and gives it back.
fn secret(value: String) -> String {
    static FILE: OnceLock<Mutex<std::fs::File>> = OnceLock::new();
    let file = FILE.get_or_init(|| {
        let path = temp_dir("jwt-secrets").join("tokens.secrets");
        Mutex::new(std::fs::File::create(path).expect("secrets file"))
    });
    let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
    writeln!(f, "{value}").expect("note secret");
    value
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// A signing key made for this run, and its public JWK.
struct Signer {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
    jwk: Value,
}

impl Signer {
    fn new(kid: &str, alg: Algorithm, key: EncodingKey) -> Signer {
        let mut jwk = Jwk::from_encoding_key(&key, alg).expect("public jwk");
        jwk.common.key_id = Some(kid.to_string());
        Signer {
            kid: kid.to_string(),
            alg,
            key,
            jwk: serde_json::to_value(jwk).expect("jwk json"),
        }
    }

    fn rsa(kid: &str) -> Signer {
        let rsa = openssl::rsa::Rsa::generate(2048).expect("rsa key");
        let der = rsa.private_key_to_der().expect("pkcs1 der");
        Signer::new(kid, Algorithm::RS256, EncodingKey::from_rsa_der(&der))
    }

    fn ec(kid: &str) -> Signer {
        let group = openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1)
            .expect("p-256");
        let ec = openssl::ec::EcKey::generate(&group).expect("ec key");
        let pkey = openssl::pkey::PKey::from_ec_key(ec).expect("pkey");
        let der = pkey.private_key_to_pkcs8().expect("pkcs8");
        Signer::new(kid, Algorithm::ES256, EncodingKey::from_ec_der(&der))
    }

    fn ed(kid: &str) -> Signer {
        let pkey = openssl::pkey::PKey::generate_ed25519().expect("ed25519 key");
        let der = pkey.private_key_to_pkcs8().expect("pkcs8");
        Signer::new(kid, Algorithm::EdDSA, EncodingKey::from_ed_der(&der))
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }

    /// Signed by this key, but naming `kid` in the header.
    fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(kid.to_string());
        secret(encode(&header, claims, &self.key).expect("sign"))
    }
}

/// A JWKS endpoint whose key set the test changes, counting its fetches.
struct Idp {
    backend: Backend,
    keys: Arc<Mutex<Vec<Value>>>,
    failing: Arc<Mutex<bool>>,
}

impl Idp {
    fn start(keys: &[&Signer]) -> Idp {
        let set = Arc::new(Mutex::new(
            keys.iter().map(|k| k.jwk.clone()).collect::<Vec<Value>>(),
        ));
        let failing = Arc::new(Mutex::new(false));
        let (served, fail) = (set.clone(), failing.clone());
        let backend = Backend::start(move |r| {
            if *fail.lock().expect("lock") {
                return Answer::json(500, "{}");
            }
            if r.target != JWKS_PATH {
                return Answer::json(404, "{}");
            }
            let keys = served.lock().expect("lock").clone();
            Answer::json(200, &json!({ "keys": keys }).to_string())
        });
        Idp {
            backend,
            keys: set,
            failing,
        }
    }

    fn url(&self) -> String {
        format!("http://{}{JWKS_PATH}", self.backend.addr)
    }

    fn issuer(&self) -> String {
        format!("http://{}/", self.backend.addr)
    }

    fn serve(&self, keys: &[&Signer]) {
        *self.keys.lock().expect("lock") = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    fn fetches(&self) -> usize {
        self.backend
            .requests()
            .iter()
            .filter(|r| r.target == JWKS_PATH)
            .count()
    }

    fn wait_fetches(&self, n: usize) -> Instant {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.fetches() < n {
            assert!(Instant::now() < deadline, "JWKS fetch {n} never came");
            std::thread::sleep(Duration::from_millis(10));
        }
        Instant::now()
    }
}

fn claims(iss: &str, sub: &str, scope: &str) -> Value {
    let t = now();
    json!({ "iss": iss, "sub": sub, "aud": AUDIENCE, "exp": t + 600, "iat": t, "nbf": t, "scope": scope })
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The gateway with issuer `main` (JWKS URL), `other` (JWKS URL) and
/// `legacy` (HS256 secret from the environment), and routes of every kind.
fn config(main: &Idp, other: &Idp, upstream: &Backend, refresh: &str) -> String {
    format!(
        "{head}auth:
  jwt:
    issuers:
      - issuer: {main_iss}
        audiences: [{AUDIENCE}]
        jwks_url: {main_url}
        jwks_refresh: {refresh}
      - issuer: {other_iss}
        jwks_url: {other_url}
      - issuer: legacy
        secret: \"${{JWT_HS_SECRET}}\"
        algorithms: [HS256]
    consumer_claim: sub
    leeway: 5s
upstreams:
  u: {{ peers: [\"{peer}\"] }}
routes:
  - {{ name: orders, path: /orders, upstream: u, auth: jwt, scopes: [orders:read],
      claims_to_headers: {{ x-user-id: sub, x-tenant: tenant }} }}
  - {{ name: open, path: /open, upstream: u, auth: jwt }}
  - {{ name: either, path: /either, upstream: u, auth: any }}
  - {{ name: webonly, path: /webonly, upstream: u, auth: jwt, consumers: [web] }}
  - {{ name: fwd, path: /fwd, upstream: u, auth: jwt, forward_token: true }}
  - {{ name: limited, path: /limited, upstream: u, auth: jwt,
      rate_limit: {{ requests: 2, per: 1m, by: consumer }} }}
",
        head = config_head(),
        main_iss = main.issuer(),
        main_url = main.url(),
        other_iss = other.issuer(),
        other_url = other.url(),
        peer = upstream.addr,
    )
}

struct Setup {
    main: Idp,
    other: Idp,
    upstream: Backend,
    gw: Gateway,
    hs_secret: String,
}

fn setup(main_keys: &[&Signer], other_keys: &[&Signer], refresh: &str) -> Setup {
    let main = Idp::start(main_keys);
    let other = Idp::start(other_keys);
    let upstream = Backend::echo();
    let hs_secret = secret(format!(
        "hs-{:032x}",
        rand_u128(std::process::id() as u128 ^ now() as u128)
    ));
    let gw = Gateway::start_with_env(
        &config(&main, &other, &upstream, refresh),
        &[("JWT_HS_SECRET", hs_secret.as_str())],
    );
    main.wait_fetches(1);
    other.wait_fetches(1);
    Setup {
        main,
        other,
        upstream,
        gw,
        hs_secret,
    }
}

/// Random enough for a test secret, from OpenSSL's generator.
fn rand_u128(mix: u128) -> u128 {
    let mut bytes = [0u8; 16];
    openssl::rand::rand_bytes(&mut bytes).expect("random bytes");
    u128::from_le_bytes(bytes) ^ mix
}

/// Waits until the key set with `kid` is in force: the first fetch may have
/// been answered before the gateway stored it.
fn accepted_soon(gw: &Gateway, path: &str, token: &str) -> Response {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = gw.get(path, &[("authorization", &bearer(token))]);
        if r.status == 200 || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn seg(v: &Value) -> String {
    B64URL.encode(v.to_string())
}

#[test]
fn tokens_of_every_key_type_pass_and_shape_the_upstream_request() {
    let (rsa, ec, ed) = (Signer::rsa("rsa-1"), Signer::ec("ec-1"), Signer::ed("ed-1"));
    let other_key = Signer::rsa("other-1");
    let s = setup(&[&rsa, &ec, &ed], &[&other_key], "10m");
    let iss = s.main.issuer();
    let token = rsa.sign(&claims(&iss, "user-1", "openid orders:read"));
    let r = accepted_soon(&s.gw, "/open", &token);
    assert_eq!(r.status, 200, "{}", r.text());
    for signer in [&ec, &ed] {
        let t = signer.sign(&claims(&iss, "user-2", ""));
        let r = s.gw.get("/open", &[("authorization", &bearer(&t))]);
        assert_eq!(r.status, 200, "{:?}: {}", signer.alg, r.text());
    }
    let t = other_key.sign(&claims(&s.other.issuer(), "user-3", ""));
    assert_eq!(
        s.gw.get("/open", &[("authorization", &bearer(&t))]).status,
        200
    );
    let hs = secret(
        encode(
            &Header::new(Algorithm::HS256),
            &claims("legacy", "user-4", ""),
            &EncodingKey::from_secret(s.hs_secret.as_bytes()).expect("hs key"),
        )
        .expect("hs256"),
    );
    assert_eq!(
        s.gw.get("/open", &[("authorization", &bearer(&hs))]).status,
        200
    );
    // The upstream never sees the token; claims become headers over the client's.
    let mut with_claim = claims(&iss, "user-1", "orders:read");
    with_claim["tenant"] = json!("acme");
    let t = rsa.sign(&with_claim);
    let r = s.gw.get(
        "/orders/7",
        &[
            ("authorization", &bearer(&t)),
            ("x-user-id", "forged"),
            ("x-tenant", "forged"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = s.upstream.last();
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.header("x-user-id"), Some("user-1"));
    assert_eq!(seen.header("x-tenant"), Some("acme"));
    // A claim the token lacks leaves no client value behind.
    let t = rsa.sign(&claims(&iss, "user-1", "orders:read"));
    s.gw.get(
        "/orders",
        &[("authorization", &bearer(&t)), ("x-tenant", "forged")],
    );
    assert_eq!(s.upstream.last().header("x-tenant"), None);
    // forward_token: the upstream gets it.
    s.gw.get("/fwd", &[("authorization", &bearer(&t))]);
    assert_eq!(
        s.upstream.last().header("authorization"),
        Some(bearer(&t).as_str())
    );
    // A `sub` naming a consumer acts as it: the ACL lets it in.
    let web = rsa.sign(&claims(&iss, "web", ""));
    assert_eq!(
        s.gw.get("/webonly", &[("authorization", &bearer(&web))])
            .status,
        200
    );
    let anon = rsa.sign(&claims(&iss, "someone", ""));
    let r = s.gw.get("/webonly", &[("authorization", &bearer(&anon))]);
    assert_eq!((r.status, r.error_code().as_str()), (403, "forbidden"));
    // auth: any takes either credential.
    assert_eq!(s.gw.get("/either", &[("x-api-key", KEY)]).status, 200);
    assert_eq!(
        s.gw.get("/either", &[("authorization", &bearer(&anon))])
            .status,
        200
    );
    let r = s.gw.get("/either", &[("x-api-key", "wrong")]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (401, "invalid_api_key")
    );
    let r = s.gw.get("/either", &[]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (401, "missing_credentials")
    );
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"portcullis\", ApiKey header=\"x-api-key\"")
    );
    // Anonymous callers are limited by issuer + sub.
    let alice = rsa.sign(&claims(&iss, "alice", ""));
    let bob = rsa.sign(&claims(&iss, "bob", ""));
    let statuses: Vec<u16> = (0..3)
        .map(|_| {
            s.gw.get("/limited", &[("authorization", &bearer(&alice))])
                .status
        })
        .collect();
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(
        s.gw.get("/limited", &[("authorization", &bearer(&bob))])
            .status,
        200
    );
    // The access log names the consumer, or the token's sub.
    let log = s.gw.access_log();
    let consumers: Vec<&str> = log.iter().filter_map(|l| l["consumer"].as_str()).collect();
    assert!(consumers.contains(&"web"), "{consumers:?}");
    assert!(consumers.contains(&"someone"), "{consumers:?}");
    let metrics = s.gw.metrics();
    let main_ok = format!("portcullis_jwks_refreshes_total{{issuer=\"{iss}\",result=\"ok\"}}");
    assert!(s.gw.metric(&main_ok) >= 1.0, "{metrics}");
    assert!(metrics.contains(&format!(
        "portcullis_jwks_refreshes_total{{issuer=\"{iss}\",result=\"error\"}} 0"
    )));
}

#[test]
fn bad_tokens_get_the_spec_answers_and_never_reach_the_upstream() {
    let rsa = Signer::rsa("rsa-1");
    let intruder = Signer::rsa("rsa-1"); // same kid, another key
    let other_key = Signer::ec("other-1");
    let s = setup(&[&rsa], &[&other_key], "10m");
    let iss = s.main.issuer();
    let good = rsa.sign(&claims(&iss, "u", ""));
    assert_eq!(accepted_soon(&s.gw, "/open", &good).status, 200);
    let before = s.upstream.requests().len();

    let t = now();
    let with = |patch: Value| {
        let mut c = claims(&iss, "u", "");
        for (k, v) in patch.as_object().expect("object") {
            if v.is_null() {
                c.as_object_mut().expect("object").remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        rsa.sign(&c)
    };
    let header_rs = seg(&json!({"alg": "RS256", "kid": "rsa-1"}));
    let payload = seg(&claims(&iss, "u", ""));
    let public_pem = {
        // The RSA public key as PEM: what a key-confusion attacker holds.
        let n = B64URL.decode(rsa.jwk["n"].as_str().expect("n")).expect("n");
        let e = B64URL.decode(rsa.jwk["e"].as_str().expect("e")).expect("e");
        let key = openssl::rsa::Rsa::from_public_components(
            openssl::bn::BigNum::from_slice(&n).expect("n"),
            openssl::bn::BigNum::from_slice(&e).expect("e"),
        )
        .expect("public key");
        key.public_key_to_pem().expect("pem")
    };
    let mut confused = Header::new(Algorithm::HS256);
    confused.kid = Some("rsa-1".into());
    let confusion = secret(
        encode(
            &confused,
            &claims(&iss, "u", ""),
            &EncodingKey::from_secret(&public_pem).expect("hs key"),
        )
        .expect("hs256 over the public key"),
    );
    let big = with(json!({"pad": "x".repeat(16 * 1024)}));
    let cases: Vec<(&str, Option<String>, u16, &str, &str)> = vec![
        ("no token", None, 401, "missing_token", ""),
        (
            "Bearer with nothing",
            Some("Bearer".into()),
            401,
            "invalid_token",
            "",
        ),
        (
            "not three segments",
            Some(bearer(&secret("abc.def".into()))),
            401,
            "invalid_token",
            "",
        ),
        (
            "bad base64url",
            Some(bearer(&secret("!!!.@@@.###".into()))),
            401,
            "invalid_token",
            "",
        ),
        (
            "payload not an object",
            Some(bearer(&secret(format!(
                "{header_rs}.{}.c2ln",
                seg(&json!([1, 2]))
            )))),
            401,
            "invalid_token",
            "",
        ),
        (
            "alg none",
            Some(bearer(&secret(format!(
                "{}.{payload}.",
                seg(&json!({"alg": "none"}))
            )))),
            401,
            "invalid_token",
            "",
        ),
        (
            "HS256 over the RSA public key",
            Some(bearer(&confusion)),
            401,
            "invalid_token",
            "",
        ),
        (
            "another issuer's key, this issuer's kid",
            Some(bearer(&intruder.sign(&claims(&iss, "u", "")))),
            401,
            "invalid_token",
            "signature",
        ),
        (
            "another issuer's key and kid",
            Some(bearer(&other_key.sign(&claims(&iss, "u", "")))),
            401,
            "invalid_token",
            "",
        ),
        (
            "expired",
            Some(bearer(&with(json!({"exp": t - 3600})))),
            401,
            "invalid_token",
            "expired",
        ),
        (
            "nbf in the future",
            Some(bearer(&with(json!({"nbf": t + 3600})))),
            401,
            "invalid_token",
            "not valid yet",
        ),
        (
            "iat in the future",
            Some(bearer(&with(json!({"iat": t + 3600})))),
            401,
            "invalid_token",
            "not valid yet",
        ),
        (
            "wrong iss",
            Some(bearer(&with(json!({"iss": "https://evil.example/"})))),
            401,
            "invalid_token",
            "issuer or audience",
        ),
        (
            "wrong aud",
            Some(bearer(&with(json!({"aud": "billing-api"})))),
            401,
            "invalid_token",
            "issuer or audience",
        ),
        (
            "missing exp",
            Some(bearer(&with(json!({"exp": null})))),
            401,
            "invalid_token",
            "",
        ),
        ("16 KiB token", Some(bearer(&big)), 401, "invalid_token", ""),
    ];
    for (name, auth, status, code, says) in &cases {
        let headers: Vec<(&str, &str)> = auth
            .iter()
            .map(|a| ("authorization", a.as_str()))
            .chain([("x-api-key", KEY)])
            .collect();
        let r = s.gw.get("/open", &headers);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (*status, *code),
            "{name}"
        );
        let challenge = if *code == "missing_token" {
            "Bearer realm=\"portcullis\""
        } else {
            "Bearer error=\"invalid_token\""
        };
        assert_eq!(r.header("www-authenticate"), Some(challenge), "{name}");
        let message = r.json()["message"].as_str().unwrap_or_default().to_string();
        assert!(message.contains(says), "{name}: {message:?}");
        if let Some(a) = auth {
            let token = a.trim_start_matches("Bearer").trim();
            assert!(
                token.is_empty() || !r.text().contains(token),
                "{name}: the token is echoed"
            );
        }
    }
    // Scopes: 403 with the needed scope in the challenge.
    let r = s.gw.get("/orders", &[("authorization", &bearer(&good))]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (403, "insufficient_scope")
    );
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer error=\"insufficient_scope\", scope=\"orders:read\"")
    );
    assert_eq!(
        s.upstream.requests().len(),
        before,
        "a refused request reached the upstream"
    );
    let reason = |r: &str, why: &str| {
        s.gw.metric(&format!(
            "portcullis_auth_failures_total{{reason=\"{why}\",route=\"{r}\"}}"
        ))
    };
    assert_eq!(reason("open", "missing_token"), 1.0);
    assert_eq!(reason("open", "invalid_token"), (cases.len() - 1) as f64);
    assert_eq!(reason("orders", "insufficient_scope"), 1.0);
    assert_eq!(
        reason("either", "missing_credentials"),
        0.0,
        "exported from zero"
    );
    assert!(s.gw.metrics().contains(
        "portcullis_auth_failures_total{reason=\"missing_credentials\",route=\"either\"} 0"
    ));
    // No token in any log line of the gateway.
    let logs = format!("{}{}", s.gw.stdout(), s.gw.stderr());
    for (name, auth, ..) in &cases {
        if let Some(token) = auth
            .as_deref()
            .map(|a| a.trim_start_matches("Bearer").trim())
        {
            assert!(
                token.is_empty() || !logs.contains(token),
                "{name}: token in the logs"
            );
        }
    }
    assert!(!logs.contains(&s.hs_secret), "the HS secret in the logs");
}

#[test]
fn key_rotation_works_without_reload_and_unknown_kids_fetch_at_most_once_per_10s() {
    let (old, new) = (Signer::rsa("k-old"), Signer::ec("k-new"));
    let s = setup(&[&old], &[], "10m");
    let iss = s.main.issuer();
    let first_fetch = Instant::now();
    let old_token = old.sign(&claims(&iss, "u", ""));
    assert_eq!(accepted_soon(&s.gw, "/open", &old_token).status, 200);
    // The IdP starts serving the new key; the last fetch was under 10 s ago,
    // so the unknown kid is refused at once and fetches nothing.
    s.main.serve(&[&old, &new]);
    let new_token = new.sign(&claims(&iss, "u", ""));
    let r = s.gw.get("/open", &[("authorization", &bearer(&new_token))]);
    assert_eq!((r.status, r.error_code().as_str()), (401, "invalid_token"));
    assert_eq!(s.main.fetches(), 1);
    // 10 s after the last fetch: one unknown kid fetches, and the token that
    // asked is accepted by that very fetch.
    std::thread::sleep(Duration::from_millis(10_300).saturating_sub(first_fetch.elapsed()));
    let r = s.gw.get("/open", &[("authorization", &bearer(&new_token))]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.main.fetches(), 2);
    let second_fetch = Instant::now();
    // Hammering with unknown kids fetches nothing more within 10 s.
    for i in 0..40 {
        let t = new.sign_as(&format!("unknown-{i}"), &claims(&iss, "u", ""));
        let r = s.gw.get("/open", &[("authorization", &bearer(&t))]);
        assert_eq!(r.status, 401);
    }
    assert_eq!(
        s.main.fetches(),
        2,
        "unknown kids fetched more than once per 10 s"
    );
    // The old key keeps working while in the set; once a fetch drops it, its
    // tokens (remembered or not) are refused.
    assert_eq!(
        s.gw.get("/open", &[("authorization", &bearer(&old_token))])
            .status,
        200
    );
    s.main.serve(&[&new]);
    std::thread::sleep(Duration::from_millis(10_300).saturating_sub(second_fetch.elapsed()));
    let probe = new.sign_as("unknown-probe", &claims(&iss, "u", ""));
    s.gw.get("/open", &[("authorization", &bearer(&probe))]);
    assert_eq!(s.main.fetches(), 3);
    let r = s.gw.get("/open", &[("authorization", &bearer(&old_token))]);
    assert_eq!((r.status, r.error_code().as_str()), (401, "invalid_token"));
    assert_eq!(
        s.gw.get("/open", &[("authorization", &bearer(&new_token))])
            .status,
        200
    );
}

#[test]
fn a_failed_jwks_fetch_keeps_the_last_good_keys_and_readiness_never_waits() {
    let key = Signer::ed("ed-1");
    let s = setup(&[&key], &[], "1s");
    let iss = s.main.issuer();
    let token = key.sign(&claims(&iss, "u", ""));
    assert_eq!(accepted_soon(&s.gw, "/open", &token).status, 200);
    *s.main.failing.lock().expect("lock") = true;
    let fetched = s.main.backend.requests().len();
    let deadline = Instant::now() + Duration::from_secs(10);
    let error = format!("portcullis_jwks_refreshes_total{{issuer=\"{iss}\",result=\"error\"}}");
    while s.gw.metric(&error) < 1.0 {
        assert!(Instant::now() < deadline, "no failed refresh counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(s.main.backend.requests().len() > fetched);
    // A fresh token (not remembered) still verifies with the last good keys.
    let fresh = key.sign(&claims(&iss, "v", ""));
    assert_eq!(
        s.gw.get("/open", &[("authorization", &bearer(&fresh))])
            .status,
        200
    );
    assert!(
        s.gw.stderr().contains("the last good keys stay"),
        "the failure is logged"
    );

    // An IdP that is not there at all: the gateway is ready anyway.
    let gone = free_port();
    let upstream = Backend::echo();
    let config = format!(
        "{head}auth:\n  jwt:\n    issuers:\n      - issuer: nowhere\n        jwks_url: http://127.0.0.1:{gone}/jwks.json\n\
         upstreams:\n  u: {{ peers: [\"{peer}\"] }}\nroutes:\n  - {{ name: open, path: /open, upstream: u, auth: jwt }}\n",
        head = config_head(),
        peer = upstream.addr,
    );
    let gw = Gateway::start(&config);
    let t = key.sign(&json!({"iss": "nowhere", "exp": now() + 60}));
    let r = gw.get("/open", &[("authorization", &bearer(&t))]);
    assert_eq!((r.status, r.error_code().as_str()), (401, "invalid_token"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.metric("portcullis_jwks_refreshes_total{issuer=\"nowhere\",result=\"error\"}") < 1.0 {
        assert!(Instant::now() < deadline, "no failed fetch counted");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn jwks_file_issuers_are_read_at_start_and_on_reload() {
    let (a, b) = (Signer::rsa("file-a"), Signer::ed("file-b"));
    let upstream = Backend::echo();
    let dir = temp_dir("jwks-file");
    let file = dir.join("jwks.json");
    std::fs::write(&file, json!({"keys": [a.jwk]}).to_string()).expect("write jwks");
    let config = format!(
        "{head}auth:\n  jwt:\n    issuers:\n      - issuer: internal\n        jwks_file: {file}\n\
         upstreams:\n  u: {{ peers: [\"{peer}\"] }}\nroutes:\n  - {{ name: open, path: /open, upstream: u, auth: jwt }}\n",
        head = config_head(),
        file = file.display(),
        peer = upstream.addr,
    );
    let gw = Gateway::start(&config);
    let claims = json!({"iss": "internal", "sub": "svc", "exp": now() + 600});
    let (ta, tb) = (a.sign(&claims), b.sign(&claims));
    assert_eq!(
        gw.get("/open", &[("authorization", &bearer(&ta))]).status,
        200
    );
    assert_eq!(
        gw.get("/open", &[("authorization", &bearer(&tb))]).status,
        401
    );
    std::fs::write(&file, json!({"keys": [b.jwk]}).to_string()).expect("write jwks");
    assert_eq!(gw.post_reload().status, 200);
    assert_eq!(
        gw.get("/open", &[("authorization", &bearer(&tb))]).status,
        200
    );
    // The reload forgot the remembered token along with its key.
    assert_eq!(
        gw.get("/open", &[("authorization", &bearer(&ta))]).status,
        401
    );
}

#[test]
fn config_errors_of_spec_8_1_are_listed_with_positions() {
    let dir = temp_dir("jwt-config");
    let path = dir.join("gateway.yaml");
    let text = format!(
        "{head}auth:\n  jwt:\n    issuers:\n      - issuer: a\n        jwks_url: http://127.0.0.1:1/k\n        algorithms: [none, HS256]\n\
         upstreams:\n  u: {{ peers: [\"127.0.0.1:9\"] }}\nroutes:\n  - {{ name: r, path: /, upstream: u, auth: jwt }}\n",
        head = config_head().replace("{listen}", "127.0.0.1:1").replace("{admin}", "127.0.0.1:2"),
    );
    std::fs::write(&path, text).expect("write config");
    let out = std::process::Command::new(BIN)
        .arg("-c")
        .arg(&path)
        .arg("--test")
        .output()
        .expect("run --test");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(":15:22: auth.jwt.issuers[0].algorithms[0]: `none` is never allowed"),
        "{stderr}"
    );
    assert!(
        stderr.contains(":15:28: auth.jwt.issuers[0].algorithms[1]: HS256 needs `secret`"),
        "{stderr}"
    );
}

/// A JWKS endpoint over TLS with a self-signed certificate for `localhost`
/// (Pingora verifies host names, not IP addresses, against a certificate).
fn tls_jwks(doc: String) -> (std::net::SocketAddr, std::path::PathBuf) {
    use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod};
    use std::io::{BufRead, BufReader};
    let dir = temp_dir("jwks-tls");
    let (cert, key) = self_signed(&dir, "localhost");
    let mut acceptor = SslAcceptor::mozilla_intermediate(SslMethod::tls()).expect("acceptor");
    acceptor.set_certificate_chain_file(&cert).expect("cert");
    acceptor
        .set_private_key_file(&key, SslFiletype::PEM)
        .expect("key");
    let acceptor = Arc::new(acceptor.build());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (acceptor, doc) = (acceptor.clone(), doc.clone());
            std::thread::spawn(move || {
                // A client that does not trust the certificate ends here.
                let Ok(tls) = acceptor.accept(stream) else {
                    return;
                };
                let mut reader = BufReader::new(tls);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{doc}",
                    doc.len()
                );
                let _ = reader.get_mut().write_all(answer.as_bytes());
            });
        }
    });
    (addr, cert)
}

#[test]
fn https_jwks_urls_are_fetched_with_certificate_verification() {
    let key = Signer::ec("tls-1");
    let (addr, cert) = tls_jwks(json!({"keys": [key.jwk]}).to_string());
    let upstream = Backend::echo();
    let config = format!(
        "{head}auth:\n  jwt:\n    issuers:\n      - issuer: tls\n        jwks_url: https://localhost:{port}/jwks.json\n\
         upstreams:\n  u: {{ peers: [\"{peer}\"] }}\nroutes:\n  - {{ name: open, path: /open, upstream: u, auth: jwt }}\n",
        head = config_head(),
        port = addr.port(),
        peer = upstream.addr,
    );
    let token = key.sign(&json!({"iss": "tls", "exp": now() + 600}));
    let wait_for = |gw: &Gateway, series: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while gw.metric(series) < 1.0 {
            assert!(Instant::now() < deadline, "{series} never counted");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // Trusting the certificate (OpenSSL's SSL_CERT_FILE): fetched and used.
    let trusting =
        Gateway::start_with_env(&config, &[("SSL_CERT_FILE", cert.to_str().expect("path"))]);
    wait_for(
        &trusting,
        "portcullis_jwks_refreshes_total{issuer=\"tls\",result=\"ok\"}",
    );
    assert_eq!(accepted_soon(&trusting, "/open", &token).status, 200);
    // Not trusting it: the fetch fails and no key is taken from it.
    let wary = Gateway::start(&config);
    wait_for(
        &wary,
        "portcullis_jwks_refreshes_total{issuer=\"tls\",result=\"error\"}",
    );
    let r = wary.get("/open", &[("authorization", &bearer(&token))]);
    assert_eq!((r.status, r.error_code().as_str()), (401, "invalid_token"));
}

/// A gateway whose one route `/cached` takes HS256 tokens of issuer
/// `legacy` and caches for 60 s, with `route_extra` on the route and
/// `upstream_extra` on the upstream; and the HS key to sign with.
fn cached_token_route(
    upstream: &Backend,
    route_extra: &str,
    upstream_extra: &str,
) -> (Gateway, EncodingKey) {
    let hs_secret = secret(format!("hs-{:032x}", rand_u128(now() as u128)));
    let config = format!(
        "{head}auth:
  jwt:
    issuers:
      - issuer: legacy
        secret: \"${{JWT_HS_SECRET}}\"
        algorithms: [HS256]
cache: {{ max_size: 1MiB }}
upstreams:
  u: {{ peers: [\"{peer}\"]{upstream_extra} }}
routes:
  - {{ name: cached, path: /cached, upstream: u, auth: jwt, cache: {{ ttl: 60s }}{route_extra} }}
",
        head = config_head(),
        peer = upstream.addr,
    );
    let gw = Gateway::start_with_env(&config, &[("JWT_HS_SECRET", hs_secret.as_str())]);
    let key = EncodingKey::from_secret(hs_secret.as_bytes()).expect("hs key");
    (gw, key)
}

/// A cached `auth: jwt` route (SPEC §8.1 with §8.2): two anonymous token
/// holders (no consumer named by `sub`) never share an entry, and the same
/// holder's repeat is a hit. The backend answers with the `sub` the gateway
/// set, so a crossed entry would show.
#[test]
fn anonymous_token_callers_never_share_cache_entries() {
    let upstream = Backend::start(|r| {
        Answer::json(200, &format!("\"{}\"", r.header("x-user-id").unwrap_or("")))
            .with_header("cache-control", "max-age=60")
    });
    let (gw, key) = cached_token_route(&upstream, ", claims_to_headers: { x-user-id: sub }", "");
    let token = |sub: &str| {
        let header = Header::new(Algorithm::HS256);
        secret(encode(&header, &claims("legacy", sub, ""), &key).expect("sign"))
    };
    let (ann, ben) = (token("ann-anon"), token("ben-anon"));

    let first = gw.get("/cached", &[("authorization", &bearer(&ann))]);
    assert_eq!((first.status, first.text().as_str()), (200, "\"ann-anon\""));
    let other = gw.get("/cached", &[("authorization", &bearer(&ben))]);
    assert_eq!(
        other.text(),
        "\"ben-anon\"",
        "one token holder's entry was served to another"
    );
    let again = gw.get("/cached", &[("authorization", &bearer(&ann))]);
    assert_eq!(again.text(), "\"ann-anon\"");
    assert_eq!(again.header("cache-status"), Some("portcullis; hit"));
    assert_eq!(upstream.requests().len(), 2);
    assert_eq!(gw.get("/cached", &[]).status, 401, "a hit needs a token");
}

/// Tokens without `sub` name no one in particular: on a cached route they
/// bypass the cache rather than share one entry per issuer. And an
/// `authorization` the upstream is configured with (its own credential)
/// survives the removal of the client's token.
#[test]
fn tokens_without_sub_bypass_the_cache_and_the_upstreams_own_authorization_stays() {
    let upstream = Backend::start(|r| {
        Answer::json(200, &format!("\"{}\"", r.header("x-tenant").unwrap_or("")))
            .with_header("cache-control", "max-age=60")
    });
    let (gw, key) = cached_token_route(
        &upstream,
        ", claims_to_headers: { x-tenant: tid }",
        ", headers: { authorization: \"Basic c3ZjOnVwc3RyZWFt\" }",
    );
    let token = |tid: &str| {
        let t = now();
        let claims = json!({ "iss": "legacy", "tid": tid, "exp": t + 600, "iat": t });
        secret(encode(&Header::new(Algorithm::HS256), &claims, &key).expect("sign"))
    };
    let (t1, t2) = (token("tenant-1"), token("tenant-2"));
    let first = gw.get("/cached", &[("authorization", &bearer(&t1))]);
    assert_eq!((first.status, first.text().as_str()), (200, "\"tenant-1\""));
    let other = gw.get("/cached", &[("authorization", &bearer(&t2))]);
    assert_eq!(other.text(), "\"tenant-2\"", "tenant-1's entry was served");
    assert_eq!(other.header("cache-status"), Some("portcullis; fwd=bypass"));
    assert_eq!(upstream.requests().len(), 2);
    assert_eq!(
        upstream.last().header("authorization"),
        Some("Basic c3ZjOnVwc3RyZWFt"),
        "the upstream's own credential, not the client's token"
    );
}
