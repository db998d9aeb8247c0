//! Checks of the finer routing of SPEC §8.3: peer weights, `outlier`, and a
//! route's `match` conditions (also compiled here for the router).

use super::decode::{Cx, Spanned, Table};
use super::schema::{Config, RouteMatch, Upstream, MAX_WEIGHT};
use crate::core::route_match::{condition_header, Conditions, Want};
use http::HeaderName;
use std::collections::HashSet;

/// `upstreams.NAME.peers[i].weight` and `upstreams.NAME.outlier`.
pub fn check_upstream(cx: &mut Cx<'_>, name: &str, upstream: &Upstream) {
    for (i, peer) in upstream.peers.value.iter().enumerate() {
        let weight = &peer.value.weight;
        if !(1..=MAX_WEIGHT).contains(&weight.value) {
            cx.error_at(
                &format!("upstreams.{name}.peers[{i}].weight"),
                weight.mark,
                format!(
                    "a weight is a whole number from 1 to {MAX_WEIGHT}, found {}",
                    weight.value
                ),
            );
        }
    }
    if let Some(outlier) = &upstream.outlier {
        if outlier.consecutive_failures.value == 0 {
            cx.error_at(
                &format!("upstreams.{name}.outlier.consecutive_failures"),
                outlier.consecutive_failures.mark,
                "must be at least 1",
            );
        }
        if outlier.eject_for.value.is_zero() {
            cx.error_at(
                &format!("upstreams.{name}.outlier.eject_for"),
                outlier.eject_for.mark,
                "must be longer than 0s",
            );
        }
    }
}

/// Header names the gateway sets on the way upstream from the config: the
/// upstreams' `headers` (the gateway secret). A condition on one would judge a
/// value the gateway treats as forged.
pub fn upstream_header_names(config: &Config) -> HashSet<HeaderName> {
    config
        .upstreams
        .iter()
        .flat_map(|t| t.iter())
        .flat_map(|(_, u)| u.headers.iter().flat_map(|h| h.0.iter()))
        .map(|(name, _)| name.clone())
        .collect()
}

/// `routes[i].match`: not empty; names a condition may use, each once.
pub fn check_match(
    cx: &mut Cx<'_>,
    path: &str,
    matching: &Spanned<RouteMatch>,
    key_header: &HeaderName,
    gateway_set: &HashSet<HeaderName>,
) {
    let m = &matching.value;
    let count =
        |t: &Option<Spanned<Table<Spanned<String>>>>| t.as_ref().map_or(0, |t| t.value.0.len());
    let failed = cx.has_errors_under(&format!("{path}.match"));
    if count(&m.headers) + count(&m.query) == 0 && !failed {
        cx.error_at(
            &format!("{path}.match"),
            matching.mark,
            "an empty `match` matches everything: give `headers` or `query` conditions, or drop it",
        );
    }
    if let Some(headers) = &m.headers {
        let mut seen = HashSet::new();
        for (name, value) in &headers.value.0 {
            let at = format!("{path}.match.headers.{}", name.value);
            match condition_header(&name.value, &Want::of(&value.value), key_header) {
                Ok(header) if gateway_set.contains(&header) => cx.error_at(
                    &at,
                    name.mark,
                    "the gateway sets this header for its upstreams (`upstreams.*.headers`): \
                     it cannot be matched",
                ),
                Ok(header) => {
                    if !seen.insert(header) {
                        cx.error_at(&at, name.mark, "the same header twice (names ignore case)");
                    }
                }
                Err(message) => cx.error_at(&at, name.mark, message),
            }
        }
    }
    if let Some(query) = &m.query {
        for (name, _) in &query.value.0 {
            if name.value.is_empty() {
                cx.error_at(
                    &format!("{path}.match.query"),
                    name.mark,
                    "a query parameter needs a name",
                );
            }
        }
    }
}

/// The router's view of a route's `match`; conditions that failed the checks
/// above are left out (they were reported).
pub fn conditions(matching: Option<&Spanned<RouteMatch>>, key_header: &HeaderName) -> Conditions {
    let Some(m) = matching.map(|m| &m.value) else {
        return Conditions::default();
    };
    let entries = |t: &Option<Spanned<Table<Spanned<String>>>>| {
        t.iter()
            .flat_map(|t| t.value.0.iter())
            .map(|(name, value)| (name.value.clone(), Want::of(&value.value)))
            .collect::<Vec<_>>()
    };
    Conditions {
        headers: entries(&m.headers)
            .into_iter()
            .filter_map(|(name, want)| {
                condition_header(&name, &want, key_header)
                    .ok()
                    .map(|h| (h, want))
            })
            .collect(),
        query: entries(&m.query),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_error, load, load_errors, render, single};
    use crate::core::route_match::Want;

    const HEAD: &str = "listen:\n  - addr: 127.0.0.1:8000\n";

    fn errors(rest: &str) -> Vec<crate::core::config::ConfigError> {
        load_errors(&format!("{HEAD}{rest}"))
    }

    #[test]
    fn peers_take_a_plain_address_or_an_address_and_a_weight() {
        let config = load(&format!(
            "{HEAD}upstreams:\n  u:\n    peers:\n      - 127.0.0.1:8001\n      - {{ addr: \"127.0.0.1:8011\", weight: 9 }}\nroutes: []\n"
        ));
        let upstreams = config.upstreams.expect("upstreams");
        let peers = &upstreams.get("u").expect("u").peers.value;
        let weights: Vec<(&str, i64)> = peers
            .iter()
            .map(|p| (p.value.label(), p.value.weight.value))
            .collect();
        assert_eq!(weights, [("127.0.0.1:8001", 1), ("127.0.0.1:8011", 9)]);
    }

    #[test]
    fn weights_are_whole_numbers_from_one() {
        let peers = |w: &str| {
            errors(&format!(
                "upstreams:\n  u:\n    peers:\n      - {{ addr: \"127.0.0.1:1\", weight: {w} }}\nroutes: []\n"
            ))
        };
        for (w, fragment) in [
            ("0", "from 1 to 1000, found 0"),
            ("-3", "from 1 to 1000, found -3"),
            ("1001", "from 1 to 1000, found 1001"),
            ("1.5", "expected a whole number, found \"1.5\""),
            ("heavy", "expected a whole number"),
        ] {
            let errors = peers(w);
            assert_error(
                single(&errors),
                6,
                40,
                "upstreams.u.peers[0].weight",
                fragment,
            );
        }
        let errors = errors("upstreams:\n  u:\n    peers: [{ weight: 2 }]\nroutes: []\n");
        assert!(
            render(&errors).contains("missing field `addr`"),
            "{}",
            render(&errors)
        );
    }

    #[test]
    fn outlier_settings_must_be_above_zero() {
        let errors = errors(
            "upstreams:\n  u:\n    peers: [\"127.0.0.1:1\"]\n    outlier: { consecutive_failures: 0, eject_for: 0s }\nroutes: []\n",
        );
        assert_eq!(errors.len(), 2, "{}", render(&errors));
        assert_error(
            &errors[0],
            6,
            38,
            "upstreams.u.outlier.consecutive_failures",
            "at least 1",
        );
        assert_error(
            &errors[1],
            6,
            52,
            "upstreams.u.outlier.eject_for",
            "longer than 0s",
        );
        let errors = self::errors(
            "upstreams:\n  u:\n    peers: [\"127.0.0.1:1\"]\n    outlier: { consecutive_failures: 3 }\nroutes: []\n",
        );
        assert!(render(&errors).contains("missing field `eject_for`"));
    }

    fn route_with(matching: &str) -> Vec<crate::core::config::ConfigError> {
        errors(&format!(
            "upstreams:\n  u:\n    peers: [\"127.0.0.1:1\"]\n    headers: {{ x-gateway-secret: s }}\nroutes:\n  - name: r\n    path: /r\n    upstream: u\n    match: {matching}\n"
        ))
    }

    #[test]
    fn an_empty_match_is_an_error() {
        for empty in ["{}", "{ headers: {} }", "{ headers: {}, query: {} }"] {
            let errors = route_with(empty);
            assert_error(single(&errors), 11, 12, "routes[0].match", "empty `match`");
        }
    }

    #[test]
    fn conditions_on_connection_or_pseudo_headers_or_bad_names_are_errors() {
        for (name, fragment) in [
            ("connection", "hop-by-hop"),
            ("Transfer-Encoding", "hop-by-hop"),
            ("upgrade", "hop-by-hop"),
            ("te", "hop-by-hop"),
            ("\":path\"", "pseudo-header"),
            ("\"bad name\"", "not a valid header name"),
            ("host", "route's `host`"),
            ("x-gateway-secret", "the gateway sets this header"),
            ("x-api-key", "keys belong in `consumers`"),
        ] {
            let errors = route_with(&format!("{{ headers: {{ {name}: \"1\" }} }}"));
            let path = format!("routes[0].match.headers.{}", name.trim_matches('"'));
            assert_error(single(&errors), 11, 25, &path, fragment);
        }
        let errors = route_with("{ headers: { x-v: \"1\", X-V: \"2\" } }");
        assert_error(
            single(&errors),
            11,
            35,
            "routes[0].match.headers.X-V",
            "twice",
        );
        let errors = route_with("{ query: { \"\": \"1\" } }");
        assert_error(
            single(&errors),
            11,
            23,
            "routes[0].match.query",
            "needs a name",
        );
    }

    #[test]
    fn match_compiles_to_conditions_with_lower_case_names() {
        let config = load(&format!(
            "{HEAD}upstreams:\n  u: {{ peers: [\"127.0.0.1:1\"] }}\nroutes:\n  - name: r\n    path: /r\n    upstream: u\n    match: {{ headers: {{ X-Api-Version: 2, x-api-key: \"*\" }}, query: {{ beta: \"*\" }} }}\n"
        ));
        let route = &config.routes.items[0].1;
        let key = super::super::key_header(&config);
        let c = super::conditions(route.matching.as_ref(), &key);
        let headers: Vec<(&str, &Want)> = c.headers.iter().map(|(n, w)| (n.as_str(), w)).collect();
        assert_eq!(
            headers,
            [
                ("x-api-version", &Want::Exact("2".into())),
                ("x-api-key", &Want::Present)
            ]
        );
        assert_eq!(c.query, [("beta".to_string(), Want::Present)]);
    }
}
