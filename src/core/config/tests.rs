//! Config error reporting (SPEC §3): every error is one line
//! `FILE:LINE:COL: FIELD_PATH: message` at the offending key or value, every error
//! is listed, and no secret (a `keys` value, or a value substituted from `${VAR}`)
//! ever reaches a message.
//!
//! Sources are written with `"\` so that line 1 of the YAML is the first line after
//! it; `${VAR}`s come from `fake_env`, never from the process environment.

use crate::core::config::{load_str, Config, ConfigError};

pub(crate) const FILE: &str = "gateway.yaml";

/// Values of the fake environment; every one is treated as a secret.
pub(crate) const WEB_KEY: &str = "web-key-from-env-8d1f";
pub(crate) const GATEWAY_SECRET: &str = "gateway-secret-5b2c";
pub(crate) const NEWLINE_SECRET: &str = "hunter2\r\nx-injected: yes";
pub(crate) const ADDR_SECRET: &str = "not-an-address-secret-77";
pub(crate) const NAME_SECRET: &str = "internal-name-secret-3a";

pub(crate) fn fake_env(name: &str) -> Option<String> {
    let value = match name {
        "WEB_API_KEY" => WEB_KEY,
        "GATEWAY_SECRET" => GATEWAY_SECRET,
        "NEWLINE_SECRET" => NEWLINE_SECRET,
        "ADDR_SECRET" => ADDR_SECRET,
        "NAME_SECRET" => NAME_SECRET,
        _ => return None,
    };
    Some(value.to_string())
}

pub(crate) fn load(src: &str) -> Config {
    load_str(src, FILE, &fake_env).unwrap_or_else(|e| panic!("the config should load:\n{e}"))
}

/// The errors `load_str` reports for `src`.
pub(crate) fn load_errors(src: &str) -> Vec<ConfigError> {
    match load_str(src, FILE, &fake_env) {
        Ok(_) => panic!("the config should be refused:\n{src}"),
        Err(errors) => errors.0,
    }
}

pub(crate) fn render(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The only error; fails listing them all if there are more or none.
#[track_caller]
pub(crate) fn single(errors: &[ConfigError]) -> &ConfigError {
    assert_eq!(
        errors.len(),
        1,
        "expected exactly one error, got:\n{}",
        render(errors)
    );
    &errors[0]
}

#[track_caller]
pub(crate) fn assert_error(e: &ConfigError, line: usize, col: usize, path: &str, fragment: &str) {
    assert_eq!(
        (e.file.as_str(), e.line, e.col, e.path.as_str()),
        (FILE, line, col, path),
        "position or path of: {e}"
    );
    assert!(
        e.message.contains(fragment),
        "message of `{e}` should contain {fragment:?}"
    );
}

/// No error, as displayed, contains any part of a secret.
#[track_caller]
pub(crate) fn assert_no_secret(errors: &[ConfigError], secrets: &[&str]) {
    let text = render(errors);
    for secret in secrets {
        for part in secret.split(['\r', '\n']).filter(|p| !p.is_empty()) {
            assert!(
                !text.contains(part),
                "the secret part {part:?} appears in:\n{text}"
            );
        }
    }
}

// ---- decoding: one test per kind of error --------------------------------------

#[test]
fn unknown_top_level_field() {
    let src = "\
listen:
  - addr: 127.0.0.1:8000
rootes: []
routes: []
";
    let errors = load_errors(src);
    let e = single(&errors);
    assert_error(e, 3, 1, "rootes", "unknown field, expected one of: listen");
    assert!(e.message.contains("routes"), "{e}");
}

#[test]
fn unknown_nested_field() {
    let src = "\
listen:
  - addr: 127.0.0.1:8000
routes:
  - name: health
    path: /health
    respond: { status: 200 }
    foo: 1
";
    let errors = load_errors(src);
    assert_error(single(&errors), 7, 5, "routes[0].foo", "unknown field");
    assert!(errors[0].message.contains("strip_prefix"), "{}", errors[0]);
}

#[test]
fn unknown_field_deep_in_an_upstream() {
    let src = "\
listen:
  - addr: 127.0.0.1:8000
upstreams:
  users:
    peers: [\"127.0.0.1:8001\"]
    timeouts: { connect: 1s, reed: 30s }
routes: []
";
    let errors = load_errors(src);
    assert_error(
        single(&errors),
        6,
        30,
        "upstreams.users.timeouts.reed",
        "unknown field, expected one of: connect, read, write, idle",
    );
}

#[test]
fn missing_required_field() {
    // A health check needs a path; the error points at the mapping that lacks it.
    let src = "\
listen:
  - addr: 127.0.0.1:8000
upstreams:
  users:
    peers: [\"127.0.0.1:8001\"]
    health_check: { interval: 2s }
routes: []
";
    let errors = load_errors(src);
    assert_error(
        single(&errors),
        6,
        19,
        "upstreams.users.health_check",
        "missing field `path`",
    );
}

#[test]
fn missing_required_field_in_a_block_mapping_names_the_field() {
    let src = "\
listen:
  - addr: 127.0.0.1:8000
routes:
  - name: health
    respond: { status: 200 }
";
    let errors = load_errors(src);
    let e = single(&errors);
    assert_eq!((e.line, e.path.as_str()), (4, "routes[0]"), "{e}");
    assert_eq!(e.message, "missing field `path`");
}

#[test]

fn missing_field_in_a_block_mapping_points_at_the_mapping() {
    let src = "\
listen:
  - addr: 127.0.0.1:8000
routes:
  - name: health
    respond: { status: 200 }
";
    // Currently 4:9, the `:` after `name`.
    assert_error(
        single(&load_errors(src)),
        4,
        5,
        "routes[0]",
        "missing field `path`",
    );
    // Currently 1:7, the `:` after `routes`.
    assert_error(
        single(&load_errors("routes: []\n")),
        1,
        1,
        "",
        "missing field `listen`",
    );
}

#[test]
fn wrong_type_list_where_a_string_is_expected() {
    let src = "\
listen:
  - addr: 127.0.0.1:8000
routes:
  - name: [users, orders]
    path: /users
    respond: { status: 200 }
";
    let errors = load_errors(src);
    assert_error(
        single(&errors),
        4,
        11,
        "routes[0].name",
        "expected a string, found a list",
    );
}

#[test]
fn bad_duration_matches_the_spec_example() {
    // The SPEC's example error, at the very position it names: `per`'s value is on
    // line 14, column 15.
    let src = "\
listen:
  - addr: 127.0.0.1:8000
upstreams:
  users:
    peers: [\"127.0.0.1:8001\"]
routes:
  - { name: a, path: /a, upstream: users }
  - name: b
    path: /b
    upstream: users
  - name: c
    path: /c
    rate_limit:
         per: 5 parsecs
         requests: 10
    upstream: users
";
    let errors = load_errors(src);
    assert_eq!(
        single(&errors).to_string(),
        "gateway.yaml:14:15: routes[2].rate_limit.per: \
         expected a duration like \"10s\", found \"5 parsecs\""
    );
}

#[test]
fn bad_size() {
    let src = "\
listen:
  - addr: 127.0.0.1:8000
limits:
  max_header_bytes: 32 KiB
routes: []
";
    let errors = load_errors(src);
    assert_error(
        single(&errors),
        4,
        21,
        "limits.max_header_bytes",
        "expected a size like \"512KiB\" or \"1MiB\", found \"32 KiB\"",
    );
}

#[test]
fn bad_address_in_listen() {
    let src = "\
listen:
  - addr: 127.0.0.1:8000
  - addr: 0.0.0.0
routes: []
";
    let errors = load_errors(src);
    assert_error(
        single(&errors),
        3,
        11,
        "listen[1].addr",
        "expected an address like \"127.0.0.1:8000\", found \"0.0.0.0\"",
    );
}

#[test]
fn bad_cidr_in_trusted_proxies() {
    let src = "\
listen:
  - addr: 127.0.0.1:8000
trusted_proxies: [10.0.0.0/8, 10.0.0.0/33]
routes: []
";
    let errors = load_errors(src);
    assert_error(
        single(&errors),
        3,
        31,
        "trusted_proxies[1]",
        "expected a CIDR block like \"10.0.0.0/8\", found \"10.0.0.0/33\"",
    );
}

#[test]
fn bad_enum_value() {
    let src = "\
listen:
  - addr: 127.0.0.1:8000
upstreams:
  users:
    peers: [\"127.0.0.1:8001\"]
    balance: fastest
routes: []
";
    let errors = load_errors(src);
    let e = single(&errors);
    assert_error(e, 6, 14, "upstreams.users.balance", "found \"fastest\"");
    assert!(e.message.contains("round_robin"), "{e}");
}

#[test]
fn duplicate_field_in_a_mapping() {
    let src = "\
listen:
  - addr: 127.0.0.1:8000
routes:
  - name: health
    path: /health
    respond: { status: 200 }
    path: /healthz
";
    let errors = load_errors(src);
    assert_error(single(&errors), 7, 5, "routes[0].path", "duplicate field");
}

#[test]
fn duplicate_name_in_a_table() {
    let src = "\
listen:
  - addr: 127.0.0.1:8000
upstreams:
  users:
    peers: [\"127.0.0.1:8001\"]
  users:
    peers: [\"127.0.0.1:8002\"]
routes: []
";
    let errors = load_errors(src);
    assert_error(single(&errors), 6, 3, "upstreams.users", "duplicate name");
}

#[test]
fn unset_environment_variable() {
    let src = "\
listen:
  - addr: 127.0.0.1:8000
upstreams:
  users:
    peers: [\"127.0.0.1:8001\"]
    headers:
      x-gateway-secret: \"${GATEWAY_SECRT}\"
routes: []
";
    let errors = load_errors(src);
    assert_error(
        single(&errors),
        7,
        25,
        "upstreams.users.headers.x-gateway-secret",
        "environment variable `GATEWAY_SECRT` is not set",
    );
}

#[test]
fn set_environment_values_never_appear_in_errors() {
    // Both values are set but invalid where they are used: the errors must say so
    // without quoting them.
    let src = "\
listen:
  - addr: 127.0.0.1:8000
admin:
  addr: \"${ADDR_SECRET}\"
upstreams:
  users:
    peers: [\"127.0.0.1:8001\"]
    headers:
      x-gateway-secret: \"${NEWLINE_SECRET}\"
routes: []
";
    let errors = load_errors(src);
    assert_eq!(errors.len(), 2, "{}", render(&errors));
    assert_error(
        &errors[0],
        4,
        9,
        "admin.addr",
        "expected an address like \"127.0.0.1:8000\", found \"${ADDR_SECRET}\"",
    );
    assert_error(
        &errors[1],
        9,
        25,
        "upstreams.users.headers.x-gateway-secret",
        "not a valid header value",
    );
    assert_no_secret(&errors, &[ADDR_SECRET, NEWLINE_SECRET]);
}

#[test]
fn bad_key_hash_format() {
    let src = "\
listen:
  - addr: 127.0.0.1:8000
consumers:
  - name: partner
    key_hashes:
      - \"sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"
      - \"md5:098f6bcd4621d373cade4e832627b4f6\"
routes: []
";
    let errors = load_errors(src);
    assert_error(
        single(&errors),
        7,
        9,
        "consumers[0].key_hashes[1]",
        "expected \"sha256:\" followed by 64 hex digits",
    );
}

#[test]

fn key_hash_with_sign_characters_is_refused() {
    let src = format!(
        "\
listen:
  - addr: 127.0.0.1:8000
consumers:
  - name: partner
    key_hashes: [\"sha256:{}\"]
routes: []
",
        "+0".repeat(32)
    );
    let errors = load_errors(&src);
    assert_error(
        single(&errors),
        5,
        18,
        "consumers[0].key_hashes[0]",
        "64 hex digits",
    );
}

#[test]
fn route_with_neither_upstream_nor_respond() {
    let src = "\
listen:
  - addr: 127.0.0.1:8000
routes:
  - name: orphan
    path: /orphan
";
    let errors = load_errors(src);
    assert_error(
        single(&errors),
        4,
        11,
        "routes[0]",
        "a route needs one of `upstream`, `respond` or `aggregate`",
    );
}

#[test]
fn empty_listen_list() {
    let src = "\
listen: []
routes: []
";
    let errors = load_errors(src);
    assert_error(
        single(&errors),
        1,
        9,
        "listen",
        "at least one listener is needed",
    );
}

#[test]
fn yaml_syntax_error_has_a_position() {
    let src = "\
listen:
  - addr: 127.0.0.1:8000
routes:
  - name: health
  path: /health
";
    let errors = load_errors(src);
    let e = single(&errors);
    assert_error(e, 5, 3, "", "invalid YAML");
    assert!(
        e.to_string()
            .starts_with("gateway.yaml:5:3: invalid YAML: "),
        "{e}"
    );
}

// ---- cross-references (checked after decoding) ---------------------------------

#[test]
fn unknown_upstream_name_in_a_route() {
    let src = "\
listen:
  - addr: 127.0.0.1:8000
upstreams:
  users:
    peers: [\"127.0.0.1:8001\"]
  orders:
    peers: [\"127.0.0.1:8002\"]
routes:
  - name: users
    path: /users
    upstream: user
";
    let errors = load_errors(src);
    assert_error(
        single(&errors),
        11,
        15,
        "routes[0].upstream",
        "unknown upstream \"user\"; upstreams are: users, orders",
    );
}

#[test]
fn unknown_consumer_name_in_a_route() {
    let src = "\
listen:
  - addr: 127.0.0.1:8000
consumers:
  - name: web
    keys: [web-key]
  - name: partner
    keys: [partner-key]
routes:
  - name: health
    path: /health
    consumers: [web, partnr]
    respond: { status: 200 }
";
    let errors = load_errors(src);
    assert_error(
        single(&errors),
        11,
        22,
        "routes[0].consumers[1]",
        "unknown consumer \"partnr\"",
    );
}

#[test]
fn duplicate_route_names() {
    let src = "\
listen:
  - addr: 127.0.0.1:8000
routes:
  - name: health
    path: /health
    respond: { status: 200 }
  - name: health
    path: /healthz
    respond: { status: 200 }
";
    let errors = load_errors(src);
    assert_error(
        single(&errors),
        7,
        11,
        "routes[1].name",
        "duplicate route name \"health\"",
    );
}

#[test]

fn environment_values_never_appear_in_name_errors() {
    let src = "\
listen:
  - addr: 127.0.0.1:8000
upstreams:
  users:
    peers: [\"127.0.0.1:8001\"]
routes:
  - name: \"${NAME_SECRET}\"
    path: /a
    upstream: \"${NAME_SECRET}\"
  - name: \"${NAME_SECRET}\"
    path: /b
    upstream: users
";
    let errors = load_errors(src);
    assert_eq!(errors.len(), 2, "{}", render(&errors));
    assert_error(&errors[0], 9, 15, "routes[0].upstream", "unknown upstream");
    assert_error(&errors[1], 10, 11, "routes[1].name", "duplicate route name");
    assert_no_secret(&errors, &[NAME_SECRET]);
}

#[test]

fn a_key_written_without_brackets_is_not_printed() {
    let src = "\
listen:
  - addr: 127.0.0.1:8000
consumers:
  - name: web
    keys: plain-key-written-bare-91c
routes: []
";
    let errors = load_errors(src);
    let e = errors
        .iter()
        .find(|e| e.path == "consumers[0].keys")
        .unwrap_or_else(|| panic!("no error for the keys:\n{}", render(&errors)));
    assert_error(e, 5, 11, "consumers[0].keys", "expected a list");
    assert_no_secret(&errors, &["plain-key-written-bare-91c"]);
}

// ---- every error, in file order ------------------------------------------------

#[test]
fn several_errors_are_all_reported_in_file_order() {
    // The unknown field of routes[0] is found before its `max_body` is decoded,
    // yet is listed after it: errors come in file order.
    let src = "\
listen:
  - addr: 127.0.0.1:80800
limits:
  idle_timeout: forever
upstreams:
  users:
    peers: [\"127.0.0.1:8001\"]
    balance: fastest
routes:
  - name: users
    path: /users
    upstream: users
    max_body: lots
    colour: blue
";
    let errors = load_errors(src);
    let expected = [
        "gateway.yaml:2:11: listen[0].addr: expected an address like \"127.0.0.1:8000\", found \"127.0.0.1:80800\"",
        "gateway.yaml:4:17: limits.idle_timeout: expected a duration like \"10s\", found \"forever\"",
        "gateway.yaml:8:14: upstreams.users.balance: expected one of round_robin random least_connections consistent_hash, found \"fastest\"",
        "gateway.yaml:13:15: routes[0].max_body: expected a size like \"512KiB\" or \"1MiB\", found \"lots\"",
        "gateway.yaml:14:5: routes[0].colour: unknown field, expected one of: name, path, methods, host, exact, upstream, auth, consumers, scopes, claims_to_headers, forward_token, rate_limit, request_headers, response_headers, strip_prefix, preserve_host, max_body, timeout, respond, aggregate, max_part_body, match, cors, cache",
    ];
    assert_eq!(render(&errors), expected.join("\n"));
}

#[test]
fn several_cross_reference_errors_are_all_reported() {
    let src = "\
listen:
  - addr: 127.0.0.1:8000
consumers:
  - name: web
    keys: [web-key]
routes:
  - name: a
    path: /a
    upstream: nowhere
  - name: b
    path: /b
    consumers: [nobody]
    respond: { status: 200 }
  - name: a
    path: /c
";
    let errors = load_errors(src);
    assert_eq!(errors.len(), 4, "{}", render(&errors));
    assert_error(&errors[0], 9, 15, "routes[0].upstream", "unknown upstream");
    assert_error(
        &errors[1],
        12,
        17,
        "routes[1].consumers[0]",
        "unknown consumer",
    );
    assert_error(&errors[2], 14, 11, "routes[2].name", "duplicate route name");
    assert_error(&errors[3], 14, 11, "routes[2]", "a route needs one of");
}

#[test]
fn cross_reference_errors_are_reported_with_decode_errors() {
    let src = "\
listen:
  - addr: 127.0.0.1:8000
shutdown_grace: 5 parsecs
routes:
  - name: a
    path: /a
    upstream: nowhere
";
    let errors = load_errors(src);
    assert_eq!(errors.len(), 2, "{}", render(&errors));
    assert_error(&errors[0], 3, 17, "shutdown_grace", "expected a duration");
    assert_error(&errors[1], 7, 15, "routes[0].upstream", "unknown upstream");
}

#[test]
fn a_listener_or_upstream_that_failed_is_not_reported_again() {
    // The listener and the upstream are reported once each: not also as "no
    // listener" or as an unknown upstream in the route that names it.
    let src = "\
listen:
  - addr: [127.0.0.1, 8000]
upstreams:
  users:
    balance: random
routes:
  - name: users
    path: /users
    upstream: users
";
    let errors = load_errors(src);
    assert_eq!(errors.len(), 2, "{}", render(&errors));
    assert_error(
        &errors[0],
        2,
        11,
        "listen[0].addr",
        "expected a string, found a list",
    );
    assert_error(&errors[1], 5, 5, "upstreams.users", "missing field `peers`");
}

#[test]

fn paths_keep_the_index_written_in_the_file() {
    // routes[0] fails (no path): the unknown upstream is in routes[1].
    let src = "\
listen:
  - addr: 127.0.0.1:8000
routes:
  - name: a
    respond: { status: 200 }
  - name: b
    path: /b
    upstream: nowhere
";
    let errors = load_errors(src);
    assert_eq!(errors.len(), 2, "{}", render(&errors));
    assert_error(&errors[1], 8, 15, "routes[1].upstream", "unknown upstream");

    // consumers[0] fails (its name is a list): the bad hash is in consumers[1].
    let src = "\
listen:
  - addr: 127.0.0.1:8000
consumers:
  - name: [x]
    keys: [k1]
  - name: web
    key_hashes: [\"sha256:00\"]
routes: []
";
    let errors = load_errors(src);
    assert_eq!(errors.len(), 2, "{}", render(&errors));
    assert_error(
        &errors[1],
        7,
        18,
        "consumers[1].key_hashes[0]",
        "64 hex digits",
    );

    // The route's first consumer fails: "nobody" is consumers[1].
    let src = "\
listen:
  - addr: 127.0.0.1:8000
consumers:
  - name: web
    keys: [k1]
routes:
  - name: a
    path: /a
    consumers: [[x], nobody]
    respond: { status: 200 }
";
    let errors = load_errors(src);
    assert_eq!(errors.len(), 2, "{}", render(&errors));
    assert_error(
        &errors[1],
        9,
        22,
        "routes[0].consumers[1]",
        "unknown consumer",
    );
}

#[test]

fn an_unknown_consumer_is_reported_beside_a_bad_key_hash() {
    let src = "\
listen:
  - addr: 127.0.0.1:8000
consumers:
  - name: web
    key_hashes: [\"sha256:00\"]
routes:
  - name: a
    path: /a
    consumers: [nobody]
    respond: { status: 200 }
";
    let errors = load_errors(src);
    assert_eq!(errors.len(), 2, "{}", render(&errors));
    assert_error(
        &errors[0],
        5,
        18,
        "consumers[0].key_hashes[0]",
        "64 hex digits",
    );
    assert_error(
        &errors[1],
        9,
        17,
        "routes[0].consumers[0]",
        "unknown consumer \"nobody\"",
    );
}

#[test]

fn a_field_that_failed_to_decode_causes_no_follow_on_error() {
    let cases = [
        // Reported also as "a route needs one of `upstream`, `respond` or `aggregate`".
        (
            "routes:\n  - name: a\n    path: /a\n    respond: { body: ok }\n",
            (6, 14, "routes[0].respond"),
        ),
        (
            "routes:\n  - name: a\n    path: /a\n    upstream: [x]\n",
            (6, 15, "routes[0].upstream"),
        ),
        // Reported also as "a consumer needs `keys` or `key_hashes`".
        (
            "consumers:\n  - name: web\n    keys: { a: 1 }\nroutes: []\n",
            (5, 11, "consumers[0].keys"),
        ),
        // Reported also as "at least one peer is needed".
        (
            "upstreams:\n  u:\n    peers: [[x]]\nroutes: []\n",
            (5, 13, "upstreams.u.peers[0]"),
        ),
        // Reported also as "`store: redis` needs `redis: { url: ... }`".
        (
            "rate_limit:\n  store: redis\n  redis: { url: [x] }\nroutes: []\n",
            (5, 17, "rate_limit.redis.url"),
        ),
    ];
    for (rest, (line, col, path)) in cases {
        let src = format!("listen:\n  - addr: 127.0.0.1:8000\n{rest}");
        let errors = load_errors(&src);
        assert_error(single(&errors), line, col, path, "");
    }
}

// ---- found when compiling ------------------------------------------------------

#[test]
fn aggregate_routes_refuse_body_methods_strip_prefix_and_no_parts() {
    let src = format!(
        "{AGGREGATE_HEAD}  - name: overview
    path: /overview/users/{{id}}
    methods: [GET, POST]
    strip_prefix: true
    aggregate:
      user: {{ upstream: users, path: \"/users/{{id}}\" }}
  - name: empty
    path: /empty
    aggregate: {{}}
  - name: plain
    path: /users
    upstream: users
    max_part_body: 1KiB
"
    );
    let errors = load_errors(&src);
    assert_eq!(errors.len(), 4, "{}", render(&errors));
    assert_error(
        &errors[0],
        9,
        14,
        "routes[0].methods",
        "an aggregate route answers GET and HEAD only, found POST",
    );
    assert_error(
        &errors[1],
        10,
        19,
        "routes[0].strip_prefix",
        "does not apply to an aggregate route",
    );
    assert_error(
        &errors[2],
        15,
        16,
        "routes[1].aggregate",
        "needs at least one part",
    );
    assert_error(
        &errors[3],
        19,
        20,
        "routes[2].max_part_body",
        "applies to `aggregate` routes only",
    );
}

#[test]
fn health_check_paths_are_checked() {
    let src = "\
listen:
  - addr: 127.0.0.1:8000
upstreams:
  users:
    peers: [\"127.0.0.1:8001\"]
    health_check: { path: healthz, interval: 2s }
routes:
  - { name: users, path: /users, upstream: users }
";
    let errors = load_errors(src);
    assert_error(
        single(&errors),
        6,
        27,
        "upstreams.users.health_check.path",
        "expected a path like \"/healthz\", found \"healthz\"",
    );
}

pub(crate) const AGGREGATE_HEAD: &str = "\
listen:
  - addr: 127.0.0.1:8000
upstreams:
  users: { peers: [\"127.0.0.1:8001\"] }
  orders: { peers: [\"127.0.0.1:8002\"] }
routes:
";

#[test]
fn a_file_over_the_size_bound_is_refused_before_it_is_parsed() {
    let dir = std::env::temp_dir().join(format!("portcullis-size-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(FILE);
    // Valid YAML all the way: only the size is wrong.
    let line = "# a comment line that makes the file big, and nothing else\n";
    let lines = (super::MAX_FILE_BYTES as usize / line.len()) + 1;
    std::fs::write(&path, line.repeat(lines)).expect("write");
    let mut errors = super::load_file(&path).expect_err("too large");
    errors.0[0].file = FILE.to_string();
    let _ = std::fs::remove_dir_all(&dir);
    let e = single(&errors.0);
    assert_error(e, 1, 1, "", "larger than 16 MiB");
}

#[test]
fn a_listen_address_twice_or_under_a_wildcard_is_an_error() {
    let src = "\
listen:
  - addr: 127.0.0.1:8000
  - addr: 127.0.0.1:8000
  - addr: 0.0.0.0:8443
  - addr: 127.0.0.1:8443
routes: []
";
    let errors = load_errors(src);
    assert_eq!(errors.len(), 2, "{}", render(&errors));
    assert_error(
        &errors[0],
        3,
        11,
        "listen[1].addr",
        "overlaps listen[0]: each listener needs its own address",
    );
    assert_error(&errors[1], 5, 11, "listen[3].addr", "overlaps listen[2]");
}

#[test]
fn the_admin_listener_cannot_share_a_listen_address() {
    let src = "\
listen:
  - addr: 0.0.0.0:8000
admin:
  addr: 127.0.0.1:8000
routes: []
";
    let errors = load_errors(src);
    assert_error(
        single(&errors),
        4,
        9,
        "admin.addr",
        "overlaps listen[0]: the admin listener needs an address of its own",
    );
    // Another port is fine.
    let fine = "listen:\n  - addr: 0.0.0.0:8000\nadmin:\n  addr: 127.0.0.1:9100\nroutes: []\n";
    assert!(load_str(fine, FILE, &fake_env).is_ok());
    // Without `admin`, the default admin address counts.
    let errors = load_errors("listen:\n  - addr: 0.0.0.0:9100\nroutes: []\n");
    assert_error(
        single(&errors),
        2,
        11,
        "listen[0].addr",
        "overlaps the admin listener's default address 127.0.0.1:9100",
    );
}

#[test]
fn cache_settings_load_and_their_mistakes_are_errors_with_positions() {
    let ok = load(
        "\
listen:
  - addr: 127.0.0.1:8000
cache: { max_size: 64MiB, max_object: 512KiB }
upstreams:
  u: { peers: [\"127.0.0.1:8001\"] }
routes:
  - name: products
    path: /products
    upstream: u
    cache: { ttl: 30s, vary: [Accept-Language], per_consumer: false, stale_while_revalidate: 10s, stale_if_error: 1m }
",
    );
    let cache = ok
        .routes
        .iter()
        .next()
        .unwrap()
        .1
        .cache
        .clone()
        .unwrap()
        .value;
    assert_eq!(cache.ttl, Some(std::time::Duration::from_secs(30)));
    assert_eq!(cache.vary.unwrap()[0].as_str(), "accept-language");
    assert_eq!(
        ok.cache.unwrap().value.max_object.unwrap().value.0,
        512 * 1024
    );

    let errors = load_errors(
        "\
listen:
  - addr: 127.0.0.1:8000
cache: { max_size: 1MiB, max_object: 2MiB }
upstreams:
  u: { peers: [\"127.0.0.1:8001\"] }
routes:
  - name: a
    path: /a
    respond: { status: 200 }
    cache: { ttl: 1s }
  - name: b
    path: /b
    upstream: u
    auth: none
    cache: { ttl: soon, per_consumer: true, colour: red }
",
    );
    let expected = [
        "gateway.yaml:3:38: cache.max_object: 2097152 is larger than `max_size` (1048576 bytes): nothing that large could be stored",
        "gateway.yaml:10:12: routes[0].cache: `cache` applies to routes with an `upstream` only",
        "gateway.yaml:15:12: routes[1].cache.per_consumer: `per_consumer` needs a route with auth: with `auth: none` nobody is identified",
        "gateway.yaml:15:19: routes[1].cache.ttl: expected a duration like \"10s\", found \"soon\"",
        "gateway.yaml:15:45: routes[1].cache.colour: unknown field, expected one of: ttl, vary, per_consumer, stale_while_revalidate, stale_if_error",
    ];
    assert_eq!(render(&errors), expected.join("\n"));
}
