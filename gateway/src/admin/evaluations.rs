//! Evaluation jobs: the gateway scores versions on a labelled dataset itself, at low priority,
//! records the report and posts the scores.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::json;
use switchyard_runtimes::DataType;

use super::api::{EvaluationAnswer, EvaluationList};
use super::{Actor, AdminState, ApiResult, bad_request, ok, parse};
use crate::control::evaluation::Dataset;
use crate::control::evaluation::job::{self, Job};
use crate::core::table::VersionStatus;
use crate::error::{ErrorKind, GatewayError};
use crate::routing::experiments::lock;
use crate::tasks::{self, TaskKind};

static EVALUATION: TaskKind = TaskKind::new("evaluation");

/// The largest dataset the gateway reads into its own memory for a job.
const MAX_JOB_DATASET_BYTES: u64 = 256 << 20;
const LISTED: i64 = 20;

/// The job running on this gateway: its id, and what stops it when it is cancelled.
pub(super) type RunningJob = (i64, Arc<tokio::sync::Notify>);

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct EvaluationRequest {
    /// A `.npz` or `.jsonl` file under the artifact roots.
    #[schema(max_length = 4096)]
    dataset: String,
    /// 1 to 64 version labels, or all the model's ready versions when absent.
    #[serde(default)]
    #[schema(min_items = 1, max_items = 64)]
    versions: Option<Vec<String>>,
    /// The output tensor to read predictions from (default: the model's first).
    #[serde(default)]
    #[schema(max_length = 256)]
    output: Option<String>,
    /// Scores at or above it are class 1 (one score per example); default 0.5.
    #[serde(default = "default_threshold")]
    threshold: f64,
    /// Record the metrics as registry scores (default true).
    #[serde(default = "default_post")]
    post: bool,
}

fn default_threshold() -> f64 {
    0.5
}

fn default_post() -> bool {
    true
}

/// Start an evaluation: every example of a labelled dataset (a `.npz` or `.jsonl` file under the artifact roots, at most 256 MiB) through this gateway, pinned to each version, two requests in flight at most and waiting out overload; then the report is stored and, unless `post` is false, each version's metrics become registry scores. 202 at once; one evaluation at a time per gateway (409).
#[utoipa::path(
    post,
    path = "/v1/models/{m}/evaluations",
    params(("m" = String, Path, description = "the model", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")),
    request_body = EvaluationRequest,
    responses((status = 202, description = "started", body = super::api::EvaluationAnswer), (status = 400, response = super::openapi::ErrorResponse), (status = 404, response = super::openapi::ErrorResponse), (status = 409, response = super::openapi::ErrorResponse))
)]
pub(super) async fn start_evaluation(
    State(state): State<AdminState>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path(model): Path<String>,
    body: Bytes,
) -> ApiResult {
    let request: EvaluationRequest = parse(&body)?;
    if !(request.threshold.is_finite()) {
        return Err(bad_request("threshold must be a number"));
    }
    let path = super::models::readable_artifact(&state.artifact_roots, &request.dataset).await?;
    let table = state.gateway.snapshot();
    let entry = table.model(&model)?;
    let versions: Vec<String> = match &request.versions {
        Some(versions) if versions.is_empty() || versions.len() > 64 => {
            return Err(bad_request("versions names 1 to 64 versions"));
        }
        Some(versions) => versions.clone(),
        None => entry
            .versions
            .iter()
            .filter(|v| matches!(v.status, VersionStatus::Ready(_)))
            .map(|v| v.label.to_string())
            .collect(),
    };
    let mut signature = None;
    for label in &versions {
        let version = entry.version(label)?;
        let VersionStatus::Ready(ready) = &version.status else {
            return Err(GatewayError::unavailable(format!(
                "version '{label}' of '{model}' is not ready"
            )));
        };
        signature.get_or_insert_with(|| ready.signature().clone());
    }
    let signature = signature.ok_or_else(|| bad_request("the model has no ready version"))?;
    let output = match request.output {
        Some(output) if signature.outputs.iter().any(|o| o.name == output) => output,
        Some(output) => {
            return Err(bad_request(format!(
                "the model has no output '{}'",
                crate::error::quoted(&output)
            )));
        }
        None => signature
            .outputs
            .first()
            .map(|o| o.name.clone())
            .ok_or_else(|| bad_request("the model has no outputs"))?,
    };
    let inputs: Vec<(String, DataType)> = signature
        .inputs
        .iter()
        .map(|i| (i.name.clone(), i.dtype))
        .collect();
    // Held until the job ends: one at a time.
    let permit = state.evaluations.clone().try_acquire_owned().map_err(|_| {
        GatewayError::new(
            ErrorKind::Conflict,
            "an evaluation is already running on this gateway; try again when it is done",
        )
    })?;
    let read_path = path.clone();
    let dataset =
        tokio::task::spawn_blocking(move || Dataset::read(&read_path, MAX_JOB_DATASET_BYTES))
            .await
            .map_err(super::internal)?
            .map_err(|e| bad_request(format!("{e:#}")))?;
    if dataset.streams.is_some() {
        return Err(bad_request(
            "a dataset of streams (with a 'sequence' array) is evaluated by `switchyard eval`, which sends each stream as a sequence; the in-gateway job sends independent examples only",
        ));
    }
    for (name, _) in &inputs {
        if !dataset.inputs.contains_key(name) {
            return Err(bad_request(format!(
                "the dataset has no array '{name}' for the model's input of that name"
            )));
        }
    }
    let runner = state.cluster_node.clone().unwrap_or_default();
    let recorded = json!({"dataset": path.display().to_string(), "sha256": dataset.sha256,
                          "versions": versions, "output": output,
                          "threshold": request.threshold, "post": request.post,
                          "gateway": runner});
    let (record, revision) = state
        .store
        .create_evaluation(&actor.0, &model, recorded)
        .await?;
    let job = Arc::new(Job {
        model: model.clone(),
        versions,
        inputs,
        output,
        threshold: request.threshold,
    });
    let (gateway, store) = (state.gateway.clone(), state.store.clone());
    let (id, post, actor) = (record.id, request.post, actor.0.clone());
    let cancelled = Arc::new(tokio::sync::Notify::new());
    *lock(&state.running_evaluation) = Some((id, cancelled.clone()));
    let running = state.running_evaluation.clone();
    tasks::spawn(&EVALUATION, async move {
        let watched = store.clone();
        // A cancel ends the job between two requests: dropping it drops its requests.
        tokio::select! {
            () = job::run_and_record(gateway, store, actor, id, job, Arc::new(dataset), post) => {}
            () = cancelled.notified() => {}
            () = job::ended_in_registry(watched.as_ref(), id) => {}
        }
        lock(&running).take_if(|(running, _)| *running == id);
        drop(permit);
    });
    ok(
        StatusCode::ACCEPTED,
        EvaluationAnswer {
            revision,
            evaluation: Some(record),
        },
    )
}

/// Cancel a running evaluation: it is recorded `cancelled` at once, and the job stops within a second, on whichever gateway of the cluster runs it; its scores are not posted. 409 when it has ended already.
#[utoipa::path(
    post,
    path = "/v1/models/{m}/evaluations/{id}/cancel",
    params(("m" = String, Path, description = "the model", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$"), ("id" = i64, Path, description = "the evaluation's id", minimum = 1)),
    responses((status = 200, description = "cancelled", body = super::api::EvaluationAnswer), (status = 400, response = super::openapi::ErrorResponse), (status = 404, response = super::openapi::ErrorResponse), (status = 409, response = super::openapi::ErrorResponse))
)]
pub(super) async fn cancel_evaluation(
    State(state): State<AdminState>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path((model, id)): Path<(String, String)>,
) -> ApiResult {
    let id = evaluation_id(&id)?;
    let running = state.store.running_evaluations().await?;
    if !running.iter().any(|e| e.id == id && e.model == model) {
        // The model's own list tells an unknown id (404) from an ended one (409).
        let ended = state.store.evaluations(&model, 100).await?;
        return Err(match ended.into_iter().find(|e| e.id == id) {
            Some(ended) => GatewayError::new(
                ErrorKind::Conflict,
                format!("evaluation {id} of '{model}' is {} already", ended.state),
            ),
            None => GatewayError::not_found(format!("model '{model}' has no evaluation '{id}'")),
        });
    }
    let report = json!({"error": format!("cancelled by {}", actor.0)});
    let revision = state
        .store
        .finish_evaluation(&actor.0, id, "cancelled", report)
        .await?;
    if let Some((_, cancelled)) = lock(&state.running_evaluation)
        .as_ref()
        .filter(|(running, _)| *running == id)
    {
        cancelled.notify_one();
    }
    let record = state
        .store
        .evaluations(&model, 100)
        .await?
        .into_iter()
        .find(|e| e.id == id);
    ok(
        StatusCode::OK,
        EvaluationAnswer {
            revision,
            evaluation: record,
        },
    )
}

fn evaluation_id(id: &str) -> Result<i64, GatewayError> {
    id.parse().map_err(|_| {
        bad_request(format!(
            "'{}' is not an evaluation id",
            crate::error::quoted(id)
        ))
    })
}

/// A model's evaluations, newest first (at most 20), each with its request and, once done, its report: per version accuracy, macro precision, recall and F1, ROC AUC for two classes, the confusion matrix, latency and throughput.
#[utoipa::path(
    get,
    path = "/v1/models/{m}/evaluations",
    params(("m" = String, Path, description = "the model", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")),
    responses((status = 200, description = "success", body = super::api::EvaluationList), (status = 404, response = super::openapi::ErrorResponse))
)]
pub(super) async fn list_evaluations(
    State(state): State<AdminState>,
    Path(model): Path<String>,
) -> ApiResult {
    let evaluations = state.store.evaluations(&model, LISTED).await?;
    ok(StatusCode::OK, EvaluationList { evaluations })
}

/// One evaluation (`latest` names the newest).
#[utoipa::path(
    get,
    path = "/v1/models/{m}/evaluations/{id}",
    params(("m" = String, Path, description = "the model", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$"), ("id" = String, Path, description = "the evaluation's id, or latest", pattern = r"^([1-9][0-9]{0,17}|latest)$")),
    responses((status = 200, description = "success", body = switchyard_registry::EvaluationRecord), (status = 400, response = super::openapi::ErrorResponse), (status = 404, response = super::openapi::ErrorResponse))
)]
pub(super) async fn get_evaluation(
    State(state): State<AdminState>,
    Path((model, id)): Path<(String, String)>,
) -> ApiResult {
    let evaluations = state.store.evaluations(&model, 100).await?;
    let found = if id == "latest" {
        evaluations.into_iter().next()
    } else {
        let id = evaluation_id(&id)?;
        evaluations.into_iter().find(|e| e.id == id)
    };
    let found = found.ok_or_else(|| {
        GatewayError::not_found(format!("model '{model}' has no evaluation '{id}'"))
    })?;
    ok(StatusCode::OK, found)
}
