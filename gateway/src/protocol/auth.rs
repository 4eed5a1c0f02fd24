//! The inference API key, checked on both fronts before anything else runs; in a cluster, a
//! peer's forward proves itself with its node credential instead, as the node that forwarded
//! it checked the client's key (client credentials never travel between nodes).

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::{ApiKeys, Caller, NODE_CREDENTIAL, NodeKey, unix_ms};
use crate::core::forward::FORWARDED_FROM;
use crate::error::{ErrorKind, GatewayError};

/// Who may call the inference API: clients with a key (when keys are configured), and the
/// other nodes of this gateway's cluster.
#[derive(Clone, Default)]
pub struct InferenceAuth {
    pub keys: ApiKeys,
    /// The cluster's key; `None` outside a cluster, where a request that claims to come from a
    /// node is refused.
    pub nodes: Option<NodeKey>,
}

impl InferenceAuth {
    /// Who calls: a client with a key (a tenant, or a configured key), or a node with a valid
    /// credential (whose node checked the client's key and limits); otherwise the reason.
    pub(crate) fn admits(
        &self,
        headers: &HeaderMap,
        key_required: &'static str,
    ) -> Result<Caller, GatewayError> {
        let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
        let (node, credential) = (text(FORWARDED_FROM), text(NODE_CREDENTIAL));
        if headers.get(FORWARDED_FROM).is_none() && headers.get(NODE_CREDENTIAL).is_none() {
            return self
                .keys
                .identify(headers)
                .ok_or_else(|| GatewayError::new(ErrorKind::Unauthenticated, key_required));
        }
        match (&self.nodes, node, credential) {
            (Some(key), Some(node), Some(credential))
                if key.verify(node, credential, unix_ms()) =>
            {
                Ok(Caller::Peer)
            }
            _ => Err(GatewayError::new(
                ErrorKind::Unauthenticated,
                format!(
                    "the request says node '{}' of a cluster forwarded it, but carries no valid \
                     node credential ({FORWARDED_FROM} is for the gateway's own nodes)",
                    crate::error::quoted(node.unwrap_or_default())
                ),
            )),
        }
    }
}

/// gRPC's refusal of a call without a key.
pub(crate) const GRPC_KEY_REQUIRED: &str =
    "an API key is required (authorization: Bearer KEY or x-api-key metadata)";

/// HTTP: everything but the health endpoints needs a key, when keys are configured.
pub async fn require_http_key(
    State(auth): State<InferenceAuth>,
    mut request: Request,
    next: Next,
) -> Response {
    if request.uri().path().starts_with("/v2/health/") {
        return next.run(request).await;
    }
    match auth.admits(
        request.headers(),
        "an API key is required (Authorization: Bearer KEY or X-API-Key)",
    ) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(refusal) => refusal.into_response(),
    }
}

/// gRPC: every call but liveness, readiness and health checks needs a key, when keys are
/// configured; a refusal is UNAUTHENTICATED.
pub async fn require_grpc_key(
    State(auth): State<InferenceAuth>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let open = path.starts_with("/grpc.health.v1.")
        || path.ends_with("/ServerLive")
        || path.ends_with("/ServerReady");
    if open {
        return next.run(request).await;
    }
    match auth.admits(request.headers(), GRPC_KEY_REQUIRED) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(refusal) => tonic::Status::from(refusal).into_http::<axum::body::Body>(),
    }
}
