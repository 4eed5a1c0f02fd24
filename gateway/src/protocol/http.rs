//! The Open Inference Protocol over HTTP/REST (KServe v2), with Triton's binary tensor data and
//! model configuration extensions.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde::Serialize;
use serde_json::json;
use switchyard_runtimes::TensorSpec;

use crate::auth::Caller;
use crate::core::Gateway;
use crate::core::feedback::Feedback;
use crate::error::{ErrorKind, GatewayError};
use crate::protocol::extensions::{self, Actor, Extensions};
use crate::protocol::json::{EncodedResponse, decode_request, encode_response};
use crate::protocol::metadata;
use crate::protocol::pipeline::{Arrival, Call, Expected, Pipeline};
use crate::protocol::shared_memory::Access;
use crate::telemetry::Protocol;
use crate::wire;

/// Header of the binary tensor data extension: the length of the JSON part of the body.
pub const INFERENCE_HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";

#[derive(Clone)]
struct HttpState {
    pipeline: Arc<Pipeline>,
    extensions: Arc<Extensions>,
    max_request_bytes: usize,
}

impl HttpState {
    fn gateway(&self) -> &Gateway {
        self.pipeline.gateway()
    }
}

pub fn router(
    pipeline: Arc<Pipeline>,
    extensions: Arc<Extensions>,
    max_request_bytes: usize,
) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/stats", get(all_statistics))
        .route("/v2/models/{model}/stats", get(model_statistics))
        .route(
            "/v2/models/{model}/versions/{version}/stats",
            get(version_statistics),
        )
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route("/v2/models/{model}/config", get(model_config))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(version_metadata),
        )
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(version_ready),
        )
        .route(
            "/v2/models/{model}/versions/{version}/config",
            get(version_config),
        )
        .route("/v2/models/{model}/infer", post(model_infer))
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(version_infer),
        )
        // Rewards for the routing experiment, from applications holding an inference key.
        .route(
            "/v1/feedback",
            post(
                |State(state): State<HttpState>, headers: HeaderMap, body: Bytes| async move {
                    Feedback::from_http(&headers, &body)
                        .and_then(|feedback| feedback.apply(state.gateway()))
                        .map_or_else(IntoResponse::into_response, |answer| {
                            axum::Json(answer).into_response()
                        })
                },
            ),
        )
        // Triton's repository extension.
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{model}/load", post(repository_load))
        .route(
            "/v2/repository/models/{model}/unload",
            post(repository_unload),
        )
        // Triton's shared-memory extensions.
        .route("/v2/systemsharedmemory/status", get(shm_status))
        .route(
            "/v2/systemsharedmemory/region/{region}/status",
            get(shm_region_status),
        )
        .route(
            "/v2/systemsharedmemory/region/{region}/register",
            post(shm_register),
        )
        .route(
            "/v2/systemsharedmemory/unregister",
            post(shm_unregister_all),
        )
        .route(
            "/v2/systemsharedmemory/region/{region}/unregister",
            post(shm_unregister),
        )
        .route(
            "/v2/cudasharedmemory/status",
            get(|| async { axum::Json(json!([])) }),
        )
        .route(
            "/v2/cudasharedmemory/region/{region}/status",
            get(|Path(region): Path<String>| async move {
                GatewayError::not_found(format!(
                    "Unable to find cuda shared memory region: '{}'",
                    crate::error::quoted(&region)
                ))
            }),
        )
        .route(
            "/v2/cudasharedmemory/region/{region}/register",
            post(|| async { metadata::cuda_shared_memory_refusal() }),
        )
        .route(
            "/v2/cudasharedmemory/unregister",
            post(|| async { empty_ok() }),
        )
        .route(
            "/v2/cudasharedmemory/region/{region}/unregister",
            post(|| async { empty_ok() }),
        )
        .fallback(|| async { GatewayError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            GatewayError::new(
                ErrorKind::MethodNotAllowed,
                "method not allowed on this endpoint",
            )
        })
        .with_state(HttpState {
            pipeline,
            extensions,
            max_request_bytes,
        })
}

/// Triton's answer to an extension call that succeeded: 200 and no body.
fn empty_ok() -> Response {
    axum::http::StatusCode::OK.into_response()
}

/// An extension call's JSON body; none is an empty object.
fn extension_body<T: serde::de::DeserializeOwned + Default>(
    body: &Bytes,
) -> Result<T, GatewayError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| GatewayError::invalid(format!("invalid request body: {e}")))
}

fn actor_name(actor: Option<Extension<Actor>>) -> String {
    actor.map_or_else(|| "http".to_owned(), |Extension(Actor(actor))| actor)
}

#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexRequest {
    #[serde(default)]
    ready: bool,
}

async fn repository_index(State(state): State<HttpState>, body: Bytes) -> Response {
    let answer = async {
        let request: IndexRequest = extension_body(&body)?;
        let entries = state.extensions.repository.index(request.ready).await?;
        let index: Vec<serde_json::Value> = entries
            .into_iter()
            .map(|entry| {
                let mut line = json!({ "name": entry.name });
                if !entry.version.is_empty() {
                    line["version"] = json!(entry.version);
                }
                if !entry.state.is_empty() {
                    line["state"] = json!(entry.state);
                }
                if !entry.reason.is_empty() {
                    line["reason"] = json!(entry.reason);
                }
                line
            })
            .collect();
        Ok::<_, GatewayError>(axum::Json(index).into_response())
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadRequest {
    #[serde(default)]
    parameters: serde_json::Map<String, serde_json::Value>,
}

/// axum's own bound on these bodies (2 MiB) holds: they are small JSON documents.
async fn repository_load(
    State(state): State<HttpState>,
    Path(model): Path<String>,
    actor: Option<Extension<Actor>>,
    body: Bytes,
) -> Response {
    let answer = async {
        let load: LoadRequest = extension_body(&body)?;
        let config = extensions::load_override(
            load.parameters
                .iter()
                .map(|(key, value)| (key.as_str(), value.as_str())),
        )?;
        state
            .extensions
            .repository
            .load(&actor_name(actor), &model, config)
            .await?;
        Ok::<_, GatewayError>(empty_ok())
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

async fn repository_unload(
    State(state): State<HttpState>,
    Path(model): Path<String>,
    actor: Option<Extension<Actor>>,
    body: Bytes,
) -> Response {
    let answer = async {
        // `unload_dependents` has no meaning without ensembles.
        let _: LoadRequest = extension_body(&body)?;
        state
            .extensions
            .repository
            .unload(&actor_name(actor), &model)
            .await?;
        Ok::<_, GatewayError>(empty_ok())
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

fn regions_json(regions: Vec<crate::protocol::shared_memory::RegionStatus>) -> Response {
    let regions: Vec<serde_json::Value> = regions
        .into_iter()
        .map(|region| {
            json!({
                "name": region.name,
                "key": region.key,
                "offset": region.offset,
                "byte_size": region.byte_size,
            })
        })
        .collect();
    axum::Json(regions).into_response()
}

async fn shm_status(State(state): State<HttpState>) -> Response {
    state
        .extensions
        .shared_memory
        .status(None)
        .map_or_else(IntoResponse::into_response, regions_json)
}

async fn shm_region_status(State(state): State<HttpState>, Path(region): Path<String>) -> Response {
    state
        .extensions
        .shared_memory
        .status(Some(&region))
        .map_or_else(IntoResponse::into_response, regions_json)
}

#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterRequest {
    key: String,
    #[serde(default)]
    offset: u64,
    byte_size: u64,
}

async fn shm_register(
    State(state): State<HttpState>,
    Path(region): Path<String>,
    body: Bytes,
) -> Response {
    let registered = serde_json::from_slice::<RegisterRequest>(&body)
        .map_err(|e| GatewayError::invalid(format!("invalid request body: {e}")))
        .and_then(|request| {
            state.extensions.shared_memory.register(
                &region,
                &request.key,
                request.offset,
                request.byte_size,
            )
        });
    registered.map_or_else(IntoResponse::into_response, |()| empty_ok())
}

async fn shm_unregister_all(State(state): State<HttpState>) -> Response {
    state
        .extensions
        .shared_memory
        .unregister(None)
        .map_or_else(IntoResponse::into_response, |()| empty_ok())
}

async fn shm_unregister(State(state): State<HttpState>, Path(region): Path<String>) -> Response {
    state
        .extensions
        .shared_memory
        .unregister(Some(&region))
        .map_or_else(IntoResponse::into_response, |()| empty_ok())
}

async fn server_metadata() -> Response {
    axum::Json(json!({
        "name": metadata::SERVER_NAME,
        "version": metadata::SERVER_VERSION,
        "extensions": metadata::EXTENSIONS,
    }))
    .into_response()
}

async fn live() -> Response {
    axum::Json(json!({ "live": true })).into_response()
}

async fn ready(State(state): State<HttpState>) -> Response {
    if state.gateway().is_ready() {
        axum::Json(json!({ "ready": true })).into_response()
    } else {
        GatewayError::unavailable("models are still loading").into_response()
    }
}

#[derive(Serialize)]
struct TensorMetadata<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [i64],
}

fn tensor_metadata(specs: &[TensorSpec]) -> Vec<TensorMetadata<'_>> {
    specs
        .iter()
        .map(|spec| TensorMetadata {
            name: &spec.name,
            datatype: spec.dtype.as_str(),
            shape: &spec.dims,
        })
        .collect()
}

fn metadata_response(
    gateway: &Gateway,
    model: &str,
    version: Option<&str>,
) -> Result<Response, GatewayError> {
    let metadata = metadata::model_metadata(&gateway.snapshot(), model, version)?;
    let versions: Vec<&str> = metadata.versions.iter().map(|v| &**v).collect();
    let mut body = json!({
        "name": &*metadata.name,
        "versions": versions,
        "platform": metadata.platform,
        "inputs": tensor_metadata(&metadata.inputs),
        "outputs": tensor_metadata(&metadata.outputs),
        "state": metadata.state,
    });
    if let Some(reason) = &metadata.reason {
        body["reason"] = json!(reason);
    }
    if let Some(memory) = &metadata.memory {
        body["memory"] = json!({
            "device": memory.device.to_string(),
            "replicas": memory.replicas,
            "bytes_per_replica": memory.bytes_per_replica,
        });
    }
    if let Some(warmup) = &metadata.warmup {
        body["warmup"] = json!(warmup);
    }
    Ok(axum::Json(body).into_response())
}

async fn model_metadata(State(state): State<HttpState>, Path(model): Path<String>) -> Response {
    metadata_response(state.gateway(), &model, None).unwrap_or_else(IntoResponse::into_response)
}

async fn version_metadata(
    State(state): State<HttpState>,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    metadata_response(state.gateway(), &model, Some(&version))
        .unwrap_or_else(IntoResponse::into_response)
}

fn ready_response(gateway: &Gateway, model: &str, version: Option<&str>) -> Response {
    match metadata::model_ready(&gateway.snapshot(), model, version) {
        Ok(()) => axum::Json(json!({ "name": model, "ready": true })).into_response(),
        Err(error) => error.into_response(),
    }
}

async fn model_ready(State(state): State<HttpState>, Path(model): Path<String>) -> Response {
    ready_response(state.gateway(), &model, None)
}

async fn version_ready(
    State(state): State<HttpState>,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    ready_response(state.gateway(), &model, Some(&version))
}

/// Triton's model configuration, as its clients and perf_analyzer read it.
fn config_response(
    gateway: &Gateway,
    model: &str,
    version: Option<&str>,
) -> Result<Response, GatewayError> {
    let config = metadata::model_config(&gateway.snapshot(), model, version)?;
    let body = wire::model_config_to_json(&config).map_err(GatewayError::internal)?;
    Ok(axum::Json(body).into_response())
}

async fn model_config(State(state): State<HttpState>, Path(model): Path<String>) -> Response {
    config_response(state.gateway(), &model, None).unwrap_or_else(IntoResponse::into_response)
}

async fn version_config(
    State(state): State<HttpState>,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    config_response(state.gateway(), &model, Some(&version))
        .unwrap_or_else(IntoResponse::into_response)
}

/// Triton's statistics extension, in its JSON form.
fn statistics_response(gateway: &Gateway, model: Option<&str>, version: Option<&str>) -> Response {
    let stats = match metadata::model_statistics(&gateway.snapshot(), model, version) {
        Ok(stats) => stats,
        Err(error) => return error.into_response(),
    };
    let model_stats: Vec<_> = stats
        .iter()
        .map(|stat| {
            let figures = &stat.figures;
            json!({
                "name": stat.name,
                "version": stat.version,
                "last_inference": figures.last_inference,
                "inference_count": figures.inference_count,
                "execution_count": figures.execution_count,
                "inference_stats": {
                    "success": figures.success,
                    "fail": figures.fail,
                    "queue": figures.queue,
                    "compute_input": figures.compute_input,
                    "compute_infer": figures.compute_infer,
                    "compute_output": figures.compute_output,
                    "cache_hit": {"count": 0, "ns": 0},
                },
                "batch_stats": figures.batches,
            })
        })
        .collect();
    axum::Json(json!({ "model_stats": model_stats })).into_response()
}

async fn all_statistics(State(state): State<HttpState>) -> Response {
    statistics_response(state.gateway(), None, None)
}

async fn model_statistics(State(state): State<HttpState>, Path(model): Path<String>) -> Response {
    statistics_response(state.gateway(), Some(&model), None)
}

async fn version_statistics(
    State(state): State<HttpState>,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    statistics_response(state.gateway(), Some(&model), Some(&version))
}

async fn model_infer(
    State(state): State<HttpState>,
    Path(model): Path<String>,
    request: Request,
) -> Response {
    infer(&state, &model, None, request)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn version_infer(
    State(state): State<HttpState>,
    Path((model, version)): Path<(String, String)>,
    request: Request,
) -> Response {
    infer(&state, &model, Some(&version), request)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// Reads the body, then hands the request to the pipeline with this front's decoder (JSON,
/// with the binary tensor extension) and encoder.
async fn infer(
    state: &HttpState,
    model: &str,
    version: Option<&str>,
    request: Request,
) -> Result<Response, GatewayError> {
    let received = Instant::now();
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let json_length = json_header_length(&parts.headers);
    let expected = Expected {
        declared,
        // The binary tensors start after the JSON header: there, the body's buffer is aligned.
        aligned_at: json_length.as_ref().ok().copied().flatten(),
        limit: state.max_request_bytes,
    };
    let arrival = state
        .pipeline
        .arrive(body, expected, received, |body| {
            let json_length = json_length?;
            if let Some(length) = json_length
                && length > body.len()
            {
                return Err(GatewayError::invalid(format!(
                    "Inference-Header-Content-Length is {length} but the body has only {} bytes",
                    body.len()
                )));
            }
            // Decoding JSON data can take up to four times its text (a one-digit element of
            // an 8-byte datatype and its comma); binary data is sliced, not copied.
            let json_part = json_length.unwrap_or(body.len());
            Ok(((body, json_length, json_part), json_part.saturating_mul(4)))
        })
        .await?;
    let Arrival {
        measured: (mut body, json_length, json_part),
        budget: _budget,
        admission: _admission,
    } = arrival;
    let binary = match json_length {
        Some(length) => body.split_off(length),
        None => Bytes::new(),
    };
    let call = Call {
        protocol: Protocol::Http,
        model,
        version,
        received,
        deadline: None,
        headers: parts.headers,
        decode_bytes: json_part,
        caller: parts
            .extensions
            .get::<Caller>()
            .cloned()
            .unwrap_or(Caller::Unlimited),
    };
    state
        .pipeline
        .infer(
            call,
            || {
                let memory = Access {
                    memory: &state.extensions.shared_memory,
                    max_input_bytes: state.max_request_bytes,
                };
                decode_request(model, version, &body, binary, Some(&memory))
            },
            |response, encoding| Ok(http_answer(encode_response(&response, &encoding)?)),
        )
        .await
}

/// The encoded response as an HTTP answer: plain JSON, or JSON followed by the binary outputs.
fn http_answer(encoded: EncodedResponse) -> Response {
    if encoded.binary.is_empty() {
        return (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            encoded.json,
        )
            .into_response();
    }
    let json_length = encoded.json.len();
    let mut chunks = std::collections::VecDeque::with_capacity(1 + encoded.binary.len());
    chunks.push_back(Bytes::from(encoded.json));
    chunks.extend(encoded.binary);
    let mut response = Response::new(Body::new(crate::protocol::chunks::Chunks::new(chunks)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(
        INFERENCE_HEADER_CONTENT_LENGTH,
        HeaderValue::from(json_length),
    );
    response
}

fn json_header_length(headers: &HeaderMap) -> Result<Option<usize>, GatewayError> {
    let Some(value) = headers.get(INFERENCE_HEADER_CONTENT_LENGTH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|value| value.trim().parse::<usize>().ok())
        .map(Some)
        .ok_or_else(|| {
            GatewayError::invalid("Inference-Header-Content-Length must be a byte count")
        })
}
