//! The one writer of the gateway's own answers on a Pingora session, and the
//! way a refusal travels from a later phase to `fail_to_proxy`: inside the
//! Pingora error the phase returns.

use super::ctx::RequestCtx;
use crate::core::forward::{
    rewrite_stored_response, rewrite_upstream_response, stamp_answer, HeaderRules,
};
use crate::core::reply::{Refusal, Reply};
use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use pingora_core::{Error, ErrorSource, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// Answers a refusal: the SPEC JSON, its status and headers.
pub async fn refuse(session: &mut Session, ctx: &mut RequestCtx, refusal: Refusal) -> Result<()> {
    ctx.error = Some(refusal.code());
    let reply = refusal.reply(&ctx.request_id, ctx.gateway.auth_header.as_str());
    write(session, ctx, &reply, None, true).await
}

/// Answers a CORS preflight on a route with `cors` (`cors::judge_preflight`):
/// 204 with its allow headers, or the refusal without any
/// `access-control-allow-*` header (a refused preflight allows nothing) and
/// with `vary: origin`. `false`: not one; the request goes on.
pub async fn preflight(session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
    let reply = match super::cors::judge_preflight(session, ctx) {
        None => return Ok(false),
        Some(Ok(reply)) => reply,
        Some(Err(refusal)) => {
            ctx.error = Some(refusal.code());
            refusal
                .reply(&ctx.request_id, ctx.gateway.auth_header.as_str())
                .header(http::header::VARY, http::HeaderValue::from_static("origin"))
        }
    };
    write(session, ctx, &reply, None, false).await?;
    Ok(true)
}

/// Answers with one of the gateway's own answers that no route shapes (the
/// docs page): no route rules, no CORS headers.
pub async fn plain(session: &mut Session, ctx: &RequestCtx, reply: &Reply) -> Result<()> {
    write(session, ctx, reply, None, false).await
}

/// Answers with a route's own answer (`respond:`, an aggregate's merged JSON):
/// the route's `response_headers` apply to it as to an upstream's.
pub async fn route_answer(session: &mut Session, ctx: &RequestCtx, reply: &Reply) -> Result<()> {
    let rules = ctx.route().map(|r| &r.response_headers);
    write(session, ctx, reply, rules, true).await
}

/// Writes one whole answer: its headers, the route's rules, `content-length`,
/// `x-request-id` and the rate-limit headers, the route's CORS headers
/// (`cors`: not on a preflight's answer, which has its own), then its body.
async fn write(
    session: &mut Session,
    ctx: &RequestCtx,
    reply: &Reply,
    rules: Option<&HeaderRules>,
    cors: bool,
) -> Result<()> {
    let mut resp = ResponseHeader::build(reply.status, Some(reply.headers.len() + 5))?;
    // A 204 has no content-length (RFC 9110 §8.6).
    if reply.status != 204 {
        resp.insert_header(CONTENT_LENGTH, reply.body.len())?;
    }
    for (name, value) in &reply.headers {
        resp.insert_header(name.clone(), value.clone())?;
    }
    if let Some(rules) = rules {
        rules.apply(&mut resp)?;
    }
    stamp_answer(&mut resp, &ctx.request_id, ctx.rate)?;
    if cors {
        super::cors::stamp(&mut resp, ctx, session.req_header())?;
    }
    if reply.close || !session.is_body_empty() {
        // Unread request bytes must not be parsed as the next request.
        session.set_keepalive(None);
    }
    let empty = reply.body.is_empty();
    session.write_response_header(Box::new(resp), empty).await?;
    if !empty {
        let body: Bytes = reply.body.clone();
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// An upstream's answer as the client gets it (SPEC §4): no secret or
/// hop-by-hop header, the route's `response_headers`, the request id and
/// rate-limit headers. A stored entry's header lost its hop-by-hop headers
/// when stored: only the config's part is done again.
pub fn rewrite_upstream_answer(resp: &mut ResponseHeader, ctx: &RequestCtx) -> Result<()> {
    let rules = ctx
        .route()
        .map_or(HeaderRules::NONE, |r| &r.response_headers);
    let secrets = &ctx.gateway.secret_headers;
    // An interim (1xx) head during a stale revalidation is the upstream's own.
    if super::cache::serves_stored_header(ctx) && !resp.status.is_informational() {
        rewrite_stored_response(resp, secrets, rules)?;
    } else {
        let switching = resp.status == http::StatusCode::SWITCHING_PROTOCOLS;
        rewrite_upstream_response(resp, secrets, switching, rules)?;
    }
    stamp_answer(resp, &ctx.request_id, ctx.rate)
}

/// A refusal decided after `request_filter`, as the error its phase returns:
/// `etype` is what Pingora and the upstream-error metrics see, the refusal
/// rides inside as the cause and is answered by `fail_to_proxy`.
pub fn refusal_error(refusal: Refusal, etype: ErrorType, context: &'static str) -> Box<Error> {
    Error::because(etype, context, refusal)
}

/// How an error is told to the client: the refusal it carries, or what an
/// error from Pingora itself means; `None` when the client is gone.
pub fn refusal_for(e: &Error, deadline_passed: bool) -> Option<Refusal> {
    if let Some(refusal) = e.root_cause().downcast_ref::<Refusal>() {
        return Some(refusal.clone());
    }
    match (e.esource(), e.etype()) {
        (_, ErrorType::HTTPStatus(413)) => Some(Refusal::PayloadTooLarge),
        (ErrorSource::Upstream, ErrorType::ReadTimedout | ErrorType::WriteTimedout) => {
            Some(Refusal::GatewayTimeout)
        }
        (ErrorSource::Upstream, _) if deadline_passed => Some(Refusal::GatewayTimeout),
        (ErrorSource::Upstream, _) => Some(Refusal::BadGateway),
        (
            ErrorSource::Downstream,
            ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed,
        ) => {
            None // the client is gone: nobody to answer
        }
        // The client stopped sending its body (`limits.body_read_timeout`).
        (ErrorSource::Downstream, ErrorType::ReadTimedout) => Some(Refusal::RequestTimeout),
        (ErrorSource::Downstream, _) => Some(Refusal::BadRequest),
        (
            _,
            ErrorType::ConnectTimedout
            | ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError,
        ) => Some(Refusal::BadGateway),
        _ => Some(Refusal::Internal),
    }
}

/// Answers a failed request, if anyone is there to answer and no answer has
/// started (then the connection is cut instead). Returns the status for
/// Pingora's own log, 0 when none.
pub async fn answer_failure(session: &mut Session, ctx: &mut RequestCtx, e: &Error) -> u16 {
    let Some(refusal) = refusal_for(e, ctx.deadline_passed()) else {
        return 0;
    };
    let status = refusal.status();
    if session.response_written().is_some() {
        ctx.error = Some(refusal.code());
        return status;
    }
    // `fail_to_proxy` does not keep the connection: the answer must say so, or
    // the client sends its next request into a closing socket.
    session.set_keepalive(None);
    if let Err(write_error) = refuse(session, ctx, refusal).await {
        log::debug!("cannot send the error answer: {write_error}");
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::load_str;
    use crate::core::limit::Window;
    use crate::tables::{Gateway, Target};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    const CONFIG: &str = r#"
listen: [{ addr: "127.0.0.1:0" }]
routes:
  - name: hello
    path: /hello
    auth: none
    respond: { status: 200, body: "hi", headers: { x-a: "1", content-type: text/plain } }
    response_headers: { set: { x-b: "2" }, remove: [x-a] }
"#;

    fn ctx() -> RequestCtx {
        let config = load_str(CONFIG, "test.yaml", &|_| None).expect("valid config");
        let gateway = Gateway::build(&config, "test.yaml").expect("builds");
        let mut ctx = RequestCtx::new(Arc::new(gateway));
        ctx.request_id = "req-1".to_string();
        ctx
    }

    /// A Pingora session over an in-memory stream that has read `request`,
    /// and the client's end of that stream.
    async fn open_session(request: &[u8]) -> (Session, DuplexStream) {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        client.write_all(request).await.expect("write");
        let mut session = Session::new_h1(Box::new(server));
        assert!(session.read_request().await.expect("a request"));
        (session, client)
    }

    /// What the client received once the session is done with the stream.
    async fn received(session: Session, mut client: DuplexStream) -> String {
        drop(session);
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.expect("read");
        String::from_utf8(out).expect("utf-8")
    }

    fn header<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
        let head = answer.split("\r\n\r\n").next()?;
        head.lines()
            .filter_map(|l| l.split_once(": "))
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    #[tokio::test]
    async fn a_refusal_is_written_whole_with_its_headers() {
        let (mut session, client) = open_session(b"GET /hello HTTP/1.1\r\nhost: a\r\n\r\n").await;
        let mut ctx = ctx();
        ctx.rate = Some(Window {
            allowed: false,
            limit: 5,
            remaining: 0,
            reset_ms: 1_500,
            retry_after_ms: 1_500,
        });
        let limited = Refusal::RateLimited {
            retry_after_secs: 2,
        };
        refuse(&mut session, &mut ctx, limited)
            .await
            .expect("written");
        assert_eq!(ctx.error, Some("rate_limited"));
        let answer = received(session, client).await;
        assert!(answer.starts_with("HTTP/1.1 429 "), "{answer}");
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        assert_eq!(
            header(&answer, "content-length"),
            Some(body.len().to_string().as_str())
        );
        assert_eq!(header(&answer, "content-type"), Some("application/json"));
        assert_eq!(header(&answer, "x-request-id"), Some("req-1"));
        assert_eq!(header(&answer, "retry-after"), Some("2"));
        assert_eq!(header(&answer, "ratelimit-limit"), Some("5"));
        assert_eq!(header(&answer, "ratelimit-remaining"), Some("0"));
        assert_eq!(header(&answer, "ratelimit-reset"), Some("2"));
        let v: serde_json::Value = serde_json::from_str(body).expect("json body");
        assert_eq!(v["error"], "rate_limited");
        assert_eq!(v["request_id"], "req-1");
    }

    #[tokio::test]
    async fn a_route_answer_gets_the_routes_response_rules() {
        let (mut session, client) = open_session(b"GET /hello HTTP/1.1\r\nhost: a\r\n\r\n").await;
        let mut ctx = ctx();
        ctx.route = Some(0);
        let gateway = ctx.gateway.clone();
        let Target::Respond(reply) = &gateway.routes[0].target else {
            panic!("a respond route");
        };
        route_answer(&mut session, &ctx, reply)
            .await
            .expect("written");
        assert_eq!(ctx.error, None);
        let answer = received(session, client).await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        assert!(answer.ends_with("\r\n\r\nhi"), "{answer}");
        assert_eq!(header(&answer, "x-a"), None, "removed by response_headers");
        assert_eq!(header(&answer, "x-b"), Some("2"));
        assert_eq!(header(&answer, "content-type"), Some("text/plain"));
        assert_eq!(header(&answer, "x-request-id"), Some("req-1"));
        assert_eq!(header(&answer, "content-length"), Some("2"));
    }

    #[tokio::test]
    async fn a_failure_answers_the_refusal_its_error_carries() {
        let (mut session, client) = open_session(b"GET /hello HTTP/1.1\r\nhost: a\r\n\r\n").await;
        let mut ctx = ctx();
        let e = refusal_error(
            Refusal::GatewayTimeout,
            ErrorType::ReadTimedout,
            "route timeout while reading the body",
        );
        assert_eq!(answer_failure(&mut session, &mut ctx, &e).await, 504);
        assert_eq!(ctx.error, Some("gateway_timeout"));
        let answer = received(session, client).await;
        assert!(answer.starts_with("HTTP/1.1 504 "), "{answer}");
        // Once an answer has started, nothing more is written: the status is
        // still told for the log.
        let (mut session, client) = open_session(b"GET /hello HTTP/1.1\r\nhost: a\r\n\r\n").await;
        let mut ctx = self::ctx();
        refuse(&mut session, &mut ctx, Refusal::NoRoute)
            .await
            .expect("written");
        assert_eq!(answer_failure(&mut session, &mut ctx, &e).await, 504);
        assert_eq!(ctx.error, Some("gateway_timeout"));
        let answer = received(session, client).await;
        assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer}");
        assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
    }

    #[test]
    fn a_refusal_rides_inside_the_error_and_survives_more_context() {
        let e = refusal_error(
            Refusal::NoHealthyUpstream,
            ErrorType::HTTPStatus(503),
            "no healthy peer",
        );
        assert_eq!(refusal_for(&e, false), Some(Refusal::NoHealthyUpstream));
        let wrapped = e.more_context("peer 127.0.0.1:1");
        assert_eq!(
            refusal_for(&wrapped, false),
            Some(Refusal::NoHealthyUpstream)
        );
    }

    #[test]
    fn errors_from_pingora_are_told_by_source_and_type() {
        let up = |t| Error::new_up(t);
        let down = |t| Error::new_down(t);
        assert_eq!(
            refusal_for(&up(ErrorType::ReadTimedout), false),
            Some(Refusal::GatewayTimeout)
        );
        assert_eq!(
            refusal_for(&up(ErrorType::ConnectionClosed), false),
            Some(Refusal::BadGateway)
        );
        assert_eq!(
            refusal_for(&up(ErrorType::ConnectionClosed), true),
            Some(Refusal::GatewayTimeout)
        );
        assert_eq!(refusal_for(&down(ErrorType::ConnectionClosed), false), None);
        assert_eq!(
            refusal_for(&down(ErrorType::ReadTimedout), false),
            Some(Refusal::RequestTimeout)
        );
        assert_eq!(
            refusal_for(&down(ErrorType::InvalidHTTPHeader), false),
            Some(Refusal::BadRequest)
        );
        assert_eq!(
            refusal_for(&Error::new(ErrorType::ConnectRefused), false),
            Some(Refusal::BadGateway)
        );
        assert_eq!(
            refusal_for(&Error::new(ErrorType::HTTPStatus(413)), false),
            Some(Refusal::PayloadTooLarge)
        );
        assert_eq!(
            refusal_for(&Error::new(ErrorType::InternalError), false),
            Some(Refusal::Internal)
        );
    }
}
