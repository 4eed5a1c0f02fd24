//! The Open Inference Protocol over HTTP/REST (KServe v2), with Triton's binary tensor data and
//! model configuration extensions.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Serialize;
use serde_json::json;
use switchyard_runtimes::{Device, TensorSpec};

use crate::error::{ErrorKind, GatewayError};
use crate::gateway::Gateway;
use crate::metadata::{self, ConfigTensor};
use crate::protocol::json::{decode_request, encode_response};
use crate::tracing_setup::{TRACE_TARGET, request_span};
use tracing::Instrument;

/// Header of the binary tensor data extension: the length of the JSON part of the body.
pub const INFERENCE_HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";

#[derive(Clone)]
struct HttpState {
    gateway: Arc<Gateway>,
    max_request_bytes: usize,
}

pub fn router(gateway: Arc<Gateway>, max_request_bytes: usize) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route("/v2/models/{model}/config", get(model_config))
        .route("/v2/models/{model}/infer", post(model_infer))
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
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(version_infer),
        )
        // Rewards for the routing experiment, from applications holding an inference key.
        .route(
            "/v1/feedback",
            post(|State(state): State<HttpState>, body: Bytes| {
                crate::api::inference_feedback(state.gateway, body)
            }),
        )
        .fallback(|| async { GatewayError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this endpoint",
            )
        })
        .with_state(HttpState {
            gateway,
            max_request_bytes,
        })
        // A client that stops sending its body must not hold its place for ever.
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            std::time::Duration::from_secs(30),
        ))
}

fn error_response(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let status = match self.kind {
            ErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut response = error_response(status, &self.message);
        if self.kind == ErrorKind::Overloaded {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
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
    if state.gateway.is_ready() {
        axum::Json(json!({ "ready": true })).into_response()
    } else {
        error_response(StatusCode::SERVICE_UNAVAILABLE, "models are still loading")
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
    let metadata = gateway.model_metadata(model, version)?;
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
    Ok(axum::Json(body).into_response())
}

async fn model_metadata(State(state): State<HttpState>, Path(model): Path<String>) -> Response {
    metadata_response(&state.gateway, &model, None).unwrap_or_else(IntoResponse::into_response)
}

async fn version_metadata(
    State(state): State<HttpState>,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    metadata_response(&state.gateway, &model, Some(&version))
        .unwrap_or_else(IntoResponse::into_response)
}

fn ready_response(gateway: &Gateway, model: &str, version: Option<&str>) -> Response {
    match gateway.model_ready(model, version) {
        Ok(()) => axum::Json(json!({ "name": model, "ready": true })).into_response(),
        Err(error) => error.into_response(),
    }
}

async fn model_ready(State(state): State<HttpState>, Path(model): Path<String>) -> Response {
    ready_response(&state.gateway, &model, None)
}

async fn version_ready(
    State(state): State<HttpState>,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    ready_response(&state.gateway, &model, Some(&version))
}

/// Triton's model configuration, as its clients and perf_analyzer read it.
fn config_response(
    gateway: &Gateway,
    model: &str,
    version: Option<&str>,
) -> Result<Response, GatewayError> {
    let config = gateway.model_config(model, version)?;
    let tensors = |tensors: &[ConfigTensor]| {
        tensors
            .iter()
            .map(|t| json!({"name": t.name, "data_type": t.dtype.triton_config_name(), "dims": t.dims}))
            .collect::<Vec<_>>()
    };
    let kind = match config.device {
        Device::Cuda(_) => "KIND_GPU",
        Device::Cpu => "KIND_CPU",
    };
    Ok(axum::Json(json!({
        "name": &*config.name,
        "platform": config.platform,
        "backend": config.backend,
        "max_batch_size": config.max_batch_size,
        "input": tensors(&config.inputs),
        "output": tensors(&config.outputs),
        "instance_group": [{ "name": &*config.name, "kind": kind, "count": config.instance_count }],
    }))
    .into_response())
}

async fn model_config(State(state): State<HttpState>, Path(model): Path<String>) -> Response {
    config_response(&state.gateway, &model, None).unwrap_or_else(IntoResponse::into_response)
}

async fn version_config(
    State(state): State<HttpState>,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    config_response(&state.gateway, &model, Some(&version))
        .unwrap_or_else(IntoResponse::into_response)
}

async fn model_infer(
    State(state): State<HttpState>,
    Path(model): Path<String>,
    request: Request,
) -> Response {
    let span = request_span("http", &model, request.headers());
    counted(
        &state,
        infer(state.clone(), model, None, request)
            .instrument(span)
            .await,
    )
}

/// Counts refusals and failures by reason in the metrics, then answers.
fn counted(state: &HttpState, result: Result<Response, GatewayError>) -> Response {
    result.unwrap_or_else(|error| {
        state.gateway.telemetry().reject(error.kind);
        error.into_response()
    })
}

async fn version_infer(
    State(state): State<HttpState>,
    Path((model, version)): Path<(String, String)>,
    request: Request,
) -> Response {
    counted(
        &state,
        infer(state.clone(), model, Some(version), request).await,
    )
}

async fn infer(
    state: HttpState,
    model: String,
    version: Option<String>,
    request: Request,
) -> Result<Response, GatewayError> {
    let received = Instant::now();
    let _admission = state.gateway.admit()?;
    let (parts, body) = request.into_parts();
    let mut body = read_body(&parts.headers, body, state.max_request_bytes).await?;
    // Under overload, refuse before decoding: the cheapest 429 that keeps the connection (the
    // body is read, so the connection stays usable).
    state.gateway.check_capacity(&model, version.as_deref())?;
    let json_length = json_header_length(&parts.headers, body.len())?;
    let binary = match json_length {
        Some(length) => body.split_off(length),
        None => Bytes::new(),
    };
    let (mut request, encoding) =
        crate::tracing_setup::child(|| tracing::debug_span!(target: TRACE_TARGET, "decode"))
            .in_scope(|| decode_request(&model, version.as_deref(), &body, binary))?;
    request.apply_timeout_parameter(received)?;
    request.received = Some(received);
    request.headers = parts.headers;
    let response = state.gateway.infer(request).await?;
    let encoded =
        crate::tracing_setup::child(|| tracing::debug_span!(target: TRACE_TARGET, "encode"))
            .in_scope(|| encode_response(&response, &encoding))?;
    if encoded.binary.is_empty() {
        return Ok((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            encoded.json,
        )
            .into_response());
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
    Ok(response)
}

/// Reads the whole body, refusing it with 413 as soon as it passes the limit.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, GatewayError> {
    let too_large = || {
        GatewayError::new(
            ErrorKind::PayloadTooLarge,
            format!("request body is larger than the limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(error) => Err(GatewayError::invalid(format!(
            "cannot read the request body: {error}"
        ))),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_map_to_status_codes_and_the_protocol_body() {
        for (kind, status) in [
            (ErrorKind::InvalidArgument, 400),
            (ErrorKind::NotFound, 404),
            (ErrorKind::PayloadTooLarge, 413),
            (ErrorKind::Overloaded, 429),
            (ErrorKind::Unavailable, 503),
            (ErrorKind::DeadlineExceeded, 504),
            (ErrorKind::Internal, 500),
        ] {
            let response = GatewayError::new(kind, "why").into_response();
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(
                response.headers().contains_key(header::RETRY_AFTER),
                kind == ErrorKind::Overloaded
            );
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(
                serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
                json!({"error": "why"})
            );
        }
    }
}
