//! The compiled route table: path (and host, method) to route, with no I/O.
//!
//! Patterns are stored in a segment trie, so a lookup walks the request's path
//! segments once and only meets the routes that could match; its cost grows with
//! the path's depth, not with the number of routes. A route's `match`
//! conditions ([`crate::core::route_match`]) are judged only for a candidate
//! that would outrank the best found so far.

use crate::core::route_match::Conditions;
use http::{HeaderMap, Method};
use std::collections::HashMap;

/// One segment of a route pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Param(String),
}

/// A route path as written in the config: `/users`, `/overview/users/{id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    pub segments: Vec<Segment>,
}

impl Pattern {
    /// Parses a route path; the error says what is wrong with it.
    pub fn parse(path: &str) -> Result<Pattern, String> {
        if !path.starts_with('/') {
            return Err("a route path starts with \"/\"".to_string());
        }
        if path.contains(['?', '#']) {
            return Err("a route path cannot hold a query or a fragment".to_string());
        }
        let mut segments = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                let valid = !name.is_empty()
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !valid {
                    return Err("a parameter name is letters, digits and _".to_string());
                }
                if names.contains(&name) {
                    return Err("a parameter name appears twice".to_string());
                }
                names.push(name);
                segments.push(Segment::Param(name.to_string()));
            } else if seg.contains(['{', '}']) {
                return Err("a parameter `{name}` must be a whole segment".to_string());
            } else if seg == "." || seg == ".." {
                return Err("a route path cannot hold `.` or `..` segments".to_string());
            } else {
                segments.push(Segment::Literal(seg.to_string()));
            }
        }
        Ok(Pattern { segments })
    }

    pub fn has_params(&self) -> bool {
        self.segments.iter().any(|s| matches!(s, Segment::Param(_)))
    }

    fn literal_count(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count()
    }
}

/// What the router needs to know of one route.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub pattern: Pattern,
    /// Match this path only, not deeper ones (always so with `{param}` segments).
    pub exact: bool,
    /// `None`: any method.
    pub methods: Option<Vec<Method>>,
    /// Lower-case host without port; `None`: any host.
    pub host: Option<String>,
    /// The route's `match`: headers and query parameters it needs (SPEC §8.3).
    pub conditions: Conditions,
}

/// What the router looks at in a request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a Method,
    /// Without the query string.
    pub path: &'a str,
    /// The host without port (any case).
    pub host: Option<&'a str>,
    /// The query string without `?`, for `match.query`.
    pub query: Option<&'a str>,
    /// The client's headers as received, for `match.headers`.
    pub headers: &'a HeaderMap,
}

/// How a lookup ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The route's index in the table.
    Found(usize),
    /// Routes match the path, none the method: their methods, for `allow`.
    MethodNotAllowed(Vec<Method>),
    NotFound,
}

#[derive(Default, Debug)]
struct Node {
    literals: HashMap<String, Node>,
    param: Option<Box<Node>>,
    /// Routes whose pattern ends here and match this path only.
    exact: Vec<usize>,
    /// Routes whose pattern ends here and match this path and deeper ones.
    prefix: Vec<usize>,
}

/// The precedence of SPEC §3, as a key compared field by field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    literals: usize,
    segments: usize,
    exact: bool,
    host: bool,
    /// More `match` conditions win among otherwise equal routes.
    conditions: usize,
    /// Earlier in the file wins: stored reversed.
    order: std::cmp::Reverse<usize>,
}

#[derive(Debug)]
pub struct Router {
    root: Node,
    specs: Vec<RouteSpec>,
    ranks: Vec<Rank>,
}

impl Router {
    /// Builds the table; route `i` of `specs` is reported as `Found(i)`.
    pub fn new(specs: Vec<RouteSpec>) -> Router {
        let mut root = Node::default();
        let mut ranks = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let mut node = &mut root;
            for seg in &spec.pattern.segments {
                node = match seg {
                    Segment::Literal(text) => node.literals.entry(text.clone()).or_default(),
                    Segment::Param(_) => node.param.get_or_insert_with(Default::default),
                };
            }
            let exact = spec.exact || spec.pattern.has_params();
            if exact {
                node.exact.push(i);
            } else {
                node.prefix.push(i);
            }
            ranks.push(Rank {
                literals: spec.pattern.literal_count(),
                segments: spec.pattern.segments.len(),
                exact,
                host: spec.host.is_some(),
                conditions: spec.conditions.len(),
                order: std::cmp::Reverse(i),
            });
        }
        Router { root, specs, ranks }
    }

    /// Finds the route for a request.
    pub fn lookup(&self, req: &Request<'_>) -> Lookup {
        let mut best: Option<usize> = None;
        let mut path_matched = false;
        let mut consider = |i: usize| {
            let spec = &self.specs[i];
            if !self.host_holds(spec, req.host) {
                return;
            }
            // A route that cannot beat the best so far needs no further look
            // (the best already matched the path): conditions cost the most.
            if best.is_some_and(|b| self.ranks[i] <= self.ranks[b]) {
                return;
            }
            if !spec.conditions.is_empty() && !spec.conditions.hold(req.headers, req.query) {
                return;
            }
            path_matched = true;
            if spec
                .methods
                .as_ref()
                .is_some_and(|m| !m.contains(req.method))
            {
                return;
            }
            best = Some(i);
        };
        walk(&self.root, path_segments(req.path), &mut consider);
        match best {
            Some(i) => Lookup::Found(i),
            None if path_matched => Lookup::MethodNotAllowed(self.allowed_methods(req)),
            None => Lookup::NotFound,
        }
    }

    fn host_holds(&self, spec: &RouteSpec, host: Option<&str>) -> bool {
        spec.host
            .as_ref()
            .is_none_or(|want| host.is_some_and(|h| h.eq_ignore_ascii_case(want)))
    }

    /// The union of the methods of every route matching the request but for
    /// its method (the 405 path only, so it may allocate).
    fn allowed_methods(&self, req: &Request<'_>) -> Vec<Method> {
        let mut methods: Vec<Method> = Vec::new();
        walk(&self.root, path_segments(req.path), &mut |i| {
            let spec = &self.specs[i];
            if self.host_holds(spec, req.host) && spec.conditions.hold(req.headers, req.query) {
                for m in spec.methods.iter().flatten() {
                    if !methods.contains(m) {
                        methods.push(m.clone());
                    }
                }
            }
        });
        methods
    }

    /// The values of route `i`'s `{param}` segments in `path`, by name.
    pub fn params<'p>(&self, i: usize, path: &'p str) -> Vec<(&str, &'p str)> {
        self.specs[i]
            .pattern
            .segments
            .iter()
            .zip(path_segments(path))
            .filter_map(|(seg, value)| match seg {
                Segment::Param(name) => Some((name.as_str(), value)),
                Segment::Literal(_) => None,
            })
            .collect()
    }
}

/// The non-empty segments of a path: `/users//1/` is `users`, `1`.
fn path_segments(path: &str) -> impl Iterator<Item = &str> + Clone {
    path.split('/').filter(|s| !s.is_empty())
}

fn walk<'a>(
    node: &Node,
    mut rest: impl Iterator<Item = &'a str> + Clone,
    found: &mut impl FnMut(usize),
) {
    node.prefix.iter().for_each(|&i| found(i));
    match rest.next() {
        None => node.exact.iter().for_each(|&i| found(i)),
        Some(seg) => {
            if let Some(child) = node.literals.get(seg) {
                walk(child, rest.clone(), found);
            }
            if let Some(child) = &node.param {
                walk(child, rest, found);
            }
        }
    }
}

/// The path after its first `n` segments, as sent upstream by `strip_prefix`:
/// `/users/1` less one segment is `/1`; the whole path leaves `/`.
pub fn strip_segments(path: &str, n: usize) -> &str {
    let mut rest = path;
    for _ in 0..n {
        rest = rest.trim_start_matches('/');
        rest = rest.find('/').map_or("", |i| &rest[i..]);
    }
    if rest.is_empty() {
        "/"
    } else {
        rest
    }
}

/// The host header's name without the port, for matching (`[::1]:80` is `[::1]`).
pub fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(path: &str) -> RouteSpec {
        RouteSpec {
            pattern: Pattern::parse(path).expect("valid pattern"),
            exact: false,
            methods: None,
            host: None,
            conditions: Conditions::default(),
        }
    }

    fn look(r: &Router, method: &Method, path: &str, host: Option<&str>) -> Lookup {
        let headers = HeaderMap::new();
        r.lookup(&Request {
            method,
            path,
            host,
            query: None,
            headers: &headers,
        })
    }

    fn found(r: &Router, path: &str) -> Option<usize> {
        match look(r, &Method::GET, path, Some("api.example.com")) {
            Lookup::Found(i) => Some(i),
            _ => None,
        }
    }

    #[test]
    fn prefix_matches_on_segment_boundaries_only() {
        let r = Router::new(vec![spec("/users")]);
        assert_eq!(found(&r, "/users"), Some(0));
        assert_eq!(found(&r, "/users/"), Some(0));
        assert_eq!(found(&r, "/users/1/orders"), Some(0));
        assert_eq!(found(&r, "/usersX"), None);
        assert_eq!(found(&r, "/user"), None);
        assert_eq!(found(&r, "/"), None);
    }

    #[test]
    fn longest_literal_match_wins_regardless_of_order() {
        let r = Router::new(vec![
            spec("/"),
            spec("/api"),
            spec("/api/v1/users"),
            spec("/api/v1"),
        ]);
        assert_eq!(found(&r, "/api/v1/users/7"), Some(2));
        assert_eq!(found(&r, "/api/v1/orders"), Some(3));
        assert_eq!(found(&r, "/api/v2"), Some(1));
        assert_eq!(found(&r, "/elsewhere"), Some(0));
    }

    #[test]
    fn exact_beats_prefix_at_equal_length_and_matches_only_itself() {
        let mut exact = spec("/health");
        exact.exact = true;
        let r = Router::new(vec![spec("/health"), exact]);
        assert_eq!(found(&r, "/health"), Some(1));
        assert_eq!(found(&r, "/health/deep"), Some(0));
        let r = Router::new(vec![RouteSpec {
            exact: true,
            ..spec("/health")
        }]);
        assert_eq!(found(&r, "/health/deep"), None);
    }

    #[test]
    fn params_match_one_segment_exactly_and_literals_outrank_them() {
        let r = Router::new(vec![spec("/users/{id}"), spec("/users/me"), spec("/users")]);
        assert_eq!(found(&r, "/users/42"), Some(0));
        assert_eq!(found(&r, "/users/me"), Some(1));
        // A {param} path matches exactly: deeper paths fall back to the prefix.
        assert_eq!(found(&r, "/users/42/orders"), Some(2));
        assert_eq!(r.params(0, "/users/42"), vec![("id", "42")]);
    }

    #[test]
    fn more_segments_win_among_equal_literal_counts() {
        let r = Router::new(vec![spec("/a"), spec("/a/{x}")]);
        assert_eq!(found(&r, "/a/1"), Some(1));
    }

    #[test]
    fn host_routes_beat_hostless_ones_and_need_their_host() {
        let mut with_host = spec("/users");
        with_host.host = Some("api.example.com".into());
        let r = Router::new(vec![spec("/users"), with_host]);
        assert_eq!(found(&r, "/users"), Some(1));
        assert_eq!(
            look(&r, &Method::GET, "/users", Some("other.example.com")),
            Lookup::Found(0)
        );
        assert_eq!(
            look(&r, &Method::GET, "/users", Some("API.EXAMPLE.COM")),
            Lookup::Found(1)
        );
    }

    #[test]
    fn first_in_file_wins_among_equals() {
        let r = Router::new(vec![spec("/same"), spec("/same")]);
        assert_eq!(found(&r, "/same"), Some(0));
    }

    #[test]
    fn method_mismatch_is_405_with_the_union_of_methods() {
        let mut get = spec("/users");
        get.methods = Some(vec![Method::GET]);
        let mut post = spec("/users");
        post.methods = Some(vec![Method::POST, Method::GET]);
        let r = Router::new(vec![get, post]);
        assert_eq!(look(&r, &Method::POST, "/users", None), Lookup::Found(1));
        assert_eq!(
            look(&r, &Method::DELETE, "/users/1", None),
            Lookup::MethodNotAllowed(vec![Method::GET, Method::POST])
        );
        assert_eq!(
            look(&r, &Method::DELETE, "/nothing", None),
            Lookup::NotFound
        );
    }

    #[test]
    fn a_method_matching_route_is_preferred_over_405() {
        let mut users = spec("/users");
        users.methods = Some(vec![Method::GET]);
        let r = Router::new(vec![users, spec("/")]);
        assert_eq!(look(&r, &Method::POST, "/users", None), Lookup::Found(1));
    }

    fn when(path: &str, headers: &[(&'static str, &str)], query: &[(&str, &str)]) -> RouteSpec {
        use crate::core::route_match::Want;
        RouteSpec {
            conditions: Conditions {
                headers: headers
                    .iter()
                    .map(|(k, v)| (http::HeaderName::from_static(k), Want::of(v)))
                    .collect(),
                query: query
                    .iter()
                    .map(|(k, v)| (k.to_string(), Want::of(v)))
                    .collect(),
            },
            ..spec(path)
        }
    }

    fn look_with(
        r: &Router,
        path: &str,
        headers: &[(&'static str, &'static str)],
        query: &str,
    ) -> Lookup {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_static(k),
                http::HeaderValue::from_static(v),
            );
        }
        r.lookup(&Request {
            method: &Method::GET,
            path,
            host: None,
            query: Some(query),
            headers: &map,
        })
    }

    #[test]
    fn conditions_break_ties_more_conditions_beat_fewer() {
        let r = Router::new(vec![
            spec("/users"),
            when("/users", &[("x-api-version", "2")], &[("beta", "*")]),
            when("/users", &[("x-api-version", "2")], &[]),
        ]);
        let v2 = [("x-api-version", "2")];
        assert_eq!(look_with(&r, "/users/1", &[], ""), Lookup::Found(0));
        assert_eq!(look_with(&r, "/users/1", &v2, ""), Lookup::Found(2));
        assert_eq!(look_with(&r, "/users/1", &v2, "beta"), Lookup::Found(1));
        assert_eq!(look_with(&r, "/users/1", &v2, "beta="), Lookup::Found(1));
        assert_eq!(
            look_with(&r, "/users/1", &[("x-api-version", "3")], "beta"),
            Lookup::Found(0)
        );
    }

    #[test]
    fn a_longer_literal_path_still_beats_conditions() {
        let r = Router::new(vec![
            when("/users", &[("x-api-version", "2")], &[]),
            spec("/users/me"),
        ]);
        assert_eq!(
            look_with(&r, "/users/me", &[("x-api-version", "2")], ""),
            Lookup::Found(1)
        );
        assert_eq!(
            look_with(&r, "/users/1", &[("x-api-version", "2")], ""),
            Lookup::Found(0)
        );
    }

    #[test]
    fn a_route_whose_conditions_fail_does_not_match_at_all() {
        let mut get_v2 = when("/users", &[("x-api-version", "2")], &[]);
        get_v2.methods = Some(vec![Method::GET]);
        let r = Router::new(vec![get_v2]);
        assert_eq!(
            look_with(&r, "/users", &[], ""),
            Lookup::NotFound,
            "not 405"
        );
        let headers = HeaderMap::new();
        let post = Request {
            method: &Method::POST,
            path: "/users",
            host: None,
            query: None,
            headers: &headers,
        };
        assert_eq!(r.lookup(&post), Lookup::NotFound);
        let mut v2 = HeaderMap::new();
        v2.insert("x-api-version", http::HeaderValue::from_static("2"));
        assert_eq!(
            r.lookup(&Request {
                headers: &v2,
                ..post
            }),
            Lookup::MethodNotAllowed(vec![Method::GET])
        );
    }

    #[test]
    fn pattern_errors() {
        assert!(Pattern::parse("users").is_err());
        assert!(Pattern::parse("/a/{}").is_err());
        assert!(Pattern::parse("/a/x{id}").is_err());
        assert!(Pattern::parse("/a/{id}/{id}").is_err());
        assert!(Pattern::parse("/a?b=1").is_err());
        assert!(Pattern::parse("/a/../b").is_err());
        assert!(Pattern::parse("/").expect("root").segments.is_empty());
    }

    #[test]
    fn strip_prefix_keeps_the_rest_of_the_path() {
        assert_eq!(strip_segments("/users/1", 1), "/1");
        assert_eq!(strip_segments("/users", 1), "/");
        assert_eq!(strip_segments("/users/", 1), "/");
        assert_eq!(strip_segments("/api/v1/x/y", 2), "/x/y");
        assert_eq!(strip_segments("/x", 0), "/x");
    }

    #[test]
    fn host_port_is_dropped() {
        assert_eq!(host_without_port("api.example.com:8000"), "api.example.com");
        assert_eq!(host_without_port("api.example.com"), "api.example.com");
        assert_eq!(host_without_port("[::1]:8000"), "[::1]");
    }
}
