//! The management API (`/v1/...`) over the registry: JSON over HTTP on its own listener,
//! behind bearer tokens with a read and a write role; and the command-line client ([`cli`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use switchyard_registry::{NewModel, NewScores, NewVersion, RegistryError, Store, VersionState};

pub mod cli;

use crate::auth;
use crate::config::{AdminConfig, AdminRole, ServingConfig};
use crate::control::capacity::Capacity;
use crate::control::import::{import_repository, version_settings};
use crate::control::runtimes;
use crate::core::Gateway;
use crate::core::feedback::Feedback;
use crate::error::{ErrorKind, GatewayError};
use crate::routing::{self, TrafficPolicy};

/// The OpenAPI description served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../../openapi.json");

#[derive(Clone)]
pub struct AdminState {
    store: Arc<dyn Store>,
    gateway: Arc<Gateway>,
    capacity: Arc<Capacity>,
    tokens: Arc<Vec<([u8; 32], AdminRole)>>,
    /// No token is configured: only a loopback listener may then answer, to anyone on it.
    open: bool,
    models_dir: PathBuf,
    defaults: ServingConfig,
}

impl AdminState {
    pub fn new(
        store: Arc<dyn Store>,
        gateway: Arc<Gateway>,
        capacity: Arc<Capacity>,
        config: &AdminConfig,
        models_dir: PathBuf,
        defaults: ServingConfig,
    ) -> AdminState {
        let mut tokens: Vec<([u8; 32], AdminRole)> = config
            .tokens
            .iter()
            .filter_map(|token| match auth::decode_hex(&token.sha256) {
                Some(digest) => Some((digest, token.role)),
                None => {
                    tracing::error!("ignoring an admin token whose sha256 is not 64 hex digits");
                    None
                }
            })
            .collect();
        if let Ok(token) = std::env::var("SWITCHYARD_ADMIN_TOKEN")
            && !token.is_empty()
        {
            tokens.push((auth::digest(&token), AdminRole::Write));
        }
        let open = tokens.is_empty() && config.addr.ip().is_loopback();
        if open {
            tracing::warn!(addr = %config.addr, "no admin token configured: the management API is open to loopback clients");
        }
        AdminState {
            store,
            gateway,
            capacity,
            tokens: Arc::new(tokens),
            open,
            models_dir,
            defaults,
        }
    }
}

/// A registry refusal in the API's terms: the kind decides the status, as everywhere.
impl From<RegistryError> for GatewayError {
    fn from(error: RegistryError) -> Self {
        let kind = match &error {
            RegistryError::NotFound(_) => ErrorKind::NotFound,
            RegistryError::Conflict(_) => ErrorKind::Conflict,
            RegistryError::Invalid(_) => ErrorKind::InvalidArgument,
            RegistryError::Storage(_) => ErrorKind::Internal,
        };
        GatewayError::new(kind, error.to_string())
    }
}

type ApiError = GatewayError;

fn bad_request(message: impl Into<String>) -> ApiError {
    GatewayError::invalid(message)
}

fn internal(error: impl std::fmt::Display) -> ApiError {
    GatewayError::internal(error.to_string())
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| bad_request(format!("invalid request body: {e}")))
}

type ApiResult = Result<Response, ApiError>;

fn ok(status: StatusCode, body: Value) -> ApiResult {
    Ok((status, axum::Json(body)).into_response())
}

/// The actor recorded in the audit log: the token's role and a short digest prefix.
#[derive(Clone)]
struct Actor(String);

async fn authenticate(
    State(state): State<AdminState>,
    mut request: Request,
    next: Next,
) -> Response {
    let needs = if matches!(*request.method(), Method::GET | Method::HEAD) {
        AdminRole::Read
    } else {
        AdminRole::Write
    };
    let actor = if state.open {
        Actor("loopback".into())
    } else {
        let Some(presented) = auth::presented_secret(request.headers()) else {
            return GatewayError::new(ErrorKind::Unauthenticated, "a bearer token is required")
                .into_response();
        };
        let digest = auth::digest(presented);
        let Some((_, role)) = state
            .tokens
            .iter()
            .find(|(known, _)| auth::same_digest(known, &digest))
        else {
            return GatewayError::new(ErrorKind::Unauthenticated, "unknown token").into_response();
        };
        if needs == AdminRole::Write && *role == AdminRole::Read {
            return GatewayError::new(ErrorKind::PermissionDenied, "this token may only read")
                .into_response();
        }
        let prefix: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        Actor(format!("token:{prefix}"))
    };
    request.extensions_mut().insert(actor);
    next.run(request).await
}

pub fn router(state: AdminState) -> Router {
    let api = Router::new()
        .route("/v1/models", get(list_models).post(create_model))
        .route("/v1/models/{m}", get(get_model))
        .route(
            "/v1/models/{m}/versions",
            get(list_versions).post(register_version),
        )
        .route(
            "/v1/models/{m}/versions/{v}",
            get(get_version).delete(remove_version),
        )
        .route(
            "/v1/models/{m}/versions/{v}/scores",
            get(list_scores).post(add_scores),
        )
        .route("/v1/models/{m}/traffic", get(get_traffic).put(set_traffic))
        .route("/v1/models/{m}/policy", get(get_policy).put(set_policy))
        .route("/v1/models/{m}/experiment", get(experiment))
        .route("/v1/feedback", post(feedback))
        .route("/v1/resources", get(resources))
        .route(
            "/v1/models/{m}/aliases/{a}",
            put(set_alias).delete(remove_alias),
        )
        .route("/v1/events", get(events))
        .route("/v1/repository/import", post(import))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route(
            "/v1/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .merge(api)
        .fallback(|| async { GatewayError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            GatewayError::new(
                ErrorKind::MethodNotAllowed,
                "method not allowed on this endpoint",
            )
        })
        .with_state(state)
}

/// What this gateway process is doing with a version, next to the registry's record.
fn serving_state(gateway: &Gateway, model: &str, label: &str) -> Value {
    let table = gateway.snapshot();
    let version = table
        .model(model)
        .ok()
        .and_then(|m| m.versions.iter().find(|v| &*v.label == label).cloned());
    match version.as_ref().map(|v| &v.status) {
        Some(status) => json!(status.name()),
        None => Value::Null,
    }
}

async fn list_models(State(state): State<AdminState>) -> ApiResult {
    let snapshot = state.store.snapshot().await?;
    ok(
        StatusCode::OK,
        json!({ "revision": snapshot.revision, "models": snapshot.models }),
    )
}

async fn create_model(
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
        json!({ "revision": revision, "model": record }),
    )
}

async fn get_model(State(state): State<AdminState>, Path(model): Path<String>) -> ApiResult {
    let record = state.store.model(&model).await?;
    let mut body = serde_json::to_value(&record).map_err(internal)?;
    if let Some(versions) = body["versions"].as_array_mut() {
        for version in versions {
            let label = version["label"].as_str().unwrap_or_default().to_owned();
            version["serving"] = serving_state(&state.gateway, &model, &label);
        }
    }
    ok(StatusCode::OK, body)
}

async fn list_versions(State(state): State<AdminState>, Path(model): Path<String>) -> ApiResult {
    let record = state.store.model(&model).await?;
    ok(StatusCode::OK, json!({ "versions": record.versions }))
}

async fn register_version(
    State(state): State<AdminState>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path(model): Path<String>,
    body: Bytes,
) -> ApiResult {
    let mut version: NewVersion = parse(&body)?;
    if !runtimes::is_available(&version.runtime) {
        return Err(bad_request(runtimes::unavailable(&version.runtime)));
    }
    let artifact =
        std::path::absolute(&version.artifact).unwrap_or_else(|_| PathBuf::from(&version.artifact));
    if let Err(error) = std::fs::File::open(&artifact).and_then(|file| {
        if file.metadata()?.is_file() {
            Ok(())
        } else {
            Err(std::io::Error::other("not a file"))
        }
    }) {
        return Err(bad_request(format!(
            "artifact {} cannot be read: {error}",
            artifact.display()
        )));
    }
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
        json!({ "revision": revision, "version": current }),
    )
}

async fn get_version(
    State(state): State<AdminState>,
    Path((model, label)): Path<(String, String)>,
) -> ApiResult {
    let version = state.store.version(&model, &label).await?;
    let mut body = serde_json::to_value(&version).map_err(internal)?;
    body["serving"] = serving_state(&state.gateway, &model, &label);
    ok(StatusCode::OK, body)
}

async fn remove_version(
    State(state): State<AdminState>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path((model, label)): Path<(String, String)>,
) -> ApiResult {
    let revision = state.store.remove_version(&actor.0, &model, &label).await?;
    ok(
        StatusCode::ACCEPTED,
        json!({ "revision": revision, "state": VersionState::Draining }),
    )
}

async fn add_scores(
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
    ok(StatusCode::CREATED, json!({ "revision": revision }))
}

async fn list_scores(
    State(state): State<AdminState>,
    Path((model, label)): Path<(String, String)>,
) -> ApiResult {
    let scores = state.store.scores(&model, &label).await?;
    ok(StatusCode::OK, json!({ "scores": scores }))
}

async fn get_traffic(State(state): State<AdminState>, Path(model): Path<String>) -> ApiResult {
    let record = state.store.model(&model).await?;
    let revision = state.store.revision().await?;
    ok(
        StatusCode::OK,
        json!({ "weights": record.traffic, "revision": revision }),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrafficBody {
    weights: BTreeMap<String, u64>,
}

async fn set_traffic(
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
        json!({ "weights": traffic.weights, "revision": revision }),
    )
}

async fn get_policy(State(state): State<AdminState>, Path(model): Path<String>) -> ApiResult {
    let record = state.store.model(&model).await?;
    ok(StatusCode::OK, json!({ "policy": record.policy }))
}

async fn set_policy(
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
    let stored = serde_json::to_value(&policy).map_err(internal)?;
    let revision = state
        .store
        .set_policy(&actor.0, &model, stored.clone())
        .await?;
    ok(
        StatusCode::OK,
        json!({ "policy": stored, "revision": revision }),
    )
}

/// The live figures of the model's routing experiment, from this gateway process.
async fn experiment(State(state): State<AdminState>, Path(model): Path<String>) -> ApiResult {
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
    let versions: Vec<Value> = model
        .versions
        .iter()
        .map(|version| {
            let stats = &version.stats;
            let rewards = stats.rewards();
            let (mean, low, high) = routing::reward_interval(&rewards);
            let shadow: serde_json::Map<String, Value> = stats
                .shadow()
                .into_iter()
                .map(|(primary, tally)| {
                    let argmax_agreement = (tally.argmax_compared > 0)
                        .then(|| tally.argmax_agreed as f64 / tally.argmax_compared as f64);
                    (
                        primary.to_string(),
                        json!({
                            "pairs": tally.pairs,
                            "errors": tally.errors,
                            "max_abs_diff": tally.max_abs_diff,
                            "mean_max_abs_diff": tally.mean_max_abs_diff(),
                            "argmax_agreement": argmax_agreement,
                        }),
                    )
                })
                .collect();
            json!({
                "version": &*version.label,
                "state": version.status.name(),
                "eligible": model.eligible(version),
                "traffic_weight": model
                    .traffic
                    .iter()
                    .find(|(label, _)| *label == version.label)
                    .map_or(0, |(_, weight)| *weight),
                "effective_weight": effective(&version.label),
                "score": version.score,
                "requests": stats.requests(),
                "errors": stats.errors(),
                "recent_error_rate": stats.recent_error_rate(),
                "latency_ms": {"p50": stats.latency_ms(0.5), "p99": stats.latency_ms(0.99)},
                "reward": {
                    "observations": rewards.successes + rewards.failures,
                    "mean": mean,
                    "ci95": [low, high],
                },
                "shadow_of": shadow,
            })
        })
        .collect();
    ok(
        StatusCode::OK,
        json!({
            "model": &*model.name,
            "policy": model.policy,
            "feedback_received": state.gateway.experiments().has_feedback(&model.name),
            "versions": versions,
        }),
    )
}

/// Devices (budget, reserved, measured, free) and each version's replicas, reservations and
/// autoscaler target, as this gateway accounts for them.
async fn resources(State(state): State<AdminState>) -> ApiResult {
    let table = state.gateway.snapshot();
    ok(StatusCode::OK, state.capacity.report(&table))
}

async fn feedback(State(state): State<AdminState>, body: Bytes) -> ApiResult {
    let answer = Feedback::parse(&body)?.apply(&state.gateway)?;
    ok(StatusCode::OK, answer)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AliasBody {
    version: String,
}

async fn set_alias(
    State(state): State<AdminState>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path((model, alias)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let target: AliasBody = parse(&body)?;
    let revision = state
        .store
        .set_alias(&actor.0, &model, &alias, &target.version)
        .await?;
    ok(
        StatusCode::OK,
        json!({ "alias": alias, "version": target.version, "revision": revision }),
    )
}

async fn remove_alias(
    State(state): State<AdminState>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path((model, alias)): Path<(String, String)>,
) -> ApiResult {
    let revision = state.store.remove_alias(&actor.0, &model, &alias).await?;
    ok(StatusCode::OK, json!({ "revision": revision }))
}

#[derive(Deserialize)]
struct EventsQuery {
    #[serde(default)]
    after: i64,
    #[serde(default = "default_limit")]
    limit: i64,
}

fn default_limit() -> i64 {
    100
}

async fn events(
    State(state): State<AdminState>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(query) = query.map_err(|e| bad_request(e.body_text()))?;
    let events = state.store.events_after(query.after, query.limit).await?;
    let next_after = events.last().map_or(query.after, |event| event.revision);
    ok(
        StatusCode::OK,
        json!({ "events": events, "next_after": next_after }),
    )
}

async fn import(State(state): State<AdminState>) -> ApiResult {
    let imported = import_repository(state.store.as_ref(), &state.models_dir, &state.defaults)
        .await
        .map_err(|e| GatewayError::internal(format!("{e:#}")))?;
    let revision = state.store.revision().await?;
    ok(
        StatusCode::OK,
        json!({ "imported": imported, "revision": revision }),
    )
}
