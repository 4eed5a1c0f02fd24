//! The soak of the hardening issue, against a running gateway: good load at a fraction of the
//! measured capacity, the hostile classes at the same time, and a traffic-weight change every
//! second, for a fixed time. It fails (exit 1) if a good request fails, a hostile one gets
//! anything but its clean refusal, a weight change is refused, or the gateway's RSS leaves
//! ±10% of its value after the first minute.
//!
//!     soak --http 127.0.0.1:8000 --grpc 127.0.0.1:8001 --admin 127.0.0.1:8080 --pid PID \
//!          [--seconds 600] [--load 0.5] [--settle 60]
//!
//! Every connection goes to the addresses given (loopback, from loadtest/soak), every loop
//! ends at the deadline, and the number of hostile sockets held at once is fixed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/flags.rs"]
mod flags;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flags::Flags;
use pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard_gateway::protocol::grpc::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MLP_IN: usize = 64;
const GOOD_WORKERS: usize = 32;
const STALLED_GRPC: usize = 100;
const SLOW_HTTP: usize = 100;
const IDLE_SOCKETS: usize = 200;
const STALLED_HEADS: usize = 20;

#[derive(Clone)]
struct Args {
    http: String,
    grpc: String,
    admin: String,
    pid: u32,
    seconds: u64,
    load: f64,
    settle: u64,
}

fn parse_args() -> Args {
    let flags = Flags::from_args();
    let get = |key: &str, default: &str| flags.get(key, default);
    Args {
        http: get("http", "127.0.0.1:8000"),
        grpc: get("grpc", "127.0.0.1:8001"),
        admin: get("admin", "127.0.0.1:8080"),
        pid: get("pid", "0").parse().expect("--pid"),
        seconds: get("seconds", "600").parse().expect("--seconds"),
        load: get("load", "0.5").parse().expect("--load"),
        settle: get("settle", "60").parse().expect("--settle"),
    }
}

/// What each class of request got, by outcome, and the outcomes that were not expected.
#[derive(Default)]
struct Tally {
    outcomes: Mutex<BTreeMap<String, BTreeMap<String, u64>>>,
    unexpected: Mutex<Vec<String>>,
}

impl Tally {
    fn count(&self, class: &str, outcome: &str, expected: bool) {
        *self
            .outcomes
            .lock()
            .unwrap()
            .entry(class.to_owned())
            .or_default()
            .entry(outcome.to_owned())
            .or_default() += 1;
        if !expected {
            let mut unexpected = self.unexpected.lock().unwrap();
            if unexpected.len() < 50 {
                unexpected.push(format!("{class}: {outcome}"));
            }
        }
    }
}

fn infer_json(seed: usize) -> serde_json::Value {
    let data: Vec<f32> = (0..MLP_IN)
        .map(|i| ((i + seed) % 13) as f32 / 13.0)
        .collect();
    serde_json::json!({"inputs": [{"name": "x", "shape": [1, MLP_IN], "datatype": "FP32", "data": data}]})
}

fn grpc_request() -> pb::ModelInferRequest {
    let raw: Vec<u8> = (0..MLP_IN)
        .flat_map(|i| (i as f32 / 64.0).to_le_bytes())
        .collect();
    pb::ModelInferRequest {
        model_name: "mlp".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "x".into(),
            datatype: "FP32".into(),
            shape: vec![1, MLP_IN as i64],
            ..Default::default()
        }],
        raw_input_contents: vec![Bytes::from(raw)],
        ..Default::default()
    }
}

/// Closed-loop throughput of the good workers, with the good load's mix of protocols, in
/// requests per second.
async fn capacity(args: &Args) -> f64 {
    let started = Instant::now();
    let until = started + Duration::from_secs(5);
    let tally = Arc::new(Tally::default());
    let workers: Vec<_> = (0..GOOD_WORKERS)
        .map(|index| {
            tokio::spawn(good_worker(
                args.clone(),
                index,
                Duration::ZERO,
                until,
                tally.clone(),
                started,
            ))
        })
        .collect();
    let mut answered = 0;
    for worker in workers {
        answered += worker.await.unwrap().len();
    }
    answered as f64 / 5.0
}

/// Good requests on a fixed schedule (open loop; closed loop with a zero interval): two
/// workers in three over HTTP JSON, the third over gRPC. Returns when each was due and its
/// latency from then; a failure is counted as unexpected.
async fn good_worker(
    args: Args,
    index: usize,
    interval: Duration,
    until: Instant,
    tally: Arc<Tally>,
    started: Instant,
) -> Vec<(Duration, Duration)> {
    let mut latencies = Vec::new();
    let mut next = Instant::now() + interval.mul_f64(index as f64 / GOOD_WORKERS as f64);
    let grpc = index % 3 == 2;
    let http = reqwest::Client::new();
    let body = Bytes::from(serde_json::to_vec(&infer_json(index)).unwrap());
    let url = format!("http://{}/v2/models/mlp/infer", args.http);
    let mut grpc_client = if grpc {
        Some(
            GrpcInferenceServiceClient::connect(format!("http://{}", args.grpc))
                .await
                .unwrap(),
        )
    } else {
        None
    };
    let request = grpc_request();
    while next < until {
        if interval.is_zero() {
            next = Instant::now();
        }
        tokio::time::sleep_until(next.into()).await;
        let scheduled = next;
        next += interval;
        let outcome = match &mut grpc_client {
            Some(client) => match client.model_infer(request.clone()).await {
                Ok(_) => Ok(()),
                Err(status) => Err(format!("gRPC {:?} {}", status.code(), status.message())),
            },
            None => match http
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
            {
                Ok(response) if response.status() == 200 => {
                    response.bytes().await.map(drop).map_err(|e| e.to_string())
                }
                Ok(response) => Err(format!(
                    "HTTP {} {}",
                    response.status(),
                    response.text().await.unwrap_or_default()
                )),
                Err(error) => Err(error.to_string()),
            },
        };
        latencies.push((scheduled - started, scheduled.elapsed()));
        match outcome {
            Ok(()) => tally.count("good", "ok", true),
            Err(error) => tally.count("good", &error, false),
        }
    }
    latencies
}

/// A weight change every second, alternating 80/20 and 20/80 between versions 1 and 2.
async fn weight_changes(args: Args, until: Instant, tally: Arc<Tally>) {
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/models/mlp/traffic", args.admin);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut flip = false;
    while Instant::now() < until {
        tick.tick().await;
        flip = !flip;
        let (one, two) = if flip { (80, 20) } else { (20, 80) };
        let body = serde_json::json!({"weights": {"1": one, "2": two}});
        match client.put(&url).json(&body).send().await {
            Ok(response) if response.status().is_success() => {
                tally.count("weight change", "ok", true);
            }
            Ok(response) => tally.count(
                "weight change",
                &format!("HTTP {}", response.status()),
                false,
            ),
            Err(error) => tally.count("weight change", &error.to_string(), false),
        }
    }
}

/// Reads a raw HTTP/1 answer until the peer closes or a complete JSON body is in; returns the
/// status code (0 for none) and the body.
async fn raw_answer(socket: &mut TcpStream, within: Duration) -> (u16, String) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(read)) => buffer.extend_from_slice(&chunk[..read]),
        }
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n")
            && buffer[end..].ends_with(b"}")
        {
            break;
        }
    }
    let text = String::from_utf8_lossy(&buffer).into_owned();
    let status = text
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    (status, body)
}

/// One slow body: a head, then a byte a second until the gateway answers (408 at its read
/// deadline).
async fn slow_body(addr: &str) -> (u16, String) {
    let Ok(mut socket) = TcpStream::connect(addr).await else {
        return (0, "connect failed".into());
    };
    let head = "POST /v2/models/mlp/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n";
    if socket.write_all(head.as_bytes()).await.is_err() {
        return (0, "write failed".into());
    }
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 1024];
    let give_up = Instant::now() + Duration::from_secs(60);
    while Instant::now() < give_up {
        tokio::select! {
            read = socket.read(&mut chunk) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buffer.extend_from_slice(&chunk[..n]);
                    if buffer.ends_with(b"}") {
                        break;
                    }
                }
            },
            () = tokio::time::sleep(Duration::from_secs(1)) => {
                if socket.write_all(b" ").await.is_err() {
                    break;
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&buffer).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

/// Keeps `count` hostile sockets of one kind open at once, each replaced when the gateway
/// closes it, until the deadline.
async fn hold<F, Fut>(count: usize, until: Instant, make: F)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let make = Arc::new(make);
    let holders: Vec<_> = (0..count)
        .map(|index| {
            let make = make.clone();
            tokio::spawn(async move {
                // Spread the starts, so they do not all expire in the same instant.
                tokio::time::sleep(Duration::from_millis((index as u64 * 37) % 5000)).await;
                while Instant::now() < until {
                    make().await;
                }
            })
        })
        .collect();
    for holder in holders {
        let _ = holder.await;
    }
}

/// The malformed, oversized and forged requests, one class after the other, five a second.
async fn malformed(args: Args, until: Instant, tally: Arc<Tally>) {
    let client = reqwest::Client::new();
    let infer = format!("http://{}/v2/models/mlp/infer", args.http);
    let mut round = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    while Instant::now() < until {
        tick.tick().await;
        round += 1;
        let (class, status, expected): (&str, u16, &[u16]) = match round % 10 {
            0 => {
                let response = client
                    .post(&infer)
                    .header("content-type", "application/json")
                    .body("{\"inputs\": [")
                    .send()
                    .await;
                ("malformed JSON", status_of(response), &[400])
            }
            1 => {
                let mut body = infer_json(round);
                body["inputs"][0]["datatype"] = "INT8".into();
                let response = client.post(&infer).json(&body).send().await;
                ("wrong dtype", status_of(response), &[400])
            }
            2 => {
                let mut body = infer_json(round);
                body["inputs"][0]["shape"] = serde_json::json!([1, 63]);
                let response = client.post(&infer).json(&body).send().await;
                ("wrong shape", status_of(response), &[400])
            }
            3 => {
                let url = format!("http://{}/v2/models/nope/infer", args.http);
                let response = client.post(&url).json(&infer_json(round)).send().await;
                ("unknown model", status_of(response), &[404])
            }
            4 => {
                let head = format!(
                    "GET /v2/models/{}/ready HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                    "m".repeat(100_000)
                );
                (
                    "URI too long",
                    raw_status(&args.http, head.as_bytes()).await,
                    &[414],
                )
            }
            5 => {
                let mut head = String::from("GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n");
                for index in 0..300 {
                    head.push_str(&format!("x-filler-{index}: y\r\n"));
                }
                head.push_str("\r\n");
                (
                    "too many headers",
                    raw_status(&args.http, head.as_bytes()).await,
                    &[431],
                )
            }
            6 => {
                let url = format!("http://{}/v1/feedback", args.http);
                let body = serde_json::json!({"request_id": "sy-forged-1-00000000", "reward": 1.0});
                let response = client.post(&url).json(&body).send().await;
                ("forged feedback", status_of(response), &[404])
            }
            7 => {
                let url = format!("http://{}/v1/feedback", args.http);
                let response = client
                    .post(&url)
                    .header("content-type", "text/plain")
                    .body(r#"{"request_id": "x", "reward": 1.0}"#)
                    .send()
                    .await;
                ("cross-site feedback", status_of(response), &[415])
            }
            8 => {
                let url = format!("http://{}/v1/models", args.admin);
                let response = client.get(&url).header("host", "evil.example").send().await;
                ("admin, foreign Host", status_of(response), &[403, 421])
            }
            _ => {
                let url = format!("http://{}/v1/models/mlp/traffic", args.admin);
                let response = client
                    .put(&url)
                    .header("content-type", "text/plain")
                    .body(r#"{"weights": {"1": 100}}"#)
                    .send()
                    .await;
                ("admin, text/plain write", status_of(response), &[415])
            }
        };
        tally.count(class, &status.to_string(), expected.contains(&status));
    }
}

/// The `grpc-status` a gRPC call ended with ("none" if it did not get one).
fn grpc_status_of(response: reqwest::Result<reqwest::Response>) -> String {
    response
        .ok()
        .and_then(|r| {
            r.headers()
                .get("grpc-status")?
                .to_str()
                .ok()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "none".into())
}

fn status_of(response: reqwest::Result<reqwest::Response>) -> u16 {
    response.map_or(0, |r| r.status().as_u16())
}

async fn raw_status(addr: &str, request: &[u8]) -> u16 {
    raw_status_within(addr, request, Duration::from_secs(5)).await
}

async fn raw_status_within(addr: &str, request: &[u8], within: Duration) -> u16 {
    let Ok(mut socket) = TcpStream::connect(addr).await else {
        return 0;
    };
    if socket.write_all(request).await.is_err() {
        return 0;
    }
    raw_answer(&mut socket, within).await.0
}

/// The gRPC message of 1,000,000 empty `inputs`, every five seconds; and 8 MiB bodies, four
/// at once, every ten.
async fn amplification(args: Args, until: Instant, tally: Arc<Tally>) {
    let mut frame = Vec::with_capacity(2_000_005);
    frame.push(0);
    frame.extend_from_slice(&2_000_000u32.to_be_bytes());
    for _ in 0..1_000_000 {
        frame.extend_from_slice(&[0x2a, 0x00]);
    }
    let frame = Bytes::from(frame);
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let http = reqwest::Client::new();
    let mut big = Vec::with_capacity(8 << 20);
    big.extend_from_slice(
        br#"{"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": ["#,
    );
    while big.len() < (8 << 20) - 16 {
        big.extend_from_slice(b"0.5,");
    }
    big.extend_from_slice(b"0.5]}]}");
    let big = Bytes::from(big);
    let mut round = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    while Instant::now() < until {
        tick.tick().await;
        round += 1;
        let response = h2
            .post(format!(
                "http://{}/inference.GRPCInferenceService/ModelInfer",
                args.grpc
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(frame.clone())
            .send()
            .await;
        let code = grpc_status_of(response);
        // INVALID_ARGUMENT, or RESOURCE_EXHAUSTED past the byte budget.
        tally.count(
            "a million empty inputs",
            &format!("grpc-status {code}"),
            code == "3" || code == "8",
        );
        if round.is_multiple_of(2) {
            let calls: Vec<_> = (0..4)
                .map(|_| {
                    http.post(format!("http://{}/v2/models/mlp/infer", args.http))
                        .header("content-type", "application/json")
                        .body(big.clone())
                        .send()
                })
                .collect();
            for call in calls {
                let status = status_of(call.await);
                // 400: the shape does not match its 2 million values; 429 past the budget.
                tally.count(
                    "8 MiB bodies",
                    &status.to_string(),
                    matches!(status, 400 | 413 | 429),
                );
            }
        }
    }
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    assert!(
        args.pid != 0,
        "--pid: the gateway's process, to watch its RSS"
    );
    let capacity = capacity(&args).await;
    let rate = capacity * args.load;
    println!(
        "capacity {capacity:.0} req/s (closed loop, {GOOD_WORKERS} workers, 2/3 HTTP JSON, 1/3 gRPC); \
         good load {rate:.0} req/s for {} s",
        args.seconds
    );
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let tally = Arc::new(Tally::default());
    let interval = Duration::from_secs_f64(GOOD_WORKERS as f64 / rate.max(1.0));

    let good: Vec<_> = (0..GOOD_WORKERS)
        .map(|index| {
            tokio::spawn(good_worker(
                args.clone(),
                index,
                interval,
                until,
                tally.clone(),
                started,
            ))
        })
        .collect();
    // SOAK_WITHOUT (a comma-separated list of the names below) leaves classes out, to find
    // which one costs the good load.
    let without = std::env::var("SOAK_WITHOUT").unwrap_or_default();
    let enabled = |name: &str| !without.split(',').any(|left_out| left_out.trim() == name);
    let mut others = Vec::new();
    if enabled("weights") {
        others.push(tokio::spawn(weight_changes(
            args.clone(),
            until,
            tally.clone(),
        )));
    }
    if enabled("malformed") {
        others.push(tokio::spawn(malformed(args.clone(), until, tally.clone())));
    }
    if enabled("amplification") {
        others.push(tokio::spawn(amplification(
            args.clone(),
            until,
            tally.clone(),
        )));
    }
    if enabled("slow") {
        let (addr, tally) = (args.http.clone(), tally.clone());
        others.push(tokio::spawn(hold(SLOW_HTTP, until, move || {
            let (addr, tally) = (addr.clone(), tally.clone());
            async move {
                let (status, answer) = slow_body(&addr).await;
                let expected = status == 408 && answer.contains("request_read_timeout");
                tally.count("slow body", &status.to_string(), expected);
            }
        })));
    }
    if enabled("heads") {
        let (addr, tally) = (args.http.clone(), tally.clone());
        others.push(tokio::spawn(hold(STALLED_HEADS, until, move || {
            let (addr, tally) = (addr.clone(), tally.clone());
            async move {
                // The head deadline is 10 s by default.
                let status = raw_status_within(
                    &addr,
                    b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: 1",
                    Duration::from_secs(30),
                )
                .await;
                tally.count("stalled head", &status.to_string(), status == 408);
            }
        })));
    }
    if enabled("idle") {
        let (addr, tally) = (args.http.clone(), tally.clone());
        others.push(tokio::spawn(hold(IDLE_SOCKETS, until, move || {
            let (addr, tally) = (addr.clone(), tally.clone());
            async move {
                let Ok(mut socket) = TcpStream::connect(&addr).await else {
                    tally.count("idle socket", "connect failed", false);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    return;
                };
                let mut byte = [0u8; 1];
                let opened = Instant::now();
                let read = tokio::time::timeout(Duration::from_secs(120), socket.read(&mut byte));
                match read.await {
                    Ok(Ok(0) | Err(_)) => {
                        let held = opened.elapsed().as_secs();
                        // The idle timeout is 60 s by default.
                        tally.count("idle socket", "closed by the gateway", held >= 55);
                    }
                    Ok(Ok(_)) => tally.count("idle socket", "sent bytes", false),
                    Err(_) => tally.count("idle socket", "still open after 120 s", false),
                }
            }
        })));
    }
    if enabled("grpc") {
        let (grpc, tally) = (args.grpc.clone(), tally.clone());
        let connections: Arc<Vec<reqwest::Client>> = Arc::new(
            (0..2)
                .map(|_| {
                    reqwest::Client::builder()
                        .http2_prior_knowledge()
                        .build()
                        .unwrap()
                })
                .collect(),
        );
        others.push(tokio::spawn(hold(STALLED_GRPC, until, move || {
            let (grpc, tally, connections) = (grpc.clone(), tally.clone(), connections.clone());
            async move {
                let never = futures_util::stream::pending::<Result<Bytes, std::io::Error>>();
                let client = &connections[fastrand::usize(..connections.len())];
                let response = client
                    .post(format!(
                        "http://{grpc}/inference.GRPCInferenceService/ModelInfer"
                    ))
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .body(reqwest::Body::wrap_stream(never))
                    .send()
                    .await;
                let code = grpc_status_of(response);
                tally.count(
                    "stalled gRPC stream",
                    &format!("grpc-status {code}"),
                    code == "4",
                );
            }
        })));
    }

    // The RSS, once a second; the reference is the value once the first minute is over.
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while Instant::now() < until {
        tick.tick().await;
        samples.push((started.elapsed().as_secs(), rss_bytes(args.pid)));
    }
    let mut latencies = Vec::new();
    for worker in good {
        latencies.extend(worker.await.unwrap());
    }
    // When the slow ones were sent: a second that holds many points at what happened then.
    let mut slow_by_second: BTreeMap<u64, usize> = BTreeMap::new();
    for (sent, latency) in &latencies {
        if *latency > Duration::from_millis(100) {
            *slow_by_second.entry(sent.as_secs()).or_default() += 1;
        }
    }
    let mut worst: Vec<(u64, usize)> = slow_by_second.into_iter().collect();
    worst.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
    worst.truncate(8);
    println!("seconds with the most good requests over 100 ms (second: count): {worst:?}");
    let settle = Duration::from_secs(args.settle);
    let mut settled_latencies: Vec<Duration> = latencies
        .iter()
        .filter(|(sent, _)| *sent >= settle)
        .map(|(_, latency)| *latency)
        .collect();
    let mut latencies: Vec<Duration> = latencies.into_iter().map(|(_, latency)| latency).collect();
    latencies.sort();
    settled_latencies.sort();
    let summary = |sorted: &[Duration]| {
        let at = |p: f64| {
            sorted
                .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
                .as_secs_f64()
                * 1e3
        };
        format!(
            "{} requests; p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            sorted.len(),
            at(0.50),
            at(0.99),
            at(0.999),
            sorted.last().copied().unwrap_or_default().as_secs_f64() * 1e3
        )
    };
    let mib = |bytes: u64| bytes as f64 / (1u64 << 20) as f64;
    let settled: Vec<u64> = samples
        .iter()
        .filter(|(second, _)| *second >= args.settle)
        .map(|(_, rss)| *rss)
        .collect();
    let reference = settled.first().copied().unwrap_or(0);
    let (low, high) = (
        settled.iter().copied().min().unwrap_or(0),
        settled.iter().copied().max().unwrap_or(0),
    );
    let outside = |value: u64| (value as f64 - reference as f64).abs() > reference as f64 * 0.10;
    let rss_ok = reference > 0 && !outside(low) && !outside(high);

    println!(
        "good load: {:.0} req/s over the run; whole run: {}",
        latencies.len() as f64 / args.seconds as f64,
        summary(&latencies)
    );
    println!(
        "good load after the first {} s: {}",
        args.settle,
        summary(&settled_latencies)
    );
    println!(
        "RSS: {:.1} MiB at {} s (the reference); {:.1} to {:.1} MiB after ({:+.1}% to {:+.1}%); \
         {:.1} MiB at the end; first sample {:.1} MiB",
        mib(reference),
        args.settle,
        mib(low),
        mib(high),
        (low as f64 / reference.max(1) as f64 - 1.0) * 100.0,
        (high as f64 / reference.max(1) as f64 - 1.0) * 100.0,
        mib(samples.last().map_or(0, |s| s.1)),
        mib(samples.first().map_or(0, |s| s.1)),
    );
    println!("RSS by minute (MiB):");
    for (second, rss) in samples.iter().filter(|(second, _)| second % 60 == 0) {
        println!("  {second:>4} s  {:.1}", mib(*rss));
    }
    println!("outcomes by class:");
    for (class, outcomes) in tally.outcomes.lock().unwrap().iter() {
        let listed: Vec<String> = outcomes.iter().map(|(o, n)| format!("{o} x{n}")).collect();
        println!("  {class}: {}", listed.join(", "));
    }
    let unexpected = tally.unexpected.lock().unwrap();
    for line in unexpected.iter() {
        println!("UNEXPECTED {line}");
    }
    if !rss_ok {
        println!("FAIL: RSS left ±10% of its reference");
    }
    if !unexpected.is_empty() || !rss_ok {
        std::process::exit(1);
    }
    println!("PASS");
}
