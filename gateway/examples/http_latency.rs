//! Latency of `mlp` inference over HTTP JSON, one request at a time (concurrency 1), against a
//! running gateway on loopback.
//!
//!     cargo run --release -p switchyard-gateway --example http_latency -- http://127.0.0.1:8000 5000

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8000".into());
    let requests: usize = args.next().map_or(5000, |n| n.parse().unwrap());
    let batch: usize = args.next().map_or(1, |n| n.parse().unwrap());
    let url = format!("{base}/v2/models/mlp/infer");
    let x: Vec<f32> = (0..batch * 64).map(|i| (i % 17) as f32 / 17.0).collect();
    let body = serde_json::to_vec(&serde_json::json!({
        "inputs": [{"name": "x", "shape": [batch, 64], "datatype": "FP32", "data": x}]
    }))
    .unwrap();
    let client = reqwest::Client::new();
    let send = || async {
        let response = client.post(&url).body(body.clone()).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
    };
    for _ in 0..500 {
        send().await;
    }
    let started = Instant::now();
    let mut samples = Vec::with_capacity(requests);
    for _ in 0..requests {
        let sent = Instant::now();
        send().await;
        samples.push(sent.elapsed());
    }
    let elapsed = started.elapsed();
    samples.sort();
    println!(
        "{:<40} n={:<6} p50={:>8.1?} p90={:>8.1?} p99={:>8.1?} ({:.0} req/s)",
        format!("HTTP JSON mlp batch {batch}, concurrency 1"),
        requests,
        percentile(&samples, 0.50),
        percentile(&samples, 0.90),
        percentile(&samples, 0.99),
        requests as f64 / elapsed.as_secs_f64()
    );
}
