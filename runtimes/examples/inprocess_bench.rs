//! The in-process limit: how long the `mlp` model takes through ONNX Runtime in this process,
//! directly through `ort` and through Switchyard's `LoadedModel`, with no network in between.
//!
//!     cargo run --release -p switchyard-runtimes --example inprocess_bench -- models/mlp/1/model.onnx

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use switchyard_runtimes::onnx::{OnnxRuntime, locate_library};
use switchyard_runtimes::{DataType, LoadOptions, NamedTensor, Runtime, Tensor};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn report(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    println!(
        "{label:<40} n={:<6} mean={:>8.1?} p50={:>8.1?} p99={:>8.1?}",
        samples.len(),
        mean,
        percentile(&samples, 0.50),
        percentile(&samples, 0.99)
    );
}

fn main() {
    let model_path: PathBuf = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "models/mlp/1/model.onnx".into())
        .into();
    let runtime = OnnxRuntime::initialize(&locate_library(None).unwrap()).unwrap();
    let mut model = runtime.load(&model_path, &LoadOptions::default()).unwrap();

    for batch in [1usize, 32] {
        let x: Vec<f32> = (0..batch * 64).map(|i| (i % 17) as f32 / 17.0).collect();
        let inputs = vec![NamedTensor {
            name: "x".into(),
            tensor: Tensor::from_slice(DataType::Fp32, vec![batch, 64], &x).unwrap(),
        }];
        let iterations = if batch == 1 { 20_000 } else { 5_000 };
        for _ in 0..1000 {
            model.run(&inputs).unwrap();
        }
        let samples = (0..iterations)
            .map(|_| {
                let started = Instant::now();
                std::hint::black_box(model.run(&inputs).unwrap());
                started.elapsed()
            })
            .collect();
        report(&format!("LoadedModel::run mlp batch {batch}"), samples);
    }
}
