//! The dashboard: one page and its scripts, embedded in the binary (no CDN; it works offline),
//! served at `/` on the management listener. The page holds no data: it reads everything from
//! the API with the operator's token, so the same rules guard both.

use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::{AdminState, management_call};
use crate::auth;
use crate::config::AdminRole;
use crate::error::GatewayError;

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_bytes!("dashboard/index.html"),
};

const ASSETS: &[Asset] = &[
    Asset {
        name: "dashboard.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("dashboard/dashboard.js"),
    },
    Asset {
        name: "dashboard.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("dashboard/dashboard.css"),
    },
    // uPlot 1.6.32 (MIT, vendor/uPlot.LICENSE), from the npm package's dist/.
    Asset {
        name: "uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("dashboard/vendor/uPlot.iife.min.js"),
    },
    Asset {
        name: "uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("dashboard/vendor/uPlot.min.css"),
    },
];

/// Scripts and styles from this origin only, no framing, no inline script: a model name or an
/// event's text can never run as code in the operator's browser.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
     form-action 'none'";

pub(super) async fn index(State(state): State<AdminState>, request: Request) -> Response {
    serve(&state, &request, &INDEX)
}

pub(super) async fn asset(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    match ASSETS.iter().find(|asset| asset.name == name) {
        Some(asset) => serve(&state, &request, asset),
        None => GatewayError::not_found("no such dashboard asset").into_response(),
    }
}

fn serve(state: &AdminState, request: &Request, asset: &Asset) -> Response {
    // Without tokens the API answers this machine only; the page follows the same rule.
    if state.open
        && let Err(refusal) = auth::local_only(&management_call(request, AdminRole::Read))
    {
        return refusal.into_response();
    }
    let mut response = asset.body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // A new binary brings new assets: always revalidate, never a stale script.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
