//! The spoken test stream of `data/silero_vad` (made by `scripts/setup`: espeak-ng and sox)
//! and the requests that carry it chunk by chunk, as a streaming client of silero_vad sends
//! them. Also compiled into `examples/sequence_bench.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use switchyard_gateway::protocol::grpc::pb;
use switchyard_gateway::protocol::grpc::pb::infer_parameter::ParameterChoice;
use switchyard_gateway::protocol::grpc::pb::model_infer_request::InferInputTensor;

/// Samples per chunk: 32 ms at 16 kHz, what silero-vad takes.
pub const CHUNK: usize = 512;
/// Samples of the chunk before that silero-vad 5 and later want in front of each chunk.
pub const CONTEXT: usize = 64;

pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/silero_vad")
}

/// The audio, zero-padded to whole chunks.
pub fn audio() -> Vec<f32> {
    let path = data_dir().join("stream_reference.f32");
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup)", path.display()))
        .as_chunks::<4>()
        .0
        .iter()
        .map(|c| f32::from_le_bytes(*c))
        .collect()
}

/// What a streaming client sends for chunk `index` of a stream that began at `first`: the
/// chunk with the 64 samples before it in front (zeros for a stream's first chunk).
pub fn window(audio: &[f32], first: usize, index: usize) -> Vec<f32> {
    let start = index * CHUNK;
    let mut window = vec![0.0; CONTEXT];
    if index > first {
        window.copy_from_slice(&audio[start - CONTEXT..start]);
    }
    window.extend_from_slice(&audio[start..start + CHUNK]);
    window
}

fn parameter(choice: ParameterChoice) -> pb::InferParameter {
    pb::InferParameter {
        parameter_choice: Some(choice),
    }
}

/// One chunk of sequence `id` as a gRPC request to silero_vad `version` ("" lets the policy
/// choose), with raw contents: the window and the rate, no state.
pub fn grpc_chunk(
    version: &str,
    window: &[f32],
    id: u64,
    start: bool,
    end: bool,
) -> pb::ModelInferRequest {
    let raw: Vec<u8> = window.iter().flat_map(|v| v.to_le_bytes()).collect();
    pb::ModelInferRequest {
        model_name: "silero_vad".into(),
        model_version: version.into(),
        parameters: HashMap::from([
            (
                "sequence_id".into(),
                parameter(ParameterChoice::Int64Param(id as i64)),
            ),
            (
                "sequence_start".into(),
                parameter(ParameterChoice::BoolParam(start)),
            ),
            (
                "sequence_end".into(),
                parameter(ParameterChoice::BoolParam(end)),
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
