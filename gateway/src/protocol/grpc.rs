//! The Open Inference Protocol over gRPC: `inference.GRPCInferenceService`, with Triton's
//! `ModelConfig`, and the standard `grpc.health.v1` health service.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::HeaderValue;
use bytes::Bytes;
use switchyard_runtimes::{DataType, Device, NamedTensor, Tensor, TensorSpec, bytes_elements};
use tonic::{Request, Response, Status};

use crate::error::{ErrorKind, GatewayError};
use crate::gateway::Gateway;
use crate::inference::{InferRequest, InferResponse, Parameter};
use crate::metadata::{self, ConfigTensor};
use crate::telemetry::Protocol;
use crate::tracing_setup::{TRACE_TARGET, request_span};
use tracing::Instrument;

/// The generated protocol types and service traits.
pub mod pb {
    #![allow(
        clippy::all,
        clippy::pedantic,
        clippy::unwrap_used,
        clippy::expect_used
    )]
    tonic::include_proto!("inference");
}

use pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use pb::model_infer_request::InferInputTensor;
use pb::model_infer_response::InferOutputTensor;
use pb::{InferParameter, InferTensorContents, infer_parameter::ParameterChoice};

impl From<GatewayError> for Status {
    fn from(error: GatewayError) -> Self {
        let code = match error.kind {
            ErrorKind::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorKind::NotFound => tonic::Code::NotFound,
            ErrorKind::PayloadTooLarge | ErrorKind::Overloaded => tonic::Code::ResourceExhausted,
            ErrorKind::Unavailable => tonic::Code::Unavailable,
            ErrorKind::DeadlineExceeded => tonic::Code::DeadlineExceeded,
            ErrorKind::Internal => tonic::Code::Internal,
        };
        Status::new(code, error.message)
    }
}

/// The gRPC routes: the inference service and the health service, ready to be served.
pub fn router(gateway: Arc<Gateway>, max_message_bytes: usize) -> axum::Router {
    let inference = GrpcInferenceServiceServer::new(GrpcFront {
        gateway: gateway.clone(),
    })
    .max_decoding_message_size(max_message_bytes)
    .max_encoding_message_size(max_message_bytes);
    let (reporter, health) = tonic_health::server::health_reporter();
    let mut ready = gateway.watch_ready();
    tokio::spawn(async move {
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
    tonic::service::Routes::new(inference)
        .add_service(health)
        .into_axum_router()
        .layer(axum::middleware::map_response(
            oversized_is_resource_exhausted,
        ))
        .layer(axum::middleware::from_fn_with_state(
            gateway,
            admit_inference,
        ))
}

/// Takes the gateway's admission for a ModelInfer call before tonic reads its message, so that
/// at most `max_in_flight` messages are held in memory at once; past that, RESOURCE_EXHAUSTED.
async fn admit_inference(
    axum::extract::State(gateway): axum::extract::State<Arc<Gateway>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if !request.uri().path().ends_with("/ModelInfer") {
        return next.run(request).await;
    }
    match gateway.admit() {
        Ok(_admission) => next.run(request).await,
        Err(error) => Status::from(error).into_http::<axum::body::Body>(),
    }
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

struct GrpcFront {
    gateway: Arc<Gateway>,
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
            ready: self.gateway.is_ready(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let request = request.into_inner();
        let ready = match self
            .gateway
            .model_ready(&request.name, version_of(&request.version))
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
        let metadata = self
            .gateway
            .model_metadata(&request.name, version_of(&request.version))?;
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
        let config = self
            .gateway
            .model_config(&request.name, version_of(&request.version))?;
        let data_type = |dtype: DataType| config_data_type(dtype) as i32;
        let inputs = |tensors: &[ConfigTensor]| {
            tensors
                .iter()
                .map(|t| pb::ModelInput {
                    name: t.name.clone(),
                    data_type: data_type(t.dtype),
                    dims: t.dims.clone(),
                })
                .collect()
        };
        let outputs = |tensors: &[ConfigTensor]| {
            tensors
                .iter()
                .map(|t| pb::ModelOutput {
                    name: t.name.clone(),
                    data_type: data_type(t.dtype),
                    dims: t.dims.clone(),
                })
                .collect()
        };
        let (kind, gpus) = match config.device {
            Device::Cuda(index) => (
                pb::model_instance_group::Kind::Gpu,
                vec![i32::try_from(index).unwrap_or(i32::MAX)],
            ),
            Device::Cpu => (pb::model_instance_group::Kind::Cpu, Vec::new()),
        };
        Ok(Response::new(pb::ModelConfigResponse {
            config: Some(pb::ModelConfig {
                name: config.name.to_string(),
                platform: config.platform.into(),
                backend: config.backend.into(),
                max_batch_size: i32::try_from(config.max_batch_size).unwrap_or(i32::MAX),
                input: inputs(&config.inputs),
                output: outputs(&config.outputs),
                instance_group: vec![pb::ModelInstanceGroup {
                    name: config.name.to_string(),
                    count: i32::try_from(config.instance_count).unwrap_or(i32::MAX),
                    gpus,
                    kind: kind as i32,
                }],
            }),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let span = request_span(
            "grpc",
            &request.get_ref().model_name,
            request.metadata().as_ref(),
        );
        self.infer(request).instrument(span).await.map_err(|error| {
            self.gateway.telemetry().reject(error.kind);
            error.into()
        })
    }
}

impl GrpcFront {
    async fn infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, GatewayError> {
        let received = Instant::now();
        let timeout = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .and_then(parse_grpc_timeout);
        let (metadata, _, message) = request.into_parts();
        self.gateway
            .check_capacity(&message.model_name, version_of(&message.model_version))?;
        let (mut request, raw) =
            crate::tracing_setup::child(|| tracing::debug_span!(target: TRACE_TARGET, "decode"))
                .in_scope(|| decode_request(message))?;
        request.deadline = timeout.map(|timeout| received + timeout);
        request.apply_timeout_parameter(received)?;
        request.received = Some(received);
        request.protocol = Protocol::Grpc;
        request.headers = metadata.into_headers();
        let response = self.gateway.infer(request).await?;
        let encoded =
            crate::tracing_setup::child(|| tracing::debug_span!(target: TRACE_TARGET, "encode"))
                .in_scope(|| encode_response(response, raw));
        Ok(Response::new(encoded))
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

fn config_data_type(dtype: DataType) -> pb::DataType {
    match dtype {
        DataType::Bool => pb::DataType::TypeBool,
        DataType::Uint8 => pb::DataType::TypeUint8,
        DataType::Uint16 => pb::DataType::TypeUint16,
        DataType::Uint32 => pb::DataType::TypeUint32,
        DataType::Uint64 => pb::DataType::TypeUint64,
        DataType::Int8 => pb::DataType::TypeInt8,
        DataType::Int16 => pb::DataType::TypeInt16,
        DataType::Int32 => pb::DataType::TypeInt32,
        DataType::Int64 => pb::DataType::TypeInt64,
        DataType::Fp16 => pb::DataType::TypeFp16,
        DataType::Bf16 => pb::DataType::TypeBf16,
        DataType::Fp32 => pb::DataType::TypeFp32,
        DataType::Fp64 => pb::DataType::TypeFp64,
        DataType::Bytes => pb::DataType::TypeString,
    }
}

fn parameter(name: &str, value: InferParameter) -> Result<Parameter, GatewayError> {
    Ok(match value.parameter_choice {
        Some(ParameterChoice::BoolParam(b)) => Parameter::Bool(b),
        Some(ParameterChoice::Int64Param(i)) => Parameter::Int(i),
        Some(ParameterChoice::StringParam(s)) => Parameter::String(s),
        Some(ParameterChoice::DoubleParam(d)) => Parameter::Double(d),
        Some(ParameterChoice::Uint64Param(u)) => {
            Parameter::Int(i64::try_from(u).map_err(|_| {
                GatewayError::invalid(format!("parameter '{name}': {u} is out of range"))
            })?)
        }
        None => {
            return Err(GatewayError::invalid(format!(
                "parameter '{name}' has no value"
            )));
        }
    })
}

/// Decodes a request; also says whether its inputs came as raw contents, so the response can
/// answer in kind.
fn decode_request(request: pb::ModelInferRequest) -> Result<(InferRequest, bool), GatewayError> {
    let raw = !request.raw_input_contents.is_empty();
    if raw && request.raw_input_contents.len() != request.inputs.len() {
        return Err(GatewayError::invalid(format!(
            "raw_input_contents has {} entries for {} inputs; it needs one per input",
            request.raw_input_contents.len(),
            request.inputs.len()
        )));
    }
    let mut raw_contents = request.raw_input_contents.into_iter();
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        let data = raw_contents.next();
        inputs.push(decode_input(input, data)?);
    }
    let parameters = request
        .parameters
        .into_iter()
        .map(|(name, value)| {
            let value = parameter(&name, value)?;
            Ok((name, value))
        })
        .collect::<Result<_, GatewayError>>()?;
    Ok((
        InferRequest {
            model: request.model_name,
            version: (!request.model_version.is_empty()).then_some(request.model_version),
            id: (!request.id.is_empty()).then_some(request.id),
            inputs,
            outputs: request.outputs.into_iter().map(|o| o.name).collect(),
            parameters,
            deadline: None,
            received: None,
            protocol: Default::default(),
            headers: Default::default(),
        },
        raw,
    ))
}

fn decode_input(input: InferInputTensor, raw: Option<Bytes>) -> Result<NamedTensor, GatewayError> {
    let name = input.name;
    let invalid = |message: String| GatewayError::invalid(format!("input '{name}': {message}"));
    let dtype: DataType = input
        .datatype
        .parse()
        .map_err(|e| invalid(format!("{e}")))?;
    let shape = input
        .shape
        .iter()
        .map(|&dim| usize::try_from(dim))
        .collect::<Result<Vec<usize>, _>>()
        .map_err(|_| invalid(format!("shape {:?} has a negative dimension", input.shape)))?;
    let data = match (raw, input.contents) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "typed contents and raw_input_contents are both set; use one or the other".into(),
            ));
        }
        (Some(raw), None) => raw,
        (None, Some(contents)) => typed_to_bytes(dtype, &shape, contents).map_err(invalid)?,
        (None, None) => return Err(invalid("no contents and no raw_input_contents".into())),
    };
    let tensor = Tensor::new(dtype, shape, data).map_err(|e| invalid(e.to_string()))?;
    Ok(NamedTensor { name, tensor })
}

/// Typed contents to little-endian bytes of `dtype`, checking the element count and range.
fn typed_to_bytes(
    dtype: DataType,
    shape: &[usize],
    contents: InferTensorContents,
) -> Result<Bytes, String> {
    let expected = switchyard_runtimes::element_count(shape)
        .ok_or_else(|| format!("shape {shape:?} is too large"))?;
    fn check(field: &str, actual: usize, expected: usize) -> Result<(), String> {
        if actual == expected {
            Ok(())
        } else {
            Err(format!(
                "contents.{field} holds {actual} elements but the shape needs {expected}"
            ))
        }
    }
    macro_rules! narrow {
        ($field:ident, $t:ty) => {{
            check(stringify!($field), contents.$field.len(), expected)?;
            let mut out = Vec::with_capacity(expected * size_of::<$t>());
            for value in &contents.$field {
                let value = <$t>::try_from(*value)
                    .map_err(|_| format!("{value} is out of range for {dtype}"))?;
                out.extend_from_slice(&value.to_le_bytes());
            }
            Bytes::from(out)
        }};
    }
    macro_rules! same {
        ($field:ident) => {{
            check(stringify!($field), contents.$field.len(), expected)?;
            // The protocol's bytes are little-endian, as is every target this builds for.
            Bytes::copy_from_slice(bytemuck::cast_slice(&contents.$field))
        }};
    }
    Ok(match dtype {
        DataType::Bool => {
            check("bool_contents", contents.bool_contents.len(), expected)?;
            contents
                .bool_contents
                .iter()
                .map(|&b| u8::from(b))
                .collect::<Vec<u8>>()
                .into()
        }
        DataType::Int8 => narrow!(int_contents, i8),
        DataType::Int16 => narrow!(int_contents, i16),
        DataType::Int32 => narrow!(int_contents, i32),
        DataType::Uint8 => narrow!(uint_contents, u8),
        DataType::Uint16 => narrow!(uint_contents, u16),
        DataType::Uint32 => narrow!(uint_contents, u32),
        DataType::Int64 => same!(int64_contents),
        DataType::Uint64 => same!(uint64_contents),
        DataType::Fp32 => same!(fp32_contents),
        DataType::Fp64 => same!(fp64_contents),
        DataType::Fp16 | DataType::Bf16 => {
            return Err(format!(
                "{dtype} has no typed contents field; send it in raw_input_contents"
            ));
        }
        DataType::Bytes => {
            check("bytes_contents", contents.bytes_contents.len(), expected)?;
            let total: usize = contents.bytes_contents.iter().map(|b| 4 + b.len()).sum();
            let mut out = Vec::with_capacity(total);
            for element in &contents.bytes_contents {
                let length =
                    u32::try_from(element.len()).map_err(|_| "element too long".to_string())?;
                out.extend_from_slice(&length.to_le_bytes());
                out.extend_from_slice(element);
            }
            out.into()
        }
    })
}

fn encode_response(response: InferResponse, raw_requested: bool) -> pb::ModelInferResponse {
    // FP16 and BF16 have no typed field: such outputs force raw contents for the whole response.
    let raw = raw_requested
        || response
            .outputs
            .iter()
            .any(|o| matches!(o.tensor.dtype(), DataType::Fp16 | DataType::Bf16));
    let mut outputs = Vec::with_capacity(response.outputs.len());
    let mut raw_output_contents = Vec::new();
    for output in response.outputs {
        let tensor = output.tensor;
        let contents = if raw {
            raw_output_contents.push(tensor.data().clone());
            None
        } else {
            Some(typed_contents(&tensor))
        };
        outputs.push(InferOutputTensor {
            name: output.name,
            datatype: tensor.dtype().as_str().into(),
            shape: tensor.shape().iter().map(|&d| d as i64).collect(),
            parameters: HashMap::new(),
            contents,
        });
    }
    pb::ModelInferResponse {
        model_name: response.model_name.to_string(),
        model_version: response.model_version.to_string(),
        id: response.id.unwrap_or_default(),
        parameters: HashMap::new(),
        outputs,
        raw_output_contents,
    }
}

fn typed_contents(tensor: &Tensor) -> InferTensorContents {
    let data = tensor.data().as_ref();
    let mut contents = InferTensorContents::default();
    macro_rules! fill {
        ($field:ident, $n:literal, |$c:ident| $value:expr) => {
            contents.$field = data.as_chunks::<$n>().0.iter().map(|$c| $value).collect()
        };
    }
    match tensor.dtype() {
        DataType::Bool => contents.bool_contents = data.iter().map(|&b| b != 0).collect(),
        DataType::Int8 => fill!(int_contents, 1, |c| i32::from(i8::from_le_bytes(*c))),
        DataType::Int16 => fill!(int_contents, 2, |c| i32::from(i16::from_le_bytes(*c))),
        DataType::Int32 => fill!(int_contents, 4, |c| i32::from_le_bytes(*c)),
        DataType::Uint8 => fill!(uint_contents, 1, |c| u32::from(c[0])),
        DataType::Uint16 => fill!(uint_contents, 2, |c| u32::from(u16::from_le_bytes(*c))),
        DataType::Uint32 => fill!(uint_contents, 4, |c| u32::from_le_bytes(*c)),
        DataType::Int64 => fill!(int64_contents, 8, |c| i64::from_le_bytes(*c)),
        DataType::Uint64 => fill!(uint64_contents, 8, |c| u64::from_le_bytes(*c)),
        DataType::Fp32 => fill!(fp32_contents, 4, |c| f32::from_le_bytes(*c)),
        DataType::Fp64 => fill!(fp64_contents, 8, |c| f64::from_le_bytes(*c)),
        DataType::Bytes => {
            contents.bytes_contents = bytes_elements(data)
                .filter_map(Result::ok)
                .map(Bytes::copy_from_slice)
                .collect();
        }
        // Callers send these raw.
        DataType::Fp16 | DataType::Bf16 => {}
    }
    contents
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
    fn typed_contents_round_trip_every_typed_datatype() {
        let cases: Vec<(DataType, InferTensorContents)> = vec![
            (
                DataType::Bool,
                InferTensorContents {
                    bool_contents: vec![true, false],
                    ..Default::default()
                },
            ),
            (
                DataType::Int8,
                InferTensorContents {
                    int_contents: vec![-128, 127],
                    ..Default::default()
                },
            ),
            (
                DataType::Int16,
                InferTensorContents {
                    int_contents: vec![-300, 300],
                    ..Default::default()
                },
            ),
            (
                DataType::Int32,
                InferTensorContents {
                    int_contents: vec![i32::MIN, 7],
                    ..Default::default()
                },
            ),
            (
                DataType::Uint8,
                InferTensorContents {
                    uint_contents: vec![0, 255],
                    ..Default::default()
                },
            ),
            (
                DataType::Uint16,
                InferTensorContents {
                    uint_contents: vec![1, 65535],
                    ..Default::default()
                },
            ),
            (
                DataType::Uint32,
                InferTensorContents {
                    uint_contents: vec![u32::MAX, 3],
                    ..Default::default()
                },
            ),
            (
                DataType::Int64,
                InferTensorContents {
                    int64_contents: vec![i64::MIN, 1],
                    ..Default::default()
                },
            ),
            (
                DataType::Uint64,
                InferTensorContents {
                    uint64_contents: vec![u64::MAX, 2],
                    ..Default::default()
                },
            ),
            (
                DataType::Fp32,
                InferTensorContents {
                    fp32_contents: vec![0.5, -2.0],
                    ..Default::default()
                },
            ),
            (
                DataType::Fp64,
                InferTensorContents {
                    fp64_contents: vec![0.1, 1e300],
                    ..Default::default()
                },
            ),
            (
                DataType::Bytes,
                InferTensorContents {
                    bytes_contents: vec![Bytes::from_static(b"ab"), Bytes::new()],
                    ..Default::default()
                },
            ),
        ];
        for (dtype, contents) in cases {
            let bytes = typed_to_bytes(dtype, &[2], contents.clone()).expect("valid contents");
            let tensor = Tensor::new(dtype, vec![2], bytes).expect("valid tensor");
            assert_eq!(typed_contents(&tensor), contents, "{dtype}");
        }
    }

    #[test]
    fn typed_contents_are_checked() {
        let short = InferTensorContents {
            fp32_contents: vec![1.0],
            ..Default::default()
        };
        assert!(
            typed_to_bytes(DataType::Fp32, &[2], short)
                .unwrap_err()
                .contains("fp32_contents holds 1")
        );
        let wide = InferTensorContents {
            int_contents: vec![200],
            ..Default::default()
        };
        assert!(
            typed_to_bytes(DataType::Int8, &[1], wide)
                .unwrap_err()
                .contains("out of range")
        );
        let half = InferTensorContents::default();
        assert!(
            typed_to_bytes(DataType::Fp16, &[0], half)
                .unwrap_err()
                .contains("raw_input_contents")
        );
    }

    #[test]
    fn percent_coding_round_trips() {
        let text = "found 70000000 bytes, the limit is: 64 % 100\n";
        assert_eq!(percent_decode(&percent_encode(text)), text);
    }
}
