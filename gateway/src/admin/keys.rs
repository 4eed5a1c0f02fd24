//! The inference API's keys: create (the secret shown once), list with each key's figures,
//! change a key's models, limits and priority, rotate its secret, revoke it. The registry
//! keeps digests only; every gateway puts a change in force from the change feed
//! (`control::keys`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use switchyard_registry::{KeyRecord, NewKey};

use super::api::{IssuedKey, KeyChanged, KeyList, KeyView, Limits, ModelLimitsAnswer, Revision};
use super::{Actor, AdminState, ApiResult, bad_request, internal, ok, parse};
use crate::auth::keys::{KeySpec, MAX_KEYS, glob_match};
use crate::auth::{Tenant, digest, random_bytes};
use crate::telemetry::keys::{KeyFigures, KeyFiguresView};

/// What `POST /v1/keys` takes: the tenant's name and the key's spec.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewKeyBody {
    /// The tenant: letters, digits, `_`, `-` and `.` (not first); at most 128.
    #[schema(pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")]
    name: String,
    /// Models it may call, by name or glob (`*`, `?`); none: every model.
    #[serde(default)]
    #[schema(max_items = 64)]
    models: Vec<String>,
    #[serde(default)]
    limits: Limits,
    /// Its requests' priority when they name none: 1 (the highest) to 10.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10)]
    priority: Option<u32>,
}

/// A new secret: `sy_` and 40 hex digits (160 bits from the system's random source).
fn new_secret() -> Result<String, super::ApiError> {
    let bytes = random_bytes::<20>().map_err(internal)?;
    Ok(format!("sy_{}", hex::encode(bytes)))
}

/// A key as made or rotated, with its secret, shown this once.
fn issued(record: KeyRecord, secret: String, warnings: Vec<String>, revision: i64) -> IssuedKey {
    IssuedKey {
        id: record.id,
        name: record.name,
        prefix: record.prefix,
        key: secret,
        spec: serde_json::from_value(record.spec).unwrap_or_default(),
        warnings,
        revision,
    }
}

/// What the key list shows of a secret: enough to tell keys apart, nothing to guess with.
fn prefix_of(secret: &str) -> String {
    secret.chars().take(10).collect()
}

/// A spec in bounds, with the warnings of its globs that match no model today.
async fn checked(state: &AdminState, spec: &KeySpec) -> Result<Vec<String>, super::ApiError> {
    spec.check().map_err(bad_request)?;
    if spec.models.is_empty() {
        return Ok(Vec::new());
    }
    let models = state.store.list_models().await?;
    Ok(spec
        .models
        .iter()
        .filter(|pattern| !models.iter().any(|model| glob_match(pattern, &model.name)))
        .map(|pattern| format!("'{pattern}' matches no model today"))
        .collect())
}

/// What this gateway holds of the keys, read once for a whole list.
struct Held {
    tenants: HashMap<Arc<str>, Arc<Tenant>>,
    figures: HashMap<Arc<str>, Arc<KeyFigures>>,
}

impl Held {
    fn of(state: &AdminState) -> Held {
        Held {
            tenants: state
                .keys
                .tenants()
                .into_iter()
                .map(|tenant| (tenant.id.clone(), tenant))
                .collect(),
            figures: state.keys.figures().into_iter().collect(),
        }
    }
}

fn view(held: &Held, record: &KeyRecord) -> KeyView {
    let live = held.tenants.get(record.id.as_str());
    let figures = held
        .figures
        .get(record.name.as_str())
        .map_or_else(KeyFiguresView::default, |figures| figures.view());
    KeyView {
        id: record.id.clone(),
        name: record.name.clone(),
        prefix: record.prefix.clone(),
        spec: serde_json::from_value(record.spec.clone()).unwrap_or_default(),
        created_ms: record.created_ms,
        rotated_ms: record.rotated_ms,
        revoked_ms: record.revoked_ms,
        in_flight: live.as_ref().map_or(0, |tenant| tenant.in_flight()),
        share: live.as_ref().map_or(1.0, |tenant| tenant.share()),
        figures,
    }
}

/// Every inference API key, revoked ones included, with what each name's requests came to
/// on this gateway. Never a secret or its digest.
#[utoipa::path(
    get,
    path = "/v1/keys",
    responses((status = 200, description = "success", body = super::api::KeyList))
)]
pub(super) async fn list_keys(State(state): State<AdminState>) -> ApiResult {
    let records = state.store.keys().await?;
    let revision = state.store.revision().await?;
    let held = Held::of(&state);
    let keys = records.iter().map(|record| view(&held, record)).collect();
    ok(StatusCode::OK, KeyList { keys, revision })
}

/// Create an inference API key for a tenant. The answer holds the secret, shown this once.
#[utoipa::path(
    post,
    path = "/v1/keys",
    request_body = NewKeyBody,
    responses((status = 201, description = "created", body = super::api::IssuedKey), (status = 400, response = super::openapi::ErrorResponse), (status = 409, response = super::openapi::ErrorResponse))
)]
pub(super) async fn create_key(
    State(state): State<AdminState>,
    axum::Extension(actor): axum::Extension<Actor>,
    body: Bytes,
) -> ApiResult {
    let body: NewKeyBody = parse(&body)?;
    if !switchyard_registry::valid_name(&body.name) {
        return Err(bad_request(
            "a key's name is 1 to 128 letters, digits, '_', '-' or '.', not starting with '.'",
        ));
    }
    let spec = KeySpec {
        models: body.models,
        limits: body.limits,
        priority: body.priority,
    };
    let warnings = checked(&state, &spec).await?;
    if state.store.keys().await?.len() >= MAX_KEYS {
        return Err(crate::error::GatewayError::new(
            crate::error::ErrorKind::Conflict,
            format!("the registry holds its limit of {MAX_KEYS} keys"),
        ));
    }
    let secret = new_secret()?;
    let id = format!(
        "key-{}",
        hex::encode(random_bytes::<6>().map_err(internal)?)
    );
    let (record, revision) = state
        .store
        .create_key(
            &actor.0,
            NewKey {
                id,
                name: body.name,
                digest: hex::encode(digest(&secret)),
                prefix: prefix_of(&secret),
                spec: serde_json::to_value(&spec).map_err(internal)?,
            },
        )
        .await?;
    ok(
        StatusCode::CREATED,
        issued(record, secret, warnings, revision),
    )
}

/// Replace a key's models, limits and priority.
#[utoipa::path(
    put,
    path = "/v1/keys/{id}",
    params(("id" = String, Path, description = "the key's id")),
    request_body = KeySpec,
    responses((status = 200, description = "success", body = super::api::KeyChanged), (status = 400, response = super::openapi::ErrorResponse), (status = 404, response = super::openapi::ErrorResponse), (status = 409, response = super::openapi::ErrorResponse))
)]
pub(super) async fn set_key(
    State(state): State<AdminState>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let spec: KeySpec = parse(&body)?;
    let warnings = checked(&state, &spec).await?;
    let (record, revision) = state
        .store
        .set_key_spec(
            &actor.0,
            &id,
            serde_json::to_value(&spec).map_err(internal)?,
        )
        .await?;
    ok(
        StatusCode::OK,
        KeyChanged {
            key: view(&Held::of(&state), &record),
            warnings,
            revision,
        },
    )
}

/// Give a key a new secret; the old one admits nothing once the change reaches a gateway.
#[utoipa::path(
    post,
    path = "/v1/keys/{id}/rotate",
    params(("id" = String, Path, description = "the key's id")),
    responses((status = 200, description = "success", body = super::api::IssuedKey), (status = 404, response = super::openapi::ErrorResponse), (status = 409, response = super::openapi::ErrorResponse))
)]
pub(super) async fn rotate_key(
    State(state): State<AdminState>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path(id): Path<String>,
) -> ApiResult {
    let secret = new_secret()?;
    let (record, revision) = state
        .store
        .rotate_key(
            &actor.0,
            &id,
            &hex::encode(digest(&secret)),
            &prefix_of(&secret),
        )
        .await?;
    ok(StatusCode::OK, issued(record, secret, Vec::new(), revision))
}

/// Revoke a key: every gateway refuses it once the change reaches it (the change feed).
#[utoipa::path(
    delete,
    path = "/v1/keys/{id}",
    params(("id" = String, Path, description = "the key's id")),
    responses((status = 200, description = "success", body = super::api::Revision), (status = 404, response = super::openapi::ErrorResponse), (status = 409, response = super::openapi::ErrorResponse))
)]
pub(super) async fn revoke_key(
    State(state): State<AdminState>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path(id): Path<String>,
) -> ApiResult {
    let revision = state.store.revoke_key(&actor.0, &id).await?;
    ok(StatusCode::OK, Revision { revision })
}

/// A model's limits for every caller, beside each key's own.
#[utoipa::path(
    get,
    path = "/v1/models/{m}/limits",
    params(("m" = String, Path, description = "the model", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")),
    responses((status = 200, description = "success", body = super::api::ModelLimitsAnswer), (status = 404, response = super::openapi::ErrorResponse))
)]
pub(super) async fn get_model_limits(
    State(state): State<AdminState>,
    Path(model): Path<String>,
) -> ApiResult {
    // 404 for a model that does not exist.
    state.store.model(&model).await?;
    let limits = state
        .store
        .model_limits()
        .await?
        .remove(&model)
        .map(serde_json::from_value::<Limits>)
        .transpose()
        .map_err(internal)?
        .unwrap_or_default();
    let revision = state.store.revision().await?;
    ok(
        StatusCode::OK,
        ModelLimitsAnswer {
            model,
            limits,
            revision,
        },
    )
}

/// Replace a model's limits for every caller: requests and rows per second, requests in
/// flight. Over them, a request gets 429 with `Retry-After`, whatever its key.
#[utoipa::path(
    put,
    path = "/v1/models/{m}/limits",
    params(("m" = String, Path, description = "the model", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")),
    request_body = Limits,
    responses((status = 200, description = "success", body = super::api::ModelLimitsAnswer), (status = 400, response = super::openapi::ErrorResponse), (status = 404, response = super::openapi::ErrorResponse))
)]
pub(super) async fn set_model_limits(
    State(state): State<AdminState>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path(model): Path<String>,
    body: Bytes,
) -> ApiResult {
    let limits: Limits = parse(&body)?;
    limits.check().map_err(bad_request)?;
    let spec = (!limits.is_empty())
        .then(|| serde_json::to_value(limits))
        .transpose()
        .map_err(internal)?;
    let revision = state.store.set_model_limits(&actor.0, &model, spec).await?;
    ok(
        StatusCode::OK,
        ModelLimitsAnswer {
            model,
            limits,
            revision,
        },
    )
}

/// Remove a model's limits.
#[utoipa::path(
    delete,
    path = "/v1/models/{m}/limits",
    params(("m" = String, Path, description = "the model", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")),
    responses((status = 200, description = "success", body = super::api::Revision), (status = 404, response = super::openapi::ErrorResponse))
)]
pub(super) async fn remove_model_limits(
    State(state): State<AdminState>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path(model): Path<String>,
) -> ApiResult {
    let revision = state.store.set_model_limits(&actor.0, &model, None).await?;
    ok(StatusCode::OK, Revision { revision })
}
