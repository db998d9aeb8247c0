//! The response cache's policy (SPEC §8.2), pure: a route's cache settings,
//! the key an answer is stored under, whether an upstream answer may be
//! stored and for how long (RFC 9111), and what `cache-status` (RFC 9211) and
//! the access log say of a request. The proxy feeds it Pingora's heads; the
//! storage lives in `proxy::cache_store`.

use http::header::{HeaderName, AGE, CACHE_CONTROL, DATE, EXPIRES, SET_COOKIE, VARY};
use http::HeaderMap;
use std::borrow::Cow;
use std::time::{Duration, SystemTime};

/// A route's `cache:` settings, with defaults applied. Compared on reload: a
/// route whose settings did not change keeps its entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePolicy {
    /// Freshness when the upstream gives none.
    pub ttl: Duration,
    /// Request headers added to the key (lowercase names).
    pub vary: Vec<HeaderName>,
    /// Each consumer has entries of its own.
    pub per_consumer: bool,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
}

/// The statuses stored (SPEC §8.2): RFC 9110's heuristically cacheable ones
/// that a gateway should keep, less those about partial content or methods.
pub const STORED_STATUSES: [u16; 6] = [200, 203, 204, 301, 404, 410];

/// What a request is keyed by. HEAD and GET share an entry (a HEAD after a GET
/// is answered from it), so the method is not part of the key.
pub struct KeyParts<'a> {
    pub route: &'a str,
    /// The host header, without port, lowercase.
    pub host: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The consumer, when the route keys by consumer.
    pub consumer: Option<&'a str>,
    /// The values of the route's `vary` headers, in its order.
    pub vary: &'a [Option<&'a [u8]>],
}

/// Appends `part` length-prefixed, so that no two different keys frame the
/// same bytes (a path with a newline cannot forge another route's key).
fn frame(out: &mut Vec<u8>, part: &[u8]) {
    out.extend_from_slice(&(part.len() as u32).to_be_bytes());
    out.extend_from_slice(part);
}

impl KeyParts<'_> {
    /// The primary key's bytes: route and path first, so that the storage can
    /// index entries for purges ([`route_and_path`]).
    pub fn primary(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.path.len());
        frame(&mut out, self.route.as_bytes());
        frame(&mut out, self.path.as_bytes());
        frame(&mut out, self.host.as_bytes());
        match self.query {
            Some(q) => {
                out.push(1);
                frame(&mut out, q.as_bytes());
            }
            None => out.push(0),
        }
        match self.consumer {
            Some(c) => {
                out.push(1);
                frame(&mut out, c.as_bytes());
            }
            None => out.push(0),
        }
        for value in self.vary {
            match value {
                Some(v) => {
                    out.push(1);
                    frame(&mut out, v);
                }
                None => out.push(0),
            }
        }
        out
    }
}

/// The route and path a primary key made by [`KeyParts::primary`] starts with.
pub fn route_and_path(primary: &[u8]) -> Option<(&str, &str)> {
    fn take(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
        let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        let part = bytes.get(4..4 + len)?;
        Some((part, &bytes[4 + len..]))
    }
    let (route, rest) = take(primary)?;
    let (path, _) = take(rest)?;
    Some((
        std::str::from_utf8(route).ok()?,
        std::str::from_utf8(path).ok()?,
    ))
}

/// Why an upstream answer is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    Status,
    NoStore,
    /// `private`, on a route that does not key by consumer.
    Private,
    SetCookie,
    VaryStar,
}

/// How long a stored answer stays fresh and may be served stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// From now; zero: revalidate before the next use (`no-cache`, `max-age=0`).
    pub fresh_for: Duration,
    /// The answer's age when received (the upstream's `Age`).
    pub age: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
}

/// The directives of every `Cache-Control` line, lowercase names with their
/// optional values (quotes removed).
fn directives(headers: &HeaderMap) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    for line in headers.get_all(CACHE_CONTROL) {
        let Ok(text) = line.to_str() else { continue };
        for directive in text.split(',') {
            let directive = directive.trim();
            if directive.is_empty() {
                continue;
            }
            let (name, value) = match directive.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"').to_string())),
                None => (directive, None),
            };
            out.push((name.to_ascii_lowercase(), value));
        }
    }
    out
}

fn seconds(value: Option<&str>) -> Option<Duration> {
    // RFC 9111 §1.2.2: a delta-seconds too large to represent is 2^31.
    value
        .and_then(|v| {
            v.parse::<u64>()
                .ok()
                .or_else(|| v.bytes().all(|b| b.is_ascii_digit()).then_some(1 << 31))
        })
        .map(Duration::from_secs)
}

fn http_date(headers: &HeaderMap, name: HeaderName) -> Option<Option<SystemTime>> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    // Two values, or one that is not a date, are invalid: in the past (RFC 9111 §5.3).
    if values.next().is_some() {
        return Some(None);
    }
    Some(
        first
            .to_str()
            .ok()
            .and_then(|s| httpdate::parse_http_date(s).ok()),
    )
}

/// Whether an upstream answer to a GET or HEAD may be stored, and its
/// freshness (RFC 9111 §3, §4.2): `s-maxage` over `max-age` over `Expires`
/// over the route's `ttl`, less the upstream's `Age`.
pub fn storable(
    status: u16,
    headers: &HeaderMap,
    policy: &RoutePolicy,
    now: SystemTime,
) -> Result<Freshness, NotStored> {
    if !STORED_STATUSES.contains(&status) {
        return Err(NotStored::Status);
    }
    let cc = directives(headers);
    let has = |name: &str| cc.iter().any(|(n, _)| n == name);
    let value = |name: &str| {
        cc.iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    };
    if has("no-store") {
        return Err(NotStored::NoStore);
    }
    if has("private") && !policy.per_consumer {
        return Err(NotStored::Private);
    }
    if headers.contains_key(SET_COOKIE) {
        return Err(NotStored::SetCookie);
    }
    let vary_star = headers
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim() == "*");
    if vary_star {
        return Err(NotStored::VaryStar);
    }
    let lifetime = if has("no-cache") {
        Duration::ZERO
    } else if let Some(s) = seconds(value("s-maxage")) {
        s
    } else if let Some(s) = seconds(value("max-age")) {
        s
    } else if let Some(expires) = http_date(headers, EXPIRES) {
        // Relative to the upstream's own clock when it sent `Date`.
        let reference = http_date(headers, DATE).flatten().unwrap_or(now);
        expires
            .and_then(|e| e.duration_since(reference).ok())
            .unwrap_or(Duration::ZERO)
    } else {
        policy.ttl
    };
    let age = headers
        .get(AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| seconds(Some(v.trim())))
        .unwrap_or(Duration::ZERO);
    // `no-cache` and `must-revalidate` (RFC 9111 §5.2.2.4, §5.2.2.2): the entry
    // is not used without asking the upstream, so the route's default stale
    // windows do not apply; only the upstream's own `stale-*` directives do.
    let revalidate = has("no-cache") || has("must-revalidate") || has("proxy-revalidate");
    let default_window = |d: Duration| if revalidate { Duration::ZERO } else { d };
    Ok(Freshness {
        fresh_for: lifetime.saturating_sub(age),
        age,
        stale_while_revalidate: seconds(value("stale-while-revalidate"))
            .unwrap_or(default_window(policy.stale_while_revalidate)),
        stale_if_error: seconds(value("stale-if-error"))
            .unwrap_or(default_window(policy.stale_if_error)),
    })
}

/// Whether an answer to a request whose `authorization` reached the upstream
/// may be stored in a shared cache (RFC 9111 §3.5): only when the upstream
/// says so with `public`, `s-maxage` or `must-revalidate`.
pub fn authorized_answer_may_be_stored(headers: &HeaderMap) -> bool {
    directives(headers)
        .iter()
        .any(|(n, _)| n == "public" || n == "s-maxage" || n == "must-revalidate")
}

/// All of a request header's values, joined as one field (RFC 9110 §5.3), for
/// the key: a repeated header cannot hide a value from it.
pub fn joined_values(headers: &HeaderMap, name: &str) -> Option<Vec<u8>> {
    let mut values = headers.get_all(name).iter();
    let mut out = values.next()?.as_bytes().to_vec();
    for v in values {
        out.extend_from_slice(b", ");
        out.extend_from_slice(v.as_bytes());
    }
    Some(out)
}

/// What the cache did for one request on a route with a cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A fresh entry answered; the upstream was not asked.
    Hit,
    /// No entry: the upstream answered; `stored` when its answer is kept.
    Miss { stored: bool },
    /// A stale entry answered: while it is revalidated, or the upstream failed.
    Stale,
    /// An expired entry was revalidated (`304`) or replaced by the upstream.
    Expired { status: u16, stored: bool },
    /// Not looked up: the method is neither GET nor HEAD (`method`), or the
    /// caller cannot be keyed (a bearer token without `sub`, `bypass`).
    Bypass { method: bool },
}

impl Outcome {
    /// The `cache-status` value (RFC 9211), the gateway's entry being the only one.
    pub fn cache_status(self) -> Cow<'static, str> {
        match self {
            Outcome::Hit => "portcullis; hit".into(),
            Outcome::Miss { stored: true } => "portcullis; fwd=miss; stored".into(),
            Outcome::Miss { stored: false } => "portcullis; fwd=miss".into(),
            Outcome::Stale => "portcullis; fwd=stale".into(),
            Outcome::Expired { status, stored } => format!(
                "portcullis; fwd=stale; fwd-status={status}{}",
                if stored { "; stored" } else { "" }
            )
            .into(),
            Outcome::Bypass { method: true } => "portcullis; fwd=method".into(),
            Outcome::Bypass { method: false } => "portcullis; fwd=bypass".into(),
        }
    }

    /// The access log's `cache` field: hit | miss | stale | bypass.
    pub fn log_label(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss { .. } => "miss",
            Outcome::Stale | Outcome::Expired { .. } => "stale",
            Outcome::Bypass { .. } => "bypass",
        }
    }

    /// The `result` label of `portcullis_cache_lookups_total`.
    pub fn lookup_label(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss { .. } => "miss",
            Outcome::Stale => "stale",
            Outcome::Expired { .. } => "expired",
            Outcome::Bypass { .. } => "bypass",
        }
    }
}

/// Every `result` label, exported from zero.
pub const LOOKUP_RESULTS: [&str; 5] = ["hit", "miss", "stale", "expired", "bypass"];

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn policy() -> RoutePolicy {
        RoutePolicy {
            ttl: Duration::from_secs(30),
            vary: Vec::new(),
            per_consumer: false,
            stale_while_revalidate: Duration::from_secs(5),
            stale_if_error: Duration::from_secs(60),
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    fn fresh_for(pairs: &[(&'static str, &str)]) -> Result<Duration, NotStored> {
        storable(200, &headers(pairs), &policy(), SystemTime::now()).map(|f| f.fresh_for)
    }

    #[test]
    fn only_the_listed_statuses_are_stored() {
        for status in STORED_STATUSES {
            assert!(storable(status, &HeaderMap::new(), &policy(), SystemTime::now()).is_ok());
        }
        for status in [201, 206, 302, 304, 400, 403, 500, 502] {
            assert_eq!(
                storable(status, &HeaderMap::new(), &policy(), SystemTime::now()),
                Err(NotStored::Status),
                "{status}"
            );
        }
    }

    #[test]
    fn no_store_set_cookie_and_vary_star_are_not_stored() {
        assert_eq!(
            fresh_for(&[("cache-control", "public, no-store")]),
            Err(NotStored::NoStore)
        );
        assert_eq!(
            fresh_for(&[("set-cookie", "a=b")]),
            Err(NotStored::SetCookie)
        );
        assert_eq!(
            fresh_for(&[("vary", "accept, *")]),
            Err(NotStored::VaryStar)
        );
        assert!(fresh_for(&[("vary", "accept-language")]).is_ok());
    }

    #[test]
    fn private_is_stored_only_per_consumer() {
        let h = headers(&[("cache-control", "private, max-age=10")]);
        assert_eq!(
            storable(200, &h, &policy(), SystemTime::now()),
            Err(NotStored::Private)
        );
        let per_consumer = RoutePolicy {
            per_consumer: true,
            ..policy()
        };
        let f = storable(200, &h, &per_consumer, SystemTime::now()).unwrap();
        assert_eq!(f.fresh_for, Duration::from_secs(10));
    }

    #[test]
    fn s_maxage_wins_over_max_age_which_wins_over_the_ttl() {
        let s = |n| Ok(Duration::from_secs(n));
        assert_eq!(
            fresh_for(&[("cache-control", "max-age=100, s-maxage=7")]),
            s(7)
        );
        assert_eq!(fresh_for(&[("cache-control", "max-age=100")]), s(100));
        assert_eq!(fresh_for(&[]), s(30));
        assert_eq!(fresh_for(&[("cache-control", "max-age=0")]), s(0));
        assert_eq!(
            fresh_for(&[("cache-control", "no-cache, max-age=100")]),
            s(0)
        );
        assert_eq!(
            fresh_for(&[("cache-control", "max-age=99999999999999999999")]),
            s(1 << 31)
        );
    }

    #[test]
    fn expires_counts_from_the_upstream_date_and_a_bad_one_is_expired() {
        let now = SystemTime::now();
        let date = httpdate::fmt_http_date(now);
        let later = httpdate::fmt_http_date(now + Duration::from_secs(120));
        assert_eq!(
            fresh_for(&[("date", &date), ("expires", &later)]),
            Ok(Duration::from_secs(120))
        );
        assert_eq!(fresh_for(&[("expires", "not a date")]), Ok(Duration::ZERO));
        assert_eq!(fresh_for(&[("expires", "0")]), Ok(Duration::ZERO));
        // max-age wins over Expires.
        assert_eq!(
            fresh_for(&[("expires", &later), ("cache-control", "max-age=5")]),
            Ok(Duration::from_secs(5))
        );
    }

    #[test]
    fn the_upstream_age_is_taken_off_the_freshness() {
        let f = storable(
            200,
            &headers(&[("cache-control", "max-age=100"), ("age", "30")]),
            &policy(),
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(f.fresh_for, Duration::from_secs(70));
        assert_eq!(f.age, Duration::from_secs(30));
        assert_eq!(
            fresh_for(&[("cache-control", "max-age=10"), ("age", "30")]),
            Ok(Duration::ZERO)
        );
    }

    #[test]
    fn stale_windows_come_from_the_upstream_or_the_route() {
        let f = storable(
            200,
            &headers(&[("cache-control", "max-age=1, stale-if-error=9")]),
            &policy(),
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(f.stale_if_error, Duration::from_secs(9));
        assert_eq!(f.stale_while_revalidate, Duration::from_secs(5));
    }

    #[test]
    fn keys_differ_by_consumer_query_host_and_vary_but_not_method() {
        let base = KeyParts {
            route: "r",
            host: "h",
            path: "/p",
            query: None,
            consumer: Some("alice"),
            vary: &[],
        };
        let key = base.primary();
        let other = |f: &dyn Fn(&mut KeyParts)| {
            let mut k = KeyParts { ..base };
            f(&mut k);
            k.primary()
        };
        assert_ne!(key, other(&|k| k.consumer = Some("bob")));
        assert_ne!(key, other(&|k| k.consumer = None));
        assert_ne!(key, other(&|k| k.query = Some("")));
        assert_ne!(key, other(&|k| k.host = "g"));
        static DE: [Option<&[u8]>; 1] = [Some(b"de")];
        static EN: [Option<&[u8]>; 1] = [Some(b"en")];
        assert_ne!(other(&|k| k.vary = &DE), other(&|k| k.vary = &EN));
        assert_eq!(key, other(&|_| {}));
    }

    #[test]
    fn framing_keeps_parts_apart_and_gives_back_route_and_path() {
        let a = KeyParts {
            route: "a",
            host: "h",
            path: "/x",
            query: None,
            consumer: None,
            vary: &[],
        };
        let b = KeyParts {
            route: "a\0\0\0\u{2}/x",
            path: "",
            ..KeyParts { ..a }
        };
        assert_ne!(a.primary(), b.primary());
        assert_eq!(route_and_path(&a.primary()), Some(("a", "/x")));
        assert_eq!(route_and_path(b"\0\0"), None);
    }

    #[test]
    fn cache_status_texts_follow_rfc_9211() {
        assert_eq!(Outcome::Hit.cache_status(), "portcullis; hit");
        assert_eq!(
            Outcome::Miss { stored: true }.cache_status(),
            "portcullis; fwd=miss; stored"
        );
        assert_eq!(Outcome::Stale.cache_status(), "portcullis; fwd=stale");
        assert_eq!(
            Outcome::Expired {
                status: 304,
                stored: true
            }
            .cache_status(),
            "portcullis; fwd=stale; fwd-status=304; stored"
        );
        assert_eq!(Outcome::Stale.log_label(), "stale");
        assert_eq!(Outcome::Bypass { method: true }.lookup_label(), "bypass");
    }

    #[test]
    fn revalidation_directives_drop_the_routes_stale_windows() {
        let mut windows = policy();
        windows.stale_while_revalidate = Duration::from_secs(10);
        windows.stale_if_error = Duration::from_secs(60);
        for cc in [
            "no-cache",
            "max-age=60, must-revalidate",
            "proxy-revalidate",
        ] {
            let f = storable(
                200,
                &headers(&[("cache-control", cc)]),
                &windows,
                SystemTime::now(),
            )
            .unwrap();
            assert_eq!(f.stale_while_revalidate, Duration::ZERO, "{cc}");
            assert_eq!(f.stale_if_error, Duration::ZERO, "{cc}");
        }
        let explicit = headers(&[("cache-control", "no-cache, stale-if-error=5")]);
        let f = storable(200, &explicit, &windows, SystemTime::now()).unwrap();
        assert_eq!(f.stale_if_error, Duration::from_secs(5));
        let plain = storable(200, &HeaderMap::new(), &windows, SystemTime::now()).unwrap();
        assert_eq!(plain.stale_while_revalidate, Duration::from_secs(10));
    }

    #[test]
    fn an_authorized_answer_is_shared_only_when_the_upstream_says_so() {
        assert!(!authorized_answer_may_be_stored(&HeaderMap::new()));
        assert!(!authorized_answer_may_be_stored(&headers(&[(
            "cache-control",
            "max-age=60"
        )])));
        for cc in [
            "public, max-age=60",
            "s-maxage=60",
            "max-age=60, must-revalidate",
        ] {
            assert!(
                authorized_answer_may_be_stored(&headers(&[("cache-control", cc)])),
                "{cc}"
            );
        }
    }

    #[test]
    fn repeated_request_headers_are_keyed_whole() {
        let mut h = HeaderMap::new();
        h.append("accept-language", http::HeaderValue::from_static("en"));
        h.append("accept-language", http::HeaderValue::from_static("fr"));
        assert_eq!(joined_values(&h, "accept-language").unwrap(), b"en, fr");
        assert_eq!(joined_values(&h, "x-none"), None);
    }
}
