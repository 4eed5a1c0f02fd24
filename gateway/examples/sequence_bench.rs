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
// The example needs the requests and the audio the sequence tests use.
#[path = "../tests/it/common/speech.rs"]
mod speech;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flags::Flags;
use pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use speech::{CHUNK, grpc_chunk, window};
use switchyard_gateway::Config;
use switchyard_gateway::protocol::grpc::pb;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
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

/// One stream: chunk after chunk until the deadline, starting over at the end of the audio.
async fn stream(
    addr: std::net::SocketAddr,
    audio: std::sync::Arc<Vec<f32>>,
    id: u64,
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
    let mut first = index;
    while Instant::now() < deadline {
        let sent = Instant::now();
        let request = grpc_chunk("", &window(&audio, first, index), id, index == first, false);
        sender.send(request).await.unwrap();
        let message = responses.message().await.unwrap().unwrap();
        assert_eq!(message.error_message, "");
        latencies.push(sent.elapsed());
        index += 1;
        if index == chunks {
            index = 0;
            first = 0;
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
    let audio = std::sync::Arc::new(speech::audio());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..streams)
        .map(|id| {
            tokio::spawn(stream(
                running.grpc_addr,
                audio.clone(),
                id as u64 + 1,
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
