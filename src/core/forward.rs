//! The forwarding rules of SPEC §4: who the client is, what `x-forwarded-for`
//! becomes, which request id is kept, which headers are hop-by-hop, and the
//! header policy for what goes upstream and what comes back. Pure logic: the
//! policy edits any [`HeaderEdit`] (Pingora's heads in the proxy, a plain
//! `HeaderMap` in the tests below).

use crate::core::limit::Window;
use crate::core::router::strip_segments;
use http::header::{self, HeaderName, HeaderValue, HOST};
use http::HeaderMap;
use ipnet::IpNet;
use std::fmt::Write as _;
use std::net::IpAddr;

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
/// `upgrade` is absent: the proxy needs it to pass WebSocket upgrades through.
/// `transfer-encoding` too: Pingora re-frames bodies and reads it itself.
/// Names, not strings: removing by `&str` parses the name on every request.
pub const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// Sent with an HTTP/1 upgrade to h2c; meaningless without that upgrade.
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");
/// Client-address headers a backend may believe: only a trusted proxy's pass.
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

fn is_trusted(ip: &IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(ip))
}

/// Who the client is, and the `x-forwarded-for` to send upstream.
#[derive(Debug)]
pub struct Forwarded {
    pub client: IpAddr,
    /// `client` as text, for the access log.
    pub client_text: String,
    pub header: String,
    /// The TCP peer is in `trusted_proxies`: its `forwarded` and `x-real-ip`
    /// pass unchanged, as its `x-forwarded-for` is believed.
    pub peer_trusted: bool,
}

impl Forwarded {
    /// The peer alone: one formatting serves as the client's text and the header.
    fn peer(peer: IpAddr) -> Self {
        let text = ip_text(peer);
        Forwarded {
            client: peer,
            client_text: text.clone(),
            header: text,
            peer_trusted: false,
        }
    }
}

/// `ip` as text, as `Display` writes it: IPv4 by hand, since this runs for
/// every request and the formatting machinery costs several times more.
fn ip_text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut text = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

/// The client and the `x-forwarded-for` to send upstream.
///
/// The TCP peer is the client unless it is a trusted proxy; then the incoming
/// `x-forwarded-for` is believed, the client is its rightmost untrusted address,
/// and the peer is appended to it. Otherwise the header is replaced.
pub fn forwarded_for(peer: IpAddr, incoming: Option<&str>, trusted: &[IpNet]) -> Forwarded {
    let peer_trusted = is_trusted(&peer, trusted);
    let believed = incoming.filter(|_| peer_trusted);
    let Some(chain) = believed else {
        return Forwarded {
            peer_trusted,
            ..Forwarded::peer(peer)
        };
    };
    let hops: Option<Vec<IpAddr>> = chain
        .split(',')
        .map(|h| h.trim().parse::<IpAddr>().ok())
        .collect();
    match hops {
        // An unparsable chain cannot be believed: start a new one.
        None => Forwarded {
            peer_trusted,
            ..Forwarded::peer(peer)
        },
        Some(hops) if hops.is_empty() => Forwarded {
            peer_trusted,
            ..Forwarded::peer(peer)
        },
        Some(hops) => {
            let client = hops
                .iter()
                .rev()
                .find(|ip| !is_trusted(ip, trusted))
                .or(hops.first())
                .copied()
                .unwrap_or(peer);
            let mut header = String::with_capacity(chain.len() + 41);
            for ip in &hops {
                let _ = write!(header, "{ip}, ");
            }
            let _ = write!(header, "{peer}");
            Forwarded {
                client,
                client_text: client.to_string(),
                header,
                peer_trusted,
            }
        }
    }
}

/// An incoming `x-request-id` is kept when it is 1–128 of `[A-Za-z0-9._:-]`.
pub fn is_valid_request_id(id: &[u8]) -> bool {
    (1..=128).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A new random request id: 32 hex digits.
pub fn new_request_id() -> String {
    let mut id = String::with_capacity(32);
    push_hex(&mut id, rand::random::<u128>(), 32);
    id
}

/// Appends the low `digits` hex digits of `value`, zero-padded, lowercase:
/// what `format!("{:032x}")` gives, without the formatting machinery on the
/// request path (ids and trace context are made for every request).
/// The digits go to a stack buffer and into `out` at once: a `push` per
/// digit checks the capacity each time. At most 32 digits (a `u128`).
pub fn push_hex(out: &mut String, value: u128, digits: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = digits.min(32);
    let mut buf = [0u8; 32];
    let mut rest = value;
    for slot in buf[..digits].iter_mut().rev() {
        *slot = HEX[(rest & 0xf) as usize];
        rest >>= 4;
    }
    // Only ASCII hex digits were written.
    out.push_str(std::str::from_utf8(&buf[..digits]).unwrap_or_default());
}

/// Header names listed in a `connection` header, which are hop-by-hop too.
pub fn connection_listed(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Every header name the `connection` headers of a head list, but those of
/// [`HOP_BY_HOP`], which every caller removes anyway (`keep-alive`, the usual
/// one). Rare, so the list is only allocated when there is one.
fn connection_names(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(connection_listed)
        .filter(|name| {
            !HOP_BY_HOP
                .iter()
                .any(|hop| hop.as_str().eq_ignore_ascii_case(name))
        })
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect()
}

/// Whether a request asks to switch protocols: HTTP/1.1 with `upgrade` AND a
/// `connection` listing `upgrade` (RFC 9110 §7.8). Pingora's own
/// `is_upgrade_req` looks at `upgrade` alone; a lone `upgrade` is a header
/// like any other and must not become a handshake on the way upstream.
pub fn is_upgrade_request(http11: bool, headers: &HeaderMap) -> bool {
    http11
        && headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(connection_listed)
            .any(|name| name.eq_ignore_ascii_case("upgrade"))
}

/// Whether an upstream answer's framing can be passed on: no
/// `transfer-encoding`, or exactly one saying `chunked` (any case, trimmed).
/// Anything else (`identity`, `chunked, identity`, `gzip, chunked`, two
/// headers) is a body Pingora and the client would delimit differently: the
/// client would hang or its HTTP/2 stream be reset, so it is answered 502, as
/// nginx does.
pub fn upstream_framing_is_plain(headers: &HeaderMap) -> bool {
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
    match (codings.next(), codings.next()) {
        (None, _) => true,
        (Some(only), None) => only
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"chunked"),
        (Some(_), Some(_)) => false,
    }
}

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Removes those of the `groups`' names the head carries. One pass over its
/// fields finds which are present, and only those are removed: most heads
/// carry none or one of these, and removing an absent name still hashes it and
/// probes both of a Pingora head's maps (~130 instructions a name,
/// benches/instructions.sh). The list is only allocated when one is present.
/// A name or two (a stored answer's secrets) are looked up instead: a lookup
/// is cheaper than a pass over a dozen fields.
fn remove_all<H: HeaderEdit>(head: &mut H, groups: &[&[HeaderName]]) {
    const LOOKED_UP: usize = 2;
    let names = groups.iter().map(|names| names.len()).sum::<usize>();
    if names <= LOOKED_UP {
        for name in groups.iter().flat_map(|names| names.iter()) {
            if head.headers().contains_key(name) {
                head.remove(name);
            }
        }
        return;
    }
    let present: Vec<HeaderName> = head
        .headers()
        .keys()
        .filter(|key| groups.iter().any(|names| names.contains(key)))
        .cloned()
        .collect();
    for name in &present {
        head.remove(name);
    }
}

/// Removed from a request that does not switch protocols.
const UPGRADE_ONLY: [HeaderName; 2] = [header::UPGRADE, HTTP2_SETTINGS];
/// Client-address claims, removed unless a trusted proxy sent them.
const ADDRESS_CLAIMS: [HeaderName; 2] = [FORWARDED, X_REAL_IP];

/// A request or response head whose headers the policy below edits.
pub trait HeaderEdit {
    type Error;
    fn headers(&self) -> &HeaderMap;
    fn remove(&mut self, name: &HeaderName);
    /// Makes room for `additional` more headers at once, before a series of
    /// inserts: a head parsed with two headers and given six more would
    /// otherwise grow its maps twice. Capacity only: past the map's limit the
    /// inserts themselves report it.
    fn reserve(&mut self, additional: usize);
    fn insert(&mut self, name: HeaderName, value: HeaderValue) -> Result<(), Self::Error>;
    /// Inserts a value that must still be checked as a header value.
    fn insert_str(&mut self, name: HeaderName, value: &str) -> Result<(), Self::Error>;
}

/// Headers to set and to remove, in that order of application: remove, then set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderRules {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderRules {
    /// No rules: a route without `request_headers` or `response_headers`.
    pub const NONE: &'static HeaderRules = &HeaderRules {
        set: Vec::new(),
        remove: Vec::new(),
    };

    pub fn apply<H: HeaderEdit>(&self, head: &mut H) -> Result<(), H::Error> {
        for name in &self.remove {
            head.remove(name);
        }
        for (name, value) in &self.set {
            head.insert(name.clone(), value.clone())?;
        }
        Ok(())
    }
}

/// What one request sends upstream besides the client's own headers.
pub struct Forwarding<'a> {
    /// The client's key header, never forwarded.
    pub key_header: &'a HeaderName,
    /// The `x-forwarded-for` of [`forwarded_for`].
    pub forwarded_for: &'a str,
    /// Whether the client came over TLS (`x-forwarded-proto: https`).
    pub https: bool,
    pub request_id: &'a str,
    /// A `traceparent` the gateway started (`core::trace`), to send instead of
    /// the client's invalid or missing one; `None` keeps the client's.
    pub traceparent: Option<&'a str>,
    /// The client asked to switch protocols ([`is_upgrade_request`]).
    pub upgrade: bool,
    /// The TCP peer is a trusted proxy ([`Forwarded::peer_trusted`]).
    pub peer_trusted: bool,
}

/// Where one upstream request goes: the upstream's and route's header edits
/// and the `host` to send.
pub struct Destination<'a> {
    /// The upstream's own headers (the gateway secret).
    pub upstream_headers: &'a [(HeaderName, HeaderValue)],
    pub route_headers: &'a HeaderRules,
    pub host: Host<'a>,
}

/// The `host` an upstream request is sent with.
#[derive(Debug, Clone, Copy)]
pub enum Host<'a> {
    /// The client's own (`preserve_host`).
    Keep,
    /// A value made at load (the peer's `host:port`).
    Value(&'a HeaderValue),
}

/// The headers an upstream gets (SPEC §4): the client's key and hop-by-hop
/// headers removed, the upstream's and route's headers set, `x-forwarded-*`,
/// `x-request-id` and `host`. Shared by proxied requests and aggregate parts.
pub fn rewrite_upstream_request<H: HeaderEdit>(
    req: &mut H,
    forwarding: &Forwarding<'_>,
    destination: &Destination<'_>,
) -> Result<(), H::Error> {
    req.remove(forwarding.key_header);
    // Judged on the client's request: Pingora has already normalised this head
    // and added `connection: upgrade` to any `upgrade: websocket`.
    let is_upgrade = forwarding.upgrade && req.headers().contains_key(header::UPGRADE);
    for name in &connection_names(req.headers()) {
        if !(is_upgrade && *name == header::UPGRADE) {
            req.remove(name);
        }
    }
    // Like `x-forwarded-for`: a client's own claim of its address is not
    // passed to a backend that may believe it, unless a trusted proxy sent it.
    let claims: &[HeaderName] = if forwarding.peer_trusted {
        &[]
    } else {
        &ADDRESS_CLAIMS
    };
    if is_upgrade {
        remove_all(req, &[&HOP_BY_HOP, claims]);
        req.insert(header::CONNECTION, HeaderValue::from_static("upgrade"))?;
    } else {
        remove_all(req, &[&HOP_BY_HOP, &UPGRADE_ONLY, claims]);
    }
    // Two equal lengths passed the head gate (different ones are refused):
    // the upstream gets one, so no parser downstream can read two.
    let repeated_length = {
        let mut lengths = req.headers().get_all(header::CONTENT_LENGTH).iter();
        match (lengths.next(), lengths.next()) {
            (Some(first), Some(_)) => Some(first.clone()),
            _ => None,
        }
    };
    if let Some(length) = repeated_length {
        req.insert(header::CONTENT_LENGTH, length)?;
    }

    let original_host = req.headers().get(HOST).cloned();
    for name in &destination.route_headers.remove {
        req.remove(name);
    }
    // The sets below, `x-forwarded-for`, `-proto`, `-host`, `x-request-id`,
    // `traceparent` and `host`.
    let added = destination.upstream_headers.len() + destination.route_headers.set.len() + 6;
    req.reserve(added);
    let sets = destination.upstream_headers.iter();
    for (name, value) in sets.chain(&destination.route_headers.set) {
        req.insert(name.clone(), value.clone())?;
    }
    req.insert_str(X_FORWARDED_FOR, forwarding.forwarded_for)?;
    let proto = if forwarding.https { "https" } else { "http" };
    req.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto))?;
    if let Some(host) = original_host {
        req.insert(X_FORWARDED_HOST, host)?;
    }
    req.insert_str(X_REQUEST_ID, forwarding.request_id)?;
    if let Some(traceparent) = forwarding.traceparent {
        // A trace started here: a `tracestate` the client sent belongs to none.
        req.remove(&TRACESTATE);
        req.insert_str(TRACEPARENT, traceparent)?;
    }
    match destination.host {
        Host::Keep => {}
        Host::Value(value) => req.insert(HOST, value.clone())?,
    }
    Ok(())
}

/// An upstream's answer as the client gets it: no header an upstream's
/// `headers` sets (a secret), no hop-by-hop header nor one its `connection`
/// names (RFC 9110 §7.6.1), no `upgrade` unless it switches protocols (then
/// `connection: upgrade` and `upgrade` stay), then the route's
/// `response_headers`.
pub fn rewrite_upstream_response<H: HeaderEdit>(
    resp: &mut H,
    secret_headers: &[HeaderName],
    switching_protocols: bool,
    route_headers: &HeaderRules,
) -> Result<(), H::Error> {
    strip_response(resp, secret_headers, switching_protocols)?;
    route_headers.apply(resp)
}

/// The part of [`rewrite_upstream_response`] that depends on the answer
/// alone, not on the config: its hop-by-hop headers and those its
/// `connection` names go, and `upgrade` unless it switches protocols. The
/// response cache stores answers stripped so, and skips it on hits.
pub fn strip_hop_by_hop_response<H: HeaderEdit>(
    resp: &mut H,
    switching_protocols: bool,
) -> Result<(), H::Error> {
    strip_response(resp, &[], switching_protocols)
}

/// Removes the secrets with the hop-by-hop headers, in one pass (config
/// refuses a hop-by-hop name for a secret, so `connection` is read intact).
fn strip_response<H: HeaderEdit>(
    resp: &mut H,
    secret_headers: &[HeaderName],
    switching_protocols: bool,
) -> Result<(), H::Error> {
    for name in &connection_names(resp.headers()) {
        // The body's framing is Pingora's to read and rewrite, whatever the
        // upstream lists: removing it here would leave the answer unframed.
        let framing = *name == header::CONTENT_LENGTH || *name == header::TRANSFER_ENCODING;
        let switch = switching_protocols && *name == header::UPGRADE;
        if !(framing || switch) {
            resp.remove(name);
        }
    }
    if switching_protocols {
        remove_all(resp, &[secret_headers, &HOP_BY_HOP]);
        resp.insert(header::CONNECTION, HeaderValue::from_static("upgrade"))?;
    } else {
        // An `upgrade` on any other answer (an h2c offer) is an invitation the
        // client cannot take through the gateway.
        remove_all(resp, &[secret_headers, &HOP_BY_HOP, &[header::UPGRADE]]);
    }
    Ok(())
}

/// [`rewrite_upstream_response`] for an answer whose hop-by-hop headers were
/// stripped when it was stored ([`strip_hop_by_hop_response`]): the config's
/// part only, as the secrets and the route's rules may have changed since.
pub fn rewrite_stored_response<H: HeaderEdit>(
    resp: &mut H,
    secret_headers: &[HeaderName],
    route_headers: &HeaderRules,
) -> Result<(), H::Error> {
    remove_all(resp, &[secret_headers]);
    route_headers.apply(resp)
}

/// What every answer to a client carries: its `x-request-id`, and on a
/// rate-limited route `ratelimit-limit`, `-remaining` and `-reset`.
pub fn stamp_answer<H: HeaderEdit>(
    resp: &mut H,
    request_id: &str,
    rate: Option<Window>,
) -> Result<(), H::Error> {
    resp.insert_str(X_REQUEST_ID, request_id)?;
    if let Some(w) = rate {
        resp.insert(HeaderName::from_static("ratelimit-limit"), w.limit.into())?;
        resp.insert(
            HeaderName::from_static("ratelimit-remaining"),
            w.remaining.into(),
        )?;
        resp.insert(
            HeaderName::from_static("ratelimit-reset"),
            w.reset_secs().into(),
        )?;
    }
    Ok(())
}

/// The upstream request's target when it differs from the client's: with
/// `strip_prefix` (`strip` leading segments dropped), or when the client sent
/// an absolute-form target (`GET http://host/path`: sent as its path, the host
/// is in `host`). `None`: send the client's target as it is.
pub fn upstream_target(
    path: &str,
    query: Option<&str>,
    strip: Option<usize>,
    absolute_form: bool,
) -> Option<String> {
    if strip.is_none() && !absolute_form {
        return None;
    }
    let path = strip.map_or(path, |n| strip_segments(path, n));
    Some(match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().expect("cidr")).collect()
    }

    #[test]
    fn untrusted_peer_replaces_the_chain() {
        let peer: IpAddr = "203.0.113.9".parse().expect("ip");
        let Forwarded {
            client,
            client_text,
            header: xff,
            peer_trusted,
        } = forwarded_for(peer, Some("1.2.3.4"), &nets(&["10.0.0.0/8"]));
        assert!(!peer_trusted);
        assert_eq!(client_text, "203.0.113.9");
        assert_eq!(client, peer);
        assert_eq!(xff, "203.0.113.9");
    }

    #[test]
    fn trusted_peer_appends_and_the_rightmost_untrusted_hop_is_the_client() {
        let peer: IpAddr = "10.0.0.2".parse().expect("ip");
        let trusted = nets(&["10.0.0.0/8"]);
        let Forwarded {
            client,
            client_text,
            header: xff,
            peer_trusted,
        } = forwarded_for(peer, Some("1.2.3.4, 198.51.100.7, 10.0.0.5"), &trusted);
        assert!(peer_trusted);
        assert_eq!(client_text, "198.51.100.7");
        assert_eq!(client.to_string(), "198.51.100.7");
        assert_eq!(xff, "1.2.3.4, 198.51.100.7, 10.0.0.5, 10.0.0.2");
        let Forwarded {
            client,
            header: xff,
            ..
        } = forwarded_for(peer, None, &trusted);
        assert_eq!((client, xff.as_str()), (peer, "10.0.0.2"));
        let Forwarded {
            client,
            header: xff,
            ..
        } = forwarded_for(peer, Some("garbage, 1.2.3.4"), &trusted);
        assert_eq!((client, xff.as_str()), (peer, "10.0.0.2"));
    }

    /// A plain header map as the policy's head, as the proxy's are.
    impl HeaderEdit for HeaderMap {
        type Error = http::header::InvalidHeaderValue;
        fn headers(&self) -> &HeaderMap {
            self
        }
        fn remove(&mut self, name: &HeaderName) {
            HeaderMap::remove(self, name);
        }
        fn reserve(&mut self, additional: usize) {
            HeaderMap::reserve(self, additional);
        }
        fn insert(&mut self, name: HeaderName, value: HeaderValue) -> Result<(), Self::Error> {
            HeaderMap::insert(self, name, value);
            Ok(())
        }
        fn insert_str(&mut self, name: HeaderName, value: &str) -> Result<(), Self::Error> {
            HeaderMap::insert(self, name, HeaderValue::from_str(value)?);
            Ok(())
        }
    }

    #[test]
    fn push_hex_writes_what_format_writes() {
        for value in [
            0u128,
            1,
            0xabc,
            u128::from(u64::MAX),
            u128::MAX,
            0x0123_4567_89ab_cdef,
        ] {
            for digits in [1, 16, 32] {
                let mut out = String::from("x");
                push_hex(&mut out, value, digits);
                let full = format!("{value:032x}");
                assert_eq!(
                    out,
                    format!("x{}", &full[32 - digits..]),
                    "{value} {digits}"
                );
            }
        }
    }

    #[test]
    fn ip_text_writes_what_display_writes() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "100.9.99.101",
            "::1",
            "2001:db8::7",
            "::ffff:1.2.3.4",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }

    fn head(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
    }

    fn value<'a>(map: &'a HeaderMap, name: &str) -> Option<&'a str> {
        map.get(name).and_then(|v| v.to_str().ok())
    }

    static KEY: HeaderName = HeaderName::from_static("x-api-key");

    fn forwarding(https: bool) -> Forwarding<'static> {
        Forwarding {
            key_header: &KEY,
            forwarded_for: "203.0.113.9",
            https,
            request_id: "req-1",
            traceparent: None,
            upgrade: false,
            peer_trusted: false,
        }
    }

    fn no_destination() -> Destination<'static> {
        Destination {
            upstream_headers: &[],
            route_headers: HeaderRules::NONE,
            host: Host::Keep,
        }
    }

    #[test]
    fn upstream_requests_lose_the_key_and_hop_by_hop_headers_and_gain_the_secret() {
        let mut req = head(&[
            ("host", "api.example.com"),
            ("x-api-key", "client-secret"),
            ("connection", "keep-alive, x-trace"),
            ("x-trace", "1"),
            ("te", "trailers"),
            ("x-drop", "1"),
            ("x-forwarded-for", "1.2.3.4"),
            ("accept", "*/*"),
        ]);
        let secret = [(
            HeaderName::from_static("x-gateway-secret"),
            HeaderValue::from_static("s3cret"),
        )];
        let rules = HeaderRules {
            set: vec![(
                HeaderName::from_static("x-route"),
                HeaderValue::from_static("r"),
            )],
            remove: vec![HeaderName::from_static("x-drop")],
        };
        let destination = Destination {
            upstream_headers: &secret,
            route_headers: &rules,
            host: Host::Value(&HeaderValue::from_static("10.0.0.7:8080")),
        };
        rewrite_upstream_request(&mut req, &forwarding(true), &destination).expect("valid");
        for gone in ["x-api-key", "connection", "x-trace", "te", "x-drop"] {
            assert_eq!(value(&req, gone), None, "{gone}");
        }
        assert_eq!(value(&req, "x-gateway-secret"), Some("s3cret"));
        assert_eq!(value(&req, "x-route"), Some("r"));
        assert_eq!(value(&req, "x-forwarded-for"), Some("203.0.113.9"));
        assert_eq!(value(&req, "x-forwarded-proto"), Some("https"));
        assert_eq!(value(&req, "x-forwarded-host"), Some("api.example.com"));
        assert_eq!(value(&req, "x-request-id"), Some("req-1"));
        assert_eq!(value(&req, "host"), Some("10.0.0.7:8080"));
        assert_eq!(value(&req, "accept"), Some("*/*"));
    }

    #[test]
    fn a_trace_started_here_replaces_the_clients_and_its_tracestate() {
        let started = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let destination = Destination {
            upstream_headers: &[],
            route_headers: &HeaderRules::default(),
            host: Host::Keep,
        };
        let mut req = head(&[("traceparent", "garbage"), ("tracestate", "a=1")]);
        let starting = Forwarding {
            traceparent: Some(started),
            ..forwarding(false)
        };
        rewrite_upstream_request(&mut req, &starting, &destination).expect("valid");
        assert_eq!(value(&req, "traceparent"), Some(started));
        assert_eq!(value(&req, "tracestate"), None);
        // The client's own valid trace goes on untouched.
        let mut req = head(&[("traceparent", started), ("tracestate", "a=1")]);
        rewrite_upstream_request(&mut req, &forwarding(false), &destination).expect("valid");
        assert_eq!(value(&req, "traceparent"), Some(started));
        assert_eq!(value(&req, "tracestate"), Some("a=1"));
    }

    #[test]
    fn upgrades_keep_their_connection_header_and_preserve_host_keeps_host() {
        let mut req = head(&[
            ("host", "ws.example.com"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
        ]);
        let headers = req.clone();
        let upgrade = Forwarding {
            upgrade: is_upgrade_request(true, &headers),
            ..forwarding(false)
        };
        rewrite_upstream_request(&mut req, &upgrade, &no_destination()).expect("valid");
        assert_eq!(value(&req, "connection"), Some("upgrade"));
        assert_eq!(value(&req, "upgrade"), Some("websocket"));
        assert_eq!(value(&req, "host"), Some("ws.example.com"));
        assert_eq!(value(&req, "x-forwarded-proto"), Some("http"));
    }

    #[test]
    fn answers_lose_secrets_and_hop_by_hop_headers_and_carry_the_request_id() {
        let secret = HeaderName::from_static("x-gateway-secret");
        let mut resp = head(&[
            ("x-gateway-secret", "s3cret"),
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("x-server", "a"),
        ]);
        let rules = HeaderRules {
            set: vec![(
                HeaderName::from_static("x-served-by"),
                HeaderValue::from_static("gw"),
            )],
            remove: vec![HeaderName::from_static("x-server")],
        };
        rewrite_upstream_response(&mut resp, std::slice::from_ref(&secret), false, &rules)
            .expect("valid");
        let window = Window {
            allowed: true,
            limit: 10,
            remaining: 3,
            reset_ms: 4_500,
            retry_after_ms: 0,
        };
        stamp_answer(&mut resp, "req-9", Some(window)).expect("valid");
        for gone in ["x-gateway-secret", "connection", "keep-alive", "x-server"] {
            assert_eq!(value(&resp, gone), None, "{gone}");
        }
        assert_eq!(value(&resp, "x-served-by"), Some("gw"));
        assert_eq!(value(&resp, "x-request-id"), Some("req-9"));
        assert_eq!(value(&resp, "ratelimit-limit"), Some("10"));
        assert_eq!(value(&resp, "ratelimit-remaining"), Some("3"));
        assert_eq!(value(&resp, "ratelimit-reset"), Some("5"));
        // A 101 keeps `connection: upgrade` for the client.
        let mut switching = head(&[("connection", "upgrade"), ("upgrade", "websocket")]);
        rewrite_upstream_response(&mut switching, &[], true, &HeaderRules::default())
            .expect("valid");
        assert_eq!(value(&switching, "connection"), Some("upgrade"));
    }

    #[test]
    fn a_stored_answer_stripped_once_is_rewritten_as_the_upstream_one() {
        let secret = HeaderName::from_static("x-gateway-secret");
        let rules = HeaderRules {
            set: vec![(
                HeaderName::from_static("x-served-by"),
                HeaderValue::from_static("gw"),
            )],
            remove: vec![HeaderName::from_static("x-server")],
        };
        let upstream = head(&[
            ("x-gateway-secret", "s3cret"),
            ("connection", "keep-alive, x-hop"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("upgrade", "h2c"),
            ("x-server", "a"),
            ("etag", "\"v1\""),
            ("content-length", "5"),
        ]);
        let mut direct = upstream.clone();
        rewrite_upstream_response(&mut direct, std::slice::from_ref(&secret), false, &rules)
            .expect("valid");
        let mut stored = upstream;
        strip_hop_by_hop_response(&mut stored, false).expect("valid");
        // What is stored keeps what the config decides (and the validators).
        for kept in ["x-gateway-secret", "x-server", "etag", "content-length"] {
            assert!(stored.contains_key(kept), "{kept}");
        }
        rewrite_stored_response(&mut stored, std::slice::from_ref(&secret), &rules).expect("valid");
        assert_eq!(stored, direct);
    }

    #[test]
    fn an_upgrade_needs_both_upgrade_and_a_connection_listing_it() {
        let upgrade =
            |version_11, pairs: &[(&str, &str)]| is_upgrade_request(version_11, &head(pairs));
        assert!(upgrade(
            true,
            &[("upgrade", "websocket"), ("connection", "Upgrade")]
        ));
        assert!(upgrade(
            true,
            &[
                ("upgrade", "websocket"),
                ("connection", "keep-alive, UPGRADE")
            ]
        ));
        assert!(upgrade(
            true,
            &[
                ("upgrade", "websocket"),
                ("connection", "keep-alive"),
                ("connection", "upgrade")
            ]
        ));
        assert!(!upgrade(true, &[("upgrade", "websocket")]));
        assert!(!upgrade(
            true,
            &[("upgrade", "websocket"), ("connection", "upgrades")]
        ));
        assert!(!upgrade(true, &[("connection", "upgrade")]));
        assert!(!upgrade(
            false,
            &[("upgrade", "websocket"), ("connection", "upgrade")]
        ));
        // A lone `upgrade` arrives here already given `connection: Upgrade` by
        // Pingora: judged on the client's request, it is not passed on.
        let mut req = head(&[
            ("host", "a"),
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
        ]);
        rewrite_upstream_request(&mut req, &forwarding(false), &no_destination()).expect("valid");
        for gone in ["upgrade", "connection", "http2-settings"] {
            assert_eq!(value(&req, gone), None, "{gone}");
        }
    }

    #[test]
    fn client_address_claims_pass_only_from_a_trusted_proxy() {
        let trusted = nets(&["10.0.0.0/8"]);
        let from = |peer: &str| forwarded_for(peer.parse().expect("ip"), None, &trusted);
        assert!(from("10.1.2.3").peer_trusted);
        assert!(!from("203.0.113.9").peer_trusted);
        let claims = [
            ("host", "a"),
            ("forwarded", "for=6.6.6.6;proto=https"),
            ("x-real-ip", "6.6.6.6"),
        ];
        let mut req = head(&claims);
        rewrite_upstream_request(&mut req, &forwarding(false), &no_destination()).expect("valid");
        assert_eq!(value(&req, "forwarded"), None);
        assert_eq!(value(&req, "x-real-ip"), None);
        let mut req = head(&claims);
        let from_proxy = Forwarding {
            peer_trusted: true,
            ..forwarding(false)
        };
        rewrite_upstream_request(&mut req, &from_proxy, &no_destination()).expect("valid");
        assert_eq!(value(&req, "forwarded"), Some("for=6.6.6.6;proto=https"));
        assert_eq!(value(&req, "x-real-ip"), Some("6.6.6.6"));
    }

    #[test]
    fn a_repeated_equal_content_length_goes_upstream_once() {
        let mut req = head(&[
            ("host", "a"),
            ("content-length", "3"),
            ("content-length", "3"),
        ]);
        rewrite_upstream_request(&mut req, &forwarding(false), &no_destination()).expect("valid");
        let lengths: Vec<_> = req.get_all("content-length").iter().collect();
        assert_eq!(lengths, ["3"]);
    }

    #[test]
    fn answers_lose_what_their_connection_header_names_and_a_stray_upgrade() {
        let mut resp = head(&[
            ("connection", "x-internal, keep-alive"),
            ("connection", "Content-Length"),
            ("x-internal", "10.0.0.7"),
            ("keep-alive", "timeout=5"),
            ("upgrade", "h2c"),
            ("content-length", "2"),
            ("x-kept", "1"),
        ]);
        rewrite_upstream_response(&mut resp, &[], false, &HeaderRules::default()).expect("valid");
        for gone in ["connection", "x-internal", "keep-alive", "upgrade"] {
            assert_eq!(value(&resp, gone), None, "{gone}");
        }
        assert_eq!(value(&resp, "content-length"), Some("2"), "framing stays");
        assert_eq!(value(&resp, "x-kept"), Some("1"));
        // A 101 keeps what the switch needs, and only that.
        let mut switching = head(&[
            ("connection", "Upgrade, x-internal"),
            ("upgrade", "websocket"),
            ("x-internal", "1"),
            ("keep-alive", "timeout=5"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ]);
        rewrite_upstream_response(&mut switching, &[], true, &HeaderRules::default())
            .expect("valid");
        assert_eq!(value(&switching, "connection"), Some("upgrade"));
        assert_eq!(value(&switching, "upgrade"), Some("websocket"));
        assert_eq!(value(&switching, "x-internal"), None);
        assert_eq!(value(&switching, "keep-alive"), None);
        assert!(value(&switching, "sec-websocket-accept").is_some());
    }

    #[test]
    fn removal_finds_every_present_name_among_many() {
        // Many names (past 64, as a bit mask would hold), present ones spread
        // among them, one of them with two values: each one found and removed.
        let names: Vec<HeaderName> = (0..70)
            .map(|i| HeaderName::from_bytes(format!("x-secret-{i}").as_bytes()).expect("name"))
            .collect();
        let mut resp = head(&[
            ("x-secret-3", "a"),
            ("x-secret-66", "b"),
            ("x-secret-66", "c"),
            ("x-kept", "1"),
        ]);
        rewrite_upstream_response(&mut resp, &names, false, &HeaderRules::default())
            .expect("valid");
        assert_eq!(value(&resp, "x-secret-3"), None);
        assert_eq!(resp.get_all("x-secret-66").iter().count(), 0);
        assert_eq!(value(&resp, "x-kept"), Some("1"));
        assert_eq!(resp.len(), 1);
    }

    #[test]
    fn only_plain_chunked_framing_is_passed_on() {
        let plain = |pairs: &[(&str, &str)]| upstream_framing_is_plain(&head(pairs));
        assert!(plain(&[]));
        assert!(plain(&[("content-length", "3")]));
        assert!(plain(&[("transfer-encoding", "chunked")]));
        assert!(plain(&[("transfer-encoding", "Chunked")]));
        assert!(plain(&[("transfer-encoding", " chunked\t")]));
        for refused in [
            &[("transfer-encoding", "identity")][..],
            &[("transfer-encoding", "chunked, identity")],
            &[("transfer-encoding", "identity, chunked")],
            &[("transfer-encoding", "gzip, chunked")],
            &[("transfer-encoding", "xchunked")],
            &[("transfer-encoding", "")],
            &[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
        ] {
            assert!(!plain(refused), "{refused:?}");
        }
    }

    #[test]
    fn upstream_targets() {
        assert_eq!(
            upstream_target("/api/users/1", Some("a=1"), None, false),
            None
        );
        assert_eq!(
            upstream_target("/api/users/1", Some("a=1"), Some(1), false).as_deref(),
            Some("/users/1?a=1")
        );
        assert_eq!(
            upstream_target("/users", None, None, true).as_deref(),
            Some("/users")
        );
        assert_eq!(
            upstream_target("/api", None, Some(1), false).as_deref(),
            Some("/")
        );
    }

    #[test]
    fn request_ids() {
        assert!(is_valid_request_id(b"abc-123_X.y:z"));
        assert!(!is_valid_request_id(b""));
        assert!(!is_valid_request_id(&[b'a'; 129]));
        assert!(is_valid_request_id(&[b'a'; 128]));
        assert!(!is_valid_request_id(b"a b"));
        assert!(!is_valid_request_id(b"a\r\nx: y"));
        let id = new_request_id();
        assert!(is_valid_request_id(id.as_bytes()));
        assert_eq!(id.len(), 32);
        for value in [0u128, 1, 0xabc, u128::MAX, 0x0123_4567_89ab_cdef_u128 << 64] {
            let mut hex = String::new();
            push_hex(&mut hex, value, 32);
            assert_eq!(hex, format!("{value:032x}"));
        }
        let mut short = String::new();
        push_hex(&mut short, 0x1_0000_0000_0000_00ff, 16);
        assert_eq!(short, "00000000000000ff");
        assert_ne!(id, new_request_id());
    }
}
