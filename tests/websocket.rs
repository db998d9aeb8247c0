//! WebSocket through the gateway, black-box: a real upgrade to a real echo
//! server, frames both ways, authenticated and rate-limited like any request.

mod common;

use common::*;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const CLIENT_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn ws_gateway(ws: &WsEcho, route_extra: &str) -> Gateway {
    // A short upstream read timeout and body read timeout: an idle WebSocket
    // must outlive both (only the upstream's idle timeout cuts a tunnel).
    let upstream = format!(
        "    timeouts: {{ read: 300ms }}\n    headers: {{ x-gateway-secret: \"{SECRET}\" }}\n"
    );
    let config = one_route_config(&[ws.addr], &upstream, route_extra)
        + "limits: { body_read_timeout: 500ms }\n";
    Gateway::start(&config)
}

/// Sends the upgrade request; returns the status, headers and the open stream.
fn upgrade(
    addr: SocketAddr,
    key: Option<&str>,
) -> (
    u16,
    std::collections::HashMap<String, String>,
    BufReader<TcpStream>,
    TcpStream,
) {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut writer = stream.try_clone().expect("clone");
    let auth = key.map_or(String::new(), |k| format!("x-api-key: {k}\r\n"));
    let req = format!(
        "GET /chat HTTP/1.1\r\nhost: {addr}\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-key: {CLIENT_KEY}\r\nsec-websocket-version: 13\r\n{auth}\r\n"
    );
    writer.write_all(req.as_bytes()).expect("send upgrade");
    let mut reader = BufReader::new(stream);
    let (line, headers) = read_head(&mut reader).expect("an answer");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, headers, reader, writer)
}

#[test]
fn frames_flow_both_ways_through_an_upgrade_and_idle_is_not_cut() {
    let ws = WsEcho::start();
    let gw = ws_gateway(&ws, "");
    let (status, headers, mut reader, mut writer) = upgrade(gw.addr, Some(KEY));
    assert_eq!(status, 101);
    assert_eq!(
        headers.get("sec-websocket-accept").map(String::as_str),
        Some(websocket_accept(CLIENT_KEY).as_str())
    );
    assert!(headers.contains_key("x-request-id"));
    let seen = ws.upgrades.lock().expect("lock")[0].clone();
    assert_eq!(seen.header("upgrade"), Some("websocket"));
    assert_eq!(seen.header("x-gateway-secret"), Some(SECRET));
    assert_eq!(seen.header("x-api-key"), None);

    for (i, text) in ["hello", "portcullis", "third frame"].iter().enumerate() {
        write_frame(&mut writer, 1, text.as_bytes(), Some([1, 2, 3, i as u8])).expect("send");
        let (opcode, payload) = read_frame(&mut reader).expect("echo");
        assert_eq!((opcode, payload.as_slice()), (1, text.as_bytes()));
    }
    // Idle for longer than the upstream read timeout (300 ms) and the body
    // read timeout (500 ms): still open.
    std::thread::sleep(Duration::from_millis(1200));
    write_frame(&mut writer, 2, &[0, 1, 2, 255], Some([9, 9, 9, 9])).expect("send");
    assert_eq!(read_frame(&mut reader), Some((2, vec![0, 1, 2, 255])));
    write_frame(&mut writer, 8, &[], Some([0, 0, 0, 0])).expect("close");
    assert_eq!(read_frame(&mut reader).map(|f| f.0), Some(8));
}

#[test]
fn upgrades_are_authenticated_and_rate_limited() {
    let ws = WsEcho::start();
    let gw = ws_gateway(&ws, "rate_limit: { requests: 1, per: 1m }");
    let (status, headers, _, _) = upgrade(gw.addr, None);
    assert_eq!(status, 401);
    assert!(headers.contains_key("www-authenticate"));
    assert_eq!(upgrade(gw.addr, Some("wrong")).0, 401);
    assert!(
        ws.upgrades.lock().expect("lock").is_empty(),
        "nothing reached the backend"
    );

    let (status, headers, _, _) = upgrade(gw.addr, Some(KEY));
    assert_eq!(status, 101);
    assert_eq!(
        headers.get("ratelimit-remaining").map(String::as_str),
        Some("0")
    );
    let (status, headers, _, _) = upgrade(gw.addr, Some(KEY));
    assert_eq!(status, 429);
    assert!(headers.contains_key("retry-after"));
    assert_eq!(ws.upgrades.lock().expect("lock").len(), 1);
}
