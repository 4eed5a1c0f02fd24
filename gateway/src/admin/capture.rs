//! Payload capture: each model's sampling rate, the tensors kept or redacted and its sinks,
//! kept in the registry and put in force by every gateway from the change feed
//! (`control::keys`); shown with this gateway's figures for it and for each sink.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::api::{CaptureAnswer, CaptureList, Revision};
use super::{Actor, AdminState, ApiResult, bad_request, internal, ok, parse};
use crate::core::capture::{CaptureSpec, CaptureView};

/// Every captured model, with this gateway's figures for it and its sinks.
#[utoipa::path(
    get,
    path = "/v1/capture",
    responses((status = 200, description = "success", body = CaptureList))
)]
pub(super) async fn list_captures(State(state): State<AdminState>) -> ApiResult {
    let captures = state
        .store
        .model_captures()
        .await?
        .into_iter()
        .filter_map(|(model, spec)| {
            let spec = serde_json::from_value::<CaptureSpec>(spec).ok()?;
            Some(state.capture.view(&model, spec))
        })
        .collect();
    let revision = state.store.revision().await?;
    ok(StatusCode::OK, CaptureList { captures, revision })
}

/// A model's capture (`capture` is null when it has none).
#[utoipa::path(
    get,
    path = "/v1/models/{m}/capture",
    params(("m" = String, Path, description = "the model", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")),
    responses((status = 200, description = "success", body = CaptureAnswer), (status = 404, response = super::openapi::ErrorResponse))
)]
pub(super) async fn get_capture(
    State(state): State<AdminState>,
    Path(model): Path<String>,
) -> ApiResult {
    // 404 for a model that does not exist.
    state.store.model(&model).await?;
    let capture = state
        .store
        .model_captures()
        .await?
        .remove(&model)
        .map(serde_json::from_value::<CaptureSpec>)
        .transpose()
        .map_err(internal)?
        .map(|spec| state.capture.view(&model, spec));
    let revision = state.store.revision().await?;
    ok(
        StatusCode::OK,
        CaptureAnswer {
            model,
            capture,
            revision,
        },
    )
}

/// Capture a sample of a model's requests: `sample` is the fraction captured, `inputs` and
/// `outputs` the tensors whose data is kept (absent: all), `redact` those kept without their
/// data, `sinks` where the events go (`{"file": FOLDER}` under `capture.roots`, `{"http":
/// URL}` for CloudEvents).
#[utoipa::path(
    put,
    path = "/v1/models/{m}/capture",
    params(("m" = String, Path, description = "the model", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")),
    request_body = CaptureSpec,
    responses((status = 200, description = "success", body = CaptureAnswer), (status = 400, response = super::openapi::ErrorResponse), (status = 404, response = super::openapi::ErrorResponse))
)]
pub(super) async fn set_capture(
    State(state): State<AdminState>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path(model): Path<String>,
    body: Bytes,
) -> ApiResult {
    let spec: CaptureSpec = parse(&body)?;
    spec.check(state.capture.roots()).map_err(bad_request)?;
    let value = serde_json::to_value(&spec).map_err(internal)?;
    let revision = state
        .store
        .set_model_capture(&actor.0, &model, Some(value))
        .await?;
    let capture: Option<CaptureView> = Some(state.capture.view(&model, spec));
    ok(
        StatusCode::OK,
        CaptureAnswer {
            model,
            capture,
            revision,
        },
    )
}

/// Stop capturing a model's requests.
#[utoipa::path(
    delete,
    path = "/v1/models/{m}/capture",
    params(("m" = String, Path, description = "the model", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")),
    responses((status = 200, description = "success", body = Revision), (status = 404, response = super::openapi::ErrorResponse))
)]
pub(super) async fn remove_capture(
    State(state): State<AdminState>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path(model): Path<String>,
) -> ApiResult {
    let revision = state
        .store
        .set_model_capture(&actor.0, &model, None)
        .await?;
    ok(StatusCode::OK, Revision { revision })
}
