//! The admin listener (SPEC §5): `GET /metrics`, `/healthz`, `/readyz`,
//! `/openapi.json`, `/docs` (the API docs page, §8.4), `POST /reload` and
//! `POST /cache/purge`. It has no authentication of its own: keep it on
//! loopback or a private network.

use crate::core::docs;
use crate::core::reply::Reply;
use crate::runtime::cache_admin;
use crate::runtime::openapi;
use crate::runtime::reload::Reloader;
use crate::tables::Gateway;
use crate::telemetry::metrics;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The Prometheus text exposition format, version 0.0.4.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

pub struct AdminApp {
    /// The tables in force, for `/openapi.json`.
    pub tables: Arc<ArcSwap<Gateway>>,
    /// Set once the gateway's listeners are bound; cleared when shutting down.
    pub ready: Arc<AtomicBool>,
    /// Reloads the config file; `None` when there is none (the demo).
    pub reloader: Option<Arc<Reloader>>,
    /// The public listeners (and which speak TLS), for the OpenAPI document's
    /// `servers`: "try it out" on the docs page calls them.
    pub listen: Vec<SocketAddr>,
    pub tls_listen: Vec<SocketAddr>,
}

fn reply_json(status: StatusCode, body: serde_json::Value) -> Response<Vec<u8>> {
    Reply::json_value(status.as_u16(), &body).into_response()
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Vec<u8>> {
    reply_json(status, json!({"error": code, "message": message}))
}

impl AdminApp {
    /// `/openapi.json`, with `servers` as the browser asking can reach them.
    fn openapi(&self, host_header: Option<&str>) -> Response<Vec<u8>> {
        let servers = openapi::public_servers(&self.listen, &self.tls_listen, host_header);
        let doc = openapi::with_servers(openapi::document(&self.tables.load()), &servers);
        reply_json(StatusCode::OK, doc)
    }

    /// The docs page and its assets under `/docs`.
    fn docs(&self, item: docs::Item, host_header: Option<&str>) -> Response<Vec<u8>> {
        match item {
            docs::Item::OpenApi => self.openapi(host_header),
            _ => match docs::reply(docs::ADMIN_BASE, item) {
                Some(reply) => reply.into_response(),
                None => error(StatusCode::NOT_FOUND, "not_found", "no such docs asset"),
            },
        }
    }

    /// `POST /reload`: as SIGHUP; 200 `{"result":"ok"}`, or 400 with every error.
    async fn reload(&self) -> Response<Vec<u8>> {
        let Some(reloader) = &self.reloader else {
            return error(
                StatusCode::CONFLICT,
                "no_config_file",
                "this gateway runs without a config file (the demo): nothing to reload",
            );
        };
        match reloader.reload_async().await {
            Ok(done) => reply_json(
                StatusCode::OK,
                json!({"result": "ok", "needs_restart": done.needs_restart}),
            ),
            Err(errors) => reply_json(
                StatusCode::BAD_REQUEST,
                json!({
                    "error": "invalid_config",
                    "errors": errors.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
                }),
            ),
        }
    }
}

/// A small request body (`POST /cache/purge`), at most 64 KiB.
async fn read_body(session: &mut ServerSession) -> Option<Vec<u8>> {
    const MAX: usize = 64 * 1024;
    let mut body = Vec::new();
    while let Some(chunk) = session.read_request_body().await.ok()? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX {
            return None;
        }
    }
    Some(body)
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let (method, path) = (req.method.clone(), req.uri.path().to_string());
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string);
        if let Some(item) = docs::item(docs::ADMIN_BASE, &path) {
            return self.docs(item, host.as_deref());
        }
        match (path.as_str(), method) {
            ("/reload", Method::POST) => self.reload().await,
            ("/cache/purge", Method::POST) => match read_body(session).await {
                Some(body) => cache_admin::purge(&self.tables.load(), &body),
                None => error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "the body could not be read, or is larger than 64 KiB",
                ),
            },
            ("/cache/purge", _) => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "purge with POST /cache/purge",
            ),
            ("/reload", _) => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "reload with POST /reload",
            ),
            ("/metrics", _) => Reply::new(200)
                .header(CONTENT_TYPE, HeaderValue::from_static(PROMETHEUS_TEXT))
                .body(metrics::render())
                .into_response(),
            ("/openapi.json", _) => self.openapi(host.as_deref()),
            ("/healthz", _) => reply_json(StatusCode::OK, json!({"status": "ok"})),
            ("/readyz", _) if self.ready.load(Ordering::Acquire) => reply_json(
                StatusCode::OK,
                json!({"status": "ready", "pid": std::process::id()}),
            ),
            ("/readyz", _) => reply_json(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "not_ready"}),
            ),
            _ => error(
                StatusCode::NOT_FOUND,
                "not_found",
                "the admin listener serves /metrics, /healthz, /readyz, /openapi.json, /docs, POST /reload and POST /cache/purge",
            ),
        }
    }
}
