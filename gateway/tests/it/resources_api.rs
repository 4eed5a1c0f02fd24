//! Resource accounting end to end, on a CPU budget: a version that does not fit (beside a
//! pinned one) stays pending with the reason while the rest serve, and loads once room
//! appears; a version with
//! `max_replicas` scales up under a load step and back down after it, losing no request, with
//! registry events that explain each step.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TestGateway, WRITER_TOKEN, models_dir, test_tokens};
use reqwest::Method;
use serde_json::{Value, json};
use switchyard_gateway::config::{ByteSize, DeviceConfig};

const MIB: u64 = 1024 * 1024;

/// A repository with `mlp_heavy` version 1 and the given model.toml.
fn heavy_repository(model_toml: &str) -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(repo.path().join("mlp_heavy/1")).unwrap();
    std::fs::copy(
        models_dir().join("mlp_heavy/1/model.onnx"),
        repo.path().join("mlp_heavy/1/model.onnx"),
    )
    .unwrap();
    std::fs::write(repo.path().join("mlp_heavy/model.toml"), model_toml).unwrap();
    repo
}

async fn start(repo: &std::path::Path, cpu_budget: u64) -> TestGateway {
    TestGateway::start_with(repo, |config| {
        config.admin.tokens = test_tokens();
        config.devices = vec![DeviceConfig {
            id: "cpu".into(),
            memory: Some(ByteSize(cpu_budget)),
            reserve: ByteSize(0),
        }];
    })
    .await
}

async fn admin(gateway: &TestGateway, method: Method, path: &str, body: Option<Value>) -> Value {
    let (status, response) = gateway.admin(method, path, Some(WRITER_TOKEN), body).await;
    assert!((200..300).contains(&status), "{path}: {status} {response}");
    response
}

fn heavy_body(rows: usize) -> Value {
    json!({"inputs": [{"name": "x", "shape": [rows, 512], "datatype": "FP32", "data": vec![0.5f32; rows * 512]}]})
}

#[tokio::test]
async fn a_version_that_does_not_fit_waits_pending_until_room_appears() {
    // mlp_heavy's weights alone are 63 MB, so its replica reserves at least that much: of a
    // 150 MiB budget, less than 100 MiB is left.
    // mlp_heavy is pinned: otherwise, idle, it would be evicted to make room (tests/it/memory_pool.rs).
    let repo = heavy_repository("max_batch_size = 32\nalways_loaded = true\n");
    let gateway = start(repo.path(), 150 * MIB).await;
    let small = models_dir().join("mlp/1/model.onnx").display().to_string();
    admin(
        &gateway,
        Method::POST,
        "/v1/models",
        Some(json!({"name": "mlp", "description": "small"})),
    )
    .await;
    let registered = admin(
        &gateway,
        Method::POST,
        "/v1/models/mlp/versions",
        Some(json!({"version": "1", "runtime": "onnx", "artifact": small,
                    "config": {"memory": "100MiB"}})),
    )
    .await;
    assert_eq!(registered["version"]["state"], "pending", "{registered}");
    let reason = registered["version"]["state_reason"].as_str().unwrap();
    assert!(
        reason.contains("cpu") && reason.contains("100.0 MiB") && reason.contains("150.0 MiB"),
        "the reason names the device, what was asked and the budget: {reason}"
    );
    let (status, metadata) = gateway.get("/v2/models/mlp/versions/1").await;
    assert_eq!((status, metadata["state"].as_str()), (200, Some("PENDING")));
    let (status, _) = gateway
        .post_json("/v2/models/mlp/infer", &json!({"inputs": []}))
        .await;
    assert_eq!(status, 503);
    // Serving is untouched.
    let (status, response) = gateway
        .post_json("/v2/models/mlp_heavy/infer", &heavy_body(1))
        .await;
    assert_eq!(status, 200, "{response}");
    let resources = admin(&gateway, Method::GET, "/v1/resources", None).await;
    let cpu = &resources["devices"][0];
    assert_eq!(
        (cpu["id"].as_str(), cpu["budget"].as_u64()),
        (Some("cpu"), Some(150 * MIB))
    );
    let reserved = cpu["reserved"].as_u64().unwrap();
    assert!(reserved >= 63_000_000, "{resources}");
    assert_eq!(cpu["free"].as_u64().unwrap(), 150 * MIB - reserved);

    // Removing mlp_heavy frees its reservation; the pending version loads on its own.
    admin(
        &gateway,
        Method::DELETE,
        "/v1/models/mlp_heavy/versions/1",
        None,
    )
    .await;
    gateway.wait_for_serving("mlp", "1").await;
    let resources = admin(&gateway, Method::GET, "/v1/resources", None).await;
    let versions = resources["versions"].as_array().unwrap();
    let mlp = versions.iter().find(|v| v["model"] == "mlp").unwrap();
    assert_eq!(mlp["replicas"].as_array().unwrap().len(), 1, "{mlp}");
    assert!(mlp["reserved_bytes"].as_u64().unwrap() > 0);
    gateway.stop().await;
}

#[tokio::test]
async fn a_load_step_scales_replicas_up_and_back_down_without_a_failed_request() {
    let repo = heavy_repository(
        "max_batch_size = 32\nmax_queue_delay = \"2ms\"\nqueue_capacity = 256\n\
         min_replicas = 1\nmax_replicas = 3\ntarget_concurrency = 2\n\
         scale_window = \"1s\"\nscale_up_delay = \"500ms\"\nscale_down_delay = \"2s\"\n",
    );
    let gateway = Arc::new(start(repo.path(), 4096 * MIB).await);
    let replicas = |resources: &Value| {
        resources["versions"][0]["replicas"]
            .as_array()
            .map_or(0, Vec::len)
    };
    let resources = admin(&gateway, Method::GET, "/v1/resources", None).await;
    assert_eq!(replicas(&resources), 1);

    // The step: 12 clients in a closed loop until the version has scaled up and held 2 s.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..12 {
        let gateway = gateway.clone();
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let mut answered = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, body) = gateway
                    .post_json("/v2/models/mlp_heavy/infer", &heavy_body(1))
                    .await;
                assert_eq!(status, 200, "{body}");
                answered += 1;
            }
            answered
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let peak = loop {
        let resources = admin(&gateway, Method::GET, "/v1/resources", None).await;
        if replicas(&resources) == 3 {
            break resources;
        }
        assert!(Instant::now() < deadline, "never scaled to 3: {resources}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut answered = 0;
    for client in clients {
        answered += client.await.unwrap();
    }
    assert!(answered > 0);
    let reserved: u64 = peak["versions"][0]["reserved_bytes"].as_u64().unwrap();
    assert!(reserved >= 3 * 63_000_000, "three reservations: {peak}");

    // Idle: back to one replica after the scale-down delay.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let resources = admin(&gateway, Method::GET, "/v1/resources", None).await;
        if replicas(&resources) == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "never scaled back: {resources}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let events = admin(&gateway, Method::GET, "/v1/events?after=0&limit=1000", None).await;
    let steps: Vec<&Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "replicas.scale")
        .collect();
    assert!(steps.len() >= 2, "{events}");
    let first = &steps[0]["payload"];
    assert_eq!(first["from"], 1);
    assert!(
        first["reason"].as_str().unwrap().contains("concurrency"),
        "{first}"
    );
    let last = &steps[steps.len() - 1]["payload"];
    assert_eq!(last["to"], 1, "{last}");
    assert_eq!(steps[0]["actor"], "autoscaler");
    Arc::try_unwrap(gateway).ok().unwrap().stop().await;
}

#[tokio::test]
async fn an_idle_version_scales_to_zero_and_a_request_brings_it_back() {
    let repo = heavy_repository(
        "max_batch_size = 32\nmin_replicas = 1\nmax_replicas = 2\nscale_window = \"1s\"\n\
         scale_to_zero_after = \"1s\"\n",
    );
    let gateway = start(repo.path(), 4096 * MIB).await;
    let replicas = |resources: &Value| {
        resources["versions"][0]["replicas"]
            .as_array()
            .map_or(0, Vec::len)
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let resources = admin(&gateway, Method::GET, "/v1/resources", None).await;
        if replicas(&resources) == 0 {
            let reserved = resources["devices"][0]["reserved"].as_u64().unwrap();
            assert_eq!(reserved, 0, "no replica, no reservation: {resources}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never scaled to zero: {resources}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Still ready: a request waits for the cold start and is answered.
    assert_eq!(gateway.get("/v2/models/mlp_heavy/ready").await.0, 200);
    let (status, body) = gateway
        .post_json("/v2/models/mlp_heavy/infer", &heavy_body(2))
        .await;
    assert_eq!(status, 200, "{body}");
    let resources = admin(&gateway, Method::GET, "/v1/resources", None).await;
    assert_eq!(replicas(&resources), 1, "{resources}");
    let events = admin(&gateway, Method::GET, "/v1/events?after=0&limit=1000", None).await;
    let reasons: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "replicas.scale")
        .map(|e| e["payload"]["reason"].as_str().unwrap())
        .collect();
    assert!(reasons[0].starts_with("scale to zero"), "{reasons:?}");
    assert!(reasons[1].starts_with("cold start"), "{reasons:?}");
    gateway.stop().await;
}
