//! Models, versions and their scores.

use std::path::PathBuf;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use switchyard_registry::{NewModel, NewScores, NewVersion, VersionState};

use super::api::{
    ModelCreated, ModelList, Revision, ScoreList, ServedModel, ServedVersion, VersionCreated,
    VersionList, VersionRemoved,
};
use super::{Actor, AdminState, ApiResult, bad_request, ok, parse};
use crate::control::import::version_settings;
use crate::control::repository::ModelToml;
use crate::control::runtimes;
use crate::core::Gateway;
use crate::error::GatewayError;

/// What this gateway process is doing with a version, next to the registry's record.
pub(super) fn serving_state(gateway: &Gateway, model: &str, label: &str) -> Option<String> {
    let table = gateway.snapshot();
    let entry = table.model(model).ok()?;
    let version = entry.versions.iter().find(|v| &*v.label == label)?;
    Some(version.status.name().to_owned())
}

/// List models with their versions, traffic and aliases.
#[utoipa::path(
    get,
    path = "/v1/models",
    responses((status = 200, description = "success", body = super::api::ModelList))
)]
pub(super) async fn list_models(State(state): State<AdminState>) -> ApiResult {
    let snapshot = state.store.snapshot().await?;
    ok(
        StatusCode::OK,
        ModelList {
            revision: snapshot.revision,
            models: snapshot.models,
        },
    )
}

/// Create a model.
#[utoipa::path(
    post,
    path = "/v1/models",
    request_body = switchyard_registry::NewModel,
    responses((status = 201, description = "created", body = super::api::ModelCreated), (status = 400, response = super::openapi::ErrorResponse), (status = 409, response = super::openapi::ErrorResponse))
)]
pub(super) async fn create_model(
    State(state): State<AdminState>,
    axum::Extension(actor): axum::Extension<Actor>,
    body: Bytes,
) -> ApiResult {
    let model: NewModel = parse(&body)?;
    let name = model.name.clone();
    let revision = state.store.create_model(&actor.0, model).await?;
    let record = state.store.model(&name).await?;
    ok(
        StatusCode::CREATED,
        ModelCreated {
            revision,
            model: record,
        },
    )
}

/// A model with its versions (and how this gateway serves each), traffic and aliases.
#[utoipa::path(
    get,
    path = "/v1/models/{m}",
    params(("m" = String, Path, description = "the model", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")),
    responses((status = 200, description = "success", body = super::api::ServedModel), (status = 404, response = super::openapi::ErrorResponse))
)]
pub(super) async fn get_model(
    State(state): State<AdminState>,
    Path(model): Path<String>,
) -> ApiResult {
    let record = state.store.model(&model).await?;
    let on_nodes = state.store.node_versions().await?;
    let versions = record
        .versions
        .into_iter()
        .map(|version| {
            // In a cluster: what each node does with it (see /v1/cluster for their liveness).
            let nodes = on_nodes
                .iter()
                .filter(|v| v.model == model && v.version == version.label)
                .cloned()
                .collect();
            ServedVersion {
                serving: serving_state(&state.gateway, &model, &version.label),
                nodes: Some(nodes),
                version,
            }
        })
        .collect();
    ok(
        StatusCode::OK,
        ServedModel {
            model: record.model,
            versions,
            traffic: record.traffic,
            aliases: record.aliases,
            policy: record.policy,
            latest_scores: record.latest_scores,
            rewards: record.rewards,
        },
    )
}

/// List a model's versions.
#[utoipa::path(
    get,
    path = "/v1/models/{m}/versions",
    params(("m" = String, Path, description = "the model", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")),
    responses((status = 200, description = "success", body = super::api::VersionList), (status = 404, response = super::openapi::ErrorResponse))
)]
pub(super) async fn list_versions(
    State(state): State<AdminState>,
    Path(model): Path<String>,
) -> ApiResult {
    let record = state.store.model(&model).await?;
    ok(
        StatusCode::OK,
        VersionList {
            versions: record.versions,
        },
    )
}

/// `switchyard_registry::NewVersion` as the document shows it, with its settings spelled
/// out and bounded as the gateway checks them.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(super) struct VersionBody {
    /// The label; the next integer when absent.
    #[schema(pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")]
    version: Option<String>,
    /// `onnx` or `libtorch` (TorchScript).
    #[schema(pattern = r"^(onnx|libtorch)$")]
    runtime: String,
    /// Path of the model file on the gateway's machine, under `registry.artifact_roots`.
    #[schema(max_length = 4096)]
    artifact: String,
    /// Serving settings: the keys of `model.toml`. Absent: the model's latest version's.
    config: Option<ModelToml>,
    /// Free-form metadata kept with the version.
    #[schema(value_type = Option<Object>)]
    metadata: Option<serde_json::Value>,
}

/// Register a version; it loads in the background (state `loading`, then `ready` or `failed`).
#[utoipa::path(
    post,
    path = "/v1/models/{m}/versions",
    params(("m" = String, Path, description = "the model", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")),
    request_body = VersionBody,
    responses((status = 201, description = "created", body = super::api::VersionCreated), (status = 400, response = super::openapi::ErrorResponse), (status = 404, response = super::openapi::ErrorResponse), (status = 409, response = super::openapi::ErrorResponse))
)]
pub(super) async fn register_version(
    State(state): State<AdminState>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path(model): Path<String>,
    body: Bytes,
) -> ApiResult {
    let mut version: NewVersion = parse(&body)?;
    if !runtimes::is_available(&version.runtime) {
        return Err(bad_request(runtimes::unavailable(&version.runtime)));
    }
    let artifact = readable_artifact(&state.artifact_roots, &version.artifact).await?;
    version.artifact = artifact.display().to_string();
    match &version.config {
        Some(config) => {
            version_settings(config, &state.defaults).map_err(bad_request)?;
        }
        // A new version is served like the model's latest one unless told otherwise.
        None => {
            let record = state.store.model(&model).await?;
            version.config = record.versions.last().map(|latest| latest.config.clone());
        }
    }
    let (created, revision) = state
        .store
        .register_version(&actor.0, &model, version)
        .await?;
    // The gateway picks the new version up at once and records it loading (or failed); answer
    // with that state, waiting two seconds at most. Writing it here instead could overwrite
    // the gateway's own later `ready`.
    let mut changes = state.store.subscribe();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    let mut current = created;
    while current.state == VersionState::Registered {
        if !matches!(
            tokio::time::timeout_at(deadline, changes.changed()).await,
            Ok(Ok(()))
        ) {
            break;
        }
        current = state.store.version(&model, &current.label).await?;
    }
    ok(
        StatusCode::CREATED,
        VersionCreated {
            revision,
            version: current,
        },
    )
}

/// A version, and how this gateway serves it.
#[utoipa::path(
    get,
    path = "/v1/models/{m}/versions/{v}",
    params(("m" = String, Path, description = "the model", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$"), ("v" = String, Path, description = "the version label or alias", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")),
    responses((status = 200, description = "success", body = super::api::ServedVersion), (status = 404, response = super::openapi::ErrorResponse))
)]
pub(super) async fn get_version(
    State(state): State<AdminState>,
    Path((model, label)): Path<(String, String)>,
) -> ApiResult {
    let version = state.store.version(&model, &label).await?;
    ok(
        StatusCode::OK,
        ServedVersion {
            serving: serving_state(&state.gateway, &model, &label),
            nodes: None,
            version,
        },
    )
}

/// Remove a version: it drains, then retires. Refused (409) while it has traffic weight or an alias.
#[utoipa::path(
    delete,
    path = "/v1/models/{m}/versions/{v}",
    params(("m" = String, Path, description = "the model", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$"), ("v" = String, Path, description = "the version label or alias", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")),
    responses((status = 202, description = "accepted: draining", body = super::api::VersionRemoved), (status = 404, response = super::openapi::ErrorResponse), (status = 409, response = super::openapi::ErrorResponse))
)]
pub(super) async fn remove_version(
    State(state): State<AdminState>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path((model, label)): Path<(String, String)>,
) -> ApiResult {
    let revision = state.store.remove_version(&actor.0, &model, &label).await?;
    ok(
        StatusCode::ACCEPTED,
        VersionRemoved {
            revision,
            state: VersionState::Draining,
        },
    )
}

/// Record scores.
#[utoipa::path(
    post,
    path = "/v1/models/{m}/versions/{v}/scores",
    params(("m" = String, Path, description = "the model", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$"), ("v" = String, Path, description = "the version label or alias", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")),
    request_body = switchyard_registry::NewScores,
    responses((status = 201, description = "created", body = super::api::Revision), (status = 400, response = super::openapi::ErrorResponse), (status = 404, response = super::openapi::ErrorResponse))
)]
pub(super) async fn add_scores(
    State(state): State<AdminState>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path((model, label)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let scores: NewScores = parse(&body)?;
    let revision = state
        .store
        .add_scores(&actor.0, &model, &label, scores)
        .await?;
    ok(StatusCode::CREATED, Revision { revision })
}

/// A version's score history.
#[utoipa::path(
    get,
    path = "/v1/models/{m}/versions/{v}/scores",
    params(("m" = String, Path, description = "the model", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$"), ("v" = String, Path, description = "the version label or alias", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")),
    responses((status = 200, description = "success", body = super::api::ScoreList), (status = 404, response = super::openapi::ErrorResponse))
)]
pub(super) async fn list_scores(
    State(state): State<AdminState>,
    Path((model, label)): Path<(String, String)>,
) -> ApiResult {
    let scores = state.store.scores(&model, &label).await?;
    ok(StatusCode::OK, ScoreList { scores })
}

/// How long checking an artifact may take: a path on a hung network mount must not hold a
/// request for ever.
const ARTIFACT_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The artifact as it will be loaded: resolved (symlinks followed), under one of the roots, a
/// regular file (never a FIFO or a device, which would block the loader), and readable. The
/// check runs off the executor with a timeout; a refusal names the roots and says nothing of
/// whether the path exists.
pub(super) async fn readable_artifact(
    roots: &std::sync::Arc<Vec<PathBuf>>,
    asked: &str,
) -> Result<PathBuf, GatewayError> {
    let refusal = || {
        let listed: Vec<String> = roots
            .iter()
            .map(|root| root.display().to_string())
            .collect();
        bad_request(format!(
            "artifact '{}' cannot be read: it must be a readable regular file under one of the \
             artifact roots [{}] (registry.artifact_roots)",
            crate::error::quoted(asked),
            listed.join(", ")
        ))
    };
    let (roots_held, asked_owned) = (roots.clone(), asked.to_owned());
    let check = tokio::task::spawn_blocking(move || -> Option<PathBuf> {
        let resolved = std::fs::canonicalize(&asked_owned).ok()?;
        if !roots_held.iter().any(|root| resolved.starts_with(root)) {
            return None;
        }
        // Checked before opening: opening a FIFO would block until a writer comes.
        if !std::fs::metadata(&resolved).ok()?.is_file() {
            return None;
        }
        std::fs::File::open(&resolved).ok()?;
        Some(resolved)
    });
    match tokio::time::timeout(ARTIFACT_CHECK_TIMEOUT, check).await {
        Ok(Ok(Some(resolved))) => Ok(resolved),
        _ => Err(refusal()),
    }
}
