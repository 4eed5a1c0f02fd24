//! The Open Inference Protocol over gRPC: `inference.GRPCInferenceService`, with Triton's
//! `ModelConfig`, and the standard `grpc.health.v1` health service.

mod convert;
pub mod forward;
pub mod scan;
mod stream;
mod unary;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::HeaderValue;
use switchyard_runtimes::TensorSpec;
use tonic::{Request, Response, Status};

use crate::auth::Caller;
use crate::auth::ManagementTokens;
use crate::core::Gateway;
use crate::error::{ErrorKind, GatewayError};
use crate::protocol::auth::{self, InferenceAuth};
use crate::protocol::extensions::{self, Actor, Extensions};
use crate::protocol::metadata;
use crate::protocol::pipeline::{Call, Pipeline};
use crate::protocol::shared_memory::Access;
use crate::telemetry::Protocol;
use crate::telemetry::statistics::DurationFigure;
use convert::{decode_request, encode_response};

/// The generated protocol types and service traits.
pub use crate::wire::pb;

use crate::tasks::{self, TaskKind};
use pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};

static GRPC_HEALTH: TaskKind = TaskKind::new("grpc_health");
static GRPC_STREAM: TaskKind = TaskKind::new("grpc_stream");

/// The gRPC routes: the inference service and the health service, ready to be served.
pub fn router(
    pipeline: Arc<Pipeline>,
    extensions: Arc<Extensions>,
    max_message_bytes: usize,
    auth: InferenceAuth,
    tokens: ManagementTokens,
) -> axum::Router {
    let front = GrpcFront {
        pipeline: pipeline.clone(),
        extensions,
        max_message_bytes,
    };
    let inference = GrpcInferenceServiceServer::new(front.clone())
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    let (reporter, health) = tonic_health::server::health_reporter();
    let mut ready = pipeline.gateway().tables().watch_ready();
    tasks::spawn(&GRPC_HEALTH, async move {
        loop {
            let status = if *ready.borrow_and_update() {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            for service in ["", "inference.GRPCInferenceService"] {
                reporter.set_service_status(service, status).await;
            }
            if ready.changed().await.is_err() {
                return;
            }
        }
    });
    let everything_else = tonic::service::Routes::new(inference)
        .add_service(health)
        .into_axum_router()
        .layer(axum::middleware::map_response(
            oversized_is_resource_exhausted,
        ))
        .layer(axum::middleware::from_fn_with_state(
            (pipeline, max_message_bytes),
            scan_streamed_messages,
        ))
        .layer(axum::middleware::from_fn_with_state(
            tokens,
            extensions::require_management,
        ))
        .layer(axum::middleware::from_fn_with_state(
            auth.clone(),
            auth::require_grpc_key,
        ));
    let unary = Arc::new(unary::UnaryInfer { front, auth });
    axum::Router::new()
        .route(
            MODEL_INFER,
            axum::routing::post(unary::model_infer).with_state(unary),
        )
        .fallback_service(everything_else)
}

/// A `ModelInferRequest` message as this front decodes it: scanned, then decoded by prost, then
/// converted to the core's request. The path every message takes, for tests that feed it
/// arbitrary bytes.
pub fn decode_message(message: &[u8]) -> Result<crate::core::InferRequest, GatewayError> {
    use prost::Message;
    scan::scan_model_infer(message, &scan::ScanLimits::default())?;
    let decoded = pb::ModelInferRequest::decode(message)
        .map_err(|error| GatewayError::invalid(format!("malformed ModelInferRequest: {error}")))?;
    decode_request(decoded, None).map(|(request, _)| request)
}

/// The gRPC method that carries inference, the only one the in-flight bounds apply to.
pub const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

/// Bounds and scans each message of a `ModelStreamInfer` stream before tonic reads it.
async fn scan_streamed_messages(
    axum::extract::State((pipeline, limit)): axum::extract::State<(Arc<Pipeline>, usize)>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if request.uri().path() != stream::MODEL_STREAM_INFER {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let body = axum::body::Body::new(stream::ScannedMessages::new(body, pipeline, limit));
    next.run(axum::extract::Request::from_parts(parts, body))
        .await
}

/// tonic refuses a message over the size limit with OUT_OF_RANGE before any handler runs;
/// gRPC's own implementations answer RESOURCE_EXHAUSTED there, which is what clients expect.
async fn oversized_is_resource_exhausted(
    mut response: axum::response::Response,
) -> axum::response::Response {
    const TONIC_MESSAGE: &str = "Error, decoded message length too large";
    let headers = response.headers_mut();
    let oversized = headers.get("grpc-status").is_some_and(|s| s == "11")
        && headers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .is_some_and(|m| percent_decode(m).starts_with(TONIC_MESSAGE));
    if oversized {
        let detail = headers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .map(percent_decode)
            .unwrap_or_default();
        let message = format!(
            "request message too large (grpc.max_message_size): {}",
            detail
                .trim_start_matches(TONIC_MESSAGE)
                .trim_start_matches(':')
                .trim()
        );
        headers.insert("grpc-status", HeaderValue::from_static("8"));
        if let Ok(value) = HeaderValue::from_str(&percent_encode(&message)) {
            headers.insert("grpc-message", value);
        }
    }
    response
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%')
            .then(|| text.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match decoded {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if (0x20..0x7f).contains(&b) && b != b'%' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[derive(Clone)]
struct GrpcFront {
    pipeline: Arc<Pipeline>,
    extensions: Arc<Extensions>,
    max_message_bytes: usize,
}

impl GrpcFront {
    fn gateway(&self) -> &Gateway {
        self.pipeline.gateway()
    }

    fn shared_memory(&self) -> Access<'_> {
        Access {
            memory: &self.extensions.shared_memory,
            max_input_bytes: self.max_message_bytes,
        }
    }
}

impl GrpcFront {
    /// One `ModelInfer` call: its deadline from `grpc-timeout`, then the pipeline.
    async fn infer_message(
        &self,
        headers: http::HeaderMap,
        caller: Caller,
        message: pb::ModelInferRequest,
        received: Instant,
    ) -> Result<pb::ModelInferResponse, GatewayError> {
        let deadline = headers
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map(|timeout| received + timeout);
        let model = message.model_name.clone();
        let version = message.model_version.clone();
        let call = Call {
            protocol: Protocol::Grpc,
            model: &model,
            version: version_of(&version),
            received,
            deadline,
            headers,
            // prost decoded the message already; what is left borrows or copies tensors.
            decode_bytes: 0,
            caller,
        };
        let memory = self.shared_memory();
        self.pipeline
            .infer(
                call,
                || decode_request(message, Some(&memory)),
                |response, placements| encode_response(response, &placements),
            )
            .await
    }
}

/// Who made an extension call, as the management check recorded it.
fn actor<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<Actor>()
        .map_or_else(|| "grpc".to_owned(), |Actor(actor)| actor.clone())
}

fn version_of(version: &str) -> Option<&str> {
    (!version.is_empty()).then_some(version)
}

#[tonic::async_trait]
impl GrpcInferenceService for GrpcFront {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse {
            ready: self.gateway().is_ready(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let request = request.into_inner();
        let table = self.gateway().snapshot();
        let ready = match metadata::model_ready(&table, &request.name, version_of(&request.version))
        {
            Ok(()) => true,
            Err(error) if error.kind == ErrorKind::NotFound => return Err(error.into()),
            Err(_) => false,
        };
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: metadata::SERVER_NAME.into(),
            version: metadata::SERVER_VERSION.into(),
            extensions: metadata::EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let request = request.into_inner();
        let metadata = metadata::model_metadata(
            &self.gateway().snapshot(),
            &request.name,
            version_of(&request.version),
        )?;
        if let Some(reason) = metadata.reason {
            return Err(GatewayError::unavailable(reason).into());
        }
        let tensors = |specs: &[TensorSpec]| {
            specs
                .iter()
                .map(|spec| pb::model_metadata_response::TensorMetadata {
                    name: spec.name.clone(),
                    datatype: spec.dtype.as_str().into(),
                    shape: spec.dims.clone(),
                })
                .collect()
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            name: metadata.name.to_string(),
            versions: metadata.versions.iter().map(|v| v.to_string()).collect(),
            platform: metadata.platform.into(),
            inputs: tensors(&metadata.inputs),
            outputs: tensors(&metadata.outputs),
        }))
    }

    async fn model_config(
        &self,
        request: Request<pb::ModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfigResponse>, Status> {
        let request = request.into_inner();
        let config = metadata::model_config(
            &self.gateway().snapshot(),
            &request.name,
            version_of(&request.version),
        )?;
        Ok(Response::new(pb::ModelConfigResponse {
            config: Some(config),
        }))
    }

    async fn model_statistics(
        &self,
        request: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        let request = request.into_inner();
        let model = (!request.name.is_empty()).then_some(request.name.as_str());
        let stats = metadata::model_statistics(
            &self.gateway().snapshot(),
            model,
            version_of(&request.version),
        )?;
        let duration = |figure: DurationFigure| {
            Some(pb::StatisticDuration {
                count: figure.count,
                ns: figure.ns,
            })
        };
        let model_stats = stats
            .into_iter()
            .map(|stat| {
                let figures = stat.figures;
                pb::ModelStatistics {
                    name: stat.name.to_string(),
                    version: stat.version.to_string(),
                    last_inference: figures.last_inference,
                    inference_count: figures.inference_count,
                    execution_count: figures.execution_count,
                    inference_stats: Some(pb::InferStatistics {
                        success: duration(figures.success),
                        fail: duration(figures.fail),
                        queue: duration(figures.queue),
                        compute_input: duration(figures.compute_input),
                        compute_infer: duration(figures.compute_infer),
                        compute_output: duration(figures.compute_output),
                        cache_hit: duration(DurationFigure::default()),
                    }),
                    batch_stats: figures
                        .batches
                        .iter()
                        .map(|batch| pb::InferBatchStatistics {
                            batch_size: batch.batch_size,
                            compute_input: duration(batch.compute_input),
                            compute_infer: duration(batch.compute_infer),
                            compute_output: duration(batch.compute_output),
                        })
                        .collect(),
                }
            })
            .collect();
        Ok(Response::new(pb::ModelStatisticsResponse { model_stats }))
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let received = Instant::now();
        let (metadata, extensions, message) = request.into_parts();
        let caller = caller_of(&extensions);
        let response = self
            .infer_message(metadata.into_headers(), caller, message, received)
            .await?;
        Ok(Response::new(response))
    }

    async fn repository_index(
        &self,
        request: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        let ready = request.into_inner().ready;
        let entries = self.extensions.repository.index(ready).await?;
        let models = entries
            .into_iter()
            .map(|entry| pb::repository_index_response::ModelIndex {
                name: entry.name,
                version: entry.version,
                state: entry.state.to_owned(),
                reason: entry.reason,
            })
            .collect();
        Ok(Response::new(pb::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        request: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        let actor = actor(&request);
        let load = request.into_inner();
        use pb::model_repository_parameter::ParameterChoice;
        let config = extensions::load_override(load.parameters.iter().map(|(key, value)| {
            let text = match &value.parameter_choice {
                Some(ParameterChoice::StringParam(text)) => Some(text.as_str()),
                _ => None,
            };
            (key.as_str(), text)
        }))?;
        self.extensions
            .repository
            .load(&actor, &load.model_name, config)
            .await?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        let actor = actor(&request);
        let unload = request.into_inner();
        self.extensions
            .repository
            .unload(&actor, &unload.model_name)
            .await?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }

    async fn system_shared_memory_status(
        &self,
        request: Request<pb::SystemSharedMemoryStatusRequest>,
    ) -> Result<Response<pb::SystemSharedMemoryStatusResponse>, Status> {
        let name = request.into_inner().name;
        let regions = self
            .extensions
            .shared_memory
            .status((!name.is_empty()).then_some(name.as_str()))?
            .into_iter()
            .map(|region| {
                (
                    region.name.clone(),
                    pb::system_shared_memory_status_response::RegionStatus {
                        name: region.name,
                        key: region.key,
                        offset: region.offset,
                        byte_size: region.byte_size,
                    },
                )
            })
            .collect();
        Ok(Response::new(pb::SystemSharedMemoryStatusResponse {
            regions,
        }))
    }

    async fn system_shared_memory_register(
        &self,
        request: Request<pb::SystemSharedMemoryRegisterRequest>,
    ) -> Result<Response<pb::SystemSharedMemoryRegisterResponse>, Status> {
        let region = request.into_inner();
        self.extensions.shared_memory.register(
            &region.name,
            &region.key,
            region.offset,
            region.byte_size,
        )?;
        Ok(Response::new(pb::SystemSharedMemoryRegisterResponse {}))
    }

    async fn system_shared_memory_unregister(
        &self,
        request: Request<pb::SystemSharedMemoryUnregisterRequest>,
    ) -> Result<Response<pb::SystemSharedMemoryUnregisterResponse>, Status> {
        let name = request.into_inner().name;
        self.extensions
            .shared_memory
            .unregister((!name.is_empty()).then_some(name.as_str()))?;
        Ok(Response::new(pb::SystemSharedMemoryUnregisterResponse {}))
    }

    async fn cuda_shared_memory_status(
        &self,
        _: Request<pb::CudaSharedMemoryStatusRequest>,
    ) -> Result<Response<pb::CudaSharedMemoryStatusResponse>, Status> {
        Ok(Response::new(pb::CudaSharedMemoryStatusResponse::default()))
    }

    async fn cuda_shared_memory_register(
        &self,
        _: Request<pb::CudaSharedMemoryRegisterRequest>,
    ) -> Result<Response<pb::CudaSharedMemoryRegisterResponse>, Status> {
        Err(metadata::cuda_shared_memory_refusal().into())
    }

    async fn cuda_shared_memory_unregister(
        &self,
        _: Request<pb::CudaSharedMemoryUnregisterRequest>,
    ) -> Result<Response<pb::CudaSharedMemoryUnregisterResponse>, Status> {
        Ok(Response::new(pb::CudaSharedMemoryUnregisterResponse {}))
    }

    type ModelStreamInferStream = tonic::codegen::BoxStream<pb::ModelStreamInferResponse>;

    /// Answers a stream's requests one after the other, so that a sequence's chunks keep their
    /// order; each takes an in-flight slot while it runs, and a failure is that response's
    /// `error_message`, not the end of the stream.
    async fn model_stream_infer(
        &self,
        request: Request<tonic::Streaming<pb::ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let (metadata, extensions, mut incoming) = request.into_parts();
        let headers = metadata.into_headers();
        let caller = caller_of(&extensions);
        let pipeline = self.pipeline.clone();
        let extensions = self.extensions.clone();
        let max_input_bytes = self.max_message_bytes;
        // One answer waits to be sent at most: a client that stops reading stops the stream.
        let (answers, outgoing) = tokio::sync::mpsc::channel(1);
        tasks::spawn(&GRPC_STREAM, async move {
            loop {
                let message = match incoming.message().await {
                    Ok(Some(message)) => message,
                    Ok(None) => return,
                    Err(status) => {
                        let _ = answers.send(Err(status)).await;
                        return;
                    }
                };
                let memory = Access {
                    memory: &extensions.shared_memory,
                    max_input_bytes,
                };
                let answer = stream_answer(&pipeline, &memory, &headers, &caller, message).await;
                if answers.send(Ok(answer)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(outgoing),
        )))
    }
}

/// Who the key middleware said calls; a request it did not see (none do) has no limits.
fn caller_of(extensions: &tonic::Extensions) -> Caller {
    extensions
        .get::<Caller>()
        .cloned()
        .unwrap_or(Caller::Unlimited)
}

/// One request of a `ModelStreamInfer` stream, answered in Triton's stream form.
async fn stream_answer(
    pipeline: &Pipeline,
    memory: &Access<'_>,
    headers: &http::HeaderMap,
    caller: &Caller,
    message: pb::ModelInferRequest,
) -> pb::ModelStreamInferResponse {
    let received = Instant::now();
    let model = message.model_name.clone();
    let version = message.model_version.clone();
    let id = message.id.clone();
    let answered = async {
        let _admission = pipeline.admit()?;
        let call = Call {
            protocol: Protocol::Grpc,
            model: &model,
            version: version_of(&version),
            received,
            deadline: None,
            headers: headers.clone(),
            decode_bytes: 0,
            caller: caller.clone(),
        };
        pipeline
            .infer(
                call,
                || decode_request(message, Some(memory)),
                |response, placements| encode_response(response, &placements),
            )
            .await
    };
    match answered.await {
        Ok(response) => pb::ModelStreamInferResponse {
            error_message: String::new(),
            infer_response: Some(response),
        },
        // Triton names the request the error belongs to, so that a client can match it.
        Err(error) => pb::ModelStreamInferResponse {
            error_message: error.message,
            infer_response: Some(pb::ModelInferResponse {
                model_name: model,
                model_version: version,
                id,
                ..pb::ModelInferResponse::default()
            }),
        },
    }
}

/// Parses gRPC's `grpc-timeout` header: up to 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("10x"), None);
    }

    #[test]
    fn percent_coding_round_trips() {
        let text = "found 70000000 bytes, the limit is: 64 % 100\n";
        assert_eq!(percent_decode(&percent_encode(text)), text);
    }
}
