//! Routing by what a request holds, on a real gateway with real clients: a model's rules send
//! requests of more than 16 rows to one version and requests with `x-tier: gold` to another
//! (through an alias), over HTTP and gRPC, before the policy, which takes the rest; the
//! capture says which rule chose; rules that name what the model lacks, never hold or are never
//! reached are refused with the reason.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use switchyard_gateway::protocol::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;

use crate::common::{MLP_IN, TestGateway, WRITER_TOKEN, mlp_raw_request, models_dir, test_tokens};

fn body(rows: usize) -> Value {
    let x: Vec<f32> = (0..rows * MLP_IN).map(|i| (i % 9) as f32 / 9.0).collect();
    json!({"inputs": [{"name": "x", "shape": [rows, MLP_IN], "datatype": "FP32", "data": x}]})
}

async fn put(gateway: &TestGateway, path: &str, value: Value) -> (u16, Value) {
    gateway
        .admin(Method::PUT, path, Some(WRITER_TOKEN), Some(value))
        .await
}

/// The version that served an HTTP request of `rows` rows with these headers.
async fn http_version(gateway: &TestGateway, rows: usize, headers: &[(&str, &str)]) -> String {
    let mut request = gateway
        .client
        .post(gateway.url("/v2/models/mlp/infer"))
        .json(&body(rows));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    answer["model_version"].as_str().unwrap().to_owned()
}

async fn grpc_version(
    gateway: &TestGateway,
    rows: usize,
    headers: &[(&'static str, &str)],
) -> String {
    let mut client = GrpcInferenceServiceClient::connect(format!("http://{}", gateway.grpc_addr))
        .await
        .unwrap();
    let x: Vec<f32> = (0..rows * MLP_IN).map(|i| (i % 9) as f32 / 9.0).collect();
    let mut request = tonic::Request::new(mlp_raw_request(&x, rows));
    for (name, value) in headers {
        request.metadata_mut().insert(*name, value.parse().unwrap());
    }
    client
        .model_infer(request)
        .await
        .unwrap()
        .into_inner()
        .model_version
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_route_by_rows_and_by_header_over_http_and_grpc() {
    let capture_root = tempfile::tempdir().unwrap();
    let root = capture_root.path().to_path_buf();
    let gateway = TestGateway::start_with(&models_dir(), move |config| {
        config.admin.tokens = test_tokens();
        config.capture.roots = vec![root];
    })
    .await;
    gateway.wait_for_serving("mlp", "1").await;
    gateway.wait_for_serving("mlp", "2").await;
    // A third version, the ONNX file again, for the gold tier behind an alias.
    let onnx = models_dir().join("mlp/1/model.onnx").display().to_string();
    let (status, made) = gateway
        .admin(
            Method::POST,
            "/v1/models/mlp/versions",
            Some(WRITER_TOKEN),
            Some(json!({"version": "3", "runtime": "onnx", "artifact": onnx, "config": {"max_batch_size": 64}})),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    gateway.wait_for_serving("mlp", "3").await;
    assert_eq!(
        put(
            &gateway,
            "/v1/models/mlp/aliases/gold",
            json!({"version": "3"})
        )
        .await
        .0,
        200
    );
    assert_eq!(
        put(
            &gateway,
            "/v1/models/mlp/traffic",
            json!({"weights": {"1": 100}})
        )
        .await
        .0,
        200
    );
    let (status, answer) = put(
        &gateway,
        "/v1/models/mlp/policy",
        json!({"mode": "fixed", "rules": [
            {"when": [{"rows": {"above": 16}}], "to": "2"},
            {"when": [{"header": {"name": "x-tier", "equals": "gold"}}], "to": "gold"},
            {"when": [{"parameter": {"name": "route", "in": ["two", "2"]}}], "to": "2"}
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let (status, capture) = put(
        &gateway,
        "/v1/models/mlp/capture",
        json!({"sample": 1.0, "sinks": [{"file": "rules"}]}),
    )
    .await;
    assert_eq!(status, 200, "{capture}");

    // Until both are in force (the change feed).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, now) = gateway
            .admin(
                Method::GET,
                "/v1/models/mlp/capture",
                Some(WRITER_TOKEN),
                None,
            )
            .await;
        if now["capture"]["in_force"] == true
            && http_version(&gateway, 1, &[("x-tier", "gold")]).await == "3"
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rules never came in force: {now}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..3 {
        assert_eq!(http_version(&gateway, 17, &[]).await, "2", "17 rows");
        assert_eq!(
            http_version(&gateway, 17, &[("x-tier", "gold")]).await,
            "2",
            "the first rule wins"
        );
        assert_eq!(http_version(&gateway, 16, &[("x-tier", "gold")]).await, "3");
        assert_eq!(
            http_version(&gateway, 16, &[("x-tier", "silver")]).await,
            "1",
            "the policy"
        );
        assert_eq!(http_version(&gateway, 1, &[]).await, "1");
        assert_eq!(
            grpc_version(&gateway, 17, &[]).await,
            "2",
            "17 rows over gRPC"
        );
        assert_eq!(
            grpc_version(&gateway, 2, &[("x-tier", "gold")]).await,
            "3",
            "gold over gRPC"
        );
        assert_eq!(grpc_version(&gateway, 2, &[]).await, "1");
    }
    // A parameter, as the JSON body carries it.
    let mut with_parameter = body(1);
    with_parameter["parameters"] = json!({"route": "two"});
    let (status, answer) = gateway
        .post_json("/v2/models/mlp/infer", &with_parameter)
        .await;
    assert_eq!(
        (status, answer["model_version"].as_str()),
        (200, Some("2")),
        "{answer}"
    );
    // A request naming its version is not routed by the rules.
    let pinned = gateway
        .post_json("/v2/models/mlp/versions/1/infer", &body(17))
        .await;
    assert_eq!(pinned.1["model_version"], "1");

    // The capture says which rule chose.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text =
            std::fs::read_to_string(capture_root.path().join("rules/capture.jsonl")).unwrap();
        let events: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let by_rule = |rule: u64| {
            events
                .iter()
                .filter(|e| e["chosen"] == json!({"by": "rule", "rule": rule}))
                .count()
        };
        let by = |why: &str| events.iter().any(|e| e["chosen"]["by"] == why);
        // Every request above is captured: the rest by the policy, the pinned one by its pin.
        if by_rule(0) >= 9 && by_rule(1) >= 6 && by("policy") && by("pin") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rule 0: {}, rule 1: {}, policy: {}, pin: {}",
            by_rule(0),
            by_rule(1),
            by("policy"),
            by("pin")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A rule whose alias is gone is passed over: the policy serves, not a 404.
    let (status, _) = gateway
        .admin(
            Method::DELETE,
            "/v1/models/mlp/aliases/gold",
            Some(WRITER_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_version(&gateway, 1, &[("x-tier", "gold")]).await != "1" {
        assert!(Instant::now() < deadline, "the gone alias still routes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The policy answers with its rules; removing them hands everything back to the policy.
    let (_, policy) = gateway
        .admin(
            Method::GET,
            "/v1/models/mlp/policy",
            Some(WRITER_TOKEN),
            None,
        )
        .await;
    assert_eq!(policy["policy"]["rules"][1]["to"], "gold", "{policy}");
    assert_eq!(
        put(&gateway, "/v1/models/mlp/policy", json!({"mode": "fixed"}))
            .await
            .0,
        200
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_version(&gateway, 17, &[]).await != "1" {
        assert!(Instant::now() < deadline, "the rules were never removed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gateway.stop().await;
}

#[tokio::test]
async fn rules_that_cannot_work_are_refused_with_the_reason() {
    let gateway = TestGateway::start_with(&models_dir(), |config| {
        config.admin.tokens = test_tokens();
    })
    .await;
    gateway.wait_for_serving("mlp", "1").await;
    let refused = [
        (
            json!([{"to": "9"}]),
            "rule 1: '9' is not a version or an alias",
        ),
        (
            json!([{"when": [{"rows": {"input": "pixels", "above": 1}}], "to": "1"}]),
            "no input 'pixels'",
        ),
        (
            json!([{"when": [{"value": {"input": "x", "above": 0.5}}], "to": "1"}]),
            "one-element input",
        ),
        (
            json!([{"when": [{"input": {"name": "x", "datatype": "INT8"}}], "to": "1"}]),
            "input 'x' of the version it sends to is FP32",
        ),
        (
            json!([{"when": [{"rows": {"above": 8, "below": 9}}], "to": "1"}]),
            "never holds",
        ),
        (
            json!([{"when": [{"header": {"name": "x-tier", "equals": "gold"}}], "to": "1"},
                   {"when": [{"header": {"name": "x-tier", "equals": "gold"}}], "to": "2"}]),
            "rule 2: never reached: rule 1",
        ),
        (json!([{"to": "1"}, {"to": "2"}]), "never reached"),
        (
            json!([{"when": [{"shape": [1]}], "to": "1"}]),
            "unknown variant",
        ),
        (
            json!([{"when": [], "to": "1", "extra": true}]),
            "unknown field",
        ),
    ];
    for (rules, reason) in refused {
        let (status, body) = put(
            &gateway,
            "/v1/models/mlp/policy",
            json!({"mode": "fixed", "rules": rules}),
        )
        .await;
        assert_eq!(status, 400, "{rules} -> {body}");
        assert!(
            body["error"].as_str().unwrap().contains(reason),
            "{rules}: {body} should say {reason}"
        );
    }
    gateway.stop().await;
}
