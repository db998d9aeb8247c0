//! The pure core: the config, the router, keys, forwarding rules, head checks,
//! the gateway's own answers, rate limits and aggregate templates. No Pingora
//! type appears here (tests/layers.rs checks it), so all of it is unit-tested
//! without a server.

pub mod aggregate;
pub mod auth;
pub mod cache;
pub mod config;
pub mod cors;
pub mod docs;
pub mod forward;
pub mod head;
pub mod jwt;
pub mod limit;
pub mod outlier;
pub mod reply;
pub mod route_match;
pub mod router;
pub mod trace;
