//! More versions than memory, on the real binary: under a CPU budget that holds one of two
//! `mlp_heavy` copies, both serve. The one holding no replica loads on demand, once for a burst
//! of requests, after evicting the idle other; a pinned version is never evicted, nor a replica
//! with a request in flight; a load that fails is not tried again before its backoff, and its
//! requests are told why; a version holding an open sequence stays, and a higher-priority
//! version scaling up takes the room of an idle lower-priority one.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{Process, models_dir, must, spawn_switchyard};

const MIB: u64 = 1024 * 1024;
/// One replica fits (it declares 120 MiB and measures 66 to 140 MB once warm, by the machine's
/// noise), two never do: 120 MiB for the one loading and at least 63 MB for the other.
const BUDGET: u64 = 160 * MIB;

/// Two copies of `mlp_heavy` (63 MB of weights, 120 MiB declared each), with `extra` in the
/// first one's model.toml.
fn two_heavy_models(first_extra: &str) -> tempfile::TempDir {
    let heavy = models_dir().join("mlp_heavy/1/model.onnx");
    two_models(&heavy, &heavy, first_extra)
}

/// `heavy_a` from `first`, `heavy_b` from `second`, each declaring 120 MiB.
fn two_models(
    first: &std::path::Path,
    second: &std::path::Path,
    first_extra: &str,
) -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    for (name, artifact, extra) in [("heavy_a", first, first_extra), ("heavy_b", second, "")] {
        std::fs::create_dir_all(repo.path().join(name).join("1")).unwrap();
        std::fs::copy(artifact, repo.path().join(name).join("1/model.onnx")).unwrap();
        std::fs::write(
            repo.path().join(name).join("model.toml"),
            format!("max_batch_size = 32\nmemory = \"120MiB\"\n{extra}"),
        )
        .unwrap();
    }
    std::fs::write(
        repo.path().join("switchyard.toml"),
        format!(
            "[[devices]]\nid = \"cpu\"\nmemory = \"{}MiB\"\n",
            BUDGET / MIB
        ),
    )
    .unwrap();
    repo
}

async fn start(repo: &tempfile::TempDir) -> Process {
    let registry = format!("sqlite://{}/registry.db", repo.path().display());
    let config = repo.path().join("switchyard.toml").display().to_string();
    spawn_switchyard(repo.path(), &registry, &["--config", &config]).await
}

fn heavy_body(timeout_us: u64) -> Value {
    json!({"inputs": [{"name": "x", "shape": [1, 512], "datatype": "FP32", "data": vec![0.5f32; 512]}],
           "parameters": {"timeout": timeout_us}})
}

async fn infer(gateway: &Process, model: &str, timeout_us: u64) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/v2/models/{model}/infer", gateway.http))
        .json(&heavy_body(timeout_us))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn resources(gateway: &Process) -> Value {
    must(gateway, Method::GET, "/v1/resources", None).await
}

fn version<'a>(resources: &'a Value, model: &str) -> &'a Value {
    resources["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["model"] == model)
        .unwrap_or_else(|| panic!("{model} not in {resources}"))
}

/// Waits until both versions are ready, one of them resident; returns (resident, the other).
async fn one_resident(gateway: &Process) -> (String, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = resources(gateway).await;
        let (a, b) = (version(&now, "heavy_a"), version(&now, "heavy_b"));
        let ready = a["state"] == "READY" && b["state"] == "READY";
        match (ready, a["resident"].as_bool(), b["resident"].as_bool()) {
            (true, Some(true), Some(false)) => return ("heavy_a".into(), "heavy_b".into()),
            (true, Some(false), Some(true)) => return ("heavy_b".into(), "heavy_a".into()),
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "not one resident version after 60 s: {now}\n{}",
            gateway.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The events after `after` with this action and model.
async fn events(gateway: &Process, after: i64, action: &str, model: &str) -> Vec<Value> {
    let answer = must(
        gateway,
        Method::GET,
        &format!("/v1/events?after={after}&limit=1000"),
        None,
    )
    .await;
    answer["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == action && e["model"] == model)
        .cloned()
        .collect()
}

async fn revision(gateway: &Process) -> i64 {
    let answer = must(gateway, Method::GET, "/v1/events?after=0&limit=1000", None).await;
    answer["next_after"].as_i64().unwrap()
}

/// The CPU's reservations never exceed its budget.
fn within_budget(resources: &Value) {
    let cpu = &resources["devices"][0];
    assert_eq!(cpu["budget"].as_u64(), Some(BUDGET), "{resources}");
    assert!(
        cpu["reserved"].as_u64().unwrap() <= BUDGET,
        "over the budget: {resources}"
    );
}

#[tokio::test]
async fn versions_take_turns_in_memory_and_a_failed_load_backs_off() {
    let repo = two_heavy_models("");
    let gateway = start(&repo).await;
    let (resident, cold) = one_resident(&gateway).await;
    within_budget(&resources(&gateway).await);

    // The resident one idle long enough to be evicted; then a burst for the other.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = revision(&gateway).await;
    let cpu_before = resources(&gateway).await["devices"][0].clone();
    let burst: Vec<_> = (0..50)
        .map(|_| {
            let (http, cold) = (gateway.http.clone(), cold.clone());
            tokio::spawn(async move {
                let response = reqwest::Client::new()
                    .post(format!("{http}/v2/models/{cold}/infer"))
                    .json(&heavy_body(30_000_000))
                    .send()
                    .await
                    .unwrap();
                response.status().as_u16()
            })
        })
        .collect();
    let mut sampled = Vec::new();
    let mut statuses = Vec::new();
    for request in burst {
        while !request.is_finished() {
            sampled.push(resources(&gateway).await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        statuses.push(request.await.unwrap());
    }
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    for now in &sampled {
        within_budget(now);
    }
    // One load for the whole burst, after one eviction of the other, with its reason.
    let loads: Vec<Value> = events(&gateway, before, "replicas.scale", &cold)
        .await
        .into_iter()
        .filter(|e| e["payload"]["from"] == 0)
        .collect();
    assert_eq!(loads.len(), 1, "{loads:?}");
    let evictions = events(&gateway, before, "replicas.evict", &resident).await;
    assert_eq!(evictions.len(), 1, "{evictions:?}");
    let reason = evictions[0]["payload"]["reason"].as_str().unwrap();
    assert!(reason.contains(&cold), "{reason}");
    let now = resources(&gateway).await;
    assert_eq!(version(&now, &cold)["resident"], true, "{now}");
    assert_eq!(version(&now, &resident)["resident"], false, "{now}");
    assert_eq!(version(&now, &resident)["state"], "READY", "{now}");
    assert!(
        now["recent"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"] == "evicted" && r["model"] == *resident),
        "{now}"
    );
    // Every request of the burst waited for that load: 50 misses of the hit rate.
    assert_eq!(version(&now, &cold)["cold_waits"], 50, "{now}");
    assert_eq!(version(&now, &cold)["requests"], 50, "{now}");
    let cpu = &now["devices"][0];
    assert_eq!(cpu["resident_versions"], 1, "{cpu}");
    let grew = |figure: &str| cpu[figure].as_u64().unwrap() - cpu_before[figure].as_u64().unwrap();
    assert_eq!(
        (grew("evictions"), grew("loads")),
        (1, 1),
        "{cpu_before}\n{cpu}"
    );
    assert_eq!(cpu["hit_rate"], 0.0, "nothing else was asked: {cpu}");
    let metrics = reqwest::get(&gateway.metrics)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let misses = format!("switchyard_cold_waits_total{{model=\"{cold}\",version=\"1\"}} 50");
    assert!(metrics.contains(&misses), "{misses} not in\n{metrics}");

    // The evicted one's file is now corrupt: its load on demand fails, and the requests that
    // come before the backoff has passed are refused at once with the reason, without a load.
    std::fs::write(
        repo.path().join(&resident).join("1/model.onnx"),
        b"not an onnx model",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = revision(&gateway).await;
    let (status, answer) = infer(&gateway, &resident, 20_000_000).await;
    assert_eq!(status, 503, "{answer}");
    let message = answer["error"].as_str().unwrap();
    assert!(message.contains("load failed"), "{message}");
    let started = Instant::now();
    let (status, again) = infer(&gateway, &resident, 20_000_000).await;
    assert_eq!(status, 503, "{again}");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "refused at once while the backoff runs"
    );
    assert!(again["error"].as_str().unwrap().contains("load failed"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let failures = events(&gateway, before, "replicas.load", &resident).await;
    assert_eq!(failures.len(), 1, "one attempt: {failures:?}");
    assert_eq!(failures[0]["payload"]["outcome"], "failed");
    let now = resources(&gateway).await;
    assert!(
        version(&now, &resident)["load_failure"].is_string(),
        "{now}"
    );
    within_budget(&now);
}

#[tokio::test]
async fn a_pinned_version_is_never_evicted() {
    let repo = two_heavy_models("always_loaded = true\n");
    let gateway = start(&repo).await;
    // heavy_a is pinned: whichever loaded first, heavy_a ends up resident.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = resources(&gateway).await;
        if version(&now, "heavy_a")["resident"] == true {
            assert_eq!(version(&now, "heavy_a")["pinned"], true, "{now}");
            break;
        }
        assert!(Instant::now() < deadline, "heavy_a never resident: {now}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = revision(&gateway).await;
    // heavy_b cannot have its room: refused (pending, or no replica before the deadline).
    let (status, answer) = infer(&gateway, "heavy_b", 2_000_000).await;
    assert_eq!(status, 503, "{answer}");
    let (status, answer) = infer(&gateway, "heavy_a", 2_000_000).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        events(&gateway, before, "replicas.evict", "heavy_a")
            .await
            .is_empty()
    );
    let now = resources(&gateway).await;
    assert_eq!(version(&now, "heavy_a")["resident"], true, "{now}");
    within_budget(&now);
}

#[tokio::test]
async fn a_replica_with_a_request_in_flight_is_not_evicted() {
    // heavy_a takes batches of up to 512 rows: a request of 512 holds it for a while.
    let repo = two_heavy_models("");
    std::fs::write(
        repo.path().join("heavy_a/model.toml"),
        "max_batch_size = 512\nmemory = \"120MiB\"\n",
    )
    .unwrap();
    let gateway = start(&repo).await;
    let (resident, _) = one_resident(&gateway).await;
    if resident != "heavy_a" {
        // Bring heavy_a in (it evicts the other once that is idle).
        tokio::time::sleep(Duration::from_millis(600)).await;
        let (status, answer) = infer(&gateway, "heavy_a", 30_000_000).await;
        assert_eq!(status, 200, "{answer}");
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = revision(&gateway).await;
    let rows = 512;
    // Its outputs come back binary: encoding 512,000 floats as JSON takes long enough (in a
    // debug build, under load) that the replica may be evicted, and heavy_b served, before the
    // answer's first byte, which would blur the order this test reads.
    let long = json!({"inputs": [{"name": "x", "shape": [rows, 512], "datatype": "FP32",
                                  "data": vec![0.5f32; rows * 512]}],
                      "parameters": {"binary_data_output": true}});
    let http = gateway.http.clone();
    let started = Instant::now();
    let in_flight = tokio::spawn(async move {
        let response = reqwest::Client::new()
            .post(format!("{http}/v2/models/heavy_a/infer"))
            .json(&long)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let ended = started.elapsed();
        let header: usize = response
            .headers()
            .get("inference-header-content-length")
            .map_or(0, |length| length.to_str().unwrap().parse().unwrap());
        let bytes = response.bytes().await.unwrap();
        let json = if header > 0 {
            &bytes[..header]
        } else {
            &bytes[..]
        };
        let body: Value = serde_json::from_slice(json).unwrap_or(Value::Null);
        (status, body["outputs"][0]["shape"].clone(), ended)
    });
    // Once it is on heavy_a's replica (its body read and decoded), heavy_b wants that room.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = resources(&gateway).await;
        let replicas = version(&now, "heavy_a")["replicas"]
            .as_array()
            .unwrap()
            .clone();
        if replicas.iter().any(|r| r["outstanding"].as_u64() > Some(0)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the long request never reached heavy_a: {now}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, answer) = infer(&gateway, "heavy_b", 30_000_000).await;
    let loaded_after = started.elapsed();
    assert_eq!(status, 200, "{answer}");
    let (status, shape, took) = in_flight.await.unwrap();
    assert_eq!(status, 200, "the request in flight was cut");
    assert_eq!(shape, json!([rows, 1000]));
    // heavy_a went, and only once it had answered: heavy_b, which needed its room, answered
    // after it.
    let evictions = events(&gateway, before, "replicas.evict", "heavy_a").await;
    assert_eq!(evictions.len(), 1, "{evictions:?}");
    assert!(
        loaded_after > took,
        "heavy_b answered at {loaded_after:?}, before the request in flight on heavy_a ended at {took:?}"
    );
    within_budget(&resources(&gateway).await);
}

/// One step of a sequence on `model` (served as sequences, nothing joined).
async fn sequence_step(gateway: &Process, model: &str, id: u64, start: bool, end: bool) -> u16 {
    let mut body = heavy_body(30_000_000);
    body["parameters"] = json!({"sequence_id": id, "sequence_start": start, "sequence_end": end});
    let response = reqwest::Client::new()
        .post(format!("{}/v2/models/{model}/infer", gateway.http))
        .json(&body)
        .send()
        .await
        .unwrap();
    response.status().as_u16()
}

#[tokio::test]
async fn a_version_holding_an_open_sequence_is_never_evicted() {
    // Both served as sequences: either may be the resident one.
    let repo = two_heavy_models("[sequence]\nmax_sequences = 4\n");
    std::fs::write(
        repo.path().join("heavy_b/model.toml"),
        "max_batch_size = 32\nmemory = \"120MiB\"\n[sequence]\nmax_sequences = 4\n",
    )
    .unwrap();
    let gateway = start(&repo).await;
    let (resident, other) = one_resident(&gateway).await;
    assert_eq!(
        sequence_step(&gateway, &resident, 7, true, false).await,
        200
    );
    // Idle well past the eviction threshold, but its sequence is open.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = revision(&gateway).await;
    let (status, answer) = infer(&gateway, &other, 2_000_000).await;
    assert_eq!(status, 503, "{other} got its room: {answer}");
    assert!(
        events(&gateway, before, "replicas.evict", &resident)
            .await
            .is_empty()
    );
    // The sequence goes on where it is; once it ends, the room is free to take.
    assert_eq!(
        sequence_step(&gateway, &resident, 7, false, true).await,
        200
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (status, answer) = infer(&gateway, &other, 30_000_000).await;
    assert_eq!(status, 200, "{answer}");
    let evictions = events(&gateway, before, "replicas.evict", &resident).await;
    assert_eq!(evictions.len(), 1, "{evictions:?}");
    within_budget(&resources(&gateway).await);
}

#[tokio::test]
async fn a_higher_priority_scale_up_evicts_an_idle_lower_priority_replica() {
    // Room for three replicas: heavy_a's one and heavy_b's one, not a second of heavy_a
    // beside them (each declares 120 MiB; 125 to 140 MB each once warm).
    const WIDE_BUDGET: u64 = 420 * MIB;
    let repo = two_heavy_models("");
    std::fs::write(
        repo.path().join("heavy_a/model.toml"),
        "memory = \"200MiB\"\nmax_batch_size = 512\nmin_replicas = 1\nmax_replicas = 2\n\
         target_concurrency = 1\nscale_window = \"1s\"\nscale_up_delay = \"0s\"\n\
         scale_down_delay = \"600s\"\n",
    )
    .unwrap();
    std::fs::write(
        repo.path().join("switchyard.toml"),
        format!(
            "[[devices]]\nid = \"cpu\"\nmemory = \"{}MiB\"\n",
            WIDE_BUDGET / MIB
        ),
    )
    .unwrap();
    let gateway = start(&repo).await;
    // Both resident (200 + 120 MiB), then heavy_a weighted: it outranks heavy_b.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = resources(&gateway).await;
        if version(&now, "heavy_a")["resident"] == true
            && version(&now, "heavy_b")["resident"] == true
        {
            break;
        }
        assert!(Instant::now() < deadline, "not both resident: {now}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    must(
        &gateway,
        Method::PUT,
        "/v1/models/heavy_a/traffic",
        Some(json!({"weights": {"1": 1}})),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = revision(&gateway).await;
    // Four long requests at a time on heavy_a for up to 20 s: the autoscaler wants two.
    let rows = 512;
    // Its outputs come back binary: encoding 512,000 floats as JSON takes long enough (in a
    // debug build, under load) that the replica may be evicted, and heavy_b served, before the
    // answer's first byte, which would blur the order this test reads.
    let long = json!({"inputs": [{"name": "x", "shape": [rows, 512], "datatype": "FP32",
                                  "data": vec![0.5f32; rows * 512]}],
                      "parameters": {"binary_data_output": true}});
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (http, long, stop) = (gateway.http.clone(), long.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let until = Instant::now() + Duration::from_secs(20);
            let mut failed = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < until {
                let response = client
                    .post(format!("{http}/v2/models/heavy_a/infer"))
                    .json(&long)
                    .send()
                    .await
                    .unwrap();
                if response.status() != 200 {
                    failed += 1;
                }
            }
            failed
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let scaled = loop {
        let now = resources(&gateway).await;
        within_budget_of(&now, WIDE_BUDGET);
        let replicas = version(&now, "heavy_a")["replicas"]
            .as_array()
            .map_or(0, Vec::len);
        if replicas == 2 {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "heavy_a never got its second replica: {now}\n{}",
            gateway.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in load {
        assert_eq!(task.await.unwrap(), 0, "a request on heavy_a failed");
    }
    assert_eq!(version(&scaled, "heavy_b")["resident"], false, "{scaled}");
    let evictions = events(&gateway, before, "replicas.evict", "heavy_b").await;
    assert_eq!(evictions.len(), 1, "{evictions:?}");
    let reason = evictions[0]["payload"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("heavy_a"), "{reason}");
    // heavy_b still answers: it loads again on demand, as soon as room is made for it, or is
    // refused with the reason while heavy_a, which outranks it, holds the memory.
    let (status, answer) = infer(&gateway, "heavy_b", 2_000_000).await;
    assert!(status == 200 || status == 503, "{status} {answer}");
    within_budget_of(&resources(&gateway).await, WIDE_BUDGET);
}

/// The CPU's reservations never exceed `budget`.
fn within_budget_of(resources: &Value, budget: u64) {
    let cpu = &resources["devices"][0];
    assert!(
        cpu["reserved"].as_u64().unwrap() <= budget,
        "over the budget: {resources}"
    );
}
