//! The management API (`/v1/...`) over the registry: JSON over HTTP on its own listener,
//! behind bearer tokens with a read and a write role; and the command-line client ([`cli`]).

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::de::DeserializeOwned;
use serde_json::Value;
use switchyard_registry::{RegistryError, Store};

pub mod api;
mod capture;
pub mod cli;
mod dashboard;
mod evaluations;
mod experiment;
pub mod figures;
mod keys;
mod models;
pub mod openapi;
pub mod output;
mod rollouts;
mod system;
mod traffic;

use crate::auth;
use crate::config::{AdminRole, Config, ServingConfig};
use crate::control::capacity::Capacity;
use crate::control::keys::InForce;
use crate::control::rollout::RolloutStatus;
use crate::core::Gateway;
use crate::core::capture::Capture;
use crate::error::{ErrorKind, GatewayError};
use figures::FigureHistory;

#[derive(Clone)]
pub struct AdminState {
    store: Arc<dyn Store>,
    gateway: Arc<Gateway>,
    capacity: Arc<Capacity>,
    tokens: auth::ManagementTokens,
    /// The inference API's keys in force here, for their live figures.
    keys: auth::ApiKeys,
    /// The payload capture: its roots check a capture's folders, its figures are shown.
    capture: Capture,
    /// No token is configured: only a loopback listener may then answer, to anyone on it.
    open: bool,
    models_dir: PathBuf,
    defaults: ServingConfig,
    /// Where registered artifacts may be, resolved (symlinks followed); see
    /// `registry.artifact_roots`.
    artifact_roots: Arc<Vec<PathBuf>>,
    figures: Arc<FigureHistory>,
    rollouts: Arc<RolloutStatus>,
    /// One evaluation job at a time.
    evaluations: Arc<tokio::sync::Semaphore>,
    running_evaluation: Arc<std::sync::Mutex<Option<evaluations::RunningJob>>>,
    /// In a cluster: this node's id, and how long a silent node takes to be dead.
    cluster_node: Option<String>,
    cluster_dead_after: std::time::Duration,
}

impl AdminState {
    pub fn new(
        store: Arc<dyn Store>,
        gateway: Arc<Gateway>,
        capacity: Arc<Capacity>,
        figures: Arc<FigureHistory>,
        rollouts: Arc<RolloutStatus>,
        in_force: &InForce,
        whole: &Config,
    ) -> AdminState {
        let config = &whole.admin;
        let tokens = auth::ManagementTokens::new(&config.tokens);
        let open = tokens.is_empty() && config.addr.ip().is_loopback();
        if open {
            tracing::warn!(addr = %config.addr, "no admin token configured: the management API is open to loopback clients");
        }
        AdminState {
            store,
            gateway,
            capacity,
            tokens,
            keys: in_force.keys.clone(),
            capture: in_force.capture.clone(),
            open,
            models_dir: whole.models.dir.clone(),
            defaults: whole.serving.clone(),
            artifact_roots: Arc::new(artifact_roots(whole)),
            figures,
            rollouts,
            evaluations: Arc::new(tokio::sync::Semaphore::new(1)),
            running_evaluation: Arc::default(),
            cluster_node: whole
                .cluster
                .enabled
                .then(|| crate::control::cluster::node_id(&whole.cluster).ok())
                .flatten(),
            cluster_dead_after: whole.cluster.dead_after.0,
        }
    }
}

/// `registry.artifact_roots`, or the model repository and `data/`; each resolved, and left out
/// when it does not exist.
fn artifact_roots(config: &Config) -> Vec<PathBuf> {
    let configured = &config.registry.artifact_roots;
    let roots = if configured.is_empty() {
        vec![config.models.dir.clone(), PathBuf::from("data")]
    } else {
        configured.clone()
    };
    roots
        .iter()
        .filter_map(|root| std::fs::canonicalize(root).ok())
        .collect()
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

/// Reads a request body. JSON Schema counts `8.0` as an integer, and clients that build JSON
/// from the API's document may send it so: a number with no fraction is read as an integer
/// wherever one is expected.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let refused = |e: serde_json::Error| bad_request(format!("invalid request body: {e}"));
    let mut value: Value = serde_json::from_slice(body).map_err(refused)?;
    integral_numbers(&mut value);
    serde_json::from_value(value).map_err(refused)
}

/// Turns every whole number written with a fraction (`8.0`) into an integer, within the range
/// a double holds exactly. Recurses no deeper than serde_json's own limit on nesting.
fn integral_numbers(value: &mut Value) {
    const EXACT: f64 = 9_007_199_254_740_992.0;
    match value {
        Value::Number(number) if number.is_f64() => {
            if let Some(float) = number.as_f64()
                && float.fract() == 0.0
                && float.abs() <= EXACT
            {
                *value = if float < 0.0 {
                    Value::from(float as i64)
                } else {
                    Value::from(float as u64)
                };
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_numbers),
        Value::Object(fields) => fields.values_mut().for_each(integral_numbers),
        _ => {}
    }
}

type ApiResult = Result<Response, ApiError>;

/// An answer: one of the types of [`api`], so that the document, the CLI and the handler
/// agree on its shape.
fn ok(status: StatusCode, body: impl serde::Serialize) -> ApiResult {
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
    let actor = match state
        .tokens
        .authorize(&management_call(&request, needs), state.open)
    {
        Ok(actor) => Actor(actor),
        Err(refusal) => return refusal.into_response(),
    };
    request.extensions_mut().insert(actor);
    next.run(request).await
}

/// A request as the management rule sees it; writes without a token must come as JSON.
fn management_call(request: &Request, needs: AdminRole) -> auth::Call<'_> {
    auth::Call::of(request, needs, true)
}

pub fn router(state: AdminState) -> Router {
    let api = Router::new()
        .route(
            "/v1/models",
            get(models::list_models).post(models::create_model),
        )
        .route("/v1/models/{m}", get(models::get_model))
        .route(
            "/v1/models/{m}/versions",
            get(models::list_versions).post(models::register_version),
        )
        .route(
            "/v1/models/{m}/versions/{v}",
            get(models::get_version).delete(models::remove_version),
        )
        .route(
            "/v1/models/{m}/versions/{v}/scores",
            get(models::list_scores).post(models::add_scores),
        )
        .route(
            "/v1/models/{m}/traffic",
            get(traffic::get_traffic).put(traffic::set_traffic),
        )
        .route(
            "/v1/models/{m}/policy",
            get(traffic::get_policy).put(traffic::set_policy),
        )
        .route("/v1/models/{m}/experiment", get(experiment::experiment))
        .route("/v1/models/{m}/figures", get(figures::figures))
        .route(
            "/v1/models/{m}/rollouts",
            get(rollouts::list_rollouts).post(rollouts::start_rollout),
        )
        .route("/v1/models/{m}/rollouts/{id}", get(rollouts::get_rollout))
        .route(
            "/v1/models/{m}/evaluations",
            get(evaluations::list_evaluations).post(evaluations::start_evaluation),
        )
        .route(
            "/v1/models/{m}/evaluations/{id}",
            get(evaluations::get_evaluation),
        )
        .route(
            "/v1/models/{m}/evaluations/{id}/cancel",
            post(evaluations::cancel_evaluation),
        )
        .route(
            "/v1/models/{m}/rollouts/{id}/{action}",
            post(rollouts::control_rollout),
        )
        .route("/v1/feedback", post(experiment::feedback))
        .route("/v1/resources", get(system::resources))
        .route("/v1/cluster", get(system::cluster))
        .route(
            "/v1/models/{m}/aliases/{a}",
            put(traffic::set_alias).delete(traffic::remove_alias),
        )
        .route("/v1/keys", get(keys::list_keys).post(keys::create_key))
        .route("/v1/keys/{id}", put(keys::set_key).delete(keys::revoke_key))
        .route("/v1/keys/{id}/rotate", post(keys::rotate_key))
        .route(
            "/v1/models/{m}/limits",
            get(keys::get_model_limits)
                .put(keys::set_model_limits)
                .delete(keys::remove_model_limits),
        )
        .route("/v1/capture", get(capture::list_captures))
        .route(
            "/v1/models/{m}/capture",
            get(capture::get_capture)
                .put(capture::set_capture)
                .delete(capture::remove_capture),
        )
        .route("/v1/events", get(system::events))
        .route("/v1/repository/import", post(system::import))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/v1/openapi.json", get(openapi::document))
        .route("/", get(dashboard::index))
        .route("/assets/{name}", get(dashboard::asset))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_written_with_a_fraction_read_as_integers() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Counts {
            replicas: u64,
            offset: i64,
            share: f64,
            nested: Vec<std::collections::BTreeMap<String, u32>>,
        }
        let body = Bytes::from_static(
            br#"{"replicas": 4.0, "offset": -2.0, "share": 0.5, "nested": [{"a": 1.0}]}"#,
        );
        let counts: Counts = parse(&body)
            .map_err(|_| "refused")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(counts.replicas, 4);
        assert_eq!(counts.offset, -2);
        assert_eq!(counts.share, 0.5);
        assert_eq!(counts.nested[0]["a"], 1);
        // A fraction is still no integer, and past 2^53 a double is not exact.
        for body in [&br#"{"replicas": 4.5}"#[..], br#"{"replicas": 1e300}"#] {
            assert!(
                parse::<std::collections::BTreeMap<String, u64>>(&Bytes::from_static(body))
                    .is_err()
            );
        }
    }
}
