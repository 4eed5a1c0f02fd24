//! `switchyard eval`, the real binary against a real gateway serving `digits` (four versions
//! trained by scripts/build_digits.py, ONNX and TorchScript): each version's accuracy on the
//! held-out set is the one the training script computed, to the fourth decimal, over HTTP and
//! gRPC and from NPZ or JSON lines; `--post` records the scores with the dataset's digest. And
//! silero_vad on speech clips labelled by construction, each clip streamed as a sequence: the F1
//! of speech at 0.5 is the one ONNX Runtime gives when run directly.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::path::{Path, PathBuf};

use common::{READER_TOKEN, TestGateway, WRITER_TOKEN, models_dir, repo_root, test_tokens};
use reqwest::Method;
use serde_json::Value;

/// A repository holding only digits, copied from models/.
fn digits_repository() -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    let source = models_dir().join("digits");
    for label in ["1", "2", "3", "4"] {
        let from = source.join(label);
        assert!(
            from.is_dir(),
            "models/digits/{label} is missing: run scripts/setup"
        );
        let to = repo.path().join("digits").join(label);
        std::fs::create_dir_all(&to).unwrap();
        for file in ["model.onnx", "model.pt"] {
            if from.join(file).is_file() {
                std::fs::copy(from.join(file), to.join(file)).unwrap();
            }
        }
    }
    std::fs::copy(
        source.join("model.toml"),
        repo.path().join("digits/model.toml"),
    )
    .unwrap();
    repo
}

fn data(file: &str) -> PathBuf {
    let path = repo_root().join("data/digits").join(file);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/setup",
        path.display()
    );
    path
}

/// A gateway on `repo` with the test tokens, that takes datasets from data/ (the artifact
/// roots an evaluation job's dataset must be under).
async fn with_tokens_and_data(repo: &Path) -> TestGateway {
    TestGateway::start_with(repo, |config| {
        config.admin.tokens = test_tokens();
        config
            .registry
            .artifact_roots
            .push(repo_root().join("data"));
    })
    .await
}

/// Runs `switchyard eval` with these arguments; (succeeded, stdout, stderr).
async fn eval(gateway: &TestGateway, token: &str, args: &[&str]) -> (bool, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
    command
        .args([
            "--admin-url",
            &gateway.admin,
            "--token",
            token,
            "eval",
            "digits",
        ])
        .args(["--url", &gateway.base, "--quiet"])
        .args(args)
        .env_remove("SWITCHYARD_ADMIN_TOKEN");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn report(gateway: &TestGateway, dataset: &Path, extra: &[&str]) -> Value {
    let dataset = dataset.display().to_string();
    let mut args = vec![
        "--dataset",
        &dataset,
        "--versions",
        "all",
        "--format",
        "json",
    ];
    args.extend_from_slice(extra);
    let (ok, stdout, stderr) = eval(gateway, WRITER_TOKEN, &args).await;
    assert!(ok, "{stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|_| panic!("not JSON: {stdout}"))
}

#[tokio::test]
async fn eval_reproduces_the_training_scripts_accuracy_over_http_and_grpc_and_posts_it() {
    let repo = digits_repository();
    let gateway = TestGateway::start_with(repo.path(), |config| {
        config.admin.tokens = test_tokens();
    })
    .await;
    for label in ["1", "2", "3", "4"] {
        gateway.wait_for_serving("digits", label).await;
    }
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(data("expected.json")).unwrap()).unwrap();
    let examples = expected["examples"].as_u64().unwrap();

    let over_http = report(&gateway, &data("test.npz"), &[]).await;
    assert_eq!(over_http["dataset"]["examples"].as_u64(), Some(examples));
    for label in ["1", "2", "3", "4"] {
        let measured = over_http["versions"][label]["accuracy"].as_f64().unwrap();
        let trained = expected["versions"][label]["accuracy"].as_f64().unwrap();
        assert!(
            (measured - trained).abs() < 5e-5,
            "version {label}: eval {measured:.4}, training script {trained:.4}"
        );
        let confusion = over_http["versions"][label]["confusion"]
            .as_array()
            .unwrap();
        let total: u64 = confusion
            .iter()
            .flat_map(|row| row.as_array().unwrap())
            .map(|c| c.as_u64().unwrap())
            .sum();
        assert_eq!(total, examples, "every example is in the confusion matrix");
        assert!(over_http["versions"][label]["f1_macro"].as_f64().unwrap() > 0.5);
    }
    // The versions differ in quality, as trained: the under-trained MLP is the worst.
    let accuracy = |label: &str| over_http["versions"][label]["accuracy"].as_f64().unwrap();
    assert!(accuracy("2") < accuracy("1") && accuracy("1") < accuracy("3"));
    assert_eq!(
        accuracy("3"),
        accuracy("4"),
        "ONNX and TorchScript of one network"
    );

    // gRPC, and the same examples as JSON lines, give the same report.
    let grpc = gateway.grpc_addr.to_string();
    let over_grpc = report(&gateway, &data("test.npz"), &["--grpc", &grpc]).await;
    let from_jsonl = report(&gateway, &data("test.jsonl"), &["--batch", "7"]).await;
    assert_eq!(over_grpc["protocol"], "grpc");
    for label in ["1", "2", "3", "4"] {
        for other in [&over_grpc, &from_jsonl] {
            assert_eq!(
                other["versions"][label]["confusion"], over_http["versions"][label]["confusion"],
                "version {label}"
            );
        }
    }

    // The table puts the versions side by side, best first; --post records the scores.
    let dataset = data("test.npz").display().to_string();
    let (ok, table, stderr) = eval(
        &gateway,
        WRITER_TOKEN,
        &["--dataset", &dataset, "--versions", "1,3", "--post"],
    )
    .await;
    assert!(ok, "{stderr}");
    let header: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("DIGITS"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["DIGITS", "(VERSION)", "3", "1"], "{table}");
    assert!(table.contains("\naccuracy "), "{table}");
    let sha = over_http["dataset"]["sha256"].as_str().unwrap();
    for label in ["1", "3"] {
        let (status, scores) = gateway
            .admin(
                Method::GET,
                &format!("/v1/models/digits/versions/{label}/scores"),
                Some(READER_TOKEN),
                None,
            )
            .await;
        assert_eq!(status, 200);
        let scores = scores["scores"].as_array().unwrap();
        let accuracy = scores.iter().find(|s| s["metric"] == "accuracy").unwrap();
        assert!(
            (accuracy["value"].as_f64().unwrap()
                - expected["versions"][label]["accuracy"].as_f64().unwrap())
            .abs()
                < 5e-5
        );
        assert!(
            accuracy["source"].as_str().unwrap().contains(sha),
            "{accuracy}"
        );
        assert_eq!(accuracy["dataset"], "test.npz");
    }
    // A reader's token may evaluate but not post.
    let (ok, _, stderr) = eval(
        &gateway,
        READER_TOKEN,
        &["--dataset", &dataset, "--versions", "2", "--post"],
    )
    .await;
    assert!(!ok && stderr.contains("403"), "{stderr}");
    gateway.stop().await;
}

#[tokio::test]
async fn eval_refuses_what_it_cannot_read_with_the_reason() {
    let repo = digits_repository();
    let gateway = TestGateway::start(repo.path()).await;
    let scratch = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = scratch.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path.display().to_string()
    };
    let cases = [
        (
            write("missing.npz", b"") + ".nope",
            "cannot read the dataset",
        ),
        (write("corrupt.npz", b"PK\x03\x04 not really"), "not an NPZ"),
        (write("data.csv", b"1,2,3\n"), "neither .npz nor .jsonl"),
        (
            write("wrong.jsonl", b"{\"z\": [1, 2], \"label\": 1}\n"),
            "no array 'x'",
        ),
        (
            write("unlabelled.jsonl", b"{\"x\": [1, 2]}\n"),
            "no integer 'label'",
        ),
        (
            write("negative.jsonl", b"{\"x\": [1], \"label\": -3}\n"),
            "not a class index",
        ),
    ];
    for (path, expected) in cases {
        let (ok, _, stderr) = eval(&gateway, WRITER_TOKEN, &["--dataset", &path]).await;
        assert!(!ok, "{path}");
        assert!(stderr.contains(expected), "{path}: {stderr}");
    }
    // A shape the model refuses: every request fails, and the eval says so and posts nothing.
    let short = write("short.jsonl", b"{\"x\": [0.5, 0.5], \"label\": 1}\n");
    let (ok, _, stderr) = eval(&gateway, WRITER_TOKEN, &["--dataset", &short, "--post"]).await;
    assert!(!ok && stderr.contains("nothing posted"), "{stderr}");
    let (ok, _, stderr) = eval(
        &gateway,
        WRITER_TOKEN,
        &[
            "--dataset",
            &data("test.npz").display().to_string(),
            "--versions",
            "9",
        ],
    )
    .await;
    assert!(!ok && stderr.contains("failed"), "{stderr}");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_runs_an_evaluation_job_beside_live_traffic_and_posts_the_scores() {
    let repo = digits_repository();
    let gateway = with_tokens_and_data(repo.path()).await;
    for label in ["1", "2", "3", "4"] {
        gateway.wait_for_serving("digits", label).await;
    }
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(data("expected.json")).unwrap()).unwrap();
    let path = "/v1/models/digits/evaluations";
    let dataset = data("test.npz").display().to_string();

    for (token, body, status, says) in [
        (
            WRITER_TOKEN,
            serde_json::json!({"dataset": "/etc/passwd"}),
            400,
            "artifact roots",
        ),
        (
            WRITER_TOKEN,
            serde_json::json!({"dataset": dataset, "versions": ["9"]}),
            404,
            "9",
        ),
        (
            WRITER_TOKEN,
            serde_json::json!({"dataset": dataset, "surprise": 1}),
            400,
            "unknown field",
        ),
        (
            READER_TOKEN,
            serde_json::json!({"dataset": dataset}),
            403,
            "only read",
        ),
    ] {
        let (got, answer) = gateway
            .admin(Method::POST, path, Some(token), Some(body.clone()))
            .await;
        assert_eq!(got, status, "{body}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(says),
            "{body}: {answer}"
        );
    }

    // Live traffic the whole time: none of it may be refused or fail.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..2 {
        let (stop, url, client) = (
            stop.clone(),
            gateway.url("/v2/models/digits/infer"),
            gateway.client.clone(),
        );
        workers.push(tokio::spawn(async move {
            let body = serde_json::json!({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": vec![0.25f32; 64]}]});
            let mut statuses = Vec::new();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && std::time::Instant::now() < deadline {
                let response = client.post(&url).json(&body).send().await.unwrap();
                statuses.push(response.status().as_u16());
            }
            statuses
        }));
    }
    let (status, started) = gateway
        .admin(
            Method::POST,
            path,
            Some(WRITER_TOKEN),
            Some(serde_json::json!({"dataset": dataset})),
        )
        .await;
    assert_eq!(status, 202, "{started}");
    assert_eq!(started["evaluation"]["state"], "running");
    let (status, second) = gateway
        .admin(
            Method::POST,
            path,
            Some(WRITER_TOKEN),
            Some(serde_json::json!({"dataset": dataset})),
        )
        .await;
    assert_eq!(status, 409, "one at a time: {second}");

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let done = loop {
        let (_, latest) = gateway
            .admin(
                Method::GET,
                &format!("{path}/latest"),
                Some(READER_TOKEN),
                None,
            )
            .await;
        if latest["state"] != "running" {
            break latest;
        }
        assert!(std::time::Instant::now() < deadline, "{latest}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut live = Vec::new();
    for worker in workers {
        live.extend(worker.await.unwrap());
    }
    assert_eq!(done["state"], "done", "{done}");
    let report = &done["report"];
    for label in ["1", "2", "3", "4"] {
        let measured = report["versions"][label]["accuracy"].as_f64().unwrap();
        let trained = expected["versions"][label]["accuracy"].as_f64().unwrap();
        assert!(
            (measured - trained).abs() < 5e-5,
            "version {label}: {measured} vs {trained}"
        );
    }
    assert_eq!(report["posted"], serde_json::json!(["1", "2", "3", "4"]));
    let (_, scores) = gateway
        .admin(
            Method::GET,
            "/v1/models/digits/versions/2/scores",
            Some(READER_TOKEN),
            None,
        )
        .await;
    let sha = report["dataset"]["sha256"].as_str().unwrap();
    assert!(
        scores["scores"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["metric"] == "f1_macro" && s["source"].as_str().unwrap().contains(sha)),
        "{scores}"
    );
    assert!(live.len() > 50, "live requests: {}", live.len());
    assert!(
        live.iter().all(|s| *s == 200),
        "live traffic was refused or failed"
    );
    gateway.stop().await;
}

/// A repository holding only silero_vad, copied from models/.
fn silero_repository() -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    let source = models_dir().join("silero_vad");
    for label in ["1", "2"] {
        let from = source.join(label).join("model.onnx");
        assert!(
            from.is_file(),
            "{} is missing: run scripts/setup",
            from.display()
        );
        let to = repo.path().join("silero_vad").join(label);
        std::fs::create_dir_all(&to).unwrap();
        std::fs::copy(from, to.join("model.onnx")).unwrap();
    }
    std::fs::copy(
        source.join("model.toml"),
        repo.path().join("silero_vad/model.toml"),
    )
    .unwrap();
    repo
}

/// The speech clips of scripts/build_vad_eval.py: each clip is a stream, sent as a sequence
/// whose state the gateway carries; each 32 ms frame's speech probability is scored against
/// its label at 0.5. The F1 of speech is the one ONNX Runtime gives run directly, over HTTP
/// and gRPC alike, and --post records it.
#[tokio::test]
async fn eval_streams_speech_clips_as_sequences_and_scores_f1_at_the_threshold() {
    let repo = silero_repository();
    let gateway = with_tokens_and_data(repo.path()).await;
    for label in ["1", "2"] {
        gateway.wait_for_serving("silero_vad", label).await;
    }
    let speech = repo_root().join("data/silero_vad");
    let dataset = speech.join("eval.npz");
    assert!(
        dataset.is_file(),
        "{} is missing: run scripts/setup",
        dataset.display()
    );
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(speech.join("eval.json")).unwrap()).unwrap();
    let frames = expected["frames"].as_u64().unwrap();
    let name = dataset.display().to_string();
    let silero_eval = |extra: Vec<String>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
        command
            .args(["--admin-url", &gateway.admin, "--token", WRITER_TOKEN])
            .args(["eval", "silero_vad", "--url", &gateway.base, "--quiet"])
            .args(["--dataset", &name, "--metric", "f1", "--format", "json"])
            .args(extra)
            .env_remove("SWITCHYARD_ADMIN_TOKEN");
        command
    };
    let run = |mut command: std::process::Command| async move {
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .unwrap()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_str::<Value>(&stdout).unwrap()
    };
    let over_http = run(silero_eval(vec!["--post".into()])).await;
    let grpc = gateway.grpc_addr.to_string();
    let over_grpc = run(silero_eval(vec!["--grpc".into(), grpc])).await;
    assert_eq!(over_http["dataset"]["examples"].as_u64(), Some(frames));
    for label in ["1", "2"] {
        let report = &over_http["versions"][label];
        assert_eq!(report["failed_requests"], 0, "{report}");
        // Joined calls may differ from single ones in the last bits: equal unless a frame sits
        // within 1e-4 of the threshold, then one frame may land on the other side.
        let margin = expected["expected"][label]["closest_to_threshold"]
            .as_f64()
            .unwrap();
        let tolerance = if margin > 1e-4 { 1e-6 } else { 3e-3 };
        for metric in ["f1", "precision", "recall", "accuracy"] {
            let measured = report[metric].as_f64().unwrap();
            let direct = expected["expected"][label][metric].as_f64().unwrap();
            assert!(
                (measured - direct).abs() < tolerance,
                "version {label} {metric}: through the gateway {measured:.4}, ONNX Runtime directly {direct:.4}"
            );
        }
        assert!(report["roc_auc"].as_f64().unwrap() > 0.9, "{report}");
        assert_eq!(
            over_grpc["versions"][label]["confusion"], report["confusion"],
            "gRPC gives the same answers"
        );
        let (status, scores) = gateway
            .admin(
                Method::GET,
                &format!("/v1/models/silero_vad/versions/{label}/scores"),
                Some(READER_TOKEN),
                None,
            )
            .await;
        assert_eq!(status, 200);
        let f1 = scores["scores"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["metric"] == "f1")
            .unwrap_or_else(|| panic!("no f1 score: {scores}"));
        assert!((f1["value"].as_f64().unwrap() - report["f1"].as_f64().unwrap()).abs() < 1e-9);
        assert_eq!(f1["dataset"], "eval.npz");
    }
    // Every sequence was ended: none is left open.
    for label in ["1", "2"] {
        let series =
            format!(r#"switchyard_sequences_open{{model="silero_vad",version="{label}"}}"#);
        assert_eq!(gateway.metric(&series).await, Some(0.0), "{series}");
    }
    // The objective policy plans requests per second, and a sequence model routes per sequence.
    let (status, refused) = gateway
        .admin(
            Method::PUT,
            "/v1/models/silero_vad/policy",
            Some(WRITER_TOKEN),
            Some(serde_json::json!({"mode": "objective", "metric": "f1"})),
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("sequences"),
        "{refused}"
    );
    // The in-gateway job sends independent examples only, and says so.
    let (status, refused) = gateway
        .admin(
            Method::POST,
            "/v1/models/silero_vad/evaluations",
            Some(WRITER_TOKEN),
            Some(serde_json::json!({"dataset": name})),
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("switchyard eval"),
        "{refused}"
    );
    gateway.stop().await;
}

/// A dataset of `examples` rows of zeros for digits, written beside the models (an artifact
/// root): large enough that its job runs for seconds.
fn zeros_dataset(repo: &Path, examples: usize) -> PathBuf {
    let row = format!("{{\"x\": [{}], \"label\": 0}}\n", vec!["0"; 64].join(","));
    let path = repo.join("zeros.jsonl");
    std::fs::write(&path, row.repeat(examples)).unwrap();
    path
}

async fn evaluation_state(gateway: &common::Process, id: i64) -> Value {
    common::must(
        gateway,
        Method::GET,
        &format!("/v1/models/digits/evaluations/{id}"),
        None,
    )
    .await
}

/// Cancelling stops the job and frees the gateway for the next one; a gateway killed while it
/// runs a job marks it failed when it starts again, on the real binary.
#[tokio::test]
async fn evaluations_can_be_cancelled_and_none_stays_running_after_a_crash() {
    let repo = digits_repository();
    let dataset = zeros_dataset(repo.path(), 200_000).display().to_string();
    let registry_dir = tempfile::tempdir().unwrap();
    let registry = format!(
        "sqlite://{}",
        registry_dir.path().join("registry.db").display()
    );
    let path = "/v1/models/digits/evaluations";
    let start = serde_json::json!({"dataset": dataset});

    let mut gateway = common::spawn_switchyard(repo.path(), &registry, &[]).await;
    let first = common::must(&gateway, Method::POST, path, Some(start.clone())).await;
    let first = first["evaluation"]["id"].as_i64().unwrap();
    for (id, status, says) in [
        ("x".to_owned(), 400, "not an evaluation id"),
        ("999".to_owned(), 404, "no evaluation"),
    ] {
        let (got, answer) =
            common::admin_as_writer(&gateway, Method::POST, &format!("{path}/{id}/cancel"), None)
                .await;
        assert_eq!(got, status, "{answer}");
        assert!(answer["error"].as_str().unwrap().contains(says), "{answer}");
    }
    let cancelled = common::must(
        &gateway,
        Method::POST,
        &format!("{path}/{first}/cancel"),
        None,
    )
    .await;
    assert_eq!(cancelled["evaluation"]["state"], "cancelled", "{cancelled}");
    let (status, again) = common::admin_as_writer(
        &gateway,
        Method::POST,
        &format!("{path}/{first}/cancel"),
        None,
    )
    .await;
    assert_eq!(status, 409, "{again}");
    // The job has stopped: the one-at-a-time slot is free again at once.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let second = loop {
        let (status, answer) =
            common::admin_as_writer(&gateway, Method::POST, path, Some(start.clone())).await;
        if status == 202 {
            break answer["evaluation"]["id"].as_i64().unwrap();
        }
        assert_eq!(status, 409, "{answer}");
        assert!(
            std::time::Instant::now() < deadline,
            "the cancelled job still holds the slot"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    // Its report was never written over the cancel.
    let record = evaluation_state(&gateway, first).await;
    assert_eq!(record["state"], "cancelled", "{record}");
    assert!(
        record["report"]["error"]
            .as_str()
            .unwrap()
            .contains("cancelled by"),
        "{record}"
    );

    // Killed mid-job, started again on the same registry: the job is failed with the reason.
    assert_eq!(evaluation_state(&gateway, second).await["state"], "running");
    gateway.child.kill().unwrap();
    gateway.child.wait().unwrap();
    drop(gateway);
    let gateway = common::spawn_switchyard(repo.path(), &registry, &[]).await;
    let record = evaluation_state(&gateway, second).await;
    assert_eq!(record["state"], "failed", "{record}");
    assert!(
        record["report"]["error"]
            .as_str()
            .unwrap()
            .contains("stopped before it finished"),
        "{record}"
    );
    // And the gateway runs evaluations again.
    let (status, answer) = common::admin_as_writer(&gateway, Method::POST, path, Some(start)).await;
    assert_eq!(status, 202, "{answer}");
}
