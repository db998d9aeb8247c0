//! Bearer tokens (SPEC §8.1), the pure part: reading `authorization`, the
//! claim checks after the signature verified, scope matching, and what a
//! verified token carries into the request. The signature itself is checked
//! by `jsonwebtoken` in `tables::jwt`.

use crate::core::auth::ConsumerId;
use serde_json::{Map, Value};

/// The longest token read. Real access tokens are well under 4 KiB; a larger
/// one is refused before any decoding, so it costs no more than its header read.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// What a request's `authorization` header holds, as a bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bearer<'a> {
    /// No `authorization`, or another scheme (`Basic ...`).
    Absent,
    /// `Bearer` with no token after it, or one that cannot be a token.
    Empty,
    Token(&'a str),
}

/// Reads `authorization: Bearer <token>` (the scheme is case-insensitive, RFC 9110 §11.1).
pub fn bearer(authorization: Option<&[u8]>) -> Bearer<'_> {
    let Some(value) = authorization else {
        return Bearer::Absent;
    };
    let Ok(text) = std::str::from_utf8(value) else {
        return Bearer::Absent;
    };
    let text = text.trim();
    let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Bearer::Absent;
    }
    match rest.trim() {
        "" => Bearer::Empty,
        token => Bearer::Token(token),
    }
}

/// Why a token was refused. The message says no more than SPEC §8.1 allows:
/// expired, not yet valid, bad signature, wrong issuer or audience, or just
/// not valid. It never holds the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFault {
    /// Not a well-formed, acceptable token (framing, encoding, `alg`, no `exp`...).
    Invalid,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuerOrAudience,
}

impl TokenFault {
    pub fn message(self) -> &'static str {
        match self {
            TokenFault::Invalid => "the bearer token is not valid",
            TokenFault::BadSignature => "the bearer token's signature does not verify",
            TokenFault::Expired => "the bearer token has expired",
            TokenFault::NotYetValid => "the bearer token is not valid yet",
            TokenFault::WrongIssuerOrAudience => {
                "the bearer token is not for this gateway (issuer or audience)"
            }
        }
    }
}

/// What an issuer's tokens must say, besides their signature.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRules<'a> {
    pub issuer: &'a str,
    /// `aud` must hold one of these; empty: not checked.
    pub audiences: &'a [String],
    /// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
    pub leeway: i64,
}

/// A NumericDate claim (RFC 7519 §2), whole seconds; fractions are cut.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, TokenFault> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or(TokenFault::Invalid),
        Some(_) => Err(TokenFault::Invalid),
    }
}

/// The claim checks of SPEC §8.1 at time `now` (Unix seconds). Returns `exp`.
pub fn check_claims(
    claims: &Map<String, Value>,
    rules: &ClaimRules<'_>,
    now: i64,
) -> Result<i64, TokenFault> {
    if claims.get("iss").and_then(Value::as_str) != Some(rules.issuer) {
        return Err(TokenFault::WrongIssuerOrAudience);
    }
    let exp = numeric_date(claims, "exp")?.ok_or(TokenFault::Invalid)?;
    if now >= exp.saturating_add(rules.leeway) {
        return Err(TokenFault::Expired);
    }
    for name in ["nbf", "iat"] {
        if numeric_date(claims, name)?.is_some_and(|t| t > now.saturating_add(rules.leeway)) {
            return Err(TokenFault::NotYetValid);
        }
    }
    if !rules.audiences.is_empty() {
        let wanted = |a: &str| rules.audiences.iter().any(|w| w == a);
        let matches = match claims.get("aud") {
            Some(Value::String(a)) => wanted(a),
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(wanted),
            _ => false,
        };
        if !matches {
            return Err(TokenFault::WrongIssuerOrAudience);
        }
    }
    Ok(exp)
}

/// The scopes a token grants: `scope` (space-separated, RFC 8693 / RFC 9068)
/// and `scp` (a list, or a space-separated string, as some IdPs write it).
pub fn granted_scopes(claims: &Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(s)) => out.extend(s.split_whitespace().map(str::to_string)),
            Some(Value::Array(list)) => {
                out.extend(list.iter().filter_map(Value::as_str).map(str::to_string))
            }
            _ => {}
        }
    }
    out
}

/// Whether `granted` holds every scope in `needed`.
pub fn has_scopes(granted: &[String], needed: &[String]) -> bool {
    needed.iter().all(|n| granted.iter().any(|g| g == n))
}

/// A claim as a header value: strings as they are, numbers and booleans as
/// JSON writes them, anything else as its JSON text.
pub fn claim_text(claims: &Map<String, Value>, name: &str) -> Option<String> {
    match claims.get(name)? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Who a verified token speaks for, kept for the request and remembered
/// until `exp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// Index of the issuer in the gateway's token tables.
    pub issuer: usize,
    pub exp: i64,
    /// The token's `sub`, for the access log of an anonymous caller.
    pub sub: Option<String>,
    /// The consumer its `consumer_claim` names, if any.
    pub consumer: Option<ConsumerId>,
    /// The rate-limit identity of an anonymous caller: issuer plus `sub`, digested.
    pub caller: u64,
    pub scopes: Vec<String>,
    pub claims: Map<String, Value>,
}

/// The rate-limit identity of issuer `iss` and subject `sub`: stable across
/// processes (a Redis store shares it), and one value per pair.
pub fn caller_id(iss: &str, sub: Option<&str>) -> u64 {
    let mut text = Vec::with_capacity(iss.len() + 1 + sub.map_or(0, str::len));
    text.extend_from_slice(iss.as_bytes());
    text.push(0);
    text.extend_from_slice(sub.unwrap_or("").as_bytes());
    let digest = openssl::sha::sha256(&text);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("an object"),
        }
    }

    const NOW: i64 = 1_700_000_000;

    fn rules<'a>(audiences: &'a [String]) -> ClaimRules<'a> {
        ClaimRules {
            issuer: "https://idp.test/",
            audiences,
            leeway: 30,
        }
    }

    #[test]
    fn bearer_reads_the_token_and_nothing_else() {
        assert_eq!(bearer(None), Bearer::Absent);
        assert_eq!(bearer(Some(b"Basic dXNlcjpwdw==")), Bearer::Absent);
        assert_eq!(bearer(Some(b"Bearer")), Bearer::Empty);
        assert_eq!(bearer(Some(b"Bearer   ")), Bearer::Empty);
        assert_eq!(bearer(Some(b"bearer a.b.c")), Bearer::Token("a.b.c"));
        assert_eq!(bearer(Some(b"BEARER  a.b.c ")), Bearer::Token("a.b.c"));
        assert_eq!(bearer(Some(b"Bearerx a.b.c")), Bearer::Absent);
    }

    #[test]
    fn a_current_token_passes_and_gives_its_exp() {
        let c =
            claims(json!({"iss": "https://idp.test/", "exp": NOW + 60, "nbf": NOW, "iat": NOW}));
        assert_eq!(check_claims(&c, &rules(&[]), NOW), Ok(NOW + 60));
    }

    #[test]
    fn exp_is_required_and_checked_with_leeway() {
        let missing = claims(json!({"iss": "https://idp.test/"}));
        assert_eq!(
            check_claims(&missing, &rules(&[]), NOW),
            Err(TokenFault::Invalid)
        );
        let text = claims(json!({"iss": "https://idp.test/", "exp": "tomorrow"}));
        assert_eq!(
            check_claims(&text, &rules(&[]), NOW),
            Err(TokenFault::Invalid)
        );
        let within = claims(json!({"iss": "https://idp.test/", "exp": NOW - 29}));
        assert!(check_claims(&within, &rules(&[]), NOW).is_ok());
        let past = claims(json!({"iss": "https://idp.test/", "exp": NOW - 30}));
        assert_eq!(
            check_claims(&past, &rules(&[]), NOW),
            Err(TokenFault::Expired)
        );
        let fraction = claims(json!({"iss": "https://idp.test/", "exp": (NOW + 10) as f64 + 0.5}));
        assert_eq!(check_claims(&fraction, &rules(&[]), NOW), Ok(NOW + 10));
    }

    #[test]
    fn nbf_and_iat_in_the_future_are_not_yet_valid() {
        for name in ["nbf", "iat"] {
            let mut c = claims(json!({"iss": "https://idp.test/", "exp": NOW + 600}));
            c.insert(name.into(), json!(NOW + 31));
            assert_eq!(
                check_claims(&c, &rules(&[]), NOW),
                Err(TokenFault::NotYetValid),
                "{name}"
            );
            c.insert(name.into(), json!(NOW + 30));
            assert!(
                check_claims(&c, &rules(&[]), NOW).is_ok(),
                "{name} within leeway"
            );
        }
    }

    #[test]
    fn issuer_and_audience_must_match() {
        let aud = vec!["orders-api".to_string(), "users-api".to_string()];
        let other =
            claims(json!({"iss": "https://evil.test/", "exp": NOW + 60, "aud": "orders-api"}));
        assert_eq!(
            check_claims(&other, &rules(&aud), NOW),
            Err(TokenFault::WrongIssuerOrAudience)
        );
        let one = claims(json!({"iss": "https://idp.test/", "exp": NOW + 60, "aud": "users-api"}));
        assert!(check_claims(&one, &rules(&aud), NOW).is_ok());
        let list = claims(
            json!({"iss": "https://idp.test/", "exp": NOW + 60, "aud": ["x", "orders-api"]}),
        );
        assert!(check_claims(&list, &rules(&aud), NOW).is_ok());
        let wrong = claims(json!({"iss": "https://idp.test/", "exp": NOW + 60, "aud": ["x"]}));
        assert_eq!(
            check_claims(&wrong, &rules(&aud), NOW),
            Err(TokenFault::WrongIssuerOrAudience)
        );
        let none = claims(json!({"iss": "https://idp.test/", "exp": NOW + 60}));
        assert_eq!(
            check_claims(&none, &rules(&aud), NOW),
            Err(TokenFault::WrongIssuerOrAudience)
        );
        assert!(
            check_claims(&none, &rules(&[]), NOW).is_ok(),
            "no audiences: not checked"
        );
    }

    #[test]
    fn scopes_from_scope_or_scp() {
        let needed = vec!["orders:read".to_string(), "orders:write".to_string()];
        let spaced = claims(json!({"scope": "openid orders:read  orders:write"}));
        assert!(has_scopes(&granted_scopes(&spaced), &needed));
        let listed = claims(json!({"scp": ["orders:read", "orders:write"]}));
        assert!(has_scopes(&granted_scopes(&listed), &needed));
        let partial = claims(json!({"scope": "orders:read"}));
        assert!(!has_scopes(&granted_scopes(&partial), &needed));
        let prefix = claims(json!({"scope": "orders:readwrite orders"}));
        assert!(!has_scopes(&granted_scopes(&prefix), &needed[..1]));
        assert!(has_scopes(&granted_scopes(&claims(json!({}))), &[]));
        assert!(!has_scopes(
            &granted_scopes(&claims(json!({"scope": 7}))),
            &needed[..1]
        ));
    }

    #[test]
    fn claims_as_header_text() {
        let c = claims(
            json!({"sub": "u-1", "n": 42, "admin": true, "roles": ["a", "b"], "gone": null}),
        );
        assert_eq!(claim_text(&c, "sub").as_deref(), Some("u-1"));
        assert_eq!(claim_text(&c, "n").as_deref(), Some("42"));
        assert_eq!(claim_text(&c, "admin").as_deref(), Some("true"));
        assert_eq!(claim_text(&c, "roles").as_deref(), Some("[\"a\",\"b\"]"));
        assert_eq!(claim_text(&c, "gone"), None);
        assert_eq!(claim_text(&c, "missing"), None);
    }

    #[test]
    fn caller_ids_part_issuers_and_subjects() {
        assert_eq!(caller_id("a", Some("b")), caller_id("a", Some("b")));
        assert_ne!(caller_id("a", Some("b")), caller_id("ab", Some("")));
        assert_ne!(caller_id("a", Some("b")), caller_id("c", Some("b")));
    }
}
