//! Aggregate routes (SPEC §3, §4): one client call fanned out to several
//! upstreams in parallel, each part's JSON answer merged into one object.
//!
//! This is the pure half: part path templates, judging a part's answer, the
//! merge. The fan-out itself is `proxy::fan_out`.

use crate::core::reply::Refusal;
use bytes::Bytes;
use percent_encoding::{percent_decode_str, percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// What a parameter value keeps as it is: RFC 3986's unreserved characters.
/// Everything else (`/`, `?`, `&`, `=`, `#`, `%`…) is percent-encoded, so a value
/// stays one path segment or one query value wherever it is put.
const VALUE_KEEPS: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A part's answer body is bounded by `max_part_body`, 1 MiB unless set.
pub const DEFAULT_MAX_PART_BODY: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    /// The route's `index`-th parameter, in the path or in the query.
    Param {
        index: usize,
        in_query: bool,
    },
}

/// A part's `path` (`/orders?user_id={id}`), with its `{param}` holes resolved
/// against the route's parameters at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartTemplate {
    pieces: Vec<Piece>,
}

/// A parameter value that cannot be put in a path safely: a dot-segment, or a
/// `/` or `\\` that a backend decoding `%2F` could take for a separator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a path parameter cannot be `.` or `..` nor hold `/`, `\\` or control characters")]
pub struct UnsafeValue;

/// Whether a decoded value stays one segment for any backend, even one that
/// decodes percent-escapes before splitting or resolving the path.
fn safe_segment(value: &[u8]) -> bool {
    value != b"."
        && value != b".."
        && !value
            .iter()
            .any(|b| matches!(b, b'/' | b'\\') || b.is_ascii_control())
}

impl PartTemplate {
    /// Parses a part path; `params` are the route path's parameter names in
    /// order. The error says what is wrong.
    pub fn parse(template: &str, params: &[&str]) -> Result<PartTemplate, String> {
        if !template.starts_with('/') {
            return Err("a part path starts with \"/\"".to_string());
        }
        if template.contains('#') {
            return Err("a part path cannot hold a fragment".to_string());
        }
        let mut pieces = Vec::new();
        let mut in_query = false;
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            let literal = &rest[..open];
            if literal.contains('}') {
                return Err("`}` without `{`".to_string());
            }
            in_query |= literal.contains('?');
            if !literal.is_empty() {
                pieces.push(Piece::Literal(literal.to_string()));
            }
            let Some(close) = rest[open..].find('}') else {
                return Err("`{` without `}`".to_string());
            };
            let name = &rest[open + 1..open + close];
            // In the path, a value fills a whole segment, so that checking the
            // value alone (no `..`, no `/`) is enough to keep the path's shape.
            let after = rest[open + close + 1..].chars().next();
            let whole_segment = literal.ends_with('/') && matches!(after, None | Some('/' | '?'));
            if !in_query && !whole_segment {
                return Err(format!("`{{{name}}}` must be a whole path segment"));
            }
            let Some(index) = params.iter().position(|p| *p == name) else {
                return Err(format!(
                    "`{{{name}}}` is not a parameter of the route's path"
                ));
            };
            pieces.push(Piece::Param { index, in_query });
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err("`}` without `{`".to_string());
        }
        if !rest.is_empty() {
            pieces.push(Piece::Literal(rest.to_string()));
        }
        let template = PartTemplate { pieces };
        // The literal text must make a valid request target on its own.
        let sample = template
            .render(&vec!["x"; params.len()])
            .map_err(|e| e.to_string())?;
        if sample.parse::<http::uri::PathAndQuery>().is_err() {
            return Err(
                "not a valid request path (spaces and control characters must be percent-encoded)"
                    .to_string(),
            );
        }
        Ok(template)
    }

    /// The part's request target for one request. `values` are the route's
    /// parameter values as they came in the client's path (percent-encoded):
    /// each is decoded, then encoded again so it stays one segment or value.
    pub fn render(&self, values: &[&str]) -> Result<String, UnsafeValue> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(text) => out.push_str(text),
                Piece::Param { index, in_query } => {
                    let raw = values.get(*index).copied().unwrap_or_default();
                    let value: Vec<u8> = percent_decode_str(raw).collect();
                    if !in_query && !safe_segment(&value) {
                        return Err(UnsafeValue);
                    }
                    out.extend(percent_encode(&value, VALUE_KEEPS));
                }
            }
        }
        Ok(out)
    }
}

/// Why a part counts as failed: its member becomes `{"error": ..., "status": ...}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartFailure {
    pub error: &'static str,
    /// The upstream's status when it answered, else the status the gateway
    /// would have sent for that failure (502, 503, 504).
    pub status: u16,
}

impl PartFailure {
    pub const BAD_GATEWAY: PartFailure = PartFailure {
        error: "bad_gateway",
        status: 502,
    };
    pub const GATEWAY_TIMEOUT: PartFailure = PartFailure {
        error: "gateway_timeout",
        status: 504,
    };

    pub fn too_large(status: u16) -> PartFailure {
        PartFailure {
            error: "too_large",
            status,
        }
    }
}

impl From<Refusal> for PartFailure {
    /// What the gateway would have answered a proxied request, as a part's failure.
    fn from(refusal: Refusal) -> PartFailure {
        PartFailure {
            error: refusal.code(),
            status: refusal.status(),
        }
    }
}

/// A part's answer: its JSON body, or why it failed.
pub type PartOutcome = Result<Bytes, PartFailure>;

/// Judges an upstream's complete answer: a 2xx status and a JSON body (valid
/// UTF-8 too, since it is copied into the merged answer as it is).
pub fn judge(status: u16, body: Bytes) -> PartOutcome {
    if !(200..300).contains(&status) {
        return Err(PartFailure {
            error: "upstream_error",
            status,
        });
    }
    let text = std::str::from_utf8(&body).ok();
    if text.is_none_or(|t| serde_json::from_str::<serde::de::IgnoredAny>(t).is_err()) {
        return Err(PartFailure {
            error: "not_json",
            status,
        });
    }
    Ok(body)
}

/// A part's name as a JSON object key (quoted and escaped), made at load.
pub fn member_key(name: &str) -> String {
    serde_json::Value::from(name).to_string()
}

/// The merged answer, one member per part in config order, each under its
/// [`member_key`]; `None` when every part failed (the gateway then answers 502).
pub fn merge<'a>(parts: impl IntoIterator<Item = (&'a str, &'a PartOutcome)>) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(256);
    let mut any_ok = false;
    out.push(b'{');
    for (i, (key, outcome)) in parts.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(key.as_bytes());
        out.push(b':');
        match outcome {
            Ok(body) => {
                any_ok = true;
                out.extend_from_slice(body.trim_ascii());
            }
            Err(f) => out.extend(
                serde_json::json!({"error": f.error, "status": f.status})
                    .to_string()
                    .into_bytes(),
            ),
        }
    }
    out.extend_from_slice(b"}\n");
    any_ok.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(t: &str) -> PartTemplate {
        PartTemplate::parse(t, &["id", "kind"]).expect("valid template")
    }

    #[test]
    fn values_are_substituted_in_path_and_query() {
        assert_eq!(
            template("/users/{id}").render(&["42", "x"]),
            Ok("/users/42".to_string())
        );
        assert_eq!(
            template("/orders?user_id={id}&kind={kind}").render(&["7", "open"]),
            Ok("/orders?user_id=7&kind=open".to_string())
        );
        assert_eq!(
            template("/static").render(&["7", "x"]),
            Ok("/static".to_string())
        );
    }

    #[test]
    fn a_value_cannot_add_a_segment_or_a_query_parameter() {
        let t = template("/users/{id}/profile?kind={kind}");
        // `1%2F..%2Fadmin` arrives encoded: decoded it is `1/../admin`. In a
        // query it is one encoded value; in a path it is refused, since a
        // backend decoding `%2F` would see `/admin`.
        assert_eq!(
            t.render(&["1", "1%2F..%2Fadmin"]),
            Ok("/users/1/profile?kind=1%2F..%2Fadmin".to_string())
        );
        assert_eq!(t.render(&["1%2F..%2Fadmin", "x"]), Err(UnsafeValue));
        assert_eq!(t.render(&["1%5C..%5Cadmin", "x"]), Err(UnsafeValue));
        assert_eq!(t.render(&["1%0D%0Ax-evil:1", "x"]), Err(UnsafeValue));
        assert_eq!(
            t.render(&["7", "a&admin=1"]),
            Ok("/users/7/profile?kind=a%26admin%3D1".to_string())
        );
        assert_eq!(
            t.render(&["1%3Fx=y", "b#frag"]),
            Ok("/users/1%3Fx%3Dy/profile?kind=b%23frag".to_string())
        );
        // A literal `%` stays a literal percent sign.
        assert_eq!(
            t.render(&["100%25", "%zz"]),
            Ok("/users/100%25/profile?kind=%25zz".to_string())
        );
        // Non-ASCII bytes come out encoded.
        assert_eq!(
            t.render(&["caf%C3%A9", "é"]),
            Ok("/users/caf%C3%A9/profile?kind=%C3%A9".to_string())
        );
    }

    #[test]
    fn dot_segments_are_refused_in_paths_but_not_in_queries() {
        let t = template("/users/{id}");
        assert_eq!(t.render(&[".."]), Err(UnsafeValue));
        assert_eq!(t.render(&["%2E%2e"]), Err(UnsafeValue));
        assert_eq!(t.render(&["."]), Err(UnsafeValue));
        assert_eq!(t.render(&["...", ""]), Ok("/users/...".to_string()));
        let q = template("/search?q={id}");
        assert_eq!(q.render(&[".."]), Ok("/search?q=..".to_string()));
    }

    #[test]
    fn bad_templates_are_explained() {
        let err = |t: &str| PartTemplate::parse(t, &["id"]).expect_err(t);
        assert!(err("users/{id}").contains("starts with"));
        assert!(err("/users/{uid}").contains("`{uid}` is not a parameter"));
        assert!(err("/users/{id").contains("without `}`"));
        assert!(err("/users/id}").contains("without `{`"));
        assert!(err("/users#top").contains("fragment"));
        for partial in ["/users/x{id}", "/users/{id}.json", "/users/{id}{id}"] {
            assert!(err(partial).contains("whole path segment"), "{partial}");
        }
        assert!(err("/users/a b").contains("not a valid request path"));
    }

    #[test]
    fn answers_are_judged_by_status_and_json() {
        assert_eq!(
            judge(200, Bytes::from_static(b" {\"id\": 1}\n")),
            Ok(Bytes::from_static(b" {\"id\": 1}\n"))
        );
        assert_eq!(judge(200, Bytes::from_static(b"[1,2]")).map(|_| ()), Ok(()));
        assert_eq!(
            judge(500, Bytes::from_static(b"{}")),
            Err(PartFailure {
                error: "upstream_error",
                status: 500
            })
        );
        assert_eq!(
            judge(302, Bytes::from_static(b"{}")).map_err(|f| f.error),
            Err("upstream_error")
        );
        // Latin-1 inside a string: would make the merged answer invalid JSON.
        let latin1 = [&b"{\"name\":\"caf"[..], &[0xE9], b"\"}"].concat();
        for not_json in [
            &b"<html>"[..],
            b"",
            b"{\"a\":1} trailing",
            b"{\"a\":",
            &latin1,
        ] {
            assert_eq!(
                judge(200, Bytes::copy_from_slice(not_json)).map_err(|f| f.error),
                Err("not_json"),
                "{not_json:?}"
            );
        }
    }

    #[test]
    fn merge_keeps_part_order_and_reports_failures() {
        let user: PartOutcome = Ok(Bytes::from_static(b" {\"id\":1}\n"));
        let orders: PartOutcome = Err(PartFailure::GATEWAY_TIMEOUT);
        let (user_key, orders_key) = (member_key("user"), member_key("orders"));
        let merged = merge([(user_key.as_str(), &user), (orders_key.as_str(), &orders)])
            .expect("one part ok");
        let v: serde_json::Value = serde_json::from_slice(&merged).expect("json");
        assert_eq!(v["user"]["id"], 1);
        assert_eq!(v["orders"]["error"], "gateway_timeout");
        assert_eq!(v["orders"]["status"], 504);
        let text = String::from_utf8(merged).expect("utf-8");
        assert!(text.find("user") < text.find("orders"), "{text}");
    }

    #[test]
    fn a_refusal_becomes_the_same_part_failure() {
        assert_eq!(
            PartFailure::from(Refusal::BadGateway),
            PartFailure::BAD_GATEWAY
        );
        assert_eq!(
            PartFailure::from(Refusal::GatewayTimeout),
            PartFailure::GATEWAY_TIMEOUT
        );
        assert_eq!(
            PartFailure::from(Refusal::NoHealthyUpstream),
            PartFailure {
                error: "no_healthy_upstream",
                status: 503
            }
        );
    }

    #[test]
    fn names_are_escaped_and_all_failed_is_none() {
        let ok: PartOutcome = Ok(Bytes::from_static(b"true"));
        let merged = merge([(member_key("a\"b").as_str(), &ok)]).expect("ok");
        let v: serde_json::Value = serde_json::from_slice(&merged).expect("json");
        assert_eq!(v["a\"b"], true);
        let failed: PartOutcome = Err(PartFailure::BAD_GATEWAY);
        assert_eq!(merge([("a", &failed), ("b", &failed)]), None);
    }
}
