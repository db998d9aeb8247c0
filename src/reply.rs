//! The gateway's own answers (SPEC §4): each refusal or failure has one status,
//! one `error` code and one message, and is rendered here and nowhere else.

use http::Method;

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
    #[error("rate limit exceeded")]
    RateLimited { retry_after_secs: u64 },
    #[error("the rate limit store is unavailable")]
    RateLimitUnavailable,
    #[error("the request body is larger than this route accepts")]
    PayloadTooLarge,
    #[error("the upstream could not be reached or gave a bad answer")]
    BadGateway,
    #[error("no healthy upstream peer is available")]
    NoHealthyUpstream,
    #[error("the upstream did not answer in time")]
    GatewayTimeout,
    #[error("the gateway failed to handle the request")]
    Internal,
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
            Refusal::RateLimited { .. } => 429,
            Refusal::RateLimitUnavailable => 503,
            Refusal::PayloadTooLarge => 413,
            Refusal::BadGateway => 502,
            Refusal::NoHealthyUpstream => 503,
            Refusal::GatewayTimeout => 504,
            Refusal::Internal => 500,
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
            Refusal::RateLimited { .. } => "rate_limited",
            Refusal::RateLimitUnavailable => "rate_limit_unavailable",
            Refusal::PayloadTooLarge => "payload_too_large",
            Refusal::BadGateway => "bad_gateway",
            Refusal::NoHealthyUpstream => "no_healthy_upstream",
            Refusal::GatewayTimeout => "gateway_timeout",
            Refusal::Internal => "internal_error",
        }
    }

    /// Whether the connection must close after this answer: a malformed request
    /// leaves the stream's framing in doubt.
    pub fn closes_connection(&self) -> bool {
        matches!(self, Refusal::BadRequest | Refusal::HeadersTooLarge)
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
    fn body_is_the_spec_json() {
        let body = Refusal::NoRoute.body("abc");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["error"], "no_route");
        assert_eq!(v["request_id"], "abc");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
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
