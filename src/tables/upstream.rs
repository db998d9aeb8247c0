//! Upstreams: their peers, the balancer that picks one, and the `HttpPeer` that
//! Pingora connects (and pools connections) with.

use crate::core::config;
use crate::core::outlier::{self, Admit, Outliers, Verdict};
use futures::FutureExt;
use http::{HeaderName, HeaderValue};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_load_balancing::discovery::Static;
use pingora_load_balancing::health_check::HttpHealthCheck;
use pingora_load_balancing::selection::{
    BackendIter, BackendSelection, Consistent, Random, RoundRobin,
};
use pingora_load_balancing::{Backend, Backends, HealthRegistry, LoadBalancer};
use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How many candidates a balancer may look at before giving up.
const MAX_SELECT_ITERATIONS: usize = 256;
/// How often an upstream's `health_check` runs when it names no `interval`.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);

/// One peer of an upstream.
#[derive(Debug)]
pub struct Peer {
    /// The peer as written in the config (the `peer` label and log field).
    pub label: String,
    pub addr: SocketAddr,
    /// The host header sent to this peer by default: the upstream's TLS name
    /// (`sni`) with TLS, else the peer's `ip:port`.
    pub host: HeaderValue,
    /// Its share of `round_robin` and `random` picks (1 unless written).
    pub weight: usize,
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
    /// How often the active health check runs; `None`: passive only.
    pub health_interval: Option<Duration>,
    pub tls: bool,
    pub sni: String,
    pub verify: bool,
    pub timeouts: Timeouts,
    /// Further peers to try when connecting fails.
    pub retries: u32,
    /// Set on every request to this upstream (the gateway secret).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Passive ejection of failing peers (`outlier`), if configured.
    outliers: Option<Arc<Ejections>>,
}

/// An upstream's ejection state, shared by the tables of every reload that
/// keeps the upstream's peers and `outlier` setting (an ejected peer stays out
/// across a reload), with a count of its changes for `peer_up`.
#[derive(Debug)]
struct Ejections {
    state: Mutex<Outliers>,
    changes: AtomicU64,
}

impl Ejections {
    fn lock(&self) -> MutexGuard<'_, Outliers> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A peer chosen for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub peer: usize,
    /// The trial request of an ejected peer: its outcome decides whether the
    /// peer comes back.
    pub trial: bool,
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
    /// The errors name every peer that failed (its index) and why.
    pub fn build(name: &str, conf: &config::Upstream) -> Result<Upstream, Vec<(usize, String)>> {
        let tls = conf.tls.unwrap_or(false);
        let sni = conf.sni.clone().unwrap_or_default();
        let mut peers = Vec::with_capacity(conf.peers.value.len());
        let mut failed = Vec::new();
        for (i, written) in conf.peers.value.iter().enumerate() {
            let addr = match resolve(&written.value.addr.value, &written.value.addr.shown()) {
                Ok(addr) => addr,
                Err(message) => {
                    failed.push((i, message));
                    continue;
                }
            };
            // Made here, not per request: the TLS name, or the peer's `ip:port`.
            let host = if tls && !sni.is_empty() {
                sni.clone()
            } else {
                addr.to_string()
            };
            let Ok(host) = HeaderValue::from_str(&host) else {
                let message = "the peer's host header (address or sni) is not a valid header value";
                failed.push((i, message.to_string()));
                continue;
            };
            peers.push(Peer {
                label: written.value.label().to_string(),
                addr,
                host,
                // Checked 1..=MAX_WEIGHT by the config's validation.
                weight: usize::try_from(written.value.weight.value)
                    .unwrap_or(1)
                    .max(1),
                active: AtomicUsize::new(0),
            });
        }
        if !failed.is_empty() {
            return Err(failed);
        }
        let t = conf.timeouts.as_ref();
        let d = Timeouts::default();
        let timeouts = Timeouts {
            connect: t.and_then(|t| t.connect).unwrap_or(d.connect),
            read: t.and_then(|t| t.read).unwrap_or(d.read),
            write: t.and_then(|t| t.write).unwrap_or(d.write),
            idle: t.and_then(|t| t.idle).unwrap_or(d.idle),
        };
        let headers = conf.headers.clone().map(|h| h.0).unwrap_or_default();
        let verify = conf.verify.unwrap_or(true);
        let registry = conf.health_check.as_ref().map(|hc| {
            let check = CheckSettings {
                path: hc.path.value.clone(),
                host: if sni.is_empty() {
                    name.to_string()
                } else {
                    sni.clone()
                },
                tls,
                verify,
                connect: timeouts.connect,
                headers: headers.clone(),
            };
            health_registry(name, check)
        });
        let addrs: BTreeSet<Backend> = peers
            .iter()
            .map(|p| Backend {
                addr: pingora_core::protocols::l4::socket::SocketAddr::Inet(p.addr),
                weight: p.weight,
                ext: Default::default(),
            })
            .collect();
        let backends = || {
            let discovery = Static::new(addrs.clone());
            match &registry {
                Some(r) => Backends::new_with_health_registry(discovery, r.clone()),
                None => Backends::new(discovery),
            }
        };
        let balancer = match conf.balance.unwrap_or_default() {
            config::Balance::RoundRobin => Balancer::RoundRobin(balancer(backends())?),
            config::Balance::Random => Balancer::Random(balancer(backends())?),
            config::Balance::ConsistentHash => Balancer::ConsistentHash(balancer(backends())?),
            config::Balance::LeastConnections => Balancer::LeastConnections(balancer(backends())?),
        };
        let outliers = conf.outlier.as_ref().map(|o| {
            let policy = outlier::Policy {
                consecutive_failures: o.consecutive_failures.value.max(1),
                eject_for: o.eject_for.value,
            };
            ejections(name, policy, &peers)
        });
        Ok(Upstream {
            name: name.to_string(),
            peers,
            balancer,
            outliers,
            health_interval: conf
                .health_check
                .as_ref()
                .map(|hc| hc.interval.unwrap_or(DEFAULT_HEALTH_INTERVAL)),
            tls,
            sni,
            verify,
            timeouts,
            retries: conf.retries.unwrap_or(1),
            headers,
        })
    }

    fn backends(&self) -> &Backends {
        match &self.balancer {
            Balancer::RoundRobin(lb) => lb.backends(),
            Balancer::Random(lb) => lb.backends(),
            Balancer::ConsistentHash(lb) => lb.backends(),
            Balancer::LeastConnections(lb) => lb.backends(),
        }
    }

    /// One pass of the active health check over every peer (pingora's
    /// `HttpHealthCheck`); peers that fail it get no traffic until one passes.
    pub async fn run_health_check(&self) {
        self.backends().run_health_check(true).await;
    }

    /// Whether each peer may take traffic now, in peer order: healthy, and
    /// not ejected (a peer awaiting its trial is still out).
    pub fn peers_up(&self) -> Vec<bool> {
        let backends = self.backends();
        let all = backends.get_backend();
        let ejections = self.outliers.as_ref().map(|e| e.lock());
        self.peers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                // Not `is_healthy`: one `get_backend` for every peer.
                let healthy = all
                    .iter()
                    .find(|b| b.addr.as_inet() == Some(&p.addr))
                    .is_some_and(|b| backends.ready(b));
                healthy && !ejections.as_ref().is_some_and(|e| e.is_ejected(i))
            })
            .collect()
    }

    fn peer_index(&self, addr: Option<&SocketAddr>) -> Option<usize> {
        let addr = addr?;
        self.peers.iter().position(|p| &p.addr == addr)
    }

    /// Picks a healthy peer not in `tried`; `key` feeds consistent hashing.
    #[cfg(test)]
    pub fn pick_peer(&self, key: &[u8], tried: &[usize]) -> Result<usize, NoPeer> {
        self.pick(key, tried).map(|p| p.peer)
    }

    /// Picks a healthy peer not in `tried` and not ejected (or due its trial
    /// request); `key` feeds consistent hashing.
    pub fn pick(&self, key: &[u8], tried: &[usize]) -> Result<Pick, NoPeer> {
        let mut ejections = self.outliers.as_ref().map(|e| (e.lock(), Instant::now()));
        let admit = |i: usize| {
            ejections
                .as_ref()
                .map_or(Admit::Yes, |(state, now)| state.admit(i, *now))
        };
        let any_healthy = std::cell::Cell::new(false);
        let accept = |b: &pingora_load_balancing::Backend, healthy: bool| {
            any_healthy.set(any_healthy.get() | healthy);
            healthy
                && self
                    .peer_index(b.addr.as_inet())
                    .is_some_and(|i| !tried.contains(&i) && admit(i) != Admit::No)
        };
        let index = |b: Option<pingora_load_balancing::Backend>| {
            b.and_then(|b| self.peer_index(b.addr.as_inet()))
        };
        let chosen = match &self.balancer {
            Balancer::RoundRobin(lb) => index(lb.select_with(key, MAX_SELECT_ITERATIONS, accept)),
            Balancer::Random(lb) => index(lb.select_with(key, MAX_SELECT_ITERATIONS, accept)),
            Balancer::ConsistentHash(lb) => {
                index(lb.select_with(key, MAX_SELECT_ITERATIONS, accept))
            }
            Balancer::LeastConnections(lb) => match self.least_connected(lb, tried, &admit) {
                Ok(i) => Some(i),
                Err(none) => {
                    any_healthy.set(none == NoPeer::AllTried);
                    None
                }
            },
        };
        let Some(peer) = chosen else {
            return Err(if any_healthy.get() {
                NoPeer::AllTried
            } else {
                NoPeer::AllUnhealthy
            });
        };
        let trial = admit(peer) == Admit::Trial;
        if let (true, Some((state, _))) = (trial, ejections.as_mut()) {
            state.start_trial(peer);
        }
        Ok(Pick { peer, trial })
    }

    fn least_connected(
        &self,
        lb: &LoadBalancer<RoundRobin>,
        tried: &[usize],
        admit: &dyn Fn(usize) -> Admit,
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
            if tried.contains(&i) || admit(i) == Admit::No {
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

    /// Notes how an attempt on peer `i` ended, for outlier ejection.
    pub fn record(&self, i: usize, trial: bool, verdict: Verdict) {
        let Some(ejections) = &self.outliers else {
            return;
        };
        let healthy = |j: usize| self.is_healthy(j);
        let (changed, ejected) = {
            let mut state = ejections.lock();
            let changed = state.record(i, trial, verdict, Instant::now(), &healthy);
            (changed, state.is_ejected(i))
        };
        if changed {
            ejections.changes.fetch_add(1, Ordering::Relaxed);
            let peer = &self.peers[i].label;
            let upstream = &self.name;
            if ejected {
                log::warn!("upstreams.{upstream}: peer {peer} ejected after failing in a row");
            } else {
                log::info!("upstreams.{upstream}: peer {peer} back in after its trial request");
            }
        }
    }

    /// Whether the active health check lets peer `i` take traffic.
    fn is_healthy(&self, i: usize) -> bool {
        let backends = self.backends();
        backends
            .get_backend()
            .iter()
            .find(|b| b.addr.as_inet() == Some(&self.peers[i].addr))
            .is_some_and(|b| backends.ready(b))
    }

    /// The trial request of peer `i` ended without a verdict.
    pub fn trial_abandoned(&self, i: usize) {
        if let Some(ejections) = &self.outliers {
            ejections.lock().trial_abandoned(i, Instant::now());
        }
    }

    /// How many times a peer of this upstream went out or came back in: the
    /// health service republishes `peer_up` when it moves.
    pub fn ejection_changes(&self) -> u64 {
        self.outliers
            .as_ref()
            .map_or(0, |e| e.changes.load(Ordering::Relaxed))
    }

    /// Marks a request as sent to peer `i` until [`Upstream::release`].
    pub fn acquire(&self, i: usize) {
        self.peers[i].active.fetch_add(1, Ordering::Relaxed);
    }

    pub fn release(&self, i: usize) {
        self.peers[i].active.fetch_sub(1, Ordering::Relaxed);
    }

    /// Requests on peer `i` now.
    pub fn in_use(&self, i: usize) -> usize {
        self.peers[i].active.load(Ordering::Relaxed)
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

/// A balancer over `backends`, its selection built now (static peers).
fn balancer<S>(backends: Backends) -> Result<LoadBalancer<S>, Vec<(usize, String)>>
where
    S: BackendSelection + 'static,
    S::Iter: BackendIter,
{
    let lb = LoadBalancer::from_backends(backends);
    match lb.update().now_or_never() {
        Some(Ok(())) => Ok(lb),
        Some(Err(e)) => Err(vec![(0, format!("cannot build the balancer: {e}"))]),
        None => Err(vec![(
            0,
            "cannot build the balancer: discovery blocked".to_string(),
        )]),
    }
}

/// What an upstream's active health check sends, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CheckSettings {
    path: String,
    host: String,
    tls: bool,
    verify: bool,
    connect: Duration,
    /// The upstream's `headers`: backends that want the gateway secret want it
    /// on health checks too.
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl CheckSettings {
    fn health_check(&self) -> Option<HttpHealthCheck> {
        let mut check = HttpHealthCheck::new(&self.host, self.tls);
        check.req.set_uri(self.path.parse().ok()?);
        for (name, value) in &self.headers {
            check.req.insert_header(name.clone(), value.clone()).ok()?;
        }
        let o = &mut check.peer_template.options;
        o.connection_timeout = Some(self.connect);
        o.read_timeout = Some(self.connect.max(Duration::from_secs(1)));
        o.verify_cert = self.verify;
        o.verify_hostname = self.verify;
        // Any 2xx is healthy (Pingora's default accepts only 200).
        check.validator = Some(Box::new(|resp| {
            if resp.status.is_success() {
                Ok(())
            } else {
                pingora_core::Error::e_explain(
                    pingora_core::ErrorType::CustomCode(
                        "health check status",
                        resp.status.as_u16(),
                    ),
                    "health check answered outside 2xx",
                )
            }
        }));
        Some(check)
    }
}

/// The health registry of upstream `name`: one per process for as long as its
/// check settings stay the same, so peers keep their health across reloads
/// (a peer known down stays down in the new tables).
fn health_registry(name: &str, settings: CheckSettings) -> Arc<HealthRegistry> {
    /// Upstream name → the settings its registry checks with, and the registry.
    type Registries = HashMap<String, (CheckSettings, Arc<HealthRegistry>)>;
    static REGISTRIES: LazyLock<Mutex<Registries>> = LazyLock::new(Default::default);
    let mut registries = REGISTRIES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, registry)) = registries.get(name).filter(|(s, _)| *s == settings) {
        return registry.clone();
    }
    let registry = Arc::new(HealthRegistry::new());
    match settings.health_check() {
        Some(check) => registry.set_health_check(Box::new(check)),
        None => log::warn!("upstreams.{name}.health_check: cannot build the check request"),
    }
    registries.insert(name.to_string(), (settings, registry.clone()));
    registry
}

/// The ejection state of upstream `name`: one per process for as long as its
/// peers and policy stay the same, as with [`health_registry`].
fn ejections(name: &str, policy: outlier::Policy, peers: &[Peer]) -> Arc<Ejections> {
    /// Upstream name → what its state was made for, and the state.
    type Key = (outlier::Policy, Vec<SocketAddr>);
    type Kept = HashMap<String, (Key, Arc<Ejections>)>;
    static EJECTIONS: LazyLock<Mutex<Kept>> = LazyLock::new(Default::default);
    let key: Key = (policy, peers.iter().map(|p| p.addr).collect());
    let mut all = EJECTIONS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, kept)) = all.get(name).filter(|(k, _)| *k == key) {
        return kept.clone();
    }
    let made = Arc::new(Ejections {
        state: Mutex::new(Outliers::new(policy, peers.len())),
        changes: AtomicU64::new(0),
    });
    all.insert(name.to_string(), (key, made.clone()));
    made
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
    use crate::core::config::{Spanned, Upstream as Conf};
    use crate::core::outlier::Verdict;

    fn conf(peers: &[&str], balance: config::Balance) -> Conf {
        Conf {
            peers: Spanned::new(
                peers
                    .iter()
                    .map(|p| {
                        let addr = Spanned::new(p.to_string(), Default::default());
                        let weight = Spanned::new(1, Default::default());
                        Spanned::new(config::PeerConf { addr, weight }, Default::default())
                    })
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
            outlier: None,
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

    fn weighted(weights: &[i64], balance: config::Balance) -> Conf {
        let mut c = conf(&vec!["127.0.0.1:1"; weights.len()], balance);
        for (i, (peer, w)) in c.peers.value.iter_mut().zip(weights).enumerate() {
            peer.value.addr.value = format!("127.0.0.1:{}", i + 1);
            peer.value.weight.value = *w;
        }
        c
    }

    #[test]
    fn round_robin_and_random_honour_weights() {
        for balance in [config::Balance::RoundRobin, config::Balance::Random] {
            let up = Upstream::build("u", &weighted(&[1, 9], balance)).expect("valid");
            let mut counts = [0usize; 2];
            for _ in 0..10_000 {
                counts[up.pick_peer(b"", &[]).expect("peer")] += 1;
            }
            // Round robin is exact; random within ~7 standard deviations (30).
            assert!((800..=1200).contains(&counts[0]), "{balance:?}: {counts:?}");
        }
    }

    #[test]
    fn an_ejected_peer_is_skipped_until_its_trial() {
        let mut c = conf(&["127.0.0.1:1", "127.0.0.1:2"], config::Balance::RoundRobin);
        c.outlier = Some(config::Outlier {
            consecutive_failures: Spanned::new(2, Default::default()),
            eject_for: Spanned::new(Duration::from_millis(50), Default::default()),
        });
        // A name of its own: ejection state is kept per upstream name.
        let up = Upstream::build("ejection-unit-test", &c).expect("valid");
        up.record(0, false, Verdict::Failure);
        assert_eq!(up.peers_up(), [true, true], "one failure of two");
        up.record(0, false, Verdict::Failure);
        assert_eq!(up.peers_up(), [false, true]);
        assert_eq!(up.ejection_changes(), 1);
        for _ in 0..10 {
            assert_eq!(
                up.pick(b"", &[]),
                Ok(Pick {
                    peer: 1,
                    trial: false
                })
            );
        }
        assert_eq!(up.pick(b"", &[1]), Err(NoPeer::AllTried));
        std::thread::sleep(Duration::from_millis(60));
        let trial = (0..4)
            .map(|_| up.pick(b"", &[]).expect("peer"))
            .find(|p| p.peer == 0)
            .expect("the trial goes to the ejected peer");
        assert!(trial.trial);
        assert!(
            (0..4).all(|_| up.pick(b"", &[]).map(|p| p.peer) == Ok(1)),
            "one trial"
        );
        up.record(0, true, Verdict::Success);
        assert_eq!(up.peers_up(), [true, true]);
    }

    #[test]
    fn ejection_state_outlives_a_rebuild_with_the_same_peers_and_policy() {
        let mut c = conf(&["127.0.0.1:1", "127.0.0.1:2"], config::Balance::RoundRobin);
        c.outlier = Some(config::Outlier {
            consecutive_failures: Spanned::new(1, Default::default()),
            eject_for: Spanned::new(Duration::from_secs(60), Default::default()),
        });
        let before = Upstream::build("ejection-reload-test", &c).expect("valid");
        before.record(0, false, Verdict::Failure);
        let reloaded = Upstream::build("ejection-reload-test", &c).expect("valid");
        assert_eq!(
            reloaded.peers_up(),
            [false, true],
            "still out after a reload"
        );
        c.outlier = Some(config::Outlier {
            consecutive_failures: Spanned::new(2, Default::default()),
            eject_for: Spanned::new(Duration::from_secs(60), Default::default()),
        });
        let changed = Upstream::build("ejection-reload-test", &c).expect("valid");
        assert_eq!(
            changed.peers_up(),
            [true, true],
            "a new policy starts afresh"
        );
    }

    #[test]
    fn least_connections_skips_an_ejected_peer() {
        let mut c = conf(
            &["127.0.0.1:1", "127.0.0.1:2"],
            config::Balance::LeastConnections,
        );
        c.outlier = Some(config::Outlier {
            consecutive_failures: Spanned::new(1, Default::default()),
            eject_for: Spanned::new(Duration::from_secs(60), Default::default()),
        });
        let up = Upstream::build("ejection-least-connections-test", &c).expect("valid");
        up.acquire(1);
        assert_eq!(up.pick_peer(b"", &[]), Ok(0), "the idle one");
        up.record(0, false, Verdict::Failure);
        assert_eq!(up.pick_peer(b"", &[]), Ok(1), "busier, but the only one in");
        assert_eq!(up.pick_peer(b"", &[1]), Err(NoPeer::AllTried));
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
            &conf(
                &["127.0.0.1:1", "no-port", "127.0.0.1:99999"],
                config::Balance::Random,
            ),
        )
        .expect_err("bad peer");
        let failed: Vec<usize> = err.iter().map(|(i, _)| *i).collect();
        assert_eq!(failed, [1, 2], "every bad peer, not only the first");
    }
}
