//! What earlier phases decided, for the later ones: the per-request context,
//! the peer a request holds, and the process-wide count of requests in flight.

use crate::core::auth::ConsumerId;
use crate::core::forward::{self, Forwarding, X_REQUEST_ID};
use crate::core::jwt::VerifiedToken;
use crate::core::limit::Window;
use crate::core::outlier::Verdict;
use crate::core::trace::Trace;
use crate::tables::upstream::Pick;
use crate::tables::{Gateway, Route, Target};
use crate::telemetry::metrics::RouteMetrics;
use http::HeaderName;
use pingora_proxy::Session;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Requests between `request_filter` and the end of `logging`, process-wide:
/// a graceful shutdown exits as soon as this reaches zero.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// How many requests are being handled right now.
pub fn in_flight() -> usize {
    IN_FLIGHT.load(Ordering::Acquire)
}

/// One request counted in [`in_flight`] until dropped (with its context, after
/// `logging` has queued the access-log line).
pub struct InFlight(());

impl InFlight {
    pub fn enter() -> InFlight {
        IN_FLIGHT.fetch_add(1, Ordering::AcqRel);
        InFlight(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request counted on one peer of an upstream (for `least_connections`)
/// until dropped, however the request ends; it carries the attempt's verdict
/// to outlier ejection.
pub struct PeerLease {
    gateway: Arc<Gateway>,
    upstream: usize,
    peer: usize,
    /// The peer's trial request after an ejection.
    trial: bool,
    judged: bool,
}

impl PeerLease {
    pub fn take(gateway: &Arc<Gateway>, upstream: usize, pick: Pick) -> PeerLease {
        gateway.upstreams[upstream].acquire(pick.peer);
        PeerLease {
            gateway: gateway.clone(),
            upstream,
            peer: pick.peer,
            trial: pick.trial,
            judged: false,
        }
    }

    pub fn peer(&self) -> usize {
        self.peer
    }

    /// How the attempt on this peer ended (the first word counts: a body
    /// that times out after a good head is a failure too).
    pub fn judge(&mut self, verdict: Verdict) {
        let upstream = &self.gateway.upstreams[self.upstream];
        if !self.judged || verdict == Verdict::Failure {
            upstream.record(self.peer, self.trial && !self.judged, verdict);
        }
        self.judged = true;
    }
}

impl Drop for PeerLease {
    fn drop(&mut self) {
        let upstream = &self.gateway.upstreams[self.upstream];
        upstream.release(self.peer);
        if self.trial && !self.judged {
            upstream.trial_abandoned(self.peer);
        }
    }
}

/// The client as the forwarding rules see it.
pub struct Client {
    pub ip: IpAddr,
    /// `ip` as text, for the access log.
    pub text: String,
}

/// What earlier phases decided, for the later ones.
pub struct RequestCtx {
    /// The tables this request started with, kept to its end across reloads.
    pub gateway: Arc<Gateway>,
    pub started: Instant,
    pub request_id: String,
    /// The W3C trace this request belongs to (set by `identify`).
    pub trace: Option<Trace>,
    pub client: Option<Client>,
    pub forwarded_for: String,
    /// Whether the client came over TLS (`x-forwarded-proto: https`).
    pub https: bool,
    /// The TCP peer is in `trusted_proxies`.
    pub peer_trusted: bool,
    /// The client asked to switch protocols (`forward::is_upgrade_request`).
    pub upgrade: bool,
    pub route: Option<usize>,
    pub consumer: Option<ConsumerId>,
    /// The verified bearer token, on a token route (SPEC §8.1).
    pub token: Option<Arc<VerifiedToken>>,
    /// The route's timeout, from the request's start.
    pub deadline: Option<Instant>,
    /// The rate-limit window the `ratelimit-*` headers describe.
    pub rate: Option<Window>,
    /// The peer in use, and every peer tried, for retries on another one.
    pub lease: Option<PeerLease>,
    pub tried: Vec<usize>,
    pub upstream_started: Option<Instant>,
    pub upstream_elapsed: Option<Duration>,
    pub upstream_status: Option<u16>,
    /// Request body bytes sent upstream so far, against `max_body`.
    pub body_bytes: u64,
    /// The `error` code of the gateway's own answer, for the access log; set by
    /// the one writer of those answers (`answer.rs`).
    pub error: Option<&'static str>,
    /// Set once the request is counted in flight (process-wide, and in its
    /// route's `requests_in_flight`).
    pub in_flight: Option<InFlight>,
    /// What the response cache did, on routes with one (`proxy::cache`).
    pub cache: Option<crate::core::cache::Outcome>,
    /// The entry found had expired (revalidated, replaced, or served stale).
    pub cache_expired: bool,
    /// The store's purge count when this request enabled the cache: an answer
    /// fetched across a purge is not stored (`proxy::cache::cacheable`).
    pub cache_purges: u64,
}

impl RequestCtx {
    pub fn new(gateway: Arc<Gateway>) -> RequestCtx {
        RequestCtx {
            gateway,
            started: Instant::now(),
            request_id: String::new(),
            trace: None,
            client: None,
            forwarded_for: String::new(),
            https: false,
            peer_trusted: false,
            upgrade: false,
            route: None,
            consumer: None,
            token: None,
            deadline: None,
            rate: None,
            lease: None,
            tried: Vec::new(),
            upstream_started: None,
            upstream_elapsed: None,
            upstream_status: None,
            body_bytes: 0,
            error: None,
            in_flight: None,
            cache: None,
            cache_expired: false,
            cache_purges: 0,
        }
    }

    /// Notes who is asking (SPEC §4): the request id kept or made, the client
    /// and its `x-forwarded-for`, whether it asks for an upgrade, and whether
    /// it came over TLS.
    pub fn identify(&mut self, session: &Session) {
        const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
        const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
        let req = session.req_header();
        // One pass over the headers for the names read here, not a hashed lookup
        // for each (a request has few headers; comparing names is cheaper).
        // The first `x-request-id` counts, as `get` gives it.
        let mut request_id = None;
        let (mut traceparent, mut traceparents) = (None, 0);
        // Several x-forwarded-for lines form one list (RFC 9110 §5.3).
        let mut lines: Vec<&str> = Vec::new();
        // Without an `upgrade` header there is no upgrade to judge.
        let mut upgrade = false;
        for (name, value) in &req.headers {
            if *name == X_REQUEST_ID {
                request_id.get_or_insert(value);
            } else if *name == TRACEPARENT {
                traceparent.get_or_insert(value);
                traceparents += 1;
            } else if *name == X_FORWARDED_FOR {
                lines.extend(value.to_str().ok());
            } else if *name == http::header::UPGRADE {
                upgrade = true;
            }
        }
        self.request_id = match request_id {
            Some(id) if forward::is_valid_request_id(id.as_bytes()) => {
                String::from_utf8_lossy(id.as_bytes()).into_owned()
            }
            _ => forward::new_request_id(),
        };
        // Two `traceparent`s are invalid (W3C): a trace is started instead.
        let traceparent = traceparent.filter(|_| traceparents == 1);
        self.trace = Some(Trace::of(traceparent.map(|v| v.as_bytes())));
        if let Some(peer) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        {
            let incoming = (!lines.is_empty()).then(|| lines.join(", "));
            let forwarded =
                forward::forwarded_for(peer, incoming.as_deref(), &self.gateway.trusted_proxies);
            self.client = Some(Client {
                ip: forwarded.client,
                text: forwarded.client_text,
            });
            self.forwarded_for = forwarded.header;
            self.peer_trusted = forwarded.peer_trusted;
        }
        self.upgrade = upgrade
            && forward::is_upgrade_request(req.version == http::Version::HTTP_11, &req.headers);
        self.https = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    }

    /// What this request sends upstream besides the client's own headers.
    pub fn forwarding(&self) -> Forwarding<'_> {
        Forwarding {
            key_header: &self.gateway.auth_header,
            forwarded_for: &self.forwarded_for,
            https: self.https,
            request_id: &self.request_id,
            traceparent: self
                .trace
                .as_ref()
                .filter(|t| t.started)
                .map(|t| t.traceparent.as_str()),
            upgrade: self.upgrade,
            peer_trusted: self.peer_trusted,
        }
    }

    /// Gives back the peer and leaves the in-flight count, at the request's
    /// end. Dropping the context does the same, for a request that never
    /// reaches `logging` (its task dropped).
    pub fn release(&mut self) {
        self.lease = None;
        self.in_flight = None;
    }

    pub fn route(&self) -> Option<&Route> {
        self.route.map(|i| &self.gateway.routes[i])
    }

    /// The metrics this request counts in: its route's, or `route="none"`.
    pub fn metrics(&self) -> &RouteMetrics {
        self.route().map_or(&self.gateway.unrouted, |r| &r.metrics)
    }

    /// The upstream this request is proxied to, if any.
    pub fn upstream_index(&self) -> Option<usize> {
        match self.route()?.target {
            Target::Upstream { upstream, .. } => Some(upstream),
            Target::Aggregate(_) | Target::Respond(_) => None,
        }
    }

    /// The peer in use, if any.
    pub fn peer(&self) -> Option<usize> {
        self.lease.as_ref().map(PeerLease::peer)
    }

    /// Whether the route's timeout has passed.
    pub fn deadline_passed(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// The client address's bytes, as the consistent-hash key.
    pub fn hash_key(&self) -> ([u8; 16], usize) {
        let mut key = [0u8; 16];
        match self.client.as_ref().map(|c| c.ip) {
            Some(IpAddr::V4(v4)) => {
                key[..4].copy_from_slice(&v4.octets());
                (key, 4)
            }
            Some(IpAddr::V6(v6)) => (v6.octets(), 16),
            None => (key, 0),
        }
    }
}
