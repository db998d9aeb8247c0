//! Portcullis: an API gateway on Cloudflare's Pingora.
//!
//! Data flows one way: the YAML file is decoded and checked ([`config`]), compiled
//! into immutable tables ([`gateway`]: [`router`], [`auth`], [`upstream`]), and
//! read by the request phases ([`proxy`]). The pure core (config, router, auth,
//! forward, reply) holds no Pingora types.

pub mod access_log;
pub mod admin;
pub mod aggregate;
pub mod auth;
pub mod client_stream;
pub mod config;
pub mod connection;
pub mod demo;
pub mod forward;
pub mod gateway;
pub mod head;
pub mod health;
pub mod limit;
pub mod metrics;
pub mod openapi;
pub mod proxy;
pub mod reload;
pub mod reply;
pub mod router;
pub mod server;
pub mod tls;
pub mod upstream;
