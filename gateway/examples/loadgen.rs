//! A closed-loop load generator for the benchmark: N workers, each sending one request after
//! another for a fixed time, over HTTP JSON, HTTP binary or gRPC. Prints one CSV line:
//! target,model,protocol,concurrency,seconds,ok,rejected,errors,req_per_s,rows_per_s,
//! p50_us,p90_us,p99_us,rejected_p99_us
//!
//!     loadgen --http 127.0.0.1:8000 --grpc 127.0.0.1:8001 --model mlp --inputs 64 \
//!             --protocol json --concurrency 32 --seconds 3 [--rows 1] [--target gateway] [--rate R]
//!             [--version LABEL]
//!
//! Without --rate the load is closed-loop: each worker sends its next request when the last one
//! is answered. With --rate R it is open-loop: R requests per second in all, spread over the
//! workers on a fixed schedule, and each latency counts from the request's scheduled time, so
//! time spent waiting for a free worker is not hidden.
//!
//! Traffic goes only to the addresses given (the benchmark gives 127.0.0.1), and stops by itself.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/flags.rs"]
mod flags;

use std::time::{Duration, Instant};

use bytes::Bytes;
use flags::Flags;
use pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard_gateway::protocol::grpc::pb;

#[derive(Clone)]
struct Args {
    http: String,
    grpc: String,
    model: String,
    /// A version label to pin; empty lets the gateway's routing choose.
    version: String,
    inputs: usize,
    protocol: String,
    concurrency: usize,
    seconds: f64,
    rows: usize,
    target: String,
    /// Requests per second in all (open loop); 0 for closed loop.
    rate: f64,
}

fn parse_args() -> Args {
    let flags = Flags::from_args();
    let get = |key: &str, default: &str| flags.get(key, default);
    Args {
        http: get("http", "127.0.0.1:8000"),
        grpc: get("grpc", "127.0.0.1:8001"),
        model: get("model", "mlp"),
        version: get("version", ""),
        inputs: get("inputs", "64").parse().unwrap(),
        protocol: get("protocol", "json"),
        concurrency: get("concurrency", "1").parse().unwrap(),
        seconds: get("seconds", "3").parse().unwrap(),
        rows: get("rows", "1").parse().unwrap(),
        target: get("target", "gateway"),
        rate: get("rate", "0").parse().unwrap(),
    }
}

#[derive(Default)]
struct Tally {
    ok: Vec<Duration>,
    rejected: Vec<Duration>,
    errors: usize,
}

enum Outcome {
    Ok,
    Rejected,
    Error,
}

/// When each request of a worker is due: at once (closed loop), or on the worker's share of
/// the open-loop schedule.
struct Schedule {
    next: Instant,
    interval: Option<Duration>,
}

impl Schedule {
    fn new(args: &Args, index: usize) -> Schedule {
        if args.rate <= 0.0 {
            return Schedule {
                next: Instant::now(),
                interval: None,
            };
        }
        let interval = Duration::from_secs_f64(args.concurrency as f64 / args.rate);
        let offset = interval.mul_f64(index as f64 / args.concurrency as f64);
        Schedule {
            next: Instant::now() + offset,
            interval: Some(interval),
        }
    }

    /// Waits until the next request is due and returns the time it was due.
    async fn due(&mut self) -> Instant {
        match self.interval {
            None => Instant::now(),
            Some(interval) => {
                let due = self.next;
                self.next += interval;
                tokio::time::sleep_until(due.into()).await;
                due
            }
        }
    }
}

async fn worker(args: Args, until: Instant, index: usize) -> Tally {
    let mut schedule = Schedule::new(&args, index);
    let values: Vec<f32> = (0..args.rows * args.inputs)
        .map(|i| ((i + index) % 13) as f32 / 13.0)
        .collect();
    let shape = [args.rows, args.inputs];
    let url = if args.version.is_empty() {
        format!("http://{}/v2/models/{}/infer", args.http, args.model)
    } else {
        format!(
            "http://{}/v2/models/{}/versions/{}/infer",
            args.http, args.model, args.version
        )
    };
    let mut tally = Tally::default();
    match args.protocol.as_str() {
        "json" | "binary" => {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap();
            let (body, header_length) = if args.protocol == "json" {
                let body = serde_json::json!({"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": values}]});
                (Bytes::from(serde_json::to_vec(&body).unwrap()), None)
            } else {
                let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                let header = serde_json::json!({
                    "inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "parameters": {"binary_data_size": raw.len()}}],
                    "parameters": {"binary_data_output": true}
                });
                let mut body = serde_json::to_vec(&header).unwrap();
                let length = body.len();
                body.extend_from_slice(&raw);
                (Bytes::from(body), Some(length))
            };
            while Instant::now() < until {
                let sent = schedule.due().await;
                let mut request = client.post(&url).body(body.clone());
                if let Some(length) = header_length {
                    request = request.header("Inference-Header-Content-Length", length);
                }
                let outcome = match request.send().await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let read = response.bytes().await.is_ok();
                        match (status, read) {
                            (200, true) => Outcome::Ok,
                            (429, true) => Outcome::Rejected,
                            _ => Outcome::Error,
                        }
                    }
                    Err(_) => Outcome::Error,
                };
                record(&mut tally, outcome, sent.elapsed());
            }
        }
        "grpc" => {
            let mut client = GrpcInferenceServiceClient::connect(format!("http://{}", args.grpc))
                .await
                .unwrap()
                .max_decoding_message_size(256 << 20);
            let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            let request = pb::ModelInferRequest {
                model_name: args.model.clone(),
                model_version: args.version.clone(),
                inputs: vec![pb::model_infer_request::InferInputTensor {
                    name: "x".into(),
                    datatype: "FP32".into(),
                    shape: shape.iter().map(|&d| d as i64).collect(),
                    ..Default::default()
                }],
                raw_input_contents: vec![Bytes::from(raw)],
                ..Default::default()
            };
            while Instant::now() < until {
                let sent = schedule.due().await;
                let outcome = match client.model_infer(request.clone()).await {
                    Ok(_) => Outcome::Ok,
                    Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                        Outcome::Rejected
                    }
                    Err(_) => Outcome::Error,
                };
                record(&mut tally, outcome, sent.elapsed());
            }
        }
        other => panic!("unknown protocol {other}"),
    }
    tally
}

fn record(tally: &mut Tally, outcome: Outcome, latency: Duration) {
    match outcome {
        Outcome::Ok => tally.ok.push(latency),
        Outcome::Rejected => tally.rejected.push(latency),
        Outcome::Error => tally.errors += 1,
    }
}

fn percentile_us(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e6
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    // A short warm-up, then the measured run.
    let warm_until = Instant::now() + Duration::from_millis(300);
    let warm: Vec<_> = (0..args.concurrency.min(8))
        .map(|i| tokio::spawn(worker(args.clone(), warm_until, i)))
        .collect();
    for handle in warm {
        handle.await.unwrap();
    }
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.seconds);
    let workers: Vec<_> = (0..args.concurrency)
        .map(|i| tokio::spawn(worker(args.clone(), until, i)))
        .collect();
    let mut total = Tally::default();
    for handle in workers {
        let tally = handle.await.unwrap();
        total.ok.extend(tally.ok);
        total.rejected.extend(tally.rejected);
        total.errors += tally.errors;
    }
    let elapsed = started.elapsed().as_secs_f64();
    total.ok.sort();
    total.rejected.sort();
    let rate = total.ok.len() as f64 / elapsed;
    println!(
        "{},{},{},{},{:.1},{},{},{},{:.0},{:.0},{:.0},{:.0},{:.0},{:.0}",
        args.target,
        args.model,
        args.protocol,
        args.concurrency,
        elapsed,
        total.ok.len(),
        total.rejected.len(),
        total.errors,
        rate,
        rate * args.rows as f64,
        percentile_us(&total.ok, 0.50),
        percentile_us(&total.ok, 0.90),
        percentile_us(&total.ok, 0.99),
        percentile_us(&total.rejected, 0.99),
    );
}
