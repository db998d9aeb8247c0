//! A route's `match` conditions (SPEC §8.3): headers and query parameters a
//! request must carry, all of them, for the route to match. Pure logic: the
//! router asks [`Conditions::hold`] of a candidate route's conditions.
//!
//! Conditions are judged on the client's request as received, before the
//! gateway adds or replaces anything (`x-forwarded-*`, `x-request-id`, a
//! started `traceparent`, the upstream's `headers`): a header the gateway sets
//! is never what a condition sees.

use http::{HeaderMap, HeaderName};
use percent_encoding::percent_decode_str;

/// What a condition wants of a header or query parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// `"*"`: present, with any value (an empty one too).
    Present,
    /// This value exactly (case-sensitive).
    Exact(String),
}

impl Want {
    pub fn of(written: &str) -> Want {
        if written == "*" {
            Want::Present
        } else {
            Want::Exact(written.to_string())
        }
    }

    fn accepts(&self, value: &[u8]) -> bool {
        match self {
            Want::Present => true,
            Want::Exact(want) => want.as_bytes() == value,
        }
    }
}

/// The conditions of one route; empty: the route has no `match`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conditions {
    /// Lower-case names (`HeaderName` is), compared case-insensitively.
    pub headers: Vec<(HeaderName, Want)>,
    /// Names and values as decoded text (`%20` is a space; `+` stays `+`).
    pub query: Vec<(String, Want)>,
}

impl Conditions {
    /// How many conditions: more beat fewer among otherwise equal routes.
    pub fn len(&self) -> usize {
        self.headers.len() + self.query.len()
    }

    pub fn is_empty(&self) -> bool {
        self.headers.is_empty() && self.query.is_empty()
    }

    /// Whether every condition holds for a request with these headers and
    /// query string (without `?`). A header or parameter sent several times
    /// holds when one of its values does.
    pub fn hold(&self, headers: &HeaderMap, query: Option<&str>) -> bool {
        self.headers.iter().all(|(name, want)| {
            headers
                .get_all(name)
                .iter()
                .any(|v| want.accepts(v.as_bytes()))
        }) && self
            .query
            .iter()
            .all(|(name, want)| query.is_some_and(|q| query_holds(q, name, want)))
    }
}

/// Whether some `name[=value]` pair of `query` has the name and a value `want`
/// accepts; compared after percent-decoding, without allocating.
fn query_holds(query: &str, name: &str, want: &Want) -> bool {
    query.split('&').any(|pair| {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        if !percent_decode_str(n).eq(name.bytes()) {
            return false;
        }
        match want {
            Want::Present => true,
            Want::Exact(w) => percent_decode_str(v).eq(w.bytes()),
        }
    })
}

/// Headers no condition may name: those of one connection, not of the request
/// (RFC 9110 §7.6.1), which the gateway removes.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// A header name as a condition may use it, or why not. `key_header` is the
/// gateway's API-key header: only `"*"` may be asked of it (a key in the
/// config is a secret in plain text; consumers are for keys).
pub fn condition_header(
    name: &str,
    want: &Want,
    key_header: &HeaderName,
) -> Result<HeaderName, String> {
    if name.starts_with(':') {
        return Err(format!(
            "{name:?} is a pseudo-header: match the path with `path`, the host with `host`"
        ));
    }
    let header = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| format!("{name:?} is not a valid header name"))?;
    if HOP_BY_HOP.contains(&header.as_str()) {
        return Err(format!(
            "{name:?} is hop-by-hop (it describes one connection): it cannot be matched"
        ));
    }
    if header == http::header::HOST {
        return Err("match the host with the route's `host`, not a header condition".into());
    }
    if header == key_header && *want != Want::Present {
        return Err(format!(
            "only \"*\" may be asked of the API-key header {name:?}: keys belong in `consumers`"
        ));
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        map
    }

    fn when(h: &[(&str, &str)], q: &[(&str, &str)]) -> Conditions {
        Conditions {
            headers: h
                .iter()
                .map(|(k, v)| {
                    (
                        HeaderName::from_bytes(k.as_bytes()).expect("name"),
                        Want::of(v),
                    )
                })
                .collect(),
            query: q
                .iter()
                .map(|(k, v)| (k.to_string(), Want::of(v)))
                .collect(),
        }
    }

    #[test]
    fn header_names_ignore_case_values_are_exact() {
        let c = when(&[("x-api-version", "2")], &[]);
        assert!(c.hold(&headers(&[("X-Api-Version", "2")]), None));
        assert!(!c.hold(&headers(&[("x-api-version", "20")]), None));
        assert!(!c.hold(&headers(&[("x-api-version", " 2x")]), None));
        assert!(!c.hold(&headers(&[]), None));
        let c = when(&[("x-flavour", "Blue")], &[]);
        assert!(
            !c.hold(&headers(&[("x-flavour", "blue")]), None),
            "case-sensitive"
        );
    }

    #[test]
    fn a_repeated_header_holds_when_one_value_does() {
        let c = when(&[("x-v", "2")], &[]);
        assert!(c.hold(&headers(&[("x-v", "1"), ("x-v", "2")]), None));
        assert!(!c.hold(&headers(&[("x-v", "1, 2")]), None), "whole values");
    }

    #[test]
    fn star_means_present_with_any_value_even_empty() {
        let c = when(&[("x-beta", "*")], &[("beta", "*")]);
        let h = headers(&[("x-beta", "")]);
        assert!(c.hold(&h, Some("beta")));
        assert!(c.hold(&h, Some("beta=")));
        assert!(c.hold(&h, Some("a=1&beta=yes")));
        assert!(!c.hold(&h, Some("betamax=1")));
        assert!(!c.hold(&h, Some("")));
        assert!(!c.hold(&h, None));
        assert!(!c.hold(&headers(&[]), Some("beta")), "every condition");
    }

    #[test]
    fn query_values_are_exact_after_percent_decoding() {
        let c = when(&[], &[("v", "a b"), ("k", "X")]);
        assert!(c.hold(&HeaderMap::new(), Some("v=a%20b&k=X")));
        assert!(
            !c.hold(&HeaderMap::new(), Some("v=a+b&k=X")),
            "+ is not a space"
        );
        assert!(
            !c.hold(&HeaderMap::new(), Some("v=a%20b&k=x")),
            "case-sensitive"
        );
        assert!(
            c.hold(&HeaderMap::new(), Some("k=Y&v=a%20b&k=X")),
            "one of several"
        );
        assert!(!when(&[], &[("v", "")]).hold(&HeaderMap::new(), Some("w=1")));
        assert!(when(&[], &[("v", "")]).hold(&HeaderMap::new(), Some("v")));
    }

    #[test]
    fn names_a_condition_cannot_use() {
        let key = HeaderName::from_static("x-api-key");
        let ok = |n: &str| condition_header(n, &Want::of("1"), &key);
        assert_eq!(
            ok("X-Api-Version").expect("valid").as_str(),
            "x-api-version"
        );
        for bad in [
            ":path",
            ":authority",
            "Connection",
            "te",
            "upgrade",
            "transfer-encoding",
        ] {
            assert!(ok(bad).is_err(), "{bad}");
        }
        assert!(ok("bad name").is_err());
        assert!(ok("x-ü").is_err());
        assert!(ok("host").is_err());
        assert!(ok("x-api-key").is_err(), "a key in the config");
        assert!(condition_header("x-api-key", &Want::Present, &key).is_ok());
        assert!(ok(":path").is_err_and(|m| m.contains("pseudo-header")));
    }
}
