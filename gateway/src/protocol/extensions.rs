//! What Triton's protocol extensions beside inference need, handed to both fronts: the model
//! repository (index, load, unload), the registered shared-memory regions, and the management
//! tokens that guard the calls that change what is served or what the gateway reads and
//! writes. Those calls follow the management API's rule: a token of the role they need, or,
//! with no token configured, a program on this machine.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::{self, ManagementTokens};
use crate::config::AdminRole;
use crate::core::repository::ModelRepository;
use crate::protocol::shared_memory::SharedMemory;

pub struct Extensions {
    pub repository: Arc<dyn ModelRepository>,
    pub shared_memory: Arc<SharedMemory>,
    pub tokens: ManagementTokens,
}

/// The role a call needs, for the calls of the repository and shared-memory extensions
/// (`None` for the others): reading their state needs a reader, changing it a writer.
fn needs(path: &str) -> Option<AdminRole> {
    let http_write = ["/load", "/unload", "/register", "/unregister"];
    if path.starts_with("/v2/repository/") {
        let index = path == "/v2/repository/index";
        return Some(if index {
            AdminRole::Read
        } else {
            AdminRole::Write
        });
    }
    if path.starts_with("/v2/systemsharedmemory") || path.starts_with("/v2/cudasharedmemory") {
        let writes = http_write.iter().any(|suffix| path.ends_with(suffix));
        return Some(if writes {
            AdminRole::Write
        } else {
            AdminRole::Read
        });
    }
    let method = path.strip_prefix("/inference.GRPCInferenceService/")?;
    match method {
        "RepositoryIndex" | "SystemSharedMemoryStatus" | "CudaSharedMemoryStatus" => {
            Some(AdminRole::Read)
        }
        "RepositoryModelLoad"
        | "RepositoryModelUnload"
        | "SystemSharedMemoryRegister"
        | "SystemSharedMemoryUnregister"
        | "CudaSharedMemoryRegister"
        | "CudaSharedMemoryUnregister" => Some(AdminRole::Write),
        _ => None,
    }
}

/// Who makes a call of the extensions (for the audit log), put in the request's extensions.
#[derive(Clone)]
pub struct Actor(pub String);

/// Checks the calls of the repository and shared-memory extensions on both fronts (HTTP
/// answers in its error form, gRPC with a status), and lets the others through.
pub async fn require_management(
    State(tokens): State<ManagementTokens>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(needs) = needs(request.uri().path()) else {
        return next.run(request).await;
    };
    let grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc"));
    let call = auth::Call {
        method: request.method(),
        uri: request.uri(),
        headers: request.headers(),
        peer: request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| *peer),
        needs,
        json_writes: false,
    };
    match tokens.authorize(&call, true) {
        Ok(actor) => {
            request.extensions_mut().insert(Actor(actor));
            next.run(request).await
        }
        Err(refusal) if grpc => tonic::Status::from(refusal).into_http::<axum::body::Body>(),
        Err(refusal) => refusal.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_calls_that_change_what_is_served_need_a_writer() {
        for (path, role) in [
            ("/v2/repository/index", Some(AdminRole::Read)),
            ("/v2/repository/models/m/load", Some(AdminRole::Write)),
            ("/v2/repository/models/m/unload", Some(AdminRole::Write)),
            ("/v2/systemsharedmemory/status", Some(AdminRole::Read)),
            (
                "/v2/systemsharedmemory/region/r/status",
                Some(AdminRole::Read),
            ),
            (
                "/v2/systemsharedmemory/region/r/register",
                Some(AdminRole::Write),
            ),
            ("/v2/systemsharedmemory/unregister", Some(AdminRole::Write)),
            (
                "/inference.GRPCInferenceService/RepositoryModelLoad",
                Some(AdminRole::Write),
            ),
            (
                "/inference.GRPCInferenceService/SystemSharedMemoryStatus",
                Some(AdminRole::Read),
            ),
            ("/inference.GRPCInferenceService/ModelInfer", None),
            ("/v2/models/m/infer", None),
        ] {
            assert_eq!(needs(path), role, "{path}");
        }
    }
}
