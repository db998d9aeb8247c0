//! Cross-origin resource sharing (SPEC §8.4, the Fetch standard's CORS
//! protocol): which origins, methods and headers a route's `cors` allows, and
//! the `access-control-*` headers of a preflight answer and of an actual
//! request's answer. Pure: request facts in, headers out.

use super::forward::HeaderEdit;
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method};

const STAR: HeaderValue = HeaderValue::from_static("*");
const TRUE: HeaderValue = HeaderValue::from_static("true");
const ORIGIN: HeaderValue = HeaderValue::from_static("origin");

/// Request headers a browser may send cross-origin without asking (the
/// CORS-safelisted names whose values it checks itself), so never refused.
/// `content-type` is not here: a browser asks for it when its value is not
/// one of the three form types, and the route must then allow it.
const SAFELISTED: [&str; 3] = ["accept", "accept-language", "content-language"];

/// A route's `cors`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Serialized origins, lower-case; `None`: any origin (`["*"]`).
    origins: Option<Vec<String>>,
    /// `None`: any method.
    methods: Option<Vec<Method>>,
    /// `None`: any header (`["*"]`).
    headers: Option<Vec<HeaderName>>,
    credentials: bool,
    /// `access-control-allow-methods` when `methods` is a list.
    allow_methods: Option<HeaderValue>,
    /// `access-control-allow-headers` when `headers` is a list (and not empty).
    allow_headers: Option<HeaderValue>,
    /// `access-control-expose-headers`, when any are exposed.
    expose_headers: Option<HeaderValue>,
    /// `access-control-max-age` in seconds.
    max_age: Option<HeaderValue>,
}

/// What a route's `cors` says, checked (see [`check_origin`]).
#[derive(Debug, Clone, Default)]
pub struct Spec {
    /// Serialized origins or `"*"`.
    pub origins: Vec<String>,
    pub methods: Option<Vec<Method>>,
    /// Header names or `"*"`.
    pub headers: Vec<HeaderName>,
    pub expose_headers: Vec<HeaderName>,
    pub credentials: bool,
    pub max_age_secs: Option<u64>,
}

/// Why a preflight was refused (403 `cors_rejected`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("the origin is not allowed")]
    Origin,
    #[error("the method is not allowed")]
    Method,
    #[error("a request header is not allowed")]
    Header,
}

/// A CORS preflight (Fetch: an `OPTIONS` request with `origin` and
/// `access-control-request-method`): the method it asks for, if the request
/// is one. A method that is not a token is no preflight.
pub fn preflight_method(method: &Method, headers: &HeaderMap) -> Option<Method> {
    const REQUEST_METHOD: HeaderName = http::header::ACCESS_CONTROL_REQUEST_METHOD;
    if method != Method::OPTIONS || !headers.contains_key(http::header::ORIGIN) {
        return None;
    }
    let asked = headers.get(REQUEST_METHOD)?;
    Method::from_bytes(asked.as_bytes()).ok()
}

fn join<'a>(items: impl Iterator<Item = &'a str>) -> Option<HeaderValue> {
    let joined = items.collect::<Vec<_>>().join(", ");
    if joined.is_empty() {
        return None;
    }
    HeaderValue::from_str(&joined).ok()
}

fn is_star(name: &HeaderName) -> bool {
    name.as_str() == "*"
}

impl Policy {
    pub fn new(spec: &Spec) -> Policy {
        let any_origin = spec.origins.iter().any(|o| o == "*");
        let any_header = spec.headers.iter().any(is_star);
        let origins = (!any_origin).then(|| {
            spec.origins
                .iter()
                .map(|o| normalize_origin(o).unwrap_or_else(|_| o.to_ascii_lowercase()))
                .collect()
        });
        let headers = (!any_header).then(|| spec.headers.clone());
        Policy {
            allow_methods: spec
                .methods
                .as_ref()
                .and_then(|m| join(m.iter().map(Method::as_str))),
            allow_headers: headers
                .as_ref()
                .and_then(|h| join(h.iter().map(HeaderName::as_str))),
            expose_headers: join(spec.expose_headers.iter().map(HeaderName::as_str)),
            max_age: spec.max_age_secs.map(HeaderValue::from),
            origins,
            methods: spec.methods.clone(),
            headers,
            credentials: spec.credentials,
        }
    }

    /// Whether `origin` (the request's `origin` header) may read answers.
    pub fn allows_origin(&self, origin: &[u8]) -> bool {
        match &self.origins {
            None => true,
            Some(list) => list
                .iter()
                .any(|o| o.as_bytes().eq_ignore_ascii_case(origin)),
        }
    }

    fn allows_method(&self, method: &Method) -> bool {
        self.methods.as_ref().is_none_or(|m| m.contains(method))
    }

    /// `access-control-allow-origin`: `*` when any origin may read and no
    /// credentials are involved, else the origin itself.
    fn allow_origin(&self, origin: &HeaderValue) -> HeaderValue {
        if self.origins.is_none() && !self.credentials {
            STAR
        } else {
            origin.clone()
        }
    }

    /// The answer to a preflight from `origin` asking for `method` and the
    /// headers of `access-control-request-headers` (`request_headers`): the
    /// headers of a 204, or why it is refused.
    pub fn preflight(
        &self,
        origin: &HeaderValue,
        method: &Method,
        request_headers: Option<&HeaderValue>,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, Denial> {
        if !self.allows_origin(origin.as_bytes()) {
            return Err(Denial::Origin);
        }
        if !self.allows_method(method) {
            return Err(Denial::Method);
        }
        let asked = request_headers
            .map(|v| v.to_str().map_err(|_| Denial::Header))
            .transpose()?
            .unwrap_or("");
        let asked: Vec<&str> = asked
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .collect();
        if let Some(allowed) = &self.headers {
            let permitted = |h: &&str| {
                SAFELISTED.iter().any(|s| s.eq_ignore_ascii_case(h))
                    || allowed.iter().any(|a| a.as_str().eq_ignore_ascii_case(h))
            };
            if !asked.iter().all(permitted) {
                return Err(Denial::Header);
            }
        }
        let mut out = vec![(ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin(origin))];
        if self.credentials {
            out.push((ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE));
        }
        // Listed, not `*`: with credentials a browser reads `*` as a name.
        let methods = match &self.allow_methods {
            Some(list) => Some(list.clone()),
            None => HeaderValue::from_str(method.as_str()).ok(),
        };
        if let Some(methods) = methods {
            out.push((ACCESS_CONTROL_ALLOW_METHODS, methods));
        }
        // Any header: the ones asked for, named (`*` would not cover
        // `authorization`, nor anything with credentials).
        let headers = match &self.headers {
            Some(_) => self.allow_headers.clone(),
            None => join(asked.iter().copied()),
        };
        if let Some(headers) = headers {
            out.push((ACCESS_CONTROL_ALLOW_HEADERS, headers));
        }
        if let Some(max_age) = &self.max_age {
            out.push((ACCESS_CONTROL_MAX_AGE, max_age.clone()));
        }
        out.push((VARY, ORIGIN));
        Ok(out)
    }

    /// The headers an answer to an actual request carries: for an allowed
    /// origin, `access-control-allow-origin` (with credentials and exposed
    /// headers); for any other, none of those. The method does not matter:
    /// one the policy does not allow got here without a preflight (a simple
    /// GET or POST) or was refused by the route (405), and the page may read
    /// why.
    pub fn actual(&self, origin: Option<&HeaderValue>) -> Vec<(HeaderName, HeaderValue)> {
        let Some(origin) = origin else {
            return Vec::new();
        };
        if !self.allows_origin(origin.as_bytes()) {
            return Vec::new();
        }
        let mut out = vec![(ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin(origin))];
        if self.credentials {
            out.push((ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE));
        }
        if let Some(expose) = &self.expose_headers {
            out.push((ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone()));
        }
        out
    }

    /// Stamps an answer of this route with the actual request's headers:
    /// the upstream's own `access-control-*` go (the route's policy decides,
    /// and two `access-control-allow-origin`s fail in a browser), ours are
    /// set, and `vary` gains `origin` (the answer differs by origin).
    pub fn stamp<H: HeaderEdit>(
        &self,
        resp: &mut H,
        origin: Option<&HeaderValue>,
    ) -> Result<(), H::Error> {
        let is_cors = |n: &&HeaderName| n.as_str().starts_with("access-control-");
        // Most upstreams send none: no list is made for them.
        if resp.headers().keys().any(|n| is_cors(&n)) {
            let theirs: Vec<HeaderName> = resp.headers().keys().filter(is_cors).cloned().collect();
            for name in &theirs {
                resp.remove(name);
            }
        }
        for (name, value) in self.actual(origin) {
            resp.insert(name, value)?;
        }
        add_vary_origin(resp)
    }
}

/// Adds `origin` to `vary`, keeping what is there (one line, merged).
fn add_vary_origin<H: HeaderEdit>(resp: &mut H) -> Result<(), H::Error> {
    let existing: Vec<&str> = resp
        .headers()
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let covered = existing
        .iter()
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == "*" || t.trim().eq_ignore_ascii_case("origin"));
    if covered {
        return Ok(());
    }
    if existing.is_empty() {
        return resp.insert(VARY, ORIGIN);
    }
    let merged = format!("{}, origin", existing.join(", "));
    resp.insert_str(VARY, &merged)
}

/// A serialized origin as the config may name it (`https://app.example.com`,
/// `http://127.0.0.1:8080`), lower-cased and without its scheme's default
/// port, as browsers send it; the error says what is wrong.
pub fn normalize_origin(text: &str) -> Result<String, String> {
    if text == "null" {
        return Err(
            "the \"null\" origin (sandboxed frames, file: pages) cannot be allowed \
                    by name: any page can send it"
                .to_string(),
        );
    }
    let Some((scheme, authority)) = text.split_once("://") else {
        return Err(format!(
            "expected an origin like \"https://app.example.com\", found {text:?}"
        ));
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return Err(format!("{text:?} has no valid scheme"));
    }
    if let Some(cut) = authority.find(['/', '?', '#']) {
        let host_only = format!("{scheme}://{}", &authority[..cut]);
        return Err(format!(
            "an origin has no path, query or fragment: write {host_only:?}, found {text:?}"
        ));
    }
    if authority.contains('*') {
        return Err(format!(
            "an origin is exact: name each one (no wildcards), found {text:?}"
        ));
    }
    if authority.contains('@') {
        return Err(format!("an origin has no user name, found {text:?}"));
    }
    let parsed: http::uri::Authority = authority
        .parse()
        .map_err(|_| format!("{text:?} has no valid host and port"))?;
    let port = parsed
        .as_str()
        .strip_prefix(parsed.host())
        .and_then(|rest| rest.strip_prefix(':'));
    if parsed.host().is_empty() || port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return Err(format!("{text:?} has no valid host and port"));
    }
    let scheme = scheme.to_ascii_lowercase();
    let host = parsed.host().to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    };
    Ok(match parsed.port_u16() {
        Some(port) if Some(port) != default_port => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec {
            origins: vec![
                "https://app.example.com".into(),
                "http://127.0.0.1:8080".into(),
            ],
            methods: Some(vec![Method::GET, Method::POST]),
            headers: vec![
                HeaderName::from_static("x-api-key"),
                HeaderName::from_static("content-type"),
            ],
            expose_headers: vec![
                HeaderName::from_static("x-request-id"),
                HeaderName::from_static("ratelimit-remaining"),
            ],
            credentials: false,
            max_age_secs: Some(600),
        }
    }

    fn v(s: &'static str) -> HeaderValue {
        HeaderValue::from_static(s)
    }

    fn get<'a>(headers: &'a [(HeaderName, HeaderValue)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.to_str().ok())
    }

    #[test]
    fn a_preflight_from_an_allowed_origin_gets_the_allow_headers() {
        let policy = Policy::new(&spec());
        let origin = v("https://app.example.com");
        let asked = v("X-Api-Key, content-type");
        let headers = policy
            .preflight(&origin, &Method::POST, Some(&asked))
            .expect("allowed");
        assert_eq!(
            get(&headers, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(
            get(&headers, "access-control-allow-methods"),
            Some("GET, POST")
        );
        assert_eq!(
            get(&headers, "access-control-allow-headers"),
            Some("x-api-key, content-type")
        );
        assert_eq!(get(&headers, "access-control-max-age"), Some("600"));
        assert_eq!(get(&headers, "access-control-allow-credentials"), None);
        assert_eq!(get(&headers, "vary"), Some("origin"));
        // Origins compare as browsers serialize them, case aside.
        assert!(policy.allows_origin(b"HTTPS://APP.EXAMPLE.COM"));
        assert!(policy.allows_origin(b"http://127.0.0.1:8080"));
    }

    #[test]
    fn a_preflight_is_refused_for_origin_method_or_header() {
        let policy = Policy::new(&spec());
        let good = v("https://app.example.com");
        for origin in [
            "https://evil.example.com",
            "https://app.example.com.evil.net",
            "http://app.example.com",
            "https://app.example.com:8443",
            "null",
        ] {
            let origin = HeaderValue::from_str(origin).expect("value");
            assert_eq!(
                policy.preflight(&origin, &Method::GET, None),
                Err(Denial::Origin)
            );
        }
        assert_eq!(
            policy.preflight(&good, &Method::DELETE, None),
            Err(Denial::Method)
        );
        assert_eq!(
            policy.preflight(&good, &Method::GET, Some(&v("x-api-key, x-other"))),
            Err(Denial::Header)
        );
        // Safelisted names are never refused; empty items are ignored.
        assert!(policy
            .preflight(&good, &Method::GET, Some(&v("accept, ,accept-language")))
            .is_ok());
    }

    #[test]
    fn any_origin_answers_star_without_credentials_and_the_origin_with() {
        let mut any = spec();
        any.origins = vec!["*".into()];
        let policy = Policy::new(&any);
        let origin = v("https://whoever.example");
        let headers = policy.preflight(&origin, &Method::GET, None).expect("ok");
        assert_eq!(get(&headers, "access-control-allow-origin"), Some("*"));
        let actual = policy.actual(Some(&origin));
        assert_eq!(get(&actual, "access-control-allow-origin"), Some("*"));

        let mut credentialed = spec();
        credentialed.credentials = true;
        let policy = Policy::new(&credentialed);
        let origin = v("https://app.example.com");
        let headers = policy.preflight(&origin, &Method::GET, None).expect("ok");
        assert_eq!(
            get(&headers, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(
            get(&headers, "access-control-allow-credentials"),
            Some("true")
        );
    }

    #[test]
    fn any_method_or_header_is_named_back() {
        let mut open = spec();
        open.methods = None;
        open.headers = vec![HeaderName::from_static("*")];
        let policy = Policy::new(&open);
        let origin = v("https://app.example.com");
        let headers = policy
            .preflight(&origin, &Method::PATCH, Some(&v("authorization, x-b")))
            .expect("ok");
        assert_eq!(get(&headers, "access-control-allow-methods"), Some("PATCH"));
        assert_eq!(
            get(&headers, "access-control-allow-headers"),
            Some("authorization, x-b")
        );
    }

    #[test]
    fn actual_requests_get_allow_origin_and_expose_only_when_allowed() {
        let policy = Policy::new(&spec());
        let origin = v("https://app.example.com");
        let actual = policy.actual(Some(&origin));
        assert_eq!(
            get(&actual, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(
            get(&actual, "access-control-expose-headers"),
            Some("x-request-id, ratelimit-remaining")
        );
        assert!(policy
            .actual(Some(&v("https://evil.example.com")))
            .is_empty());
        assert!(policy.actual(None).is_empty());
    }

    #[test]
    fn stamping_replaces_the_upstreams_cors_headers_and_merges_vary() {
        let policy = Policy::new(&spec());
        // `HeaderMap` is a `HeaderEdit` in tests (core::forward's tests).
        let mut resp = HeaderMap::new();
        resp.insert(ACCESS_CONTROL_ALLOW_ORIGIN, v("*"));
        resp.insert(ACCESS_CONTROL_ALLOW_METHODS, v("PUT"));
        resp.insert(VARY, v("accept-encoding"));
        let origin = v("https://app.example.com");
        policy.stamp(&mut resp, Some(&origin)).expect("stamped");
        assert_eq!(resp[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        assert!(resp.get(ACCESS_CONTROL_ALLOW_METHODS).is_none());
        assert_eq!(resp[VARY], "accept-encoding, origin");
        // A disallowed origin: the upstream's headers go, none come, vary stays.
        let mut resp = HeaderMap::new();
        resp.insert(ACCESS_CONTROL_ALLOW_ORIGIN, v("*"));
        resp.insert(VARY, v("Origin"));
        policy
            .stamp(&mut resp, Some(&v("https://evil.example")))
            .expect("stamped");
        assert!(resp.get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        assert_eq!(resp[VARY], "Origin");
    }

    #[test]
    fn preflights_are_options_with_origin_and_a_method_asked() {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::ORIGIN, v("https://a.example"));
        assert_eq!(preflight_method(&Method::OPTIONS, &headers), None);
        headers.insert(http::header::ACCESS_CONTROL_REQUEST_METHOD, v("PUT"));
        assert_eq!(
            preflight_method(&Method::OPTIONS, &headers),
            Some(Method::PUT)
        );
        assert_eq!(preflight_method(&Method::GET, &headers), None);
        headers.remove(http::header::ORIGIN);
        assert_eq!(preflight_method(&Method::OPTIONS, &headers), None);
    }

    #[test]
    fn origins_in_the_config_are_serialized_origins() {
        assert_eq!(
            normalize_origin("https://App.Example.com:443"),
            Ok("https://app.example.com".to_string())
        );
        assert_eq!(
            normalize_origin("http://127.0.0.1:8080"),
            Ok("http://127.0.0.1:8080".to_string())
        );
        assert_eq!(
            normalize_origin("http://[::1]:3000"),
            Ok("http://[::1]:3000".to_string())
        );
        for bad in [
            "https://app.example.com/",
            "https://app.example.com/api",
            "https://app.example.com?x",
            "app.example.com",
            "https://*.example.com",
            "https://user@app.example.com",
            "https://",
            "https://a.com:",
            "https://a.com:99999",
            "null",
            "1http://a.com",
        ] {
            assert!(normalize_origin(bad).is_err(), "{bad}");
        }
        let message = normalize_origin("https://app.example.com/api").unwrap_err();
        assert!(
            message.contains("write \"https://app.example.com\""),
            "{message}"
        );
    }
}
