//! Rollouts: start one, read its progress with the live figures of its stage, and drive it by
//! hand (pause, resume, promote, abort). The leader gateway moves it on its own.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::json;
use switchyard_registry::RolloutRecord;

use super::api::{RolloutAnswer, RolloutEntry, RolloutList, UnreadableRollout};
use super::{Actor, AdminState, ApiResult, bad_request, internal, ok, parse};
use crate::control::rollout::analysis::{self, StageFigures};
use crate::control::rollout::control::{
    LiveStage, RolloutRequest, RolloutView, describe, hand_control, new_rollout, totals,
};
use crate::control::rollout::driver::now_ms;
use crate::control::rollout::{Rollout, RolloutState};
use crate::error::GatewayError;

/// How many rollouts a list shows, newest first.
const LISTED: i64 = 20;

fn document(record: &RolloutRecord) -> Result<Rollout, GatewayError> {
    Rollout::from_record(record).map_err(internal)
}

/// The current stage's figures from every gateway's counters, and what the leader would
/// decide on them now.
async fn live_figures(
    state: &AdminState,
    rollout: &Rollout,
) -> Result<(StageFigures, String), GatewayError> {
    let model = state.store.model(&rollout.model).await?;
    let now = totals(state.store.as_ref(), rollout, &model).await?;
    let now_ms = now_ms();
    let figures = analysis::stage_figures(rollout, &now, now_ms);
    let scores = model
        .latest_scores
        .get(&rollout.target)
        .cloned()
        .unwrap_or_default();
    let decision = match rollout.state {
        RolloutState::Running => describe(&analysis::decide(rollout, &figures, &scores, now_ms)),
        RolloutState::Pending => "waiting for the leader to start it".into(),
        RolloutState::Paused => "paused".into(),
        _ => rollout.reason.clone(),
    };
    Ok((figures, decision))
}

async fn shown(state: &AdminState, record: &RolloutRecord) -> Result<RolloutView, GatewayError> {
    let rollout = document(record)?;
    let live = if rollout.state.is_active() && rollout.started_ms > 0 {
        let (figures, status) = live_figures(state, &rollout).await?;
        Some(LiveStage {
            figures: Some(figures),
            status,
        })
    } else if rollout.state.is_active() {
        let waiting = match rollout.state {
            RolloutState::Paused => "paused before it started",
            _ => "waiting for the leader to start it",
        };
        Some(LiveStage {
            figures: None,
            status: waiting.into(),
        })
    } else {
        None
    };
    Ok(RolloutView::new(
        record,
        rollout,
        live,
        state.rollouts.leading(),
    ))
}

/// A rollout's answer to a write.
async fn answer(
    state: &AdminState,
    record: &RolloutRecord,
    revision: i64,
) -> Result<RolloutAnswer, GatewayError> {
    Ok(RolloutAnswer {
        revision,
        rollout: RolloutEntry::Shown(Box::new(shown(state, record).await?)),
    })
}

async fn find(state: &AdminState, model: &str, id: &str) -> Result<RolloutRecord, GatewayError> {
    // The registry keeps a model's last 100 rollouts within reach of an id.
    let records = state.store.rollouts(model, 100).await?;
    let found = if id == "latest" {
        records.into_iter().next()
    } else {
        let id: i64 = id.parse().map_err(|_| {
            bad_request(format!("'{id}' is not a rollout id (a number, or latest)"))
        })?;
        records.into_iter().find(|r| r.id == id)
    };
    found.ok_or_else(|| GatewayError::not_found(format!("model '{model}' has no rollout '{id}'")))
}

/// Start a rollout of `target` from `baseline`: an optional shadow phase, then steps of live traffic, each held and judged by the gates; the gateway that leads promotes it or rolls it back on its own. Body: {target, baseline?, steps? ([5, 25, 50, 100] by default; a percent, or {percent|weights, hold}), hold? ("30s"), shadow? {percent, hold?}, gates? {min_requests, max_error_rate, max_error_rate_increase, max_p99_ratio, min_argmax_agreement, max_abs_diff, max_reward_drop, min_score {metric, min}, alpha}}. 409 while another rollout of the model is active.
#[utoipa::path(
    post,
    path = "/v1/models/{m}/rollouts",
    params(("m" = String, Path, description = "the model", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")),
    request_body = crate::control::rollout::control::RolloutRequest,
    responses((status = 201, description = "created, pending until the leader starts it", body = super::api::RolloutAnswer), (status = 400, response = super::openapi::ErrorResponse), (status = 404, response = super::openapi::ErrorResponse), (status = 409, response = super::openapi::ErrorResponse))
)]
pub(super) async fn start_rollout(
    State(state): State<AdminState>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path(model): Path<String>,
    body: Bytes,
) -> ApiResult {
    let request: RolloutRequest = parse(&body)?;
    let record = state.store.model(&model).await?;
    let (_, write) = new_rollout(&record, request, &actor.0).map_err(bad_request)?;
    let (written, revision) = state.store.write_rollout(&actor.0, &model, write).await?;
    ok(
        StatusCode::CREATED,
        answer(&state, &written, revision).await?,
    )
}

/// A model's rollouts, newest first (at most 20), each with its stages, gates and analyses; an active one also with its current stage's live figures.
#[utoipa::path(
    get,
    path = "/v1/models/{m}/rollouts",
    params(("m" = String, Path, description = "the model", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")),
    responses((status = 200, description = "success", body = super::api::RolloutList), (status = 404, response = super::openapi::ErrorResponse))
)]
pub(super) async fn list_rollouts(
    State(state): State<AdminState>,
    Path(model): Path<String>,
) -> ApiResult {
    let records = state.store.rollouts(&model, LISTED).await?;
    let mut rollouts = Vec::with_capacity(records.len());
    for record in &records {
        // One row this build cannot read must not hide the others.
        rollouts.push(match shown(&state, record).await {
            Ok(shown) => RolloutEntry::Shown(Box::new(shown)),
            Err(error) => RolloutEntry::Unreadable(UnreadableRollout {
                id: record.id,
                model: record.model.clone(),
                state: record.state.clone(),
                error: Some(error.to_string()),
            }),
        });
    }
    ok(StatusCode::OK, RolloutList { rollouts })
}

/// One rollout (`latest` names the newest): its stage, weights, the figures against the gates, and the history of analyses.
#[utoipa::path(
    get,
    path = "/v1/models/{m}/rollouts/{id}",
    params(("m" = String, Path, description = "the model", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$"), ("id" = String, Path, description = "the rollout's id, or latest", pattern = r"^([1-9][0-9]{0,17}|latest)$")),
    responses((status = 200, description = "success", body = super::api::RolloutView), (status = 400, response = super::openapi::ErrorResponse), (status = 404, response = super::openapi::ErrorResponse))
)]
pub(super) async fn get_rollout(
    State(state): State<AdminState>,
    Path((model, id)): Path<(String, String)>,
) -> ApiResult {
    let record = find(&state, &model, &id).await?;
    ok(StatusCode::OK, shown(&state, &record).await?)
}

/// Drive a rollout by hand: `pause` (it holds its stage), `resume` (the stage's hold starts again), `promote` (the target gets all the weight and the stable alias now) or `abort` (the baseline gets all the weight back). 409 when the rollout has ended, or changed meanwhile.
#[utoipa::path(
    post,
    path = "/v1/models/{m}/rollouts/{id}/{action}",
    params(("m" = String, Path, description = "the model", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$"), ("id" = String, Path, description = "the rollout's id, or latest", pattern = r"^([1-9][0-9]{0,17}|latest)$"), ("action" = String, Path, description = "pause, resume, promote or abort", pattern = r"^(pause|resume|promote|abort)$")),
    responses((status = 200, description = "success", body = super::api::RolloutAnswer), (status = 400, response = super::openapi::ErrorResponse), (status = 404, response = super::openapi::ErrorResponse), (status = 409, response = super::openapi::ErrorResponse), (status = 415, response = super::openapi::ErrorResponse))
)]
pub(super) async fn control_rollout(
    State(state): State<AdminState>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path((model, id, action)): Path<(String, String, String)>,
) -> ApiResult {
    if !matches!(action.as_str(), "pause" | "resume" | "promote" | "abort") {
        return Err(bad_request(format!(
            "unknown rollout action '{}': pause, resume, promote or abort",
            crate::error::quoted(&action)
        )));
    }
    let record = find(&state, &model, &id).await?;
    let rollout = match document(&record) {
        Ok(rollout) => rollout,
        // A row this build cannot read can still be ended, so that the model can have another.
        Err(error) if action == "abort" && RolloutRecord::is_active(&record.state) => {
            let write = switchyard_registry::RolloutWrite {
                existing: Some((record.id, record.generation)),
                state: RolloutState::Aborted.as_str().into(),
                body: record.body.clone(),
                action: "rollout.aborted".into(),
                payload: json!({"rollout": record.id, "by": actor.0,
                                "reason": format!("unreadable: {error}")}),
                ..Default::default()
            };
            let (_, revision) = state.store.write_rollout(&actor.0, &model, write).await?;
            let rollout = RolloutEntry::Unreadable(UnreadableRollout {
                id: record.id,
                model: record.model,
                state: RolloutState::Aborted.as_str().into(),
                error: None,
            });
            return ok(StatusCode::OK, RolloutAnswer { revision, rollout });
        }
        Err(error) => return Err(error),
    };
    if !rollout.state.is_active() {
        return Err(GatewayError::new(
            crate::error::ErrorKind::Conflict,
            format!(
                "rollout {} is {} already",
                record.id,
                rollout.state.as_str()
            ),
        ));
    }
    let figures = if rollout.started_ms > 0 {
        live_figures(&state, &rollout).await?.0
    } else {
        StageFigures::default()
    };
    let write = hand_control(&record, rollout, &action, &actor.0, figures, now_ms())
        .map_err(|message| GatewayError::new(crate::error::ErrorKind::Conflict, message))?;
    let (written, revision) = state.store.write_rollout(&actor.0, &model, write).await?;
    ok(StatusCode::OK, answer(&state, &written, revision).await?)
}
