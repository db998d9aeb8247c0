//! The access log of SPEC §6: one line per request on stdout.
//!
//! Lines go through a bounded channel to one writer thread that batches them into
//! few `write` calls; a request never waits on stdout unless the channel is full,
//! and then it waits rather than drop a line.

use crate::core::config::LogFormat;
use std::fmt::Write as _;
use std::io::Write;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

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
    /// The W3C trace id (32 hex digits), joining this line to the backends' spans.
    pub trace_id: Option<&'a str>,
    /// What the response cache did (SPEC §8.2): hit, miss, stale, bypass;
    /// `None` on routes without a cache.
    pub cache: Option<&'a str>,
}

impl Entry<'_> {
    /// The line, without its newline.
    pub fn render(&self, format: LogFormat) -> String {
        let now = std::time::SystemTime::now();
        match format {
            LogFormat::Json => {
                let mut out = String::with_capacity(LINE_CAPACITY);
                out.push_str("{\"ts\":\"");
                push_timestamp(&mut out, now);
                out.push('"');
                self.json_fields(&mut out);
                out
            }
            LogFormat::Text => format!(
                "{ts} {} {} {} {:?} {} route={} consumer={} upstream={} peer={} duration_ms={:.3} bytes_in={} bytes_out={}{}{}",
                self.request_id,
                self.client.unwrap_or("-"),
                self.method,
                self.path,
                self.status,
                self.route,
                text_word(self.consumer.unwrap_or("-")),
                self.upstream.unwrap_or("-"),
                self.peer.unwrap_or("-"),
                self.duration_ms,
                self.bytes_in,
                self.bytes_out,
                self.error.map(|e| format!(" error={e}")).unwrap_or_default(),
                self.cache.map(|c| format!(" cache={c}")).unwrap_or_default(),
                ts = timestamp(now),
            ),
        }
    }

    /// The JSON line with `ts` as given, for the tests.
    #[cfg(test)]
    fn json_line(&self, ts: &str) -> String {
        let mut out = String::with_capacity(LINE_CAPACITY);
        push_str(&mut out, "{\"ts\":", Some(ts));
        self.json_fields(&mut out);
        out
    }

    /// The JSON line of SPEC §6 after `ts`, fields in its order. Written
    /// directly, not through serde: the keys are constants and most values
    /// need no escaping, and serde's per-field work was half of what telemetry
    /// cost a request (benches/instructions.sh, benches/telemetry_cost.sh). The
    /// tests check it against serde_json field by field, awkward strings
    /// included. (`ts` never needs escaping: `render` writes it as it is.)
    fn json_fields(&self, out: &mut String) {
        push_str(out, ",\"request_id\":", Some(self.request_id));
        push_str(out, ",\"client\":", self.client);
        push_str(out, ",\"method\":", Some(self.method));
        push_str(out, ",\"path\":", Some(self.path));
        push_str(out, ",\"route\":", Some(self.route));
        push_str(out, ",\"consumer\":", self.consumer);
        push_number(out, ",\"status\":", Some(self.status));
        push_str(out, ",\"upstream\":", self.upstream);
        push_str(out, ",\"peer\":", self.peer);
        push_number(out, ",\"upstream_status\":", self.upstream_status);
        push_ms(out, ",\"duration_ms\":", Some(self.duration_ms));
        push_ms(out, ",\"upstream_ms\":", self.upstream_ms);
        push_number(out, ",\"bytes_in\":", Some(self.bytes_in));
        push_number(out, ",\"bytes_out\":", Some(self.bytes_out));
        push_str(out, ",\"error\":", self.error);
        push_str(out, ",\"trace_id\":", self.trace_id);
        push_str(out, ",\"cache\":", self.cache);
        out.push('}');
    }
}

/// `key` (its quotes and colon included), then a JSON string (RFC 8259 §7)
/// or `null`.
fn push_str(out: &mut String, key: &str, value: Option<&str>) {
    out.push_str(key);
    let Some(value) = value else {
        out.push_str("null");
        return;
    };
    out.push('"');
    // Most values need no escape: one pass the compiler can vectorise.
    let needs_escape = |b: u8| b < 0x20 || b == b'"' || b == b'\\';
    if !value.bytes().fold(false, |any, b| any | needs_escape(b)) {
        out.push_str(value);
        out.push('"');
        return;
    }
    let mut plain_from = 0;
    for (i, byte) in value.bytes().enumerate() {
        let escaped = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        // Every escaped byte is ASCII, so these are character boundaries.
        out.push_str(&value[plain_from..i]);
        if escaped.is_empty() {
            let _ = write!(out, "\\u{byte:04x}");
        } else {
            out.push_str(escaped);
        }
        plain_from = i + 1;
    }
    out.push_str(&value[plain_from..]);
    out.push('"');
}

/// `key`, then milliseconds to the microsecond, always with three decimals
/// (a float to any reader; a log store may type a field by the first value it
/// sees), or `null`.
fn push_ms(out: &mut String, key: &str, ms: Option<f64>) {
    out.push_str(key);
    match ms.filter(|ms| ms.is_finite()) {
        Some(ms) => {
            // Durations are never negative; `as` saturates what is out of range.
            let micros = (ms.max(0.0) * 1000.0).round() as u64;
            push_u64(out, micros / 1000);
            out.push('.');
            push_three_digits(out, micros % 1000);
        }
        None => out.push_str("null"),
    }
}

/// Decimal digits without `fmt`'s machinery (a third of a line's cost).
fn push_u64(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &digit in &digits[start..] {
        out.push(char::from(digit));
    }
}

/// `n` (below 1000) as three digits, zero-padded: the fraction of a second
/// or of a millisecond.
fn push_three_digits(out: &mut String, n: u64) {
    for digit in [n / 100 % 10, n / 10 % 10, n % 10] {
        out.push(char::from(b'0' + digit as u8));
    }
}

/// `key`, then a JSON integer or `null`.
fn push_number(out: &mut String, key: &str, value: Option<impl Into<u64>>) {
    out.push_str(key);
    match value {
        Some(n) => push_u64(out, n.into()),
        None => out.push_str("null"),
    }
}

/// RFC 3339 in UTC with milliseconds, as `to_rfc3339_opts(Millis, true)`
/// writes it.
fn timestamp(now: SystemTime) -> String {
    let mut ts = String::with_capacity(24);
    push_timestamp(&mut ts, now);
    ts
}

/// [`timestamp`], appended to `out`. The date and time of day are formatted
/// once a second per thread; within it only the milliseconds are, from the
/// clock's own seconds and nanoseconds (chrono's calendar arithmetic for each
/// line cost more than the rest of the timestamp).
fn push_timestamp(out: &mut String, now: SystemTime) {
    thread_local! {
        static SECOND: std::cell::RefCell<(i64, String)> = const {
            std::cell::RefCell::new((i64::MIN, String::new()))
        };
    }
    let since_epoch = now.duration_since(UNIX_EPOCH).ok();
    let Some((second, millis)) =
        since_epoch.and_then(|d| Some((i64::try_from(d.as_secs()).ok()?, d.subsec_millis())))
    else {
        // A clock before 1970: no cache, chrono all the way.
        let t = chrono::DateTime::<chrono::Utc>::from(now);
        out.push_str(&t.format("%Y-%m-%dT%H:%M:%S").to_string());
        out.push('.');
        push_three_digits(out, u64::from(t.timestamp_subsec_millis().min(999)));
        out.push('Z');
        return;
    };
    SECOND.with_borrow_mut(|(cached, prefix)| {
        if *cached != second {
            *cached = second;
            *prefix = chrono::DateTime::from_timestamp(second, 0)
                .map(|t| t.format("%Y-%m-%dT%H:%M:%S").to_string())
                .unwrap_or_default();
        }
        out.push_str(prefix);
    });
    out.push('.');
    push_three_digits(out, u64::from(millis));
    out.push('Z');
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

/// A value for the text line as one word: as it is when it is one, quoted
/// and escaped otherwise. A bearer token's `sub` is written by the identity
/// provider, not by the config: a space or newline must not forge fields.
fn text_word(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic() && b != b'"') {
        std::borrow::Cow::Borrowed(value)
    } else {
        std::borrow::Cow::Owned(format!("{value:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// The reference: the line as serde_json writes it.
    #[derive(serde::Serialize)]
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
        trace_id: Option<&'a str>,
        cache: Option<&'a str>,
    }

    fn round3(ms: f64) -> f64 {
        (ms * 1000.0).round() / 1000.0
    }

    fn serde_line(e: &Entry, ts: &str) -> Value {
        serde_json::to_value(JsonLine {
            ts,
            request_id: e.request_id,
            client: e.client,
            method: e.method,
            path: e.path,
            route: e.route,
            consumer: e.consumer,
            status: e.status,
            upstream: e.upstream,
            peer: e.peer,
            upstream_status: e.upstream_status,
            duration_ms: round3(e.duration_ms),
            upstream_ms: e.upstream_ms.map(round3),
            bytes_in: e.bytes_in,
            bytes_out: e.bytes_out,
            error: e.error,
            trace_id: e.trace_id,
            cache: e.cache,
        })
        .expect("serde")
    }

    #[test]
    fn json_lines_equal_serde_json_for_awkward_values() {
        let every_ascii: String = (0u8..=127).map(char::from).collect();
        let awkward = [
            "",
            "plain",
            "quote \" and backslash \\ and both \\\"",
            "line\nbreak\rtab\tnul\0bell\u{7}del\u{7f}",
            "é, 😀, \u{2028} and \u{feff}",
            every_ascii.as_str(),
        ];
        for text in awkward {
            let e = Entry {
                request_id: text,
                client: Some(text),
                method: text,
                path: text,
                route: text,
                consumer: Some(text),
                status: 502,
                upstream: Some(text),
                peer: Some(text),
                upstream_status: Some(503),
                duration_ms: 1234.56789,
                upstream_ms: Some(0.0004),
                bytes_in: u64::MAX,
                bytes_out: 0,
                error: Some(text),
                trace_id: Some(text),
                cache: Some(text),
            };
            let line = e.json_line(text);
            assert!(!line.contains('\n'), "one line: {line:?}");
            for ms in [0.0, 2.0, 0.0004, 0.0005, 1e-9, 12345678.9, f64::NAN] {
                let timed = Entry {
                    duration_ms: ms,
                    upstream_ms: Some(ms),
                    ..e.clone()
                };
                let ours: Value = serde_json::from_str(&timed.json_line(text)).expect("valid");
                assert_eq!(ours, serde_line(&timed, text), "{ms} ms");
            }
            let ours: Value = serde_json::from_str(&line).expect("valid JSON");
            assert_eq!(ours, serde_line(&e, text), "{text:?}");
        }
        let empty = Entry::default();
        let ours: Value = serde_json::from_str(&empty.json_line("t")).expect("valid JSON");
        assert_eq!(ours, serde_line(&empty, "t"));
        let keys: Vec<&str> = ["ts", "request_id", "client", "method", "path", "route"]
            .into_iter()
            .chain(["consumer", "status", "upstream", "peer", "upstream_status"])
            .chain([
                "duration_ms",
                "upstream_ms",
                "bytes_in",
                "bytes_out",
                "error",
                "trace_id",
                "cache",
            ])
            .collect();
        let line = empty.json_line("t");
        let positions: Vec<usize> = keys
            .iter()
            .map(|k| line.find(&format!("\"{k}\":")).expect("key"))
            .collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "SPEC order: {line}"
        );
    }

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
            assert_eq!(timestamp(t.into()), expected, "{ms} ms after");
            let again = timestamp(t.into());
            assert_eq!(again, expected, "{ms} ms after, from the cache");
        }
        // A clock before 1970 takes chrono's path, to the same text.
        let epoch = Utc.timestamp_opt(0, 0).single().expect("epoch");
        for ms in [-1, -500, -86_400_001] {
            let t = epoch + chrono::Duration::milliseconds(ms);
            let expected = t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            assert_eq!(timestamp(t.into()), expected, "{ms} ms from the epoch");
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
            "trace_id",
            "cache",
        ] {
            assert!(v.get(field).is_some(), "{field} missing");
        }
        assert_eq!(v["upstream_status"], Value::Null);
        assert_eq!(v["duration_ms"], 1.235);
        assert_eq!(v["status"], 404);
        assert!(v["ts"].as_str().is_some_and(|t| t.ends_with('Z')));
    }

    #[test]
    fn a_text_line_quotes_a_consumer_that_is_not_one_word() {
        assert_eq!(super::text_word("alice"), "alice");
        assert_eq!(
            super::text_word("bob status=200\nforged"),
            "\"bob status=200\\nforged\""
        );
        assert_eq!(super::text_word(""), "\"\"");
    }
}
