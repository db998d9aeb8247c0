//! `/openapi.json`, black-box: generated from the running config, validated
//! by the real `openapi-spec-validator` (PyPI), and following reloads.

mod common;

use common::*;
use std::process::Command;

fn config(backend: &Backend, extra: &str) -> String {
    format!(
        "{head}auth: {{ header: x-client-key }}\n\
         upstreams:\n  users:\n    peers: [\"{peer}\"]\n\
         routes:\n\
         \x20 - {{ name: users, path: /users, methods: [GET, POST], upstream: users }}\n\
         \x20 - {{ name: user, path: \"/users/{{id}}/orders/{{order}}\", upstream: users, rate_limit: {{ requests: 5, per: 1s }} }}\n\
         \x20 - name: overview\n    path: /overview/{{id}}\n    aggregate:\n      user: {{ upstream: users, path: \"/users/{{id}}\" }}\n\
         \x20 - {{ name: health, path: /health, exact: true, auth: none, respond: {{ status: 200, body: ok }} }}\n{extra}",
        head = config_head(),
        peer = backend.addr,
    )
}

fn validate(doc: &[u8]) {
    let dir = temp_dir("openapi");
    let file = dir.join("openapi.json");
    std::fs::write(&file, doc).expect("write openapi.json");
    // `.ci/setup` installs the validator into this virtual environment.
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/target/test-venv/bin/python3");
    let python = if std::path::Path::new(venv).exists() {
        venv
    } else {
        "python3"
    };
    let out = Command::new(python)
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .expect("run openapi-spec-validator (bash .ci/setup installs it)");
    assert!(
        out.status.success(),
        "openapi-spec-validator refused it:\n{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(doc)
    );
}

#[test]
fn the_document_validates_and_describes_the_routes() {
    let backend = Backend::echo();
    let gw = Gateway::start(&config(&backend, ""));
    let resp = get(gw.admin, "/openapi.json", &[]);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    validate(&resp.body);

    let doc = resp.json();
    assert_eq!(doc["openapi"], "3.1.0");
    let scheme = &doc["components"]["securitySchemes"]["apiKey"];
    assert_eq!(scheme["in"], "header");
    assert_eq!(scheme["name"], "x-client-key", "the header of auth.header");
    let op = &doc["paths"]["/users/{id}/orders/{order}"]["get"];
    let names: Vec<&str> = op["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["id", "order"]);
    assert_eq!(
        op["responses"]["429"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Error"
    );
    assert!(doc["paths"]["/overview/{id}"]["get"]["responses"]["default"]["content"].is_object());
    assert!(
        doc["paths"]["/overview/{id}"]["post"].is_null(),
        "aggregate: GET and HEAD"
    );
    assert_eq!(
        doc["paths"]["/health"]["get"]["security"],
        serde_json::json!([])
    );
    assert!(doc["paths"]["/users"]["delete"].is_null());

    // A reload shows up in the document.
    gw.rewrite_config(&config(
        &backend,
        "  - { name: orders, path: /orders, upstream: users }\n",
    ));
    assert_eq!(gw.post_reload().status, 200);
    let doc = get(gw.admin, "/openapi.json", &[]).json();
    assert!(doc["paths"]["/orders"]["get"].is_object());
}

/// Routes with `match` conditions share a path with others (SPEC §8.3): the
/// document stays valid, one operation per path and method (the first route's).
#[test]
fn routes_with_match_conditions_keep_the_document_valid() {
    let backend = Backend::echo();
    let canary = "  - { name: users-v2, path: /users, methods: [GET], upstream: users,\n      \
                  match: { headers: { x-api-version: \"2\" }, query: { beta: \"*\" } } }\n";
    let gw = Gateway::start(&config(&backend, canary));
    let resp = get(gw.admin, "/openapi.json", &[]);
    assert_eq!(resp.status, 200);
    validate(&resp.body);
    let doc = resp.json();
    assert_eq!(doc["paths"]["/users"]["get"]["operationId"], "users_get");
}

#[test]
fn token_routes_declare_the_bearer_scheme_and_any_routes_both() {
    let backend = Backend::echo();
    let config = format!(
        "{head}auth:\n  jwt:\n    issuers:\n      - {{ issuer: legacy, secret: \"${{OPENAPI_HS}}\" }}\n\
         upstreams:\n  users:\n    peers: [\"{peer}\"]\n\
         routes:\n\
         \x20 - {{ name: tokens, path: /tokens, upstream: users, auth: jwt, scopes: [orders:read] }}\n\
         \x20 - {{ name: either, path: /either, upstream: users, auth: any }}\n\
         \x20 - {{ name: keyed, path: /keyed, upstream: users }}\n",
        head = config_head(),
        peer = backend.addr,
    );
    let gw = Gateway::start_with_env(&config, &[("OPENAPI_HS", "openapi-test-hs-secret-value")]);
    let resp = get(gw.admin, "/openapi.json", &[]);
    validate(&resp.body);
    let doc = resp.json();
    let bearer = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(bearer["type"], "http");
    assert_eq!(bearer["scheme"], "bearer");
    assert_eq!(bearer["bearerFormat"], "JWT");
    assert_eq!(
        doc["paths"]["/tokens"]["get"]["security"],
        serde_json::json!([{"bearer": ["orders:read"]}])
    );
    assert_eq!(
        doc["paths"]["/either"]["get"]["security"],
        serde_json::json!([{"apiKey": []}, {"bearer": []}]),
        "alternatives: either one suffices"
    );
    assert_eq!(
        doc["paths"]["/keyed"]["get"]["security"],
        serde_json::json!([{"apiKey": []}])
    );
    assert!(!resp.text().contains("openapi-test-hs-secret-value"));
}
