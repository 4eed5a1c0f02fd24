//! Priorities on a real gateway and model: Triton's `priority` parameter, or the caller's
//! key's default, orders a replica's queue, and under overload the lower priority is refused
//! first while the higher one is served.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::common::{TestGateway, WRITER_TOKEN, models_dir, test_tokens};

/// `heavy`, `mlp_heavy` one row at a time behind a queue of 16.
fn slow_repository() -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(repo.path().join("heavy/1")).unwrap();
    std::fs::copy(
        models_dir().join("mlp_heavy/1/model.onnx"),
        repo.path().join("heavy/1/model.onnx"),
    )
    .unwrap();
    std::fs::write(
        repo.path().join("heavy/model.toml"),
        "max_batch_size = 1\nqueue_capacity = 16\n",
    )
    .unwrap();
    repo
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_overload_the_high_priority_is_served_first_and_the_low_one_shed() {
    let repo = slow_repository();
    let gateway = TestGateway::start_with(repo.path(), |config| {
        config.admin.tokens = test_tokens();
    })
    .await;
    gateway.wait_for_serving("heavy", "1").await;
    let make = |body: serde_json::Value| {
        let gateway = &gateway;
        async move {
            let (status, made) = gateway
                .admin(Method::POST, "/v1/keys", Some(WRITER_TOKEN), Some(body))
                .await;
            assert_eq!(status, 201, "{made}");
            made["key"].as_str().unwrap().to_owned()
        }
    };
    // The batch key's requests are the lowest priority unless they say otherwise; the
    // interactive key's name theirs.
    let bulk = make(json!({"name": "bulk", "priority": 10})).await;
    let interactive = make(json!({"name": "interactive"})).await;
    // Both in force (the change feed) before the load starts.
    crate::keys::in_force(&gateway, "heavy", &[&bulk, &interactive]).await;
    let call = |key: String, priority: Option<u64>| {
        let url = gateway.url("/v2/models/heavy/infer");
        let client = gateway.client.clone();
        async move {
            let x: Vec<f32> = (0..512).map(|i| (i % 11) as f32 / 11.0).collect();
            let mut body = json!({"inputs": [{"name": "x", "shape": [1, 512], "datatype": "FP32", "data": x}]});
            if let Some(priority) = priority {
                body["parameters"] = json!({"priority": priority});
            }
            let status = client
                .post(url)
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16();
            (status, Instant::now())
        }
    };
    let low: Vec<_> = (0..40)
        .map(|_| tokio::spawn(call(bulk.clone(), None)))
        .collect();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let high: Vec<_> = (0..4)
        .map(|_| tokio::spawn(call(interactive.clone(), Some(1))))
        .collect();
    let mut lows = Vec::new();
    for call in low {
        lows.push(call.await.unwrap());
    }
    let mut highs = Vec::new();
    for call in high {
        highs.push(call.await.unwrap());
    }
    assert!(highs.iter().all(|(status, _)| *status == 200), "{highs:?}");
    let shed = lows.iter().filter(|(status, _)| *status == 429).count();
    let served: Vec<Instant> = lows
        .iter()
        .filter(|(status, _)| *status == 200)
        .map(|(_, at)| *at)
        .collect();
    assert_eq!(shed + served.len(), 40, "only 200 or 429: {lows:?}");
    assert!(
        shed >= 20,
        "a queue of 16, of which the lowest priority fills 8: most of 40 shed, {shed}"
    );
    // The high ones jumped the queue: low requests queued before them finished after them.
    let last_high = highs.iter().map(|(_, at)| *at).max().unwrap();
    let after = served.iter().filter(|at| **at > last_high).count();
    assert!(
        after >= 4,
        "{after} of {} served low requests finished after the last high one",
        served.len()
    );
    // A priority that is not a number is the caller's mistake.
    let x: Vec<f32> = vec![0.0; 512];
    let (status, body) = gateway
        .client
        .post(gateway.url("/v2/models/heavy/infer"))
        .bearer_auth(&interactive)
        .json(
            &json!({"inputs": [{"name": "x", "shape": [1, 512], "datatype": "FP32", "data": x}],
                      "parameters": {"priority": "urgent"}}),
        )
        .send()
        .await
        .map(|r| (r.status().as_u16(), r))
        .unwrap();
    assert_eq!(status, 400, "{:?}", body.text().await);
    gateway.stop().await;
}
