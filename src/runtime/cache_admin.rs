//! The response cache's operator side (SPEC §8.2): `POST /cache/purge` on the
//! admin listener, and what a reload keeps.

use crate::core::reply::Reply;
use crate::proxy::cache;
use crate::tables::Gateway;
use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

/// The purge request's body: a route, and optionally one path of it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Purge {
    route: String,
    path: Option<String>,
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response<Vec<u8>> {
    Reply::json_value(status.as_u16(), &body).into_response()
}

fn refuse(status: StatusCode, code: &str, message: &str) -> Response<Vec<u8>> {
    answer(status, json!({"error": code, "message": message}))
}

/// `POST /cache/purge` with `{"route": R}` or `{"route": R, "path": P}`:
/// drops the route's entries (of that path: every query string, consumer and
/// variant of it) and answers 200 `{"purged": N}`.
pub fn purge(gateway: &Gateway, body: &[u8]) -> Response<Vec<u8>> {
    let Ok(purge) = serde_json::from_slice::<Purge>(body) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            r#"expected {"route": "name"} or {"route": "name", "path": "/path"}"#,
        );
    };
    let Some(route) = gateway.routes.iter().find(|r| r.name == purge.route) else {
        return refuse(
            StatusCode::NOT_FOUND,
            "unknown_route",
            "no route has that name",
        );
    };
    if route.cache.is_none() {
        return refuse(
            StatusCode::NOT_FOUND,
            "route_not_cached",
            "that route has no `cache`",
        );
    }
    let purged = cache::store().map_or(0, |s| s.purge(&route.name, purge.path.as_deref()));
    answer(StatusCode::OK, json!({ "purged": purged }))
}

/// On reload: the entries of routes that are gone, or whose `cache` settings
/// changed, are dropped; the others' are kept.
pub fn drop_changed_routes(previous: &Gateway, next: &Gateway) {
    let Some(store) = cache::store() else { return };
    for old in previous.routes.iter().filter(|r| r.cache.is_some()) {
        let kept = next.routes.iter().any(|new| {
            new.name == old.name
                && match (&new.cache, &old.cache) {
                    (Some(n), Some(o)) => n.policy == o.policy,
                    _ => false,
                }
        });
        if !kept {
            let dropped = store.purge(&old.name, None);
            log::info!(
                "reload: the cache settings of route {:?} changed: {dropped} entries dropped",
                old.name
            );
        }
    }
}
