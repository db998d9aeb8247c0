//! `/openapi.json`: an OpenAPI 3.1 document generated from the routes in force,
//! so clients can point Swagger UI or a code generator at the gateway.
//!
//! Pure: tables in, JSON out. A prefix route (`/users`) is listed at its path
//! as written and says in `x-portcullis-match` that deeper paths match too,
//! since OpenAPI paths cannot express a prefix.

use crate::core::config::AuthMode;
use crate::core::router::{Pattern, Segment};
use crate::tables::{Gateway, Route, Target};
use http::Method;
use serde_json::{json, Map, Value};
use std::net::SocketAddr;

/// The methods a route without `methods` is listed under.
const ANY_METHOD: [Method; 7] = [
    Method::GET,
    Method::PUT,
    Method::POST,
    Method::DELETE,
    Method::OPTIONS,
    Method::HEAD,
    Method::PATCH,
];

/// The gateway's own answers a route may give, by status.
fn refusals(route: &Route) -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    if route.needs_key {
        out.push(("401", "missing_api_key or invalid_api_key"));
        out.push(("403", "forbidden: this consumer may not use this route"));
    }
    match route.tokens.mode {
        AuthMode::Jwt => {
            out.push((
                "401",
                "missing_token or invalid_token (with www-authenticate: Bearer)",
            ));
            out.push(("403", "insufficient_scope or forbidden"));
        }
        AuthMode::Any => {
            out.push((
                "401",
                "missing_credentials, invalid_token, invalid_api_key or missing_token",
            ));
            out.push(("403", "insufficient_scope or forbidden"));
        }
        AuthMode::ApiKey | AuthMode::None => {}
    }
    if route.rate_limit.is_some() {
        out.push(("429", "rate_limited (with retry-after)"));
    }
    if !matches!(route.target, Target::Respond(_)) {
        out.push(("502", "bad_gateway"));
        out.push(("503", "no_healthy_upstream"));
        out.push(("504", "gateway_timeout"));
    }
    out
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    })
}

fn operation(route: &Route, method: &Method, params: &[String]) -> Value {
    let mut responses = Map::new();
    let success = match &route.target {
        Target::Aggregate(aggregate) => {
            let members: Map<String, Value> = aggregate
                .parts
                .iter()
                .map(|p| (p.name.clone(), json!({})))
                .collect();
            json!({
                "description": "one member per part: the part's JSON, or {\"error\", \"status\"} when it failed",
                "content": {"application/json": {"schema": {
                    "type": "object",
                    "properties": members,
                }}},
            })
        }
        Target::Respond(reply) => {
            responses.insert(
                reply.status.to_string(),
                json!({"description": "answered by the gateway"}),
            );
            Value::Null
        }
        Target::Upstream { .. } => json!({"description": "the upstream's answer"}),
    };
    if !success.is_null() {
        responses.insert("default".to_string(), success);
    }
    for (status, description) in refusals(route) {
        responses.insert(status.to_string(), error_response(description));
    }
    let parameters: Vec<Value> = params
        .iter()
        .map(|name| {
            json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}})
        })
        .collect();
    let scopes = &route.tokens.scopes;
    // Several requirement objects are alternatives: either one suffices.
    let security = match route.tokens.mode {
        AuthMode::Jwt => json!([{"bearer": scopes}]),
        AuthMode::Any => json!([{"apiKey": []}, {"bearer": scopes}]),
        _ if route.needs_key => json!([{"apiKey": []}]),
        _ => json!([]),
    };
    let mut op = json!({
        "operationId": format!("{}_{}", route.name, method.as_str().to_ascii_lowercase()),
        "summary": format!("route {}", route.name),
        "security": security,
        "responses": responses,
    });
    if !parameters.is_empty() {
        op["parameters"] = Value::Array(parameters);
    }
    op
}

/// The OpenAPI 3.1 document for the tables in force.
pub fn document(gw: &Gateway) -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for route in &gw.routes {
        let params: Vec<String> = Pattern::parse(&route.path)
            .map(|p| p.segments)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|s| match s {
                Segment::Param(name) => Some(name),
                Segment::Literal(_) => None,
            })
            .collect();
        let item = paths.entry(route.path.clone()).or_insert_with(|| json!({}));
        let prefix = !route.exact && params.is_empty();
        if prefix {
            item["x-portcullis-match"] = json!("prefix: deeper paths match too");
        }
        let methods = route.methods.as_deref().unwrap_or(&ANY_METHOD);
        for method in methods {
            let key = method.as_str().to_ascii_lowercase();
            // Two routes on one path and method (by host): the first is listed.
            if item.get(&key).is_none() {
                item[key.as_str()] = operation(route, method, &params);
            }
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Portcullis gateway",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Routes served by this gateway, generated from its configuration.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": gw.auth_header.as_str()},
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "An OAuth 2.0 / OpenID Connect access token (JWT) of a configured issuer.",
                },
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "description": "An answer the gateway makes itself.",
                    "required": ["error", "message", "request_id"],
                    "properties": {
                        "error": {"type": "string", "examples": ["missing_api_key"]},
                        "message": {"type": "string"},
                        "request_id": {"type": "string"},
                    },
                },
            },
        },
    })
}

/// The document with `servers`: where "try it out" on the docs page sends
/// requests.
pub fn with_servers(mut doc: Value, servers: &[String]) -> Value {
    doc["servers"] = servers.iter().map(|url| json!({"url": url})).collect();
    doc
}

/// The document as the public listener's docs page shows it: its server is
/// that listener (`/`, relative to the document).
pub fn for_public_docs(gw: &Gateway) -> Value {
    with_servers(document(gw), &["/".to_string()])
}

/// The public listeners' base URLs as a browser that reached the admin
/// listener by `host_header` can call them: a listener on a wildcard address
/// (`0.0.0.0`, `::`) is reached by the host name the browser used.
pub fn public_servers(
    listen: &[SocketAddr],
    tls_listen: &[SocketAddr],
    host_header: Option<&str>,
) -> Vec<String> {
    let host = host_header
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
        .map_or_else(|| "localhost".to_string(), |a| a.host().to_string());
    let url = |addr: &SocketAddr| {
        let scheme = if tls_listen.contains(addr) {
            "https"
        } else {
            "http"
        };
        if addr.ip().is_unspecified() {
            format!("{scheme}://{host}:{}", addr.port())
        } else {
            format!("{scheme}://{addr}")
        }
    };
    // Plain listeners first: the one "try it out" picks by default.
    let (tls, plain): (Vec<&SocketAddr>, Vec<&SocketAddr>) =
        listen.iter().partition(|a| tls_listen.contains(a));
    plain.into_iter().chain(tls).map(url).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::load_str;

    fn gateway(routes: &str) -> Gateway {
        let src = format!(
            "listen:\n  - addr: 127.0.0.1:8000\nauth: {{ header: x-key }}\n\
             consumers:\n  - {{ name: web, keys: [k] }}\n\
             upstreams:\n  u: {{ peers: [\"127.0.0.1:8001\"] }}\nroutes:\n{routes}"
        );
        let config = load_str(&src, "t.yaml", &|_| None).expect("loads");
        Gateway::build(&config, "t.yaml").expect("compiles")
    }

    #[test]
    fn routes_become_paths_with_params_methods_and_security() {
        let gw = gateway(
            "  - { name: users, path: /users, methods: [GET, POST], upstream: u }\n\
             \x20 - { name: one, path: \"/users/{id}\", upstream: u, rate_limit: { requests: 1, per: 1s } }\n\
             \x20 - { name: health, path: /health, exact: true, auth: none, respond: { status: 200 } }\n",
        );
        let doc = document(&gw);
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(
            doc["components"]["securitySchemes"]["apiKey"]["name"],
            "x-key"
        );
        let users = &doc["paths"]["/users"];
        assert!(users["get"].is_object() && users["post"].is_object());
        assert!(users["delete"].is_null(), "only the route's methods");
        assert_eq!(
            users["x-portcullis-match"],
            "prefix: deeper paths match too"
        );
        assert_eq!(users["get"]["security"], json!([{"apiKey": []}]));
        assert!(users["get"]["responses"]["401"].is_object());

        let one = &doc["paths"]["/users/{id}"];
        assert!(one["delete"].is_object(), "no methods: every method");
        assert_eq!(one["get"]["parameters"][0]["name"], "id");
        assert_eq!(one["get"]["parameters"][0]["in"], "path");
        assert!(one["get"]["responses"]["429"].is_object());

        let health = &doc["paths"]["/health"]["get"];
        assert_eq!(health["security"], json!([]));
        assert!(health["responses"]["200"].is_object());
        assert!(health["responses"]["401"].is_null());
    }

    #[test]
    fn servers_point_at_the_public_listeners() {
        let addr = |s: &str| s.parse::<SocketAddr>().expect("addr");
        let listen = [
            addr("0.0.0.0:8443"),
            addr("127.0.0.1:8000"),
            addr("[::]:8001"),
        ];
        let tls = [addr("0.0.0.0:8443")];
        assert_eq!(
            public_servers(&listen, &tls, Some("gw.internal:9100")),
            [
                "http://127.0.0.1:8000",
                "http://gw.internal:8001",
                "https://gw.internal:8443"
            ]
        );
        assert_eq!(
            public_servers(&listen[2..], &[], Some("[::1]:9100")),
            ["http://[::1]:8001"]
        );
        assert_eq!(
            public_servers(&listen[2..], &[], Some("bad host/")),
            ["http://localhost:8001"]
        );
        let gw = gateway("  - { name: users, path: /users, upstream: u }\n");
        assert_eq!(for_public_docs(&gw)["servers"], json!([{"url": "/"}]));
    }
}
