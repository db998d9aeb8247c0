//! Route matching: route paths and request paths from the input. Building never
//! panics, a lookup never panics, and a found route really matches the path.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::core::route_match::{Conditions, Want};
use portcullis::core::router::{Lookup, Pattern, Request, RouteSpec, Router};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Lines before the first empty line are routes ("[!]path [METHOD] [QUERY]";
    // `!` for exact; QUERY a parameter the route's `match` needs), the rest are
    // request targets (path, then `?query`).
    let (routes, requests) = text.split_once("\n\n").unwrap_or((text, "/"));
    let mut specs = Vec::new();
    for line in routes.lines().take(64) {
        let (exact, line) = match line.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let mut words = line.split(' ');
        let path = words.next().unwrap_or("");
        let method = words.next().unwrap_or("");
        let query: Vec<(String, Want)> = words
            .next()
            .map(|q| (q.to_string(), Want::of("*")))
            .into_iter()
            .collect();
        let Ok(pattern) = Pattern::parse(path) else {
            continue;
        };
        let methods = http::Method::from_bytes(method.as_bytes())
            .ok()
            .map(|m| vec![m]);
        specs.push(RouteSpec {
            pattern,
            exact,
            methods,
            host: None,
            conditions: Conditions {
                headers: Vec::new(),
                query,
            },
        });
    }
    let count = specs.len();
    let router = Router::new(specs);
    let headers = http::HeaderMap::new();
    for target in requests.lines().take(64) {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        for method in [http::Method::GET, http::Method::POST] {
            let request = Request {
                method: &method,
                path,
                host: Some("a"),
                query,
                headers: &headers,
            };
            match router.lookup(&request) {
                Lookup::Found(i) => {
                    assert!(i < count);
                    // Every parameter value is a non-empty segment of the path.
                    for (_, value) in router.params(i, path) {
                        assert!(!value.is_empty() && !value.contains('/'), "{value:?}");
                    }
                }
                Lookup::MethodNotAllowed(allow) => assert!(!allow.is_empty()),
                Lookup::NotFound => {}
            }
        }
    }
});
