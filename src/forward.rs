//! The forwarding rules of SPEC §4: who the client is, what `x-forwarded-for`
//! becomes, which request id is kept, which headers are hop-by-hop. Pure logic.

use http::header::{self, HeaderName};
use ipnet::IpNet;
use std::fmt::Write as _;
use std::net::IpAddr;

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
/// `upgrade` is absent: the proxy needs it to pass WebSocket upgrades through.
/// Names, not strings: removing by `&str` parses the name on every request.
pub const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::PROXY_AUTHORIZATION,
];

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
}

impl Forwarded {
    /// The peer alone: one formatting serves as the client's text and the header.
    fn peer(peer: IpAddr) -> Self {
        let text = peer.to_string();
        Forwarded {
            client: peer,
            client_text: text.clone(),
            header: text,
        }
    }
}

/// The client and the `x-forwarded-for` to send upstream.
///
/// The TCP peer is the client unless it is a trusted proxy; then the incoming
/// `x-forwarded-for` is believed, the client is its rightmost untrusted address,
/// and the peer is appended to it. Otherwise the header is replaced.
pub fn forwarded_for(peer: IpAddr, incoming: Option<&str>, trusted: &[IpNet]) -> Forwarded {
    let believed = incoming.filter(|_| is_trusted(&peer, trusted));
    let Some(chain) = believed else {
        return Forwarded::peer(peer);
    };
    let hops: Option<Vec<IpAddr>> = chain
        .split(',')
        .map(|h| h.trim().parse::<IpAddr>().ok())
        .collect();
    match hops {
        // An unparsable chain cannot be believed: start a new one.
        None => Forwarded::peer(peer),
        Some(hops) if hops.is_empty() => Forwarded::peer(peer),
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
    format!("{:032x}", rand::random::<u128>())
}

/// Header names listed in a `connection` header, which are hop-by-hop too.
pub fn connection_listed(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
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
        } = forwarded_for(peer, Some("1.2.3.4"), &nets(&["10.0.0.0/8"]));
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
        } = forwarded_for(peer, Some("1.2.3.4, 198.51.100.7, 10.0.0.5"), &trusted);
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
        assert_ne!(id, new_request_id());
    }
}
