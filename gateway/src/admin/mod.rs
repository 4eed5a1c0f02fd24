//! The management API (`/v1/...`) over the registry: JSON over HTTP on its own listener,
//! behind bearer tokens with a read and a write role; and the command-line client ([`cli`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::de::DeserializeOwned;
use serde_json::Value;
use switchyard_registry::{RegistryError, Store};

pub mod cli;
mod dashboard;
mod evaluations;
mod experiment;
pub mod figures;
mod models;
pub mod openapi;
pub mod output;
mod rollouts;
mod system;
mod traffic;

use crate::auth;
use crate::config::{AdminRole, Config, ServingConfig};
use crate::control::capacity::Capacity;
use crate::control::rollout::RolloutStatus;
use crate::core::Gateway;
use crate::core::feedback::is_json;
use crate::error::{ErrorKind, GatewayError, quoted};
use figures::FigureHistory;

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
    /// Where registered artifacts may be, resolved (symlinks followed); see
    /// `registry.artifact_roots`.
    artifact_roots: Arc<Vec<PathBuf>>,
    figures: Arc<FigureHistory>,
    rollouts: Arc<RolloutStatus>,
    /// One evaluation job at a time.
    evaluations: Arc<tokio::sync::Semaphore>,
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
        whole: &Config,
    ) -> AdminState {
        let config = &whole.admin;
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
            models_dir: whole.models.dir.clone(),
            defaults: whole.serving.clone(),
            artifact_roots: Arc::new(artifact_roots(whole)),
            figures,
            rollouts,
            evaluations: Arc::new(tokio::sync::Semaphore::new(1)),
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
        if let Err(refusal) = local_only(&request, needs) {
            return refusal.into_response();
        }
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

/// Without tokens the API trusts whoever reaches it, so it makes sure that is a program on this
/// machine and not a web page driving a browser here: the peer is on loopback, the Host names
/// loopback (no DNS rebinding), no other origin sent the request, and writes come as JSON (a
/// page can post a form or text/plain across sites without asking, but not JSON).
fn local_only(request: &Request, needs: AdminRole) -> Result<(), GatewayError> {
    let refuse = |message: String| Err(GatewayError::new(ErrorKind::PermissionDenied, message));
    if let Some(ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<SocketAddr>>()
        && !peer.ip().is_loopback()
    {
        return refuse(format!(
            "without admin tokens the management API answers loopback clients only, not {}",
            peer.ip()
        ));
    }
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()));
    if let Some(host) = host
        && !is_loopback_host(host)
    {
        return refuse(format!(
            "Host '{}' is not a loopback name; without admin tokens the management API answers \
             requests to localhost only",
            quoted(host)
        ));
    }
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|value| value.to_str().ok());
    let cross_site = headers
        .get("sec-fetch-site")
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"cross-site"));
    let foreign_origin = origin.is_some_and(|origin| {
        let host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        !is_loopback_host(host)
    });
    if cross_site || foreign_origin {
        return refuse("cross-origin requests are refused without admin tokens".into());
    }
    let writes_a_body = matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH
    );
    if needs == AdminRole::Write && writes_a_body && !is_json(headers) {
        return Err(GatewayError::new(
            ErrorKind::UnsupportedMediaType,
            "writes must be sent as Content-Type: application/json",
        ));
    }
    Ok(())
}

/// `localhost`, `127.x.x.x` or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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
