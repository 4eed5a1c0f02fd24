//! Triton's model configuration (`config.pbtxt`) as a source of a model's settings, on a real
//! gateway with real ONNX models (those of `data/triton_repository`, written by
//! scripts/build_triton_examples.py): what serves as it is, what fails with a reason naming the
//! line or the field, how `config.pbtxt` and `model.toml` combine, and a stock detector on the
//! defaults. Triton's own clients drive the same repository in scripts/test
//! (loadtest/triton_repository_check.py).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::path::{Path, PathBuf};

use common::{TestGateway, repo_root};
use serde_json::json;

fn triton_repository() -> PathBuf {
    let dir = repo_root().join("data/triton_repository");
    assert!(
        dir.join("simple/config.pbtxt").is_file() && dir.join("detector/1/model.onnx").is_file(),
        "data/triton_repository is missing: run scripts/setup (scripts/test does it for you)"
    );
    dir
}

/// Copies `model` of the Triton repository into `repo` as `name` (its versions and files),
/// with `config` as its config.pbtxt when given (else its own).
fn copy_model(repo: &Path, model: &str, name: &str, config: Option<&str>) {
    let source = triton_repository().join(model);
    let target = repo.join(name);
    std::fs::create_dir_all(target.join("1")).unwrap();
    std::fs::copy(source.join("1/model.onnx"), target.join("1/model.onnx")).unwrap();
    match config {
        Some(text) => std::fs::write(target.join("config.pbtxt"), text).unwrap(),
        None => {
            if source.join("config.pbtxt").is_file() {
                let text = std::fs::read_to_string(source.join("config.pbtxt")).unwrap();
                // Triton requires the name to be the folder's.
                let text =
                    text.replace(&format!("name: \"{model}\""), &format!("name: \"{name}\""));
                std::fs::write(target.join("config.pbtxt"), text).unwrap();
            }
        }
    }
}

async fn metadata(gateway: &TestGateway, model: &str) -> serde_json::Value {
    let (status, body) = gateway.get(&format!("/v2/models/{model}")).await;
    assert_eq!(status, 200, "{model}: {body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configs_that_cannot_be_served_fail_with_their_reason() {
    let repo = tempfile::tempdir().unwrap();
    let root = repo.path();
    copy_model(root, "simple", "simple", None);
    // Line 3 lacks its value: the parser names where it found the next field instead.
    copy_model(
        root,
        "simple",
        "malformed",
        Some("name: \"malformed\"\nplatform: \"onnxruntime_onnx\"\nmax_batch_size: \ninput [ ]\n"),
    );
    std::fs::create_dir_all(root.join("python_model/1")).unwrap();
    std::fs::write(root.join("python_model/1/model.py"), "print('hi')\n").unwrap();
    std::fs::write(
        root.join("python_model/config.pbtxt"),
        "name: \"python_model\"\nbackend: \"python\"\nmax_batch_size: 8\n",
    )
    .unwrap();
    let dyna =
        std::fs::read_to_string(triton_repository().join("simple_dyna_sequence/config.pbtxt"))
            .unwrap()
            .replace("name: \"simple_dyna_sequence\"", "name: \"string_corrid\"")
            .replace("data_type: TYPE_UINT64", "data_type: TYPE_STRING");
    copy_model(root, "simple_dyna_sequence", "string_corrid", Some(&dyna));
    let decoupled = std::fs::read_to_string(triton_repository().join("simple/config.pbtxt"))
        .unwrap()
        .replace("name: \"simple\"", "name: \"decoupled\"")
        + "model_transaction_policy { decoupled: true }\n";
    copy_model(root, "simple", "decoupled", Some(&decoupled));
    copy_model(
        root,
        "simple",
        "misnamed",
        Some("name: \"someone_else\"\nplatform: \"onnxruntime_onnx\"\n"),
    );

    let gateway = TestGateway::start(root).await;
    assert_eq!(metadata(&gateway, "simple").await["state"], "READY");
    for (model, words) in [
        (
            "malformed",
            "config.pbtxt does not parse: line 4, column 1: expected an integer, but found 'input'",
        ),
        ("python_model", "backend 'python' is not supported"),
        (
            "string_corrid",
            "input 'CORRID' is declared BYTES [-1, 1] but the model has UINT64",
        ),
        ("decoupled", "model_transaction_policy.decoupled"),
        (
            "misnamed",
            "name 'someone_else' differs from the model's folder 'misnamed'",
        ),
    ] {
        let body = metadata(&gateway, model).await;
        assert_eq!(body["state"], "FAILED", "{model}: {body}");
        let reason = body["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(words), "{model}: {reason}");
    }
    // A failed model answers requests in Triton's words, with the reason.
    let (status, body) = gateway
        .post_json(
            "/v2/models/python_model/infer",
            &json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.starts_with("Request for unknown model: 'python_model' has no available versions"),
        "{message}"
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_version_policy_model_toml_and_the_effective_config() {
    let repo = tempfile::tempdir().unwrap();
    let root = repo.path();
    copy_model(root, "simple", "simple", None);
    for version in ["2", "3"] {
        std::fs::create_dir_all(root.join("simple").join(version)).unwrap();
        std::fs::copy(
            root.join("simple/1/model.onnx"),
            root.join("simple").join(version).join("model.onnx"),
        )
        .unwrap();
    }
    copy_model(root, "simple_dyna_sequence", "dyna", None);
    // model.toml's keys win over config.pbtxt's; the rest of config.pbtxt stays.
    std::fs::write(
        root.join("dyna/model.toml"),
        "replicas = 3\n[sequence]\nmax_queue_delay = \"2ms\"\n",
    )
    .unwrap();

    let gateway = TestGateway::start(root).await;
    // Triton's default policy serves the latest version only.
    let body = metadata(&gateway, "simple").await;
    assert_eq!(body["versions"], json!(["3"]), "{body}");

    let (status, config) = gateway.get("/v2/models/dyna/config").await;
    assert_eq!(status, 200, "{config}");
    assert_eq!(config["name"], "dyna");
    assert_eq!(config["max_batch_size"], 8);
    assert_eq!(
        config["instance_group"][0]["count"], 3,
        "model.toml's replicas"
    );
    let sequence = &config["sequence_batching"];
    assert_eq!(
        sequence["oldest"]["max_queue_delay_microseconds"], 2000,
        "{sequence}"
    );
    assert_eq!(sequence["oldest"]["max_candidate_sequences"], 1024);
    assert_eq!(sequence["max_sequence_idle_microseconds"], 10_000_000);
    let controls: Vec<&str> = sequence["control_input"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(controls, ["START", "END", "READY", "CORRID"]);
    assert_eq!(
        sequence["control_input"][3]["control"][0]["data_type"],
        "TYPE_UINT64"
    );
    let inputs: Vec<&str> = config["input"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_object().unwrap()["name"].as_str().unwrap())
        .collect();
    assert_eq!(inputs, ["INPUT"], "control inputs are not the client's");
    assert_eq!(
        config["parameters"]["execute_delay_ms"]["string_value"],
        "3"
    );

    // The gateway feeds the controls: READY * (INPUT + START) + END * CORRID.
    let mut answers = Vec::new();
    for (index, value) in [5, 6, 7].into_iter().enumerate() {
        let body = json!({
            "parameters": {"sequence_id": 41, "sequence_start": index == 0, "sequence_end": index == 2},
            "inputs": [{"name": "INPUT", "shape": [1, 1], "datatype": "INT32", "data": [value]}],
        });
        let (status, answer) = gateway.post_json("/v2/models/dyna/infer", &body).await;
        assert_eq!(status, 200, "{answer}");
        answers.push(answer["outputs"][0]["data"][0].as_i64().unwrap());
    }
    assert_eq!(answers, [6, 6, 7 + 41]);
    // A client may not send a control input itself.
    let body = json!({
        "parameters": {"sequence_id": 42, "sequence_start": true},
        "inputs": [{"name": "INPUT", "shape": [1, 1], "datatype": "INT32", "data": [1]},
                   {"name": "START", "shape": [1, 1], "datatype": "INT32", "data": [1]}],
    });
    let (status, answer) = gateway.post_json("/v2/models/dyna/infer", &body).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("control input"),
        "{answer}"
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_detector_loads_on_the_defaults() {
    let repo = tempfile::tempdir().unwrap();
    copy_model(repo.path(), "detector", "detector", None);
    let gateway = TestGateway::start(repo.path()).await;
    let body = metadata(&gateway, "detector").await;
    assert_eq!(body["state"], "READY", "{body}");
    // Its dynamic H and W were guessed large enough for its feature maps to meet.
    assert_eq!(
        body["warmup"], "synthetic inputs (images [1, 3, 64, 64])",
        "{body}"
    );
    for (height, width) in [(32, 32), (96, 64)] {
        let pixels = vec![0.5f32; 3 * height * width];
        let request = json!({"inputs": [{"name": "images", "shape": [1, 3, height, width],
                                         "datatype": "FP32", "data": pixels}]});
        let (status, answer) = gateway
            .post_json("/v2/models/detector/infer", &request)
            .await;
        assert_eq!(status, 200, "{answer}");
        let cells = (height / 8) * (width / 8)
            + (height / 16) * (width / 16)
            + (height / 32) * (width / 32);
        assert_eq!(answer["outputs"][0]["shape"], json!([1, 84, cells]));
    }
    // A size its strides cannot divide fails inside the model: an error that says where, and
    // the next request is served.
    let request = json!({"inputs": [{"name": "images", "shape": [1, 3, 1, 1],
                                     "datatype": "FP32", "data": [0.5, 0.5, 0.5]}]});
    let (status, answer) = gateway
        .post_json("/v2/models/detector/infer", &request)
        .await;
    assert_eq!(status, 500, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("Concat node"),
        "{answer}"
    );
    let pixels = vec![0.5f32; 3 * 32 * 32];
    let request = json!({"inputs": [{"name": "images", "shape": [1, 3, 32, 32],
                                     "datatype": "FP32", "data": pixels}]});
    let (status, answer) = gateway
        .post_json("/v2/models/detector/infer", &request)
        .await;
    assert_eq!(status, 200, "{answer}");
    gateway.stop().await;
}
