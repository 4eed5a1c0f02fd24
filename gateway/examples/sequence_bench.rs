//! Sequence batching measured: `streams` silero_vad sequences at once, each a gRPC
//! `ModelStreamInfer` stream sending the spoken test audio chunk after chunk, against an
//! in-process gateway three times: with the model's `[sequence]` settings (a free replica joins
//! the queued calls of concurrent sequences into one model call), with
//! `max_queue_delay = "1ms"` (the first call also waits for the other open sequences' calls)
//! and with `max_batch = 1` (each call alone).
//!
//!     cargo run --release --example sequence_bench -- [--streams 64] [--seconds 10]
//!
//! Needs `scripts/setup` (the models and data/silero_vad). Prints chunks/s and latency per
//! setting; every loop ends at its deadline.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/flags.rs"]
mod flags;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flags::Flags;
use pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use pb::infer_parameter::ParameterChoice;
use pb::model_infer_request::InferInputTensor;
use switchyard_gateway::Config;
use switchyard_gateway::protocol::grpc::pb;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;

const CHUNK: usize = 512;
const CONTEXT: usize = 64;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn audio() -> Vec<f32> {
    let path = root().join("data/silero_vad/stream_reference.f32");
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup)", path.display()))
        .as_chunks::<4>()
        .0
        .iter()
        .map(|c| f32::from_le_bytes(*c))
        .collect()
}

/// A repository holding silero_vad version 2 alone, with its model.toml edited by `adjust`.
fn repository(adjust: impl Fn(String) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("silero_vad");
    std::fs::create_dir_all(model.join("1")).unwrap();
    let models = root().join("models/silero_vad");
    std::fs::copy(models.join("2/model.onnx"), model.join("1/model.onnx")).unwrap();
    let toml = std::fs::read_to_string(models.join("model.toml")).unwrap();
    std::fs::write(model.join("model.toml"), adjust(toml)).unwrap();
    dir
}

fn chunk_request(audio: &[f32], index: usize, id: i64, start: bool) -> pb::ModelInferRequest {
    let begin = index * CHUNK;
    let mut window = vec![0.0f32; CONTEXT];
    if begin >= CONTEXT && !start {
        window.copy_from_slice(&audio[begin - CONTEXT..begin]);
    }
    window.extend_from_slice(&audio[begin..begin + CHUNK]);
    let raw: Vec<u8> = window.iter().flat_map(|v| v.to_le_bytes()).collect();
    let parameter = |choice| pb::InferParameter {
        parameter_choice: Some(choice),
    };
    pb::ModelInferRequest {
        model_name: "silero_vad".into(),
        parameters: HashMap::from([
            (
                "sequence_id".into(),
                parameter(ParameterChoice::Int64Param(id)),
            ),
            (
                "sequence_start".into(),
                parameter(ParameterChoice::BoolParam(start)),
            ),
        ]),
        inputs: vec![
            InferInputTensor {
                name: "input".into(),
                datatype: "FP32".into(),
                shape: vec![1, window.len() as i64],
                ..Default::default()
            },
            InferInputTensor {
                name: "sr".into(),
                datatype: "INT64".into(),
                shape: vec![],
                ..Default::default()
            },
        ],
        raw_input_contents: vec![
            Bytes::from(raw),
            Bytes::copy_from_slice(&16000i64.to_le_bytes()),
        ],
        ..Default::default()
    }
}

/// One stream: chunk after chunk until the deadline, starting over at the end of the audio.
async fn stream(
    addr: std::net::SocketAddr,
    audio: std::sync::Arc<Vec<f32>>,
    id: i64,
    deadline: Instant,
) -> Vec<Duration> {
    let mut client = GrpcInferenceServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (sender, requests) = tokio::sync::mpsc::channel(1);
    let mut responses = client
        .model_stream_infer(ReceiverStream::new(requests))
        .await
        .unwrap()
        .into_inner();
    let chunks = audio.len() / CHUNK;
    let mut latencies = Vec::new();
    let mut index = (id as usize * 7) % chunks;
    let mut start = true;
    while Instant::now() < deadline {
        let sent = Instant::now();
        sender
            .send(chunk_request(&audio, index, id, start))
            .await
            .unwrap();
        let message = responses.message().await.unwrap().unwrap();
        assert_eq!(message.error_message, "");
        latencies.push(sent.elapsed());
        start = false;
        index += 1;
        if index == chunks {
            index = 0;
            start = true;
        }
    }
    latencies
}

async fn measure(name: &str, repo: &Path, streams: usize, seconds: u64) {
    let registry = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.http.addr = "127.0.0.1:0".parse().unwrap();
    config.grpc.addr = "127.0.0.1:0".parse().unwrap();
    config.admin.addr = "127.0.0.1:0".parse().unwrap();
    config.metrics.addr = "127.0.0.1:0".parse().unwrap();
    config.models.dir = repo.to_path_buf();
    config.registry.url = format!("sqlite://{}", registry.path().join("r.db").display());
    let running = switchyard_gateway::start(&config).await.unwrap();
    let ready = Instant::now() + Duration::from_secs(60);
    while !running.gateway.is_ready() {
        assert!(Instant::now() < ready, "the gateway never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let audio = std::sync::Arc::new(audio());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..streams)
        .map(|id| {
            tokio::spawn(stream(
                running.grpc_addr,
                audio.clone(),
                id as i64 + 1,
                deadline,
            ))
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    println!(
        "{name:<28} {streams} streams: {:>8.0} chunks/s  p50 {:.2} ms  p99 {:.2} ms  ({} chunks)",
        latencies.len() as f64 / elapsed,
        at(0.5),
        at(0.99),
        latencies.len()
    );
    running.stop().await.unwrap();
}

#[tokio::main]
async fn main() {
    let flags = Flags::from_args();
    let streams: usize = flags.get("streams", "64").parse().unwrap();
    let seconds: u64 = flags.get("seconds", "10").parse().unwrap();
    let joined = repository(|toml| toml);
    let waiting =
        repository(|toml| toml.replace("[sequence]\n", "[sequence]\nmax_queue_delay = \"1ms\"\n"));
    let alone = repository(|toml| toml.replace("[sequence]\n", "[sequence]\nmax_batch = 1\n"));
    measure("joined (model.toml)", joined.path(), streams, seconds).await;
    measure(
        "joined, waiting up to 1 ms",
        waiting.path(),
        streams,
        seconds,
    )
    .await;
    measure("alone (max_batch = 1)", alone.path(), streams, seconds).await;
}
