//! TLS, black-box: a TLS listener answering HTTP/1.1 and HTTP/2 (curl), its
//! certificate re-read on reload, and TLS to upstreams.

mod common;

use common::*;
use std::net::SocketAddr;
use std::process::Command;

/// A plain listener (`{listen}`) and a TLS one on `tls`, in front of `backend`.
fn tls_config(
    tls: SocketAddr,
    cert: &std::path::Path,
    key: &std::path::Path,
    backend: SocketAddr,
    route_extra: &str,
) -> String {
    format!(
        "listen:\n  - addr: {{listen}}\n  - addr: {tls}\n    tls: {{ cert: \"{cert}\", key: \"{key}\" }}\n\
         admin:\n  addr: {{admin}}\nthreads: 2\nshutdown_grace: 5s\n\
         consumers:\n  - name: web\n    keys: [\"{KEY}\"]\n\
         upstreams:\n  u:\n    peers: [\"{backend}\"]\n\
         routes:\n  - {{ name: r, path: /, upstream: u{route_extra} }}\n",
        cert = cert.display(),
        key = key.display(),
    )
}

/// A gateway from `tls_config` whose TLS listener serves a fresh self-signed
/// certificate for `host`, kept in a new temp dir: (the dir, TLS address, gateway).
fn tls_gateway(
    dir_name: &str,
    host: &str,
    backend: SocketAddr,
    route_extra: &str,
) -> (std::path::PathBuf, SocketAddr, Gateway) {
    let dir = temp_dir(dir_name);
    let (cert, key) = self_signed(&dir, host);
    let tls: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let gw = Gateway::start(&tls_config(tls, &cert, &key, backend, route_extra));
    (dir, tls, gw)
}

/// `curl -k` against the TLS listener, the path sent as written (no dot-segment
/// squashing): (HTTP version, status, body).
fn curl(version_flag: &str, url: &str) -> (String, String, String) {
    let out = Command::new("curl")
        .args(["-sk", "--path-as-is", version_flag])
        .args(["-H", &format!("x-api-key: {KEY}")])
        .args(["-w", "\n%{http_version} %{http_code}", url])
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (version, code) = tail.split_once(' ').unwrap_or((tail, ""));
    (version.to_string(), code.to_string(), body.to_string())
}

#[test]
fn a_tls_listener_speaks_http1_and_http2_and_reloads_its_certificate() {
    let backend = Backend::echo();
    let (dir, tls, gw) = tls_gateway("tls", "first.test", backend.addr, "");

    let (version, code, body) = curl("--http1.1", &format!("https://{tls}/users/1"));
    assert_eq!((version.as_str(), code.as_str()), ("1.1", "200"), "{body}");
    let seen = backend.last();
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("x-api-key"), None);

    let (version, code, body) = curl("--http2", &format!("https://{tls}/users/2"));
    assert_eq!((version.as_str(), code.as_str()), ("2", "200"), "{body}");
    assert_eq!(backend.last().target, "/users/2");
    // The plain listener still speaks plain HTTP.
    assert_eq!(gw.get_with_key("/users/3").status, 200);

    // New files, a reload, and the next handshake serves the new certificate.
    assert_eq!(served_certificate_name(tls), "first.test");
    let (_, key) = self_signed(&dir, "second.test");
    let resp = gw.post_reload();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(served_certificate_name(tls), "second.test");

    // A key that does not match its certificate is refused; the old pair stays.
    let other = temp_dir("tls-other");
    let (_, wrong_key) = self_signed(&other, "other.test");
    std::fs::copy(&wrong_key, &key).expect("swap in the wrong key");
    let resp = gw.post_reload();
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert!(resp.text().contains("listen[1].tls.key"), "{}", resp.text());
    assert!(resp.text().contains("does not belong"), "{}", resp.text());
    assert_eq!(served_certificate_name(tls), "second.test");
}

#[test]
fn tls_to_upstreams_verifies_by_default() {
    // The upstream is a second gateway's TLS listener (self-signed) in front
    // of an echo backend.
    let backend = Backend::echo();
    let (_dir, tls, _inner) = tls_gateway("tls-up", "backend.test", backend.addr, ", auth: none");

    let outer = |extra: &str| Gateway::start(&one_route_config(&[tls], extra, ""));
    let gw = outer("    tls: true\n    sni: backend.test\n    verify: false\n");
    let resp = gw.get_with_key("/users/9");
    assert_eq!(resp.status, 200, "{}", resp.text());
    let seen = backend.last();
    assert_eq!(seen.target, "/users/9");
    assert_eq!(
        seen.header("x-forwarded-proto"),
        Some("https"),
        "the inner gateway was reached over TLS"
    );
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some("backend.test"),
        "host is the sni"
    );

    let gw = outer("    tls: true\n    sni: backend.test\n");
    let resp = gw.get_with_key("/users/9");
    assert_eq!(
        resp.status,
        502,
        "self-signed fails verification: {}",
        resp.text()
    );
    assert_eq!(resp.error_code(), "bad_gateway");
}

#[test]
fn tls_to_upstreams_verifies_against_the_system_ca_store() {
    // The system store is read once, at the first handshake that verifies
    // (vendor/patches/0009), not by every connector at start: a peer whose
    // certificate it holds is still trusted.
    let backend = Backend::echo();
    let (dir, tls, _inner) = tls_gateway("tls-ca", "backend.test", backend.addr, ", auth: none");
    let cert = dir.join("tls.crt");
    assert!(cert.exists(), "self_signed wrote {}", cert.display());
    let empty_dir = temp_dir("tls-ca-empty");
    let config = one_route_config(&[tls], "    tls: true\n    sni: backend.test\n", "");
    let gw = Gateway::start_with_env(
        &config,
        &[
            ("SSL_CERT_FILE", cert.to_str().expect("utf-8 path")),
            ("SSL_CERT_DIR", empty_dir.to_str().expect("utf-8 path")),
        ],
    );
    let resp = gw.get_with_key("/users/9");
    assert_eq!(
        resp.status,
        200,
        "trusted by the system store: {}",
        resp.text()
    );
    assert_eq!(
        backend.last().header("x-forwarded-host"),
        Some("backend.test")
    );
}

#[test]
fn unreadable_certificate_files_are_config_errors() {
    let dir = temp_dir("tls-bad");
    let config_path = dir.join("gateway.yaml");
    std::fs::write(
        &config_path,
        "listen:\n  - addr: 127.0.0.1:1\n    tls: { cert: /nonexistent/tls.crt, key: /nonexistent/tls.key }\nroutes:\n  - { name: h, path: /, auth: none, respond: { status: 200 } }\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .arg("-c")
        .arg(&config_path)
        .arg("--test")
        .output()
        .expect("run --test");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "gateway.yaml:3:10: listen[0].tls.cert: cannot read \"/nonexistent/tls.crt\""
        ),
        "{stderr}"
    );
}

#[test]
fn http2_paths_cannot_climb_out_of_a_route_prefix_either() {
    let backend = Backend::echo();
    let (_dir, tls, _gw) = tls_gateway("tls-h2-path", "h2.test", backend.addr, "");
    for path in [
        "/users/../admin",
        "/users/%2e%2e/admin",
        "/users/..%2Fadmin",
        "/users/..;/admin",
    ] {
        let (version, code, body) = curl("--http2", &format!("https://{tls}{path}"));
        assert_eq!(
            (version.as_str(), code.as_str()),
            ("2", "400"),
            "{path}: {body}"
        );
        assert!(body.contains("\"error\":\"bad_request\""), "{path}: {body}");
    }
    assert!(backend.requests().is_empty(), "nothing reached the backend");
}

#[test]
fn the_server_picks_the_cipher_by_its_own_preference() {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode, SslVersion};
    let backend = Backend::echo();
    let (_dir, tls, _gw) = tls_gateway("tls-cipher-order", "localhost", backend.addr, "");
    let mut connector = SslConnector::builder(SslMethod::tls()).expect("connector");
    connector.set_verify(SslVerifyMode::NONE);
    connector
        .set_max_proto_version(Some(SslVersion::TLS1_2))
        .expect("TLS 1.2");
    // The client prefers AES-256; the server's (Mozilla intermediate) order
    // puts AES-128-GCM first, and its order is the one that counts.
    connector
        .set_cipher_list(
            "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:\
             ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256",
        )
        .expect("cipher list");
    let stream = std::net::TcpStream::connect(tls).expect("connect");
    let session = connector
        .build()
        .connect("localhost", stream)
        .expect("TLS handshake");
    let cipher = session.ssl().current_cipher().expect("a cipher").name();
    assert!(
        cipher.contains("AES128-GCM"),
        "the client's choice won: {cipher}"
    );
}

#[test]
fn over_http2_too_the_upstreams_connection_headers_stay_behind_and_bad_framing_is_a_502() {
    let backend = RawBackend::start(|head| {
        if head.starts_with("GET /identity ") {
            return b"HTTP/1.1 200 OK\r\ntransfer-encoding: identity\r\n\r\nhello".to_vec();
        }
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: x-internal\r\n\
          x-internal: 10.0.0.7\r\nx-kept: 1\r\n\r\nok"
            .to_vec()
    });
    let (_dir, tls, _gw) = tls_gateway("tls-h2-hop", "h2.test", backend.addr, "");
    let out = Command::new("curl")
        .args(["-sk", "--http2", "-o", "/dev/null"])
        .args(["-H", &format!("x-api-key: {KEY}")])
        .args([
            "-w",
            "%{http_version} %{http_code} [%header{x-internal}] [%header{x-kept}]",
        ])
        .arg(format!("https://{tls}/named"))
        .output()
        .expect("run curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200 [] [1]");
    let (version, code, body) = curl("--http2", &format!("https://{tls}/identity"));
    assert_eq!((version.as_str(), code.as_str()), ("2", "502"), "{body}");
    assert!(body.contains("bad_gateway"), "{body}");
}

/// An HTTP/2 CONNECT (only `:method` and `:authority`, as RFC 9113 §8.5
/// wants) to the TLS listener: its status, headers and body.
fn http2_connect(tls: SocketAddr) -> (u16, http::HeaderMap, Vec<u8>) {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(tls).await.expect("connect");
        let mut connector = SslConnector::builder(SslMethod::tls()).expect("connector");
        connector.set_verify(SslVerifyMode::NONE);
        connector.set_alpn_protos(b"\x02h2").expect("alpn");
        let ssl = connector
            .build()
            .configure()
            .and_then(|c| c.into_ssl("h2.test"))
            .expect("ssl");
        let mut stream = tokio_openssl::SslStream::new(ssl, tcp).expect("tls stream");
        std::pin::Pin::new(&mut stream)
            .connect()
            .await
            .expect("TLS handshake");
        let (mut client, connection) = h2::client::handshake(stream).await.expect("h2");
        tokio::spawn(connection);
        let request = http::Request::builder()
            .method("CONNECT")
            .uri("example.com:443")
            .body(())
            .expect("request");
        let (answer, _send) = client.send_request(request, false).expect("send");
        let answer = answer.await.expect("an answer, not a reset");
        let (head, mut body) = answer.into_parts();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            bytes.extend_from_slice(&chunk.expect("body"));
        }
        (head.status.as_u16(), head.headers, bytes)
    })
}

#[test]
fn an_http2_connect_gets_the_gateways_own_405() {
    let backend = Backend::echo();
    let (_dir, tls, _gw) = tls_gateway("tls-h2-connect", "h2.test", backend.addr, "");
    let (status, headers, body) = http2_connect(tls);
    assert_eq!(status, 405, "{}", String::from_utf8_lossy(&body));
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    assert_eq!(header("content-type"), Some("application/json"));
    assert_eq!(header("allow"), Some(""));
    assert_eq!(header("server"), None);
    let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON body");
    assert_eq!(v["error"], "method_not_allowed");
    assert!(backend.requests().is_empty(), "nothing reached the backend");
}
