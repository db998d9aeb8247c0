//! Bearer-token verification, cold (signature and claims checked, as for a
//! token seen the first time) against remembered (the memory of verified
//! tokens, as for a client repeating its token), for RS256, ES256 and EdDSA.
//! Keys and tokens are made at start; the issuer reads them from a JWKS file.
//!
//! Run: `cargo bench --bench jwt` (add `-- --warm-up-time 1 --measurement-time 2`
//! for a quick pass).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use portcullis::core::auth::KeyStore;
use portcullis::core::config::{self, Cx};
use portcullis::tables::jwt::{unix_now, TokenIssuers};
use serde_json::json;

fn signer(alg: Algorithm) -> EncodingKey {
    use openssl::pkey::PKey;
    match alg {
        Algorithm::RS256 => {
            let rsa = openssl::rsa::Rsa::generate(2048).expect("rsa");
            EncodingKey::from_rsa_der(&rsa.private_key_to_der().expect("der"))
        }
        Algorithm::ES256 => {
            let group = openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1)
                .expect("p-256");
            let ec = openssl::ec::EcKey::generate(&group).expect("ec");
            let der = PKey::from_ec_key(ec).expect("pkey").private_key_to_pkcs8();
            EncodingKey::from_ec_der(&der.expect("pkcs8"))
        }
        _ => {
            let der = PKey::generate_ed25519()
                .expect("ed25519")
                .private_key_to_pkcs8();
            EncodingKey::from_ed_der(&der.expect("pkcs8"))
        }
    }
}

fn verify(c: &mut Criterion) {
    let algs = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];
    let mut jwks = Vec::new();
    let mut tokens = Vec::new();
    let claims = json!({
        "iss": "bench", "sub": "client-1", "aud": "api", "scope": "orders:read",
        "exp": unix_now() + 3600, "iat": unix_now(),
    });
    for alg in algs {
        let key = signer(alg);
        let kid = format!("{alg:?}");
        let mut jwk = Jwk::from_encoding_key(&key, alg).expect("jwk");
        jwk.common.key_id = Some(kid.clone());
        jwks.push(jwk);
        let mut header = Header::new(alg);
        header.kid = Some(kid);
        tokens.push((alg, encode(&header, &claims, &key).expect("sign")));
    }
    let dir = std::env::temp_dir().join(format!("portcullis-bench-jwt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("jwks.json");
    std::fs::write(&file, json!({ "keys": jwks }).to_string()).expect("write jwks");
    let yaml = format!(
        "listen: [{{ addr: \"127.0.0.1:1\" }}]\nauth:\n  jwt:\n    issuers:\n      - {{ issuer: bench, audiences: [api], jwks_file: \"{}\" }}\nroutes: []\n",
        file.display()
    );
    let conf = config::load_str(&yaml, "bench.yaml", &|_| None).expect("config");
    let no_env = |_: &str| None;
    let mut cx = Cx::new("bench.yaml", &no_env);
    let issuers = TokenIssuers::build(&mut cx, &conf).expect("auth.jwt");
    assert!(!cx.has_errors());
    let consumers = KeyStore::default();
    let now = unix_now();

    let mut group = c.benchmark_group("jwt_verify");
    for (alg, token) in &tokens {
        let name = format!("{alg:?}");
        assert!(
            issuers.verify(token, now, &consumers).is_ok(),
            "{name} verifies"
        );
        group.bench_with_input(BenchmarkId::new("cold", &name), token, |b, t| {
            b.iter(|| issuers.verify_signature_and_claims(black_box(t), now, &consumers))
        });
        group.bench_with_input(BenchmarkId::new("remembered", &name), token, |b, t| {
            b.iter(|| issuers.verify(black_box(t), now, &consumers))
        });
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, verify);
criterion_main!(benches);
