//! The live routing experiment and the feedback that feeds it.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::api::{Experiment, ExperimentVersion, Quantiles, RewardEstimate, ShadowComparison};
use super::{AdminState, ApiResult, ok};
use crate::core::feedback::Feedback;
use crate::routing;

/// Live figures of the routing experiment per version, from this gateway: requests, errors, recent error rate, eligibility, p50/p99 latency, reward mean and 95% interval, traffic and effective weights, shadow comparisons; under the objective policy, its plan (quality P_i, capacity_i, offered load, shares w_i, the objective's value).
#[utoipa::path(
    get,
    path = "/v1/models/{m}/experiment",
    params(("m" = String, Path, description = "the model", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")),
    responses((status = 200, description = "success", body = super::api::Experiment), (status = 404, response = super::openapi::ErrorResponse))
)]
pub(super) async fn experiment(
    State(state): State<AdminState>,
    Path(model): Path<String>,
) -> ApiResult {
    let table = state.gateway.snapshot();
    let model = table.model(&model)?;
    let candidates = model.candidates();
    let weights = routing::effective_weights(&model.policy, &candidates);
    let effective = |label: &str| {
        candidates
            .iter()
            .zip(&weights)
            .find(|(candidate, _)| candidate.label == label)
            .map_or(0.0, |(_, weight)| *weight)
    };
    let versions: Vec<ExperimentVersion> = model
        .versions
        .iter()
        .map(|version| {
            let stats = &version.stats;
            let rewards = stats.rewards();
            let (mean, low, high) = routing::reward_interval(&rewards);
            let shadow_of = stats
                .shadow()
                .into_iter()
                .map(|(primary, tally)| {
                    let argmax_agreement = (tally.argmax_compared > 0)
                        .then(|| tally.argmax_agreed as f64 / tally.argmax_compared as f64);
                    let comparison = ShadowComparison {
                        pairs: tally.pairs,
                        errors: tally.errors,
                        max_abs_diff: tally.max_abs_diff,
                        mean_max_abs_diff: tally.mean_max_abs_diff(),
                        argmax_agreement,
                    };
                    (primary.to_string(), comparison)
                })
                .collect();
            ExperimentVersion {
                version: version.label.to_string(),
                state: version.status.name().to_owned(),
                eligible: model.eligible(version),
                traffic_weight: model
                    .traffic
                    .iter()
                    .find(|(label, _)| *label == version.label)
                    .map_or(0, |(_, weight)| *weight),
                effective_weight: effective(&version.label),
                score: version.score,
                requests: stats.requests(),
                errors: stats.errors(),
                recent_error_rate: stats.recent_error_rate(),
                latency_ms: Quantiles {
                    p50: stats.latency_ms(0.5),
                    p99: stats.latency_ms(0.99),
                },
                reward: RewardEstimate {
                    observations: rewards.successes + rewards.failures,
                    mean,
                    ci95: [low, high],
                },
                shadow_of,
            }
        })
        .collect();
    ok(
        StatusCode::OK,
        Experiment {
            model: model.name.to_string(),
            policy: model.policy.clone(),
            feedback_received: state.gateway.experiments().has_feedback(&model.name),
            objective: state.gateway.experiments().objective_plan(&model.name),
            versions,
        },
    )
}

/// A reward in [0, 1] for a recent request, credited to the version that served it (404 for an unknown request id).
#[utoipa::path(
    post,
    path = "/v1/feedback",
    request_body = crate::core::feedback::Feedback,
    responses((status = 200, description = "success", body = super::api::FeedbackReceipt), (status = 400, response = super::openapi::ErrorResponse), (status = 404, response = super::openapi::ErrorResponse), (status = 409, response = super::openapi::ErrorResponse), (status = 415, response = super::openapi::ErrorResponse))
)]
pub(super) async fn feedback(
    State(state): State<AdminState>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> ApiResult {
    let answer = Feedback::from_http(&headers, &body)?.apply(&state.gateway)?;
    ok(StatusCode::OK, answer)
}
