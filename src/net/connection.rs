//! Client connections, before Pingora's HTTP layer reads them: the connection
//! limit, the header-read and idle timeouts, and the head check of [`crate::core::head`]
//! for every HTTP/1 request, refused with the gateway's own JSON 400 or 431
//! (SPEC §3 `limits`, §4), and CONNECT, refused with its JSON 405.
//!
//! Pingora reads a head with a fresh 60 s timeout per read, allows 1 MiB and
//! answers a malformed one with a bare 400 that no hook sees. So this layer reads
//! the head itself, judges it, and hands the bytes to Pingora's session as already
//! read (`set_pipelined_prefix`): no second read, no copy. HTTP/2 connections (TLS
//! with ALPN h2) go straight to Pingora: h2 framing has no length ambiguity, and
//! its header list is bounded by the proxy's `h2_options`.

use crate::core::config::LogFormat;
use crate::core::forward;
use crate::core::head::{self, Verdict};
use crate::core::reply::Refusal;
use crate::net::client_stream::ClientStream;
use crate::proxy::Portcullis;
use crate::tables::{ClientLimits, Gateway};
use crate::telemetry::access_log::{self, Entry};
use crate::telemetry::metrics;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::BytesMut;
use http::Method;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

/// The first read buffer of a request head; Pingora's own initial size.
const HEAD_BUFFER: usize = 4096;
/// How long a refusal may take to write, and how long the unread rest of the
/// request is drained after it so the close does not reset the answer away.
const REFUSAL_WRITE: Duration = Duration::from_secs(5);
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
const REFUSAL_LINGER_BYTES: usize = 64 * 1024;

/// The gateway's listening app: guards each client connection, then lets the
/// Pingora proxy serve its requests.
pub struct ClientConnections {
    pub proxy: Arc<HttpProxy<Portcullis>>,
    pub tables: Arc<ArcSwap<Gateway>>,
    pub log_format: LogFormat,
    open: Arc<AtomicUsize>,
}

impl ClientConnections {
    pub fn new(
        proxy: HttpProxy<Portcullis>,
        tables: Arc<ArcSwap<Gateway>>,
        log_format: LogFormat,
    ) -> Self {
        ClientConnections {
            proxy: Arc::new(proxy),
            tables,
            log_format,
            open: Arc::new(AtomicUsize::new(0)),
        }
    }
}

/// One open client connection, counted against `max_connections` while it lives.
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn enter(open: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        if open.fetch_add(1, Ordering::AcqRel) >= max {
            open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        metrics::families().connections_open.inc();
        Some(OpenConnection(open.clone()))
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        metrics::families().connections_open.dec();
    }
}

/// What reading a request head came to.
enum Head {
    /// A complete head that passed [`head::inspect`], and whatever followed it;
    /// the head's length.
    Ready(BytesMut, usize),
    /// The client closed, went quiet past a timeout, or the server is stopping.
    Gone,
    /// Answer this refusal and close; `why` is for the log.
    Refused {
        refusal: Refusal,
        why: &'static str,
        read: BytesMut,
    },
}

#[async_trait]
impl ServerApp for ClientConnections {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let limits = self.tables.load().client_limits;
        let Some(open) = OpenConnection::enter(&self.open, limits.max_connections) else {
            warn_connection_refused(limits.max_connections);
            return None; // dropping the stream closes it
        };
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return ServerApp::process_new(&self.proxy, stream, shutdown).await;
        }
        let stream: Stream = Box::new(ClientStream::new(stream));
        // The rest of the connection's life goes to a task of its own. Pingora's
        // accept task is sized for the TLS handshake it ran (2.5 KiB) and would
        // otherwise hold that for as long as the client stays, idle or not:
        // 25 MiB for 10,000 idle clients. (With several worker threads this once
        // made Pingora's upstream pool lose a race, cloudflare/pingora#998: fixed
        // by vendor/patches/0001.)
        let connections = self.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _open = open;
            connections.serve_http1(stream, &shutdown).await;
        });
        None
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}

impl ClientConnections {
    /// Serves one HTTP/1 connection's requests, one head at a time. Requests
    /// a client pipelines (sends before reading the answers) are served in
    /// order: Pingora is handed one request's bytes at a time, and what
    /// follows waits here to be judged as the next head.
    async fn serve_http1(&self, mut stream: Stream, shutdown: &ShutdownWatch) {
        let mut settings: Option<HttpPersistentSettings> = None;
        let mut first = true;
        let mut pipelined = BytesMut::new();
        loop {
            let limits = self.tables.load().client_limits;
            let (mut read, head_len) =
                match read_head(&mut stream, &limits, first, shutdown, pipelined).await {
                    Head::Ready(read, head_len) => (read, head_len),
                    Head::Gone => return,
                    // On the heap: its write and linger timers would
                    // otherwise size every connection's task, idle or not.
                    Head::Refused { refusal, why, read } => {
                        return Box::pin(self.refuse(stream, refusal, why, &read)).await;
                    }
                };
            first = false;
            pipelined = match head::request_end(&read, head_len) {
                Some(end) => read.split_off(end),
                None => BytesMut::new(),
            };
            let request = self.serve_request(stream, settings.take(), &limits, read, shutdown);
            let Some(reused) = request.await else {
                return;
            };
            (stream, settings) = reused.consume();
        }
    }

    /// Hands one request, already read (`read`), to the Pingora proxy. Not
    /// async: Pingora's session (~1 KiB, its `HttpSession` inline) is made here
    /// and moved into the proxy's boxed future, so it takes no room in the
    /// connection's task, which lives on while the connection idles.
    fn serve_request<'a>(
        &'a self,
        stream: Stream,
        settings: Option<HttpPersistentSettings>,
        limits: &ClientLimits,
        read: BytesMut,
        shutdown: &'a ShutdownWatch,
    ) -> Pin<Box<dyn Future<Output = Option<ReusedHttpStream>> + Send + 'a>> {
        let mut session = ServerSession::new_http1(stream);
        if let Some(settings) = settings {
            settings.apply_to_session(&mut session);
        }
        // Idle time between requests is ours to enforce (`read_head`); this
        // only tells Pingora the connection may be kept alive.
        let keepalive = (!*shutdown.borrow()).then(|| limits.idle_timeout.as_secs().max(1));
        session.set_keepalive(keepalive);
        // Each read of the request body; Pingora's own is 60 s.
        session.set_read_timeout(Some(limits.body_read_timeout));
        if let ServerSession::H1(h1) = &mut session {
            h1.set_pipelined_prefix(read);
        }
        self.proxy.process_new_http(session, shutdown)
    }

    /// Answers a refused head with the gateway's JSON, logs and counts it as a
    /// request that matched no route, and closes the connection.
    async fn refuse(&self, mut stream: Stream, refusal: Refusal, why: &str, read: &[u8]) {
        let started = Instant::now();
        let gw = self.tables.load();
        let request_id = forward::new_request_id();
        let mut reply = refusal.reply(&request_id, gw.auth_header.as_str());
        reply.close = true; // the head cannot be trusted, nor what follows it
        let answer = reply.to_http1();
        let status = reply.status;
        let client = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        log::debug!("refused a request head from {client:?}: {why}");

        let written = tokio::time::timeout(REFUSAL_WRITE, async {
            stream.write_all(&answer).await?;
            stream.flush().await?;
            stream.shutdown().await
        })
        .await;
        if matches!(written, Ok(Ok(()))) {
            linger(&mut stream).await;
        }

        let (method, path) = request_line(read);
        gw.unrouted.count_request(
            &Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET),
            status,
        );
        gw.unrouted
            .duration
            .observe(started.elapsed().as_secs_f64());
        let client = client.map(|c| c.to_string());
        let line = Entry {
            request_id: &request_id,
            client: client.as_deref(),
            method: &method,
            path: &path,
            route: &gw.unrouted.route,
            consumer: None,
            status,
            upstream: None,
            peer: None,
            upstream_status: None,
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            upstream_ms: None,
            bytes_in: 0,
            bytes_out: reply.body.len() as u64,
            error: Some(refusal.code()),
            trace_id: None,
            cache: None,
        }
        .render(self.log_format);
        access_log::write(line);
    }
}

/// Reads one request head, starting with `pipelined`: bytes the client sent
/// after the previous request. A new connection has `header_read_timeout` from
/// its accept for the whole head; a kept-alive one may first idle
/// `idle_timeout`, and then has `header_read_timeout` from its first byte. Slow
/// drips gain nothing: the deadline is for the whole head, not per read.
async fn read_head(
    stream: &mut Stream,
    limits: &ClientLimits,
    first: bool,
    shutdown: &ShutdownWatch,
    pipelined: BytesMut,
) -> Head {
    // No buffer while waiting: an idle keep-alive connection holds none (10,000
    // idle clients would otherwise pin 40 MiB). The wait ends with the first
    // bytes, read through a per-thread scratch buffer: usually the whole head.
    let mut read = pipelined;
    // A pipelined head may be whole already: judged before any wait.
    if !read.is_empty() {
        read = match judge(read, limits) {
            Ok(head) => return head,
            Err(incomplete) => incomplete,
        };
    }
    let mut shutdown = shutdown.clone();
    let mut deadline = Instant::now()
        + if first || !read.is_empty() {
            limits.header_read_timeout
        } else {
            limits.idle_timeout
        };
    loop {
        let idle = read.is_empty();
        // Pingora's coarse timer (10 ms ticks on its own thread), not tokio's:
        // registering a tokio timer earlier than the driver's next wake-up
        // unparks the driver through its eventfd, one more syscall a request.
        let left = deadline.saturating_duration_since(Instant::now());
        let got = pingora_timeout::timeout(left, async {
            if idle && first {
                // A new connection's first request is served even while the
                // server stops: it was accepted before the listener closed, and
                // its bytes may simply not be here yet.
                first_bytes(stream, &mut read).await.ok()
            } else if idle {
                // Between requests a stopping server closes the connection.
                tokio::select! {
                    biased;
                    n = first_bytes(stream, &mut read) => n.ok(),
                    _ = shutdown.wait_for(|stopping| *stopping) => None,
                }
            } else {
                if read.capacity() - read.len() < HEAD_BUFFER / 4 {
                    read.reserve(HEAD_BUFFER);
                }
                stream.read_buf(&mut read).await.ok()
            }
        })
        .await;
        match got {
            Ok(Some(n)) if n > 0 => {}
            _ => return Head::Gone,
        }
        if idle && !first {
            deadline = Instant::now() + limits.header_read_timeout;
        }
        read = match judge(read, limits) {
            Ok(head) => return head,
            Err(incomplete) => incomplete,
        };
    }
}

/// What the bytes read so far make of a head; `Err` gives them back while the
/// head is incomplete.
fn judge(read: BytesMut, limits: &ClientLimits) -> Result<Head, BytesMut> {
    match head::inspect(&read, limits.max_header_bytes) {
        Verdict::Incomplete => Err(read),
        Verdict::Complete(head_len) => Ok(Head::Ready(read, head_len)),
        Verdict::TooLarge => Ok(Head::Refused {
            refusal: Refusal::HeadersTooLarge,
            why: "request head too large",
            read,
        }),
        Verdict::Malformed(why) => Ok(Head::Refused {
            refusal: Refusal::BadRequest,
            why,
            read,
        }),
        // The gateway serves no resource at an authority, so it allows no
        // method there: an empty `allow` (RFC 9110 §10.2.1). Closed after,
        // as what follows a CONNECT would be tunnel bytes.
        Verdict::Connect => Ok(Head::Refused {
            refusal: Refusal::MethodNotAllowed { allow: Vec::new() },
            why: "CONNECT: the gateway opens no tunnels",
            read,
        }),
    }
}

/// Waits for a connection's next bytes and appends them to `read` (empty), with
/// room for the rest of a head. The bytes land in a per-thread scratch buffer
/// borrowed only inside one poll, so a waiting connection holds no buffer, yet a
/// head that arrived whole is read by one syscall (a 1-byte wait would take two).
async fn first_bytes(stream: &mut Stream, read: &mut BytesMut) -> std::io::Result<usize> {
    thread_local! {
        static SCRATCH: RefCell<[u8; HEAD_BUFFER]> = const { RefCell::new([0; HEAD_BUFFER]) };
    }
    std::future::poll_fn(|cx| {
        SCRATCH.with_borrow_mut(|scratch| {
            let mut buf = ReadBuf::new(scratch);
            ready!(Pin::new(&mut *stream).poll_read(cx, &mut buf))?;
            let got = buf.filled();
            if !got.is_empty() {
                read.reserve(got.len().max(HEAD_BUFFER));
                read.extend_from_slice(got);
            }
            Poll::Ready(Ok(got.len()))
        })
    })
    .await
}

/// Reads and drops what the client still sends, for a moment, so closing with
/// unread bytes does not reset the connection before the client has the answer.
async fn linger(stream: &mut Stream) {
    // On the heap: an array here would sit in every connection's future, idle
    // or not (4 KiB each, 40 MiB for 10,000 idle clients).
    let mut sink = vec![0u8; 4096];
    let mut drained = 0;
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        while drained < REFUSAL_LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

/// The method and path (without query) of a refused head, for the access log,
/// as far as they can be read; bounded so a huge target does not flood the log.
fn request_line(read: &[u8]) -> (String, String) {
    const MAX_LOGGED: usize = 256;
    let line = read.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    let text = |bytes: &[u8]| {
        let bytes = &bytes[..bytes.len().min(MAX_LOGGED)];
        String::from_utf8_lossy(bytes).escape_default().to_string()
    };
    (text(&method[..method.len().min(16)]), text(path))
}

/// Logs connections refused over `max_connections`, at most once a second.
fn warn_connection_refused(max: usize) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    if crate::telemetry::process_log::once_a_second(&LAST) {
        log::warn!("{max} client connections open (limits.max_connections): closing new ones");
    }
}
