//! Requests whose callers give up do not run: 200 requests queued behind a one-row-at-a-time
//! `mlp_heavy`, whose clients give up after 50 ms, over HTTP/1, HTTP/2 and gRPC (a cancelled
//! call, a call whose `grpc-timeout` passes, and a stream of 200 that the client closes). Counted from the model's own statistics
//! (Triton's `execution_count`, and `inference_count` for a model that joins two callers' rows
//! into one call): were nothing cancelled, all 200 would run, as they do for callers that wait
//! (the controls).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_gateway::protocol::grpc::pb;
use switchyard_gateway::protocol::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;

use crate::common::{TestGateway, models_dir};

const REQUESTS: usize = 200;
const GIVE_UP: Duration = Duration::from_millis(50);
/// Well under the 200 that would run if cancelling did nothing; what ran before the callers
/// gave up, and the calls already on the replica, stay under it.
const MOST_RUN: u64 = 100;

/// `heavy`, `mlp_heavy` one row at a time, and `pairs`, the same joining up to two callers'
/// rows into one call.
fn one_row_at_a_time() -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    for (name, settings) in [
        ("heavy", "max_batch_size = 1\nqueue_capacity = 1024\n"),
        (
            "pairs",
            "max_batch_size = 2\nmax_queue_delay = \"1ms\"\nqueue_capacity = 1024\n",
        ),
    ] {
        std::fs::create_dir_all(repo.path().join(name).join("1")).unwrap();
        std::fs::copy(
            models_dir().join("mlp_heavy/1/model.onnx"),
            repo.path().join(name).join("1/model.onnx"),
        )
        .unwrap();
        std::fs::write(repo.path().join(name).join("model.toml"), settings).unwrap();
    }
    repo
}

fn row() -> Vec<f32> {
    (0..512).map(|i| (i % 13) as f32 / 13.0).collect()
}

/// The model calls run so far, once nothing is queued or running any more.
async fn executions_when_idle(gateway: &TestGateway) -> u64 {
    figures_when_idle(gateway, "heavy").await.0
}

/// `model`'s calls and the rows they ran so far, once nothing is queued or running any more.
async fn figures_when_idle(gateway: &TestGateway, model: &str) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, resources) = gateway
            .admin(reqwest::Method::GET, "/v1/resources", None, None)
            .await;
        let busy = resources["versions"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|v| v["replicas"].as_array().unwrap())
            .any(|r| r["outstanding"].as_u64() > Some(0));
        if !busy {
            let (_, stats) = gateway
                .get(&format!("/v2/models/{model}/versions/1/stats"))
                .await;
            let stat = &stats["model_stats"][0];
            return (
                stat["execution_count"].as_u64().unwrap(),
                stat["inference_count"].as_u64().unwrap(),
            );
        }
        assert!(Instant::now() < deadline, "still busy: {resources}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn over_http(gateway: &TestGateway, client: reqwest::Client) -> u64 {
    rows_over_http(gateway, client, "heavy").await
}

/// The rows of `model` that ran of 200 one-row requests sent by `client`.
async fn rows_over_http(gateway: &TestGateway, client: reqwest::Client, model: &str) -> u64 {
    let before = figures_when_idle(gateway, model).await.1;
    let body =
        json!({"inputs": [{"name": "x", "shape": [1, 512], "datatype": "FP32", "data": row()}]});
    let url = format!("{}/v2/models/{model}/versions/1/infer", gateway.base);
    let calls: Vec<_> = (0..REQUESTS)
        .map(|_| {
            let (client, url, body) = (client.clone(), url.clone(), body.clone());
            tokio::spawn(async move { client.post(&url).json(&body).send().await.is_ok() })
        })
        .collect();
    for call in calls {
        let _ = call.await.unwrap();
    }
    figures_when_idle(gateway, model).await.1 - before
}

fn grpc_request() -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: "heavy".into(),
        model_version: "1".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "x".into(),
            datatype: "FP32".into(),
            shape: vec![1, 512],
            ..Default::default()
        }],
        raw_input_contents: vec![row().iter().flat_map(|v| v.to_le_bytes()).collect()],
        ..Default::default()
    }
}

/// How a gRPC caller gives up.
#[derive(Clone, Copy, PartialEq)]
enum GrpcCaller {
    /// It waits for the answer: the control.
    Patient,
    /// It drops the call (the stream is reset).
    Cancels,
    /// The call carries `grpc-timeout`.
    Deadline,
}

async fn over_grpc(gateway: &TestGateway, caller: GrpcCaller) -> u64 {
    let before = executions_when_idle(gateway).await;
    let client = GrpcInferenceServiceClient::connect(format!("http://{}", gateway.grpc_addr))
        .await
        .unwrap();
    let calls: Vec<_> = (0..REQUESTS)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut request = tonic::Request::new(grpc_request());
                match caller {
                    GrpcCaller::Patient => {
                        let _ = client.model_infer(request).await;
                    }
                    GrpcCaller::Cancels => {
                        let _ = tokio::time::timeout(GIVE_UP, client.model_infer(request)).await;
                    }
                    GrpcCaller::Deadline => {
                        request.set_timeout(GIVE_UP);
                        let _ = client.model_infer(request).await;
                    }
                }
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap();
    }
    executions_when_idle(gateway).await - before
}

/// 200 requests on one `ModelStreamInfer` stream, which the client closes after 50 ms (it drops
/// the call); `None` keeps it open and reads every answer (the control).
async fn over_a_stream(gateway: &TestGateway, give_up: Option<Duration>) -> u64 {
    let before = executions_when_idle(gateway).await;
    let mut client = GrpcInferenceServiceClient::connect(format!("http://{}", gateway.grpc_addr))
        .await
        .unwrap();
    let (sender, requests) = tokio::sync::mpsc::channel(REQUESTS);
    for _ in 0..REQUESTS {
        sender.send(grpc_request()).await.unwrap();
    }
    let call = async {
        let mut responses = client
            .model_stream_infer(ReceiverStream::new(requests))
            .await
            .unwrap()
            .into_inner();
        let mut answered = 0;
        while answered < REQUESTS && responses.message().await.unwrap().is_some() {
            answered += 1;
        }
        answered
    };
    match give_up {
        None => assert_eq!(call.await, REQUESTS),
        Some(after) => {
            let _ = tokio::time::timeout(after, call).await;
        }
    }
    drop(sender);
    executions_when_idle(gateway).await - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_that_give_up_leave_their_requests_unrun_on_every_transport() {
    let repo = one_row_at_a_time();
    let gateway = TestGateway::start(repo.path()).await;
    gateway.wait_for_serving("heavy", "1").await;
    gateway.wait_for_serving("pairs", "1").await;
    // The controls: callers that wait see every request run, so none is lost on the way.
    let patient = reqwest::Client::builder().http1_only().build().unwrap();
    assert_eq!(over_http(&gateway, patient.clone()).await, REQUESTS as u64);
    assert_eq!(
        rows_over_http(&gateway, patient, "pairs").await,
        REQUESTS as u64
    );
    assert_eq!(
        over_grpc(&gateway, GrpcCaller::Patient).await,
        REQUESTS as u64
    );
    assert_eq!(over_a_stream(&gateway, None).await, REQUESTS as u64);
    let mut ran: Vec<(&str, u64)> = Vec::new();
    let http1 = reqwest::Client::builder()
        .http1_only()
        .timeout(GIVE_UP)
        .build()
        .unwrap();
    ran.push(("HTTP/1", over_http(&gateway, http1).await));
    let http2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(GIVE_UP)
        .build()
        .unwrap();
    ran.push(("HTTP/2", over_http(&gateway, http2).await));
    ran.push((
        "gRPC, cancelled",
        over_grpc(&gateway, GrpcCaller::Cancels).await,
    ));
    ran.push((
        "gRPC, grpc-timeout",
        over_grpc(&gateway, GrpcCaller::Deadline).await,
    ));
    let joined = reqwest::Client::builder()
        .http1_only()
        .timeout(GIVE_UP)
        .build()
        .unwrap();
    ran.push((
        "rows of joined calls, HTTP/1",
        rows_over_http(&gateway, joined, "pairs").await,
    ));
    ran.push((
        "gRPC stream, closed",
        over_a_stream(&gateway, Some(GIVE_UP)).await,
    ));
    eprintln!("of {REQUESTS} requests whose callers gave up after {GIVE_UP:?}, ran: {ran:?}");
    for (transport, executions) in &ran {
        assert!(
            *executions <= MOST_RUN,
            "{transport}: {executions} of {REQUESTS} ran after their callers gave up ({ran:?})"
        );
    }
    // The version still serves whoever waits.
    let (status, answer): (u16, Value) = gateway
        .post_json(
            "/v2/models/heavy/versions/1/infer",
            &json!({"inputs": [{"name": "x", "shape": [1, 512], "datatype": "FP32", "data": row()}]}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    gateway.stop().await;
}
