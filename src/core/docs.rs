//! The API docs page (SPEC §8.4): Swagger UI over the gateway's OpenAPI
//! document, its assets built into the binary (assets/swagger-ui, pinned,
//! with its licence), served under one base path: `/docs` on the admin
//! listener, `docs.path` on the public one. Pure: a path in, what to answer out.

use super::reply::Reply;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderName, HeaderValue};

const BUNDLE: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-ui-bundle.js");
const CSS: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-ui.css");
const INIT: &[u8] = include_bytes!("../../assets/docs/init.js");
const PAGE: &str = include_str!("../../assets/docs/index.html");

/// Where the admin listener serves the page.
pub const ADMIN_BASE: &str = "/docs";

/// The page loads nothing from another host and runs no inline script;
/// "try it out" may call the public listener, which is another origin when
/// the page comes from the admin listener.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; font-src 'self' data:; connect-src 'self' http: https:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// What a path under the docs' base asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    /// The HTML page (`{base}`, `{base}/`, `{base}/index.html`).
    Page,
    /// A built-in asset: its name under the base.
    Asset(&'static str),
    /// `{base}/openapi.json`: the caller makes it from the tables in force.
    OpenApi,
    /// Anything else under the base: 404.
    Unknown,
}

/// What `path` asks of the docs served at `base` (no trailing `/`); `None`
/// when it is not the base or below it.
pub fn item(base: &str, path: &str) -> Option<Item> {
    let rest = path.strip_prefix(base)?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None; // `/docsX` is not under `/docs`
    }
    Some(match rest {
        "" | "/" | "/index.html" => Item::Page,
        "/swagger-ui-bundle.js" => Item::Asset("swagger-ui-bundle.js"),
        "/swagger-ui.css" => Item::Asset("swagger-ui.css"),
        "/init.js" => Item::Asset("init.js"),
        "/openapi.json" => Item::OpenApi,
        _ => Item::Unknown,
    })
}

/// The page or an asset; `None` for [`Item::OpenApi`] and [`Item::Unknown`].
pub fn reply(base: &str, item: Item) -> Option<Reply> {
    let (content_type, body, cache): (&str, bytes::Bytes, &str) = match item {
        Item::Page => (
            "text/html; charset=utf-8",
            PAGE.replace("{base}", base).into(),
            "no-cache",
        ),
        Item::Asset("swagger-ui-bundle.js") => (
            "text/javascript; charset=utf-8",
            bytes::Bytes::from_static(BUNDLE),
            "public, max-age=3600",
        ),
        Item::Asset("swagger-ui.css") => (
            "text/css; charset=utf-8",
            bytes::Bytes::from_static(CSS),
            "public, max-age=3600",
        ),
        Item::Asset("init.js") => (
            "text/javascript; charset=utf-8",
            bytes::Bytes::from_static(INIT),
            "no-cache",
        ),
        Item::Asset(_) | Item::OpenApi | Item::Unknown => return None,
    };
    let mut reply = Reply::new(200)
        .header(CONTENT_TYPE, HeaderValue::from_static(content_type))
        .header(CACHE_CONTROL, HeaderValue::from_static(cache))
        .header(
            HeaderName::from_static("x-content-type-options"),
            HeaderValue::from_static("nosniff"),
        )
        .body(body);
    if item == Item::Page {
        reply = reply.header(
            HeaderName::from_static("content-security-policy"),
            HeaderValue::from_static(POLICY),
        );
    }
    Some(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_under_the_base_name_the_page_and_its_assets() {
        assert_eq!(item("/docs", "/docs"), Some(Item::Page));
        assert_eq!(item("/docs", "/docs/"), Some(Item::Page));
        assert_eq!(item("/docs", "/docs/openapi.json"), Some(Item::OpenApi));
        assert_eq!(
            item("/docs", "/docs/swagger-ui.css"),
            Some(Item::Asset("swagger-ui.css"))
        );
        assert_eq!(item("/docs", "/docs/other"), Some(Item::Unknown));
        assert_eq!(item("/docs", "/docsX"), None);
        assert_eq!(item("/docs", "/users"), None);
        assert_eq!(
            item("/api/docs", "/api/docs/init.js"),
            Some(Item::Asset("init.js"))
        );
    }

    #[test]
    fn the_page_loads_its_assets_from_its_own_base_only() {
        let page = reply("/api/docs", Item::Page).expect("the page");
        let html = String::from_utf8(page.body.to_vec()).expect("utf-8");
        assert!(
            html.contains("src=\"/api/docs/swagger-ui-bundle.js\""),
            "{html}"
        );
        assert!(html.contains("href=\"/api/docs/swagger-ui.css\""), "{html}");
        assert!(!html.contains("http://") && !html.contains("https://") && !html.contains("//cdn"));
        let csp = page
            .headers
            .iter()
            .find(|(n, _)| n == "content-security-policy")
            .map(|(_, v)| v.to_str().unwrap_or_default().to_string())
            .unwrap_or_default();
        assert!(csp.contains("script-src 'self'"), "{csp}");
        let bundle = reply("/docs", Item::Asset("swagger-ui-bundle.js")).expect("bundle");
        assert!(bundle.body.len() > 1_000_000, "the whole Swagger UI bundle");
        assert!(reply("/docs", Item::Unknown).is_none());
        let init = String::from_utf8(INIT.to_vec()).expect("utf-8");
        assert!(
            init.contains("validatorUrl: null"),
            "no badge from validator.swagger.io"
        );
    }
}
