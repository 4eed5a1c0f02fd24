//! The small-model limit for `perf_analyzer`: a bare axum server that speaks just enough of
//! Triton's HTTP protocol for perf_analyzer to run against it (server metadata, readiness, the `mlp` metadata
//! and configuration, empty statistics), parses each inference request's JSON as a server
//! must, and answers a fixed body of `mlp`'s output shape. No model, no routing, no metrics:
//! what is left is the HTTP stack and the JSON parse, which the gateway is measured against.
//!
//!     bare_triton_server 127.0.0.1:9000

#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

const INPUTS: usize = 64;
const OUTPUTS: usize = 10;

fn metadata() -> Value {
    json!({"name": "mlp", "versions": ["1"], "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, INPUTS]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, OUTPUTS]}]})
}

fn config() -> Value {
    json!({"name": "mlp", "platform": "onnxruntime_onnx", "backend": "onnxruntime",
        "max_batch_size": 64,
        "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [INPUTS]}],
        "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [OUTPUTS]}],
        "instance_group": [{"name": "mlp", "count": 1, "kind": "KIND_CPU"}]})
}

/// Parses the request's JSON (the header only, with the binary tensor extension) and answers
/// the fixed output.
async fn infer(headers: HeaderMap, body: Bytes) -> Response {
    let json_length = headers
        .get("inference-header-content-length")
        .and_then(|value| value.to_str().ok()?.parse::<usize>().ok())
        .unwrap_or(body.len())
        .min(body.len());
    let request: Value = match serde_json::from_slice(&body[..json_length]) {
        Ok(request) => request,
        Err(error) => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": error.to_string()})),
            )
                .into_response();
        }
    };
    let rows = request["inputs"][0]["shape"][0].as_u64().unwrap_or(1) as usize;
    let data = vec![0.125f32; rows * OUTPUTS];
    axum::Json(
        json!({"model_name": "mlp", "model_version": "1", "id": request["id"],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [rows, OUTPUTS], "data": data}]}),
    )
    .into_response()
}

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".into());
    let app = Router::new()
        .route(
            "/v2",
            get(|| async { axum::Json(json!({"name": "bare", "version": "1", "extensions": []})) }),
        )
        .route("/v2/health/ready", get(|| async { "" }))
        .route("/v2/health/live", get(|| async { "" }))
        .route("/v2/models/mlp", get(|| async { axum::Json(metadata()) }))
        .route(
            "/v2/models/mlp/versions/{version}",
            get(|| async { axum::Json(metadata()) }),
        )
        .route(
            "/v2/models/mlp/config",
            get(|| async { axum::Json(config()) }),
        )
        .route(
            "/v2/models/mlp/versions/{version}/config",
            get(|| async { axum::Json(config()) }),
        )
        .route(
            "/v2/models/mlp/stats",
            get(|| async { axum::Json(json!({"model_stats": []})) }),
        )
        .route(
            "/v2/models/mlp/versions/{version}/stats",
            get(|| async { axum::Json(json!({"model_stats": []})) }),
        )
        .route("/v2/models/mlp/infer", post(infer))
        .route("/v2/models/mlp/versions/{version}/infer", post(infer));
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
    axum::serve(listener, app).await.unwrap();
}
