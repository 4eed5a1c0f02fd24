//! What Triton's protocol extensions beside inference need, handed to both fronts: the model
//! repository (index, load, unload), the registered shared-memory regions, and the management
//! tokens that guard the calls that change what is served or what the gateway reads and
//! writes. Those calls follow the management API's rule: a token of the role they need, or,
//! with no token configured, a program on this machine.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::{self, ManagementTokens};
use crate::config::AdminRole;
use crate::core::repository::ModelRepository;
use crate::error::{GatewayError, quoted};
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

/// The config override of a repository load, from its parameters (name, and the value when it
/// is a string): `config`, Triton's `ModelConfig` in JSON. Files sent with the request are
/// refused: models come from the repository folder.
pub fn load_override<'a>(
    parameters: impl Iterator<Item = (&'a str, Option<&'a str>)>,
) -> Result<Option<&'a str>, GatewayError> {
    let mut config = None;
    for (key, value) in parameters {
        match (key, value) {
            ("config", Some(text)) => config = Some(text),
            ("config", None) => {
                return Err(GatewayError::invalid(
                    "the load parameter 'config' must be a string (the model's configuration \
                     in JSON)",
                ));
            }
            (file, _) if file.starts_with("file:") => {
                return Err(GatewayError::invalid(
                    "loading a model from files sent with the request is not supported; put \
                     them in the model repository",
                ));
            }
            (other, _) => {
                return Err(GatewayError::invalid(format!(
                    "unknown load parameter '{}'",
                    quoted(other)
                )));
            }
        }
    }
    Ok(config)
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
    // Clients of Triton's extensions send no content type; the origin checks stand for it.
    match tokens.authorize(&auth::Call::of(&request, needs, false), true) {
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
