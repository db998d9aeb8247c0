//! The floor under Portcullis: the bench job (route /users, check the key,
//! strip it, inject the secret, set x-forwarded-for, proxy to a keep-alive
//! backend) done by the least code Pingora allows, run the way Portcullis runs
//! one worker (current-thread runtime, mimalloc, same upstream pool size).
//! `benches/load.sh` and `benches/instructions.sh` measure it beside Portcullis
//! so one run tells what Pingora itself costs against nginx, and what our code
//! adds on top. Not a product: no config, no answers of its own beyond Pingora's
//! bare 401 (no key), 404 (off /users) and 502.
//!
//!   cargo build --release --example pingora_floor
//!   target/release/examples/pingora_floor 127.0.0.1:8080 127.0.0.1:9000

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use async_trait::async_trait;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::Result;
use pingora_http::RequestHeader;
use pingora_proxy::{ProxyHttp, Session};
use std::net::SocketAddr;
use std::process::ExitCode;

struct Floor {
    backend: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _: &mut ()) -> Result<bool> {
        let req = session.req_header();
        let status = if !req.uri.path().starts_with("/users") {
            404
        } else if req
            .headers
            .get("x-api-key")
            .is_some_and(|k| k.as_bytes() == b"bench-key")
        {
            return Ok(false);
        } else {
            401
        };
        session.respond_error(status).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.backend, false, String::new())))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        _: &mut (),
    ) -> Result<()> {
        req.remove_header("x-api-key");
        req.insert_header("x-gateway-secret", "bench-secret")?;
        if let Some(client) = session.client_addr().and_then(|a| a.as_inet()) {
            req.insert_header("x-forwarded-for", client.ip().to_string())?;
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(listen), Some(Ok(backend))) = (args.first(), args.get(1).map(|b| b.parse())) else {
        eprintln!("usage: pingora_floor LISTEN_ADDR BACKEND_ADDR");
        return ExitCode::from(2);
    };
    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        upstream_keepalive_pool_size: 1024,
        // Exit at once on SIGTERM (Pingora's default grace is 300 s).
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora_proxy::http_proxy_service(&server.configuration, Floor { backend });
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever()
}
