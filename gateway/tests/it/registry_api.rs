//! The management API over real registries (a SQLite file, a PostgreSQL server), with the
//! gateway serving what they say: live registration, traffic, aliases, removal, restarts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{
    MLP_IN, READER_TOKEN, TestGateway, WRITER_TOKEN, mlp_repository, models_dir, postgres_url,
    sample_inputs, spawn_switchyard, test_tokens,
};
use reqwest::Method;
use serde_json::{Value, json};

fn infer_body() -> Value {
    json!({"inputs": [{"name": "x", "shape": [1, MLP_IN], "datatype": "FP32", "data": sample_inputs(MLP_IN, 1)}]})
}

async fn start(repo: &std::path::Path, registry: Option<String>) -> TestGateway {
    TestGateway::start_with(repo, |config| {
        config.admin.tokens = test_tokens();
        if let Some(url) = registry {
            config.registry.url = url;
        }
    })
    .await
}

/// A second file holding the mlp model, to register as another version.
fn second_artifact(dir: &tempfile::TempDir) -> String {
    let path = dir.path().join("mlp-v2.onnx");
    std::fs::copy(dir.path().join("mlp/1/model.onnx"), &path).unwrap();
    path.display().to_string()
}

/// Sends requests naming no version until one is served by `version`, or fails after 1 s.
async fn wait_until_served_by(gateway: &TestGateway, version: &str) -> Duration {
    let started = Instant::now();
    loop {
        let (status, body) = gateway
            .post_json("/v2/models/mlp/infer", &infer_body())
            .await;
        assert_eq!(status, 200, "{body}");
        if body["model_version"] == version {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "version {version} not served within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn exercise(gateway: &TestGateway, repo: &tempfile::TempDir) {
    let w = Some(WRITER_TOKEN);

    // Auth: no token, a wrong one, a read-only one writing.
    assert_eq!(
        gateway.admin(Method::GET, "/v1/models", None, None).await.0,
        401
    );
    assert_eq!(
        gateway
            .admin(Method::GET, "/v1/models", Some("guess"), None)
            .await
            .0,
        401
    );
    assert_eq!(
        gateway
            .admin(Method::GET, "/v1/models", Some(READER_TOKEN), None)
            .await
            .0,
        200
    );
    let (status, body) = gateway
        .admin(
            Method::POST,
            "/v1/models",
            Some(READER_TOKEN),
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(status, 403, "{body}");

    // The repository was imported on first start.
    let (status, body) = gateway.admin(Method::GET, "/v1/models", w, None).await;
    assert_eq!(status, 200);
    assert_eq!(body["models"][0]["model"]["name"], "mlp");
    gateway.wait_for_serving("mlp", "1").await;
    let (_, mlp) = gateway.admin(Method::GET, "/v1/models/mlp", w, None).await;
    assert_eq!(mlp["versions"][0]["state"], "ready");

    // Models.
    let (status, body) = gateway
        .admin(
            Method::POST,
            "/v1/models",
            w,
            Some(json!({"name": "other", "description": "d"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        gateway
            .admin(
                Method::POST,
                "/v1/models",
                w,
                Some(json!({"name": "other"}))
            )
            .await
            .0,
        409
    );
    assert_eq!(
        gateway
            .admin(Method::POST, "/v1/models", w, Some(json!({"name": "a b"})))
            .await
            .0,
        400
    );
    assert_eq!(
        gateway
            .admin(Method::POST, "/v1/models", w, Some(json!({"nom": 1})))
            .await
            .0,
        400
    );
    assert_eq!(
        gateway
            .admin(Method::GET, "/v1/models/nope", w, None)
            .await
            .0,
        404
    );

    // Versions: registration, then every refusal.
    let artifact = second_artifact(repo);
    let (status, body) = gateway
        .admin(
            Method::POST,
            "/v1/models/mlp/versions",
            w,
            Some(json!({"runtime": "onnx", "artifact": artifact, "metadata": {"commit": "c0ffee"}, "config": {"max_batch_size": 16}})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["version"]["label"], "2");
    // Answered once the gateway has picked it up: loading, or already loaded (a small model).
    let state = body["version"]["state"].as_str().unwrap();
    assert!(["loading", "ready"].contains(&state), "{body}");
    let refusals = [
        (
            json!({"version": "2", "runtime": "onnx", "artifact": artifact}),
            409,
            "already has",
        ),
        (
            json!({"runtime": "onnx", "artifact": "/no/such/model.onnx"}),
            400,
            "cannot be read",
        ),
        (
            json!({"runtime": "torchscript", "artifact": artifact}),
            400,
            "not available",
        ),
        (
            json!({"runtime": "onnx", "artifact": artifact, "config": {"max_batch": 3}}),
            400,
            "invalid config",
        ),
        (json!({"runtime": "onnx"}), 400, "invalid request body"),
    ];
    for (request, expected, message) in refusals {
        let (status, body) = gateway
            .admin(Method::POST, "/v1/models/mlp/versions", w, Some(request))
            .await;
        assert_eq!(status, expected, "{body}");
        assert!(body["error"].as_str().unwrap().contains(message), "{body}");
    }
    let (status, _) = gateway
        .admin(
            Method::POST,
            "/v1/models/nope/versions",
            w,
            Some(json!({"runtime": "onnx", "artifact": artifact})),
        )
        .await;
    assert_eq!(status, 404);
    gateway.wait_for_serving("mlp", "2").await;
    let (_, version) = gateway
        .admin(Method::GET, "/v1/models/mlp/versions/2", w, None)
        .await;
    assert_eq!(version["metadata"]["commit"], "c0ffee");
    assert_eq!(version["state"], "ready");
    let (_, versions) = gateway
        .admin(Method::GET, "/v1/models/mlp/versions", w, None)
        .await;
    assert_eq!(versions["versions"].as_array().unwrap().len(), 2);
    assert_eq!(
        gateway
            .admin(Method::GET, "/v1/models/mlp/versions/9", w, None)
            .await
            .0,
        404
    );

    // Scores.
    let scores =
        json!({"metrics": {"accuracy": 0.91, "f1": 0.88}, "source": "nightly", "dataset": "val"});
    assert_eq!(
        gateway
            .admin(
                Method::POST,
                "/v1/models/mlp/versions/2/scores",
                w,
                Some(scores)
            )
            .await
            .0,
        201
    );
    let (status, body) = gateway
        .admin(Method::GET, "/v1/models/mlp/versions/2/scores", w, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["scores"].as_array().unwrap().len(), 2);
    assert_eq!(
        gateway
            .admin(
                Method::POST,
                "/v1/models/mlp/versions/9/scores",
                w,
                Some(json!({"metrics": {"a": 1}}))
            )
            .await
            .0,
        404
    );
    assert_eq!(
        gateway
            .admin(
                Method::POST,
                "/v1/models/mlp/versions/2/scores",
                w,
                Some(json!({"metrics": {}}))
            )
            .await
            .0,
        400
    );

    // Traffic: refusals write nothing; a change is served at once.
    let before = gateway
        .admin(Method::GET, "/v1/models/mlp/traffic", w, None)
        .await
        .1;
    for weights in [
        json!({"1": -5, "2": 10}),
        json!({"1": 0, "2": 0}),
        json!({"1": 1, "7": 1}),
        json!({}),
    ] {
        let (status, body) = gateway
            .admin(
                Method::PUT,
                "/v1/models/mlp/traffic",
                w,
                Some(json!({"weights": weights})),
            )
            .await;
        assert_eq!(status, 400, "{body}");
    }
    let after = gateway
        .admin(Method::GET, "/v1/models/mlp/traffic", w, None)
        .await
        .1;
    assert_eq!(
        before, after,
        "refused writes change nothing, not even the revision"
    );
    let (status, body) = gateway
        .admin(
            Method::PUT,
            "/v1/models/mlp/traffic",
            w,
            Some(json!({"weights": {"1": 0, "2": 100}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["revision"].as_i64().unwrap() > after["revision"].as_i64().unwrap());
    wait_until_served_by(gateway, "2").await;
    for _ in 0..20 {
        let (_, body) = gateway
            .post_json("/v2/models/mlp/infer", &infer_body())
            .await;
        assert_eq!(body["model_version"], "2", "all traffic on version 2");
    }

    // Aliases work wherever a version does.
    assert_eq!(
        gateway
            .admin(
                Method::PUT,
                "/v1/models/mlp/aliases/stable",
                w,
                Some(json!({"version": "1"}))
            )
            .await
            .0,
        200
    );
    assert_eq!(
        gateway
            .admin(
                Method::PUT,
                "/v1/models/mlp/aliases/x",
                w,
                Some(json!({"version": "9"}))
            )
            .await
            .0,
        400
    );
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let (status, body) = gateway
            .post_json("/v2/models/mlp/versions/stable/infer", &infer_body())
            .await;
        if status == 200 {
            assert_eq!(body["model_version"], "1");
            break;
        }
        assert!(Instant::now() < deadline, "alias not served: {body}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        gateway
            .admin(Method::DELETE, "/v1/models/mlp/aliases/stable", w, None)
            .await
            .0,
        200
    );
    assert_eq!(
        gateway
            .admin(Method::DELETE, "/v1/models/mlp/aliases/stable", w, None)
            .await
            .0,
        404
    );

    // Removal: refused while the version has traffic, then it drains and retires.
    let (status, body) = gateway
        .admin(Method::DELETE, "/v1/models/mlp/versions/2", w, None)
        .await;
    assert_eq!(status, 409, "{body}");
    gateway
        .admin(
            Method::PUT,
            "/v1/models/mlp/traffic",
            w,
            Some(json!({"weights": {"1": 1}})),
        )
        .await;
    assert_eq!(
        gateway
            .admin(Method::DELETE, "/v1/models/mlp/versions/2", w, None)
            .await
            .0,
        202
    );
    gateway
        .wait_for_version("mlp", "2", "state", "retired", Duration::from_secs(5))
        .await;
    assert_eq!(gateway.get("/v2/models/mlp/versions/2").await.0, 404);

    // The audit log.
    let (status, body) = gateway
        .admin(Method::GET, "/v1/events?after=0&limit=1000", w, None)
        .await;
    assert_eq!(status, 200);
    let actions: Vec<&str> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in [
        "model.create",
        "version.register",
        "version.state",
        "scores.add",
        "traffic.set",
        "alias.set",
        "alias.remove",
        "version.remove",
    ] {
        assert!(
            actions.contains(&action),
            "{action} missing from {actions:?}"
        );
    }
    let writer_events = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "traffic.set")
        .count();
    assert_eq!(writer_events, 2);
    assert_eq!(
        gateway
            .admin(Method::GET, "/v1/events?after=abc", w, None)
            .await
            .0,
        400
    );

    let (status, openapi) = gateway
        .admin(Method::GET, "/v1/openapi.json", None, None)
        .await;
    assert_eq!(status, 200);
    assert!(openapi["paths"]["/v1/models/{m}/traffic"]["put"].is_object());
    assert_eq!(
        gateway.admin(Method::GET, "/v1/nothing", w, None).await.0,
        404
    );
}

#[tokio::test]
async fn management_api_on_sqlite() {
    let repo = mlp_repository("max_batch_size = 64\n");
    let gateway = start(repo.path(), None).await;
    exercise(&gateway, &repo).await;
    gateway.stop().await;
}

#[tokio::test]
async fn management_api_on_postgres() {
    let repo = mlp_repository("max_batch_size = 64\n");
    let gateway = start(repo.path(), Some(postgres_url().await)).await;
    exercise(&gateway, &repo).await;
    gateway.stop().await;
}

#[tokio::test]
async fn two_gateway_processes_on_one_postgres_see_each_others_changes_within_a_second() {
    let repo = mlp_repository("max_batch_size = 64\n");
    let url = postgres_url().await;
    let mut first = spawn_switchyard(repo.path(), &url, &[]).await;
    let mut second = spawn_switchyard(repo.path(), &url, &[]).await;
    let artifact = second_artifact(&repo);
    let (status, _) = call(
        Method::POST,
        format!("{}/v1/models/mlp/versions", first.admin),
        Some(json!({"runtime": "onnx", "artifact": artifact})),
    )
    .await;
    assert_eq!(status, 201);
    for process in [&first, &second] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, version) = call(
                Method::GET,
                format!("{}/v1/models/mlp/versions/2", process.admin),
                None,
            )
            .await;
            if version["serving"] == "READY" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "version 2 never served: {version}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (status, _) = call(
        Method::PUT,
        format!("{}/v1/models/mlp/traffic", first.admin),
        Some(json!({"weights": {"2": 1}})),
    )
    .await;
    assert_eq!(status, 200);
    let changed = Instant::now();
    let client = reqwest::Client::new();
    loop {
        let response = client
            .post(format!("{}/v2/models/mlp/infer", second.http))
            .json(&infer_body())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        if body["model_version"] == "2" {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(1),
            "the other gateway did not follow within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for process in [&mut first, &mut second] {
        process.child.kill().unwrap();
        process.child.wait().unwrap();
    }
}

#[tokio::test]
async fn a_new_version_and_a_traffic_shift_under_load_lose_no_request() {
    let repo = mlp_repository("max_batch_size = 64\n");
    let gateway = std::sync::Arc::new(start(repo.path(), None).await);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..64)
        .map(|_| {
            let gateway = gateway.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut served: BTreeMap<String, u32> = BTreeMap::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (status, body) = gateway
                        .post_json("/v2/models/mlp/infer", &infer_body())
                        .await;
                    assert_eq!(status, 200, "{body}");
                    *served
                        .entry(body["model_version"].as_str().unwrap().to_owned())
                        .or_default() += 1;
                }
                served
            })
        })
        .collect();
    let w = Some(WRITER_TOKEN);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let artifact = second_artifact(&repo);
    let (status, _) = gateway
        .admin(
            Method::POST,
            "/v1/models/mlp/versions",
            w,
            Some(json!({"runtime": "onnx", "artifact": artifact})),
        )
        .await;
    assert_eq!(status, 201);
    // Traffic moves before version 2 is ready: requests keep going to version 1 until it is.
    assert_eq!(
        gateway
            .admin(
                Method::PUT,
                "/v1/models/mlp/traffic",
                w,
                Some(json!({"weights": {"1": 50, "2": 50}}))
            )
            .await
            .0,
        200
    );
    gateway.wait_for_serving("mlp", "2").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        gateway
            .admin(
                Method::PUT,
                "/v1/models/mlp/traffic",
                w,
                Some(json!({"weights": {"2": 100}}))
            )
            .await
            .0,
        200
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        gateway
            .admin(Method::DELETE, "/v1/models/mlp/versions/1", w, None)
            .await
            .0,
        202
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total: BTreeMap<String, u32> = BTreeMap::new();
    for client in clients {
        for (version, count) in client.await.expect("no client saw an error") {
            *total.entry(version).or_default() += count;
        }
    }
    assert!(total.get("1").copied().unwrap_or(0) > 0, "{total:?}");
    assert!(total.get("2").copied().unwrap_or(0) > 0, "{total:?}");
    std::sync::Arc::into_inner(gateway).unwrap().stop().await;
}

/// Runs the `switchyard` binary's command-line client against a gateway (off the runtime's
/// thread, which also serves the gateway), asking for JSON.
pub(crate) async fn cli(gateway: &TestGateway, args: &[&str]) -> (bool, Value, String) {
    let (ok, stdout, stderr) = cli_text(gateway, args).await;
    (
        ok,
        serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stderr,
    )
}

/// `serve --help` lists what serving reads, not the management API client's flags, which the
/// client commands still take before or after their name.
#[test]
fn serve_help_lists_only_what_serving_reads() {
    let help = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}: {output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let client_flags = ["--admin-url", "--token", "--output"];
    for command in [&["serve", "--help"][..], &["completions", "--help"]] {
        let text = help(command);
        assert!(
            client_flags.iter().all(|flag| !text.contains(flag)),
            "{command:?}:\n{text}"
        );
    }
    assert!(help(&["serve", "--help"]).contains("--http-addr"));
    // A client flag given to a command that ignores it still parses as the flag's type.
    assert!(help(&["completions", "bash", "-o", "json", "--token", "t"]).contains("switchyard"));
    let models = help(&["models", "list", "--help"]);
    assert!(
        client_flags.iter().all(|flag| models.contains(flag)),
        "{models}"
    );
}

/// The same, with the output as printed; `-o json` is the default here unless `args` say
/// otherwise (a later `-o` wins).
pub(crate) async fn cli_text(gateway: &TestGateway, args: &[&str]) -> (bool, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
    command
        .args([
            "--admin-url",
            &gateway.admin,
            "--token",
            WRITER_TOKEN,
            "-o",
            "json",
        ])
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

#[tokio::test]
async fn the_command_line_client_prints_tables_and_infers_the_runtime() {
    let toml = std::fs::read_to_string(models_dir().join("mlp/model.toml")).unwrap();
    let repo = mlp_repository(&toml);
    let gateway = start(repo.path(), None).await;
    // A TorchScript file registered without --runtime: its extension says libtorch.
    let torchscript = repo.path().join("mlp-v2.pt");
    std::fs::copy(models_dir().join("mlp/2/model.pt"), &torchscript).unwrap();
    let (ok, body, err) = cli(
        &gateway,
        &[
            "versions",
            "register",
            "mlp",
            "--artifact",
            &torchscript.display().to_string(),
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(body["version"]["runtime"], "libtorch", "{body}");
    gateway.wait_for_serving("mlp", "2").await;
    let (_, metadata) = gateway.get("/v2/models/mlp/versions/2").await;
    assert_eq!(metadata["platform"], "pytorch_libtorch");
    let (ok, _, err) = cli(
        &gateway,
        &[
            "versions",
            "register",
            "mlp",
            "--artifact",
            "/tmp/weights.bin",
        ],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("pass --runtime"), "{err}");

    cli(&gateway, &["traffic", "set", "mlp", "1=75", "2=25"]).await;
    cli(&gateway, &["aliases", "set", "mlp", "stable", "1"]).await;
    cli(&gateway, &["scores", "add", "mlp", "2", "accuracy=0.9"]).await;
    // Tables by default: a header, then a row per version.
    let (ok, table, err) = cli_text(&gateway, &["models", "list", "-o", "table"]).await;
    assert!(ok, "{err}");
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        [
            "MODEL", "VERSION", "STATE", "RUNTIME", "DEVICE", "REPLICAS", "WEIGHT", "ALIASES",
            "SCORES"
        ],
        "{table}"
    );
    assert_eq!(
        lines[1],
        [
            "mlp", "1", "ready", "onnx", "cpu", "1", "75%", "stable", "-"
        ],
        "{table}"
    );
    assert_eq!(
        lines[2],
        [
            "mlp",
            "2",
            "ready",
            "libtorch",
            "cpu",
            "1",
            "25%",
            "-",
            "accuracy=0.9"
        ],
        "{table}"
    );
    let (ok, table, _) = cli_text(&gateway, &["versions", "list", "mlp", "-o", "table"]).await;
    assert!(ok);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header[..3], ["VERSION", "STATE", "RUNTIME"], "{table}");
    assert_eq!(table.lines().count(), 3, "{table}");
    // JSON parses back to the API's answer; YAML names the same things.
    let (ok, listed, _) = cli(&gateway, &["versions", "list", "mlp"]).await;
    assert!(ok);
    assert_eq!(listed["versions"][1]["runtime"], "libtorch");
    let (ok, yaml, _) = cli_text(&gateway, &["traffic", "get", "mlp", "-o", "yaml"]).await;
    assert!(ok);
    assert!(
        yaml.contains("weights:\n") && yaml.contains("  \"1\": 75\n"),
        "{yaml}"
    );
    let (ok, table, _) = cli_text(&gateway, &["resources", "-o", "table"]).await;
    assert!(ok);
    assert!(
        table.starts_with("DEVICE") && table.contains("\nMODEL"),
        "{table}"
    );
    // A rollout from the command line: started, shown as a table, paused, aborted.
    let (ok, started, err) = cli(
        &gateway,
        &[
            "rollout",
            "start",
            "mlp",
            "--target",
            "2",
            "--steps",
            "10,100",
            "--hold",
            "60s",
            "--gates",
            r#"{"min_requests": 5}"#,
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(
        started["rollout"]["baseline"], "1",
        "the stable alias: {started}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let table = loop {
        let (ok, table, err) =
            cli_text(&gateway, &["rollout", "status", "mlp", "-o", "table"]).await;
        assert!(ok, "{err}");
        if table.contains("State:   running") {
            break table;
        }
        assert!(std::time::Instant::now() < deadline, "{table}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(
        table.starts_with("Rollout 1 of mlp: version 2 replacing 1"),
        "{table}"
    );
    assert!(
        table.contains("STAGE") && table.contains("1=90% 2=10%"),
        "{table}"
    );
    assert!(
        table.contains("(now)") && table.contains("Gates:"),
        "{table}"
    );
    let (ok, paused, _) = cli(&gateway, &["rollout", "pause", "mlp"]).await;
    assert!(ok);
    assert_eq!(paused["rollout"]["state"], "paused");
    let (ok, _, err) = cli(&gateway, &["rollout", "pause", "mlp"]).await;
    assert!(!ok && err.contains("409"), "{err}");
    let (ok, aborted, _) = cli(&gateway, &["rollout", "abort", "mlp"]).await;
    assert!(ok);
    assert_eq!(aborted["rollout"]["state"], "aborted");
    let (_, traffic) = gateway
        .admin(
            reqwest::Method::GET,
            "/v1/models/mlp/traffic",
            Some(WRITER_TOKEN),
            None,
        )
        .await;
    assert_eq!(traffic["weights"], serde_json::json!({"1": 100}));
    let (ok, list, _) = cli_text(&gateway, &["rollout", "list", "mlp", "-o", "table"]).await;
    assert!(
        ok && list.lines().nth(1).unwrap().contains("aborted"),
        "{list}"
    );

    // Completions come from the same definition.
    let (ok, script, _) = cli_text(&gateway, &["completions", "bash"]).await;
    assert!(ok && script.contains("switchyard") && script.contains("versions"));
    gateway.stop().await;
}

#[tokio::test]
async fn the_command_line_client_does_a_canary() {
    let repo = mlp_repository("max_batch_size = 64\n");
    let gateway = start(repo.path(), None).await;
    let artifact = second_artifact(&repo);
    let (ok, body, err) = cli(
        &gateway,
        &[
            "versions",
            "register",
            "mlp",
            "--artifact",
            &artifact,
            "--metadata",
            r#"{"note":"canary"}"#,
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(body["version"]["label"], "2");
    gateway.wait_for_serving("mlp", "2").await;
    let (ok, body, _) = cli(&gateway, &["versions", "show", "mlp", "2"]).await;
    assert!(ok);
    assert_eq!(
        body["config"]["max_batch_size"], 64,
        "inherited from version 1"
    );
    let (ok, body, err) = cli(&gateway, &["traffic", "set", "mlp", "1=90", "2=10"]).await;
    assert!(ok, "{err}");
    assert_eq!(body["weights"], json!({"1": 90, "2": 10}));
    let (ok, _, err) = cli(
        &gateway,
        &[
            "scores",
            "add",
            "mlp",
            "2",
            "accuracy=0.93",
            "--source",
            "eval",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let (ok, body, _) = cli(&gateway, &["scores", "list", "mlp", "2"]).await;
    assert!(ok);
    assert_eq!(body["scores"][0]["value"], 0.93);
    let (ok, _, err) = cli(&gateway, &["aliases", "set", "mlp", "canary", "2"]).await;
    assert!(ok, "{err}");
    let (ok, body, _) = cli(&gateway, &["models", "list"]).await;
    assert!(ok);
    assert_eq!(body["models"][0]["aliases"]["canary"], "2");
    let (ok, _, err) = cli(&gateway, &["traffic", "set", "mlp", "1=90", "9=10"]).await;
    assert!(!ok);
    assert!(err.contains("400"), "{err}");
    let (ok, _, err) = cli(&gateway, &["traffic", "set", "mlp", "1=-1"]).await;
    assert!(!ok);
    assert!(err.contains("not a whole number"), "{err}");
    // The split as served: about 10% on the canary.
    let mut canary = 0;
    for _ in 0..400 {
        let (_, body) = gateway
            .post_json("/v2/models/mlp/infer", &infer_body())
            .await;
        canary += u32::from(body["model_version"] == "2");
    }
    assert!((15..=70).contains(&canary), "{canary} of 400 on the canary");
    let (ok, body, err) = cli(
        &gateway,
        &[
            "policy",
            "set",
            "mlp",
            r#"{"mode": "sticky", "header": "x-user-id"}"#,
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(body["policy"]["header"], "x-user-id");
    let (ok, _, err) = cli(&gateway, &["policy", "set", "mlp", r#"{"mode": "sticky"}"#]).await;
    assert!(!ok);
    assert!(err.contains("400"), "{err}");
    let (ok, body, _) = cli(&gateway, &["policy", "experiment", "mlp"]).await;
    assert!(ok);
    let versions = body["versions"].as_array().unwrap();
    let served: u64 = versions
        .iter()
        .map(|v| v["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(served, 400, "{body}");
    gateway.stop().await;
}

async fn call(method: Method, url: String, body: Option<Value>) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(WRITER_TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn everything_acknowledged_survives_kill_9() {
    let repo = mlp_repository("max_batch_size = 64\n");
    let registry = format!(
        "sqlite://{}",
        repo.path().join("state/registry.db").display()
    );
    let artifact = second_artifact(&repo);
    let mut first = spawn_switchyard(repo.path(), &registry, &[]).await;
    let (status, _) = call(
        Method::POST,
        format!("{}/v1/models/mlp/versions", first.admin),
        Some(json!({"runtime": "onnx", "artifact": artifact})),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(
        call(
            Method::PUT,
            format!("{}/v1/models/mlp/traffic", first.admin),
            Some(json!({"weights": {"1": 30, "2": 70}}))
        )
        .await
        .0,
        200
    );
    assert_eq!(
        call(
            Method::PUT,
            format!("{}/v1/models/mlp/aliases/stable", first.admin),
            Some(json!({"version": "2"}))
        )
        .await
        .0,
        200
    );
    assert_eq!(
        call(
            Method::POST,
            format!("{}/v1/models/mlp/versions/2/scores", first.admin),
            Some(json!({"metrics": {"accuracy": 0.9}}))
        )
        .await
        .0,
        201
    );
    first.child.kill().unwrap();
    first.child.wait().unwrap();

    let mut second = spawn_switchyard(repo.path(), &registry, &[]).await;
    let (status, model) = call(Method::GET, format!("{}/v1/models/mlp", second.admin), None).await;
    assert_eq!(status, 200);
    assert_eq!(model["traffic"], json!({"1": 30, "2": 70}));
    assert_eq!(model["aliases"], json!({"stable": "2"}));
    let labels: Vec<&str> = model["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["1", "2"]);
    let (_, scores) = call(
        Method::GET,
        format!("{}/v1/models/mlp/versions/2/scores", second.admin),
        None,
    )
    .await;
    assert_eq!(scores["scores"][0]["value"], 0.9);
    let response = reqwest::Client::new()
        .post(format!(
            "{}/v2/models/mlp/versions/stable/infer",
            second.http
        ))
        .json(&infer_body())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["model_version"], "2");
    second.child.kill().unwrap();
    second.child.wait().unwrap();
}

/// The metric of registry writes that failed, as `/metrics` shows it (absent before the first).
async fn registry_write_failures(gateway: &TestGateway) -> f64 {
    gateway
        .metric("switchyard_registry_write_failures_total")
        .await
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_state_the_registry_refuses_is_written_once_it_accepts_again() {
    use sqlx::{Connection, Executor};
    let repo = mlp_repository("max_batch_size = 64\n");
    let url = postgres_url().await;
    let gateway = start(repo.path(), Some(url.clone())).await;
    // The registry refuses every change to a version's row, as a full disk or a read-only
    // replica would; registering (an insert) still works.
    let mut registry = sqlx::AnyConnection::connect(&url).await.unwrap();
    registry
        .execute(
            "CREATE FUNCTION refuse_updates() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$",
        )
        .await
        .unwrap();
    registry
        .execute(
            "CREATE TRIGGER refuse_updates BEFORE UPDATE ON versions \
             FOR EACH ROW EXECUTE FUNCTION refuse_updates()",
        )
        .await
        .unwrap();
    let failures_before = registry_write_failures(&gateway).await;
    let (status, body) = call(
        Method::POST,
        format!("{}/v1/models/mlp/versions", gateway.admin),
        Some(json!({"runtime": "onnx", "artifact": second_artifact(&repo)})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let version_url = format!("{}/v1/models/mlp/versions/2", gateway.admin);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, version) = call(Method::GET, version_url.clone(), None).await;
        if version["serving"] == "READY" {
            // Loaded and serving here, but the registry could not be told.
            assert_ne!(version["state"], "ready", "{version}");
            break;
        }
        assert!(Instant::now() < deadline, "{version}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = gateway
        .post_json("/v2/models/mlp/versions/2/infer", &infer_body())
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(registry_write_failures(&gateway).await > failures_before);

    // Once the registry accepts writes again, the retry records the state.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    registry
        .execute("DROP TRIGGER refuse_updates ON versions")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, version) = call(Method::GET, version_url.clone(), None).await;
        if version["state"] == "ready" {
            break;
        }
        assert!(Instant::now() < deadline, "never recorded: {version}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gateway.stop().await;
}
