//! The small-model limit for `perf_analyzer`: a bare axum server that speaks just enough of
//! Triton's HTTP protocol for perf_analyzer to run against it (server metadata, readiness, the `mlp` metadata
//! and configuration, empty statistics), parses each inference request's JSON as a server
//! must, and answers a fixed body of `mlp`'s output shape. No model, no routing, no metrics:
//! what is left is the HTTP stack and the JSON parse, which the gateway is measured against.
//! Given a second address it answers gRPC there the same way (tonic's own server, prost's
//! decode, a fixed `ModelInferResponse`): the floor for the gateway's gRPC.
//!
//!     bare_triton_server 127.0.0.1:9000 [127.0.0.1:9001]

#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use switchyard_gateway::wire::pb;
use switchyard_gateway::wire::pb::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use tonic::Request;

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
    if let Some(grpc) = std::env::args().nth(2) {
        let grpc = grpc.parse().unwrap();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(GrpcInferenceServiceServer::new(BareGrpc))
                .serve(grpc)
                .await
                .unwrap();
        });
    }
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
    axum::serve(listener, app).await.unwrap();
}

struct BareGrpc;

fn unimplemented<T>() -> Result<tonic::Response<T>, tonic::Status> {
    Err(tonic::Status::unimplemented("not in the bare server"))
}

#[tonic::async_trait]
impl GrpcInferenceService for BareGrpc {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<tonic::Response<pb::ServerLiveResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::ServerLiveResponse { live: true }))
    }
    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<tonic::Response<pb::ServerReadyResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::ServerReadyResponse {
            ready: true,
        }))
    }
    async fn model_ready(
        &self,
        _: Request<pb::ModelReadyRequest>,
    ) -> Result<tonic::Response<pb::ModelReadyResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::ModelReadyResponse { ready: true }))
    }
    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<tonic::Response<pb::ServerMetadataResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::ServerMetadataResponse {
            name: "bare".into(),
            version: "1".into(),
            extensions: vec![],
        }))
    }
    async fn model_metadata(
        &self,
        _: Request<pb::ModelMetadataRequest>,
    ) -> Result<tonic::Response<pb::ModelMetadataResponse>, tonic::Status> {
        let tensor = |name: &str, width: usize| pb::model_metadata_response::TensorMetadata {
            name: name.into(),
            datatype: "FP32".into(),
            shape: vec![-1, width as i64],
        };
        Ok(tonic::Response::new(pb::ModelMetadataResponse {
            name: "mlp".into(),
            versions: vec!["1".into()],
            platform: "onnxruntime_onnx".into(),
            inputs: vec![tensor("x", INPUTS)],
            outputs: vec![tensor("y", OUTPUTS)],
        }))
    }
    async fn model_config(
        &self,
        _: Request<pb::ModelConfigRequest>,
    ) -> Result<tonic::Response<pb::ModelConfigResponse>, tonic::Status> {
        let tensor = |name: &str, width: usize| (name.to_owned(), vec![width as i64]);
        let ((input, input_dims), (output, output_dims)) =
            (tensor("x", INPUTS), tensor("y", OUTPUTS));
        Ok(tonic::Response::new(pb::ModelConfigResponse {
            config: Some(pb::ModelConfig {
                name: "mlp".into(),
                platform: "onnxruntime_onnx".into(),
                backend: "onnxruntime".into(),
                max_batch_size: 64,
                input: vec![pb::ModelInput {
                    name: input,
                    data_type: pb::DataType::TypeFp32 as i32,
                    dims: input_dims,
                    ..Default::default()
                }],
                output: vec![pb::ModelOutput {
                    name: output,
                    data_type: pb::DataType::TypeFp32 as i32,
                    dims: output_dims,
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }))
    }
    async fn model_statistics(
        &self,
        _: Request<pb::ModelStatisticsRequest>,
    ) -> Result<tonic::Response<pb::ModelStatisticsResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::ModelStatisticsResponse::default()))
    }
    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<tonic::Response<pb::ModelInferResponse>, tonic::Status> {
        let request = request.into_inner();
        let rows = request
            .inputs
            .first()
            .and_then(|input| input.shape.first())
            .copied()
            .unwrap_or(1)
            .max(1) as usize;
        let data: Vec<u8> = std::iter::repeat_n(0.125f32.to_le_bytes(), rows * OUTPUTS)
            .flatten()
            .collect();
        Ok(tonic::Response::new(pb::ModelInferResponse {
            model_name: "mlp".into(),
            model_version: "1".into(),
            id: request.id,
            outputs: vec![pb::model_infer_response::InferOutputTensor {
                name: "y".into(),
                datatype: "FP32".into(),
                shape: vec![rows as i64, OUTPUTS as i64],
                ..Default::default()
            }],
            raw_output_contents: vec![data.into()],
            ..Default::default()
        }))
    }
    async fn repository_index(
        &self,
        _: Request<pb::RepositoryIndexRequest>,
    ) -> Result<tonic::Response<pb::RepositoryIndexResponse>, tonic::Status> {
        unimplemented()
    }
    async fn repository_model_load(
        &self,
        _: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<tonic::Response<pb::RepositoryModelLoadResponse>, tonic::Status> {
        unimplemented()
    }
    async fn repository_model_unload(
        &self,
        _: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<tonic::Response<pb::RepositoryModelUnloadResponse>, tonic::Status> {
        unimplemented()
    }
    async fn system_shared_memory_status(
        &self,
        _: Request<pb::SystemSharedMemoryStatusRequest>,
    ) -> Result<tonic::Response<pb::SystemSharedMemoryStatusResponse>, tonic::Status> {
        unimplemented()
    }
    async fn system_shared_memory_register(
        &self,
        _: Request<pb::SystemSharedMemoryRegisterRequest>,
    ) -> Result<tonic::Response<pb::SystemSharedMemoryRegisterResponse>, tonic::Status> {
        unimplemented()
    }
    async fn system_shared_memory_unregister(
        &self,
        _: Request<pb::SystemSharedMemoryUnregisterRequest>,
    ) -> Result<tonic::Response<pb::SystemSharedMemoryUnregisterResponse>, tonic::Status> {
        unimplemented()
    }
    async fn cuda_shared_memory_status(
        &self,
        _: Request<pb::CudaSharedMemoryStatusRequest>,
    ) -> Result<tonic::Response<pb::CudaSharedMemoryStatusResponse>, tonic::Status> {
        unimplemented()
    }
    async fn cuda_shared_memory_register(
        &self,
        _: Request<pb::CudaSharedMemoryRegisterRequest>,
    ) -> Result<tonic::Response<pb::CudaSharedMemoryRegisterResponse>, tonic::Status> {
        unimplemented()
    }
    async fn cuda_shared_memory_unregister(
        &self,
        _: Request<pb::CudaSharedMemoryUnregisterRequest>,
    ) -> Result<tonic::Response<pb::CudaSharedMemoryUnregisterResponse>, tonic::Status> {
        unimplemented()
    }
    type ModelStreamInferStream = tonic::codegen::BoxStream<pb::ModelStreamInferResponse>;
    async fn model_stream_infer(
        &self,
        _: Request<tonic::Streaming<pb::ModelInferRequest>>,
    ) -> Result<tonic::Response<Self::ModelStreamInferStream>, tonic::Status> {
        unimplemented()
    }
}
