//! `GET /`: the status page — one HTML file, one style sheet and one
//! script, embedded in the binary (no build step, nothing fetched from
//! elsewhere), served when `api.status_page = true` (the default).
//!
//! The page itself holds nothing from the store: once it has a key it
//! reads `GET /api/status` and `POST /api/data/query` like any client,
//! with the key in `X-API-Key` (never in a URL), and renders every value
//! with `textContent`. The answers here carry a Content-Security-Policy
//! that allows only this origin's script and style (no inline script or
//! style, no `eval`, no frames, no other hosts), `nosniff`, and
//! `no-referrer`.

use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::AppState;

const INDEX_HTML: &str = include_str!("../status_page/index.html");
const APP_CSS: &str = include_str!("../status_page/app.css");
const APP_JS: &str = include_str!("../status_page/app.js");

/// Where the page's script and style are served.
pub const SCRIPT_PATH: &str = "/status-page/app.js";
pub const STYLE_PATH: &str = "/status-page/app.css";

/// Same origin only; nothing inline; no plugins, frames or `<base>`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page's routes, added to the API router when `api.status_page`.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            SCRIPT_PATH,
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            STYLE_PATH,
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let h = |v: &'static str| HeaderValue::from_static(v);
    (
        [
            (header::CONTENT_TYPE, h(content_type)),
            (header::CONTENT_SECURITY_POLICY, h(CONTENT_SECURITY_POLICY)),
            (header::X_CONTENT_TYPE_OPTIONS, h("nosniff")),
            (header::X_FRAME_OPTIONS, h("DENY")),
            (header::REFERRER_POLICY, h("no-referrer")),
            // Small and embedded: always asked again, so an upgrade shows.
            (header::CACHE_CONTROL, h("no-cache")),
            (
                HeaderName::from_static("cross-origin-opener-policy"),
                h("same-origin"),
            ),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No inline script or style can exist for the policy to allow: the
    /// HTML has no `<script>` body, no `style` attribute, no `on…` handler.
    #[test]
    fn the_page_has_nothing_inline() {
        let html = INDEX_HTML.to_ascii_lowercase();
        assert!(html.contains(&format!("<script src=\"{SCRIPT_PATH}\" defer></script>")));
        assert!(html.contains(&format!("href=\"{STYLE_PATH}\"")));
        assert_eq!(html.matches("<script").count(), 1);
        assert!(!html.contains("<style"));
        assert!(!html.contains(" style="));
        let handler = html.match_indices(" on").any(|(i, _)| {
            let rest = &html[i + 3..];
            let name = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            name > 0 && rest[name..].trim_start().starts_with('=')
        });
        assert!(!handler, "an inline event handler");
        assert!(!html.contains("http://") && !html.contains("https://"));
    }

    /// Store values reach the page as text only.
    #[test]
    fn the_script_never_writes_markup() {
        for bad in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!APP_JS.contains(bad), "app.js uses {bad}");
        }
        assert!(
            !APP_JS.contains("localStorage"),
            "the key stays in sessionStorage"
        );
        assert!(!APP_JS.contains("?apiKey") && !APP_JS.contains("&apiKey"));
    }

    #[test]
    fn the_assets_stay_small() {
        let total = INDEX_HTML.len() + APP_CSS.len() + APP_JS.len();
        assert!(total <= 64 * 1024, "{total} bytes");
    }
}
