//! The Open Inference Protocol over gRPC, end to end, with a tonic client against a real
//! gateway on a loopback port; answers compared with the HTTP path and the references.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use common::{
    MLP_IN, MLP_OUT, MlpWeights, TestGateway, as_f32s, assert_close, models_dir, sample_inputs,
};
use pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use pb::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use serde_json::{Value, json};
use switchyard_gateway::protocol::grpc::pb;
use tonic::Code;
use tonic::transport::Channel;

async fn client(gateway: &TestGateway) -> GrpcInferenceServiceClient<Channel> {
    GrpcInferenceServiceClient::connect(format!("http://{}", gateway.grpc_addr))
        .await
        .expect("gRPC connection")
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20)
}

fn le_bytes(values: &[f32]) -> Bytes {
    values
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect::<Vec<u8>>()
        .into()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .as_chunks::<4>()
        .0
        .iter()
        .map(|c| f32::from_le_bytes(*c))
        .collect()
}

fn input(
    name: &str,
    datatype: &str,
    shape: &[i64],
    contents: Option<pb::InferTensorContents>,
) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape: shape.to_vec(),
        parameters: HashMap::new(),
        contents,
    }
}

fn fp32(values: &[f32]) -> Option<pb::InferTensorContents> {
    Some(pb::InferTensorContents {
        fp32_contents: values.to_vec(),
        ..Default::default()
    })
}

fn mlp_raw(x: &[f32], rows: usize) -> pb::ModelInferRequest {
    common::mlp_raw_request(x, rows)
}

fn mlp_typed(x: &[f32], rows: usize) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: "mlp".into(),
        inputs: vec![input("x", "FP32", &[rows as i64, MLP_IN as i64], fp32(x))],
        ..Default::default()
    }
}

#[tokio::test]
async fn health_metadata_ready_and_config() {
    let gateway = TestGateway::start(&models_dir()).await;
    let mut grpc = client(&gateway).await;

    assert!(
        grpc.server_live(pb::ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        grpc.server_ready(pb::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let server = grpc
        .server_metadata(pb::ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(server.name, "switchyard");
    assert!(
        server
            .extensions
            .contains(&"model_configuration".to_string())
    );

    let mlp = grpc
        .model_metadata(pb::ModelMetadataRequest {
            name: "mlp".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (mlp.name.as_str(), mlp.platform.as_str()),
        ("mlp", "pytorch_libtorch")
    );
    assert_eq!(mlp.versions, ["1", "2"]);
    assert_eq!(mlp.inputs[0].name, "x");
    assert_eq!(mlp.inputs[0].datatype, "FP32");
    assert_eq!(mlp.inputs[0].shape, [-1, 64]);
    assert_eq!(mlp.outputs[0].shape, [-1, 10]);
    let silero = grpc
        .model_metadata(pb::ModelMetadataRequest {
            name: "silero_vad".into(),
            version: "1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(silero.versions, ["1"]);

    let ready = |name: &str, version: &str| pb::ModelReadyRequest {
        name: name.into(),
        version: version.into(),
    };
    assert!(
        grpc.model_ready(ready("mlp", ""))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        grpc.model_ready(ready("silero_vad", "2"))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert_eq!(
        grpc.model_ready(ready("silero_vad", "3"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let missing = grpc
        .model_metadata(pb::ModelMetadataRequest {
            name: "nope".into(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert!(
        missing
            .message()
            .starts_with("Request for unknown model: 'nope' is not found")
    );

    let config = grpc
        .model_config(pb::ModelConfigRequest {
            name: "mlp".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .config
        .unwrap();
    assert_eq!(config.name, "mlp");
    assert_eq!(config.platform, "pytorch_libtorch");
    assert_eq!(config.backend, "pytorch");
    assert_eq!(config.max_batch_size, 64);
    assert_eq!(config.input[0].dims, [64]);
    assert_eq!(config.input[0].data_type, pb::DataType::TypeFp32 as i32);
    assert_eq!(config.output[0].dims, [10]);
    assert_eq!(
        config.instance_group[0].kind,
        pb::model_instance_group::Kind::Cpu as i32
    );
    let silero = grpc
        .model_config(pb::ModelConfigRequest {
            name: "silero_vad".into(),
            version: "2".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .config
        .unwrap();
    assert_eq!(silero.max_batch_size, 0);
    assert!(silero.input.iter().all(|i| i.name != "state"), "implicit");
    let Some(pb::model_config::SchedulingChoice::SequenceBatching(sequence)) =
        &silero.scheduling_choice
    else {
        panic!("silero_vad is served as sequences: {silero:?}");
    };
    let state = &sequence.state[0];
    assert_eq!(
        (state.input_name.as_str(), state.dims.as_slice()),
        ("state", &[2, 1, 128][..])
    );
    let sr = silero.input.iter().find(|i| i.name == "sr").unwrap();
    assert_eq!(sr.data_type, pb::DataType::TypeInt64 as i32);

    // grpc.health.v1 follows the same readiness as /v2/health/ready.
    let channel = Channel::from_shared(format!("http://{}", gateway.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["", "inference.GRPCInferenceService"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "'{service}'"
        );
    }
    gateway.stop().await;
}

#[tokio::test]
async fn mlp_typed_and_raw_match_the_weights_and_the_http_path() {
    let gateway = TestGateway::start(&models_dir()).await;
    let mut grpc = client(&gateway).await;
    let weights = MlpWeights::load();
    for rows in [1usize, 7] {
        let x = sample_inputs(rows * MLP_IN, 100 + rows as u64);
        let expected = weights.forward(&x);

        let mut raw_request = mlp_raw(&x, rows);
        raw_request.id = "grpc-1".into();
        let raw = grpc.model_infer(raw_request).await.unwrap().into_inner();
        assert_eq!(
            (
                raw.model_name.as_str(),
                raw.model_version.as_str(),
                raw.id.as_str()
            ),
            ("mlp", "2", "grpc-1")
        );
        assert_eq!(raw.outputs[0].name, "y");
        assert_eq!(raw.outputs[0].datatype, "FP32");
        assert_eq!(raw.outputs[0].shape, [rows as i64, MLP_OUT as i64]);
        assert!(
            raw.outputs[0].contents.is_none(),
            "answered in raw contents"
        );
        let raw_y = f32s(&raw.raw_output_contents[0]);
        assert_close(&raw_y, &expected, 1e-5);

        let typed = grpc
            .model_infer(mlp_typed(&x, rows))
            .await
            .unwrap()
            .into_inner();
        // Triton answers in raw contents whatever form the request used, and clients read them.
        assert!(typed.outputs[0].contents.is_none(), "typed in, raw out");
        assert_eq!(f32s(&typed.raw_output_contents[0]), raw_y);

        let body = json!({"inputs": [{"name": "x", "shape": [rows, MLP_IN], "datatype": "FP32", "data": x}]});
        let (status, http) = gateway.post_json("/v2/models/mlp/infer", &body).await;
        assert_eq!(status, 200);
        assert_eq!(
            as_f32s(&http["outputs"][0]["data"]),
            raw_y,
            "gRPC and HTTP answer alike"
        );
    }
    gateway.stop().await;
}

#[tokio::test]
async fn pinned_onnx_and_torchscript_versions_agree_over_grpc() {
    let gateway = TestGateway::start(&models_dir()).await;
    let mut grpc = client(&gateway).await;
    let weights = MlpWeights::load();
    for rows in [1usize, 4] {
        let x = sample_inputs(rows * MLP_IN, 300 + rows as u64);
        let expected = weights.forward(&x);
        for version in ["1", "2"] {
            let mut request = mlp_raw(&x, rows);
            request.model_version = version.into();
            let response = grpc.model_infer(request).await.unwrap().into_inner();
            assert_eq!(response.model_version, version);
            assert_close(&f32s(&response.raw_output_contents[0]), &expected, 1e-5);
        }
    }
    let metadata = grpc
        .model_metadata(pb::ModelMetadataRequest {
            name: "mlp".into(),
            version: "1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(metadata.platform, "onnxruntime_onnx");
    gateway.stop().await;
}

#[tokio::test]
async fn silero_vad_over_grpc_matches_python_onnxruntime() {
    let models = models_dir();
    let gateway = TestGateway::start(&models).await;
    let mut grpc = client(&gateway).await;
    let reference: Value =
        serde_json::from_slice(&std::fs::read(models.join("silero_vad/reference.json")).unwrap())
            .unwrap();
    for case in reference["cases"].as_array().unwrap() {
        let version = case["version"].as_str().unwrap();
        let shape = |name: &str| -> Vec<i64> {
            case["inputs"][name]["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_i64().unwrap())
                .collect()
        };
        let audio = as_f32s(&case["inputs"]["input"]["data"]);
        let state = as_f32s(&case["inputs"]["state"]["data"]);
        let typed = pb::ModelInferRequest {
            model_name: "silero_vad".into(),
            model_version: version.into(),
            inputs: vec![
                input("input", "FP32", &shape("input"), fp32(&audio)),
                input("state", "FP32", &shape("state"), fp32(&state)),
                input(
                    "sr",
                    "INT64",
                    &[],
                    Some(pb::InferTensorContents {
                        int64_contents: vec![16000],
                        ..Default::default()
                    }),
                ),
            ],
            ..Default::default()
        };
        let mut raw = typed.clone();
        for tensor in &mut raw.inputs {
            tensor.contents = None;
        }
        raw.raw_input_contents = vec![
            le_bytes(&audio),
            le_bytes(&state),
            Bytes::copy_from_slice(&16000i64.to_le_bytes()),
        ];
        raw.outputs = vec![InferRequestedOutputTensor {
            name: "stateN".into(),
            parameters: HashMap::new(),
        }];

        let typed = grpc.model_infer(typed).await.unwrap().into_inner();
        assert_eq!(typed.model_version, version);
        for (output, raw_contents) in typed.outputs.iter().zip(&typed.raw_output_contents) {
            let expected = &case["outputs"][output.name.as_str()];
            let expected_shape: Vec<i64> = expected["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_i64().unwrap())
                .collect();
            assert_eq!(output.shape, expected_shape);
            assert!(output.contents.is_none(), "typed in, raw out");
            assert_close(&f32s(raw_contents), &as_f32s(&expected["data"]), 1e-5);
        }
        let raw = grpc.model_infer(raw).await.unwrap().into_inner();
        assert_eq!(raw.outputs.len(), 1, "only the requested output");
        assert_eq!(raw.outputs[0].name, "stateN");
        assert_close(
            &f32s(&raw.raw_output_contents[0]),
            &as_f32s(&case["outputs"]["stateN"]["data"]),
            1e-5,
        );
    }
    gateway.stop().await;
}

#[tokio::test]
async fn bad_requests_get_the_right_status_codes() {
    let gateway = TestGateway::start_with(&models_dir(), |config| {
        config.grpc.max_message_size = switchyard_gateway::config::ByteSize(1 << 20);
    })
    .await;
    let mut grpc = client(&gateway).await;
    let x = sample_inputs(MLP_IN, 5);

    let mut wrong_dtype = mlp_raw(&x, 1);
    wrong_dtype.inputs[0].datatype = "FP64".into();
    wrong_dtype.raw_input_contents = vec![Bytes::from(vec![0u8; MLP_IN * 8])];
    let mut wrong_shape = mlp_raw(&x[..32], 1);
    wrong_shape.inputs[0].shape = vec![1, 32];
    let mut short_raw = mlp_raw(&x, 1);
    short_raw.raw_input_contents = vec![le_bytes(&x[..63])];
    let mut both = mlp_typed(&x, 1);
    both.raw_input_contents = vec![le_bytes(&x)];
    let mut extra_raw = mlp_raw(&x, 1);
    extra_raw.raw_input_contents.push(le_bytes(&x));
    let mut unknown_datatype = mlp_raw(&x, 1);
    unknown_datatype.inputs[0].datatype = "FLOAT".into();
    let mut short_typed = mlp_typed(&x[..10], 1);
    short_typed.inputs[0].shape = vec![1, 64];
    let mut unknown_model = mlp_raw(&x, 1);
    unknown_model.model_name = "nope".into();
    let mut unknown_version = mlp_raw(&x, 1);
    unknown_version.model_version = "4".into();
    let mut unknown_output = mlp_raw(&x, 1);
    unknown_output.outputs = vec![InferRequestedOutputTensor {
        name: "z".into(),
        parameters: HashMap::new(),
    }];

    let cases = [
        (wrong_dtype, Code::InvalidArgument, "expects FP32"),
        (wrong_shape, Code::InvalidArgument, "expects [-1, 64]"),
        (short_raw, Code::InvalidArgument, "needs 256 bytes, got 252"),
        (both, Code::InvalidArgument, "both set"),
        (extra_raw, Code::InvalidArgument, "one per input"),
        (unknown_datatype, Code::InvalidArgument, "unknown datatype"),
        (short_typed, Code::InvalidArgument, "fp32_contents holds 10"),
        (
            unknown_model,
            Code::NotFound,
            "Request for unknown model: 'nope' is not found",
        ),
        (
            unknown_version,
            Code::NotFound,
            "Request for unknown model: 'mlp' version 4 is not found",
        ),
        (unknown_output, Code::InvalidArgument, "no output 'z'"),
    ];
    for (request, code, message) in cases {
        let status = grpc.model_infer(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{}", status.message());
        assert!(
            status.message().contains(message),
            "'{}' lacks '{message}'",
            status.message()
        );
    }

    // Over the configured message size: RESOURCE_EXHAUSTED, before any work is done.
    let big = sample_inputs(64 * MLP_IN * 80, 1);
    let status = grpc.model_infer(mlp_raw(&big, 64 * 80)).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("too large"),
        "{}",
        status.message()
    );

    // A deadline that has passed on arrival is refused by the server. (tonic's client would
    // enforce a 1 ns deadline itself, so this call is framed by hand over HTTP/2.)
    let (status, message) = raw_grpc_call(&gateway, &mlp_raw(&x, 1), "1n").await;
    assert_eq!(status, Code::DeadlineExceeded as i32, "{message}");
    assert!(message.contains("deadline"), "{message}");
    let (status, _) = raw_grpc_call(&gateway, &mlp_raw(&x, 1), "20S").await;
    assert_eq!(status, Code::Ok as i32);
    let mut generous = tonic::Request::new(mlp_raw(&x, 1));
    generous.set_timeout(Duration::from_secs(30));
    assert!(grpc.model_infer(generous).await.is_ok());
    gateway.stop().await;
}

/// Sends one ModelInfer call with a given `grpc-timeout` header; returns grpc-status and
/// grpc-message.
async fn raw_grpc_call(
    gateway: &TestGateway,
    request: &pb::ModelInferRequest,
    timeout: &str,
) -> (i32, String) {
    use prost::Message;
    let message = request.encode_to_vec();
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(&message);
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = client
        .post(format!(
            "http://{}/inference.GRPCInferenceService/ModelInfer",
            gateway.grpc_addr
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    match header("grpc-status") {
        // Trailers-only answer: an error.
        Some(status) => (
            status.parse().unwrap(),
            header("grpc-message").unwrap_or_default(),
        ),
        // A full answer; its status travels in trailers, which means the call succeeded here.
        None => {
            let bytes = response.bytes().await.unwrap();
            let reply = pb::ModelInferResponse::decode(&bytes[5..]).unwrap();
            assert_eq!(reply.model_name, "mlp");
            (0, String::new())
        }
    }
}

#[tokio::test]
async fn a_failed_version_is_not_ready_over_grpc() {
    let repo = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(repo.path().join("broken/1")).unwrap();
    std::fs::write(repo.path().join("broken/1/model.onnx"), b"\x08\x07garbage").unwrap();
    let gateway = TestGateway::start(repo.path()).await;
    let mut grpc = client(&gateway).await;
    let ready = grpc
        .model_ready(pb::ModelReadyRequest {
            name: "broken".into(),
            version: "1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!ready.ready);
    let status = grpc
        .model_infer(pb::ModelInferRequest {
            model_name: "broken".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("failed"), "{}", status.message());
    let status = grpc
        .model_metadata(pb::ModelMetadataRequest {
            name: "broken".into(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    gateway.stop().await;
}

#[tokio::test]
async fn an_api_key_guards_inference_but_not_health() {
    use sha2::Digest;
    let key = "inference-key";
    let digest: String = sha2::Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let gateway = TestGateway::start_with(&models_dir(), |config| {
        config.inference.api_keys = vec![digest]
    })
    .await;

    // HTTP: health stays open; inference needs the key, as a bearer token or X-API-Key.
    assert_eq!(gateway.get("/v2/health/ready").await.0, 200);
    let x = sample_inputs(MLP_IN, 2);
    let body =
        json!({"inputs": [{"name": "x", "shape": [1, MLP_IN], "datatype": "FP32", "data": x}]});
    let (status, refused) = gateway.post_json("/v2/models/mlp/infer", &body).await;
    assert_eq!(status, 401);
    assert!(refused["error"].as_str().unwrap().contains("API key"));
    let url = gateway.url("/v2/models/mlp/infer");
    let bearer = gateway
        .client
        .post(&url)
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200);
    let header = gateway
        .client
        .post(&url)
        .header("X-API-Key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(header.status(), 200);
    let wrong = gateway
        .client
        .post(&url)
        .bearer_auth("nope")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(
        gateway
            .client
            .get(gateway.url("/v2/models/mlp"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    // gRPC: liveness open, inference UNAUTHENTICATED without the key.
    let mut grpc = client(&gateway).await;
    assert!(
        grpc.server_live(pb::ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    let status = grpc.model_infer(mlp_raw(&x, 1)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut request = tonic::Request::new(mlp_raw(&x, 1));
    request
        .metadata_mut()
        .insert("x-api-key", key.parse().unwrap());
    assert!(grpc.model_infer(request).await.is_ok());
    let mut request = tonic::Request::new(mlp_raw(&x, 1));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    assert!(grpc.model_infer(request).await.is_ok());
    gateway.stop().await;
}

#[tokio::test]
async fn statistics_count_what_each_version_served_on_both_transports() {
    let gateway = TestGateway::start(&models_dir()).await;
    let mut grpc = client(&gateway).await;
    for seed in 0..5 {
        let body = json!({"inputs": [{"name": "x", "shape": [3, MLP_IN], "datatype": "FP32",
            "data": sample_inputs(3 * MLP_IN, seed)}]});
        let (status, answer) = gateway
            .post_json("/v2/models/mlp/versions/1/infer", &body)
            .await;
        assert_eq!(status, 200, "{answer}");
    }
    let wrong = json!({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32",
        "data": [0.0, 0.0, 0.0]}]});
    let (status, _) = gateway
        .post_json("/v2/models/mlp/versions/1/infer", &wrong)
        .await;
    assert_eq!(status, 400);

    let (status, stats) = gateway.get("/v2/models/mlp/versions/1/stats").await;
    assert_eq!(status, 200, "{stats}");
    let stat = &stats["model_stats"][0];
    assert_eq!(
        (&stat["name"], &stat["version"]),
        (&json!("mlp"), &json!("1"))
    );
    let figures = &stat["inference_stats"];
    let count = |name: &str| figures[name]["count"].as_u64().unwrap();
    let ns = |name: &str| figures[name]["ns"].as_u64().unwrap();
    assert_eq!(count("success"), 5, "{stat}");
    assert_eq!(count("fail"), 1, "{stat}");
    assert_eq!(count("queue"), 5, "{stat}");
    assert_eq!(count("compute_infer"), 5, "{stat}");
    assert_eq!(stat["inference_count"], 15, "{stat}");
    let executions = stat["execution_count"].as_u64().unwrap();
    assert!((1..=5).contains(&executions), "{stat}");
    // Each request's time from arrival includes its share of the model's.
    assert!(
        ns("compute_infer") > 0 && ns("success") >= ns("compute_infer"),
        "{stat}"
    );
    let batches = stat["batch_stats"].as_array().unwrap();
    let executed: u64 = batches
        .iter()
        .map(|batch| batch["compute_infer"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(executed, executions, "{stat}");
    assert!(
        batches
            .iter()
            .all(|batch| batch["batch_size"].as_u64().unwrap() % 3 == 0),
        "{stat}"
    );
    assert!(stat["last_inference"].as_u64().unwrap() > 1_700_000_000_000);

    // gRPC's ModelStatistics reports the same figures.
    let response = grpc
        .model_statistics(pb::ModelStatisticsRequest {
            name: "mlp".into(),
            version: "1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let stat = &response.model_stats[0];
    let figures = stat.inference_stats.as_ref().unwrap();
    assert_eq!(figures.success.as_ref().unwrap().count, 5);
    assert_eq!(figures.fail.as_ref().unwrap().count, 1);
    assert_eq!(stat.inference_count, 15);
    assert_eq!(stat.execution_count, executions);

    // Every loaded version, of one model or of all; unknown names are refused.
    let (_, model) = gateway.get("/v2/models/mlp/stats").await;
    let versions: Vec<&str> = model["model_stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|stat| stat["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["1", "2"]);
    let (_, all) = gateway.get("/v2/models/stats").await;
    let names: Vec<&str> = all["model_stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|stat| stat["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"mlp") && names.contains(&"silero_vad"),
        "{all}"
    );
    let (status, error) = gateway.get("/v2/models/nope/stats").await;
    assert_eq!(status, 404);
    assert!(error["error"].as_str().unwrap().contains("nope"), "{error}");
    let missing = grpc
        .model_statistics(pb::ModelStatisticsRequest {
            name: "nope".into(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let (_, server) = gateway.get("/v2").await;
    assert!(server["extensions"].to_string().contains("statistics"));
    gateway.stop().await;
}
