//! Fetching token issuers' JWKS (SPEC §8.1): at start, every `jwks_refresh`,
//! and for an unknown `kid` at most once per issuer per 10 s (the bound is
//! kept by `tables::jwt::IssuerKeys`). A failed fetch keeps the last good
//! keys; each fetch is counted in `portcullis_jwks_refreshes_total`.
//!
//! Like the health checks, one background service walks the tables in force,
//! so issuers added by a reload are fetched too; fetches run as their own
//! tasks, off the request threads, and requests never wait on them except
//! the one bounded wait of a token with an unknown `kid`.

use super::ticks::Ticks;
use crate::tables::jwt::{parse_jwks, IssuerKeys, KeySource};
use crate::tables::Gateway;
use crate::telemetry::metrics;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::connectors::http::Connector;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use std::sync::Arc;
use std::time::Duration;

/// How often the schedule is looked at; also the delay an unknown `kid` adds
/// before its fetch starts.
const TICK: Duration = Duration::from_millis(50);
/// A whole fetch: connect, send, read.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest JWKS document read.
const MAX_JWKS_BYTES: usize = 1 << 20;

pub struct JwksFetcher {
    pub tables: Arc<ArcSwap<Gateway>>,
}

#[async_trait]
impl BackgroundService for JwksFetcher {
    async fn start(&self, shutdown: ShutdownWatch) {
        // Made at the first fetch: loading the system's CA store costs ~10
        // million instructions and its memory, for nothing on the many
        // configs without a JWKS URL (and, done at a moment that depends on
        // the scheduler, it was noise in benches/instructions.sh's totals).
        let mut connector: Option<Arc<Connector>> = None;
        let mut ticks = Ticks::every(TICK, shutdown);
        while ticks.next().await {
            let tables = self.tables.load_full();
            let Some(jwt) = &tables.jwt else { continue };
            for issuer in &jwt.issuers {
                let KeySource::Url { url, refresh } = &issuer.source else {
                    continue;
                };
                if issuer.keys.start_fetch_if_due(*refresh) {
                    let job = Fetch {
                        issuer: issuer.name.clone(),
                        url: url.clone(),
                        keys: issuer.keys.clone(),
                        connector: connector
                            .get_or_insert_with(|| Arc::new(Connector::new(None)))
                            .clone(),
                    };
                    tokio::spawn(job.run());
                }
            }
        }
    }
}

/// One fetch of one issuer's key set.
struct Fetch {
    issuer: String,
    url: String,
    keys: Arc<IssuerKeys>,
    connector: Arc<Connector>,
}

impl Fetch {
    async fn run(self) {
        let fetched = tokio::time::timeout(FETCH_TIMEOUT, fetch(&self.connector, &self.url))
            .await
            .unwrap_or_else(|_| Err("timed out".to_string()));
        let previous = self.keys.set.load_full();
        let parsed = fetched.and_then(|body| parse_jwks(&body, &previous));
        let counter = |result| {
            metrics::families()
                .jwks_refreshes
                .with_label_values(&[self.issuer.as_str(), result])
                .inc()
        };
        match parsed {
            Ok((set, _)) if set.keys.is_empty() => {
                counter("error");
                log::warn!(
                    "JWKS of issuer {:?}: no usable key (RSA, EC P-256/P-384, Ed25519); the last good keys stay",
                    self.issuer
                );
                self.keys.finish_fetch(None);
            }
            Ok((set, skipped)) => {
                counter("ok");
                let removed = previous
                    .keys
                    .iter()
                    .filter(|k| !set.keys.iter().any(|n| Arc::ptr_eq(n, k)))
                    .count();
                let added = set
                    .keys
                    .iter()
                    .filter(|k| !previous.keys.iter().any(|p| Arc::ptr_eq(p, k)))
                    .count();
                if added + removed > 0 {
                    log::info!(
                        "JWKS of issuer {:?}: {} keys ({added} new, {removed} gone, {skipped} unusable skipped)",
                        self.issuer,
                        set.keys.len()
                    );
                }
                self.keys.finish_fetch(Some(set));
            }
            Err(reason) => {
                counter("error");
                log::warn!(
                    "JWKS fetch for issuer {:?} failed: {reason}; the last good keys stay",
                    self.issuer
                );
                self.keys.finish_fetch(None);
            }
        }
    }
}

/// GETs a JWKS document over HTTP/1.1 (TLS verified for `https`), with
/// Pingora's own client connector.
async fn fetch(connector: &Connector, url: &str) -> Result<Vec<u8>, String> {
    let uri: http::Uri = url.parse().map_err(|_| "not a URL".to_string())?;
    let tls = uri.scheme_str() == Some("https");
    let host = uri.host().ok_or("no host")?;
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((bare_host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let sni = if tls {
        bare_host.to_string()
    } else {
        String::new()
    };
    // Each address in turn (`localhost` may say ::1 first, and listen on 127.0.0.1 only).
    let mut failure = format!("{host} resolves to no address");
    let mut connected = None;
    for addr in addrs {
        let mut peer = HttpPeer::new(addr, tls, sni.clone());
        peer.options.connection_timeout = Some(FETCH_TIMEOUT);
        peer.options.read_timeout = Some(FETCH_TIMEOUT);
        peer.options.write_timeout = Some(FETCH_TIMEOUT);
        peer.options.verify_cert = true;
        peer.options.verify_hostname = true;
        match connector.get_http_session(&peer).await {
            Ok((session, _)) => {
                connected = Some(session);
                break;
            }
            Err(e) => failure = format!("cannot connect: {}", e.etype().as_str()),
        }
    }
    let mut session = connected.ok_or(failure)?;
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let failed =
        |e: Box<pingora_core::Error>| format!("HTTP exchange failed: {}", e.etype().as_str());
    let mut req = RequestHeader::build("GET", target.as_bytes(), None).map_err(failed)?;
    let authority = uri.authority().map_or(host, |a| a.as_str());
    req.insert_header(http::header::HOST, authority)
        .map_err(failed)?;
    req.insert_header(http::header::ACCEPT, "application/json")
        .map_err(failed)?;
    session
        .write_request_header(Box::new(req))
        .await
        .map_err(failed)?;
    session.finish_request_body().await.map_err(failed)?;
    session.read_response_header().await.map_err(failed)?;
    let status = session.response_header().map_or(0, |h| h.status.as_u16());
    if status != 200 {
        return Err(format!("answered {status}"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = session.read_response_body().await.map_err(failed)? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
