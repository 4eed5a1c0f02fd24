//! Stateful models as sequences, on the real silero_vad and a real spoken stream: speech made
//! by espeak-ng with silence around it (scripts/setup), cut into 512-sample chunks, streamed
//! with Triton's sequence parameters while the gateway carries the model's state.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    // A chunk's index is also its place in the audio.
    clippy::needless_range_loop
)]

use crate::common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::speech::{self, CHUNK, CONTEXT, grpc_chunk};
use common::{TestGateway, WRITER_TOKEN, models_dir, test_tokens};
use pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use pb::model_infer_request::InferInputTensor;
use reqwest::Method;
use serde_json::{Value, json};
use switchyard_gateway::protocol::grpc::pb;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const TOLERANCE: f32 = 1e-5;

/// The spoken stream and what Python's onnxruntime makes of it, chunk by chunk.
struct Speech {
    audio: Vec<f32>,
    /// Speech probability per chunk, by version.
    reference: HashMap<String, Vec<f32>>,
}

impl Speech {
    fn load() -> Speech {
        let json = speech::data_dir().join("stream_reference.json");
        assert!(
            json.is_file(),
            "data/silero_vad/stream_reference.json is missing: run scripts/setup"
        );
        let reference: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        assert_eq!(reference["context"], CONTEXT);
        let audio = speech::audio();
        assert_eq!(
            audio.len(),
            reference["chunks"].as_u64().unwrap() as usize * CHUNK
        );
        let reference = reference["probabilities"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(version, p)| (version.clone(), common::as_f32s(p)))
            .collect();
        Speech { audio, reference }
    }

    fn chunks(&self) -> usize {
        self.audio.len() / CHUNK
    }

    fn window(&self, first: usize, index: usize) -> Vec<f32> {
        speech::window(&self.audio, first, index)
    }
}

fn assert_close(actual: f32, expected: f32, what: &str) {
    assert!(
        (actual - expected).abs() <= TOLERANCE,
        "{what}: {actual} against {expected}"
    );
}

fn http_chunk(window: &[f32], id: u64, start: bool, end: bool) -> Value {
    json!({
        "inputs": [
            {"name": "input", "shape": [1, window.len()], "datatype": "FP32", "data": window},
            {"name": "sr", "shape": [], "datatype": "INT64", "data": [16000]},
        ],
        "parameters": {"sequence_id": id, "sequence_start": start, "sequence_end": end},
    })
}

/// Sends one chunk over HTTP; returns the version that served it and its speech probability.
async fn http_step(
    gateway: &TestGateway,
    path: &str,
    window: &[f32],
    id: u64,
    start: bool,
    end: bool,
) -> (String, f32) {
    let (status, body) = gateway
        .post_json(path, &http_chunk(window, id, start, end))
        .await;
    assert_eq!(status, 200, "{body}");
    let outputs = body["outputs"].as_array().unwrap();
    // The state stays in the gateway: only the speech probability comes back.
    assert_eq!(outputs.len(), 1, "{body}");
    assert_eq!(outputs[0]["name"], "output");
    let probability = common::as_f32s(&outputs[0]["data"])[0];
    (
        body["model_version"].as_str().unwrap().to_owned(),
        probability,
    )
}

fn grpc_probability(response: &pb::ModelInferResponse) -> f32 {
    assert_eq!(
        response.outputs.len(),
        1,
        "only the speech probability comes back"
    );
    assert_eq!(response.outputs[0].name, "output");
    f32::from_le_bytes(response.raw_output_contents[0][..4].try_into().unwrap())
}

async fn grpc_client(gateway: &TestGateway) -> GrpcInferenceServiceClient<Channel> {
    GrpcInferenceServiceClient::connect(format!("http://{}", gateway.grpc_addr))
        .await
        .expect("gRPC connection")
}

#[tokio::test]
async fn one_spoken_stream_over_http_grpc_and_a_grpc_stream_matches_python() {
    let speech = Speech::load();
    let gateway = TestGateway::start(&models_dir()).await;
    let chunks = speech.chunks();
    let mut grpc = grpc_client(&gateway).await;
    for version in ["1", "2"] {
        let reference = &speech.reference[version];
        let speaking = reference.iter().filter(|p| **p > 0.5).count();
        assert!(
            speaking > chunks / 4 && speaking < chunks - 20,
            "the stream holds speech and silence: {speaking} of {chunks} chunks"
        );
        let path = format!("/v2/models/silero_vad/versions/{version}/infer");
        for index in 0..chunks {
            let window = speech.window(0, index);
            let (served, p) = http_step(
                &gateway,
                &path,
                &window,
                11,
                index == 0,
                index + 1 == chunks,
            )
            .await;
            assert_eq!(served, version);
            assert_close(
                p,
                reference[index],
                &format!("HTTP v{version} chunk {index}"),
            );
        }
        for index in 0..chunks {
            let request = grpc_chunk(
                version,
                &speech.window(0, index),
                12,
                index == 0,
                index + 1 == chunks,
            );
            let response = grpc.model_infer(request).await.unwrap().into_inner();
            assert_eq!(response.model_version, version);
            assert_close(
                grpc_probability(&response),
                reference[index],
                &format!("gRPC v{version} chunk {index}"),
            );
        }
        let (sender, requests) = tokio::sync::mpsc::channel(1);
        let mut responses = grpc
            .model_stream_infer(ReceiverStream::new(requests))
            .await
            .unwrap()
            .into_inner();
        for index in 0..chunks {
            let request = grpc_chunk(
                version,
                &speech.window(0, index),
                13,
                index == 0,
                index + 1 == chunks,
            );
            sender.send(request).await.unwrap();
            let message = responses
                .message()
                .await
                .unwrap()
                .expect("a response per request");
            assert_eq!(message.error_message, "");
            let response = message.infer_response.unwrap();
            assert_eq!(response.model_version, version);
            assert_close(
                grpc_probability(&response),
                reference[index],
                &format!("stream v{version} chunk {index}"),
            );
            if index == chunks / 2 {
                // A bad message mid-stream is answered in its own response; the stream goes on.
                sender
                    .send(grpc_chunk(
                        version,
                        &speech.window(0, index),
                        999,
                        false,
                        false,
                    ))
                    .await
                    .unwrap();
                let message = responses.message().await.unwrap().unwrap();
                assert!(
                    message.error_message.contains("sequence 999")
                        && message.error_message.contains("not open"),
                    "{}",
                    message.error_message
                );
            }
        }
        drop(sender);
        assert!(
            responses.message().await.unwrap().is_none(),
            "the stream ends with its requests"
        );
    }
    // Every sequence ended with sequence_end: none is left open.
    assert_eq!(
        gateway
            .metric(r#"switchyard_sequences_open{model="silero_vad",version="1"}"#)
            .await,
        Some(0.0)
    );
    gateway.stop().await;
}

/// Runs stream `stream`: `length` chunks over HTTP from its own offset in the audio, as
/// sequence `id`, on version 2; returns its probabilities.
async fn run_stream(
    gateway: Arc<TestGateway>,
    speech: Arc<Speech>,
    stream: usize,
    length: usize,
    id: u64,
) -> Vec<f32> {
    let first = (stream * 3) % (speech.chunks() - length);
    let mut probabilities = Vec::with_capacity(length);
    for index in first..first + length {
        let (_, p) = http_step(
            &gateway,
            "/v2/models/silero_vad/versions/2/infer",
            &speech.window(first, index),
            id,
            index == first,
            index + 1 == first + length,
        )
        .await;
        probabilities.push(p);
    }
    probabilities
}

/// Inferences and model executions of silero_vad version 2 so far (Triton's statistics).
async fn counts(gateway: &TestGateway) -> (u64, u64) {
    let (status, body) = gateway.get("/v2/models/silero_vad/versions/2/stats").await;
    assert_eq!(status, 200, "{body}");
    let stats = &body["model_stats"][0];
    (
        stats["inference_count"].as_u64().unwrap(),
        stats["execution_count"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn sixty_four_concurrent_sequences_join_into_batches_and_match_separate_runs() {
    const STREAMS: usize = 64;
    const LENGTH: usize = 16;
    let speech = Arc::new(Speech::load());
    // A debug-build gateway rarely has two calls queued at once; waiting 2 ms for the other
    // open sequences makes the joins this test checks certain.
    let repo = silero_repository(|toml| {
        toml.replace("[sequence]\n", "[sequence]\nmax_queue_delay = \"2ms\"\n")
    });
    let gateway = Arc::new(TestGateway::start(repo.path()).await);
    // The separate runs: one stream at a time, so no call has company.
    let mut separate = Vec::new();
    for stream in 0..STREAMS {
        separate.push(
            run_stream(
                gateway.clone(),
                speech.clone(),
                stream,
                LENGTH,
                1 + stream as u64,
            )
            .await,
        );
    }
    let (inferences, executions) = counts(&gateway).await;
    assert_eq!(
        inferences - executions,
        0,
        "alone, every call runs by itself"
    );
    let started = Instant::now();
    let tasks: Vec<_> = (0..STREAMS)
        .map(|stream| {
            tokio::spawn(run_stream(
                gateway.clone(),
                speech.clone(),
                stream,
                LENGTH,
                100 + stream as u64,
            ))
        })
        .collect();
    let mut together = Vec::new();
    for task in tasks {
        together.push(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    for (stream, (alone, joined)) in separate.iter().zip(&together).enumerate() {
        for (chunk, (a, j)) in alone.iter().zip(joined).enumerate() {
            assert_close(
                *j,
                *a,
                &format!("stream {stream} chunk {chunk}, joined against alone"),
            );
        }
    }
    let (inferences_after, executions_after) = counts(&gateway).await;
    let calls = inferences_after - inferences;
    let executions = executions_after - executions;
    assert_eq!(calls, (STREAMS * LENGTH) as u64);
    assert!(
        executions < calls,
        "concurrent sequences share model calls: {calls} calls in {executions} executions"
    );
    let batch_sum = gateway
        .metric(r#"switchyard_batch_size_sum{model="silero_vad",version="2"}"#)
        .await
        .unwrap();
    let batch_count = gateway
        .metric(r#"switchyard_batch_size_count{model="silero_vad",version="2"}"#)
        .await
        .unwrap();
    assert!(
        batch_sum > batch_count,
        "the batch-size metric shows batches over 1"
    );
    eprintln!(
        "{STREAMS} streams x {LENGTH} chunks together: {calls} calls in {executions} model calls, {:.0} chunks/s",
        calls as f64 / elapsed.as_secs_f64()
    );
}

/// The sample models, behind the test tokens (the registry API's writes need the writer's).
async fn with_tokens() -> TestGateway {
    TestGateway::start_with(&models_dir(), |config| config.admin.tokens = test_tokens()).await
}

async fn set_weights(gateway: &TestGateway, weights: Value) {
    let (status, body) = gateway
        .admin(
            Method::PUT,
            "/v1/models/silero_vad/traffic",
            Some(WRITER_TOKEN),
            Some(json!({ "weights": weights })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// Waits until a request without a sequence goes to `version`.
async fn wait_for_route(gateway: &TestGateway, speech: &Speech, version: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut body = http_chunk(&speech.window(0, 0), 0, false, false);
        body["inputs"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "state", "shape": [2, 1, 128], "datatype": "FP32", "data": vec![0.0f32; 256]}));
        body.as_object_mut().unwrap().remove("parameters");
        let (status, response) = gateway
            .post_json("/v2/models/silero_vad/infer", &body)
            .await;
        assert_eq!(status, 200, "{response}");
        if response["model_version"] == version {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "traffic never moved to {version}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn open_sequences_stay_on_their_version_through_a_weight_change() {
    const OPEN: u64 = 8;
    let speech = Speech::load();
    let gateway = with_tokens().await;
    set_weights(&gateway, json!({"1": 100, "2": 0})).await;
    wait_for_route(&gateway, &speech, "1").await;
    let chunks = speech.chunks();
    let half = chunks / 2;
    let path = "/v2/models/silero_vad/infer";
    // Open sequences, halfway through the audio, all on version 1.
    for index in 0..half {
        for id in 1..=OPEN {
            let (served, p) = http_step(
                &gateway,
                path,
                &speech.window(0, index),
                id,
                index == 0,
                false,
            )
            .await;
            assert_eq!(served, "1", "sequence {id} chunk {index}");
            assert_close(p, speech.reference["1"][index], "before the change");
        }
    }
    set_weights(&gateway, json!({"1": 0, "2": 100})).await;
    wait_for_route(&gateway, &speech, "2").await;
    // New sequences follow the new weights, while the open ones finish where they began,
    // their state intact.
    for index in half..chunks {
        for id in 1..=OPEN {
            let (served, p) = http_step(
                &gateway,
                path,
                &speech.window(0, index),
                id,
                false,
                index + 1 == chunks,
            )
            .await;
            assert_eq!(served, "1", "open sequence {id} chunk {index} moved");
            assert_close(p, speech.reference["1"][index], "after the change");
        }
        for id in 101..=100 + OPEN {
            let first = index == half;
            let (served, _) = http_step(
                &gateway,
                path,
                &speech.window(half, index),
                id,
                first,
                index + 1 == chunks,
            )
            .await;
            assert_eq!(served, "2", "new sequence {id} chunk {index}");
        }
    }
    gateway.stop().await;
}

/// A repository with silero_vad version 2 as model `vad` version 1 and as `silero_vad`
/// version 2, its model.toml edited by `adjust`.
fn silero_repository(adjust: impl Fn(String) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let toml = adjust(std::fs::read_to_string(models_dir().join("silero_vad/model.toml")).unwrap());
    for (model, version) in [("vad", "1"), ("silero_vad", "2")] {
        let folder = dir.path().join(model);
        std::fs::create_dir_all(folder.join(version)).unwrap();
        std::fs::copy(
            models_dir().join("silero_vad/2/model.onnx"),
            folder.join(version).join("model.onnx"),
        )
        .unwrap();
        std::fs::write(folder.join("model.toml"), &toml).unwrap();
    }
    dir
}

/// Sequences few, idling out quickly.
fn small_silero_repository() -> tempfile::TempDir {
    silero_repository(|toml| {
        let toml = toml
            .replace("max_sequences = 64", "max_sequences = 2")
            .replace("idle_timeout = \"30s\"", "idle_timeout = \"1s\"");
        assert!(toml.contains("max_sequences = 2") && toml.contains("\"1s\""));
        toml
    })
}

#[tokio::test]
async fn bad_sequence_requests_get_clear_errors() {
    let speech = Speech::load();
    let repo = small_silero_repository();
    let gateway = TestGateway::start(repo.path()).await;
    let path = "/v2/models/vad/infer";
    let window = speech.window(0, 0);

    // A chunk for a sequence that never started.
    let (status, body) = gateway
        .post_json(path, &http_chunk(&window, 5, false, false))
        .await;
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("sequence 5") && error.contains("sequence_start"),
        "{error}"
    );

    // An unknown model is 404, sequence or not.
    let (status, body) = gateway
        .post_json(
            "/v2/models/nope/infer",
            &http_chunk(&window, 5, false, false),
        )
        .await;
    assert_eq!(status, 404, "{body}");

    // Two slots: the third sequence is refused, until one ends.
    for id in [1, 2] {
        let (status, body) = gateway
            .post_json(path, &http_chunk(&window, id, true, false))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(
        gateway
            .metric(r#"switchyard_sequences_open{model="vad",version="1"}"#)
            .await,
        Some(2.0)
    );
    assert_eq!(
        gateway
            .metric(r#"switchyard_sequence_slots{model="vad",version="1"}"#)
            .await,
        Some(2.0)
    );
    assert_eq!(
        gateway
            .metric(r#"switchyard_sequence_state_bytes{model="vad",version="1"}"#)
            .await,
        Some((2 * 2 * 128 * 4) as f64)
    );
    let (status, body) = gateway
        .post_json(path, &http_chunk(&window, 3, true, false))
        .await;
    assert_eq!(status, 429, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("limit of 2 open sequences"),
        "{body}"
    );
    let (status, body) = gateway
        .post_json(path, &http_chunk(&window, 2, false, true))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = gateway
        .post_json(path, &http_chunk(&window, 3, true, false))
        .await;
    assert_eq!(status, 200, "{body}");

    // Idle past its timeout, a sequence is released: its next chunk without sequence_start
    // is refused, and it can start again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, body) = gateway
        .post_json(path, &http_chunk(&window, 1, false, false))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("not open")
            || body["error"].as_str().unwrap().contains("released"),
        "{body}"
    );
    let (status, body) = gateway
        .post_json(path, &http_chunk(&window, 1, true, false))
        .await;
    assert_eq!(status, 200, "{body}");

    // A last chunk that fails does not end its sequence: it can be sent again.
    let mut wrong_dtype = http_chunk(&window, 1, false, true);
    wrong_dtype["inputs"][0]["datatype"] = json!("FP64");
    let (status, body) = gateway.post_json(path, &wrong_dtype).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = gateway
        .post_json(path, &http_chunk(&window, 1, false, true))
        .await;
    assert_eq!(status, 200, "the failed end left the sequence open: {body}");
    let (status, _) = gateway
        .post_json(path, &http_chunk(&window, 1, false, false))
        .await;
    assert_eq!(status, 400, "the successful end closed it");

    // Sequence parameters of the wrong type, or without an id.
    let mut wrong = http_chunk(&window, 1, false, false);
    wrong["parameters"]["sequence_start"] = json!("yes");
    let (status, body) = gateway.post_json(path, &wrong).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("boolean"),
        "{body}"
    );
    let mut no_id = http_chunk(&window, 0, true, false);
    no_id["parameters"]["sequence_id"] = json!(0);
    let (status, body) = gateway.post_json(path, &no_id).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("sequence_id"),
        "{body}"
    );
    gateway.stop().await;
}

#[tokio::test]
async fn a_model_without_sequence_settings_refuses_sequence_parameters() {
    let gateway = TestGateway::start(&models_dir()).await;
    let body = json!({
        "inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": vec![0.5f32; 64]}],
        "parameters": {"sequence_id": "stream-a", "sequence_start": true},
    });
    let (status, response) = gateway.post_json("/v2/models/mlp/infer", &body).await;
    assert_eq!(status, 400, "{response}");
    assert!(
        response["error"]
            .as_str()
            .unwrap()
            .contains("does not serve sequences"),
        "{response}"
    );
    gateway.stop().await;
}

#[tokio::test]
async fn a_stream_message_past_the_limits_is_refused_before_it_is_decoded() {
    let speech = Speech::load();
    let gateway = TestGateway::start(&models_dir()).await;
    let mut grpc = grpc_client(&gateway).await;
    let (sender, requests) = tokio::sync::mpsc::channel(2);
    let mut responses = grpc
        .model_stream_infer(ReceiverStream::new(requests))
        .await
        .unwrap()
        .into_inner();
    // A good chunk first: the stream works.
    sender
        .send(grpc_chunk("2", &speech.window(0, 0), 77, true, false))
        .await
        .unwrap();
    let message = responses.message().await.unwrap().unwrap();
    assert_eq!(message.error_message, "");
    // Then 5,000 empty inputs: a few bytes each on the wire, hundreds once decoded.
    let mut flood = grpc_chunk("2", &speech.window(0, 1), 77, false, false);
    flood.inputs = vec![InferInputTensor::default(); 5000];
    flood.raw_input_contents.clear();
    sender.send(flood).await.unwrap();
    let status = responses
        .message()
        .await
        .expect_err("the flood ends the stream");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("inputs"), "{status:?}");
    // The gateway serves on, and the sequence kept the state of its good chunk.
    let response = grpc
        .model_infer(grpc_chunk("2", &speech.window(0, 1), 77, false, true))
        .await
        .unwrap()
        .into_inner();
    assert_close(
        grpc_probability(&response),
        speech.reference["2"][1],
        "after the refused flood",
    );
    gateway.stop().await;
}

#[tokio::test]
async fn a_removed_version_drains_until_its_open_sequence_ends() {
    let speech = Speech::load();
    let gateway = with_tokens().await;
    let w = Some(WRITER_TOKEN);
    let pinned = "/v2/models/silero_vad/versions/1/infer";
    let path = "/v2/models/silero_vad/infer";
    for index in 0..10 {
        let (served, _) = http_step(
            &gateway,
            pinned,
            &speech.window(0, index),
            21,
            index == 0,
            false,
        )
        .await;
        assert_eq!(served, "1");
    }
    let (status, body) = gateway
        .admin(Method::DELETE, "/v1/models/silero_vad/versions/1", w, None)
        .await;
    assert_eq!(status, 202, "{body}");
    // Out of the table at once: a new request for it is 404, a new sequence goes to 2 ...
    let deadline = Instant::now() + Duration::from_secs(10);
    while gateway.get("/v2/models/silero_vad/versions/1").await.0 != 404 {
        assert!(Instant::now() < deadline, "version 1 stayed in the table");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (served, _) = http_step(&gateway, path, &speech.window(0, 0), 22, true, true).await;
    assert_eq!(served, "2");
    // ... but the open sequence keeps its version, state intact, and holds it from retiring.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for index in 10..40 {
        let (served, p) = http_step(
            &gateway,
            path,
            &speech.window(0, index),
            21,
            false,
            index == 39,
        )
        .await;
        assert_eq!(
            served, "1",
            "chunk {index} of the draining version's sequence"
        );
        assert_close(p, speech.reference["1"][index], "while draining");
        if index == 10 {
            let (_, version) = gateway
                .admin(Method::GET, "/v1/models/silero_vad/versions/1", w, None)
                .await;
            assert_eq!(version["state"], "draining", "{version}");
        }
    }
    // Its last chunk ended it: the version retires.
    gateway
        .wait_for_version(
            "silero_vad",
            "1",
            "state",
            "retired",
            Duration::from_secs(10),
        )
        .await;
    gateway.stop().await;
}

#[tokio::test]
async fn a_state_that_does_not_fit_the_model_fails_the_load_with_the_reason() {
    let repo = silero_repository(|toml| toml.replace("dims = [2, 1, 128]", "dims = [2, 1, 64]"));
    let gateway = TestGateway::start(repo.path()).await;
    let (status, body) = gateway.get("/v2/models/vad/versions/1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "FAILED", "{body}");
    let reason = body["reason"].as_str().unwrap();
    assert!(
        reason.contains("[[state]] 'state'") && reason.contains("[2, 1, 64]"),
        "{reason}"
    );
    gateway.stop().await;
}
