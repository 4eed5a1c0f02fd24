//! The crowd of hostile clients of the hardening issue, all at once against one gateway: 1,100
//! gRPC streams that never send their message, 1,100 HTTP bodies trickling at a byte a second
//! and 2,000 idle sockets. Meanwhile a good client makes 500 requests, and every one is
//! answered; then the stalled ones are cut off at the read deadline and the idle ones closed.
//! (The latency of the good requests under this crowd is measured by `loadtest/soak` on the
//! release build, not asserted here.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{MLP_IN, TestGateway, mlp_repository, sample_inputs};
use switchyard_gateway::config::HumanDuration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const STALLED_GRPC: usize = 1100;
const SLOW_HTTP: usize = 1100;
const IDLE: usize = 2000;

/// Hostile sockets come from many addresses, as a crowd would (127.0.0.2 and up, 500 each):
/// one address's share of connections (`connections.max_per_client`) would otherwise refuse
/// most of them, and the good client's too, which comes from 127.0.0.1.
async fn crowd_socket(index: usize, addr: &str) -> TcpStream {
    common::connect_from(2 + (index / 500) as u8, addr).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_crowd_does_not_starve_a_good_client() {
    let repo = mlp_repository("max_batch_size = 8\n");
    let gateway = TestGateway::start_with(repo.path(), |config| {
        config.http.request_read_timeout = HumanDuration(Duration::from_secs(4));
        config.connections.header_read_timeout = HumanDuration(Duration::from_secs(6));
        config.connections.idle_timeout = HumanDuration(Duration::from_secs(8));
    })
    .await;
    let http_addr = gateway.base.trim_start_matches("http://").to_owned();

    let mut idle = Vec::with_capacity(IDLE);
    for index in 0..IDLE {
        idle.push(crowd_socket(index, &http_addr).await);
        if index % 200 == 199 {
            // Lets the accept loop keep up, as a kernel's listen backlog would not forever.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let started = Instant::now();
    let slow: Vec<_> = (0..SLOW_HTTP)
        .map(|index| {
            let addr = http_addr.clone();
            tokio::spawn(async move {
                let mut socket = crowd_socket(IDLE + index, &addr).await;
                let head = "POST /v2/models/mlp/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                            Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n";
                socket.write_all(head.as_bytes()).await.unwrap();
                // A byte a second until the gateway answers.
                let mut answer = Vec::new();
                let mut chunk = [0u8; 1024];
                loop {
                    tokio::select! {
                        read = socket.read(&mut chunk) => match read {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                answer.extend_from_slice(&chunk[..n]);
                                if answer.ends_with(b"}") {
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
                String::from_utf8_lossy(&answer).into_owned()
            })
        })
        .collect();
    // On 11 connections, as the attack was seen: a hundred streams each, within the bound on
    // concurrent streams per connection.
    let connections: Vec<reqwest::Client> = (0..11)
        .map(|_| {
            reqwest::Client::builder()
                .http2_prior_knowledge()
                .build()
                .unwrap()
        })
        .collect();
    let grpc: Vec<_> = (0..STALLED_GRPC)
        .map(|index| {
            let h2 = &connections[index % connections.len()];
            let never = futures_util::stream::pending::<Result<Bytes, std::io::Error>>();
            let call = h2
                .post(format!(
                    "http://{}/inference.GRPCInferenceService/ModelInfer",
                    gateway.grpc_addr
                ))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(reqwest::Body::wrap_stream(never))
                .send();
            tokio::spawn(call)
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The good client, while all of them hold on.
    let body = serde_json::json!({"inputs": [{"name": "x", "shape": [1, MLP_IN],
        "datatype": "FP32", "data": sample_inputs(MLP_IN, 9)}]});
    let mut latencies = Vec::with_capacity(500);
    for _ in 0..500 {
        let sent = Instant::now();
        let (status, answer) = gateway.post_json("/v2/models/mlp/infer", &body).await;
        latencies.push(sent.elapsed());
        assert_eq!(status, 200, "{answer}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the good requests ended after the read deadline: the test proves nothing"
    );
    latencies.sort();
    eprintln!(
        "good client under the crowd: p50 {:?}, p99 {:?}",
        latencies[250], latencies[494]
    );

    // The slow bodies get 408, the stalled streams DEADLINE_EXCEEDED, at the read deadline.
    for call in slow {
        let answer = call.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("request_read_timeout"), "{answer}");
    }
    for call in grpc {
        let response = call.await.unwrap().unwrap();
        assert_eq!(response.headers()["grpc-status"], "4");
    }
    assert!(started.elapsed() < Duration::from_secs(12));

    // The idle sockets, which never sent a byte, are closed by the idle timeout.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut closed = 0;
    for socket in &mut idle {
        let mut byte = [0u8; 1];
        if matches!(
            tokio::time::timeout_at(deadline, socket.read(&mut byte)).await,
            Ok(Ok(0) | Err(_))
        ) {
            closed += 1;
        }
    }
    assert_eq!(closed, IDLE);
    gateway.stop().await;
}
