//! The management API without tokens, as a web page in a browser on the same machine would
//! try it: other Host names, other origins and non-JSON writes are refused; and artifacts must
//! be regular files under the artifact roots, whatever the caller.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::time::{Duration, Instant};

use common::{TestGateway, mlp_repository};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn an_open_management_api_answers_local_programs_only() {
    let repo = mlp_repository("");
    let gateway = TestGateway::start(repo.path()).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/models", gateway.admin);
    let body = json!({"name": "made-by-a-page"}).to_string();

    let rebinding = client
        .get(&url)
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(rebinding.status(), StatusCode::FORBIDDEN);
    let error: serde_json::Value = rebinding.json().await.unwrap();
    assert!(error["error"].as_str().unwrap().contains("loopback"));

    let form = client
        .post(&url)
        .header("content-type", "text/plain")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    for (name, value) in [
        ("origin", "http://evil.example"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let cross = client
            .post(&url)
            .header("content-type", "application/json")
            .header(name, value)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(cross.status(), StatusCode::FORBIDDEN, "{name}");
    }
    // None of these wrote anything; a local program's JSON does.
    let (status, models) = gateway
        .admin(reqwest::Method::GET, "/v1/models", None, None)
        .await;
    assert_eq!(status, 200);
    assert!(!models.to_string().contains("made-by-a-page"));
    let local = client
        .post(&url)
        .header("content-type", "application/json")
        .header("origin", "http://localhost:3000")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(local.status(), StatusCode::CREATED);
    gateway.stop().await;
}

#[tokio::test]
async fn artifacts_must_be_regular_files_under_the_roots() {
    let repo = mlp_repository("");
    let gateway = TestGateway::start(repo.path()).await;
    let register = |artifact: String| {
        let client = reqwest::Client::new();
        let url = format!("{}/v1/models/mlp/versions", gateway.admin);
        async move {
            let response = client
                .post(url)
                .json(&json!({"runtime": "onnx", "artifact": artifact}))
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body: serde_json::Value = response.json().await.unwrap();
            (
                status,
                body["error"].as_str().unwrap_or_default().to_owned(),
            )
        }
    };
    let root = std::fs::canonicalize(repo.path()).unwrap();
    // Outside the roots, existing or not: the same refusal, naming the roots.
    let (status, outside) = register("/etc/hostname".into()).await;
    assert_eq!(status, 400);
    assert!(outside.contains(&root.display().to_string()), "{outside}");
    let (_, missing) = register("/no/such/model.onnx".into()).await;
    assert_eq!(
        outside.replace("/etc/hostname", "X"),
        missing.replace("/no/such/model.onnx", "X"),
        "a refusal never tells whether another path exists"
    );
    // A symlink under a root that leads out of it.
    let link = repo.path().join("escape.onnx");
    std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
    let (status, _) = register(link.display().to_string()).await;
    assert_eq!(status, 400);
    // A FIFO under a root: refused at once, and the gateway goes on serving.
    let fifo = repo.path().join("fifo.onnx");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let started = Instant::now();
    let (status, _) = register(fifo.display().to_string()).await;
    assert_eq!(status, 400);
    assert!(started.elapsed() < Duration::from_secs(1));
    let (status, _) = gateway.get("/v2/health/ready").await;
    assert_eq!(status, 200);
    // A regular file under a root is taken.
    let copy = repo.path().join("v9.onnx");
    std::fs::copy(repo.path().join("mlp/1/model.onnx"), &copy).unwrap();
    let (status, error) = register(copy.display().to_string()).await;
    assert_eq!(status, 201, "{error}");
    gateway.stop().await;
}

#[tokio::test]
async fn aliases_wait_for_a_loading_version_and_refuse_a_failed_one() {
    let repo = mlp_repository("");
    let gateway = TestGateway::start(repo.path()).await;
    let client = reqwest::Client::new();
    let admin = |path: &str| format!("{}{path}", gateway.admin);

    // A version that fails to load: no alias may name it.
    let corrupt = repo.path().join("corrupt.onnx");
    std::fs::write(&corrupt, b"not a model").unwrap();
    let response = client
        .post(admin("/v1/models/mlp/versions"))
        .json(&json!({"version": "5", "runtime": "onnx", "artifact": corrupt}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, version) = gateway
            .admin(
                reqwest::Method::GET,
                "/v1/models/mlp/versions/5",
                None,
                None,
            )
            .await;
        if version["state"] == "failed" {
            break;
        }
        assert!(Instant::now() < deadline, "{version}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = client
        .put(admin("/v1/models/mlp/aliases/canary"))
        .json(&json!({"version": "5"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::CONFLICT);

    // A version still loading: a request through its alias waits for it instead of 503.
    let heavy = common::models_dir().join("mlp_heavy/1/model.onnx");
    let registered: serde_json::Value = client
        .post(admin("/v1/models/mlp/versions"))
        .json(&json!({"version": "6", "runtime": "onnx", "artifact": heavy}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let alias = client
        .put(admin("/v1/models/mlp/aliases/canary"))
        .json(&json!({"version": "6"}))
        .send()
        .await
        .unwrap();
    assert_eq!(alias.status(), StatusCode::OK);
    // Once this gateway's table has the alias, a request through it is answered, whether the
    // version has finished loading or not.
    let deadline = Instant::now() + Duration::from_secs(10);
    let state_then = loop {
        let (status, metadata) = gateway.get("/v2/models/mlp/versions/canary").await;
        if status != 404 {
            break metadata["state"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "the alias never reached the table"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let body = json!({"inputs": [{"name": "x", "shape": [1, 512], "datatype": "FP32",
                                  "data": vec![0.5f32; 512]}]});
    let (status, answer) = gateway
        .post_json("/v2/models/mlp/versions/canary/infer", &body)
        .await;
    assert_eq!(
        status, 200,
        "{answer} (registered as {}, {state_then} when first seen)",
        registered["version"]["state"]
    );
    assert_eq!(answer["model_version"], "6");
    gateway.stop().await;
}
