//! The running process: the Pingora server and its services, reloads, the admin
//! listener, health checks, the OpenAPI document and the demo.

pub mod admin;
pub mod cache_admin;
pub mod demo;
pub mod health;
pub mod jwks;
pub mod openapi;
pub mod reload;
pub mod server;
pub mod ticks;
