//! Rollouts on the real binary with real models: a good version is promoted through its steps
//! under k6; a version that fails on some inputs and one ten times slower are rolled back as
//! soon as their gate breaches; a version with wrong outputs is stopped in its shadow phase
//! before any caller sees it; and two gateways on PostgreSQL judge the sum of their figures,
//! the second taking over at the same step when the leader is killed.
//!
//! The bad twins of mlp are built by `scripts/build_rollout_variants.py` (scripts/setup) into
//! data/rollouts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::admin_as_writer as admin;
use common::{
    Process, WRITER_TOKEN, k6, models_dir, must, postgres_url, repo_root, spawn_switchyard,
};
use reqwest::Method;
use serde_json::{Value, json};

/// A repository with mlp version 1 (the baseline) and `candidate` as version 2.
fn repository(candidate: &Path) -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    for (label, file) in [
        ("1", models_dir().join("mlp/1/model.onnx")),
        ("2", candidate.to_path_buf()),
    ] {
        std::fs::create_dir_all(repo.path().join("mlp").join(label)).unwrap();
        std::fs::copy(file, repo.path().join("mlp").join(label).join("model.onnx")).unwrap();
    }
    std::fs::copy(
        models_dir().join("mlp/model.toml"),
        repo.path().join("mlp/model.toml"),
    )
    .unwrap();
    repo
}

fn variant(name: &str) -> PathBuf {
    let path = repo_root()
        .join("data/rollouts")
        .join(format!("{name}.onnx"));
    assert!(
        path.is_file(),
        "{} is missing: run scripts/setup (scripts/test does it for you)",
        path.display()
    );
    path
}

/// Version 1 takes all the traffic and is `stable`; both versions are ready.
async fn stable_on_one(gateway: &Process) {
    for label in ["1", "2"] {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, version) = admin(
                gateway,
                Method::GET,
                &format!("/v1/models/mlp/versions/{label}"),
                None,
            )
            .await;
            if version["state"] == "ready" {
                break;
            }
            assert!(Instant::now() < deadline, "mlp/{label}: {version}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    must(
        gateway,
        Method::PUT,
        "/v1/models/mlp/traffic",
        Some(json!({"weights": {"1": 100}})),
    )
    .await;
    must(
        gateway,
        Method::PUT,
        "/v1/models/mlp/aliases/stable",
        Some(json!({"version": "1"})),
    )
    .await;
}

async fn rollout(gateway: &Process) -> Value {
    must(gateway, Method::GET, "/v1/models/mlp/rollouts/latest", None).await
}

/// Polls the latest rollout until `done` says so; returns it. Each poll is kept, with its time.
async fn wait_for(
    gateway: &Process,
    within: Duration,
    polls: &mut Vec<(Instant, Value)>,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let status = rollout(gateway).await;
        polls.push((Instant::now(), status.clone()));
        if done(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the rollout never got there: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One answered inference call.
#[derive(Clone, Debug)]
struct Outcome {
    at: Instant,
    status: u16,
    version: Option<String>,
}

/// Inference load on mlp from a few workers, bounded in time and count; `failing` of the
/// requests carry x[0] = 3.0 (which faulty.onnx fails on).
struct Load {
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

const LOAD_LIMIT: usize = 400_000;

impl Load {
    fn start(http: &str, workers: usize, failing: f64, within: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let deadline = Instant::now() + within;
        let workers = (0..workers)
            .map(|worker| {
                let (stop, outcomes) = (stop.clone(), outcomes.clone());
                let url = format!("{http}/v2/models/mlp/infer");
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    let mut rng = fastrand::Rng::with_seed(worker as u64);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let mut x: Vec<f32> = (0..64).map(|_| rng.f32()).collect();
                        if rng.f64() < failing {
                            x[0] = 3.0;
                        }
                        let body = json!({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": x}]});
                        let response = client.post(&url).json(&body).send().await;
                        let outcome = match response {
                            Ok(response) => {
                                let status = response.status().as_u16();
                                let answer: Value = response.json().await.unwrap_or(Value::Null);
                                Outcome {
                                    at: Instant::now(),
                                    status,
                                    version: answer["model_version"].as_str().map(str::to_owned),
                                }
                            }
                            Err(_) => Outcome {
                                at: Instant::now(),
                                status: 0,
                                version: None,
                            },
                        };
                        let mut outcomes = outcomes.lock().unwrap();
                        if outcomes.len() >= LOAD_LIMIT {
                            break;
                        }
                        outcomes.push(outcome);
                    }
                })
            })
            .collect();
        Load {
            stop,
            outcomes,
            workers,
        }
    }

    async fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            worker.await.unwrap();
        }
        self.outcomes.lock().unwrap().clone()
    }
}

fn actions(events: &Value) -> Vec<String> {
    events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .filter(|a| a.starts_with("rollout."))
        .map(str::to_owned)
        .collect()
}

/// The stages of a rollout's history, in the order they were judged.
fn judged_stages(rollout: &Value) -> Vec<u64> {
    rollout["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["stage"].as_u64().unwrap())
        .collect()
}

/// The rollout's events of a promotion through `steps` live steps.
fn promoted_through(steps: usize) -> Vec<String> {
    let mut expected = vec!["rollout.created".to_string(), "rollout.started".to_string()];
    expected.extend(std::iter::repeat_n("rollout.step".to_string(), steps - 1));
    expected.push("rollout.promoted".into());
    expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_version_is_promoted_through_its_steps_under_k6() {
    let repo = repository(&models_dir().join("mlp/1/model.onnx"));
    let registry = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", registry.path().join("r.db").display());
    let gateway = spawn_switchyard(repo.path(), &url, &[]).await;
    stable_on_one(&gateway).await;

    // k6 for the whole rollout: every request must get 200.
    let scratch = tempfile::tempdir().unwrap();
    let script = scratch.path().join("load.js");
    std::fs::write(
        &script,
        r#"import http from 'k6/http';
import { check } from 'k6';
const body = JSON.stringify({ inputs: [{ name: 'x', shape: [1, 64], datatype: 'FP32', data: Array.from({ length: 64 }, (_, i) => (i % 5) / 5) }] });
export const options = { vus: 4, duration: '20s' };
export default function () {
  const r = http.post(`${__ENV.BASE_URL}/v2/models/mlp/infer`, body, { headers: { 'Content-Type': 'application/json' } });
  check(r, { 'status is 200': (res) => res.status === 200 });
}
"#,
    )
    .unwrap();
    let summary = scratch.path().join("summary.json");
    let mut k6 = common::Child(
        std::process::Command::new(k6())
            .args(["run", "--quiet", "--summary-export"])
            .arg(&summary)
            .arg("-e")
            .arg(format!("BASE_URL={}", gateway.http))
            .arg(&script)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("k6 runs (scripts/setup installs it)"),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = must(
        &gateway,
        Method::POST,
        "/v1/models/mlp/rollouts",
        Some(
            json!({"target": "2", "steps": [5, 25, 50, 100], "hold": "2s",
                    "gates": {"min_requests": 20}}),
        ),
    )
    .await;
    assert_eq!(started["rollout"]["state"], "pending", "{started}");
    assert_eq!(
        started["rollout"]["baseline"], "1",
        "the stable alias is the baseline"
    );
    let mut polls = Vec::new();
    let done = wait_for(&gateway, Duration::from_secs(40), &mut polls, |r| {
        !matches!(r["state"].as_str(), Some("pending" | "running"))
    })
    .await;
    assert_eq!(done["state"], "promoted", "{done}");
    // Every step was judged once, in order, and passed.
    let history = done["history"].as_array().unwrap();
    let stages = judged_stages(&done);
    assert_eq!(stages, [0, 1, 2, 3], "{done}");
    assert!(history.iter().all(|a| a["verdict"] == "passed"), "{done}");
    assert!(
        history
            .iter()
            .all(|a| a["figures"]["target"]["requests"].as_u64().unwrap() >= 20),
        "{done}"
    );
    // The running rollout was seen at every step, with its share.
    let shares: std::collections::BTreeSet<u64> = polls
        .iter()
        .filter(|(_, r)| r["state"] == "running")
        .map(|(_, r)| r["target_percent"].as_f64().unwrap() as u64)
        .collect();
    assert!(shares.is_subset(&[5, 25, 50, 100].into()), "{shares:?}");
    assert!(shares.len() >= 3, "steps seen: {shares:?}");

    let traffic = must(&gateway, Method::GET, "/v1/models/mlp/traffic", None).await;
    assert_eq!(traffic["weights"], json!({"2": 100}));
    let model = must(&gateway, Method::GET, "/v1/models/mlp", None).await;
    assert_eq!(model["aliases"]["stable"], "2");
    let events = must(&gateway, Method::GET, "/v1/events?limit=1000", None).await;
    assert_eq!(actions(&events), promoted_through(4));

    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(status) = k6.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "k6 did not end");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(status.success(), "k6 failed: {status}");
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    let checks = &summary["metrics"]["checks"];
    let requests = summary["metrics"]["http_reqs"]["count"].as_u64().unwrap();
    assert!(requests > 1000, "{summary}");
    println!("good: k6 sent {requests} requests during the rollout");
    assert_eq!(
        checks["fails"].as_u64(),
        Some(0),
        "every request got 200: {checks}"
    );
    assert_eq!(
        summary["metrics"]["http_req_failed"]["value"].as_f64(),
        Some(0.0)
    );
}

/// Rolls out `candidate` under load and returns the rolled-back rollout, the load's outcomes,
/// when the breach was first seen and when the rollback was.
async fn rolled_back(
    candidate: &Path,
    request: Value,
    failing: f64,
) -> (Value, Vec<Outcome>, Instant, Instant) {
    let repo = repository(candidate);
    let registry = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", registry.path().join("r.db").display());
    let gateway = spawn_switchyard(repo.path(), &url, &[]).await;
    stable_on_one(&gateway).await;
    let load = Load::start(&gateway.http, 4, failing, Duration::from_secs(60));
    tokio::time::sleep(Duration::from_millis(500)).await;
    must(
        &gateway,
        Method::POST,
        "/v1/models/mlp/rollouts",
        Some(request),
    )
    .await;
    let mut polls = Vec::new();
    let done = wait_for(&gateway, Duration::from_secs(50), &mut polls, |r| {
        !matches!(r["state"].as_str(), Some("pending" | "running"))
    })
    .await;
    let ended = polls.last().unwrap().0;
    // Load goes on a little after the rollback, to see where it lands.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outcomes = load.finish().await;
    let breach_seen = polls
        .iter()
        .find(|(_, r)| {
            r["live"]["status"]
                .as_str()
                .is_some_and(|s| s.starts_with("breached"))
        })
        .map_or(ended, |(at, _)| *at);
    let traffic = must(&gateway, Method::GET, "/v1/models/mlp/traffic", None).await;
    assert_eq!(
        traffic["weights"],
        json!({"1": 100}),
        "the baseline has it all back"
    );
    let policy = must(&gateway, Method::GET, "/v1/models/mlp/policy", None).await;
    assert!(policy["policy"].get("shadow").is_none(), "{policy}");
    (done, outcomes, breach_seen, ended)
}

fn check_baseline_served_throughout(outcomes: &[Outcome]) {
    let baseline: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.version.as_deref() == Some("1"))
        .collect();
    assert!(baseline.len() > 500, "baseline answers: {}", baseline.len());
    assert!(baseline.iter().all(|o| o.status == 200));
}

/// Every request that started a second after the rollback was seen went to the baseline.
fn check_baseline_has_it_all_after(outcomes: &[Outcome], ended: Instant) {
    let after: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.at > ended + Duration::from_secs(1))
        .collect();
    assert!(!after.is_empty());
    assert!(
        after
            .iter()
            .all(|o| o.status == 200 && o.version.as_deref() == Some("1")),
        "after the rollback: {:?}",
        after.iter().find(|o| o.version.as_deref() != Some("1"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_failing_on_some_inputs_is_rolled_back_within_a_second_of_its_breach() {
    let request = json!({"target": "2", "steps": [25, 50, 100], "hold": "20s",
                         "gates": {"min_requests": 50}});
    let (done, outcomes, breach_seen, ended) = rolled_back(&variant("faulty"), request, 0.3).await;
    assert_eq!(done["state"], "rolled_back", "{done}");
    let reason = done["reason"].as_str().unwrap();
    assert!(reason.contains("error rate"), "{reason}");
    assert_eq!(done["history"][0]["stage"], 0);
    assert_eq!(done["history"][0]["verdict"], "failed");
    assert!(
        ended.duration_since(breach_seen) <= Duration::from_secs(1),
        "rolled back {:?} after the breach was seen",
        ended.duration_since(breach_seen)
    );
    // N = 300: at 25% of the traffic, 30% of inputs failing (a batch holding one fails whole),
    // until a second after the breach.
    let failed = outcomes.iter().filter(|o| o.status != 200).count();
    let first_failure = outcomes
        .iter()
        .filter(|o| o.status != 200)
        .map(|o| o.at)
        .min();
    println!(
        "faulty: {failed} of {} requests failed; rolled back {:?} after the breach was seen, \
         {:?} after the first failure",
        outcomes.len(),
        ended.duration_since(breach_seen),
        first_failure.map(|at| ended.duration_since(at))
    );
    assert!(failed > 0 && failed <= 300, "{failed} requests failed");
    check_baseline_served_throughout(&outcomes);
    check_baseline_has_it_all_after(&outcomes, ended);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_ten_times_slower_is_rolled_back_on_its_p99() {
    let request = json!({"target": "2", "steps": [25, 100], "hold": "30s",
                         "gates": {"min_requests": 50}});
    let (done, outcomes, breach_seen, ended) = rolled_back(&variant("slow"), request, 0.0).await;
    assert_eq!(done["state"], "rolled_back", "{done}");
    let reason = done["reason"].as_str().unwrap();
    assert!(reason.contains("p99"), "{reason}");
    let figures = &done["history"][0]["figures"];
    let ratio = figures["target"]["p99_ms"].as_f64().unwrap()
        / figures["baseline"]["p99_ms"].as_f64().unwrap();
    assert!(ratio > 2.0, "{figures}");
    println!(
        "slow: p99 ratio {ratio:.1}; rolled back {:?} after the breach was seen",
        ended.duration_since(breach_seen)
    );
    assert!(ended.duration_since(breach_seen) <= Duration::from_secs(1));
    assert!(
        outcomes.iter().all(|o| o.status == 200),
        "slow, but no failure"
    );
    check_baseline_served_throughout(&outcomes);
    check_baseline_has_it_all_after(&outcomes, ended);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shadow_phase_stops_a_version_with_wrong_outputs_before_any_caller_sees_it() {
    let request = json!({"target": "2", "shadow": {"percent": 50, "hold": "20s"},
                         "steps": [50, 100], "hold": "5s", "gates": {"min_requests": 50}});
    let (done, outcomes, _, _) = rolled_back(&variant("perturbed"), request, 0.0).await;
    assert_eq!(done["state"], "rolled_back", "{done}");
    let analysis = &done["history"][0];
    assert_eq!(analysis["stage_kind"]["kind"], "shadow", "{done}");
    let reason = done["reason"].as_str().unwrap();
    assert!(reason.contains("argmax agreement"), "{reason}");
    assert!(analysis["figures"]["shadow"]["mirrored"].as_u64().unwrap() >= 50);
    // No caller was answered by the target.
    assert!(outcomes.iter().all(|o| o.status == 200));
    assert!(
        outcomes.iter().all(|o| o.version.as_deref() == Some("1")),
        "every answer came from the baseline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_judge_their_sum_and_the_second_takes_over_when_the_leader_is_killed() {
    let repo = repository(&models_dir().join("mlp/1/model.onnx"));
    let url = postgres_url().await;
    let first = spawn_switchyard(repo.path(), &url, &[]).await;
    let second = spawn_switchyard(repo.path(), &url, &[]).await;
    stable_on_one(&first).await;
    must(
        &first,
        Method::POST,
        "/v1/models/mlp/rollouts",
        Some(json!({"target": "2", "steps": [20, 50, 100], "hold": "4s",
                    "gates": {"min_requests": 50}})),
    )
    .await;
    let mut polls = Vec::new();
    wait_for(&first, Duration::from_secs(20), &mut polls, |r| {
        r["state"] == "running"
    })
    .await;
    let first_leads = rollout(&first).await["driven_by_this_gateway"] == true;
    let second_leads = rollout(&second).await["driven_by_this_gateway"] == true;
    assert!(
        first_leads != second_leads,
        "one leader: {first_leads} {second_leads}"
    );
    let (mut leader, follower) = if first_leads {
        (first, second)
    } else {
        (second, first)
    };
    // Only the follower serves: the leader can judge the stage on the follower's figures alone.
    let load = Load::start(&follower.http, 4, 0.0, Duration::from_secs(90));
    let at_step = wait_for(&follower, Duration::from_secs(30), &mut polls, |r| {
        r["current"] == 1
    })
    .await;
    let judged = &at_step["history"][0]["figures"]["target"]["requests"];
    assert!(judged.as_u64().unwrap() >= 50, "{at_step}");

    leader.child.kill().unwrap();
    leader.child.wait().unwrap();
    let killed = Instant::now();
    let done = wait_for(&follower, Duration::from_secs(60), &mut polls, |r| {
        !matches!(r["state"].as_str(), Some("pending" | "running"))
    })
    .await;
    let outcomes = load.finish().await;
    assert_eq!(done["state"], "promoted", "{done}");
    assert!(done["driven_by_this_gateway"] == true, "{done}");
    // Each stage was judged once: none skipped, none repeated.
    let stages = judged_stages(&done);
    assert_eq!(stages, [0, 1, 2], "{done}");
    let events = must(&follower, Method::GET, "/v1/events?limit=1000", None).await;
    assert_eq!(actions(&events), promoted_through(3));
    // The steps after the kill were written by the follower.
    let drivers: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["action"]
                .as_str()
                .is_some_and(|a| a.starts_with("rollout."))
        })
        .filter(|e| e["action"] != "rollout.created")
        .map(|e| e["actor"].as_str().unwrap())
        .collect();
    assert_ne!(drivers.first(), drivers.last(), "{drivers:?}");
    assert!(outcomes.iter().all(|o| o.status == 200));
    assert!(
        outcomes
            .iter()
            .any(|o| o.at > killed && o.version.as_deref() == Some("2")),
        "the follower moved traffic on after the kill"
    );
}

#[tokio::test]
async fn the_rollout_api_refuses_what_it_cannot_do_and_writes_nothing() {
    let repo = common::mlp_onnx_and_torchscript("");
    let gateway = common::TestGateway::start_with(repo.path(), |config| {
        config.admin.tokens = common::test_tokens();
    })
    .await;
    gateway.wait_for_serving("mlp", "2").await;
    let call = |method: Method, path: &'static str, token: &'static str, body: Option<Value>| {
        let gateway = &gateway;
        async move { gateway.admin(method, path, Some(token), body).await }
    };
    let start = "/v1/models/mlp/rollouts";
    for (body, expected) in [
        (json!({"target": "9"}), "no live version '9'"),
        (json!({"target": "2", "baseline": "2"}), "must be different"),
        (json!({"target": "2", "steps": [0]}), "from 0.1 to 100"),
        (json!({"target": "2", "steps": [150]}), "from 0.1 to 100"),
        (
            json!({"target": "2", "steps": [{"weights": {"1": 5}}]}),
            "give the target",
        ),
        (
            json!({"target": "2", "steps": [{"weights": {"2": 5, "1": u64::MAX}}]}),
            "each at most",
        ),
        (json!({"target": "2", "steps": []}), "1 to 20 steps"),
        (json!({"target": "2", "hold": "forever"}), "not a duration"),
        (json!({"target": "2", "hold": "400d"}), "at most"),
        (json!({"target": "2", "gates": {"alpha": 2}}), "alpha"),
        (
            json!({"target": "2", "gates": {"nonsense": 1}}),
            "unknown field",
        ),
        (
            json!({"target": "2", "steps": [{"weights": {"7": 1, "2": 1}}]}),
            "no live version",
        ),
        (json!({"target": "2", "surprise": true}), "unknown field"),
    ] {
        let (status, answer) = call(Method::POST, start, WRITER_TOKEN, Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(expected),
            "{body}: {answer}"
        );
    }
    let (status, _) = call(
        Method::POST,
        start,
        common::READER_TOKEN,
        Some(json!({"target": "2"})),
    )
    .await;
    assert_eq!(status, 403, "a reader may not start a rollout");
    let (status, listed) = call(Method::GET, start, common::READER_TOKEN, None).await;
    assert_eq!(
        (status, listed["rollouts"].as_array().unwrap().len()),
        (200, 0)
    );
    let (status, _) = call(
        Method::GET,
        "/v1/models/nothing/rollouts",
        WRITER_TOKEN,
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = call(
        Method::GET,
        "/v1/models/mlp/rollouts/latest",
        WRITER_TOKEN,
        None,
    )
    .await;
    assert_eq!(status, 404, "no rollout yet");

    let body = json!({"target": "2", "baseline": "1", "hold": "60s"});
    let (status, first) = call(Method::POST, start, WRITER_TOKEN, Some(body.clone())).await;
    assert_eq!(status, 201, "{first}");
    let (status, second) = call(Method::POST, start, WRITER_TOKEN, Some(body)).await;
    assert_eq!(status, 409, "one active rollout per model: {second}");
    for (path, expected) in [
        ("/v1/models/mlp/rollouts/latest/explode", 400),
        ("/v1/models/mlp/rollouts/x1/pause", 400),
        ("/v1/models/mlp/rollouts/99/pause", 404),
    ] {
        let (status, answer) = gateway
            .admin(Method::POST, path, Some(WRITER_TOKEN), None)
            .await;
        assert_eq!(status, expected, "{path}: {answer}");
    }
    let (status, _) = call(
        Method::POST,
        "/v1/models/mlp/rollouts/latest/abort",
        WRITER_TOKEN,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, again) = call(
        Method::POST,
        "/v1/models/mlp/rollouts/latest/abort",
        WRITER_TOKEN,
        None,
    )
    .await;
    assert_eq!(status, 409, "{again}");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_the_restarted_gateway_goes_on_at_the_same_step() {
    let repo = repository(&models_dir().join("mlp/1/model.onnx"));
    let registry = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", registry.path().join("r.db").display());
    let mut gateway = spawn_switchyard(repo.path(), &url, &[]).await;
    stable_on_one(&gateway).await;
    let load = Load::start(&gateway.http, 4, 0.0, Duration::from_secs(30));
    must(
        &gateway,
        Method::POST,
        "/v1/models/mlp/rollouts",
        Some(json!({"target": "2", "steps": [20, 50, 100], "hold": "3s",
                    "gates": {"min_requests": 20}})),
    )
    .await;
    let mut polls = Vec::new();
    let before = wait_for(&gateway, Duration::from_secs(30), &mut polls, |r| {
        r["current"] == 1
    })
    .await;
    gateway.child.kill().unwrap();
    gateway.child.wait().unwrap();
    load.finish().await;

    let restarted = spawn_switchyard(repo.path(), &url, &[]).await;
    let resumed = rollout(&restarted).await;
    assert_eq!(resumed["current"], 1, "{resumed}");
    assert_eq!(
        resumed["history"], before["history"],
        "stage 0's verdict is kept as it was"
    );
    let load = Load::start(&restarted.http, 4, 0.0, Duration::from_secs(60));
    let done = wait_for(&restarted, Duration::from_secs(40), &mut polls, |r| {
        !matches!(r["state"].as_str(), Some("pending" | "running"))
    })
    .await;
    let outcomes = load.finish().await;
    assert_eq!(done["state"], "promoted", "{done}");
    let stages = judged_stages(&done);
    assert_eq!(stages, [0, 1, 2], "no verdict skipped or repeated: {done}");
    let events = must(&restarted, Method::GET, "/v1/events?limit=1000", None).await;
    assert_eq!(actions(&events), promoted_through(3));
    assert!(outcomes.iter().all(|o| o.status == 200));
}
