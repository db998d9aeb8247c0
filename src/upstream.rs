//! Upstreams: their peers, the balancer that picks one, and the `HttpPeer` that
//! Pingora connects (and pools connections) with.

use crate::config;
use http::{HeaderName, HeaderValue};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_load_balancing::selection::{Consistent, Random, RoundRobin};
use pingora_load_balancing::LoadBalancer;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How many candidates a balancer may look at before giving up.
const MAX_SELECT_ITERATIONS: usize = 256;

/// One peer of an upstream.
#[derive(Debug)]
pub struct Peer {
    /// The peer as written in the config (the `peer` label and log field).
    pub label: String,
    pub addr: SocketAddr,
    /// `ip:port`, the host header sent to this peer by default.
    pub host: HeaderValue,
    /// Requests currently sent to this peer (for `least_connections`).
    active: AtomicUsize,
}

/// Connect, read, write and idle timeouts for one upstream.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(1),
            read: Duration::from_secs(30),
            write: Duration::from_secs(30),
            idle: Duration::from_secs(60),
        }
    }
}

/// The selection algorithms of pingora-load-balancing; least-connections, which
/// it lacks, counts active requests per peer and keeps its health view.
enum Balancer {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
    ConsistentHash(LoadBalancer<Consistent>),
    LeastConnections(LoadBalancer<RoundRobin>),
}

/// Why no peer could be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPeer {
    /// Every peer is marked unhealthy.
    AllUnhealthy,
    /// Every healthy peer was tried already for this request.
    AllTried,
}

pub struct Upstream {
    pub name: String,
    pub peers: Vec<Peer>,
    balancer: Balancer,
    pub tls: bool,
    pub sni: String,
    pub verify: bool,
    pub timeouts: Timeouts,
    /// Further peers to try when connecting fails.
    pub retries: u32,
    /// Set on every request to this upstream (the gateway secret).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print `headers`: they hold the gateway secret.
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// Builds an upstream, resolving peer names now (never on the request path).
    /// The error names the peer that failed and why.
    pub fn build(name: &str, conf: &config::Upstream) -> Result<Upstream, (usize, String)> {
        let mut peers = Vec::with_capacity(conf.peers.value.len());
        for (i, written) in conf.peers.value.iter().enumerate() {
            let addr = resolve(&written.value, &written.shown()).map_err(|msg| (i, msg))?;
            let host = HeaderValue::from_str(&addr.to_string()).map_err(|_| {
                (
                    i,
                    "the peer's address is not a valid host header".to_string(),
                )
            })?;
            peers.push(Peer {
                label: written.value.clone(),
                addr,
                host,
                active: AtomicUsize::new(0),
            });
        }
        let addrs: Vec<SocketAddr> = peers.iter().map(|p| p.addr).collect();
        let lb_error = |e: std::io::Error| (0, format!("cannot build the balancer: {e}"));
        let balancer = match conf.balance.unwrap_or_default() {
            config::Balance::RoundRobin => {
                Balancer::RoundRobin(LoadBalancer::try_from_iter(addrs).map_err(lb_error)?)
            }
            config::Balance::Random => {
                Balancer::Random(LoadBalancer::try_from_iter(addrs).map_err(lb_error)?)
            }
            config::Balance::ConsistentHash => {
                Balancer::ConsistentHash(LoadBalancer::try_from_iter(addrs).map_err(lb_error)?)
            }
            config::Balance::LeastConnections => {
                Balancer::LeastConnections(LoadBalancer::try_from_iter(addrs).map_err(lb_error)?)
            }
        };
        let t = conf.timeouts.as_ref();
        let d = Timeouts::default();
        Ok(Upstream {
            name: name.to_string(),
            peers,
            balancer,
            tls: conf.tls.unwrap_or(false),
            sni: conf.sni.clone().unwrap_or_default(),
            verify: conf.verify.unwrap_or(true),
            timeouts: Timeouts {
                connect: t.and_then(|t| t.connect).unwrap_or(d.connect),
                read: t.and_then(|t| t.read).unwrap_or(d.read),
                write: t.and_then(|t| t.write).unwrap_or(d.write),
                idle: t.and_then(|t| t.idle).unwrap_or(d.idle),
            },
            retries: conf.retries.unwrap_or(1),
            headers: conf.headers.clone().map(|h| h.0).unwrap_or_default(),
        })
    }

    fn peer_index(&self, addr: Option<&SocketAddr>) -> Option<usize> {
        let addr = addr?;
        self.peers.iter().position(|p| &p.addr == addr)
    }

    /// Picks a healthy peer not in `tried`; `key` feeds consistent hashing.
    pub fn pick_peer(&self, key: &[u8], tried: &[usize]) -> Result<usize, NoPeer> {
        let any_healthy = std::cell::Cell::new(false);
        let accept = |b: &pingora_load_balancing::Backend, healthy: bool| {
            any_healthy.set(any_healthy.get() | healthy);
            healthy
                && self
                    .peer_index(b.addr.as_inet())
                    .is_some_and(|i| !tried.contains(&i))
        };
        let chosen = match &self.balancer {
            Balancer::RoundRobin(lb) => lb.select_with(key, MAX_SELECT_ITERATIONS, accept),
            Balancer::Random(lb) => lb.select_with(key, MAX_SELECT_ITERATIONS, accept),
            Balancer::ConsistentHash(lb) => lb.select_with(key, MAX_SELECT_ITERATIONS, accept),
            Balancer::LeastConnections(lb) => return self.least_connected(lb, tried),
        };
        match chosen.and_then(|b| self.peer_index(b.addr.as_inet())) {
            Some(i) => Ok(i),
            None if any_healthy.get() => Err(NoPeer::AllTried),
            None => Err(NoPeer::AllUnhealthy),
        }
    }

    fn least_connected(
        &self,
        lb: &LoadBalancer<RoundRobin>,
        tried: &[usize],
    ) -> Result<usize, NoPeer> {
        let backends = lb.backends();
        let mut any_healthy = false;
        let mut best: Option<(usize, usize)> = None;
        for b in backends.get_backend().iter() {
            if !backends.ready(b) {
                continue;
            }
            any_healthy = true;
            let Some(i) = self.peer_index(b.addr.as_inet()) else {
                continue;
            };
            if tried.contains(&i) {
                continue;
            }
            let active = self.peers[i].active.load(Ordering::Relaxed);
            if best.is_none_or(|(_, a)| active < a) {
                best = Some((i, active));
            }
        }
        match best {
            Some((i, _)) => Ok(i),
            None if any_healthy => Err(NoPeer::AllTried),
            None => Err(NoPeer::AllUnhealthy),
        }
    }

    /// Marks a request as sent to peer `i` until [`Upstream::release`].
    pub fn acquire(&self, i: usize) {
        self.peers[i].active.fetch_add(1, Ordering::Relaxed);
    }

    pub fn release(&self, i: usize) {
        self.peers[i].active.fetch_sub(1, Ordering::Relaxed);
    }

    /// The peer Pingora connects to; `budget` caps the timeouts (route deadline).
    pub fn http_peer(&self, i: usize, budget: Option<Duration>) -> Box<HttpPeer> {
        let cap = |d: Duration| budget.map_or(d, |b| d.min(b));
        let mut peer = HttpPeer::new(self.peers[i].addr, self.tls, self.sni.clone());
        let o = &mut peer.options;
        o.connection_timeout = Some(cap(self.timeouts.connect));
        o.read_timeout = Some(cap(self.timeouts.read));
        o.write_timeout = Some(cap(self.timeouts.write));
        o.idle_timeout = Some(self.timeouts.idle);
        o.verify_cert = self.verify;
        o.verify_hostname = self.verify;
        Box::new(peer)
    }
}

/// `ip:port`, or `name:port` resolved to its first address; `shown` is how the
/// peer may appear in a message (never a value from the environment).
fn resolve(peer: &str, shown: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = peer.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let mut addrs = peer.to_socket_addrs().map_err(|e| {
        format!("expected a peer like \"127.0.0.1:8001\" or \"host:port\", found {shown} ({e})")
    })?;
    addrs
        .next()
        .ok_or_else(|| format!("{shown} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Spanned, Upstream as Conf};

    fn conf(peers: &[&str], balance: config::Balance) -> Conf {
        Conf {
            peers: Spanned::new(
                peers
                    .iter()
                    .map(|p| Spanned::new(p.to_string(), Default::default()))
                    .collect(),
                Default::default(),
            ),
            balance: Some(balance),
            tls: None,
            sni: None,
            verify: None,
            timeouts: None,
            retries: None,
            health_check: None,
            headers: None,
        }
    }

    #[test]
    fn round_robin_visits_every_peer_and_skips_tried_ones() {
        let up = Upstream::build(
            "u",
            &conf(
                &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"],
                config::Balance::RoundRobin,
            ),
        )
        .expect("valid upstream");
        let mut seen: Vec<usize> = (0..3)
            .map(|_| up.pick_peer(b"", &[]).expect("peer"))
            .collect();
        seen.sort();
        assert_eq!(seen, vec![0, 1, 2]);
        let next = up.pick_peer(b"", &[0, 1]).expect("peer");
        assert_eq!(next, 2);
        assert_eq!(up.pick_peer(b"", &[0, 1, 2]), Err(NoPeer::AllTried));
    }

    #[test]
    fn least_connections_prefers_the_idle_peer() {
        let up = Upstream::build(
            "u",
            &conf(
                &["127.0.0.1:1", "127.0.0.1:2"],
                config::Balance::LeastConnections,
            ),
        )
        .expect("valid upstream");
        up.acquire(0);
        assert_eq!(up.pick_peer(b"", &[]), Ok(1));
        up.acquire(1);
        up.acquire(1);
        assert_eq!(up.pick_peer(b"", &[]), Ok(0));
    }

    #[test]
    fn consistent_hash_is_stable_for_a_key() {
        let up = Upstream::build(
            "u",
            &conf(
                &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"],
                config::Balance::ConsistentHash,
            ),
        )
        .expect("valid upstream");
        let first = up.pick_peer(b"10.1.2.3", &[]).expect("peer");
        for _ in 0..10 {
            assert_eq!(up.pick_peer(b"10.1.2.3", &[]), Ok(first));
        }
    }

    #[test]
    fn bad_peers_are_errors_not_panics() {
        let err = Upstream::build(
            "u",
            &conf(&["127.0.0.1:1", "no-port"], config::Balance::Random),
        )
        .expect_err("bad peer");
        assert_eq!(err.0, 1);
    }
}
