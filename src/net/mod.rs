//! Client connections before Pingora's HTTP layer: the head gate, the buffered
//! client stream, and the TLS listeners' certificates.

pub mod client_stream;
pub mod connection;
pub mod tls;
