//! Pingora's upstream pool, as vendored (vendor/patches): a connection released on
//! one worker thread and picked at once on another is reused, never lost. Upstream
//! 0.9.1 loses it now and then (cloudflare/pingora#998): the idle watcher still holds
//! the pooled connection's `Arc` when the picker tries to unwrap it.

use pingora_core::connectors::{ConnectorOptions, TransportConnector};
use pingora_core::upstreams::peer::{BasicPeer, Peer};
use std::sync::Arc;
use std::time::Duration;

const ROUNDS: usize = 2_000;

/// Releases one loopback connection and picks it up again from a task on
/// another worker, `ROUNDS` times; returns how many rounds lost it.
fn lost_hand_overs(options: ConnectorOptions) -> usize {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            // every connection stays open and silent until the test ends
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let connector = Arc::new(TransportConnector::new(Some(options)));
        let peer = BasicPeer::new(&addr.to_string());
        let mut stream = connector.new_stream(&peer).await.expect("connect");
        let mut lost = 0;
        for _ in 0..ROUNDS {
            connector.release_stream(stream, peer.reuse_hash(), Some(Duration::from_secs(60)));
            let (connector, peer) = (connector.clone(), peer.clone());
            let picked = tokio::spawn(async move { connector.get_stream(&peer).await })
                .await
                .expect("task")
                .expect("stream");
            lost += usize::from(!picked.1);
            stream = picked.0;
        }
        server.abort();
        lost
    })
}

#[test]
fn a_watched_pooled_connection_survives_a_hand_over_between_threads() {
    // Pingora's default: a task watches every idle pooled connection.
    assert_eq!(lost_hand_overs(ConnectorOptions::new(16)), 0);
}

#[test]
fn an_unwatched_pooled_connection_survives_a_hand_over_between_threads() {
    // What Portcullis runs (`upstream_keepalive_idle_watch: false`).
    let mut options = ConnectorOptions::new(16);
    options.keepalive_idle_watch = false;
    assert_eq!(lost_hand_overs(options), 0);
}
