//! The gateway's own answers (SPEC §4): each refusal or failure has one status,
//! one `error` code and one message, and is rendered here and nowhere else.
//! Every answer the gateway makes itself — a refusal, a `respond:` route, an
//! aggregate's merged JSON, the admin and demo endpoints — is one [`Reply`].

use crate::core::jwt::TokenFault;
use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, Method, StatusCode};

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const BEARER_CHALLENGE: &str = "Bearer realm=\"portcullis\"";
const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// One whole answer made by the gateway itself. `content-length` is added by
/// whoever writes it, from `body`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    /// The connection closes after this answer.
    pub close: bool,
}

impl Reply {
    /// An empty answer with this status.
    pub fn new(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
            close: false,
        }
    }

    /// A JSON answer: the body as given, `content-type: application/json`.
    pub fn json(status: u16, body: impl Into<Bytes>) -> Reply {
        Reply::new(status)
            .header(CONTENT_TYPE, APPLICATION_JSON)
            .body(body)
    }

    /// A JSON value as the answer, one line.
    pub fn json_value(status: u16, value: &serde_json::Value) -> Reply {
        let mut bytes = value.to_string().into_bytes();
        bytes.push(b'\n');
        Reply::json(status, bytes)
    }

    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Reply {
        self.headers.push((name, value));
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Reply {
        self.body = body.into();
        self
    }

    /// The answer as HTTP/1.1 bytes, for a connection that has no HTTP session
    /// (a head refused before Pingora reads it).
    pub fn to_http1(&self) -> Vec<u8> {
        let reason = StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let mut out = Vec::with_capacity(128 + self.body.len());
        out.extend_from_slice(format!("HTTP/1.1 {} {reason}\r\n", self.status).as_bytes());
        let length = HeaderValue::from(self.body.len());
        let close = self
            .close
            .then_some((CONNECTION, HeaderValue::from_static("close")));
        let fixed = [(CONTENT_LENGTH, length)].into_iter().chain(close);
        for (name, value) in self.headers.iter().cloned().chain(fixed) {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }

    /// The answer as an `http::Response`, for Pingora's `ServeHttp` apps
    /// (admin, demo).
    pub fn into_response(self) -> http::Response<Vec<u8>> {
        let mut resp = http::Response::new(self.body.to_vec());
        *resp.status_mut() = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        let headers = resp.headers_mut();
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
        headers.insert(CONTENT_LENGTH, HeaderValue::from(self.body.len()));
        resp
    }
}

/// Why the gateway answered a request itself instead of the upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("request line and headers are larger than the gateway accepts")]
    HeadersTooLarge,
    #[error("the request is malformed")]
    BadRequest,
    #[error("no route matches this path")]
    NoRoute,
    #[error("this route does not accept this method")]
    MethodNotAllowed { allow: Vec<Method> },
    #[error("this route needs an API key")]
    MissingApiKey,
    #[error("the API key is not valid")]
    InvalidApiKey,
    #[error("this consumer may not use this route")]
    Forbidden,
    #[error("this route needs a bearer token")]
    MissingToken,
    #[error("{}", .0.message())]
    InvalidToken(TokenFault),
    #[error("the bearer token lacks a scope this route needs")]
    InsufficientScope { scope: String },
    #[error("this route needs an API key or a bearer token")]
    MissingCredentials,
    #[error("rate limit exceeded")]
    RateLimited { retry_after_secs: u64 },
    #[error("the rate limit store is unavailable")]
    RateLimitUnavailable,
    #[error("the request body is larger than this route accepts")]
    PayloadTooLarge,
    #[error("the client stopped sending its request body")]
    RequestTimeout,
    #[error("the upstream could not be reached or gave a bad answer")]
    BadGateway,
    #[error("no healthy upstream peer is available")]
    NoHealthyUpstream,
    #[error("the upstream did not answer in time")]
    GatewayTimeout,
    #[error("the gateway failed to handle the request")]
    Internal,
    #[error("cross-origin request refused by the route's CORS policy: {0}")]
    CorsRejected(crate::core::cors::Denial),
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::HeadersTooLarge => 431,
            Refusal::BadRequest => 400,
            Refusal::NoRoute => 404,
            Refusal::MethodNotAllowed { .. } => 405,
            Refusal::MissingApiKey | Refusal::InvalidApiKey => 401,
            Refusal::Forbidden => 403,
            Refusal::MissingToken | Refusal::InvalidToken(_) | Refusal::MissingCredentials => 401,
            Refusal::InsufficientScope { .. } => 403,
            Refusal::RateLimited { .. } => 429,
            Refusal::RateLimitUnavailable => 503,
            Refusal::PayloadTooLarge => 413,
            Refusal::RequestTimeout => 408,
            Refusal::BadGateway => 502,
            Refusal::NoHealthyUpstream => 503,
            Refusal::GatewayTimeout => 504,
            Refusal::Internal => 500,
            Refusal::CorsRejected(_) => 403,
        }
    }

    /// The `error` code of SPEC §4, also used in the access log and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::HeadersTooLarge => "headers_too_large",
            Refusal::BadRequest => "bad_request",
            Refusal::NoRoute => "no_route",
            Refusal::MethodNotAllowed { .. } => "method_not_allowed",
            Refusal::MissingApiKey => "missing_api_key",
            Refusal::InvalidApiKey => "invalid_api_key",
            Refusal::Forbidden => "forbidden",
            Refusal::MissingToken => "missing_token",
            Refusal::InvalidToken(_) => "invalid_token",
            Refusal::InsufficientScope { .. } => "insufficient_scope",
            Refusal::MissingCredentials => "missing_credentials",
            Refusal::RateLimited { .. } => "rate_limited",
            Refusal::RateLimitUnavailable => "rate_limit_unavailable",
            Refusal::PayloadTooLarge => "payload_too_large",
            Refusal::RequestTimeout => "request_timeout",
            Refusal::BadGateway => "bad_gateway",
            Refusal::NoHealthyUpstream => "no_healthy_upstream",
            Refusal::GatewayTimeout => "gateway_timeout",
            Refusal::Internal => "internal_error",
            Refusal::CorsRejected(_) => "cors_rejected",
        }
    }

    /// Whether the connection must close after this answer: a malformed request
    /// leaves the stream's framing in doubt, an unfinished body its end.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            Refusal::BadRequest | Refusal::HeadersTooLarge | Refusal::RequestTimeout
        )
    }

    /// The whole answer: the SPEC JSON body, `content-type`, `x-request-id`
    /// and the headers of [`Refusal::extra_headers`].
    pub fn reply(&self, request_id: &str, auth_header: &str) -> Reply {
        let mut reply = Reply::json(self.status(), self.body(request_id));
        // A request id is checked (or made) to be a valid header value.
        if let Ok(id) = HeaderValue::from_str(request_id) {
            reply = reply.header(X_REQUEST_ID, id);
        }
        for (name, value) in self.extra_headers(auth_header) {
            if let Ok(value) = HeaderValue::try_from(value) {
                reply = reply.header(HeaderName::from_static(name), value);
            }
        }
        reply.close = self.closes_connection();
        reply
    }

    /// Headers this answer carries besides content-type and x-request-id.
    pub fn extra_headers(&self, auth_header: &str) -> Vec<(&'static str, String)> {
        match self {
            Refusal::MethodNotAllowed { allow } => {
                let list: Vec<&str> = allow.iter().map(Method::as_str).collect();
                vec![("allow", list.join(", "))]
            }
            Refusal::MissingApiKey => vec![(
                "www-authenticate",
                format!("ApiKey header=\"{auth_header}\""),
            )],
            Refusal::RateLimited { retry_after_secs } => {
                vec![("retry-after", retry_after_secs.max(&1).to_string())]
            }
            // RFC 6750 §3.
            Refusal::MissingToken => vec![("www-authenticate", BEARER_CHALLENGE.to_string())],
            Refusal::InvalidToken(_) => vec![(
                "www-authenticate",
                "Bearer error=\"invalid_token\"".to_string(),
            )],
            Refusal::InsufficientScope { scope } => vec![(
                "www-authenticate",
                format!("Bearer error=\"insufficient_scope\", scope=\"{scope}\""),
            )],
            // Both challenges in one field (RFC 9110 §11.6.1 allows a list).
            Refusal::MissingCredentials => vec![(
                "www-authenticate",
                format!("{BEARER_CHALLENGE}, ApiKey header=\"{auth_header}\""),
            )],
            _ => Vec::new(),
        }
    }

    /// `{"error": ..., "message": ..., "request_id": ...}`
    pub fn body(&self, request_id: &str) -> Vec<u8> {
        let body = serde_json::json!({
            "error": self.code(),
            "message": self.to_string(),
            "request_id": request_id,
        });
        let mut out = body.to_string().into_bytes();
        out.push(b'\n');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_reply_carries_its_status_headers_and_body() {
        let reply = Refusal::MissingApiKey.reply("req-1", "x-api-key");
        assert_eq!(reply.status, 401);
        let header = |name: &str| {
            reply
                .headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.to_str().expect("ascii").to_string())
        };
        assert_eq!(header("content-type").as_deref(), Some("application/json"));
        assert_eq!(header("x-request-id").as_deref(), Some("req-1"));
        assert_eq!(
            header("www-authenticate").as_deref(),
            Some("ApiKey header=\"x-api-key\"")
        );
        assert_eq!(reply.body, Refusal::MissingApiKey.body("req-1"));
        assert!(!reply.close);
        assert!(Refusal::BadRequest.reply("r", "k").close);
    }

    #[test]
    fn http1_bytes_frame_the_body_and_say_close() {
        let reply = Refusal::HeadersTooLarge.reply("req-2", "x-api-key");
        let bytes = reply.to_http1();
        let text = String::from_utf8(bytes).expect("utf-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("a head");
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())));
        assert!(head.contains("\r\nconnection: close"));
        assert!(head.contains("\r\nx-request-id: req-2"));
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(v["error"], "headers_too_large");
    }

    #[test]
    fn a_response_for_serve_http_apps() {
        let resp =
            Reply::json_value(503, &serde_json::json!({"status": "not_ready"})).into_response();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert_eq!(
            resp.headers()["content-length"],
            resp.body().len().to_string().as_str()
        );
        assert_eq!(resp.body(), b"{\"status\":\"not_ready\"}\n");
    }

    #[test]
    fn body_is_the_spec_json() {
        let body = Refusal::NoRoute.body("abc");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["error"], "no_route");
        assert_eq!(v["request_id"], "abc");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    }

    #[test]
    fn bearer_challenges_follow_rfc_6750() {
        let header = |r: Refusal| r.extra_headers("x-api-key")[0].1.clone();
        assert_eq!(header(Refusal::MissingToken), "Bearer realm=\"portcullis\"");
        assert_eq!(
            header(Refusal::InvalidToken(TokenFault::Expired)),
            "Bearer error=\"invalid_token\""
        );
        assert_eq!(
            header(Refusal::InsufficientScope {
                scope: "a b".into()
            }),
            "Bearer error=\"insufficient_scope\", scope=\"a b\""
        );
        assert_eq!(
            header(Refusal::MissingCredentials),
            "Bearer realm=\"portcullis\", ApiKey header=\"x-api-key\""
        );
        assert_eq!(
            Refusal::InsufficientScope {
                scope: String::new()
            }
            .status(),
            403
        );
        assert_eq!(
            Refusal::InvalidToken(TokenFault::Expired).to_string(),
            "the bearer token has expired"
        );
    }

    #[test]
    fn special_headers() {
        let allow = Refusal::MethodNotAllowed {
            allow: vec![Method::GET, Method::POST],
        };
        assert_eq!(
            allow.extra_headers("x-api-key"),
            vec![("allow", "GET, POST".into())]
        );
        assert_eq!(
            Refusal::MissingApiKey.extra_headers("x-api-key"),
            vec![("www-authenticate", "ApiKey header=\"x-api-key\"".into())]
        );
        let limited = Refusal::RateLimited {
            retry_after_secs: 0,
        };
        assert_eq!(
            limited.extra_headers("k"),
            vec![("retry-after", "1".into())]
        );
    }
}
