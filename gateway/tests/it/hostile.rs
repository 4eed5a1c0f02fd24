//! Hostile clients against a real gateway on loopback: stalled bodies and gRPC messages hold
//! no in-flight slot and are cut off at the read deadline, a small message cannot make the
//! gateway allocate much, bodies are charged to the byte budget as they arrive (64 large ones
//! at once stay within it plus a fixed margin), lists and parameters are bounded, and errors
//! quote little of what the client sent.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{MLP_IN, TestGateway, models_dir, sample_inputs};
use serde_json::json;
use switchyard_gateway::config::{ByteSize, HumanDuration};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn gateway(adjust: impl FnOnce(&mut switchyard_gateway::Config)) -> TestGateway {
    TestGateway::start_with(&models_dir(), |config| {
        config.serving.max_in_flight = 4;
        config.http.request_read_timeout = HumanDuration(Duration::from_secs(1));
        adjust(config);
    })
    .await
}

fn infer_body() -> serde_json::Value {
    json!({"inputs": [{"name": "x", "shape": [1, MLP_IN], "datatype": "FP32",
                       "data": sample_inputs(MLP_IN, 3)}]})
}

/// Sends a request's head and `body_start`, then nothing more.
async fn stalled_http(addr: &str, content_length: usize, body_start: &[u8]) -> TcpStream {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v2/models/mlp/versions/1/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Content-Type: application/json\r\nContent-Length: {content_length}\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(body_start).await.unwrap();
    socket
}

/// The status line and body of the answer on a raw socket.
async fn answer(socket: &mut TcpStream, within: Duration) -> (String, String) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, socket.read(&mut chunk)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
            Ok(Ok(read)) => buffer.extend_from_slice(&chunk[..read]),
        }
        let text = String::from_utf8_lossy(&buffer);
        if let Some((head, body)) = text.split_once("\r\n\r\n")
            && body.ends_with('}')
        {
            return (
                head.lines().next().unwrap_or("").to_owned(),
                body.to_owned(),
            );
        }
    }
    let text = String::from_utf8_lossy(&buffer).into_owned();
    (text.lines().next().unwrap_or("").to_owned(), text)
}

/// A gRPC ModelInfer call whose message never comes: headers, then silence.
fn stalled_grpc(
    client: &reqwest::Client,
    grpc_addr: std::net::SocketAddr,
) -> reqwest::RequestBuilder {
    let never = futures_util::stream::pending::<Result<Bytes, std::io::Error>>();
    client
        .post(format!(
            "http://{grpc_addr}/inference.GRPCInferenceService/ModelInfer"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(reqwest::Body::wrap_stream(never))
}

#[tokio::test]
async fn stalled_clients_hold_no_slot_and_are_cut_off() {
    let gateway = gateway(|_| {}).await;
    let addr = gateway.base.trim_start_matches("http://").to_owned();
    // Three times the in-flight slots of each kind, all stalled.
    let mut stalled = Vec::new();
    for _ in 0..12 {
        stalled.push(stalled_http(&addr, 1000, b"{\"inputs\"").await);
    }
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let grpc_calls: Vec<_> = (0..12)
        .map(|_| tokio::spawn(stalled_grpc(&h2, gateway.grpc_addr).send()))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Meanwhile a good client is served, every time.
    let started = Instant::now();
    for _ in 0..20 {
        let (status, body) = gateway
            .post_json("/v2/models/mlp/infer", &infer_body())
            .await;
        assert_eq!(status, 200, "{body}");
    }
    assert!(started.elapsed() < Duration::from_secs(5));

    // The stalled ones are cut off at the read deadline, in the protocol's error format.
    for socket in &mut stalled {
        let (status, body) = answer(socket, Duration::from_secs(5)).await;
        assert!(status.contains(" 408 "), "{status}");
        let error: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            error["error"]
                .as_str()
                .unwrap()
                .contains("request_read_timeout")
        );
    }
    for call in grpc_calls {
        let response = call.await.unwrap().unwrap();
        let status = response
            .headers()
            .get("grpc-status")
            .unwrap()
            .to_str()
            .unwrap();
        assert_eq!(status, "4", "DEADLINE_EXCEEDED");
    }
    let timeouts = gateway
        .metric(r#"switchyard_rejections_total{reason="request_timeout"}"#)
        .await;
    assert_eq!(timeouts, Some(24.0));
    gateway.stop().await;
}

fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test]
async fn a_million_empty_inputs_are_refused_without_allocating() {
    let gateway = gateway(|_| {}).await;
    // `inputs` entries of two bytes each: a tag and an empty length.
    let mut frame = Vec::with_capacity(2_000_005);
    frame.push(0);
    frame.extend_from_slice(&2_000_000u32.to_be_bytes());
    for _ in 0..1_000_000 {
        frame.extend_from_slice(&[0x2a, 0x00]);
    }
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let before = peak_rss_bytes();
    let response = h2
        .post(format!(
            "http://{}/inference.GRPCInferenceService/ModelInfer",
            gateway.grpc_addr
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(frame)
        .send()
        .await
        .unwrap();
    let grew = peak_rss_bytes().saturating_sub(before);
    let headers = response.headers();
    assert_eq!(headers["grpc-status"], "3", "INVALID_ARGUMENT");
    let message = headers["grpc-message"].to_str().unwrap();
    assert!(message.len() < 600, "{message}");
    assert!(grew < 20 << 20, "peak RSS grew by {} MiB", grew >> 20);
    gateway.stop().await;
}

#[tokio::test]
async fn bodies_past_the_byte_budget_are_refused_at_once() {
    let gateway = gateway(|config| {
        config.serving.max_in_flight = 64;
        config.serving.max_in_flight_bytes = ByteSize(8 << 20);
    })
    .await;
    let addr = gateway.base.trim_start_matches("http://").to_owned();
    // Two 3 MiB bodies fit in 8 MiB; the next ones do not, and are told so before sending.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(stalled_http(&addr, 3 << 20, b"").await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..3 {
        let mut refused = stalled_http(&addr, 3 << 20, b"").await;
        let started = Instant::now();
        let (status, body) = answer(&mut refused, Duration::from_secs(2)).await;
        assert!(status.contains(" 429 "), "{status} {body}");
        assert!(body.contains("max_in_flight_bytes"), "{body}");
        assert!(started.elapsed() < Duration::from_millis(500));
    }
    // What is left serves small requests.
    let (status, body) = gateway
        .post_json("/v2/models/mlp/infer", &infer_body())
        .await;
    assert_eq!(status, 200, "{body}");
    drop(held);
    gateway.stop().await;
}

#[tokio::test]
async fn lists_parameters_and_echoes_are_bounded() {
    let gateway = gateway(|_| {}).await;
    let many_inputs: Vec<_> = (0..2000)
        .map(|i| json!({"name": format!("x{i}"), "shape": [1], "datatype": "FP32", "data": [0.0]}))
        .collect();
    let (status, body) = gateway
        .post_json("/v2/models/mlp/infer", &json!({"inputs": many_inputs}))
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("more than 1024"),
        "{body}"
    );

    let mut request = infer_body();
    request["parameters"] = json!({"tag": "p".repeat(100_000)});
    let (status, body) = gateway.post_json("/v2/models/mlp/infer", &request).await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("longer than"),
        "{body}"
    );

    let mut request = infer_body();
    request["inputs"][0]["shape"] = json!(vec![1; 1000]);
    let (status, body) = gateway.post_json("/v2/models/mlp/infer", &request).await;
    assert_eq!(status, 400);
    assert!(body.to_string().len() < 700, "{body}");

    let long_name = "m".repeat(20_000);
    let (status, body) = gateway
        .post_json(&format!("/v2/models/{long_name}/infer"), &infer_body())
        .await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().len() < 200, "{body}");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_large_bodies_at_once_stay_within_the_byte_budget() {
    // Three requests fit at once (each charged its 8 MiB and four times that for decoding).
    // The margin covers what is not charged: hyper's buffers on 64 connections (up to about
    // 400 KiB each) and the allocator's slack; measured growth here was 157-170 MiB.
    const BUDGET: u64 = 128 << 20;
    const MARGIN: u64 = 96 << 20;
    let gateway = gateway(|config| {
        config.serving.max_in_flight = 64;
        config.serving.max_in_flight_bytes = ByteSize(BUDGET);
        config.http.request_read_timeout = HumanDuration(Duration::from_secs(10));
    })
    .await;
    let addr = gateway.base.trim_start_matches("http://").to_owned();
    // 8 MiB of JSON: two million numbers for a [1, 64] input, refused (400) once decoded. One
    // copy, shared by every client, so that the clients add little to this process's memory.
    let mut body = Vec::with_capacity(8 << 20);
    body.extend_from_slice(
        br#"{"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": ["#,
    );
    while body.len() < (8 << 20) - 16 {
        body.extend_from_slice(b"0.5,");
    }
    body.extend_from_slice(b"0.5]}]}");
    let body = std::sync::Arc::new(body);
    let before = peak_rss_bytes();
    let clients: Vec<_> = (0..64)
        .map(|_| {
            let (addr, body) = (addr.clone(), body.clone());
            tokio::spawn(async move {
                let socket = TcpStream::connect(&addr).await.unwrap();
                let (mut reader, mut writer) = socket.into_split();
                let head = format!(
                    "POST /v2/models/mlp/versions/1/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                     Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let sent = Instant::now();
                writer.write_all(head.as_bytes()).await.unwrap();
                // A refusal may come before the body is sent: stop sending once it has.
                let send = async move {
                    let _ = writer.write_all(&body).await;
                    std::future::pending::<()>().await;
                };
                let read = async move {
                    let mut answer = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        match reader.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => answer.extend_from_slice(&chunk[..n]),
                        }
                        if answer.ends_with(b"}") {
                            break;
                        }
                    }
                    (
                        String::from_utf8_lossy(&answer).into_owned(),
                        sent.elapsed(),
                    )
                };
                tokio::select! {
                    () = send => unreachable!(),
                    answered = read => answered,
                }
            })
        })
        .collect();
    let (mut admitted, mut refused) = (0, 0);
    for client in clients {
        let (answer, waited) = tokio::time::timeout(Duration::from_secs(60), client)
            .await
            .expect("every client is answered")
            .unwrap();
        if answer.starts_with("HTTP/1.1 429") {
            assert!(answer.contains("max_in_flight_bytes"), "{answer}");
            assert!(waited < Duration::from_secs(2), "a refusal took {waited:?}");
            refused += 1;
        } else {
            assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
            admitted += 1;
        }
    }
    let grew = peak_rss_bytes().saturating_sub(before);
    eprintln!(
        "{admitted} admitted, {refused} refused; peak RSS grew {} MiB",
        grew >> 20
    );
    assert!(
        admitted >= 1 && refused >= 1,
        "{admitted} admitted, {refused} refused"
    );
    assert!(
        grew < BUDGET + MARGIN,
        "peak RSS grew by {} MiB, past the {} MiB budget and a {} MiB margin",
        grew >> 20,
        BUDGET >> 20,
        MARGIN >> 20
    );
    gateway.stop().await;
}

#[tokio::test]
async fn a_stalled_stream_message_is_cut_off_at_the_read_deadline() {
    let gateway = gateway(|_| {}).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    // A ModelStreamInfer stream whose first message claims 60 MiB, sends ten bytes of it, then
    // nothing: it must be cut off, not waited for (nor its claimed size set aside).
    let mut start = vec![0u8];
    start.extend_from_slice(&(60u32 << 20).to_be_bytes());
    start.extend_from_slice(&[0u8; 10]);
    let first = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from(start))]);
    let body = futures_util::StreamExt::chain(first, futures_util::stream::pending());
    let started = Instant::now();
    let response = h2
        .post(format!(
            "http://{}/inference.GRPCInferenceService/ModelStreamInfer",
            gateway.grpc_addr
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), response.bytes()).await;
    assert!(ended.is_ok(), "the stalled stream was never ended");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(
        gateway
            .metric(r#"switchyard_rejections_total{reason="request_timeout"}"#)
            .await,
        Some(1.0)
    );
    gateway.stop().await;
}
