//! Decoding of the scalar types the config borrows from std, `http` and `ipnet`.

use super::decode::{Cx, Decode, Table};
use super::yaml::Node;
use http::{HeaderName, HeaderValue, Method};
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};

impl Decode for SocketAddr {
    fn decode(cx: &mut Cx<'_>, node: &Node) -> Option<Self> {
        cx.parsed(node, "an address like \"127.0.0.1:8000\"", |s| {
            s.parse().ok()
        })
    }
}

/// A CIDR block; a bare address is a block of one.
impl Decode for IpNet {
    fn decode(cx: &mut Cx<'_>, node: &Node) -> Option<Self> {
        cx.parsed(node, "a CIDR block like \"10.0.0.0/8\"", |s| {
            s.parse::<IpNet>()
                .ok()
                .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
        })
    }
}

impl Decode for HeaderName {
    fn decode(cx: &mut Cx<'_>, node: &Node) -> Option<Self> {
        cx.parsed(node, "a header name", |s| {
            HeaderName::from_bytes(s.to_ascii_lowercase().as_bytes()).ok()
        })
    }
}

impl Decode for HeaderValue {
    fn decode(cx: &mut Cx<'_>, node: &Node) -> Option<Self> {
        // Never echo the value: it is often a secret.
        let value = cx.string(node)?;
        match HeaderValue::from_str(&value) {
            Ok(v) => Some(v),
            Err(_) => {
                cx.error(
                    node.mark,
                    "not a valid header value (control characters or non-ASCII text)",
                );
                None
            }
        }
    }
}

/// An HTTP method: an upper-case token such as GET.
impl Decode for Method {
    fn decode(cx: &mut Cx<'_>, node: &Node) -> Option<Self> {
        cx.parsed(node, "an upper-case HTTP method like \"GET\"", |s| {
            let token = !s.is_empty() && s.bytes().all(|b| b.is_ascii_uppercase() || b == b'-');
            token
                .then(|| Method::from_bytes(s.as_bytes()).ok())
                .flatten()
        })
    }
}

/// Headers to set: a mapping from header names to values, in file order.
#[derive(Debug, Clone, Default)]
pub struct HeaderList(pub Vec<(HeaderName, HeaderValue)>);

impl Decode for HeaderList {
    fn decode(cx: &mut Cx<'_>, node: &Node) -> Option<Self> {
        let table = Table::<HeaderValue>::decode(cx, node)?;
        let mut out = Vec::with_capacity(table.0.len());
        let mut ok = true;
        for (name, value) in table.0 {
            match HeaderName::from_bytes(name.value.to_ascii_lowercase().as_bytes()) {
                Ok(header) => out.push((header, value)),
                Err(_) => {
                    cx.at_key(&name.value, |cx| {
                        cx.error(name.mark, "not a valid header name")
                    });
                    ok = false;
                }
            }
        }
        ok.then_some(HeaderList(out))
    }
}
