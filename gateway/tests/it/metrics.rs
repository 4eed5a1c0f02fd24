//! Prometheus metrics, read back from a scrape of /metrics after known traffic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::collections::HashMap;

use common::{
    MLP_IN, TestGateway, WRITER_TOKEN, mlp_raw_request, mlp_repository, sample_inputs, test_tokens,
};
use reqwest::Method;
use serde_json::json;
use switchyard_gateway::protocol::grpc::pb;

/// The value of the sample of `name` whose labels include all of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| {
            line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} "))
        })
        .find(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|line| line.rsplit(' ').next())
        .map(|value| value.parse().unwrap())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_scrape_counts_what_was_sent() {
    let repo = mlp_repository("max_batch_size = 64\n");
    let gateway =
        TestGateway::start_with(repo.path(), |config| config.admin.tokens = test_tokens()).await;
    let artifact = repo.path().join("v2.onnx");
    std::fs::copy(repo.path().join("mlp/1/model.onnx"), &artifact).unwrap();
    let (status, _) = gateway
        .admin(
            Method::POST,
            "/v1/models/mlp/versions",
            Some(WRITER_TOKEN),
            Some(json!({"runtime": "onnx", "artifact": artifact})),
        )
        .await;
    assert_eq!(status, 201);
    gateway.wait_for_serving("mlp", "2").await;
    let (status, _) = gateway
        .admin(
            Method::PUT,
            "/v1/models/mlp/traffic",
            Some(WRITER_TOKEN),
            Some(json!({"weights": {"1": 1, "2": 1}})),
        )
        .await;
    assert_eq!(status, 200);
    // Traffic reaches the table at the next reconcile: wait until both versions are routed to.
    let body = json!({"inputs": [{"name": "x", "shape": [1, MLP_IN], "datatype": "FP32", "data": sample_inputs(MLP_IN, 3)}]});
    let before = gateway
        .client
        .get(&gateway.metrics)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    let mut pinned = HashMap::new();
    for (version, count) in [("1", 30), ("2", 20)] {
        for _ in 0..count {
            let (status, _) = gateway
                .post_json(&format!("/v2/models/mlp/versions/{version}/infer"), &body)
                .await;
            assert_eq!(status, 200);
        }
        pinned.insert(version, count as f64);
    }
    let mut routed: HashMap<String, f64> = HashMap::new();
    for _ in 0..100 {
        let (status, response) = gateway.post_json("/v2/models/mlp/infer", &body).await;
        assert_eq!(status, 200);
        *routed
            .entry(response["model_version"].as_str().unwrap().to_owned())
            .or_default() += 1.0;
    }
    let wrong =
        json!({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]});
    for _ in 0..5 {
        assert_eq!(
            gateway
                .post_json("/v2/models/mlp/versions/1/infer", &wrong)
                .await
                .0,
            400
        );
    }
    assert_eq!(
        gateway.post_json("/v2/models/nope/infer", &body).await.0,
        404
    );
    let mut grpc = pb::grpc_inference_service_client::GrpcInferenceServiceClient::connect(format!(
        "http://{}",
        gateway.grpc_addr
    ))
    .await
    .unwrap();
    for _ in 0..7 {
        let mut request = mlp_raw_request(&sample_inputs(MLP_IN, 4), 1);
        request.model_version = "1".into();
        grpc.model_infer(request).await.unwrap();
    }

    let text = gateway
        .client
        .get(&gateway.metrics)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let delta = |name: &str, labels: &[(&str, &str)]| {
        sample(&text, name, labels) - sample(&before, name, labels)
    };
    for version in ["1", "2"] {
        let routed_here = routed.get(version).copied().unwrap_or(0.0);
        assert!(
            routed_here > 0.0,
            "both versions get routed traffic: {routed:?}"
        );
        let labels = [
            ("model", "mlp"),
            ("version", version),
            ("protocol", "http"),
            ("outcome", "success"),
        ];
        assert_eq!(
            delta("switchyard_requests_total", &labels),
            pinned[version] + routed_here,
            "version {version}"
        );
        assert_eq!(
            delta(
                "switchyard_request_duration_seconds_count",
                &[("model", "mlp"), ("version", version), ("protocol", "http")]
            ),
            pinned[version] + routed_here
        );
        assert_eq!(
            delta(
                "switchyard_routing_decisions_total",
                &[("model", "mlp"), ("version", version)]
            ),
            routed_here
        );
    }
    let grpc_labels = [
        ("model", "mlp"),
        ("version", "1"),
        ("protocol", "grpc"),
        ("outcome", "success"),
    ];
    assert_eq!(delta("switchyard_requests_total", &grpc_labels), 7.0);
    let invalid = [
        ("model", "mlp"),
        ("version", "1"),
        ("protocol", "http"),
        ("outcome", "invalid_argument"),
    ];
    assert_eq!(delta("switchyard_requests_total", &invalid), 5.0);
    assert_eq!(
        delta(
            "switchyard_rejections_total",
            &[("reason", "invalid_argument")]
        ),
        5.0
    );
    assert_eq!(
        delta("switchyard_rejections_total", &[("reason", "not_found")]),
        1.0
    );
    // Each successful request was one model call here (sequential traffic).
    let calls = delta(
        "switchyard_compute_time_seconds_count",
        &[("model", "mlp"), ("version", "1")],
    );
    assert_eq!(
        calls,
        pinned["1"] + routed.get("1").copied().unwrap_or(0.0) + 7.0
    );
    assert_eq!(
        sample(
            &text,
            "switchyard_ready_replicas",
            &[("model", "mlp"), ("version", "2")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "switchyard_model_state",
            &[("version", "2"), ("state", "READY")]
        ),
        1.0
    );
    assert!(sample(&text, "switchyard_registry_revision", &[]) > 0.0);
    assert_eq!(sample(&text, "switchyard_build_info", &[]), 1.0);
    // Every task is counted by kind: one reconciler, a loop per listener, and at least the
    // connection this scrape came on.
    assert_eq!(
        sample(&text, "switchyard_tasks", &[("task", "reconciler")]),
        1.0
    );
    assert!(sample(&text, "switchyard_tasks", &[("task", "accept_loop")]) >= 2.0);
    assert!(sample(&text, "switchyard_tasks", &[("task", "connection")]) >= 1.0);
    let total = sample(
        &text,
        "switchyard_device_memory_bytes",
        &[("device", "cpu"), ("kind", "total")],
    );
    let measured = sample(
        &text,
        "switchyard_device_memory_bytes",
        &[("device", "cpu"), ("kind", "measured")],
    );
    assert!(
        measured > 1e6 && measured < total,
        "measured {measured} of {total}"
    );
    for help in [
        "# HELP switchyard_requests_total",
        "# HELP switchyard_queue_time_seconds",
        "# TYPE switchyard_batch_size histogram",
    ] {
        assert!(text.contains(help), "{help} missing");
    }
    gateway.stop().await;
}
