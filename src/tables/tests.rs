//! Errors only building the tables can find (SPEC §3): a key given twice, a
//! route path that does not parse, a peer that does not resolve, unusable
//! certificates, aggregate parts; and the full example builds.

use crate::core::config::tests::*;
use crate::core::config::ConfigError;
use crate::core::router::Lookup;
use crate::tables::Gateway;
use http::Method;
use std::time::Duration;

/// The errors `Gateway::build` reports for `src`, which must load.
fn build_errors(src: &str) -> Vec<ConfigError> {
    match Gateway::build(&load(src), FILE) {
        Ok(_) => panic!("the config should not build:\n{src}"),
        Err(errors) => errors.0,
    }
}

#[test]
fn a_plain_key_given_to_two_consumers() {
    let src = "\
listen:
  - addr: 127.0.0.1:8000
consumers:
  - name: web
    keys: [\"${WEB_API_KEY}\"]
  - name: partner
    keys: [other-key, web-key-from-env-8d1f]
routes: []
";
    let errors = build_errors(src);
    assert_error(
        single(&errors),
        7,
        23,
        "consumers[1].keys[1]",
        "this key is already given to consumer \"web\"",
    );
    assert_no_secret(&errors, &[WEB_KEY, "other-key"]);
}

#[test]
fn a_key_and_the_hash_of_it_given_to_two_consumers() {
    // sha256("test") is the SPEC's example hash.
    let src = "\
listen:
  - addr: 127.0.0.1:8000
consumers:
  - name: web
    keys: [test]
  - name: partner
    key_hashes: [\"sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"]
routes: []
";
    let errors = build_errors(src);
    assert_error(
        single(&errors),
        7,
        18,
        "consumers[1].key_hashes[0]",
        "already given to consumer \"web\"",
    );
}

#[test]
fn bad_route_path() {
    let src = "\
listen:
  - addr: 127.0.0.1:8000
routes:
  - name: item
    path: /a/x{id}
    respond: { status: 200 }
";
    let errors = build_errors(src);
    let e = single(&errors);
    assert_error(e, 5, 11, "routes[0].path", "must be a whole segment");
    assert!(e.message.contains("x{id}"), "{e}");
}

#[test]
fn unresolvable_peer() {
    let src = "\
listen:
  - addr: 127.0.0.1:8000
upstreams:
  users:
    peers: [\"127.0.0.1:8001\", \"127.0.0.1\"]
routes: []
";
    let errors = build_errors(src);
    assert_error(
        single(&errors),
        5,
        31,
        "upstreams.users.peers[1]",
        "expected a peer like \"127.0.0.1:8001\"",
    );
}

#[test]
fn tls_files_that_cannot_be_used_are_errors() {
    let src = "\
listen:
  - addr: 127.0.0.1:8000
    tls: { cert: /nonexistent/tls.crt, key: /etc/tls.key }
routes:
  - { name: h, path: /, auth: none, respond: { status: 200 } }
";
    let errors = build_errors(src);
    assert_error(
        single(&errors),
        3,
        10,
        "listen[0].tls.cert",
        "cannot read \"/nonexistent/tls.crt\"",
    );
}

// ---- a valid config ------------------------------------------------------------

/// SPEC §3's example without rate limits, aggregation and TLS listeners (each
/// tested on its own), with peers as literal addresses.
const FULL: &str = "\
listen:
  - addr: 0.0.0.0:8000
admin:
  addr: 127.0.0.1:9100      # GET /metrics, /healthz, /readyz, /openapi.json
threads: 4
shutdown_grace: 10s
limits:
  max_header_bytes: 32KiB
  header_read_timeout: 10s
  idle_timeout: 60s
  max_connections: 10000
log: { level: info, format: json }
trusted_proxies: [10.0.0.0/8]

auth:
  header: x-api-key

consumers:
  - name: web
    keys: [\"${WEB_API_KEY}\"]
  - name: partner
    key_hashes: [\"sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"]

upstreams:
  users:
    peers: [\"127.0.0.1:8001\", \"127.0.0.1:8011\"]
    balance: round_robin
    tls: false
    sni: users.internal
    verify: true
    timeouts: { connect: 1s, read: 30s, write: 30s, idle: 60s }
    retries: 1
    health_check: { path: /healthz, interval: 2s }
    headers:
      x-gateway-secret: \"${GATEWAY_SECRET}\"
  orders:
    peers: [\"127.0.0.1:8002\"]
    headers: { x-gateway-secret: \"${GATEWAY_SECRET}\" }

routes:
  - name: users
    path: /users
    methods: [GET, POST, PUT, DELETE]
    host: api.example.com
    upstream: users
    auth: api_key
    consumers: [web, partner]
    request_headers:  { set: { x-tenant: acme }, remove: [cookie] }
    response_headers: { set: { cache-control: no-store }, remove: [server] }
    strip_prefix: false
    preserve_host: false
    max_body: 1MiB
    timeout: 10s
  - name: orders
    path: /orders
    upstream: orders
  - name: health
    path: /health
    exact: true
    auth: none
    respond: { status: 200, body: \"ok\" }
";

#[test]
fn the_full_example_loads_and_compiles() {
    let config = load(FULL);
    assert_eq!(config.listen.value.len(), 1);
    assert_eq!(config.threads.as_ref().map(|t| t.value), Some(4));
    assert_eq!(config.shutdown_grace, Some(Duration::from_secs(10)));
    let limits = config.limits.as_ref().expect("limits");
    assert_eq!(limits.max_header_bytes.map(|b| b.0), Some(32 * 1024));
    assert_eq!(limits.max_connections, Some(10_000));
    let consumers = config.consumers.as_ref().expect("consumers");
    let keys = consumers.items[0].1.keys.as_ref().expect("web's keys");
    assert_eq!(keys[0].value, WEB_KEY, "${{WEB_API_KEY}} is substituted");
    assert_eq!(config.routes.len(), 3);

    let gateway = match Gateway::build(&config, FILE) {
        Ok(g) => g,
        Err(e) => panic!("the config should compile:\n{e}"),
    };
    assert_eq!(gateway.routes.len(), 3);
    assert_eq!(gateway.upstreams.len(), 2);
    assert_eq!(gateway.upstreams[0].peers.len(), 2);
    assert_eq!(gateway.upstreams[0].sni, "users.internal");
    let (name, value) = &gateway.upstreams[1].headers[0];
    assert_eq!(
        (name.as_str(), value.to_str().ok()),
        ("x-gateway-secret", Some(GATEWAY_SECRET))
    );
    assert_eq!(gateway.secret_headers, ["x-gateway-secret"]);
    assert_eq!(gateway.keys.find(WEB_KEY.as_bytes()), Some(0));
    assert_eq!(gateway.keys.find(b"test"), Some(1));
    assert_eq!(gateway.auth_header, "x-api-key");
    assert_eq!(gateway.trusted_proxies.len(), 1);

    let users = &gateway.routes[0];
    assert!(users.needs_key);
    assert_eq!(users.consumers, Some(vec![0, 1]));
    assert_eq!(users.max_body, Some(1 << 20));
    assert_eq!(users.timeout, Some(Duration::from_secs(10)));
    assert!(!gateway.routes[2].needs_key);

    let host = Some("api.example.com");
    assert!(matches!(
        route_of(&gateway, &Method::GET, "/users/1", host),
        Lookup::Found(0)
    ));
    assert!(matches!(
        route_of(&gateway, &Method::GET, "/health", None),
        Lookup::Found(2)
    ));
    assert!(matches!(
        route_of(&gateway, &Method::GET, "/usersX", host),
        Lookup::NotFound
    ));
}

#[test]
fn aggregate_routes_compile_with_get_and_head_by_default() {
    let src = format!(
        "{AGGREGATE_HEAD}  - name: overview
    path: /overview/users/{{id}}
    max_part_body: 64KiB
    aggregate:
      user: {{ upstream: users, path: \"/users/{{id}}\" }}
      orders: {{ upstream: orders, path: \"/orders?user_id={{id}}\" }}
"
    );
    let gw = Gateway::build(&load(&src), FILE).expect("compiles");
    assert!(matches!(
        route_of(&gw, &Method::GET, "/overview/users/1", None),
        Lookup::Found(0)
    ));
    assert!(matches!(
        route_of(&gw, &Method::HEAD, "/overview/users/1", None),
        Lookup::Found(0)
    ));
    match route_of(&gw, &Method::POST, "/overview/users/1", None) {
        Lookup::MethodNotAllowed(allow) => assert_eq!(allow, [Method::GET, Method::HEAD]),
        _ => panic!("POST should get 405"),
    }
    let crate::tables::Target::Aggregate(agg) = &gw.routes[0].target else {
        panic!("an aggregate target");
    };
    assert_eq!(agg.max_part_body, 64 * 1024);
    assert_eq!(agg.upstreams_label, "users,orders");
    let names: Vec<&str> = agg.parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["user", "orders"]);
}

#[test]
fn aggregate_part_params_must_be_the_routes() {
    let src = format!(
        "{AGGREGATE_HEAD}  - name: overview
    path: /overview/users/{{id}}
    aggregate:
      user: {{ upstream: users, path: \"/users/{{uid}}\" }}
"
    );
    let errors = build_errors(&src);
    assert_error(
        single(&errors),
        10,
        38,
        "routes[0].aggregate.user.path",
        "`{uid}` is not a parameter of the route's path",
    );
}

/// The route for a request without headers or query.
fn route_of(gw: &Gateway, method: &Method, path: &str, host: Option<&str>) -> Lookup {
    let headers = http::HeaderMap::new();
    gw.route(&crate::core::router::Request {
        method,
        path,
        host,
        query: None,
        headers: &headers,
    })
}
