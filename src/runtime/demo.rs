//! `portcullis demo`: a user service and an order service, both refusing any
//! request without the gateway secret, with the gateway in front (SPEC §7).

use crate::core::config::{self, ConfigErrors};
use crate::core::reply::Reply;
use crate::runtime::server::{self, ProcessFlags};
use crate::tables::plan::Plan;
use crate::tables::Gateway;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use pingora_core::services::listening::Service;
use serde_json::{json, Value};
use std::net::{SocketAddr, TcpListener};

/// The demo consumer's API key (the demo binds loopback by default).
pub const DEMO_API_KEY: &str = "pk_demo_portcullis";
const DEMO_CONFIG: &str = include_str!("../../conf/demo.yaml");

const USERS: [(u64, &str, &str); 3] = [
    (1, "Ada Lovelace", "ada@example.com"),
    (2, "Alan Turing", "alan@example.com"),
    (3, "Grace Hopper", "grace@example.com"),
];
const ORDERS: [(u64, u64, &str, u64); 4] = [
    (1, 1, "mechanical keyboard", 12900),
    (2, 1, "27-inch monitor", 32900),
    (3, 2, "notebook", 450),
    (4, 3, "compiler manual", 5900),
];

/// Which demo service.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Users,
    Orders,
}

/// One demo service: answers JSON, 403 without the right `x-gateway-secret`.
pub struct DemoService {
    pub kind: Kind,
    pub secret: String,
}

fn json_response(status: StatusCode, body: Value) -> Response<Vec<u8>> {
    Reply::json_value(status.as_u16(), &body).into_response()
}

fn user(id: u64) -> Option<Value> {
    USERS
        .iter()
        .find(|u| u.0 == id)
        .map(|(id, name, email)| json!({"id": id, "name": name, "email": email}))
}

fn order_json(o: &(u64, u64, &str, u64)) -> Value {
    json!({"id": o.0, "user_id": o.1, "item": o.2, "total_cents": o.3})
}

impl DemoService {
    /// The answer to `path?query`, once the secret was checked.
    fn answer(&self, path: &str, query: Option<&str>) -> (StatusCode, Value) {
        let not_found = || (StatusCode::NOT_FOUND, json!({"error": "not_found"}));
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        match (self.kind, segments.as_slice()) {
            (Kind::Users, ["users"]) => (
                StatusCode::OK,
                Value::Array(USERS.iter().filter_map(|u| user(u.0)).collect()),
            ),
            (Kind::Users, ["users", id]) => match id.parse().ok().and_then(user) {
                Some(u) => (StatusCode::OK, u),
                None => not_found(),
            },
            (Kind::Orders, ["orders"]) => {
                let wanted = query
                    .into_iter()
                    .flat_map(|q| q.split('&'))
                    .find_map(|kv| kv.strip_prefix("user_id="))
                    .and_then(|v| v.parse::<u64>().ok());
                let list = ORDERS
                    .iter()
                    .filter(|o| wanted.is_none_or(|u| o.1 == u))
                    .map(order_json)
                    .collect();
                (StatusCode::OK, Value::Array(list))
            }
            (Kind::Orders, ["orders", id]) => {
                match id
                    .parse::<u64>()
                    .ok()
                    .and_then(|id| ORDERS.iter().find(|o| o.0 == id))
                {
                    Some(o) => (StatusCode::OK, order_json(o)),
                    None => not_found(),
                }
            }
            _ => not_found(),
        }
    }
}

#[async_trait]
impl ServeHttp for DemoService {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if req.uri.path() == "/healthz" {
            return json_response(StatusCode::OK, json!({"status": "ok"}));
        }
        let presented = req
            .headers
            .get("x-gateway-secret")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        let secret = self.secret.as_bytes();
        let authorised = presented.len() == secret.len() && openssl::memcmp::eq(presented, secret);
        if !authorised {
            return json_response(
                StatusCode::FORBIDDEN,
                json!({"error": "forbidden", "message": "requests must come through the gateway"}),
            );
        }
        let (status, body) = self.answer(req.uri.path(), req.uri.query());
        json_response(status, body)
    }
}

/// The demo's token issuer: one Ed25519 key made at start, its JWKS served
/// at [`JWKS_PATH`], and a ready-made access token signed by it.
pub struct DemoIssuer {
    jwks: Vec<u8>,
}

/// Where the demo issuer serves its key set.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// The audience the demo's tokens are for (`auth.jwt` of conf/demo.yaml).
pub const DEMO_AUDIENCE: &str = "demo-api";

impl DemoIssuer {
    /// A fresh key; returns the issuer and a token for `sub` valid 24 h.
    pub fn new(issuer: &str) -> Result<(DemoIssuer, String), String> {
        use jsonwebtoken::{jwk::Jwk, Algorithm, EncodingKey, Header};
        let cannot = |e: &dyn std::fmt::Display| format!("demo token key: {e}");
        let pkey = openssl::pkey::PKey::generate_ed25519().map_err(|e| cannot(&e))?;
        let der = pkey.private_key_to_pkcs8().map_err(|e| cannot(&e))?;
        let key = EncodingKey::from_ed_der(&der);
        let kid = "demo-1";
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::EdDSA).map_err(|e| cannot(&e))?;
        jwk.common.key_id = Some(kid.to_string());
        let jwks = serde_json::to_vec(&json!({ "keys": [jwk] })).map_err(|e| cannot(&e))?;
        let now = crate::tables::jwt::unix_now();
        let claims = json!({
            "iss": issuer,
            "sub": "demo-user",
            "aud": DEMO_AUDIENCE,
            "scope": "orders:read",
            "iat": now,
            "exp": now + 24 * 3600,
        });
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.to_string());
        let token = jsonwebtoken::encode(&header, &claims, &key).map_err(|e| cannot(&e))?;
        Ok((DemoIssuer { jwks }, token))
    }
}

#[async_trait]
impl ServeHttp for DemoIssuer {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        if session.req_header().uri.path() == JWKS_PATH {
            return Reply::json(200, self.jwks.clone()).into_response();
        }
        json_response(StatusCode::NOT_FOUND, json!({"error": "not_found"}))
    }
}

/// The first port from `start` up that is free on `ip` and not in `taken`.
fn next_free_port(ip: std::net::IpAddr, start: u16, taken: &[u16]) -> Option<u16> {
    (start..=u16::MAX)
        .filter(|p| !taken.contains(p))
        .find(|p| TcpListener::bind((ip, *p)).is_ok())
}

/// Runs the demo: two services on the next free ports after `listen`, the
/// gateway on `listen`, admin on `admin`. Returns when the server stops.
pub fn run(listen: SocketAddr, admin: SocketAddr) -> Result<(), String> {
    let ip = listen.ip();
    let users_port = next_free_port(ip, listen.port().saturating_add(1), &[admin.port()])
        .ok_or("no free port for the demo user service")?;
    let orders_port = next_free_port(ip, users_port.saturating_add(1), &[admin.port()])
        .ok_or("no free port for the demo order service")?;
    let issuer_port = next_free_port(ip, orders_port.saturating_add(1), &[admin.port()])
        .ok_or("no free port for the demo token issuer")?;
    let users = SocketAddr::new(ip, users_port);
    let orders = SocketAddr::new(ip, orders_port);
    let issuer_addr = SocketAddr::new(ip, issuer_port);
    let issuer = format!("http://{issuer_addr}/");
    let jwks_url = format!("http://{issuer_addr}{JWKS_PATH}");
    let (demo_issuer, token) = DemoIssuer::new(&issuer)?;
    let secret = format!("{:032x}", rand::random::<u128>());

    let env = |name: &str| -> Option<String> {
        match name {
            "DEMO_LISTEN" => Some(listen.to_string()),
            "DEMO_ADMIN" => Some(admin.to_string()),
            "DEMO_USERS" => Some(users.to_string()),
            "DEMO_ORDERS" => Some(orders.to_string()),
            "DEMO_API_KEY" => Some(DEMO_API_KEY.to_string()),
            "GATEWAY_SECRET" => Some(secret.clone()),
            "DEMO_ISSUER" => Some(issuer.clone()),
            "DEMO_JWKS_URL" => Some(jwks_url.clone()),
            _ => None,
        }
    };
    let file = "conf/demo.yaml (built in)";
    let config =
        config::load_str(DEMO_CONFIG, file, &env).map_err(|e: ConfigErrors| e.to_string())?;
    let gateway = Gateway::build(&config, file).map_err(|e| e.to_string())?;
    crate::telemetry::process_log::init_logging(&config);
    let plan = Plan::from_config(&config);
    server::check_addresses_free(&plan)?;

    let mut assembled = server::assemble(plan, gateway, ProcessFlags::default(), None);
    for (name, kind, addr) in [
        ("demo-users", Kind::Users, users),
        ("demo-orders", Kind::Orders, orders),
    ] {
        let mut service = Service::new(
            name.to_string(),
            DemoService {
                kind,
                secret: secret.clone(),
            },
        );
        service.add_tcp(&addr.to_string());
        assembled.server.add_service(service);
    }
    let mut idp = Service::new("demo-issuer".to_string(), demo_issuer);
    idp.add_tcp(&issuer_addr.to_string());
    assembled.server.add_service(idp);

    let gw = format!("http://{listen}");
    println!(
        "Portcullis demo
  gateway        {gw}
  admin          http://{admin}   (/metrics, /healthz, /readyz, /openapi.json)
  API docs       http://{admin}/docs   (and {gw}/docs; Authorize with the key, then try it out)
  user service   http://{users}   (refuses requests without the gateway secret)
  order service  http://{orders}
  token issuer   {issuer}   (JWKS: {jwks_url})
  API key        {DEMO_API_KEY}
  bearer token   {token}
                 (a JWT signed by the demo issuer's Ed25519 key: sub demo-user, scope orders:read, valid 24 h)

Try:
  curl -i {gw}/users/1 -H 'x-api-key: {DEMO_API_KEY}'
  curl -i '{gw}/orders?user_id=1' -H 'x-api-key: {DEMO_API_KEY}'
  curl -s {gw}/overview/users/1 -H 'x-api-key: {DEMO_API_KEY}'   # users + orders in one call
  curl -i '{gw}/orders?user_id=1' -H 'authorization: Bearer {token}'   # the token instead of the key
  curl -i {gw}/users/1                                  # 401 missing_api_key
  curl -i {gw}/users/1 -H 'x-api-key: wrong'            # 401 invalid_api_key
  curl -i http://{users}/users/1                        # 403: the backend wants the gateway secret
  curl -s http://{admin}/metrics | grep portcullis_requests_total
Access log lines follow on stdout; Ctrl-C stops.
"
    );
    server::run(assembled);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_config_loads_and_compiles() {
        let env = |name: &str| -> Option<String> {
            Some(match name {
                "DEMO_LISTEN" => "127.0.0.1:8000".into(),
                "DEMO_ADMIN" => "127.0.0.1:9100".into(),
                "DEMO_USERS" => "127.0.0.1:8001".into(),
                "DEMO_ORDERS" => "127.0.0.1:8002".into(),
                "DEMO_ISSUER" => "http://127.0.0.1:8003/".into(),
                "DEMO_JWKS_URL" => "http://127.0.0.1:8003/.well-known/jwks.json".into(),
                _ => "x".into(),
            })
        };
        let config = config::load_str(DEMO_CONFIG, "demo.yaml", &env).expect("valid demo config");
        Gateway::build(&config, "demo.yaml").expect("demo config compiles");
    }

    #[test]
    fn services_answer_their_paths() {
        let users = DemoService {
            kind: Kind::Users,
            secret: "s".into(),
        };
        assert_eq!(users.answer("/users/1", None).1["name"], "Ada Lovelace");
        assert_eq!(users.answer("/users/9", None).0, StatusCode::NOT_FOUND);
        let orders = DemoService {
            kind: Kind::Orders,
            secret: "s".into(),
        };
        let (status, list) = orders.answer("/orders", Some("user_id=1"));
        assert_eq!(status, StatusCode::OK);
        assert_eq!(list.as_array().map(Vec::len), Some(2));
        assert_eq!(orders.answer("/orders/3", None).1["user_id"], 2);
        // The seed scenario a user of other gateways tries first.
        assert_eq!(orders.answer("/orders/1", None).0, StatusCode::OK);
    }
}
