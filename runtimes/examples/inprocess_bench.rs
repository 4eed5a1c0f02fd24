//! The in-process limit for the benchmark: a model run through ONNX Runtime in this process
//! (Switchyard's `LoadedModel` over `ort`), one call after another on one thread, with no
//! network or protocol in between. Prints one CSV line per batch size, in the columns of
//! `loadgen`: target,model,protocol,concurrency,seconds,ok,rejected,errors,req_per_s,
//! rows_per_s,p50_us,p90_us,p99_us,rejected_p99_us
//!
//!     inprocess_bench MODEL_NAME MODEL_PATH INPUT_WIDTH SECONDS BATCH [BATCH...]
//!
//! `INPUT_NAME` (default `x`) names the input, `INPUT_SHAPE` (e.g. `3,320,320`) gives one
//! example's shape instead of `[INPUT_WIDTH]`, and `THREADS` (default 1) is ONNX Runtime's
//! intra-op thread count, as a version's `intra_op_threads`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use switchyard_runtimes::onnx::{OnnxRuntime, locate_library};
use switchyard_runtimes::{DataType, LoadOptions, NamedTensor, Runtime, Tensor};

fn percentile_us(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e6
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = args.first().cloned().unwrap_or_else(|| "mlp".into());
    let path: PathBuf = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "models/mlp/1/model.onnx".into())
        .into();
    let width: usize = args.get(2).map_or(64, |w| w.parse().unwrap());
    let seconds: f64 = args.get(3).map_or(2.0, |s| s.parse().unwrap());
    let batches: Vec<usize> = if args.len() > 4 {
        args[4..].iter().map(|b| b.parse().unwrap()).collect()
    } else {
        vec![1, 32]
    };
    let input_name = std::env::var("INPUT_NAME").unwrap_or_else(|_| "x".into());
    let example: Vec<usize> = match std::env::var("INPUT_SHAPE") {
        Ok(shape) => shape
            .split(',')
            .map(|d| d.trim().parse().unwrap())
            .collect(),
        Err(_) => vec![width],
    };
    let threads: usize = std::env::var("THREADS").map_or(1, |t| t.parse().unwrap());
    let runtime = OnnxRuntime::initialize(&locate_library(None).unwrap()).unwrap();
    let options = LoadOptions {
        intra_op_threads: threads,
        ..LoadOptions::default()
    };
    let mut model = runtime.load(&path, &options).unwrap();

    for batch in batches {
        let mut shape = vec![batch];
        shape.extend(&example);
        let elements: usize = shape.iter().product();
        let x: Vec<f32> = (0..elements).map(|i| (i % 17) as f32 / 17.0).collect();
        let inputs = vec![NamedTensor {
            name: input_name.clone(),
            tensor: Tensor::from_slice(DataType::Fp32, shape, &x).unwrap(),
        }];
        let warm_until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < warm_until {
            model.run(&inputs).unwrap();
        }
        let started = Instant::now();
        let until = started + Duration::from_secs_f64(seconds);
        let mut samples = Vec::new();
        while Instant::now() < until {
            let call = Instant::now();
            std::hint::black_box(model.run(&inputs).unwrap());
            samples.push(call.elapsed());
        }
        let elapsed = started.elapsed().as_secs_f64();
        samples.sort();
        let calls = samples.len() as f64 / elapsed;
        println!(
            "inprocess,{name},batch{batch},1,{elapsed:.1},{},0,0,{calls:.0},{:.0},{:.0},{:.0},{:.0},0",
            samples.len(),
            calls * batch as f64,
            percentile_us(&samples, 0.50),
            percentile_us(&samples, 0.90),
            percentile_us(&samples, 0.99),
        );
    }
}
