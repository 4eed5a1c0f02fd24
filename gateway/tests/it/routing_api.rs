//! Routing policies end to end: weighted splits measured from `model_version`, sticky keys
//! across a restart, shadows that fail or sleep without the caller noticing, the bandit fed by
//! feedback, failing versions taken out of the policy, and atomic weight changes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{
    MLP_IN, TestGateway, WRITER_TOKEN, mlp_onnx_and_torchscript, models_dir, sample_inputs,
    test_tokens,
};
use reqwest::Method;
use serde_json::{Value, json};
use switchyard_gateway::protocol::grpc::pb;

fn infer_body(seed: u64) -> Value {
    json!({"inputs": [{"name": "x", "shape": [1, MLP_IN], "datatype": "FP32", "data": sample_inputs(MLP_IN, seed)}]})
}

/// mlp version 1 (ONNX) and 2 (TorchScript), with the sample model.toml.
fn two_versions() -> tempfile::TempDir {
    mlp_onnx_and_torchscript("")
}

async fn start(repo: &std::path::Path, registry: &std::path::Path) -> TestGateway {
    let url = format!("sqlite://{}", registry.join("registry.db").display());
    TestGateway::start_with(repo, |config| {
        config.admin.tokens = test_tokens();
        config.registry.url = url;
    })
    .await
}

async fn put(gateway: &TestGateway, path: &str, body: Value) -> Value {
    let (status, response) = gateway
        .admin(Method::PUT, path, Some(WRITER_TOKEN), Some(body))
        .await;
    assert_eq!(status, 200, "{path}: {response}");
    response
}

async fn experiment(gateway: &TestGateway) -> BTreeMap<String, Value> {
    let (status, body) = gateway
        .admin(
            Method::GET,
            "/v1/models/mlp/experiment",
            Some(WRITER_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["version"].as_str().unwrap().to_owned(), v.clone()))
        .collect()
}

/// Waits until requests naming no version see `check` hold for the policy in force.
async fn wait_for_policy(gateway: &TestGateway, check: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = gateway
            .admin(
                Method::GET,
                "/v1/models/mlp/experiment",
                Some(WRITER_TOKEN),
                None,
            )
            .await;
        if check(&body) {
            return;
        }
        assert!(Instant::now() < deadline, "policy not applied: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_90_10_split_measured_from_model_version() {
    let repo = two_versions();
    let registry = tempfile::tempdir().unwrap();
    let gateway = Arc::new(start(repo.path(), registry.path()).await);
    put(
        &gateway,
        "/v1/models/mlp/traffic",
        json!({"weights": {"1": 90, "2": 10}}),
    )
    .await;
    wait_for_policy(&gateway, |body| {
        body["versions"][1]["effective_weight"].as_f64() == Some(0.1)
    })
    .await;

    let clients = 16;
    let per_client = 20_000 / clients;
    let mut tasks = Vec::new();
    for client in 0..clients {
        let gateway = gateway.clone();
        tasks.push(tokio::spawn(async move {
            let body = infer_body(client as u64);
            let mut second = 0usize;
            for _ in 0..per_client {
                let (status, response) = gateway.post_json("/v2/models/mlp/infer", &body).await;
                assert_eq!(status, 200, "{response}");
                match response["model_version"].as_str().unwrap() {
                    "1" => {}
                    "2" => second += 1,
                    other => panic!("served by {other}"),
                }
            }
            second
        }));
    }
    let mut second = 0;
    for task in tasks {
        second += task.await.unwrap();
    }
    let share = second as f64 / (clients * per_client) as f64;
    assert!(
        (share - 0.10).abs() <= 0.015,
        "version 2 served {:.2}% of 20k requests",
        share * 100.0
    );
    let figures = experiment(&gateway).await;
    assert_eq!(figures["2"]["requests"], second as u64);
    assert!(figures["1"]["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    Arc::try_unwrap(gateway).ok().unwrap().stop().await;
}

/// The version each of `keys` is served by, over HTTP headers.
async fn versions_of(gateway: &TestGateway, keys: &[String]) -> Vec<String> {
    let mut versions = Vec::new();
    for key in keys {
        let response = reqwest::Client::new()
            .post(gateway.url("/v2/models/mlp/infer"))
            .header("x-user-id", key)
            .json(&infer_body(1))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        versions.push(body["model_version"].as_str().unwrap().to_owned());
    }
    versions
}

#[tokio::test]
async fn sticky_keys_keep_their_version_across_a_restart_and_protocols() {
    let repo = two_versions();
    let registry = tempfile::tempdir().unwrap();
    let gateway = start(repo.path(), registry.path()).await;
    put(
        &gateway,
        "/v1/models/mlp/traffic",
        json!({"weights": {"1": 50, "2": 50}}),
    )
    .await;
    put(
        &gateway,
        "/v1/models/mlp/policy",
        json!({"mode": "sticky", "header": "x-user-id"}),
    )
    .await;
    wait_for_policy(&gateway, |body| body["policy"]["mode"] == "sticky").await;
    let keys: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();
    let first = versions_of(&gateway, &keys).await;
    assert_eq!(
        first,
        versions_of(&gateway, &keys).await,
        "same key, same version"
    );
    let ones = first.iter().filter(|v| *v == "1").count();
    assert!((60..=140).contains(&ones), "a 50/50 split of keys: {ones}");

    // gRPC metadata carries the same key to the same version.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", gateway.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = pb::grpc_inference_service_client::GrpcInferenceServiceClient::new(channel);
    for (key, expected) in keys.iter().zip(&first).take(20) {
        let mut request =
            tonic::Request::new(common::mlp_raw_request(&sample_inputs(MLP_IN, 2), 1));
        request
            .metadata_mut()
            .insert("x-user-id", key.parse().unwrap());
        let response = grpc.model_infer(request).await.unwrap().into_inner();
        assert_eq!(&response.model_version, expected, "{key}");
    }
    // ... and so does a request parameter of that name.
    for (key, expected) in keys.iter().zip(&first).skip(20).take(20) {
        let mut request = common::mlp_raw_request(&sample_inputs(MLP_IN, 3), 1);
        request.parameters.insert(
            "x-user-id".into(),
            pb::InferParameter {
                parameter_choice: Some(pb::infer_parameter::ParameterChoice::StringParam(
                    key.clone(),
                )),
            },
        );
        let response = grpc.model_infer(request).await.unwrap().into_inner();
        assert_eq!(&response.model_version, expected, "{key}");
    }
    gateway.stop().await;

    let restarted = start(repo.path(), registry.path()).await;
    assert_eq!(
        first,
        versions_of(&restarted, &keys).await,
        "stickiness holds across a restart"
    );
    restarted.stop().await;
}

#[tokio::test]
async fn a_shadow_that_sleeps_or_fails_never_reaches_the_caller() {
    let repo = two_versions();
    let registry = tempfile::tempdir().unwrap();
    let gateway = start(repo.path(), registry.path()).await;
    let onnx = repo.path().join("mlp/1/model.onnx").display().to_string();
    // Version 7: the same model, but each batch waits 2 s for company: a shadow that sleeps.
    // Version 8: a model whose input is 512 wide, which the primary's inputs do not fit.
    let heavy = models_dir()
        .join("mlp_heavy/1/model.onnx")
        .display()
        .to_string();
    for (label, artifact, config) in [
        (
            "7",
            onnx.clone(),
            json!({"max_batch_size": 64, "max_queue_delay": "2s", "preferred_batch_sizes": [64]}),
        ),
        ("8", heavy, json!({})),
    ] {
        let (status, body) = gateway
            .admin(
                Method::POST,
                "/v1/models/mlp/versions",
                Some(WRITER_TOKEN),
                Some(json!({"version": label, "runtime": "onnx", "artifact": artifact, "config": config})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        gateway.wait_for_serving("mlp", label).await;
    }
    put(
        &gateway,
        "/v1/models/mlp/traffic",
        json!({"weights": {"1": 100}}),
    )
    .await;

    for shadow in ["7", "8"] {
        put(
            &gateway,
            "/v1/models/mlp/policy",
            json!({"mode": "fixed", "shadow": {"version": shadow, "fraction": 1.0}}),
        )
        .await;
        wait_for_policy(&gateway, |body| {
            body["policy"]["shadow"]["version"] == shadow
        })
        .await;
        let started = Instant::now();
        for seed in 0..30 {
            let (status, response) = gateway
                .post_json("/v2/models/mlp/infer", &infer_body(seed))
                .await;
            assert_eq!(status, 200, "{response}");
            assert_eq!(response["model_version"], "1");
        }
        // 30 requests answered well before one shadow batch could have run.
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "callers waited for shadow {shadow}: {:?}",
            started.elapsed()
        );
    }

    // The sleeping shadow's batch runs after its delay and agrees with the primary exactly;
    // the failing one records errors.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let figures = experiment(&gateway).await;
        let sleeping = &figures["7"]["shadow_of"]["1"];
        let failing = &figures["8"]["shadow_of"]["1"];
        if sleeping["pairs"] == 30 && failing["errors"] == 30 {
            assert!(
                sleeping["max_abs_diff"].as_f64().unwrap() < 1e-6,
                "{sleeping}"
            );
            assert_eq!(sleeping["argmax_agreement"], 1.0);
            assert_eq!(failing["pairs"], 0);
            assert_eq!(
                figures["7"]["requests"], 0,
                "shadow runs are not its traffic"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{sleeping} {failing}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gateway.stop().await;
}

#[tokio::test]
async fn feedback_drives_the_bandit_and_survives_a_restart() {
    let repo = two_versions();
    let registry = tempfile::tempdir().unwrap();
    let gateway = start(repo.path(), registry.path()).await;
    put(
        &gateway,
        "/v1/models/mlp/traffic",
        json!({"weights": {"1": 50, "2": 50}}),
    )
    .await;
    put(
        &gateway,
        "/v1/models/mlp/policy",
        json!({"mode": "bandit", "floor": 0.05, "latency_objective_ms": 1000}),
    )
    .await;
    wait_for_policy(&gateway, |body| body["policy"]["mode"] == "bandit").await;
    let client = reqwest::Client::new();
    let mut late_twos = 0;
    for seed in 0..400u64 {
        let (status, response) = gateway
            .post_json("/v2/models/mlp/infer", &infer_body(seed))
            .await;
        assert_eq!(status, 200);
        let id = response["id"].as_str().expect("a generated request id");
        let version = response["model_version"].as_str().unwrap();
        if seed >= 300 && version == "2" {
            late_twos += 1;
        }
        // Version 2 pleases the users; version 1 does not.
        let reward = if version == "2" { 1.0 } else { 0.0 };
        let feedback = client
            .post(gateway.url("/v1/feedback"))
            .json(&json!({"request_id": id, "reward": reward}))
            .send()
            .await
            .unwrap();
        assert_eq!(feedback.status(), 200);
    }
    assert!(
        late_twos >= 80,
        "{late_twos} of the last 100 went to version 2"
    );
    let unknown = client
        .post(gateway.url("/v1/feedback"))
        .json(&json!({"request_id": "never-sent", "reward": 1.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let out_of_range = client
        .post(gateway.url("/v1/feedback"))
        .json(&json!({"request_id": "never-sent", "reward": 2.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(out_of_range.status(), 400);

    // Refused feedback changes nothing: a replay (409), an id whose MAC was forged (404), and a
    // cross-site form post (415).
    let before = experiment(&gateway).await;
    let (_, response) = gateway
        .post_json("/v2/models/mlp/infer", &infer_body(1))
        .await;
    let id = response["id"].as_str().unwrap().to_owned();
    // The same rule as above: the floor sends a few requests to version 1, and a reward of 1
    // for one of them would lift version 1's mean.
    let reward = if response["model_version"] == "2" {
        1.0
    } else {
        0.0
    };
    let first = client
        .post(gateway.url("/v1/feedback"))
        .json(&json!({"request_id": id, "reward": reward}))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let counted = experiment(&gateway).await;
    let replay = client
        .post(gateway.url("/v1/feedback"))
        .json(&json!({"request_id": id, "reward": 1.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 409);
    let (body, tag) = id.rsplit_once('-').unwrap();
    let forged_tag: String = tag
        .chars()
        .map(|c| if c == '0' { '1' } else { '0' })
        .collect();
    for forged in [format!("{body}-{forged_tag}"), format!("{body}0-{tag}")] {
        let refused = client
            .post(gateway.url("/v1/feedback"))
            .json(&json!({"request_id": forged, "reward": 1.0}))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 404, "{forged}");
    }
    let cross_site = client
        .post(gateway.url("/v1/feedback"))
        .header("content-type", "text/plain")
        .body(json!({"request_id": id, "reward": 1.0}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), 415);
    let after = experiment(&gateway).await;
    let observations = |figures: &BTreeMap<String, Value>| {
        figures["1"]["reward"]["observations"].as_f64().unwrap()
            + figures["2"]["reward"]["observations"].as_f64().unwrap()
    };
    assert_eq!(observations(&counted), observations(&before) + 1.0);
    assert_eq!(observations(&after), observations(&counted));
    let figures = experiment(&gateway).await;
    // The very first request also earned an outcome reward, before any feedback had arrived.
    assert!(
        figures["1"]["reward"]["mean"].as_f64().unwrap() < 0.1,
        "{figures:?}"
    );
    assert!(
        figures["2"]["reward"]["mean"].as_f64().unwrap() > 0.9,
        "{figures:?}"
    );
    let learned = figures["2"]["reward"]["observations"].as_f64().unwrap();
    assert!(figures["2"]["effective_weight"].as_f64().unwrap() > 0.9);
    gateway.stop().await;

    let restarted = start(repo.path(), registry.path()).await;
    let figures = experiment(&restarted).await;
    assert_eq!(
        figures["2"]["reward"]["observations"].as_f64().unwrap(),
        learned,
        "what the bandit learned survives the restart"
    );
    restarted.stop().await;
}

#[tokio::test]
async fn a_failing_version_is_taken_out_of_the_policy() {
    let repo = two_versions();
    let registry = tempfile::tempdir().unwrap();
    let gateway = start(repo.path(), registry.path()).await;
    // Version 9: the TorchScript model declared to return FP64; it returns FP32, so every
    // call fails inside the version (500), not because of the caller's input.
    let mut config: Value = json!({
        "input": [{"name": "x", "datatype": "FP32", "dims": [-1, 64]}],
        "output": [{"name": "y", "datatype": "FP64", "dims": [-1, 10]}],
        "warmup": {"enabled": false},
    });
    config["max_batch_size"] = json!(64);
    let pt = repo.path().join("mlp/2/model.pt").display().to_string();
    let (status, body) = gateway
        .admin(
            Method::POST,
            "/v1/models/mlp/versions",
            Some(WRITER_TOKEN),
            Some(json!({"version": "9", "runtime": "libtorch", "artifact": pt, "config": config})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    gateway.wait_for_serving("mlp", "9").await;
    put(
        &gateway,
        "/v1/models/mlp/traffic",
        json!({"weights": {"1": 50, "9": 50}}),
    )
    .await;
    wait_for_policy(&gateway, |body| {
        body["versions"][2]["traffic_weight"].as_u64() == Some(50)
    })
    .await;
    let mut statuses = Vec::new();
    for seed in 0..200 {
        let (status, response) = gateway
            .post_json("/v2/models/mlp/infer", &infer_body(seed))
            .await;
        if status == 200 {
            assert_eq!(response["model_version"], "1");
        } else {
            assert_eq!(status, 500, "{response}");
            assert!(response["error"].as_str().unwrap().contains("FP64"));
        }
        statuses.push(status);
    }
    let failures = statuses.iter().filter(|s| **s == 500).count();
    assert!(failures >= 10, "version 9 did serve and fail: {failures}");
    assert!(
        statuses[100..].iter().all(|s| *s == 200),
        "version 9 is out of the policy once its error rate is known"
    );
    let figures = experiment(&gateway).await;
    assert_eq!(figures["9"]["eligible"], false);
    assert_eq!(figures["9"]["effective_weight"], 0.0);
    assert!(figures["9"]["recent_error_rate"].as_f64().unwrap() > 0.5);
    gateway.stop().await;
}

#[tokio::test]
async fn weight_changes_apply_atomically_under_traffic() {
    let repo = two_versions();
    std::fs::create_dir_all(repo.path().join("mlp/3")).unwrap();
    std::fs::copy(
        repo.path().join("mlp/1/model.onnx"),
        repo.path().join("mlp/3/model.onnx"),
    )
    .unwrap();
    let registry = tempfile::tempdir().unwrap();
    let gateway = Arc::new(start(repo.path(), registry.path()).await);
    put(
        &gateway,
        "/v1/models/mlp/traffic",
        json!({"weights": {"1": 100}}),
    )
    .await;
    wait_for_policy(&gateway, |body| {
        body["versions"][0]["effective_weight"].as_f64() == Some(1.0)
    })
    .await;
    // Version 3 never has weight: it would serve only if a request saw a table with no
    // weighted version, half-way through a change.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for client in 0..4u64 {
        let gateway = gateway.clone();
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let mut served = BTreeMap::<String, usize>::new();
            while !stop.load(Ordering::Relaxed) {
                let (status, response) = gateway
                    .post_json("/v2/models/mlp/infer", &infer_body(client))
                    .await;
                assert_eq!(status, 200, "{response}");
                *served
                    .entry(response["model_version"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
            served
        }));
    }
    for change in 0..1000 {
        let weights = if change % 2 == 0 {
            json!({"2": 100})
        } else {
            json!({"1": 70, "2": 30})
        };
        put(
            &gateway,
            "/v1/models/mlp/traffic",
            json!({ "weights": weights }),
        )
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut served = BTreeMap::<String, usize>::new();
    for client in clients {
        for (version, count) in client.await.unwrap() {
            *served.entry(version).or_default() += count;
        }
    }
    assert!(
        !served.contains_key("3"),
        "a half-applied table: {served:?}"
    );
    assert!(served["1"] > 0 && served["2"] > 0, "{served:?}");
    Arc::try_unwrap(gateway).ok().unwrap().stop().await;
}

#[tokio::test]
async fn score_weights_follow_posted_scores() {
    let repo = two_versions();
    let registry = tempfile::tempdir().unwrap();
    let gateway = start(repo.path(), registry.path()).await;
    put(
        &gateway,
        "/v1/models/mlp/traffic",
        json!({"weights": {"1": 50, "2": 50}}),
    )
    .await;
    put(
        &gateway,
        "/v1/models/mlp/policy",
        json!({"mode": "score", "metric": "accuracy", "exponent": 4}),
    )
    .await;
    let post_score = |version: &'static str, accuracy: f64| {
        let gateway = &gateway;
        async move {
            let (status, body) = gateway
                .admin(
                    Method::POST,
                    &format!("/v1/models/mlp/versions/{version}/scores"),
                    Some(WRITER_TOKEN),
                    Some(json!({"metrics": {"accuracy": accuracy}, "source": "eval"})),
                )
                .await;
            assert_eq!(status, 201, "{body}");
        }
    };
    post_score("1", 0.5).await;
    post_score("2", 0.9).await;
    // 50 x 0.9^4 against 50 x 0.5^4: version 2 takes 91.3%.
    let share = |body: &Value| {
        body["versions"][1]["effective_weight"]
            .as_f64()
            .unwrap_or(0.0)
    };
    wait_for_policy(&gateway, |body| (share(body) - 0.913).abs() < 0.001).await;
    let mut twos = 0;
    for seed in 0..400 {
        let (_, response) = gateway
            .post_json("/v2/models/mlp/infer", &infer_body(seed))
            .await;
        twos += u32::from(response["model_version"] == "2");
    }
    assert!((330..=395).contains(&twos), "{twos} of 400 on version 2");
    // A better score for version 1 turns the split around.
    post_score("1", 0.95).await;
    wait_for_policy(&gateway, |body| share(body) < 0.5).await;
    gateway.stop().await;
}
