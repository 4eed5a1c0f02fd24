//! The dashboard: its page and assets as the management listener serves them, the figures it
//! charts, and the page itself in a real browser (Debian's chromium driven by playwright-core,
//! `gateway/tests/browser/dashboard.mjs`) against a real gateway under load.
//!
//! `SWITCHYARD_SCREENSHOTS=docs/dashboard cargo nextest run -p switchyard-gateway -E 'test(/^dashboard::/)'` also writes a
//! screenshot of each panel under load there.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{
    READER_TOKEN, TestGateway, WRITER_TOKEN, mlp_onnx_and_torchscript, mlp_repository, models_dir,
    repo_root, test_tokens,
};
use reqwest::Method;
use serde_json::{Value, json};
use switchyard_gateway::config::{ByteSize, DeviceConfig};

const GIB: u64 = 1024 * 1024 * 1024;

fn mlp_request() -> Value {
    json!({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": vec![0.25f32; 64]}]})
}

#[tokio::test]
async fn the_page_and_its_assets_come_from_the_binary_with_a_strict_policy() {
    let repo = mlp_repository("");
    let gateway = TestGateway::start_with(repo.path(), |config| {
        config.admin.tokens = test_tokens();
    })
    .await;
    let client = reqwest::Client::new();

    // The page holds no data, so it loads without a token; the API behind it does not.
    let page = client.get(&gateway.admin).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let policy = headers["content-security-policy"].to_str().unwrap();
    assert!(
        policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"),
        "{policy}"
    );
    assert_eq!(headers["x-frame-options"], "DENY");
    let html = page.text().await.unwrap();
    assert!(html.contains("assets/uPlot.iife.min.js") && html.contains("assets/dashboard.js"));
    // No script from anywhere else: it works offline.
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );

    for (asset, kind) in [
        ("dashboard.js", "text/javascript"),
        ("uPlot.iife.min.js", "text/javascript"),
        ("uPlot.min.css", "text/css"),
        ("dashboard.css", "text/css"),
    ] {
        let response = client
            .get(format!("{}/assets/{asset}", gateway.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{asset}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(kind),
            "{asset}"
        );
        assert!(!response.bytes().await.unwrap().is_empty(), "{asset}");
    }
    for missing in ["/assets/nope.js", "/assets/..%2Fmod.rs", "/assets/"] {
        let response = client
            .get(format!("{}{missing}", gateway.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{missing}");
        let error: Value = response.json().await.unwrap();
        assert!(error["error"].is_string(), "{missing}: {error}");
    }
    let (status, _) = gateway
        .admin(Method::GET, "/v1/models/mlp/figures", None, None)
        .await;
    assert_eq!(
        status, 401,
        "the figures need a token like the rest of the API"
    );
    gateway.stop().await;
}

#[tokio::test]
async fn without_tokens_the_page_answers_loopback_names_only() {
    let repo = mlp_repository("");
    let gateway = TestGateway::start(repo.path()).await;
    let client = reqwest::Client::new();
    let local = client.get(&gateway.admin).send().await.unwrap();
    assert_eq!(local.status(), 200);
    // A DNS-rebinding page would reach this listener under its own name.
    for path in ["/", "/assets/dashboard.js"] {
        let rebinding = client
            .get(format!("{}{path}", gateway.admin))
            .header("host", "evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(rebinding.status(), 403, "{path}");
    }
    gateway.stop().await;
}

#[tokio::test]
async fn the_figures_hold_each_interval_of_each_version() {
    let repo = mlp_repository("");
    let gateway = TestGateway::start_with(repo.path(), |config| {
        config.admin.tokens = test_tokens();
    })
    .await;
    let (status, _) = gateway
        .admin(
            Method::GET,
            "/v1/models/nothing/figures",
            Some(READER_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 404);

    // Requests until two samples with traffic have been taken.
    let deadline = Instant::now() + Duration::from_secs(30);
    let figures = loop {
        for _ in 0..50 {
            let (status, body) = gateway
                .post_json("/v2/models/mlp/infer", &mlp_request())
                .await;
            assert_eq!(status, 200, "{body}");
        }
        let (status, figures) = gateway
            .admin(
                Method::GET,
                "/v1/models/mlp/figures",
                Some(READER_TOKEN),
                None,
            )
            .await;
        assert_eq!(status, 200, "{figures}");
        let rates = figures["versions"]["1"]["requests_per_s"].as_array();
        let busy = rates.map_or(0, |rates| {
            rates
                .iter()
                .filter(|rate| rate.as_f64().is_some_and(|r| r > 0.0))
                .count()
        });
        if busy >= 2 {
            break figures;
        }
        assert!(Instant::now() < deadline, "no two busy samples: {figures}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let times = figures["times"].as_array().unwrap();
    let version = &figures["versions"]["1"];
    for series in ["requests_per_s", "error_rate", "p50_ms", "p99_ms"] {
        assert_eq!(
            version[series].as_array().unwrap().len(),
            times.len(),
            "{series} is aligned with the times: {figures}"
        );
    }
    assert!(
        times
            .windows(2)
            .all(|pair| pair[0].as_f64() < pair[1].as_f64())
    );
    // A busy interval has its own quantiles, and no error.
    let busy = version["requests_per_s"]
        .as_array()
        .unwrap()
        .iter()
        .rposition(|rate| rate.as_f64().is_some_and(|r| r > 0.0))
        .unwrap();
    let p50 = version["p50_ms"][busy].as_f64().unwrap();
    let p99 = version["p99_ms"][busy].as_f64().unwrap();
    assert!(0.0 < p50 && p50 <= p99, "{figures}");
    assert_eq!(version["error_rate"][busy].as_f64(), Some(0.0));
    assert_eq!(figures["interval_s"].as_f64(), Some(2.0));
    gateway.stop().await;
}

fn append(path: &std::path::Path) -> std::fs::File {
    std::fs::OpenOptions::new().append(true).open(path).unwrap()
}

/// The browser test's tools, installed by scripts/setup.
fn browser_tools() -> (PathBuf, PathBuf) {
    let script = repo_root().join("gateway/tests/browser/dashboard.mjs");
    let modules = repo_root().join("gateway/tests/browser/node_modules/playwright-core");
    let chromium =
        PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    assert!(
        modules.is_dir() && chromium.is_file(),
        "playwright-core or chromium is missing: run scripts/setup (scripts/test does it for you)"
    );
    (script, chromium)
}

#[tokio::test]
async fn the_dashboard_in_a_real_browser() {
    let (script, chromium) = browser_tools();
    let repo = mlp_onnx_and_torchscript("");
    let gateway = TestGateway::start_with(repo.path(), |config| {
        config.admin.tokens = test_tokens();
        config.devices = vec![DeviceConfig {
            id: "cpu".into(),
            memory: Some(ByteSize(GIB)),
            reserve: ByteSize(0),
        }];
    })
    .await;
    gateway.wait_for_serving("mlp", "2").await;
    // The gateway runs on this test's runtime, so the browser test is waited for without
    // blocking it.
    let output = tempfile::NamedTempFile::new().unwrap();
    let mut command = std::process::Command::new("node");
    command
        .arg(&script)
        .env("ADMIN_URL", &gateway.admin)
        .env("HTTP_URL", &gateway.base)
        .env("WRITER_TOKEN", WRITER_TOKEN)
        .env("READER_TOKEN", READER_TOKEN)
        .env("CHROMIUM", &chromium)
        .env(
            "MLP_ARTIFACT",
            models_dir().join("mlp/1/model.onnx").display().to_string(),
        )
        .stdout(append(output.path()))
        .stderr(append(output.path()));
    if let Ok(folder) = std::env::var("SWITCHYARD_SCREENSHOTS") {
        command.env("SCREENSHOTS", repo_root().join(folder));
    }
    let mut node = common::Child(command.spawn().expect("node runs"));
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = node.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the browser test ran past 180 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let printed = std::fs::read_to_string(output.path()).unwrap();
    println!("{printed}");
    assert!(status.success(), "the browser test failed:\n{printed}");

    // What the page did is in the registry, whoever looks.
    let (status, traffic) = gateway
        .admin(
            Method::GET,
            "/v1/models/mlp/traffic",
            Some(READER_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 200);
    // The page set {1: 100, 2: 0}; the rollout it then aborted gave the baseline all of it.
    assert_eq!(traffic["weights"], json!({"1": 100}));
    let (_, rollout) = gateway
        .admin(
            Method::GET,
            "/v1/models/mlp/rollouts/latest",
            Some(READER_TOKEN),
            None,
        )
        .await;
    assert_eq!(rollout["state"], "aborted", "{rollout}");
    assert!(
        rollout["reason"]
            .as_str()
            .unwrap()
            .starts_with("aborted by token:")
    );
    let (_, events) = gateway
        .admin(
            Method::GET,
            "/v1/events?limit=1000",
            Some(READER_TOKEN),
            None,
        )
        .await;
    let by_page: Vec<&Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["action"] == "traffic.set")
        .collect();
    assert_eq!(
        by_page.len(),
        1,
        "one weight change, the writer's: {events}"
    );
    assert!(by_page[0]["actor"].as_str().unwrap().starts_with("token:"));
    gateway.stop().await;
}
