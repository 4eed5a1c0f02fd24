//! How traffic is split: weights, the routing policy and aliases.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;

use super::api::{AliasSet, PolicyAnswer, Revision, Traffic};
use super::{Actor, AdminState, ApiResult, bad_request, internal, ok, parse};
use crate::error::{ErrorKind, GatewayError};
use crate::routing::TrafficPolicy;
use switchyard_registry::VersionState;

/// A model's traffic weights.
#[utoipa::path(
    get,
    path = "/v1/models/{m}/traffic",
    params(("m" = String, Path, description = "the model", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")),
    responses((status = 200, description = "success", body = super::api::Traffic), (status = 404, response = super::openapi::ErrorResponse))
)]
pub(super) async fn get_traffic(
    State(state): State<AdminState>,
    Path(model): Path<String>,
) -> ApiResult {
    let record = state.store.model(&model).await?;
    let revision = state.store.revision().await?;
    ok(
        StatusCode::OK,
        Traffic {
            weights: record.traffic,
            revision,
        },
    )
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TrafficBody {
    /// Weight per version label (1 to 1024 versions, at least one weight above 0); a
    /// version's share is its weight over the sum.
    #[schema(schema_with = weights_schema)]
    weights: BTreeMap<String, u64>,
}

fn weights_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
    let mut labels = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$"))
        .build();
    labels.max_length = Some(128);
    let weight = ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(0.0))
        .maximum(Some(i64::MAX as f64));
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(labels))
        .additional_properties(Some(AdditionalProperties::RefOr(weight.into())))
        .min_properties(Some(1))
        .max_properties(Some(switchyard_registry::MAX_WEIGHTS))
        .build()
}

/// Replace a model's traffic weights.
#[utoipa::path(
    put,
    path = "/v1/models/{m}/traffic",
    params(("m" = String, Path, description = "the model", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")),
    request_body = TrafficBody,
    responses((status = 200, description = "success", body = super::api::Traffic), (status = 400, response = super::openapi::ErrorResponse), (status = 404, response = super::openapi::ErrorResponse))
)]
pub(super) async fn set_traffic(
    State(state): State<AdminState>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path(model): Path<String>,
    body: Bytes,
) -> ApiResult {
    let traffic: TrafficBody = parse(&body)?;
    let revision = state
        .store
        .set_traffic(&actor.0, &model, traffic.weights.clone())
        .await?;
    ok(
        StatusCode::OK,
        Traffic {
            weights: traffic.weights,
            revision,
        },
    )
}

/// A model's routing policy.
#[utoipa::path(
    get,
    path = "/v1/models/{m}/policy",
    params(("m" = String, Path, description = "the model", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")),
    responses((status = 200, description = "success", body = super::api::PolicyAnswer), (status = 404, response = super::openapi::ErrorResponse))
)]
pub(super) async fn get_policy(
    State(state): State<AdminState>,
    Path(model): Path<String>,
) -> ApiResult {
    let record = state.store.model(&model).await?;
    ok(
        StatusCode::OK,
        PolicyAnswer {
            policy: record.policy,
            revision: None,
        },
    )
}

/// Replace a model's routing policy (validated; a shadow must name a live version or alias).
#[utoipa::path(
    put,
    path = "/v1/models/{m}/policy",
    params(("m" = String, Path, description = "the model", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")),
    request_body = crate::routing::TrafficPolicy,
    responses((status = 200, description = "success", body = super::api::PolicyAnswer), (status = 400, response = super::openapi::ErrorResponse), (status = 404, response = super::openapi::ErrorResponse))
)]
pub(super) async fn set_policy(
    State(state): State<AdminState>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path(model): Path<String>,
    body: Bytes,
) -> ApiResult {
    let policy: TrafficPolicy = parse(&body)?;
    policy.validate().map_err(bad_request)?;
    let record = state.store.model(&model).await?;
    if let Some(shadow) = &policy.shadow {
        let target = record
            .aliases
            .get(&shadow.version)
            .unwrap_or(&shadow.version);
        let known = record
            .versions
            .iter()
            .any(|v| v.label == *target && v.state.is_live());
        if !known {
            return Err(bad_request(format!(
                "shadow version '{}' is not a live version or alias of model '{model}'",
                shadow.version
            )));
        }
    }
    if !policy.rules.is_empty() {
        check_rules(&state, &model, &record, &policy.rules)?;
    }
    // The objective plans requests per second; a model served as sequences is routed once per
    // sequence, whose length the plan cannot know.
    if matches!(policy.mode, crate::routing::PolicyMode::Objective { .. }) {
        let table = state.gateway.snapshot();
        let sequences = table.model(&model).is_ok_and(|entry| {
            entry.versions.iter().any(|version| {
                matches!(&version.status, crate::core::VersionStatus::Ready(ready) if ready.sequence.is_some())
            })
        });
        if sequences {
            return Err(bad_request(format!(
                "model '{model}' is served as sequences, routed once per sequence: the objective policy plans requests per second and cannot serve it (use fixed, sticky, score or bandit)"
            )));
        }
    }
    let stored = serde_json::to_value(&policy).map_err(internal)?;
    let revision = state
        .store
        .set_policy(&actor.0, &model, stored.clone())
        .await?;
    ok(
        StatusCode::OK,
        PolicyAnswer {
            policy: stored,
            revision: Some(revision),
        },
    )
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AliasBody {
    /// The version label the alias names.
    #[schema(pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")]
    version: String,
}

/// Point an alias at a version.
#[utoipa::path(
    put,
    path = "/v1/models/{m}/aliases/{a}",
    params(("m" = String, Path, description = "the model", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$"), ("a" = String, Path, description = "the alias", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")),
    request_body = AliasBody,
    responses((status = 200, description = "success", body = super::api::AliasSet), (status = 400, response = super::openapi::ErrorResponse), (status = 404, response = super::openapi::ErrorResponse), (status = 409, response = super::openapi::ErrorResponse))
)]
pub(super) async fn set_alias(
    State(state): State<AdminState>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path((model, alias)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let target: AliasBody = parse(&body)?;
    // An alias to a version that failed would answer every request with 503.
    if let Ok(version) = state.store.version(&model, &target.version).await
        && version.state == VersionState::Failed
    {
        return Err(GatewayError::new(
            ErrorKind::Conflict,
            format!(
                "version '{}' of model '{model}' failed to load ({}); an alias may not name it",
                version.label, version.state_reason
            ),
        ));
    }
    let revision = state
        .store
        .set_alias(&actor.0, &model, &alias, &target.version)
        .await?;
    ok(
        StatusCode::OK,
        AliasSet {
            alias,
            version: target.version,
            revision,
        },
    )
}

/// Remove an alias.
#[utoipa::path(
    delete,
    path = "/v1/models/{m}/aliases/{a}",
    params(("m" = String, Path, description = "the model", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$"), ("a" = String, Path, description = "the alias", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")),
    responses((status = 200, description = "success", body = super::api::Revision), (status = 404, response = super::openapi::ErrorResponse))
)]
pub(super) async fn remove_alias(
    State(state): State<AdminState>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path((model, alias)): Path<(String, String)>,
) -> ApiResult {
    let revision = state.store.remove_alias(&actor.0, &model, &alias).await?;
    ok(StatusCode::OK, Revision { revision })
}

/// A model's rules against what it has: its live versions and the aliases of live versions,
/// and the inputs of the version each rule sends to, where this gateway serves it (elsewhere
/// they are not checked).
fn check_rules(
    state: &AdminState,
    model: &str,
    record: &switchyard_registry::ModelRecord,
    rules: &[crate::routing::Rule],
) -> Result<(), GatewayError> {
    use crate::routing::rules::{Checked, ModelInput};
    let live = |label: &str| {
        record
            .versions
            .iter()
            .any(|version| version.label == label && version.state.is_live())
    };
    // Each name a rule may send to, with the version it stands for.
    let named: Vec<(String, String)> = record
        .versions
        .iter()
        .filter(|version| version.state.is_live())
        .map(|version| (version.label.clone(), version.label.clone()))
        .chain(
            record
                .aliases
                .iter()
                .filter(|(_, version)| live(version))
                .map(|(alias, version)| (alias.clone(), version.clone())),
        )
        .collect();
    let table = state.gateway.snapshot();
    let served = table.model(model).ok();
    let inputs_of = |label: &str| -> Option<Vec<ModelInput>> {
        let version = served?.versions.iter().find(|v| *v.label == *label)?;
        let crate::core::VersionStatus::Ready(ready) = &version.status else {
            return None;
        };
        let inputs = ready.visible_signature().inputs.into_iter().map(|spec| {
            let dims = match ready.max_batch_size {
                0 => spec.dims,
                _ => spec.dims.into_iter().skip(1).collect(),
            };
            ModelInput {
                name: spec.name,
                datatype: spec.dtype.as_str().to_owned(),
                dims,
            }
        });
        Some(inputs.collect())
    };
    let inputs = named
        .iter()
        .filter_map(|(name, version)| Some((name.clone(), inputs_of(version)?)))
        .collect();
    let targets: Vec<String> = named.into_iter().map(|(name, _)| name).collect();
    let checked = Checked {
        targets: &targets,
        inputs: &inputs,
    };
    crate::routing::rules::check(rules, &checked).map_err(bad_request)
}
