//! The objective policy against the score policy, on the real binary under k6, with a load
//! that no one version can carry alone: `digits` version 1 (logistic regression, fast) and a
//! slow twin of version 3 (the best MLP's answers after about 6 ms of extra work a row, so
//! it sustains some 200 requests/s on one thread). Both versions are scored by `switchyard eval
//! --post` first, so the qualities are real held-out accuracies.
//!
//! - The score policy (exponent 100: "the best, nearly always") sends about 90% to the slow
//!   twin, which overflows its queue and answers 429.
//! - The objective policy gives the twin what it can carry at the target utilisation and
//!   spills the rest to version 1: no request is refused (a few pass on a busy machine, see
//!   below), and the mean quality served is within 2% of the optimum computed from the
//!   capacities the gateway measured.
//!
//! The slow twin is built by `scripts/build_slow_twin.py` (scripts/setup) into data/objective.
//! `loadtest/objective` runs the same comparison for longer and prints the figures.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Process, WRITER_TOKEN, k6, models_dir, must, repo_root, spawn_switchyard};
use reqwest::Method;
use serde_json::{Value, json};
use switchyard_gateway::routing::objective::{Arm, solve};

/// Offered load, requests/s: more than the slow twin carries, well within both together.
const RATE: u32 = 400;
const RAMP_S: u32 = 4;

/// Seconds of the counted hold: 10, or `SWITCHYARD_OBJECTIVE_HOLD_S` (5 to 300) for the
/// benchmark's longer runs.
fn hold_s() -> u32 {
    std::env::var("SWITCHYARD_OBJECTIVE_HOLD_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(10, |s: u32| s.clamp(5, 300))
}

fn slow_twin() -> PathBuf {
    let path = repo_root().join("data/objective/digits3_slow.onnx");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/setup (scripts/test does it for you)",
        path.display()
    );
    path
}

/// digits with version 1 and the slow twin of 3, one request per model call (so that a
/// version's capacity does not depend on how its requests batch) and a short queue.
fn repository() -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    let digits = repo.path().join("digits");
    for (label, file) in [
        ("1", models_dir().join("digits/1/model.onnx")),
        ("3", slow_twin()),
    ] {
        std::fs::create_dir_all(digits.join(label)).unwrap();
        std::fs::copy(file, digits.join(label).join("model.onnx")).unwrap();
    }
    std::fs::write(
        digits.join("model.toml"),
        r#"max_batch_size = 1
queue_capacity = 32

[[input]]
name = "x"
datatype = "FP32"
dims = [-1, 64]

[[output]]
name = "y"
datatype = "FP32"
dims = [-1, 10]
"#,
    )
    .unwrap();
    repo
}

/// `switchyard eval digits --versions all --post` on the held-out set: the registry's scores.
fn post_accuracies(gateway: &Process) -> (f64, f64) {
    let dataset = repo_root().join("data/digits/test.npz");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["--admin-url", &gateway.admin, "--token", WRITER_TOKEN])
        .args(["eval", "digits", "--url", &gateway.http, "--quiet"])
        .arg("--dataset")
        .arg(&dataset)
        .args([
            "--versions",
            "all",
            "--batch",
            "1",
            "--format",
            "json",
            "--post",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let accuracy = |label: &str| {
        report["versions"][label]["accuracy"]
            .as_f64()
            .unwrap_or_else(|| panic!("no accuracy for {label}: {report}"))
    };
    (accuracy("1"), accuracy("3"))
}

struct Run {
    hold: Value,
    /// The objective's plans seen during the hold.
    plans: Vec<Value>,
    /// `GET /v1/resources` during the hold.
    resources: Value,
}

/// k6 through the policy: the ramp, then the hold that is counted; the experiment report is
/// polled every second of the hold.
async fn run_load(gateway: &Process) -> Run {
    let scratch = tempfile::tempdir().unwrap();
    let summary = scratch.path().join("summary.json");
    let mut k6 = common::Child(
        std::process::Command::new(k6())
            .args(["run", "--quiet"])
            .arg("-e")
            .arg(format!("BASE_URL={}", gateway.http))
            .args(["-e", &format!("RATE={RATE}")])
            .args(["-e", &format!("RAMP={RAMP_S}")])
            .args(["-e", &format!("HOLD={}", hold_s())])
            .arg("-e")
            .arg(format!("SUMMARY={}", summary.display()))
            .arg(repo_root().join("loadtest/k6/objective.js"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("k6 runs (scripts/setup installs it)"),
    );
    let mut plans = Vec::new();
    tokio::time::sleep(Duration::from_secs(u64::from(RAMP_S) + 2)).await;
    for _ in 0..hold_s() - 3 {
        let experiment = must(gateway, Method::GET, "/v1/models/digits/experiment", None).await;
        if !experiment["objective"].is_null() {
            plans.push(experiment["objective"].clone());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let resources = must(gateway, Method::GET, "/v1/resources", None).await;
    let status = tokio::task::spawn_blocking(move || {
        let status = k6.0.wait();
        drop(k6);
        status
    })
    .await
    .unwrap()
    .unwrap();
    assert!(status.success(), "k6 failed: {status}");
    let hold = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    Run {
        hold,
        plans,
        resources,
    }
}

fn count(value: &Value) -> u64 {
    value.as_u64().unwrap_or(0)
}

/// Σ w_i·P_i over what the hold served, refused requests counting 0 (per offered request).
fn served_quality(hold: &Value, p1: f64, p3: f64) -> (f64, u64) {
    let (one, three) = (count(&hold["served"]["1"]), count(&hold["served"]["3"]));
    let offered = one + three + count(&hold["refused"]) + count(&hold["failed"]);
    (
        (one as f64 * p1 + three as f64 * p3) / offered as f64,
        offered,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objective_spills_what_the_best_version_cannot_carry_where_score_gets_429s() {
    let repo = repository();
    let registry = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", registry.path().join("r.db").display());
    let gateway = spawn_switchyard(repo.path(), &url, &[]).await;
    let (p1, p3) = post_accuracies(&gateway);
    assert!(p3 > p1, "the twin keeps version 3's accuracy: {p3} vs {p1}");
    must(
        &gateway,
        Method::PUT,
        "/v1/models/digits/traffic",
        Some(json!({"weights": {"1": 1, "3": 1}})),
    )
    .await;

    // Score: the best nearly always, whatever it can carry.
    must(
        &gateway,
        Method::PUT,
        "/v1/models/digits/policy",
        Some(json!({"mode": "score", "metric": "accuracy", "exponent": 100})),
    )
    .await;
    let score = run_load(&gateway).await;
    let (score_quality, score_offered) = served_quality(&score.hold, p1, p3);
    println!(
        "score: {} -> quality per offered request {score_quality:.4}",
        score.hold
    );

    // Objective: the best up to 80% of what it sustains, the rest to version 1.
    must(
        &gateway,
        Method::PUT,
        "/v1/models/digits/policy",
        Some(json!({"mode": "objective", "metric": "accuracy", "utilisation": 0.8})),
    )
    .await;
    let objective = run_load(&gateway).await;
    let (objective_quality, objective_offered) = served_quality(&objective.hold, p1, p3);
    println!(
        "objective: {} -> quality per offered request {objective_quality:.4}",
        objective.hold
    );

    // Both holds offered the same load (k6 kept up).
    for (name, offered) in [("score", score_offered), ("objective", objective_offered)] {
        let expected = u64::from(RATE * hold_s());
        assert!(
            offered * 10 >= expected * 9,
            "{name}: k6 offered {offered} of {expected} requests"
        );
    }
    let refused_by_score = count(&score.hold["refused"]);
    assert!(
        refused_by_score * 50 > score_offered,
        "the score policy overfills the slow twin: {} refused of {score_offered}",
        refused_by_score
    );
    // None in a quiet run; a machine busy with something else can preempt the twin for a
    // moment, so a few refusals (at most 1%, and a twentieth of the score policy's) pass.
    let refused_by_objective = count(&objective.hold["refused"]);
    assert_eq!(count(&objective.hold["failed"]), 0, "{}", objective.hold);
    assert!(
        refused_by_objective * 100 <= objective_offered
            && refused_by_objective * 20 <= refused_by_score,
        "the objective policy spills instead of refusing: {} (score refused {refused_by_score})",
        objective.hold
    );

    // The optimum from the capacities the gateway measured during the hold and the offered
    // rate, with the same utilisation and floor.
    assert!(objective.plans.len() >= 3, "{:?}", objective.plans);
    let mean_capacity = |label: &str| {
        let figures: Vec<f64> = objective
            .plans
            .iter()
            .filter_map(|plan| {
                plan["versions"]
                    .as_array()?
                    .iter()
                    .find(|v| v["version"] == label)?["capacity"]
                    .as_f64()
            })
            .collect();
        assert!(
            !figures.is_empty(),
            "{label} measured: {:?}",
            objective.plans
        );
        figures.iter().sum::<f64>() / figures.len() as f64
    };
    let (capacity1, capacity3) = (mean_capacity("1"), mean_capacity("3"));
    let floor = objective.plans[0]["floor"].as_f64().unwrap();
    let arms = [
        Arm {
            quality: p1,
            room: Some(0.8 * capacity1),
        },
        Arm {
            quality: p3,
            room: Some(0.8 * capacity3),
        },
    ];
    let optimum = solve(&arms, f64::from(RATE), floor);
    println!(
        "measured capacity: version 1 {capacity1:.0} req/s, version 3 {capacity3:.0} req/s; offline optimum {:.4} with shares {:?}; objective {objective_quality:.4}, score {score_quality:.4}",
        optimum.value, optimum.shares
    );
    assert!(
        capacity3 < f64::from(RATE) * 0.9,
        "the twin cannot carry the load alone ({capacity3:.0} req/s measured)"
    );
    assert!(
        (objective_quality - optimum.value).abs() <= 0.02 * optimum.value,
        "objective {objective_quality:.4} vs optimum {:.4}",
        optimum.value
    );
    assert!(
        objective_quality > score_quality,
        "counting refusals as 0, the objective serves better: {objective_quality:.4} vs {score_quality:.4}"
    );
    // The replica plan by quality per byte: with memory to spare, each version keeps its one
    // replica, and the plan's value is the objective's at the load it saw.
    let resources = &objective.resources;
    let plan = &resources["objective"][0];
    assert_eq!(plan["model"], "digits", "{resources}");
    assert_eq!(plan["memory_binds"], false, "{plan}");
    let replicas: Vec<(String, u64)> = plan["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_str().unwrap().to_owned(),
                count(&v["replicas"]),
            )
        })
        .collect();
    assert_eq!(
        replicas,
        [("1".to_owned(), 1), ("3".to_owned(), 1)],
        "{plan}"
    );
    assert!(plan["value"].as_f64().unwrap() > p1, "{plan}");
    let served3 = count(&objective.hold["served"]["3"]) as f64 / objective_offered as f64;
    assert!(
        (served3 - optimum.shares[1]).abs() < 0.1,
        "the twin's share {served3:.3} vs the optimum's {:.3}",
        optimum.shares[1]
    );
}
