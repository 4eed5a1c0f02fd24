//! Every count a client can set is bounded where it enters, on the real binary: a version's
//! settings through the management API get a 400 naming the field and its bound, and inference
//! goes on meanwhile; an evaluation dataset whose label is huge costs what its examples cost.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::time::Duration;

use common::{admin_as_writer, mlp_repository, models_dir, must, spawn_switchyard};
use reqwest::Method;
use serde_json::{Value, json};

/// The resident memory of a process, in bytes.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap();
    kib * 1024
}

async fn infer_mlp(http: &str) -> u16 {
    let body = json!({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": vec![0.5f32; 64]}]});
    reqwest::Client::new()
        .post(format!("{http}/v2/models/mlp/infer"))
        .json(&body)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_or(0, |response| response.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_count_of_a_version_s_settings_is_bounded_where_it_enters() {
    let repo = mlp_repository("max_batch_size = 8\n");
    let registry = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", registry.path().join("r.db").display());
    let gateway = spawn_switchyard(repo.path(), &url, &[]).await;
    let artifact = repo.path().join("mlp/1/model.onnx").display().to_string();
    // 2^32 and 2^63: past every bound, within what a JSON integer parses to.
    for big in [1u64 << 32, 1u64 << 63] {
        let cases: Vec<(&str, Value)> = vec![
            ("replicas", json!({"replicas": big})),
            ("max_replicas", json!({"max_replicas": big})),
            (
                "min_replicas",
                json!({"min_replicas": big, "max_replicas": 2}),
            ),
            ("max_batch_size", json!({"max_batch_size": big})),
            ("queue_capacity", json!({"queue_capacity": big})),
            ("intra_op_threads", json!({"intra_op_threads": big})),
            (
                "preferred_batch_sizes",
                json!({"preferred_batch_sizes": [big]}),
            ),
            ("max_sequences", json!({"sequence": {"max_sequences": big}})),
            ("max_batch", json!({"sequence": {"max_batch": big}})),
            (
                "[warmup] dims",
                json!({"warmup": {"dims": {"x": [big, 64]}}}),
            ),
            ("version_policy", json!({"version_policy": {"latest": big}})),
            (
                "[[state]] 's'",
                json!({"state": [{"input": "s", "output": "t", "datatype": "FP32", "dims": [big]}]}),
            ),
        ];
        for (field, config) in cases {
            let (status, answer) = admin_as_writer(
                &gateway,
                Method::POST,
                "/v1/models/mlp/versions",
                Some(json!({"runtime": "onnx", "artifact": artifact, "config": config})),
            )
            .await;
            let message = answer["error"].as_str().unwrap_or_default();
            assert_eq!(status, 400, "{field} = {big}: {answer}");
            assert!(message.contains(field), "{field} = {big}: {message}");
            assert_eq!(
                infer_mlp(&gateway.http).await,
                200,
                "inference, after {field}"
            );
        }
    }
    // The issue's own case, whole: the gateway answers and keeps serving.
    let (status, answer) = admin_as_writer(
        &gateway,
        Method::POST,
        "/v1/models/mlp/versions",
        Some(json!({"runtime": "onnx", "artifact": artifact, "config": {"replicas": 4_000_000_000u64}})),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("replicas must be 1 to 256"),
        "{answer}"
    );
    let ready = reqwest::get(format!("{}/v2/health/ready", gateway.http))
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    assert_eq!(infer_mlp(&gateway.http).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_with_a_huge_label_costs_what_its_examples_cost() {
    let repo =
        mlp_repository(&std::fs::read_to_string(models_dir().join("mlp/model.toml")).unwrap());
    // Twenty examples, one of whose labels is 99999: the confusion matrix of old was 10^10
    // counts.
    let lines: Vec<String> = (0..20)
        .map(|i| {
            let label = if i == 7 { 99_999 } else { i % 10 };
            json!({"x": vec![(i as f32) / 20.0; 64], "label": label}).to_string()
        })
        .collect();
    let dataset = repo.path().join("huge_label.jsonl");
    std::fs::write(&dataset, lines.join("\n")).unwrap();
    let registry = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", registry.path().join("r.db").display());
    let gateway = spawn_switchyard(repo.path(), &url, &[]).await;
    let before = resident_bytes(gateway.child.id());
    let started = must(
        &gateway,
        Method::POST,
        "/v1/models/mlp/evaluations",
        Some(json!({"dataset": dataset.display().to_string(), "versions": ["1"], "post": false})),
    )
    .await;
    assert_eq!(started["evaluation"]["state"], "running", "{started}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let done = loop {
        let latest = must(
            &gateway,
            Method::GET,
            "/v1/models/mlp/evaluations/latest",
            None,
        )
        .await;
        if latest["state"] != "running" {
            break latest;
        }
        assert!(std::time::Instant::now() < deadline, "{latest}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let after = resident_bytes(gateway.child.id());
    assert_eq!(done["state"], "done", "{done}");
    let report = &done["report"]["versions"]["1"];
    let classes = report["classes"].as_array().unwrap();
    assert!(classes.contains(&json!(99_999)), "{report}");
    assert!(classes.len() <= 20, "{report}");
    let grew = after.saturating_sub(before);
    eprintln!("resident memory: {before} bytes before the job, {after} after");
    assert!(grew < 50 << 20, "resident memory grew by {grew} bytes");
}
