//! Checks of what browser clients use (SPEC §8.4): a route's `cors` and the
//! top-level `docs`.

use super::decode::{Cx, Spanned};
use super::schema::{Config, Route};
use crate::core::cors::normalize_origin;
use http::Method;

/// A route's `cors`: serialized origins, `"*"` alone and never with
/// credentials, methods a browser can send and the route takes.
pub(super) fn check_route_cors(cx: &mut Cx<'_>, path: &str, route: &Route) {
    let Some(cors) = &route.cors else { return };
    let path = format!("{path}.cors");
    let cors = &cors.value;
    let origins = &cors.origins.value;
    if origins.is_empty() {
        cx.error_at(
            &format!("{path}.origins"),
            cors.origins.mark,
            "at least one origin is needed, or [\"*\"] for any",
        );
    }
    let any = origins.iter().any(|o| o.value == "*");
    for (i, origin) in origins.iter().enumerate() {
        let field = format!("{path}.origins[{i}]");
        if origin.value == "*" {
            if origins.len() > 1 {
                cx.error_at(
                    &field,
                    origin.mark,
                    "\"*\" allows every origin: write it alone, as origins: [\"*\"]",
                );
            }
        } else if let Err(message) = normalize_origin(&origin.value) {
            cx.error_at(&field, origin.mark, message);
        }
    }
    let credentials = cors.credentials.as_ref().filter(|c| c.value);
    if let Some(credentials) = credentials {
        let star = |list: &Option<Vec<Spanned<http::HeaderName>>>| {
            list.iter().flatten().any(|h| h.value.as_str() == "*")
        };
        let mut wildcards = Vec::new();
        if any {
            wildcards.push("origins");
        }
        if star(&cors.headers) {
            wildcards.push("headers");
        }
        if star(&cors.expose_headers) {
            wildcards.push("expose_headers");
        }
        for field in wildcards {
            cx.error_at(
                &format!("{path}.credentials"),
                credentials.mark,
                format!(
                    "`credentials: true` cannot go with `{field}: [\"*\"]`: browsers refuse \
                     a wildcard on credentialed requests; name them instead"
                ),
            );
        }
    }
    if let Some(methods) = &cors.methods {
        if methods.value.is_empty() {
            cx.error_at(
                &format!("{path}.methods"),
                methods.mark,
                "at least one method is needed (omit `methods` for the route's own)",
            );
        }
        let route_methods = route.methods.as_ref().map(|m| &m.value);
        for (i, method) in methods.value.iter().enumerate() {
            let field = format!("{path}.methods[{i}]");
            let m = &method.value;
            if [Method::CONNECT, Method::TRACE].contains(m) || m.as_str() == "TRACK" {
                cx.error_at(&field, method.mark, format!("browsers never send {m}"));
            } else if route_methods.is_some_and(|r| !r.contains(m)) {
                cx.error_at(
                    &field,
                    method.mark,
                    format!("{m} is not one of the route's `methods`"),
                );
            }
        }
    }
}

/// `docs.path`: a plain path below `/` (at `/` it would hide every route).
pub(super) fn check_docs(cx: &mut Cx<'_>, config: &Config) {
    let Some(docs) = &config.docs else { return };
    let path = &docs.path;
    let trimmed = path.value.trim_end_matches('/');
    let plain = path.value.starts_with('/')
        && !path.value.contains(['?', '#', '{', '}', '%'])
        && path.value.parse::<http::uri::PathAndQuery>().is_ok()
        && !trimmed.split('/').any(|s| s == "." || s == "..");
    if !plain {
        cx.error_at(
            "docs.path",
            path.mark,
            format!("expected a path like \"/docs\", found {}", path.shown()),
        );
    } else if trimmed.is_empty() {
        cx.error_at(
            "docs.path",
            path.mark,
            "the docs page cannot take \"/\": it would hide every route",
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::core::config::tests::{load, load_errors, render};

    const HEAD: &str = "\
listen: [{ addr: 127.0.0.1:8000 }]
upstreams: { u: { peers: [\"127.0.0.1:8001\"] } }
routes:
  - name: api
    path: /api
    methods: [GET, POST]
    upstream: u
";

    /// The errors of `cors` lines appended to the route (indented 4).
    fn cors_errors(cors: &str) -> String {
        render(&load_errors(&format!("{HEAD}    cors:\n{cors}")))
    }

    #[test]
    fn a_full_cors_block_loads() {
        let config = load(&format!(
            "{HEAD}    cors:\n      origins: [\"https://app.example.com\", \"http://127.0.0.1:3000\"]\n      \
             methods: [GET, POST]\n      headers: [x-api-key, authorization, content-type]\n      \
             expose_headers: [x-request-id, ratelimit-remaining]\n      credentials: true\n      max_age: 10m\n\
             docs: {{ path: /docs }}\n"
        ));
        assert!(config
            .routes
            .iter()
            .next()
            .is_some_and(|(_, r)| r.cors.is_some()));
        assert_eq!(config.docs.map(|d| d.path.value), Some("/docs".to_string()));
    }

    #[test]
    fn star_with_credentials_is_an_error_at_credentials() {
        let errors = cors_errors("      origins: [\"*\"]\n      credentials: true\n");
        assert_eq!(
            errors,
            "gateway.yaml:10:20: routes[0].cors.credentials: `credentials: true` cannot go with \
             `origins: [\"*\"]`: browsers refuse a wildcard on credentialed requests; name them instead"
        );
        let errors = cors_errors(
            "      origins: [\"https://a.example\"]\n      headers: [\"*\"]\n      credentials: true\n",
        );
        assert!(
            errors.contains(
                "routes[0].cors.credentials: `credentials: true` cannot go with `headers: [\"*\"]`"
            ),
            "{errors}"
        );
    }

    #[test]
    fn origins_must_be_serialized_origins() {
        let errors = cors_errors(
            "      origins:\n        - https://app.example.com/api\n        - app.example.com\n        - \"*\"\n        - \"null\"\n",
        );
        let lines: Vec<&str> = errors.lines().collect();
        assert_eq!(lines.len(), 4, "{errors}");
        assert!(lines[0].starts_with("gateway.yaml:10:11: routes[0].cors.origins[0]: an origin has no path, query or fragment: write \"https://app.example.com\""), "{errors}");
        assert!(
            lines[1].starts_with(
                "gateway.yaml:11:11: routes[0].cors.origins[1]: expected an origin like"
            ),
            "{errors}"
        );
        assert!(
            lines[2].starts_with(
                "gateway.yaml:12:11: routes[0].cors.origins[2]: \"*\" allows every origin"
            ),
            "{errors}"
        );
        assert!(
            lines[3]
                .starts_with("gateway.yaml:13:11: routes[0].cors.origins[3]: the \"null\" origin"),
            "{errors}"
        );
        assert!(cors_errors("      origins: []\n")
            .contains("routes[0].cors.origins: at least one origin"));
    }

    #[test]
    fn invalid_header_names_and_methods_are_errors_with_positions() {
        let errors = cors_errors(
            "      origins: [\"https://a.example\"]\n      headers: [x-api-key, \"bad header\"]\n      \
             expose_headers: [\"x:y\"]\n      methods: [GET, get]\n",
        );
        let lines: Vec<&str> = errors.lines().collect();
        assert_eq!(lines.len(), 3, "{errors}");
        assert_eq!(lines[0], "gateway.yaml:10:28: routes[0].cors.headers[1]: expected a header name, found \"bad header\"");
        assert_eq!(lines[1], "gateway.yaml:11:24: routes[0].cors.expose_headers[0]: expected a header name, found \"x:y\"");
        assert_eq!(lines[2], "gateway.yaml:12:22: routes[0].cors.methods[1]: expected an upper-case HTTP method like \"GET\", found \"get\"");
        let errors = cors_errors(
            "      origins: [\"https://a.example\"]\n      methods: [GET, DELETE, TRACE]\n",
        );
        let lines: Vec<&str> = errors.lines().collect();
        assert_eq!(lines.len(), 2, "{errors}");
        assert_eq!(lines[0], "gateway.yaml:10:22: routes[0].cors.methods[1]: DELETE is not one of the route's `methods`");
        assert_eq!(
            lines[1],
            "gateway.yaml:10:30: routes[0].cors.methods[2]: browsers never send TRACE"
        );
    }

    #[test]
    fn docs_path_is_a_plain_path_below_the_root() {
        for (path, message) in [
            ("/", "the docs page cannot take \"/\""),
            ("docs", "expected a path like \"/docs\", found \"docs\""),
            ("/docs?x", "expected a path like"),
            ("/a/../b", "expected a path like"),
        ] {
            let errors = render(&load_errors(&format!(
                "{HEAD}docs: {{ path: \"{path}\" }}\n"
            )));
            assert!(
                errors.starts_with("gateway.yaml:8:15: docs.path: "),
                "{errors}"
            );
            assert!(errors.contains(message), "{path}: {errors}");
        }
    }
}
