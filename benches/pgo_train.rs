//! The training run of a profile-guided build (`benches/pgo_build.sh`): drives an
//! instrumented gateway through the work it does most, so that the optimizing
//! build lays out and inlines the hot paths for it.
//!
//!     pgo_train <instrumented portcullis> [requests per connection]
//!
//! Self-contained (std only, loopback only), so it runs in the Docker builder
//! as well as on a developer's machine: a small keep-alive JSON backend on an
//! ephemeral port, the gateway with a config written here, and eight client
//! connections sending a fixed mix of requests:
//! - a cache hit (cached route, key checked),
//! - a proxied request (API key checked, secret injected, pooled upstream),
//! - the same with a small body and a route rate limit,
//! - a refusal (no key: 401) and an unknown path (404).
//!
//! Every answer's status is checked: a training run that goes wrong fails the
//! build rather than leaving a profile of error paths. The gateway is stopped
//! with SIGTERM and must exit by itself, since the profile is written at exit.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

const CONNECTIONS: usize = 8;
const BODY: &str = r#"{"ok":true}"#;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(gateway) = args.next() else {
        eprintln!("usage: pgo_train <instrumented portcullis> [requests per connection]");
        return ExitCode::from(2);
    };
    let per_connection = match args.next().map(|n| n.parse::<usize>()) {
        None => 4_000,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("pgo_train: the request count must be a positive number");
            return ExitCode::from(2);
        }
    };
    match train(&gateway, per_connection) {
        Ok(requests) => {
            println!("pgo_train: {requests} requests answered as expected; gateway stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pgo_train: {e}");
            ExitCode::FAILURE
        }
    }
}

fn train(gateway: &str, per_connection: usize) -> Result<usize, String> {
    let backend = start_backend()?;
    let listen = free_port()?;
    let admin = free_port()?;
    let dir = std::env::temp_dir().join(format!("portcullis-pgo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let config = dir.join("gateway.yaml");
    std::fs::write(&config, config_yaml(listen, admin, backend))
        .map_err(|e| format!("{}: {e}", config.display()))?;
    let log = std::fs::File::create(dir.join("gateway.err")).map_err(|e| e.to_string())?;
    let child = Command::new(gateway)
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {gateway}: {e}"))?;
    let mut gateway = Running(Some(child));
    wait_for_port(listen)?;

    let log_path = dir.join("gateway.err");
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|n| std::thread::spawn(move || drive(listen, n, per_connection)))
        .collect();
    let mut answered = 0;
    for client in clients {
        answered += client
            .join()
            .map_err(|_| "a client thread panicked".to_string())?
            .map_err(|e| format!("{e} (the gateway's log: {})", log_path.display()))?;
    }
    gateway.stop()?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(answered)
}

/// The bench job's shape (benches/lib.sh), plus a limited route with a body.
fn config_yaml(listen: u16, admin: u16, backend: u16) -> String {
    format!(
        r#"listen: [{{ addr: "127.0.0.1:{listen}" }}]
admin: {{ addr: "127.0.0.1:{admin}" }}
threads: 1
log: {{ level: warn }}
cache: {{ max_size: 16MiB }}
consumers: [{{ name: train, keys: ["train-key"] }}]
upstreams:
  users:
    peers: ["127.0.0.1:{backend}"]
    headers: {{ x-gateway-secret: "train-secret" }}
routes:
  - {{ name: users, path: /users, upstream: users }}
  - {{ name: cached, path: /cached, upstream: users, cache: {{ ttl: 600s }} }}
  - {{ name: orders, path: /orders, upstream: users, rate_limit: {{ requests: 1000000, per: 1s }} }}
"#
    )
}

/// One keep-alive connection sending the mix `per_connection` times over.
/// The cached route must answer hits (all but its first few requests): a
/// change that made it miss every time would train the miss path instead.
fn drive(port: u16, n: usize, per_connection: usize) -> Result<usize, String> {
    let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let (mut cached, mut hits) = (0, 0);
    for i in 0..per_connection {
        let (request, expect) = match i % 10 {
            0..=3 => (
                format!("GET /cached/{} HTTP/1.1\r\nhost: a\r\nx-api-key: train-key\r\n\r\n", (n + i) % 4),
                200,
            ),
            4..=6 => (
                format!("GET /users/{i} HTTP/1.1\r\nhost: a\r\nx-api-key: train-key\r\n\r\n"),
                200,
            ),
            7 => (
                format!(
                    "POST /orders HTTP/1.1\r\nhost: a\r\nx-api-key: train-key\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{BODY}",
                    BODY.len()
                ),
                200,
            ),
            8 => ("GET /users/1 HTTP/1.1\r\nhost: a\r\n\r\n".to_string(), 401),
            _ => ("GET /nowhere HTTP/1.1\r\nhost: a\r\nx-api-key: train-key\r\n\r\n".to_string(), 404),
        };
        writer
            .write_all(request.as_bytes())
            .map_err(|e| e.to_string())?;
        let (status, hit) = read_answer(&mut reader)?;
        if request.starts_with("GET /cached/") {
            cached += 1;
            hits += usize::from(hit);
        }
        if status != expect {
            return Err(format!(
                "expected {expect}, got {status} for {}",
                request.lines().next().unwrap_or("")
            ));
        }
    }
    if hits * 10 < cached * 9 {
        return Err(format!(
            "only {hits} of {cached} requests to the cached route were hits"
        ));
    }
    Ok(per_connection)
}

/// Reads one answer with a content-length body; returns its status and
/// whether `cache-status` says it was a hit.
fn read_answer(reader: &mut BufReader<TcpStream>) -> Result<(u16, bool), String> {
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| e.to_string())?;
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP status line: {line:?}"))?;
    let (mut length, mut hit) = (0, false);
    loop {
        line.clear();
        if reader.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Err("the gateway closed the connection".into());
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value
                    .trim()
                    .parse()
                    .map_err(|_| format!("bad content-length: {value}"))?;
            } else if name.eq_ignore_ascii_case("cache-status") {
                hit = value.split(';').any(|part| part.trim() == "hit");
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).map_err(|e| e.to_string())?;
    Ok((status, hit))
}

/// A backend answering every bodyless or content-length request with fixed
/// JSON, one thread per connection.
fn start_backend() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve(stream));
        }
    });
    Ok(port)
}

fn serve(stream: TcpStream) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let mut line = String::new();
    loop {
        let mut length = 0usize;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() || writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

fn wait_for_port(port: u16) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("the gateway never listened on port {port}"))
}

/// The gateway, stopped on drop if the run ends early.
struct Running(Option<Child>);

impl Running {
    /// SIGTERM, then waits up to 30 s: an instrumented binary writes its
    /// profile only when it exits by itself.
    fn stop(&mut self) -> Result<(), String> {
        let Some(mut child) = self.0.take() else {
            return Ok(());
        };
        // The shell's own `kill`: std sends no signal but SIGKILL, and a
        // builder image need not have procps.
        let term = Command::new("sh")
            .args(["-c", "kill -TERM \"$0\"", &child.id().to_string()])
            .status()
            .map_err(|e| format!("kill: {e}"))?;
        if !term.success() {
            return Err("kill -TERM failed".into());
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!("the gateway exited with {status}"))
                };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        Err("the gateway did not stop within 30 s of SIGTERM".into())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
