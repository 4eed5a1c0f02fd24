//! Payload capture on real gateways with real clients and real sinks: the captured fraction
//! follows the sampling rate; each event carries the request and its answer or error, the
//! version and why it was chosen, the key's name, the latency, the shadow's comparison and
//! the feedback id, with redacted tensors kept without their data; an HTTP sink receives
//! CloudEvents, and one that is down or slow changes no answer while its losses are counted;
//! a killed gateway loses no event it had written, and a stopped one writes what it took;
//! bad captures are refused with the API's error.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{
    MLP_IN, TestGateway, WRITER_TOKEN, models_dir, repo_root, spawn_switchyard, test_tokens,
};

fn mlp_body(seed: usize) -> Value {
    let x: Vec<f32> = (0..MLP_IN).map(|i| ((i + seed) % 7) as f32 / 8.0).collect();
    json!({"inputs": [{"name": "x", "shape": [1, MLP_IN], "datatype": "FP32", "data": x}]})
}

/// Every event of a file sink's folder, rotated files first.
fn events(folder: &Path) -> Vec<Value> {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries.map(|entry| entry.unwrap().path()).collect();
    // capture-<ms>.jsonl sort before capture.jsonl, oldest first.
    files.sort();
    files
        .iter()
        .flat_map(|file| {
            std::fs::read_to_string(file)
                .unwrap()
                .lines()
                .map(|line| {
                    serde_json::from_str::<Value>(line)
                        .unwrap_or_else(|e| panic!("not a JSON event ({e}): {line}"))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Waits, at most 15 s, until the folder holds `count` events.
async fn until_events(folder: &Path, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let found = events(folder);
        if found.len() >= count {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{} events of {count} after 15 s",
            found.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn set_capture(gateway: &TestGateway, model: &str, spec: Value) -> (u16, Value) {
    gateway
        .admin(
            Method::PUT,
            &format!("/v1/models/{model}/capture"),
            Some(WRITER_TOKEN),
            Some(spec),
        )
        .await
}

/// `GET /v1/models/{model}/capture`: the model's capture as this gateway runs it.
async fn capture_of(gateway: &TestGateway, model: &str) -> Value {
    let path = format!("/v1/models/{model}/capture");
    let (status, answer) = gateway
        .admin(Method::GET, &path, Some(WRITER_TOKEN), None)
        .await;
    assert_eq!(status, 200, "{answer}");
    answer
}

/// Puts a capture in force: sets it, then waits until this gateway says the spec is the one
/// it runs (the change feed carries it).
async fn capture_in_force(gateway: &TestGateway, model: &str, spec: Value) {
    let (status, answer) = set_capture(gateway, model, spec).await;
    assert_eq!(status, 200, "{answer}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = capture_of(gateway, model).await;
        if now["capture"]["in_force"] == true {
            return;
        }
        assert!(Instant::now() < deadline, "capture never in force: {now}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn capture_config(root: &Path) -> impl FnOnce(&mut switchyard_gateway::config::Config) {
    let root = root.to_path_buf();
    move |config| {
        config.admin.tokens = test_tokens();
        config.capture.roots = vec![root];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sample_is_captured_with_its_answer_its_version_and_why() {
    let root = tempfile::tempdir().unwrap();
    let gateway = TestGateway::start_with(&models_dir(), capture_config(root.path())).await;
    let folder = root.path().join("mlp");

    // A quarter of 2,000 requests, through a tenant's key.
    let (status, made) = gateway
        .admin(
            Method::POST,
            "/v1/keys",
            Some(WRITER_TOKEN),
            Some(json!({"name": "team-a"})),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    let key = made["key"].as_str().unwrap().to_owned();
    crate::keys::in_force(&gateway, "mlp", &[&key]).await;
    capture_in_force(
        &gateway,
        "mlp",
        json!({"sample": 0.25, "sinks": [{"file": "mlp"}]}),
    )
    .await;
    let before = events(&folder).len();
    const REQUESTS: usize = 2000;
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (client, url, key, sent) = (
            gateway.client.clone(),
            gateway.url("/v2/models/mlp/infer"),
            key.clone(),
            sent.clone(),
        );
        clients.spawn(async move {
            while sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < REQUESTS {
                let response = client
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&mlp_body(0))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
    let captured = gateway
        .metric(r#"switchyard_capture_events_total{model="mlp",outcome="captured"}"#)
        .await
        .unwrap() as usize;
    let found = until_events(&folder, before + captured).await.len() - before;
    assert_eq!(found, captured, "every captured event is written");
    // Binomial(2000, 0.25): 500 with a standard deviation of 19.4; five of them either way.
    assert!(
        (403..=597).contains(&(captured - before)),
        "{} of {REQUESTS} captured at 0.25",
        captured - before
    );
    let (_, keys) = gateway
        .admin(Method::GET, "/v1/keys", Some(WRITER_TOKEN), None)
        .await;
    assert_eq!(
        keys["keys"][0]["figures"]["capture"]["captured"].as_u64(),
        Some(captured as u64 - before as u64),
        "the key's figures count its captured events: {keys}"
    );

    // Everything, the input redacted, with the ONNX version's TorchScript twin as a shadow.
    let (status, _) = gateway
        .admin(
            Method::PUT,
            "/v1/models/mlp/policy",
            Some(WRITER_TOKEN),
            Some(json!({"mode": "fixed", "shadow": {"version": "2", "fraction": 1.0}})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = gateway
        .admin(
            Method::PUT,
            "/v1/models/mlp/traffic",
            Some(WRITER_TOKEN),
            Some(json!({"weights": {"1": 100}})),
        )
        .await;
    assert_eq!(status, 200);
    capture_in_force(
        &gateway,
        "mlp",
        json!({"sample": 1.0, "redact": ["x"], "sinks": [{"file": "mlp"}]}),
    )
    .await;
    // Routed by the policy until the shadow is in force too (the policy's reload).
    let deadline = Instant::now() + Duration::from_secs(10);
    let routed = loop {
        let count = events(&folder).len();
        let answered = gateway
            .client
            .post(gateway.url("/v2/models/mlp/infer"))
            .bearer_auth(&key)
            .json(&mlp_body(3))
            .send()
            .await
            .unwrap();
        assert_eq!(answered.status(), 200);
        let answered: Value = answered.json().await.unwrap();
        let event = until_events(&folder, count + 1).await.pop().unwrap();
        if event["shadow"]["compared"] == true && event["chosen"]["by"] == "policy" {
            break (answered, event);
        }
        assert!(Instant::now() < deadline, "no shadowed event: {event}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (answered, event) = routed;
    assert_eq!(event["model"], "mlp");
    assert_eq!(event["version"], "1");
    assert_eq!(event["chosen"]["policy"], "fixed", "{event}");
    assert_eq!(event["chosen"]["weight"], 100);
    assert_eq!(event["key"], "team-a");
    assert_eq!(event["protocol"], "http");
    assert_eq!(event["priority"], 5);
    assert_eq!(event["feedback_id"], answered["id"], "{event}");
    assert!(event["latency_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(
        event["request"]["inputs"][0],
        json!({"name": "x", "datatype": "FP32", "shape": [1, MLP_IN], "redacted": true})
    );
    assert_eq!(event["response"]["outputs"][0]["name"], "y");
    assert_eq!(
        event["response"]["outputs"][0]["data"], answered["outputs"][0]["data"],
        "the answer as the client got it"
    );
    assert_eq!(event["shadow"]["version"], "2");
    assert!(
        event["shadow"]["comparison"]["max_abs_diff"]
            .as_f64()
            .unwrap()
            < 1e-4
    );
    assert!(
        !event.to_string().contains(&key),
        "the key itself is never captured"
    );

    // A pin, and an error: the answer the caller got, in the event.
    let count = events(&folder).len();
    let response = gateway
        .client
        .post(gateway.url("/v2/models/mlp/versions/2/infer"))
        .bearer_auth(&key)
        .json(&json!({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let event = until_events(&folder, count + 1).await.pop().unwrap();
    assert_eq!(event["chosen"]["by"], "pin", "{event}");
    assert_eq!(event["asked"], "2");
    assert_eq!(event["error"]["status"], 400, "{event}");
    assert!(event["response"].is_null());
    gateway.stop().await;
}

/// A loopback HTTP server recording what it receives: every request's headers and body, each
/// answered after `delay`.
async fn recording_sink(delay: Duration) -> (String, Arc<Mutex<Vec<(http::HeaderMap, Value)>>>) {
    let received: Arc<Mutex<Vec<(http::HeaderMap, Value)>>> = Arc::default();
    let kept = received.clone();
    let app = axum::Router::new().route(
        "/events",
        axum::routing::post(move |headers: http::HeaderMap, body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                tokio::time::sleep(delay).await;
                kept.lock()
                    .unwrap()
                    .push((headers, serde_json::from_slice(&body).unwrap()));
                http::StatusCode::ACCEPTED
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/events"), received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_sink_takes_cloudevents_and_a_down_or_slow_one_changes_no_answer() {
    let root = tempfile::tempdir().unwrap();
    let gateway = TestGateway::start_with(&models_dir(), |config| {
        capture_config(root.path())(config);
        // Queues small enough for the slow sink to fill its own within the test, and large
        // enough for the file's and the encoder's to take a loaded machine's pauses.
        config.capture.queue_events = 256;
        config.capture.http_timeout =
            switchyard_gateway::config::HumanDuration(Duration::from_secs(1));
        config.capture.http_concurrency = 2;
    })
    .await;
    let (good, received) = recording_sink(Duration::ZERO).await;
    let (slow, _) = recording_sink(Duration::from_secs(5)).await;
    // A port nothing listens on: every delivery is refused.
    let down = format!("http://127.0.0.1:{}/events", crate::common::free_port());
    let folder = root.path().join("all");
    capture_in_force(
        &gateway,
        "mlp",
        json!({"sample": 1.0, "sinks": [{"http": good}, {"http": slow}, {"http": down}, {"file": "all"}]}),
    )
    .await;

    const REQUESTS: usize = 400;
    let mut clients = tokio::task::JoinSet::new();
    for worker in 0..6 {
        let (client, url) = (gateway.client.clone(), gateway.url("/v2/models/mlp/infer"));
        clients.spawn(async move {
            for seed in (worker..REQUESTS).step_by(6) {
                let response = client
                    .post(&url)
                    .json(&mlp_body(seed))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200, "capture never fails a request");
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
    // The file sink, beside the slow and the down one, writes every event.
    let written = until_events(&folder, REQUESTS).await;
    assert_eq!(written.len(), REQUESTS);

    let sink_metric = |sink: &str, outcome: &str| {
        format!(r#"switchyard_capture_sink_events_total{{sink="{sink}",outcome="{outcome}"}}"#)
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let down_lost = gateway
            .metric(&sink_metric(&down, "failed"))
            .await
            .unwrap_or(0.0)
            + gateway
                .metric(&sink_metric(&down, "dropped"))
                .await
                .unwrap_or(0.0);
        let slow_dropped = gateway
            .metric(&sink_metric(&slow, "dropped"))
            .await
            .unwrap_or(0.0);
        let good_written = gateway
            .metric(&sink_metric(&good, "written"))
            .await
            .unwrap_or(0.0);
        let mut good_accounted = 0.0;
        for outcome in ["written", "dropped", "failed"] {
            good_accounted += gateway
                .metric(&sink_metric(&good, outcome))
                .await
                .unwrap_or(0.0);
        }
        if down_lost as usize == REQUESTS
            && slow_dropped > 0.0
            && good_accounted as usize == REQUESTS
            && good_written > 0.0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "down lost {down_lost}, slow dropped {slow_dropped}, good wrote {good_written} of {good_accounted}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // CloudEvents in binary content mode, the body the same event as the file's.
    let received = received.lock().unwrap().clone();
    assert!(!received.is_empty());
    let (headers, body) = &received[0];
    assert_eq!(headers["ce-specversion"], "1.0");
    assert_eq!(headers["ce-type"], "io.switchyard.inference.capture");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["ce-inferenceservicename"], "mlp");
    assert_eq!(
        headers["ce-id"].to_str().unwrap(),
        body["event_id"].as_str().unwrap()
    );
    assert!(headers.contains_key("ce-source") && headers.contains_key("ce-time"));
    let same = written
        .iter()
        .find(|event| event["event_id"] == body["event_id"])
        .expect("the HTTP sink's event is in the file too");
    assert_eq!(same, body);
    gateway.stop().await;
}

#[tokio::test]
async fn bad_captures_are_refused_with_the_reason() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let gateway = TestGateway::start_with(&models_dir(), capture_config(root.path())).await;
    let sink = json!([{"file": "mlp"}]);
    let many: Vec<Value> = (0..9).map(|i| json!({"file": format!("f{i}")})).collect();
    let refused = [
        (json!({"sample": 0, "sinks": sink}), "sample"),
        (json!({"sample": 1.5, "sinks": sink}), "sample"),
        (json!({"sample": 0.5, "sinks": []}), "1 to 8 sinks"),
        (json!({"sample": 0.5, "sinks": many}), "1 to 8 sinks"),
        (
            json!({"sample": 0.5, "sinks": [{"http": "ftp://127.0.0.1/x"}]}),
            "not http",
        ),
        (
            json!({"sample": 0.5, "sinks": [{"http": "file:///etc/passwd"}]}),
            "not http",
        ),
        (
            json!({"sample": 0.5, "sinks": [{"http": "not a url"}]}),
            "sink URL",
        ),
        (
            json!({"sample": 0.5, "sinks": [{"http": "http://u:p@127.0.0.1/"}]}),
            "credentials",
        ),
        (
            json!({"sample": 0.5, "sinks": [{"file": "../escape"}]}),
            "'..'",
        ),
        (
            json!({"sample": 0.5, "sinks": [{"file": outside.path().display().to_string()}]}),
            "outside the allowed roots",
        ),
        (
            json!({"sample": 0.5, "sinks": [{"file": "a"}, {"file": "a"}]}),
            "twice",
        ),
        (
            json!({"sample": 0.5, "sinks": [{"file": "a"}, {"file": "./a/"}]}),
            "twice",
        ),
        (
            json!({"sample": 0.5, "sinks": sink, "extra": 1}),
            "unknown field",
        ),
        (
            json!({"sample": 0.5, "sinks": [{"ftp": "x"}]}),
            "unknown variant",
        ),
    ];
    for (spec, reason) in refused {
        let (status, body) = set_capture(&gateway, "mlp", spec.clone()).await;
        assert_eq!(status, 400, "{spec} -> {body}");
        assert!(
            body["error"].as_str().unwrap().contains(reason),
            "{spec}: {body} should say {reason}"
        );
    }
    // A link inside the root that leads outside it.
    std::os::unix::fs::symlink(outside.path(), root.path().join("link")).unwrap();
    let (status, body) = set_capture(
        &gateway,
        "mlp",
        json!({"sample": 1.0, "sinks": [{"file": "link/inner"}]}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("leads outside the allowed roots"),
        "{body}"
    );
    assert!(
        !outside.path().join("inner").exists(),
        "nothing made outside the roots"
    );

    let (status, _) = set_capture(&gateway, "nope", json!({"sample": 1.0, "sinks": sink})).await;
    assert_eq!(status, 404);
    let (status, _) = gateway
        .admin(
            Method::PUT,
            "/v1/models/mlp/capture",
            Some(crate::common::READER_TOKEN),
            Some(json!({"sample": 1.0, "sinks": sink})),
        )
        .await;
    assert_eq!(status, 403, "a reader cannot capture");
    let (status, _) = gateway
        .admin(
            Method::DELETE,
            "/v1/models/mlp/capture",
            Some(WRITER_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let answer = capture_of(&gateway, "mlp").await;
    assert!(answer["capture"].is_null(), "{answer}");
    gateway.stop().await;
}

/// The real binary, killed with SIGKILL once its events are written and started again: every
/// written event is still there, whole, and the next ones follow them; then stopped with
/// SIGTERM straight after its answers: what it captured is written before it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_loses_no_written_event() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("capture");
    let config = dir.path().join("switchyard.toml");
    std::fs::write(
        &config,
        format!("[capture]\nroots = [{:?}]\n", root.display().to_string()),
    )
    .unwrap();
    let registry = format!("sqlite://{}", dir.path().join("registry.db").display());
    let config_arg = config.display().to_string();
    let folder = root.join("mlp");
    let client = reqwest::Client::new();
    let send = |process: &crate::common::Process, count: usize| {
        let (client, url) = (
            client.clone(),
            format!("{}/v2/models/mlp/infer", process.http),
        );
        async move {
            for seed in 0..count {
                let response = client
                    .post(&url)
                    .json(&mlp_body(seed))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
            }
        }
    };

    let mut first = spawn_switchyard(
        &repo_root().join("models"),
        &registry,
        &["--config", &config_arg],
    )
    .await;
    let (status, body) = crate::common::admin_as_writer(
        &first,
        Method::PUT,
        "/v1/models/mlp/capture",
        Some(json!({"sample": 1.0, "sinks": [{"file": "mlp"}]})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // In force once a request is captured.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut sent = 0;
    while events(&folder).is_empty() {
        send(&first, 1).await;
        sent += 1;
        assert!(Instant::now() < deadline, "{}", first.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    send(&first, 50).await;
    assert!(sent > 0);
    let captured = captured_by(&client, &first).await;
    assert!(captured >= 51, "{captured}");
    let before_kill = until_events(&folder, captured).await;
    assert_eq!(before_kill.len(), captured);
    first.child.kill().unwrap();
    first.child.wait().unwrap();

    let mut second = spawn_switchyard(
        &repo_root().join("models"),
        &registry,
        &["--config", &config_arg],
    )
    .await;
    send(&second, 30).await;
    // Stopped at once: the 30 events may still be queued, and are written before it exits.
    nix_terminate(&second.child);
    let exited = second.child.wait().unwrap();
    assert!(exited.success(), "{}", second.log_text());
    let after = events(&folder);
    assert_eq!(after.len(), before_kill.len() + 30, "{}", second.log_text());
    assert_eq!(
        after[..before_kill.len()],
        before_kill[..],
        "the first run's events, untouched"
    );
}

/// The events the process has taken for mlp, from its metrics.
async fn captured_by(client: &reqwest::Client, process: &crate::common::Process) -> usize {
    let text = client
        .get(&process.metrics)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| {
            line.strip_prefix(r#"switchyard_capture_events_total{model="mlp",outcome="captured"} "#)
        })
        .map_or(0, |count| count.parse().unwrap())
}

fn nix_terminate(child: &std::process::Child) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_client_sets_lists_and_stops_a_capture() {
    use crate::registry_api::{cli, cli_text};
    let root = tempfile::tempdir().unwrap();
    let gateway = TestGateway::start_with(&models_dir(), capture_config(root.path())).await;
    let (ok, set, err) = cli(
        &gateway,
        &[
            "capture", "set", "mlp", "--sample", "1", "--file", "cli", "--redact", "x",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(set["capture"]["spec"]["redact"], json!(["x"]));
    let folder = root.path().join("cli");
    let deadline = Instant::now() + Duration::from_secs(10);
    while events(&folder).is_empty() {
        let (status, _) = gateway
            .post_json("/v2/models/mlp/infer", &mlp_body(1))
            .await;
        assert_eq!(status, 200);
        assert!(Instant::now() < deadline, "nothing captured");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (ok, table, err) = cli_text(&gateway, &["capture", "list", "-o", "table"]).await;
    assert!(ok, "{err}");
    assert!(
        table.lines().next().unwrap().starts_with("MODEL"),
        "{table}"
    );
    let row = table.lines().nth(1).unwrap();
    for expected in ["mlp", "file:cli", "1"] {
        assert!(row.contains(expected), "{expected} in {row}");
    }
    let (ok, _, err) = cli(
        &gateway,
        &[
            "capture", "set", "mlp", "--sample", "1", "--http", "ftp://x",
        ],
    )
    .await;
    assert!(!ok && err.contains("not http"), "{err}");
    let (ok, _, err) = cli(&gateway, &["capture", "off", "mlp"]).await;
    assert!(ok, "{err}");
    let answer = capture_of(&gateway, "mlp").await;
    assert!(answer["capture"].is_null(), "{answer}");
    gateway.stop().await;
}
