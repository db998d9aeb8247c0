//! One kit for upstream attempts, used by proxied requests and aggregate parts
//! alike: the time budget, picking and leasing a peer, the retry rule after a
//! failed connect, and the resend when a pooled connection was found dead.

use super::ctx::PeerLease;
use crate::core::forward::{Destination, Host};
use crate::core::reply::Refusal;
use crate::tables::upstream::{NoPeer, Upstream};
use crate::tables::{Gateway, Route};
use pingora_core::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The time an attempt may take: what is left before `deadline` (none: no
/// bound). A deadline already passed is a 504.
pub fn budget(deadline: Option<Instant>) -> Result<Option<Duration>, Refusal> {
    let Some(deadline) = deadline else {
        return Ok(None);
    };
    match deadline.checked_duration_since(Instant::now()) {
        Some(left) if !left.is_zero() => Ok(Some(left)),
        _ => Err(Refusal::GatewayTimeout),
    }
}

/// Picks a peer of `upstream` not in `tried`, leases it and notes it as tried.
/// None healthy: 503; every one tried: 502.
pub fn lease_peer(
    gateway: &Arc<Gateway>,
    upstream: usize,
    hash_key: &[u8],
    tried: &mut Vec<usize>,
) -> Result<PeerLease, Refusal> {
    match gateway.upstreams[upstream].pick(hash_key, tried) {
        Ok(pick) => {
            tried.push(pick.peer);
            Ok(PeerLease::take(gateway, upstream, pick))
        }
        Err(NoPeer::AllUnhealthy) => Err(Refusal::NoHealthyUpstream),
        Err(NoPeer::AllTried) => Err(Refusal::BadGateway),
    }
}

/// Where a request to `peer` goes: the upstream's and route's header edits,
/// and the `host` it is sent (the TLS name, or the peer's own, unless the
/// route preserves the client's).
pub fn destination<'a>(route: &'a Route, upstream: &'a Upstream, peer: usize) -> Destination<'a> {
    let host = if route.preserve_host {
        Host::Keep
    } else {
        Host::Value(&upstream.peers[peer].host)
    };
    Destination {
        upstream_headers: &upstream.headers,
        route_headers: &route.request_headers,
        host,
    }
}

/// After a failed connect (nothing was sent yet), whether another peer may
/// take the request: within the upstream's `retries` and its peers.
pub fn may_try_another_peer(upstream: &Upstream, attempts: usize) -> bool {
    attempts as u64 <= u64::from(upstream.retries) && attempts < upstream.peers.len()
}

/// Whether an error on a connection is a pooled connection found closed by
/// its peer (Pingora's own rule): the peer is fine, and the request may be
/// sent again on a fresh connection. Sets the error's retry flag to match.
pub fn resend_on_fresh_connection(e: &mut Error, reused: bool) -> bool {
    e.retry.decide_reuse(reused);
    e.retry()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::load_str;
    use pingora_core::ErrorType;

    fn gateway(retries: u32, peers: usize) -> Arc<Gateway> {
        let peers: Vec<String> = (1..=peers).map(|i| format!("\"127.0.0.{i}:9\"")).collect();
        let yaml = format!(
            "listen: [{{ addr: \"127.0.0.1:0\" }}]\n\
             upstreams:\n  u:\n    peers: [{}]\n    retries: {retries}\n\
             routes:\n  - {{ name: r, path: /, upstream: u }}\n",
            peers.join(", ")
        );
        let config = load_str(&yaml, "test.yaml", &|_| None).expect("valid config");
        Arc::new(Gateway::build(&config, "test.yaml").expect("builds"))
    }

    #[test]
    fn a_budget_is_what_is_left_and_none_left_is_a_504() {
        assert_eq!(budget(None), Ok(None));
        let left = budget(Some(Instant::now() + Duration::from_secs(5)))
            .expect("time left")
            .expect("bounded");
        assert!(left > Duration::from_secs(4) && left <= Duration::from_secs(5));
        assert_eq!(budget(Some(Instant::now())), Err(Refusal::GatewayTimeout));
    }

    #[test]
    fn leases_count_on_their_peer_until_dropped_and_every_peer_is_tried_once() {
        let gw = gateway(2, 2);
        let mut tried = Vec::new();
        let first = lease_peer(&gw, 0, &[], &mut tried).expect("a peer");
        let second = lease_peer(&gw, 0, &[], &mut tried).expect("the other peer");
        assert_ne!(first.peer(), second.peer());
        assert_eq!(tried.len(), 2);
        assert_eq!(gw.upstreams[0].in_use(first.peer()), 1);
        drop(first);
        drop(second);
        assert!((0..2).all(|p| gw.upstreams[0].in_use(p) == 0));
        assert!(matches!(
            lease_peer(&gw, 0, &[], &mut tried),
            Err(Refusal::BadGateway)
        ));
    }

    #[test]
    fn retries_stop_at_the_setting_and_at_the_peers() {
        let gw = gateway(1, 3);
        let u = &gw.upstreams[0];
        assert!(may_try_another_peer(u, 1));
        assert!(!may_try_another_peer(u, 2), "retries: 1");
        let gw = gateway(5, 2);
        assert!(may_try_another_peer(&gw.upstreams[0], 1));
        assert!(!may_try_another_peer(&gw.upstreams[0], 2), "two peers");
    }

    #[test]
    fn only_a_reused_connection_is_resent() {
        let dead = || {
            let mut e = Error::new_up(ErrorType::ConnectionClosed);
            e.retry = pingora_core::RetryType::ReusedOnly;
            e
        };
        assert!(resend_on_fresh_connection(&mut dead(), true));
        assert!(!resend_on_fresh_connection(&mut dead(), false));
        let mut decided = Error::new_up(ErrorType::ConnectionClosed);
        assert!(!resend_on_fresh_connection(&mut decided, true));
    }
}
