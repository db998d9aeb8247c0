//! Route matching: route paths and request paths from the input. Building never
//! panics, a lookup never panics, and a found route really matches the path.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::core::router::{Lookup, Pattern, RouteSpec, Router};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Lines before the first empty line are routes ("[!]path [METHOD]"; `!` for
    // exact), the rest are request paths.
    let (routes, requests) = text.split_once("\n\n").unwrap_or((text, "/"));
    let mut specs = Vec::new();
    for line in routes.lines().take(64) {
        let (exact, line) = match line.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let (path, method) = line.split_once(' ').unwrap_or((line, ""));
        let Ok(pattern) = Pattern::parse(path) else {
            continue;
        };
        let methods = http::Method::from_bytes(method.as_bytes()).ok().map(|m| vec![m]);
        specs.push(RouteSpec {
            pattern,
            exact,
            methods,
            host: None,
        });
    }
    let count = specs.len();
    let router = Router::new(specs);
    for path in requests.lines().take(64) {
        for method in [http::Method::GET, http::Method::POST] {
            match router.lookup(&method, path, Some("a")) {
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
