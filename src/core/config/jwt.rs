//! Checks of `auth.jwt` and of the token fields of routes (SPEC §8.1) that a
//! single field's decoding cannot make.

use super::decode::Cx;
use super::schema::{AuthMode, Config, JwtConf, JwtIssuer, Route};
use std::collections::HashSet;
use std::time::Duration;

/// The shortest `jwks_refresh`: an unknown `kid` may refetch every 10 s anyway.
pub const MIN_JWKS_REFRESH: Duration = Duration::from_secs(1);

/// `auth.jwt`: issuers unique, one key source each, algorithms that fit it.
pub(super) fn validate_jwt(cx: &mut Cx<'_>, config: &Config) {
    let Some(jwt) = config.auth.as_ref().and_then(|a| a.jwt.as_ref()) else {
        return;
    };
    let conf: &JwtConf = &jwt.value;
    if conf.issuers.value.is_empty() && !cx.has_errors_under("auth.jwt.issuers") {
        cx.error_at(
            "auth.jwt.issuers",
            conf.issuers.mark,
            "at least one issuer is needed",
        );
    }
    let mut seen = HashSet::new();
    for (i, issuer) in conf.issuers.value.iter() {
        let path = format!("auth.jwt.issuers[{i}]");
        if !seen.insert(issuer.issuer.value.as_str()) {
            cx.error_at(
                &format!("{path}.issuer"),
                issuer.issuer.mark,
                format!("duplicate issuer {}", issuer.issuer.shown()),
            );
        }
        if issuer.issuer.value.is_empty() {
            cx.error_at(
                &format!("{path}.issuer"),
                issuer.issuer.mark,
                "an issuer cannot be empty",
            );
        }
        validate_issuer(cx, &path, issuer);
    }
    if let Some(claim) = conf.consumer_claim.as_ref().filter(|c| c.is_empty()) {
        let _ = claim;
        cx.error_at(
            "auth.jwt.consumer_claim",
            jwt.mark,
            "a claim name cannot be empty",
        );
    }
}

fn validate_issuer(cx: &mut Cx<'_>, path: &str, issuer: &JwtIssuer) {
    let sources = [
        issuer.jwks_url.as_ref().map(|s| ("jwks_url", s.mark)),
        issuer.jwks_file.as_ref().map(|s| ("jwks_file", s.mark)),
        issuer.secret.as_ref().map(|s| ("secret", s.mark)),
    ];
    let given: Vec<_> = sources.iter().flatten().collect();
    let failed = ["jwks_url", "jwks_file", "secret"]
        .iter()
        .any(|f| cx.has_errors_under(&format!("{path}.{f}")));
    match given.as_slice() {
        [_] => {}
        [] if failed => {}
        [] => cx.error_at(
            path,
            issuer.issuer.mark,
            "an issuer needs one of `jwks_url`, `jwks_file` or `secret`",
        ),
        [_, (second, mark), ..] => cx.error_at(
            &format!("{path}.{second}"),
            *mark,
            "an issuer takes only one of `jwks_url`, `jwks_file` or `secret`",
        ),
    }
    if let Some(url) = &issuer.jwks_url {
        if let Err(message) = check_jwks_url(&url.value) {
            cx.error_at(
                &format!("{path}.jwks_url"),
                url.mark,
                format!("{message}, found {}", url.shown()),
            );
        }
    }
    if let Some(secret) = issuer.secret.as_ref().filter(|s| s.value.is_empty()) {
        cx.error_at(
            &format!("{path}.secret"),
            secret.mark,
            "a secret cannot be empty",
        );
    }
    if let Some(refresh) = &issuer.jwks_refresh {
        if refresh.value < MIN_JWKS_REFRESH {
            cx.error_at(
                &format!("{path}.jwks_refresh"),
                refresh.mark,
                "must be at least 1s",
            );
        }
    }
    let Some(algorithms) = &issuer.algorithms else {
        return;
    };
    if algorithms.value.is_empty() {
        cx.error_at(
            &format!("{path}.algorithms"),
            algorithms.mark,
            "at least one algorithm is needed (omit the field for every one the key source allows)",
        );
    }
    for (a, alg) in algorithms.value.iter().enumerate() {
        let at = format!("{path}.algorithms[{a}]");
        if alg.value == super::JwtAlgorithm::None {
            cx.error_at(
                &at,
                alg.mark,
                "`none` is never allowed: an unsigned token proves nothing",
            );
        } else if alg.value.is_hmac() && issuer.secret.is_none() {
            cx.error_at(
                &at,
                alg.mark,
                format!(
                    "{:?} needs `secret`: HMAC algorithms are refused with `jwks_url` or `jwks_file` \
                     (a public key must never serve as an HMAC secret)",
                    alg.value
                ),
            );
        } else if !alg.value.is_hmac() && issuer.secret.is_some() {
            cx.error_at(
                &at,
                alg.mark,
                format!(
                    "{:?} needs a public key (`jwks_url` or `jwks_file`): `secret` takes HS256, HS384 or HS512",
                    alg.value
                ),
            );
        }
    }
}

/// `http://` or `https://`, a host, and nothing a request could not carry.
pub fn check_jwks_url(url: &str) -> Result<(), &'static str> {
    let expected = "expected a URL like \"https://login.example.com/.well-known/jwks.json\"";
    let uri: http::Uri = url.parse().map_err(|_| expected)?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(expected),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(expected);
    }
    Ok(())
}

/// A route's `auth`, `scopes`, `claims_to_headers` and `forward_token`.
pub(super) fn check_route(cx: &mut Cx<'_>, path: &str, route: &Route, config: &Config) {
    let has_jwt = config.auth.as_ref().is_some_and(|a| a.jwt.is_some());
    let mode = route.auth.as_ref().map(|a| a.value).unwrap_or_default();
    if let Some(auth) = route.auth.as_ref().filter(|a| a.value.takes_tokens()) {
        let jwt_failed = cx.has_errors_under("auth.jwt");
        if !has_jwt && !jwt_failed {
            cx.error_at(
                &format!("{path}.auth"),
                auth.mark,
                format!(
                    "`auth: {}` needs `auth.jwt` with at least one issuer",
                    if auth.value == AuthMode::Jwt {
                        "jwt"
                    } else {
                        "any"
                    }
                ),
            );
        }
    }
    let token_only = [
        route.scopes.as_ref().map(|s| ("scopes", s.mark)),
        route
            .claims_to_headers
            .as_ref()
            .map(|s| ("claims_to_headers", s.mark)),
        route
            .forward_token
            .as_ref()
            .map(|s| ("forward_token", s.mark)),
    ];
    if !mode.takes_tokens() {
        for (field, mark) in token_only.iter().flatten() {
            cx.error_at(
                &format!("{path}.{field}"),
                *mark,
                format!("`{field}` needs `auth: jwt` or `auth: any`"),
            );
        }
    }
    if let Some(scopes) = &route.scopes {
        if scopes.value.iter().any(|s| s.is_empty() || s.contains(' ')) {
            cx.error_at(
                &format!("{path}.scopes"),
                scopes.mark,
                "a scope is one word without spaces",
            );
        }
    }
    if let Some(table) = &route.claims_to_headers {
        for (name, claim) in table.value.0.iter() {
            let at = format!("{path}.claims_to_headers.{}", name.value);
            if http::HeaderName::from_bytes(name.value.to_ascii_lowercase().as_bytes()).is_err() {
                cx.error_at(&at, name.mark, "not a valid header name");
            } else if claim.is_empty() {
                cx.error_at(&at, name.mark, "expected a claim name like \"sub\"");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::core::config::load_str;

    fn errors(src: &str) -> Vec<String> {
        let env = |name: &str| (name == "HS_SECRET").then(|| "s3cret-from-env".to_string());
        match load_str(src, "gateway.yaml", &env) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    const HEAD: &str =
        "listen: [{ addr: \"127.0.0.1:8000\" }]\nupstreams: { u: { peers: [\"127.0.0.1:9\"] } }\n";

    #[test]
    fn a_valid_jwt_section_loads() {
        let src = format!(
            "{HEAD}auth:
  jwt:
    issuers:
      - issuer: https://idp.test/
        audiences: [orders-api]
        jwks_url: http://127.0.0.1:1/jwks.json
        jwks_refresh: 10m
        algorithms: [RS256, ES256, EdDSA]
      - issuer: legacy
        secret: \"${{HS_SECRET}}\"
        algorithms: [HS256]
    consumer_claim: sub
    leeway: 30s
routes:
  - {{ name: a, path: /a, upstream: u, auth: jwt, scopes: [orders:read],
      claims_to_headers: {{ x-user-id: sub }}, forward_token: true }}
  - {{ name: b, path: /b, upstream: u, auth: any }}
"
        );
        assert_eq!(errors(&src), Vec::<String>::new());
    }

    #[test]
    fn spec_config_errors_have_positions() {
        let src = format!(
            "{HEAD}auth:
  jwt:
    issuers:
      - issuer: a
        jwks_url: http://127.0.0.1:1/jwks.json
        algorithms: [none, HS256]
      - issuer: b
        jwks_file: /nonexistent/jwks.json
        algorithms: [HS512]
      - issuer: c
        secret: \"${{HS_SECRET}}\"
        algorithms: [RS256]
      - issuer: d
      - issuer: e
        jwks_url: ftp://idp/keys
routes:
  - {{ name: a, path: /a, upstream: u, auth: jwt }}
"
        );
        let got = errors(&src).join("\n");
        for expected in [
            "gateway.yaml:8:22: auth.jwt.issuers[0].algorithms[0]: `none` is never allowed",
            "gateway.yaml:8:28: auth.jwt.issuers[0].algorithms[1]: HS256 needs `secret`",
            "gateway.yaml:11:22: auth.jwt.issuers[1].algorithms[0]: HS512 needs `secret`",
            "gateway.yaml:14:22: auth.jwt.issuers[2].algorithms[0]: RS256 needs a public key",
            "gateway.yaml:15:17: auth.jwt.issuers[3]: an issuer needs one of `jwks_url`, `jwks_file` or `secret`",
            "gateway.yaml:17:19: auth.jwt.issuers[4].jwks_url: expected a URL like",
        ] {
            assert!(got.contains(expected), "missing {expected:?} in:\n{got}");
        }
        assert!(!got.contains("s3cret-from-env"), "a secret is never shown");
    }

    #[test]
    fn token_routes_need_auth_jwt() {
        let src = format!(
            "{HEAD}routes:
  - {{ name: a, path: /a, upstream: u, auth: jwt }}
  - {{ name: b, path: /b, upstream: u, auth: any }}
  - {{ name: c, path: /c, upstream: u, scopes: [x], forward_token: true }}
"
        );
        let got = errors(&src);
        assert_eq!(
            got,
            vec![
                "gateway.yaml:4:45: routes[0].auth: `auth: jwt` needs `auth.jwt` with at least one issuer",
                "gateway.yaml:5:45: routes[1].auth: `auth: any` needs `auth.jwt` with at least one issuer",
                "gateway.yaml:6:47: routes[2].scopes: `scopes` needs `auth: jwt` or `auth: any`",
                "gateway.yaml:6:67: routes[2].forward_token: `forward_token` needs `auth: jwt` or `auth: any`",
            ]
        );
    }

    #[test]
    fn one_key_source_per_issuer_and_unique_names() {
        let src = format!(
            "{HEAD}auth:
  jwt:
    issuers:
      - {{ issuer: a, jwks_url: \"http://127.0.0.1:1/k\", secret: x }}
      - {{ issuer: a, secret: y, jwks_refresh: 0s }}
routes: []
"
        );
        let got = errors(&src).join("\n");
        assert!(
            got.contains("auth.jwt.issuers[0].secret: an issuer takes only one of"),
            "{got}"
        );
        assert!(
            got.contains("auth.jwt.issuers[1].issuer: duplicate issuer \"a\""),
            "{got}"
        );
        assert!(
            got.contains("auth.jwt.issuers[1].jwks_refresh: must be at least 1s"),
            "{got}"
        );
    }
}
