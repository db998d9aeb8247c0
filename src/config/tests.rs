//! Config error reporting (SPEC §3): every error is one line
//! `FILE:LINE:COL: FIELD_PATH: message` at the offending key or value, every error
//! is listed, and no secret (a `keys` value, or a value substituted from `${VAR}`)
//! ever reaches a message.
//!
//! Sources are written with `"\` so that line 1 of the YAML is the first line after
//! it; `${VAR}`s come from `fake_env`, never from the process environment.

use crate::config::{load_str, Config, ConfigError};
use crate::gateway::Gateway;
use crate::router::Lookup;
use http::Method;
use std::time::Duration;

const FILE: &str = "gateway.yaml";

/// Values of the fake environment; every one is treated as a secret.
const WEB_KEY: &str = "web-key-from-env-8d1f";
const GATEWAY_SECRET: &str = "gateway-secret-5b2c";
const NEWLINE_SECRET: &str = "hunter2\r\nx-injected: yes";
const ADDR_SECRET: &str = "not-an-address-secret-77";
const NAME_SECRET: &str = "internal-name-secret-3a";

fn fake_env(name: &str) -> Option<String> {
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

fn load(src: &str) -> Config {
    load_str(src, FILE, &fake_env).unwrap_or_else(|e| panic!("the config should load:\n{e}"))
}

/// The errors `load_str` reports for `src`.
fn load_errors(src: &str) -> Vec<ConfigError> {
    match load_str(src, FILE, &fake_env) {
        Ok(_) => panic!("the config should be refused:\n{src}"),
        Err(errors) => errors.0,
    }
}

/// The errors `Gateway::compile` reports for `src`, which must load.
fn compile_errors(src: &str) -> Vec<ConfigError> {
    match Gateway::compile(&load(src), FILE) {
        Ok(_) => panic!("the config should not compile:\n{src}"),
        Err(errors) => errors.0,
    }
}

fn render(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The only error; fails listing them all if there are more or none.
#[track_caller]
fn single(errors: &[ConfigError]) -> &ConfigError {
    assert_eq!(
        errors.len(),
        1,
        "expected exactly one error, got:\n{}",
        render(errors)
    );
    &errors[0]
}

#[track_caller]
fn assert_error(e: &ConfigError, line: usize, col: usize, path: &str, fragment: &str) {
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
fn assert_no_secret(errors: &[ConfigError], secrets: &[&str]) {
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
        "gateway.yaml:14:5: routes[0].colour: unknown field, expected one of: name, path, methods, host, exact, upstream, auth, consumers, rate_limit, request_headers, response_headers, strip_prefix, preserve_host, max_body, timeout, respond, aggregate, max_part_body",
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
    let errors = compile_errors(src);
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
    let errors = compile_errors(src);
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
    let errors = compile_errors(src);
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
    let errors = compile_errors(src);
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
    let errors = compile_errors(src);
    assert_error(
        single(&errors),
        3,
        10,
        "listen[0].tls.cert",
        "cannot read \"/nonexistent/tls.crt\"",
    );
}

// ---- a valid config ------------------------------------------------------------

/// SPEC §3's example without what is not implemented yet (rate limits, aggregation,
/// TLS listeners), with peers as literal addresses.
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

    let gateway = match Gateway::compile(&config, FILE) {
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
        gateway.route(&Method::GET, "/users/1", host),
        Lookup::Found(0)
    ));
    assert!(matches!(
        gateway.route(&Method::GET, "/health", None),
        Lookup::Found(2)
    ));
    assert!(matches!(
        gateway.route(&Method::GET, "/usersX", host),
        Lookup::NotFound
    ));
}

const AGGREGATE_HEAD: &str = "\
listen:
  - addr: 127.0.0.1:8000
upstreams:
  users: { peers: [\"127.0.0.1:8001\"] }
  orders: { peers: [\"127.0.0.1:8002\"] }
routes:
";

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
    let gw = Gateway::compile(&load(&src), FILE).expect("compiles");
    assert!(matches!(
        gw.route(&Method::GET, "/overview/users/1", None),
        Lookup::Found(0)
    ));
    assert!(matches!(
        gw.route(&Method::HEAD, "/overview/users/1", None),
        Lookup::Found(0)
    ));
    match gw.route(&Method::POST, "/overview/users/1", None) {
        Lookup::MethodNotAllowed(allow) => assert_eq!(allow, [Method::GET, Method::HEAD]),
        _ => panic!("POST should get 405"),
    }
    let crate::gateway::Target::Aggregate(agg) = &gw.routes[0].target else {
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
    let errors = compile_errors(&src);
    assert_error(
        single(&errors),
        10,
        38,
        "routes[0].aggregate.user.path",
        "`{uid}` is not a parameter of the route's path",
    );
}

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
