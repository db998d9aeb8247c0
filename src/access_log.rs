//! The access log of SPEC §6: one line per request on stdout.
//!
//! Lines go through a bounded channel to one writer thread that batches them into
//! few `write` calls; a request never waits on stdout unless the channel is full,
//! and then it waits rather than drop a line.

use crate::config::LogFormat;
use serde::Serialize;
use std::io::Write;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::OnceLock;

/// One request, as logged. Fields that never reached an upstream are `None`.
#[derive(Debug, Clone, Default)]
pub struct Entry<'a> {
    pub request_id: &'a str,
    pub client: Option<&'a str>,
    pub method: &'a str,
    /// Without the query string, which may hold secrets.
    pub path: &'a str,
    pub route: &'a str,
    pub consumer: Option<&'a str>,
    pub status: u16,
    pub upstream: Option<&'a str>,
    pub peer: Option<&'a str>,
    pub upstream_status: Option<u16>,
    pub duration_ms: f64,
    pub upstream_ms: Option<f64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub error: Option<&'a str>,
}

impl Entry<'_> {
    /// The line, without its newline.
    pub fn render(&self, format: LogFormat) -> String {
        let ts = timestamp(chrono::Utc::now());
        match format {
            LogFormat::Json => {
                let line = JsonLine {
                    ts: &ts,
                    request_id: self.request_id,
                    client: self.client,
                    method: self.method,
                    path: self.path,
                    route: self.route,
                    consumer: self.consumer,
                    status: self.status,
                    upstream: self.upstream,
                    peer: self.peer,
                    upstream_status: self.upstream_status,
                    duration_ms: round3(self.duration_ms),
                    upstream_ms: self.upstream_ms.map(round3),
                    bytes_in: self.bytes_in,
                    bytes_out: self.bytes_out,
                    error: self.error,
                };
                // Serialising a struct of borrowed fields: no map, no key strings,
                // into a buffer that holds a typical line without growing.
                let mut out = Vec::with_capacity(LINE_CAPACITY);
                match serde_json::to_writer(&mut out, &line) {
                    Ok(()) => String::from_utf8(out).unwrap_or_default(),
                    Err(_) => String::new(),
                }
            }
            LogFormat::Text => format!(
                "{ts} {} {} {} {:?} {} route={} consumer={} upstream={} peer={} duration_ms={:.3} bytes_in={} bytes_out={}{}",
                self.request_id,
                self.client.unwrap_or("-"),
                self.method,
                self.path,
                self.status,
                self.route,
                self.consumer.unwrap_or("-"),
                self.upstream.unwrap_or("-"),
                self.peer.unwrap_or("-"),
                self.duration_ms,
                self.bytes_in,
                self.bytes_out,
                self.error.map(|e| format!(" error={e}")).unwrap_or_default(),
            ),
        }
    }
}

/// The JSON line of SPEC §6, fields in its order.
#[derive(Serialize)]
struct JsonLine<'a> {
    ts: &'a str,
    request_id: &'a str,
    client: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    route: &'a str,
    consumer: Option<&'a str>,
    status: u16,
    upstream: Option<&'a str>,
    peer: Option<&'a str>,
    upstream_status: Option<u16>,
    duration_ms: f64,
    upstream_ms: Option<f64>,
    bytes_in: u64,
    bytes_out: u64,
    error: Option<&'a str>,
}

/// RFC 3339 in UTC with milliseconds, as `to_rfc3339_opts(Millis, true)`
/// writes it; the date and time of day are formatted once a second per thread.
fn timestamp(now: chrono::DateTime<chrono::Utc>) -> String {
    thread_local! {
        static SECOND: std::cell::RefCell<(i64, String)> = const {
            std::cell::RefCell::new((i64::MIN, String::new()))
        };
    }
    // A leap second reports 1000+ ms; RFC 3339 has no 60.xxx here either way.
    let millis = now.timestamp_subsec_millis().min(999);
    SECOND.with_borrow_mut(|(second, prefix)| {
        if *second != now.timestamp() {
            *second = now.timestamp();
            *prefix = now.format("%Y-%m-%dT%H:%M:%S").to_string();
        }
        let mut ts = String::with_capacity(prefix.len() + 5);
        ts.push_str(prefix);
        ts.push('.');
        for digit in [millis / 100, millis / 10 % 10, millis % 10] {
            ts.push(char::from(b'0' + digit as u8));
        }
        ts.push('Z');
        ts
    })
}

fn round3(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

/// Bytes reserved for one JSON line: a typical line fits without regrowing.
const LINE_CAPACITY: usize = 512;

/// How long the writer lets lines gather between writes.
const BATCH_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

enum Message {
    Line(String),
    /// Answered once every line queued before it is written out.
    Flush(SyncSender<()>),
}

fn writer() -> &'static SyncSender<Message> {
    static TX: OnceLock<SyncSender<Message>> = OnceLock::new();
    TX.get_or_init(|| {
        let (tx, rx) = sync_channel::<Message>(16 * 1024);
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let stdout = std::io::stdout();
                let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
                let mut flushed = Vec::new();
                while let Ok(first) = rx.recv() {
                    for msg in
                        std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok()))
                    {
                        match msg {
                            Message::Line(line) => {
                                let _ = out.write_all(line.as_bytes());
                                let _ = out.write_all(b"\n");
                            }
                            Message::Flush(done) => flushed.push(done),
                        }
                    }
                    let _ = out.flush();
                    let asked_to_flush = !flushed.is_empty();
                    for done in flushed.drain(..) {
                        let _ = done.send(());
                    }
                    // Gather the next lines for a moment instead of waking for
                    // each: a parked writer costs every request a futex wake-up
                    // and two task switches (seen in `perf` under load).
                    if !asked_to_flush {
                        std::thread::sleep(BATCH_PAUSE);
                    }
                }
            });
        if let Err(e) = spawned {
            log::error!("cannot start the access-log writer: {e}");
        }
        tx
    })
}

/// Queues one line for stdout.
pub fn write(line: String) {
    if writer().send(Message::Line(line)).is_err() {
        log::error!("the access-log writer has stopped; a line was lost");
    }
}

/// Waits (up to a second) until every queued line is on stdout; before exit.
pub fn flush() {
    let (done_tx, done_rx) = sync_channel(1);
    if writer().send(Message::Flush(done_tx)).is_ok() {
        let _ = done_rx.recv_timeout(std::time::Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn timestamps_match_chrono_rfc3339_with_millis() {
        use chrono::{TimeZone, Utc};
        let base = Utc
            .with_ymd_and_hms(2026, 11, 23, 23, 59, 59)
            .single()
            .expect("time");
        for ms in [0, 7, 45, 999, 1000, 1001, 2500, 86_400_123] {
            let t = base + chrono::Duration::milliseconds(ms);
            let expected = t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            assert_eq!(timestamp(t), expected, "{ms} ms after");
            assert_eq!(timestamp(t), expected, "{ms} ms after, from the cache");
        }
    }

    #[test]
    fn json_line_has_every_field_and_nulls_where_no_upstream() {
        let e = Entry {
            request_id: "r1",
            client: Some("127.0.0.1"),
            method: "GET",
            path: "/x",
            route: "none",
            status: 404,
            duration_ms: 1.23456,
            error: Some("no_route"),
            ..Default::default()
        };
        let v: Value = serde_json::from_str(&e.render(LogFormat::Json)).expect("json");
        for field in [
            "ts",
            "request_id",
            "client",
            "method",
            "path",
            "route",
            "consumer",
            "status",
            "upstream",
            "peer",
            "upstream_status",
            "duration_ms",
            "upstream_ms",
            "bytes_in",
            "bytes_out",
            "error",
        ] {
            assert!(v.get(field).is_some(), "{field} missing");
        }
        assert_eq!(v["upstream_status"], Value::Null);
        assert_eq!(v["duration_ms"], 1.235);
        assert_eq!(v["status"], 404);
        assert!(v["ts"].as_str().is_some_and(|t| t.ends_with('Z')));
    }
}
