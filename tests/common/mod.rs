//! The one test harness: free ports, a real HTTP/1.1 backend on loopback, a raw
//! HTTP client, and the real `portcullis` binary started with a config file.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// A port that was free a moment ago (the OS picks it; never a fixed number).
/// Never the same one twice in this test process: tests run in parallel, and a
/// port released here could otherwise be handed to two of them.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = l.local_addr().expect("local addr").port();
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A fresh temporary directory for one test.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "portcullis-test-{}-{}-{}",
        tag,
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// What `portcullis --test -c FILE` did, run by [`check_config`].
pub struct Checked {
    /// The exit code; `None` when killed (by a signal, or for running too long).
    pub code: Option<i32>,
    pub stderr: String,
    pub took: Duration,
}

/// Runs `portcullis --test -c path` with its address space capped at `memory_mib`
/// (`ulimit -v`) and killed after `limit`: a loader that runs away then fails
/// the test instead of taking the machine with it.
pub fn check_config(path: &std::path::Path, memory_mib: u64, limit: Duration) -> Checked {
    let err_path = path.with_extension("stderr");
    let started = Instant::now();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v {} && exec \"$0\" --test -c \"$1\"",
            memory_mib * 1024
        ))
        .arg(BIN)
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("run portcullis --test");
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code();
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Checked {
        code,
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
        took: started.elapsed(),
    }
}

/// `levels` block mappings nested one in the other (`a:` under `a:`...), one
/// space of indentation per level.
pub fn nested_mappings(levels: usize) -> String {
    let mut doc = String::new();
    for level in 0..levels {
        doc.push_str(&" ".repeat(level));
        doc.push_str("a:\n");
    }
    doc.push_str(&" ".repeat(levels));
    doc.push_str("b: 1\n");
    doc
}

/// "Billion laughs": ten anchors, each a list of nine aliases to the one
/// before; expanded, 9^10 scalars from a 540-byte file.
pub fn alias_bomb() -> String {
    let mut doc = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for level in 1..10 {
        let prev = format!("*a{}", level - 1);
        let items = [prev.as_str(); 9].join(", ");
        doc.push_str(&format!("a{level}: &a{level} [{items}]\n"));
    }
    doc
}

/// One request as a backend received it.
#[derive(Debug, Clone, Default)]
pub struct Received {
    pub method: String,
    pub target: String,
    /// Lower-case names; repeated headers keep the last value.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// 0 for the first request on its connection, 1 for the next, …
    pub on_connection: usize,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// What a backend answers.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub delay: Duration,
    /// Close the connection after this answer without saying so (a pooled
    /// connection that dies under the proxy).
    pub then_close: bool,
    /// Send the body one byte per this interval.
    pub trickle: Option<Duration>,
    /// Send `103 Early Hints` before the answer.
    pub early_hints: bool,
    /// Close the connection instead of answering (a pooled connection that
    /// dies while the request is on it).
    pub hang_up: bool,
}

impl Answer {
    pub fn json(status: u16, body: &str) -> Answer {
        Answer {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.as_bytes().to_vec(),
            delay: Duration::ZERO,
            then_close: false,
            trickle: None,
            early_hints: false,
            hang_up: false,
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn after(mut self, delay: Duration) -> Answer {
        self.delay = delay;
        self
    }
}

type Handler = dyn Fn(&Received) -> Answer + Send + Sync;

/// A real HTTP/1.1 backend on an ephemeral loopback port (keep-alive, one thread
/// per connection). It records every request and counts connections.
pub struct Backend {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
}

impl Backend {
    pub fn start(handler: impl Fn(&Received) -> Answer + Send + Sync + 'static) -> Backend {
        Self::start_on(
            TcpListener::bind("127.0.0.1:0").expect("bind backend"),
            handler,
        )
    }

    /// Answers 200 with a JSON echo of what it received.
    pub fn echo() -> Backend {
        Backend::start(|r| {
            let headers: serde_json::Map<String, serde_json::Value> = r
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            let body = serde_json::json!({
                "method": r.method,
                "target": r.target,
                "headers": headers,
                "body": String::from_utf8_lossy(&r.body),
            });
            Answer::json(200, &body.to_string())
        })
    }

    pub fn start_on(
        listener: TcpListener,
        handler: impl Fn(&Received) -> Answer + Send + Sync + 'static,
    ) -> Backend {
        let addr = listener.local_addr().expect("backend addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        {
            let (connections, received, stop) =
                (connections.clone(), received.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    connections.fetch_add(1, Ordering::SeqCst);
                    let (handler, received, stop) =
                        (handler.clone(), received.clone(), stop.clone());
                    std::thread::spawn(move || {
                        serve_connection(stream, &*handler, &received, &stop)
                    });
                }
            });
        }
        Backend {
            addr,
            connections,
            received,
            stop,
        }
    }

    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    pub fn last(&self) -> Received {
        self.requests()
            .pop()
            .expect("the backend received a request")
    }

    /// A new backend with `handler` on the address of a stopped one.
    pub fn restart_on(
        addr: SocketAddr,
        handler: impl Fn(&Received) -> Answer + Send + Sync + 'static,
    ) -> Backend {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match TcpListener::bind(addr) {
                Ok(listener) => return Self::start_on(listener, handler),
                Err(e) if Instant::now() > deadline => panic!("rebind {addr}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Stops accepting, and closes open connections at their next request.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Serves one connection until the client closes it or the backend is stopped
/// (a stopped backend closes its open connections at their next request, as a
/// killed process would).
fn serve_connection(
    stream: TcpStream,
    handler: &Handler,
    received: &Mutex<Vec<Received>>,
    stop: &AtomicBool,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut writer = stream;
    for on_connection in 0.. {
        let Some(mut req) = read_request(&mut reader) else {
            return;
        };
        req.on_connection = on_connection;
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let close = req
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"));
        received.lock().expect("lock").push(req.clone());
        let answer = handler(&req);
        if answer.hang_up {
            return;
        }
        if !answer.delay.is_zero() {
            std::thread::sleep(answer.delay);
        }
        let hints = b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n";
        if answer.early_hints && writer.write_all(hints).is_err() {
            return;
        }
        let mut head = format!(
            "HTTP/1.1 {} X\r\ncontent-length: {}\r\n",
            answer.status,
            answer.body.len()
        );
        for (k, v) in &answer.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        match answer.trickle {
            Some(interval) if req.method != "HEAD" => {
                if writer.write_all(&out).is_err() {
                    return;
                }
                for byte in &answer.body {
                    std::thread::sleep(interval);
                    if writer.write_all(&[*byte]).is_err() {
                        return;
                    }
                }
            }
            _ => {
                if req.method != "HEAD" {
                    out.extend_from_slice(&answer.body);
                }
                if writer.write_all(&out).is_err() {
                    return;
                }
            }
        }
        if close || answer.then_close {
            return;
        }
    }
}

pub fn read_head(reader: &mut impl BufRead) -> Option<(String, HashMap<String, String>)> {
    let mut first = String::new();
    if reader.read_line(&mut first).ok()? == 0 {
        return None;
    }
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Some((first.trim_end().to_string(), headers))
}

pub fn read_body(
    reader: &mut impl BufRead,
    headers: &HashMap<String, String>,
    until_close: bool,
) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.contains("chunked"))
    {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(len) = headers.get("content-length") {
        body.resize(len.parse().ok()?, 0);
        reader.read_exact(&mut body).ok()?;
    } else if until_close {
        reader.read_to_end(&mut body).ok()?;
    }
    Some(body)
}

fn read_request(reader: &mut impl BufRead) -> Option<Received> {
    let (line, headers) = read_head(reader)?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let body = read_body(reader, &headers, false)?;
    Some(Received {
        method,
        target,
        headers,
        body,
        on_connection: 0,
    })
}

/// What a [`RawBackend`] writes for a request head.
type RawAnswer = dyn Fn(&str) -> Vec<u8> + Send + Sync;

/// A backend that writes exactly the bytes its `answer` gives for a request
/// head (framing mistakes and all), and records every head as it arrived,
/// repeated headers included: what the parsing [`Backend`] would tidy away.
pub struct RawBackend {
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl RawBackend {
    pub fn start(answer: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind raw backend");
        let addr = listener.local_addr().expect("raw backend addr");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let answer: Arc<RawAnswer> = Arc::new(answer);
        let seen = heads.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (answer, seen) = (answer.clone(), seen.clone());
                std::thread::spawn(move || serve_raw(stream, &*answer, &seen));
            }
        });
        RawBackend { addr, heads }
    }

    /// Every request head received so far, with its CRLFs.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().expect("lock").clone()
    }
}

/// Answers one connection's requests until the peer closes it; a request's
/// body is read by its (first) content-length, which is all the tests send.
fn serve_raw(stream: TcpStream, answer: &RawAnswer, heads: &Mutex<Vec<String>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let length = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, value)| value.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        heads.lock().expect("lock").push(head.clone());
        if writer.write_all(&answer(&head)).is_err() {
            return;
        }
    }
}

/// A response as the client saw it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `error` code of one of the gateway's own answers, checked for shape.
    pub fn error_code(&self) -> String {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        let v = self.json();
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert_eq!(v["request_id"].as_str(), self.header("x-request-id"), "{v}");
        v["error"].as_str().expect("error code").to_string()
    }
}

/// Sends one request on a new connection (`connection: close`) and reads the answer.
pub fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut raw = format!("{method} {target} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        raw.push_str(&format!("host: {addr}\r\n"));
    }
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    let chunked = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"));
    if !body.is_empty() && !chunked {
        raw.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    raw.push_str("connection: close\r\n\r\n");
    let mut bytes = raw.into_bytes();
    bytes.extend_from_slice(body);
    exchange(addr, &bytes, method == "HEAD").unwrap_or_else(|e| panic!("{method} {target}: {e}"))
}

pub fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Response {
    request(addr, "GET", target, headers, b"")
}

/// Writes raw bytes and parses one response.
pub fn send_raw(addr: SocketAddr, bytes: &[u8]) -> std::io::Result<Response> {
    exchange(addr, bytes, false)
}

/// Writes raw bytes and parses one response; after a HEAD (`head_only`) any
/// bytes up to the close are the "body", which must then be empty.
fn exchange(addr: SocketAddr, bytes: &[u8], head_only: bool) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(bytes)?;
    read_response(&mut BufReader::new(stream), head_only)
}

/// Reads one response from a connection that may carry more (keep-alive,
/// pipelining); with `head_only`, the body is whatever comes until the close.
pub fn read_response(reader: &mut impl BufRead, head_only: bool) -> std::io::Result<Response> {
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed response");
    // Informational answers (103 Early Hints, 100 Continue) precede the real one.
    let (status, headers) = loop {
        let (line, headers) = read_head(reader).ok_or_else(bad)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        if !(100..200).contains(&status) || status == 101 {
            break (status, headers);
        }
    };
    let body = if head_only {
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest)?;
        rest
    } else {
        read_body(reader, &headers, true).ok_or_else(bad)?
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// A running `portcullis` process; killed when dropped.
pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: PathBuf,
    pub config_path: PathBuf,
}

pub const KEY: &str = "test-key-0b6c1f";
pub const SECRET: &str = "gw-secret-7d2e9a";

impl Gateway {
    /// Writes `config` (with `{listen}` and `{admin}` filled in) and starts the
    /// binary on it; returns once `/readyz` says ready.
    pub fn start(config: &str) -> Gateway {
        Self::start_with_env(config, &[])
    }

    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Gateway {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let dir = temp_dir("gw");
        let config_path = dir.join("gateway.yaml");
        let text = config
            .replace("{listen}", &addr.to_string())
            .replace("{admin}", &admin.to_string());
        std::fs::write(&config_path, text).expect("write config");
        let child = Command::new(BIN)
            .arg("-c")
            .arg(&config_path)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(std::fs::File::create(dir.join("stdout.log")).expect("stdout file"))
            .stderr(std::fs::File::create(dir.join("stderr.log")).expect("stderr file"))
            .stdin(Stdio::null())
            .spawn()
            .expect("start portcullis");
        let mut gw = Gateway {
            child,
            addr,
            admin,
            dir,
            config_path,
        };
        gw.wait_ready();
        gw
    }

    /// Replaces the config file (`{listen}` and `{admin}` filled in with this
    /// gateway's addresses), atomically, as an operator's deploy would.
    pub fn rewrite_config(&self, config: &str) {
        let text = config
            .replace("{listen}", &self.addr.to_string())
            .replace("{admin}", &self.admin.to_string());
        let staged = self.dir.join("gateway.yaml.new");
        std::fs::write(&staged, text).expect("write config");
        std::fs::rename(&staged, &self.config_path).expect("replace config");
    }

    /// `POST /reload` on the admin listener.
    pub fn post_reload(&self) -> Response {
        request(self.admin, "POST", "/reload", &[], b"")
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("portcullis exited early ({status}): {}", self.stderr());
            }
            // Ready, and this very process answering (not another test's).
            let ready = send_raw(
                self.admin,
                b"GET /readyz HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
            )
            .is_ok_and(|r| r.status == 200 && r.json()["pid"] == self.child.id());
            if ready {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("portcullis not ready in 20 s: {}", self.stderr());
    }

    pub fn get(&self, target: &str, headers: &[(&str, &str)]) -> Response {
        get(self.addr, target, headers)
    }

    pub fn get_with_key(&self, target: &str) -> Response {
        get(self.addr, target, &[("x-api-key", KEY)])
    }

    pub fn metrics(&self) -> String {
        get(self.admin, "/metrics", &[]).text()
    }

    /// The value of one sample line (`name{labels}`), 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }

    /// [`Gateway::metric`] once it reads `want`, or what it reads after 2 s:
    /// a request is counted in Pingora's logging phase, after its answer was
    /// written, so a client can read the answer before the count moves.
    pub fn metric_eventually(&self, series: &str, want: f64) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let value = self.metric(series);
            if value == want || Instant::now() > deadline {
                return value;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.join("stdout.log")).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// Access-log lines parsed as JSON, once the writer has settled: lines are
    /// written after the answer and in batches, so wait until some are there
    /// and none has come for 200 ms (at most 5 s).
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        let read = || -> Vec<serde_json::Value> {
            self.stdout()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut lines = read();
        let mut stable_since = Instant::now();
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(25));
            let now = read();
            if now.len() != lines.len() {
                lines = now;
                stable_since = Instant::now();
            } else if !lines.is_empty() && stable_since.elapsed() >= Duration::from_millis(200) {
                break;
            }
        }
        lines
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} failed");
    }

    /// Waits for the process to exit; `None` if it is still running after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The usual config head: listener, admin, one consumer, quick shutdown.
pub fn config_head() -> String {
    format!(
        "listen:\n  - addr: {{listen}}\nadmin:\n  addr: {{admin}}\nthreads: 2\nshutdown_grace: 5s\n\
         consumers:\n  - name: web\n    keys: [\"{KEY}\"]\n"
    )
}

/// A whole config: `config_head()`, one upstream `u` over `peers` (with
/// `upstream_extra` lines, indented 4), and one route `r` on `/` to it whose
/// flow-mapping fields are extended by `route_extra` (e.g. "auth: none").
pub fn one_route_config(peers: &[SocketAddr], upstream_extra: &str, route_extra: &str) -> String {
    let peers: Vec<String> = peers.iter().map(|p| format!("\"{p}\"")).collect();
    let route_extra = if route_extra.is_empty() {
        String::new()
    } else {
        format!(", {route_extra}")
    };
    format!(
        "{}upstreams:\n  u:\n    peers: [{}]\n{upstream_extra}routes:\n  - {{ name: r, path: /, upstream: u{route_extra} }}\n",
        config_head(),
        peers.join(", ")
    )
}

/// A real `redis-server` on an ephemeral loopback port, without persistence.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
}

impl Redis {
    pub fn start() -> Redis {
        let mut redis = Redis {
            port: free_port(),
            child: None,
            dir: temp_dir("redis"),
        };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts (again) on the same port and waits until it answers PING.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package `redis-server`) must be installed");
        self.child = Some(child);
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().expect("addr");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pong =
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok_and(|mut s| {
                    let mut buf = [0u8; 7];
                    s.write_all(b"PING\r\n").is_ok()
                        && s.read_exact(&mut buf).is_ok()
                        && &buf == b"+PONG\r\n"
                });
            if pong {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A self-signed certificate for `name` (also valid for 127.0.0.1) and its
/// key, written as PEM into `dir`; returns the two paths.
pub fn self_signed(dir: &std::path::Path, name: &str) -> (PathBuf, PathBuf) {
    use openssl::asn1::{Asn1Integer, Asn1Time};
    use openssl::bn::BigNum;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::x509::extension::SubjectAlternativeName;
    use openssl::x509::{X509NameBuilder, X509};

    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("curve");
    let key = PKey::from_ec_key(EcKey::generate(&group).expect("ec key")).expect("pkey");
    let mut subject = X509NameBuilder::new().expect("name");
    subject.append_entry_by_text("CN", name).expect("cn");
    let subject = subject.build();
    let mut cert = X509::builder().expect("builder");
    cert.set_version(2).expect("v3");
    let serial: Asn1Integer = BigNum::from_u32(free_port().into())
        .and_then(|n| n.to_asn1_integer())
        .expect("serial");
    cert.set_serial_number(&serial).expect("serial");
    cert.set_subject_name(&subject).expect("subject");
    cert.set_issuer_name(&subject).expect("issuer");
    cert.set_pubkey(&key).expect("pubkey");
    cert.set_not_before(&Asn1Time::days_from_now(0).expect("time"))
        .expect("nb");
    cert.set_not_after(&Asn1Time::days_from_now(2).expect("time"))
        .expect("na");
    let san = SubjectAlternativeName::new()
        .dns(name)
        .ip("127.0.0.1")
        .build(&cert.x509v3_context(None, None))
        .expect("san");
    cert.append_extension(san).expect("extension");
    cert.sign(&key, MessageDigest::sha256()).expect("sign");
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_path, cert.build().to_pem().expect("pem")).expect("write cert");
    std::fs::write(&key_path, key.private_key_to_pem_pkcs8().expect("pem")).expect("write key");
    (cert_path, key_path)
}

/// The common name of the certificate a TLS listener presents now.
pub fn served_certificate_name(addr: SocketAddr) -> String {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let mut connector = SslConnector::builder(SslMethod::tls()).expect("connector");
    connector.set_verify(SslVerifyMode::NONE);
    let stream = TcpStream::connect(addr).expect("connect");
    let tls = connector
        .build()
        .connect("localhost", stream)
        .expect("TLS handshake");
    let cert = tls.ssl().peer_certificate().expect("a certificate");
    let name = cert
        .subject_name()
        .entries_by_nid(openssl::nid::Nid::COMMONNAME)
        .next()
        .map(|e| String::from_utf8_lossy(e.data().as_slice()).into_owned())
        .expect("a common name");
    name
}

/// A WebSocket echo server (RFC 6455, text and binary frames under 126 bytes):
/// answers the upgrade, then sends every frame back. Records the upgrade requests.
pub struct WsEcho {
    pub addr: SocketAddr,
    pub upgrades: Arc<Mutex<Vec<Received>>>,
}

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `sec-websocket-accept` for a `sec-websocket-key`.
pub fn websocket_accept(key: &str) -> String {
    let digest = openssl::sha::sha1(format!("{key}{WS_GUID}").as_bytes());
    openssl::base64::encode_block(&digest)
}

impl WsEcho {
    pub fn start() -> WsEcho {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind ws");
        let addr = listener.local_addr().expect("addr");
        let upgrades = Arc::new(Mutex::new(Vec::new()));
        let seen = upgrades.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                    let mut writer = stream;
                    let Some(req) = read_request(&mut reader) else {
                        return;
                    };
                    let key = req
                        .header("sec-websocket-key")
                        .unwrap_or_default()
                        .to_string();
                    seen.lock().expect("lock").push(req);
                    let head = format!(
                        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: {}\r\n\r\n",
                        websocket_accept(&key)
                    );
                    if writer.write_all(head.as_bytes()).is_err() {
                        return;
                    }
                    while let Some((opcode, payload)) = read_frame(&mut reader) {
                        if write_frame(&mut writer, opcode, &payload, None).is_err() || opcode == 8
                        {
                            return;
                        }
                    }
                });
            }
        });
        WsEcho { addr, upgrades }
    }
}

/// Reads one WebSocket frame (unmasking it): (opcode, payload).
pub fn read_frame(reader: &mut impl Read) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    reader.read_exact(&mut head).ok()?;
    let len = usize::from(head[1] & 0x7f);
    if len >= 126 {
        return None; // not needed by the tests
    }
    let mut mask = [0u8; 4];
    if head[1] & 0x80 != 0 {
        reader.read_exact(&mut mask).ok()?;
    }
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).ok()?;
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
    Some((head[0] & 0x0f, payload))
}

/// Writes one final WebSocket frame; clients mask (`mask`), servers do not.
pub fn write_frame(
    writer: &mut impl Write,
    opcode: u8,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) -> std::io::Result<()> {
    assert!(payload.len() < 126, "short frames only");
    let mut frame = vec![0x80 | opcode, payload.len() as u8];
    match mask {
        Some(m) => {
            frame[1] |= 0x80;
            frame.extend_from_slice(&m);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => frame.extend_from_slice(payload),
    }
    writer.write_all(&frame)
}

/// `promtool check metrics` passes on `text`.
pub fn promtool_accepts(text: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`) must be installed");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = promtool.wait_with_output().expect("promtool ran");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `portcullis demo` on free ports, ready (`/readyz` answers 200) and done
/// printing its banner; stopped when dropped. Its stdout and stderr are in `dir`.
pub struct Demo {
    child: Child,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// What it printed up to the banner's last line.
    pub printed: String,
}

impl Demo {
    pub fn start(dir: &std::path::Path) -> Demo {
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let child = Command::new(BIN)
            .args(["demo", "--listen", &listen.to_string()])
            .args(["--admin", &admin.to_string()])
            .stdout(std::fs::File::create(dir.join("stdout.log")).expect("log file"))
            .stderr(std::fs::File::create(dir.join("stderr.log")).expect("log file"))
            .spawn()
            .expect("start the demo");
        let mut demo = Demo {
            child,
            listen,
            admin,
            printed: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let probe = b"GET /readyz HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";
        loop {
            let out = std::fs::read_to_string(dir.join("stdout.log")).unwrap_or_default();
            let ready = send_raw(admin, probe).is_ok_and(|r| r.status == 200);
            if ready && out.contains("Ctrl-C") {
                demo.printed = out;
                return demo;
            }
            assert!(Instant::now() < deadline, "demo not ready: {out}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The rest of the first banner line that starts with `label`, trimmed.
    pub fn banner(&self, label: &str) -> Option<&str> {
        self.printed
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(str::trim)
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
