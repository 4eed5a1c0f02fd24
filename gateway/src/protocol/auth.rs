//! The inference API key, checked on both fronts before anything else runs.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::ApiKeys;
use crate::error::{ErrorKind, GatewayError};

/// HTTP: everything but the health endpoints needs a key, when keys are configured.
pub async fn require_http_key(
    State(keys): State<ApiKeys>,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path().starts_with("/v2/health/") || keys.admits(request.headers()) {
        return next.run(request).await;
    }
    GatewayError::new(
        ErrorKind::Unauthenticated,
        "an API key is required (Authorization: Bearer KEY or X-API-Key)",
    )
    .into_response()
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
    tonic::Status::from(GatewayError::new(
        ErrorKind::Unauthenticated,
        "an API key is required (authorization: Bearer KEY or x-api-key metadata)",
    ))
    .into_http::<axum::body::Body>()
}
