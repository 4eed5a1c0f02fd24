//! What the HTTP front's JSON codec costs per request: decoding a request body into tensors and
//! encoding a response, for `mlp` (64 FP32 in, 10 out: perf_analyzer's body) and `mlp_heavy`
//! (512 in, 1000 out). Each figure is the fastest of many rounds of a few milliseconds, the
//! round least disturbed by the neighbours on a shared machine; compare builds back to back.
//!
//! cargo run --release --example json_codec_bench

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchyard_gateway::core::InferResponse;
use switchyard_gateway::protocol::json::{OutputEncoding, decode_request, encode_response};
use switchyard_runtimes::{DataType, NamedTensor, Tensor};

/// Elements as perf_analyzer and tritonclient write them: a few significant digits, signed.
fn values(count: usize, seed: u32) -> Vec<f32> {
    (0..count)
        .map(|i| {
            let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 20_000;
            (x as f32 - 10_000.0) / 10_000.0
        })
        .collect()
}

fn request_body(width: usize) -> Vec<u8> {
    let data: Vec<String> = values(width, 7).iter().map(|v| format!("{v}")).collect();
    format!(
        r#"{{"id":"bench","inputs":[{{"name":"x","shape":[1,{width}],"datatype":"FP32","data":[{}]}}],"outputs":[{{"name":"y","parameters":{{"binary_data":false}}}}]}}"#,
        data.join(",")
    )
    .into_bytes()
}

fn response(width: usize) -> InferResponse {
    InferResponse {
        model_name: "mlp".into(),
        model_version: "1".into(),
        id: Some("bench".into()),
        outputs: vec![NamedTensor {
            name: "y".into(),
            tensor: Tensor::from_slice(DataType::Fp32, vec![1, width], &values(width, 3)).unwrap(),
        }],
    }
}

/// The fastest of `rounds` rounds, per call, in nanoseconds.
fn fastest(rounds: usize, calls: usize, mut call: impl FnMut()) -> f64 {
    let mut best = Duration::MAX;
    for _ in 0..rounds {
        let started = Instant::now();
        for _ in 0..calls {
            call();
        }
        best = best.min(started.elapsed());
    }
    best.as_nanos() as f64 / calls as f64
}

fn main() {
    println!("what,bytes,ns_per_call");
    for (model, input_width, output_width) in [("mlp", 64, 10), ("mlp_heavy", 512, 1000)] {
        let body = request_body(input_width);
        let decode = fastest(200, 200, || {
            let decoded =
                decode_request("mlp", Some("1"), black_box(&body), Bytes::new(), None).unwrap();
            black_box(decoded);
        });
        println!("decode {model},{},{decode:.0}", body.len());
        let answer = response(output_width);
        let encoding = OutputEncoding::default();
        let mut encoded_bytes = 0;
        let encode = fastest(200, 200, || {
            let encoded = encode_response(black_box(&answer), &encoding).unwrap();
            encoded_bytes = encoded.json.len();
            black_box(encoded);
        });
        println!("encode {model},{encoded_bytes},{encode:.0}");
    }
}
