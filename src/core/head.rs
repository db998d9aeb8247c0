//! What the gateway accepts of a raw HTTP/1 request head, judged on the bytes
//! before Pingora parses them: its size, its line ends, unambiguous framing, and a
//! path that cannot climb out of a route's prefix. Pure, so it is unit-tested and
//! fuzzed (`fuzz/`).
//!
//! Stricter than Pingora on purpose (SPEC §4, issue 7): a front door that reads a
//! request one way while the backend reads it another is how requests get smuggled.

use std::mem::MaybeUninit;

/// At most this many header lines; more is answered like a head too large.
/// Pingora's own limit.
pub const MAX_HEADERS: usize = 256;

/// The judgement on the bytes read so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The head is not complete yet: read more.
    Incomplete,
    /// A complete, acceptable head of this many bytes (leading empty lines included).
    Complete(usize),
    /// The head is larger than allowed, or has more than [`MAX_HEADERS`] lines.
    TooLarge,
    /// Malformed or ambiguous; why, for the log.
    Malformed(&'static str),
    /// A well-formed `CONNECT`: the gateway opens no tunnels (405). Judged
    /// here because Pingora would answer it itself, bare, before any hook.
    Connect,
}

/// Judges `buf`, which starts at the beginning of a request, against a limit of
/// `max_head` bytes for the request line and headers.
pub fn inspect(buf: &[u8], max_head: usize) -> Verdict {
    let start = leading_empty_lines(buf);
    let end = match head_end(buf, start) {
        Ok(end) => end,
        Err(why) => return Verdict::Malformed(why),
    };
    // Leading empty lines count: a client sending nothing but CRLFs must hit the
    // limit like any other, and Pingora counts them against its own limit too.
    let Some(end) = end else {
        return if buf.len() > max_head {
            Verdict::TooLarge
        } else {
            Verdict::Incomplete
        };
    };
    if end > max_head {
        return Verdict::TooLarge;
    }
    let head = &buf[..end];

    // Uninitialized: httparse writes the slots it fills, and filling all 256
    // first would cost more than parsing a short head.
    let mut headers = [MaybeUninit::uninit(); MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(head, &mut headers) {
        Ok(httparse::Status::Complete(n)) if n == end => {}
        Ok(_) => return Verdict::Malformed("malformed request head"),
        Err(httparse::Error::TooManyHeaders) => return Verdict::TooLarge,
        Err(httparse::Error::Token) => {
            return Verdict::Malformed("invalid method or request target")
        }
        Err(httparse::Error::Version) => return Verdict::Malformed("invalid HTTP version"),
        Err(_) => return Verdict::Malformed("malformed header line"),
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Verdict::Malformed("malformed request line");
    };
    if method == "CONNECT" {
        return Verdict::Connect;
    }
    let authority = match check_target(method, target) {
        Ok(authority) => authority,
        Err(why) => return Verdict::Malformed(why),
    };
    if let Err(why) = check_headers(req.headers, version, authority) {
        return Verdict::Malformed(why);
    }
    Verdict::Complete(end)
}

/// Empty lines before the request line, which RFC 9112 §2.2 says to ignore.
fn leading_empty_lines(buf: &[u8]) -> usize {
    let mut at = 0;
    while buf[at..].starts_with(b"\r\n") {
        at += 2;
    }
    at
}

/// Where the head ends: just past the first empty line after `start` (the
/// leading empty lines), or `None` while there is none yet. `Err` at the
/// first line end before that (or anywhere, with no end yet) that is a bare
/// LF or a CR not followed by LF: parsers disagree on where such a line
/// ends, so it is refused rather than guessed. One pass over the line ends
/// finds both: a separate search for `\r\n\r\n` cost as much again.
fn head_end(buf: &[u8], start: usize) -> Result<Option<usize>, &'static str> {
    for i in memchr::memchr2_iter(b'\r', b'\n', buf) {
        if buf[i] == b'\n' {
            if i == 0 || buf[i - 1] != b'\r' {
                return Err("bare LF line end");
            }
            // `\r\n\r\n`: the LF at `i - 2` passed the check above, so a CR
            // precedes it.
            if i >= start + 3 && buf[i - 2] == b'\n' {
                return Ok(Some(i + 1));
            }
        } else if buf.get(i + 1).is_some_and(|&b| b != b'\n') {
            return Err("CR not followed by LF");
        }
    }
    Ok(None)
}

/// The request target: origin-form (`/path?query`), absolute-form
/// (`http://host/path`, RFC 9112 §3.2.2 says a server must accept it), or `*`
/// for OPTIONS (CONNECT's authority-form never gets here). Returns the
/// authority of an absolute-form target, which `host` must equal.
fn check_target<'a>(method: &str, target: &'a str) -> Result<Option<&'a str>, &'static str> {
    if target == "*" {
        return if method == "OPTIONS" {
            Ok(None)
        } else {
            Err("`*` target is only for OPTIONS")
        };
    }
    let (authority, path_and_query) = if target.starts_with('/') {
        (None, target)
    } else if let Some(after_scheme) = strip_http_scheme(target) {
        let end = after_scheme.find(['/', '?']).unwrap_or(after_scheme.len());
        let (authority, rest) = after_scheme.split_at(end);
        if authority.is_empty() || authority.contains(['@', '#']) {
            return Err("bad authority in request target");
        }
        (Some(authority), if rest.is_empty() { "/" } else { rest })
    } else {
        return Err("request target is not a path");
    };
    if path_and_query.contains('#') {
        return Err("fragment in request target");
    }
    let path = path_and_query
        .split_once('?')
        .map_or(path_and_query, |(path, _)| path);
    check_path(path)?;
    Ok(authority)
}

/// What follows `http://` or `https://` (any case), if the target starts so.
fn strip_http_scheme(target: &str) -> Option<&str> {
    ["http://", "https://"].iter().find_map(|scheme| {
        let head = target.get(..scheme.len())?;
        head.eq_ignore_ascii_case(scheme)
            .then(|| &target[scheme.len()..])
    })
}

/// Refuses a path that, once percent-decoded (with `\` read as `/`, as some
/// backends do), has a `.` or `..` segment (also with `;params`, which Java
/// servers strip), a NUL, or a broken `%` escape. Routes match the raw path, so a
/// backend that resolves `/public/..%2Fadmin` to `/admin` would otherwise serve a
/// route the gateway never checked. HTTP/2 paths are checked too (`proxy.rs`).
pub fn check_path(path: &str) -> Result<(), &'static str> {
    let raw = path.as_bytes();
    // The common path has nothing to decode and no dot at all: one scan.
    if !raw.iter().any(|&b| b == b'%' || b == b'.' || b == b'\\') {
        return Ok(());
    }
    let mut segment: Vec<u8> = Vec::new();
    let mut i = 0;
    loop {
        let byte = match raw.get(i) {
            None => None,
            Some(b'%') => {
                let hex = raw.get(i + 1..i + 3).ok_or("broken percent-encoding")?;
                let decoded = std::str::from_utf8(hex)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or("broken percent-encoding")?;
                i += 3;
                Some(decoded)
            }
            Some(&b) => {
                i += 1;
                Some(b)
            }
        };
        match byte {
            Some(0) => return Err("NUL in path"),
            Some(b'/' | b'\\') | None => {
                let name = segment.split(|&b| b == b';').next().unwrap_or_default();
                if name == b"." || name == b".." {
                    return Err("dot-segment in path");
                }
                segment.clear();
                if byte.is_none() {
                    return Ok(());
                }
            }
            Some(b) => segment.push(b),
        }
    }
}

/// Framing and host: one way to read the body's length, one host.
fn check_headers(
    headers: &[httparse::Header<'_>],
    version: u8,
    authority: Option<&str>,
) -> Result<(), &'static str> {
    let mut content_length: Option<&[u8]> = None;
    let mut transfer_encodings = 0;
    let mut hosts = 0;
    for header in headers {
        let name = header.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let value = header.value;
            // 18 digits: every such number fits the i64 Pingora reads it into.
            if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
                return Err("invalid content-length");
            }
            if content_length.is_some_and(|seen| seen != value) {
                return Err("conflicting content-lengths");
            }
            content_length = Some(value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Only plain `chunked`: `xchunked`, `chunked, identity` or `gzip,
            // chunked` are read differently by different servers.
            if !header.value.eq_ignore_ascii_case(b"chunked") {
                return Err("unsupported transfer-coding");
            }
            transfer_encodings += 1;
        } else if name.eq_ignore_ascii_case(b"host") {
            if authority.is_some_and(|a| a.as_bytes() != header.value) {
                return Err("host differs from the request target's authority");
            }
            hosts += 1;
        }
    }
    if transfer_encodings > 1 {
        return Err("repeated transfer-encoding");
    }
    if transfer_encodings == 1 && content_length.is_some() {
        return Err("both content-length and transfer-encoding");
    }
    if transfer_encodings == 1 && version == 0 {
        return Err("transfer-encoding in an HTTP/1.0 request");
    }
    if hosts > 1 {
        return Err("repeated host");
    }
    if hosts == 0 && version == 1 {
        return Err("HTTP/1.1 request without host");
    }
    Ok(())
}

/// Where the first request in `buf` ends, when more bytes follow it there: its
/// head (`head_len`, from [`inspect`]) plus its `content-length` body. `None`
/// when nothing follows, or when the end is not known from the buffer alone (a
/// chunked body, or a body still arriving): then the whole buffer belongs to
/// the first request as far as anyone can tell here. Only for a head that
/// [`inspect`] accepted.
pub fn request_end(buf: &[u8], head_len: usize) -> Option<usize> {
    if buf.len() <= head_len {
        return None;
    }
    let mut headers = [MaybeUninit::uninit(); MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    req.parse_with_uninit_headers(&buf[..head_len], &mut headers)
        .ok()?;
    let mut body = 0usize;
    for header in req.headers.iter() {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return None;
        }
        if header.name.eq_ignore_ascii_case("content-length") {
            body = std::str::from_utf8(header.value).ok()?.parse().ok()?;
        }
    }
    let end = head_len.checked_add(body)?;
    (end < buf.len()).then_some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 32 * 1024;

    fn verdict(head: &str) -> Verdict {
        inspect(head.as_bytes(), MAX)
    }

    fn refused(head: &str) -> &'static str {
        match verdict(head) {
            Verdict::Malformed(why) => why,
            other => panic!("{head:?} gave {other:?}"),
        }
    }

    #[test]
    fn accepts_ordinary_requests() {
        let head = "GET /users/1?x=1 HTTP/1.1\r\nhost: a\r\nx-api-key: k\r\n\r\n";
        assert_eq!(verdict(head), Verdict::Complete(head.len()));
        let with_body = "POST /a HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\nabc";
        assert_eq!(verdict(with_body), Verdict::Complete(with_body.len() - 3));
        let chunked = "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n";
        assert_eq!(verdict(chunked), Verdict::Complete(chunked.len()));
        let same_twice =
            "POST /a HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\n";
        assert!(matches!(verdict(same_twice), Verdict::Complete(_)));
        let http10 = "GET / HTTP/1.0\r\n\r\n";
        assert!(matches!(verdict(http10), Verdict::Complete(_)));
        let leading = "\r\nGET / HTTP/1.1\r\nhost: a\r\n\r\n";
        assert_eq!(verdict(leading), Verdict::Complete(leading.len()));
        let absolute = "GET http://a/users/1?q HTTP/1.1\r\nhost: a\r\n\r\n";
        assert!(matches!(verdict(absolute), Verdict::Complete(_)));
        let star = "OPTIONS * HTTP/1.1\r\nhost: a\r\n\r\n";
        assert!(matches!(verdict(star), Verdict::Complete(_)));
        for ok in ["/a.b/c", "/a/..b", "/a/b.", "/%41", "/users/a%2Fb", "/..."] {
            assert_eq!(check_path(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn waits_for_the_rest() {
        assert_eq!(verdict(""), Verdict::Incomplete);
        assert_eq!(
            verdict("GET / HTTP/1.1\r\nhost: a\r\n"),
            Verdict::Incomplete
        );
        assert_eq!(verdict("GET / HTTP/1.1\r"), Verdict::Incomplete);
    }

    #[test]
    fn refuses_ambiguous_framing() {
        let cases = [
            ("content-length: 3\r\ntransfer-encoding: chunked", "both"),
            ("content-length: 3\r\ncontent-length: 4", "conflicting"),
            ("content-length: 3, 3", "invalid content-length"),
            ("content-length: +3", "invalid content-length"),
            ("content-length: ", "invalid content-length"),
            (
                "content-length: 9999999999999999999",
                "invalid content-length",
            ),
            ("transfer-encoding: xchunked", "unsupported"),
            ("transfer-encoding: chunked, identity", "unsupported"),
            ("transfer-encoding: identity, chunked", "unsupported"),
            (
                "transfer-encoding: chunked\r\ntransfer-encoding: chunked",
                "repeated",
            ),
        ];
        for (headers, expected) in cases {
            let head = format!("POST /a HTTP/1.1\r\nhost: a\r\n{headers}\r\n\r\n");
            let why = refused(&head);
            assert!(why.contains(expected), "{headers:?}: {why}");
        }
        // Whitespace around a value is not part of it (RFC 9110 §5.5): httparse
        // trims it, and Pingora reads the same trimmed `chunked`.
        for padded in ["chunked ", "\tchunked\t"] {
            let head =
                format!("POST /a HTTP/1.1\r\nhost: a\r\ntransfer-encoding: {padded}\r\n\r\n");
            assert!(matches!(verdict(&head), Verdict::Complete(_)), "{padded:?}");
        }
        let te_in_10 = "POST /a HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n";
        assert!(refused(te_in_10).contains("HTTP/1.0"));
    }

    #[test]
    fn head_end_agrees_with_a_search_for_the_end_and_a_check_of_every_line_end() {
        // The two steps `head_end` does in one: the end searched for after
        // the leading empty lines, then the line ends up to it checked.
        fn two_steps(buf: &[u8]) -> Result<Option<usize>, &'static str> {
            let start = leading_empty_lines(buf);
            let end = buf[start..]
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|i| start + i + 4);
            let head = &buf[..end.unwrap_or(buf.len())];
            for (i, &b) in head.iter().enumerate() {
                if b == b'\n' && (i == 0 || head[i - 1] != b'\r') {
                    return Err("bare LF line end");
                }
                if b == b'\r' && head.get(i + 1).is_some_and(|&b| b != b'\n') {
                    return Err("CR not followed by LF");
                }
            }
            Ok(end)
        }
        // Every string of CR, LF and `a` up to 9 bytes long.
        let mut checked = 0;
        for len in 0..=9u32 {
            for n in 0..3usize.pow(len) {
                let buf: Vec<u8> = (0..len).map(|k| b"\r\na"[n / 3usize.pow(k) % 3]).collect();
                let start = leading_empty_lines(&buf);
                assert_eq!(head_end(&buf, start), two_steps(&buf), "{buf:?}");
                checked += 1;
            }
        }
        assert_eq!(checked, 29_524);
    }

    #[test]
    fn refuses_bad_lines() {
        assert_eq!(
            refused("GET / HTTP/1.1\nhost: a\n\n"),
            "bare LF line end",
            "bare LF"
        );
        assert_eq!(
            refused("GET / HTTP/1.1\r\nhost: a\r\nx: 1\rinjected: 2\r\n\r\n"),
            "CR not followed by LF"
        );
        for head in [
            "GET / HTTP/1.1\r\nhost: a\r\n folded: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: a\r\ncontent-length : 1\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: a\r\nx: a\0b\r\n\r\n",
            "GET / HTTP/2.0\r\nhost: a\r\n\r\n",
            "GET /a b HTTP/1.1\r\nhost: a\r\n\r\n",
            "GET  / HTTP/1.1\r\nhost: a\r\n\r\n",
        ] {
            refused(head);
        }
        assert!(refused("GET / HTTP/1.1\r\n\r\n").contains("without host"));
        assert!(refused("GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n").contains("repeated host"));
    }

    #[test]
    fn refuses_paths_that_climb_out_of_a_prefix() {
        for path in [
            "/public/../admin",
            "/public/..",
            "/public/./x",
            "/public/..%2Fadmin",
            "/public/%2e%2e/admin",
            "/public/%2E%2E%2Fadmin",
            "/public/..%5Cadmin",
            "/public\\..\\admin",
            "/public/.%2e/admin",
            "/public/..;/admin",
            "/public/%2e%2e;x=1/admin",
            "/public/.;/x",
        ] {
            assert_eq!(check_path(path), Err("dot-segment in path"), "{path}");
            let head = format!("GET {path}?q=1 HTTP/1.1\r\nhost: a\r\n\r\n");
            assert!(matches!(verdict(&head), Verdict::Malformed(_)), "{path}");
        }
        assert_eq!(check_path("/a%00b"), Err("NUL in path"));
        assert_eq!(check_path("/a%zz"), Err("broken percent-encoding"));
        assert_eq!(check_path("/a%2"), Err("broken percent-encoding"));
        let absolute = "GET http://a/public/../admin HTTP/1.1\r\nhost: a\r\n\r\n";
        assert!(matches!(verdict(absolute), Verdict::Malformed(_)));
        let elsewhere = "GET http://b/public HTTP/1.1\r\nhost: a\r\n\r\n";
        assert!(refused(elsewhere).contains("authority"));
        refused("GET http://u@a/ HTTP/1.1\r\nhost: a\r\n\r\n");
        refused("GET http:///x HTTP/1.1\r\nhost: a\r\n\r\n");
        refused("GET http://a#/x HTTP/1.1\r\nhost: a#\r\n\r\n");
        refused("GET /a#frag HTTP/1.1\r\nhost: a\r\n\r\n");
        refused("GET users HTTP/1.1\r\nhost: a\r\n\r\n");
        refused("GET * HTTP/1.1\r\nhost: a\r\n\r\n");
    }

    #[test]
    fn connect_is_told_apart_once_the_head_is_whole_and_well_formed() {
        let connect = "CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n";
        assert_eq!(verdict(connect), Verdict::Connect);
        assert_eq!(
            verdict("CONNECT example.com:443 HTTP/1.1\r\n"),
            Verdict::Incomplete
        );
        refused("CONNECT example.com:443 HTTP/1.1\nhost: a\n\n");
        // The method is case-sensitive (RFC 9110 §9.1): `connect` is another one.
        assert!(matches!(
            verdict("connect / HTTP/1.1\r\nhost: a\r\n\r\n"),
            Verdict::Complete(_)
        ));
    }

    #[test]
    fn sizes() {
        let big = format!(
            "GET / HTTP/1.1\r\nhost: a\r\nx: {}\r\n\r\n",
            "v".repeat(100)
        );
        assert_eq!(
            inspect(big.as_bytes(), big.len()),
            Verdict::Complete(big.len())
        );
        assert_eq!(inspect(big.as_bytes(), big.len() - 1), Verdict::TooLarge);
        // Too large is known before the end arrives.
        let partial = format!("GET /{} HTTP/1.1\r\n", "a".repeat(200));
        assert_eq!(inspect(partial.as_bytes(), 100), Verdict::TooLarge);
        // Empty lines before the request line count too: CRLFs alone hit the limit.
        assert_eq!(inspect(&b"\r\n".repeat(51), 100), Verdict::TooLarge);
        let late = format!("{}GET / HTTP/1.1\r\nhost: a\r\n\r\n", "\r\n".repeat(50));
        assert_eq!(inspect(late.as_bytes(), 100), Verdict::TooLarge);
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x{i}: 1\r\n")).collect();
        let head = format!("GET / HTTP/1.1\r\nhost: a\r\n{many}\r\n");
        assert_eq!(verdict(&head), Verdict::TooLarge);
    }

    #[test]
    fn the_end_of_a_first_request_with_more_behind_it() {
        let get = b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n";
        let two = [&get[..], b"GET /b HTTP/1.1\r\nhost: x\r\n\r\n"].concat();
        let Verdict::Complete(head) = inspect(&two, 4096) else {
            panic!("a complete head");
        };
        assert_eq!(request_end(&two, head), Some(get.len()));
        assert_eq!(request_end(get, head), None, "nothing follows");
        let post = b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc";
        let then_get = [&post[..], get].concat();
        let Verdict::Complete(head) = inspect(&then_get, 4096) else {
            panic!("a complete head");
        };
        assert_eq!(request_end(&then_get, head), Some(post.len()));
        assert_eq!(
            request_end(&then_get[..post.len() - 1], head),
            None,
            "body still arriving"
        );
        let chunked =
            b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET";
        let Verdict::Complete(head) = inspect(chunked, 4096) else {
            panic!("a complete head");
        };
        assert_eq!(
            request_end(chunked, head),
            None,
            "chunked: Pingora's to frame"
        );
    }
}
