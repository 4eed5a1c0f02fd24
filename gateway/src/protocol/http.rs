//! The Open Inference Protocol over HTTP/REST (KServe v2), with Triton's binary tensor data and
//! model configuration extensions.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde::Serialize;
use serde_json::json;
use switchyard_runtimes::TensorSpec;

use crate::core::Gateway;
use crate::core::feedback::Feedback;
use crate::error::{ErrorKind, GatewayError};
use crate::protocol::json::{EncodedResponse, decode_request, encode_response};
use crate::protocol::metadata;
use crate::protocol::pipeline::{Call, Pipeline};
use crate::telemetry::Protocol;
use crate::wire;

/// Header of the binary tensor data extension: the length of the JSON part of the body.
pub const INFERENCE_HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";

#[derive(Clone)]
struct HttpState {
    pipeline: Arc<Pipeline>,
    max_request_bytes: usize,
}

impl HttpState {
    fn gateway(&self) -> &Gateway {
        self.pipeline.gateway()
    }
}

pub fn router(pipeline: Arc<Pipeline>, max_request_bytes: usize) -> Router {
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
        .fallback(|| async { GatewayError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            GatewayError::new(
                ErrorKind::MethodNotAllowed,
                "method not allowed on this endpoint",
            )
        })
        .with_state(HttpState {
            pipeline,
            max_request_bytes,
        })
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
    let (mut body, mut budget) = state
        .pipeline
        .read_body(body, declared, state.max_request_bytes, received)
        .await?;
    let json_length = json_header_length(&parts.headers, body.len())?;
    // Decoding JSON data can take up to four times its text (a one-digit element of an 8-byte
    // datatype and its comma); binary data is sliced, not copied.
    let json_part = json_length.unwrap_or(body.len());
    state
        .pipeline
        .charge(&mut budget, json_part.saturating_mul(4))?;
    let _admission = state.pipeline.admit()?;
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
    };
    state
        .pipeline
        .infer(
            call,
            || decode_request(model, version, &body, binary),
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
    let total = json_length + encoded.binary.iter().map(Bytes::len).sum::<usize>();
    let mut payload = Vec::with_capacity(total);
    payload.extend_from_slice(&encoded.json);
    for chunk in &encoded.binary {
        payload.extend_from_slice(chunk);
    }
    let mut response = Response::new(Body::from(payload));
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

fn json_header_length(
    headers: &HeaderMap,
    body_length: usize,
) -> Result<Option<usize>, GatewayError> {
    let Some(value) = headers.get(INFERENCE_HEADER_CONTENT_LENGTH) else {
        return Ok(None);
    };
    let length = value
        .to_str()
        .ok()
        .and_then(|value| value.trim().parse::<usize>().ok())
        .ok_or_else(|| {
            GatewayError::invalid("Inference-Header-Content-Length must be a byte count")
        })?;
    if length > body_length {
        return Err(GatewayError::invalid(format!(
            "Inference-Header-Content-Length is {length} but the body has only {body_length} bytes"
        )));
    }
    Ok(Some(length))
}
