//! Assembles the Pingora server from a checked config and runs it: the proxy
//! service on the `listen` addresses, the admin service, readiness and the
//! graceful drain on SIGTERM.

use crate::net::connection::ClientConnections;
use crate::net::tls::ListenerCerts;
use crate::proxy::fan_out::FanOut;
use crate::proxy::{self, Portcullis};
use crate::runtime::admin::AdminApp;
use crate::runtime::health::HealthChecker;
use crate::runtime::reload::Reloader;
use crate::tables::plan::Plan;
use crate::tables::{Gateway, Target};
use crate::telemetry::access_log;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::connectors::ConnectorOptions;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::{L4BufferSettings, ListenerConfig};
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{Server, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::Service;
use pingora_core::tls::ssl::SslOptions;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// Idle upstream connections kept per worker thread (Pingora's default: 128).
const KEEPALIVE_POOL_PER_THREAD: usize = 1024;
/// How long no request must be in flight before a draining gateway exits.
const DRAIN_QUIET: Duration = Duration::from_millis(250);

/// Pingora's own switches that our command line passes through.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessFlags {
    pub daemon: bool,
    pub upgrade: bool,
}

/// Fails with `ADDR: address already in use` (or why else it cannot be bound)
/// for the first listen or admin address another process holds. Pingora would
/// retry for ~20 s, then go on with no listener: a supervisor would think the
/// gateway healthy. Not for `--upgrade`, whose addresses the old process holds.
pub fn check_addresses_free(plan: &Plan) -> Result<(), String> {
    for addr in plan.listen.iter().chain([&plan.admin]) {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            let why = match e.kind() {
                std::io::ErrorKind::AddrInUse => "address already in use".to_string(),
                _ => e.to_string(),
            };
            return Err(format!("{addr}: {why}"));
        }
    }
    Ok(())
}

/// A Pingora server carrying the gateway's services, ready for more services
/// (the demo adds its backends) and then [`run`].
pub struct Assembled {
    pub server: Server,
    pub tables: Arc<ArcSwap<Gateway>>,
    reloader: Option<Arc<Reloader>>,
    plan: Plan,
    ready: Arc<AtomicBool>,
}

/// `config_file` is what SIGHUP and `POST /reload` read again (none for the demo).
pub fn assemble(
    plan: Plan,
    gateway: Gateway,
    flags: ProcessFlags,
    config_file: Option<PathBuf>,
) -> Assembled {
    let conf = server_conf(&plan, config_file.as_deref());
    let opt = Opt {
        daemon: flags.daemon,
        upgrade: flags.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    crate::proxy::cache::init_store(gateway.cache);
    crate::telemetry::cache_metrics::families();
    let tables = Arc::new(ArcSwap::from_pointee(gateway));
    crate::telemetry::metrics::config_loaded();
    let reloader =
        config_file.map(|path| Arc::new(Reloader::new(path, tables.clone(), plan.clone())));
    let proxy_service = proxy_service(&server, &plan, &tables);
    server.add_service(proxy_service);

    let ready = Arc::new(AtomicBool::new(false));
    let mut admin = Service::new(
        "admin".to_string(),
        AdminApp {
            tables: tables.clone(),
            ready: ready.clone(),
            reloader: reloader.clone(),
            listen: plan.listen.clone(),
            tls_listen: plan.tls_listen.clone(),
        },
    );
    admin.add_tcp(&plan.admin.to_string());
    server.add_service(admin);

    Assembled {
        server,
        tables,
        reloader,
        plan,
        ready,
    }
}

/// Pingora's server settings for this plan.
fn server_conf(plan: &Plan, config_file: Option<&std::path::Path>) -> ServerConf {
    let (pid_file, upgrade_sock) = process_files(config_file, plan);
    ServerConf {
        threads: plan.threads,
        pid_file,
        upgrade_sock,
        // Idle upstream connections kept per worker thread. Pingora's 128 is too
        // few for hundreds of concurrent clients: every request past it would
        // open (and close) its own upstream connection.
        upstream_keepalive_pool_size: KEEPALIVE_POOL_PER_THREAD,
        // Each worker runs its own current-thread runtime: no cross-thread
        // wake-ups or queue atomics, about 10% less CPU per request
        // (benches/load.sh). The runtimes share one upstream pool; handing a
        // connection between them is safe with vendor/patches/0001.
        work_stealing: false,
        // No task per pooled upstream connection (vendor/patches/0002): a
        // connection the backend closed or that idled past its timeout is
        // dropped when next picked, or when the pool evicts it.
        upstream_keepalive_idle_watch: false,
        // Pingora sleeps the whole grace period; our drain watcher exits as soon
        // as the last in-flight request is done (see `watch_shutdown`).
        grace_period_seconds: Some(plan.shutdown_grace.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    }
}

/// The proxy service: the head gate in front of the Pingora proxy, on every
/// `listen` address (TLS ones with HTTP/2 by ALPN).
fn proxy_service(
    server: &Server,
    plan: &Plan,
    tables: &Arc<ArcSwap<Gateway>>,
) -> Service<ClientConnections> {
    let fan_out = FanOut::new(ConnectorOptions::from_server_conf(&server.configuration));
    // A reload that adds the first aggregate route makes it on first use instead.
    let has_aggregates = tables
        .load()
        .routes
        .iter()
        .any(|r| matches!(r.target, Target::Aggregate(_)));
    if has_aggregates {
        fan_out.warm_up();
    }
    let portcullis = Portcullis {
        tables: tables.clone(),
        log_format: plan.log_format,
        fan_out,
        openapi: crate::runtime::openapi::for_public_docs,
    };
    let mut proxy = pingora_proxy::http_proxy(&server.configuration, portcullis);
    // HTTP/1 heads are bounded in `connection.rs`; HTTP/2 header lists here,
    // with the size the config had at start (Pingora reads it once).
    let mut h2 = pingora_core::protocols::http::v2::server::default_h2_options();
    let max_head = tables.load().client_limits.max_header_bytes;
    h2.max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX));
    proxy.h2_options = Some(h2);
    // An idle HTTP/2 connection is closed like an idle HTTP/1 one, or it would
    // hold a `max_connections` slot for ever.
    let mut options = pingora_core::apps::HttpServerOptions::default();
    options.h2_idle_timeout = Some(tables.load().client_limits.idle_timeout);
    // Pingora would answer CONNECT itself with a bare 405 before any hook; let
    // it through to `request_filter`, where admission refuses every CONNECT
    // with the gateway's JSON 405 (HTTP/1 ones never get past the head gate).
    options.allow_connect_method_proxying = true;
    proxy.server_options = Some(options);
    // A request without a body is proxied in one loop, not through the duplex
    // pipe that streams a request body (vendor patch 0006).
    proxy.h1_bodyless_fast_path = true;
    let connections = ClientConnections::new(proxy, tables.clone(), plan.log_format);
    let mut proxy_service = Service::new("portcullis".to_string(), connections);
    for addr in &plan.listen {
        if !plan.tls_listen.contains(addr) {
            // No L4 buffers: `connection.rs` reads each head into its own
            // buffer (Pingora's 64 KiB per connection would make 10,000 idle
            // keep-alive clients cost over 600 MiB), and `ClientStream` gathers
            // an answer's writes in a buffer that idle connections do not hold.
            proxy_service.add_listener(
                ListenerConfig::tcp(addr.to_string()).l4_buffer(L4BufferSettings::unbuffered()),
            );
            continue;
        }
        let certs = ListenerCerts {
            addr: *addr,
            tables: tables.clone(),
        };
        match TlsSettings::with_callbacks(Box::new(certs)) {
            Ok(mut settings) => {
                settings.enable_h2();
                // Mozilla's intermediate list is in the server's order of
                // preference; without this a client could pick the weakest.
                settings.set_options(SslOptions::CIPHER_SERVER_PREFERENCE);
                proxy_service.add_tls_with_settings(&addr.to_string(), None, settings);
            }
            Err(e) => log::error!("cannot set up TLS on {addr}: {e}; it is not served"),
        }
    }
    proxy_service
}

/// The pid file (`--daemon`) and the socket `--upgrade` takes the listeners
/// over, named after the config file (or the demo's listener): the old and new
/// process of an upgrade agree on them, two gateways on one machine do not clash.
fn process_files(config_file: Option<&std::path::Path>, plan: &Plan) -> (String, String) {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    match config_file {
        Some(path) => std::fs::canonicalize(path)
            .unwrap_or_else(|_| path.to_path_buf())
            .hash(&mut hasher),
        None => plan.listen.hash(&mut hasher),
    }
    let stem = std::env::temp_dir().join(format!("portcullis-{:016x}", hasher.finish()));
    let stem = stem.display();
    (format!("{stem}.pid"), format!("{stem}.upgrade.sock"))
}

/// Runs until shutdown; returns when the server has stopped.
pub fn run(assembled: Assembled) {
    let Assembled {
        mut server,
        plan,
        ready,
        tables,
        reloader,
    } = assembled;
    log::info!(
        "portcullis {} listening on {} (admin {}), {} threads",
        env!("CARGO_PKG_VERSION"),
        plan.listen
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        plan.admin,
        plan.threads
    );
    log::info!(
        "zero-downtime upgrade: start the new binary with --upgrade and the same config, then send SIGQUIT here (hand-over socket {})",
        server.configuration.upgrade_sock
    );
    let tables_for_checks = tables.clone();
    let tables_for_keys = tables.clone();
    // Background services, not threads: threads started before `run` would be
    // lost when `--daemon` forks.
    server.add_service(background_service(
        "lifecycle",
        Lifecycle {
            listen: plan.listen.iter().map(|a| dialable(*a)).collect(),
            grace: plan.shutdown_grace,
            ready,
            tables,
            reloader,
        },
    ));
    server.add_service(background_service(
        "health checks",
        HealthChecker {
            tables: tables_for_checks,
        },
    ));
    server.add_service(background_service(
        "jwks",
        super::jwks::JwksFetcher {
            tables: tables_for_keys,
        },
    ));
    server.run(pingora_core::server::RunArgs::default());
    access_log::flush();
}

/// Readiness, reloads on SIGHUP, and the graceful drain.
struct Lifecycle {
    /// The proxy listeners, as addresses to dial.
    listen: Vec<SocketAddr>,
    grace: Duration,
    ready: Arc<AtomicBool>,
    tables: Arc<ArcSwap<Gateway>>,
    reloader: Option<Arc<Reloader>>,
}

#[async_trait]
impl BackgroundService for Lifecycle {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Listen for SIGHUP before turning ready: its default action would
        // end the process.
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                log::warn!("cannot listen for SIGHUP, reload with POST /reload: {e}");
                None
            }
        };
        // SIGQUIT is Pingora's upgrade hand-over: noted here so the drain below
        // leaves the old process to Pingora's own timeline.
        let upgrading = Arc::new(AtomicBool::new(false));
        match signal(SignalKind::quit()) {
            Ok(mut quits) => {
                let upgrading = upgrading.clone();
                tokio::spawn(async move {
                    if quits.recv().await.is_some() {
                        upgrading.store(true, Ordering::Release);
                    }
                });
            }
            Err(e) => log::warn!("cannot watch for SIGQUIT: {e}"),
        }
        self.tables.load().limiter.warm_up().await;
        // `/readyz` turns ready once every proxy listener accepts connections.
        while !*shutdown.borrow() {
            let mut bound = true;
            for addr in &self.listen {
                bound &= TcpStream::connect(addr).await.is_ok();
            }
            if bound {
                self.ready.store(true, Ordering::Release);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        while !*shutdown.borrow() {
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                Some(()) = next_hangup(&mut hangups) => self.reload_on_hangup().await,
            }
        }
        self.ready.store(false, Ordering::Release);
        if upgrading.load(Ordering::Acquire) {
            // A new process serves already: Pingora's own timeline (the whole
            // grace period) costs nothing and lets every accepted connection
            // be answered.
            return;
        }
        // Pingora closes the listeners, then sleeps the whole grace period; SPEC §2
        // wants "up to": exit 0 once no request has been in flight for a moment
        // (a connection accepted just before the close still gets read).
        let started = Instant::now();
        let mut quiet_since: Option<Instant> = None;
        while started.elapsed() < self.grace {
            if proxy::in_flight() > 0 {
                quiet_since = None;
            } else if quiet_since.get_or_insert_with(Instant::now).elapsed() >= DRAIN_QUIET {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        log::info!(
            "graceful shutdown: {} request(s) in flight after {:?}; exiting",
            proxy::in_flight(),
            started.elapsed()
        );
        access_log::flush();
        std::process::exit(0);
    }
}

impl Lifecycle {
    async fn reload_on_hangup(&self) {
        match &self.reloader {
            // The outcome is logged and counted by the reloader.
            Some(reloader) => {
                let _ = reloader.reload_async().await;
            }
            None => log::warn!("SIGHUP: no config file to reload (the demo)"),
        }
    }
}

/// The next SIGHUP; never, when it cannot be listened for.
async fn next_hangup(hangups: &mut Option<Signal>) -> Option<()> {
    match hangups {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// A wildcard listen address is probed on loopback.
fn dialable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()))
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    }
}
