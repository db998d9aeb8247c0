//! Portcullis: an API gateway on Cloudflare's Pingora.
//!
//! Data flows one way: the YAML file is decoded and checked ([`core::config`]),
//! built into immutable tables ([`tables`]), and read by the request phases
//! ([`proxy`]). The layers, each of which may use only those listed above it
//! (tests/layers.rs enforces it):
//!
//! - [`core`]: config, router, keys, forwarding rules, head checks, the
//!   gateway's own answers, limits, aggregate templates. No Pingora types.
//! - [`telemetry`]: metrics, the access log, the process log.
//! - [`tables`]: the gateway's tables built from a config (routes, upstreams,
//!   certificates, the process plan).
//! - [`proxy`]: the `ProxyHttp` phases and what they call: admission, the one
//!   writer of the gateway's answers, upstream attempts, fan-out, recording.
//! - [`net`]: client connections before Pingora's HTTP layer (the head gate), TLS.
//! - [`runtime`]: the server and its services, reload, admin, health, demo.

pub mod core;
pub mod net;
pub mod proxy;
pub mod runtime;
pub mod tables;
pub mod telemetry;
