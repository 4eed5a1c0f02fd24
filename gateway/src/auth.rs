//! Keys and tokens, kept as SHA-256 digests and compared in constant time; the optional API
//! key of the inference endpoints (HTTP and gRPC).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

pub type Sha256Digest = [u8; 32];

pub fn digest(secret: &str) -> Sha256Digest {
    Sha256::digest(secret.as_bytes()).into()
}

/// Parses a SHA-256 digest written as 64 hex digits.
pub fn decode_hex(text: &str) -> Option<Sha256Digest> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (index, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(index * 2..index * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Compares digests in time that does not depend on where they differ.
pub fn same_digest(a: &Sha256Digest, b: &Sha256Digest) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The secret a request presents: `Authorization: Bearer ...` or `X-API-Key: ...` (as HTTP
/// headers or gRPC metadata).
pub fn presented_secret(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .or_else(|| {
            headers
                .get("x-api-key")
                .and_then(|value| value.to_str().ok())
        })
        .map(str::trim)
}

/// The inference API's keys; none means the API is open.
#[derive(Clone, Default)]
pub struct ApiKeys(Arc<Vec<Sha256Digest>>);

impl ApiKeys {
    /// From configured digests (hex) and, if set, the plain key in `SWITCHYARD_API_KEY`.
    pub fn new(configured: &[String]) -> ApiKeys {
        let mut keys: Vec<Sha256Digest> = configured
            .iter()
            .filter_map(|hex| {
                let parsed = decode_hex(hex);
                if parsed.is_none() {
                    tracing::error!("ignoring an API key whose sha256 is not 64 hex digits");
                }
                parsed
            })
            .collect();
        if let Ok(key) = std::env::var("SWITCHYARD_API_KEY")
            && !key.is_empty()
        {
            keys.push(digest(&key));
        }
        ApiKeys(Arc::new(keys))
    }

    fn admits(&self, headers: &HeaderMap) -> bool {
        if self.0.is_empty() {
            return true;
        }
        presented_secret(headers)
            .map(digest)
            .is_some_and(|presented| self.0.iter().any(|key| same_digest(key, &presented)))
    }
}

/// HTTP: everything but the health endpoints needs a key, when keys are configured.
pub async fn require_http_key(
    State(keys): State<ApiKeys>,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path().starts_with("/v2/health/") || keys.admits(request.headers()) {
        return next.run(request).await;
    }
    let mut response = (
        StatusCode::UNAUTHORIZED,
        axum::Json(serde_json::json!({"error": "an API key is required (Authorization: Bearer KEY or X-API-Key)"})),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// gRPC: every call but liveness, readiness and health checks needs a key, when keys are
/// configured; a refusal is UNAUTHENTICATED.
pub async fn require_grpc_key(
    State(keys): State<ApiKeys>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let open = path.starts_with("/grpc.health.v1.")
        || path.ends_with("/ServerLive")
        || path.ends_with("/ServerReady");
    if open || keys.admits(request.headers()) {
        return next.run(request).await;
    }
    tonic::Status::unauthenticated(
        "an API key is required (authorization: Bearer KEY or x-api-key metadata)",
    )
    .into_http::<axum::body::Body>()
}
