//! The Open Inference Protocol over HTTP, end to end: a real gateway on a loopback port, the
//! real ONNX models, a real HTTP client.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use common::{
    MLP_IN, MLP_OUT, MlpWeights, TestGateway, as_f32s, assert_close, mlp_onnx_and_torchscript,
    mlp_repository, models_dir, sample_inputs,
};
use serde_json::{Value, json};

#[tokio::test]
async fn health_and_server_metadata() {
    let gateway = TestGateway::start(&models_dir()).await;
    assert_eq!(gateway.get("/v2/health/live").await.0, 200);
    assert_eq!(gateway.get("/v2/health/ready").await.0, 200);
    let (status, metadata) = gateway.get("/v2").await;
    assert_eq!(status, 200);
    assert_eq!(metadata["name"], "switchyard");
    let extensions = metadata["extensions"].as_array().unwrap();
    assert!(extensions.contains(&json!("binary_tensor_data")));
    assert!(extensions.contains(&json!("model_configuration")));
    gateway.stop().await;
}

#[tokio::test]
async fn model_metadata_ready_and_config() {
    let gateway = TestGateway::start(&models_dir()).await;

    let (status, mlp) = gateway.get("/v2/models/mlp").await;
    assert_eq!(status, 200);
    assert_eq!(mlp["name"], "mlp");
    assert_eq!(mlp["versions"], json!(["1", "2"]));
    // The model's metadata is its highest ready version's: 2, the TorchScript one.
    assert_eq!(mlp["platform"], "pytorch_libtorch");
    assert_eq!(mlp["memory"]["device"], "cpu");
    assert_eq!(mlp["memory"]["replicas"], 1);
    assert!(mlp["memory"]["bytes_per_replica"].is_u64(), "{mlp}");
    let (_, onnx) = gateway.get("/v2/models/mlp/versions/1").await;
    assert_eq!(onnx["platform"], "onnxruntime_onnx");
    assert_eq!(onnx["inputs"], mlp["inputs"]);
    assert_eq!(onnx["outputs"], mlp["outputs"]);
    assert_eq!(
        mlp["inputs"],
        json!([{"name": "x", "datatype": "FP32", "shape": [-1, 64]}])
    );
    assert_eq!(
        mlp["outputs"],
        json!([{"name": "y", "datatype": "FP32", "shape": [-1, 10]}])
    );

    let (status, silero) = gateway.get("/v2/models/silero_vad/versions/1").await;
    assert_eq!(status, 200);
    assert_eq!(silero["versions"], json!(["1"]));
    let inputs: Vec<&str> = silero["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    // The state is implicit ([[state]] in model.toml): the gateway feeds it, so clients are not
    // asked for it, as in Triton.
    assert_eq!(inputs, ["input", "sr"]);
    let (_, silero_all) = gateway.get("/v2/models/silero_vad").await;
    assert_eq!(silero_all["versions"], json!(["1", "2"]));

    assert_eq!(gateway.get("/v2/models/mlp/ready").await.0, 200);
    assert_eq!(
        gateway
            .get("/v2/models/silero_vad/versions/2/ready")
            .await
            .0,
        200
    );
    assert_eq!(
        gateway
            .get("/v2/models/silero_vad/versions/3/ready")
            .await
            .0,
        404
    );
    assert_eq!(gateway.get("/v2/models/nope/ready").await.0, 404);

    // Triton's model configuration: with a batch axis, dims leave it out.
    let (status, torch_config) = gateway.get("/v2/models/mlp/versions/2/config").await;
    assert_eq!(status, 200);
    assert_eq!(torch_config["platform"], "pytorch_libtorch");
    assert_eq!(torch_config["backend"], "pytorch");
    let (status, config) = gateway.get("/v2/models/mlp/versions/1/config").await;
    assert_eq!(status, 200);
    assert_eq!(config["name"], "mlp");
    assert_eq!(config["platform"], "onnxruntime_onnx");
    assert_eq!(config["backend"], "onnxruntime");
    assert_eq!(config["input"], torch_config["input"]);
    assert_eq!(config["max_batch_size"], 64);
    // Triton's JSON form: every field, defaults included.
    let (input, output) = (&config["input"][0], &config["output"][0]);
    assert_eq!(config["input"].as_array().unwrap().len(), 1);
    assert_eq!(
        (&input["name"], &input["data_type"], &input["dims"]),
        (&json!("x"), &json!("TYPE_FP32"), &json!([64]))
    );
    assert_eq!(
        (&input["format"], &input["optional"]),
        (&json!("FORMAT_NONE"), &json!(false))
    );
    assert_eq!(
        (&output["name"], &output["data_type"], &output["dims"]),
        (&json!("y"), &json!("TYPE_FP32"), &json!([10]))
    );
    assert_eq!(
        config["dynamic_batching"]["default_queue_policy"]["allow_timeout_override"],
        true
    );
    // silero_vad has no batch axis (its state is batched on axis 1): full shapes, max_batch_size 0.
    let (status, config) = gateway.get("/v2/models/silero_vad/versions/2/config").await;
    assert_eq!(status, 200);
    assert_eq!(config["max_batch_size"], 0);
    let names: Vec<&str> = config["input"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["input", "sr"]);
    let state = &config["sequence_batching"]["state"][0];
    assert_eq!(state["input_name"], "state");
    assert_eq!(state["dims"], json!([2, 1, 128]));
    assert_eq!(state["data_type"], "TYPE_FP32");
    gateway.stop().await;
}

fn mlp_request(x: &[f32], rows: usize) -> Value {
    json!({
        "id": "req-7",
        "inputs": [{"name": "x", "shape": [rows, MLP_IN], "datatype": "FP32", "data": x}]
    })
}

#[tokio::test]
async fn mlp_json_infer_matches_the_saved_weights() {
    let gateway = TestGateway::start(&models_dir()).await;
    let weights = MlpWeights::load();
    for rows in [1usize, 3, 64] {
        let x = sample_inputs(rows * MLP_IN, rows as u64);
        let (status, response) = gateway
            .post_json("/v2/models/mlp/infer", &mlp_request(&x, rows))
            .await;
        assert_eq!(status, 200, "{response}");
        assert_eq!(response["model_name"], "mlp");
        assert_eq!(
            response["model_version"], "2",
            "unpinned: the highest version"
        );
        assert_eq!(response["id"], "req-7");
        let output = &response["outputs"][0];
        assert_eq!(output["name"], "y");
        assert_eq!(output["datatype"], "FP32");
        assert_eq!(output["shape"], json!([rows, MLP_OUT]));
        assert_close(&as_f32s(&output["data"]), &weights.forward(&x), 1e-5);
    }

    // Nested data and the version in the path give the same answer.
    let x = sample_inputs(2 * MLP_IN, 42);
    let nested: Vec<Vec<f32>> = x.chunks(MLP_IN).map(<[f32]>::to_vec).collect();
    let body = json!({"inputs": [{"name": "x", "shape": [2, MLP_IN], "datatype": "FP32", "data": nested}],
                      "outputs": [{"name": "y"}]});
    let (status, response) = gateway
        .post_json("/v2/models/mlp/versions/1/infer", &body)
        .await;
    assert_eq!(status, 200, "{response}");
    // A request without an id gets one, which feedback can name.
    assert!(
        response["id"].as_str().unwrap().starts_with("sy-"),
        "{response}"
    );
    assert_close(
        &as_f32s(&response["outputs"][0]["data"]),
        &weights.forward(&x),
        1e-5,
    );
    gateway.stop().await;
}

/// Splits a binary-extension response into its JSON header and binary tail.
fn split_binary_response(headers: &reqwest::header::HeaderMap, body: &[u8]) -> (Value, Vec<u8>) {
    let json_length: usize = headers
        .get("inference-header-content-length")
        .expect("Inference-Header-Content-Length")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let (json, binary) = body.split_at(json_length);
    (serde_json::from_slice(json).unwrap(), binary.to_vec())
}

fn f32s_from_le(bytes: &[u8]) -> Vec<f32> {
    bytes
        .as_chunks::<4>()
        .0
        .iter()
        .map(|c| f32::from_le_bytes(*c))
        .collect()
}

#[tokio::test]
async fn mlp_binary_tensor_extension() {
    let gateway = TestGateway::start(&models_dir()).await;
    let weights = MlpWeights::load();
    let rows = 5;
    let x = sample_inputs(rows * MLP_IN, 9);
    let x_bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let header = json!({
        "inputs": [{"name": "x", "shape": [rows, MLP_IN], "datatype": "FP32",
                    "parameters": {"binary_data_size": x_bytes.len()}}],
        "outputs": [{"name": "y", "parameters": {"binary_data": true}}]
    });
    let header = serde_json::to_vec(&header).unwrap();
    let mut body = header.clone();
    body.extend_from_slice(&x_bytes);
    let response = gateway
        .client
        .post(gateway.url("/v2/models/mlp/infer"))
        .header("Inference-Header-Content-Length", header.len())
        .header("Content-Type", "application/octet-stream")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    let (json, binary) = split_binary_response(&headers, &response.bytes().await.unwrap());
    let output = &json["outputs"][0];
    assert_eq!(output["parameters"]["binary_data_size"], rows * MLP_OUT * 4);
    assert!(output.get("data").is_none());
    assert_close(&f32s_from_le(&binary), &weights.forward(&x), 1e-5);

    // Binary input, JSON output: no binary output was asked for.
    let header = json!({"inputs": [{"name": "x", "shape": [rows, MLP_IN], "datatype": "FP32",
                                    "parameters": {"binary_data_size": x_bytes.len()}}]});
    let header = serde_json::to_vec(&header).unwrap();
    let mut body = header.clone();
    body.extend_from_slice(&x_bytes);
    let response = gateway
        .client
        .post(gateway.url("/v2/models/mlp/infer"))
        .header("Inference-Header-Content-Length", header.len())
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response
            .headers()
            .get("inference-header-content-length")
            .is_none()
    );
    let json: Value = response.json().await.unwrap();
    assert_close(
        &as_f32s(&json["outputs"][0]["data"]),
        &weights.forward(&x),
        1e-5,
    );

    // JSON input, every output binary through the request-level parameter.
    let mut request = mlp_request(&x, rows);
    request["parameters"] = json!({"binary_data_output": true});
    let response = gateway
        .client
        .post(gateway.url("/v2/models/mlp/infer"))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    let (_, binary) = split_binary_response(&headers, &response.bytes().await.unwrap());
    assert_close(&f32s_from_le(&binary), &weights.forward(&x), 1e-5);
    gateway.stop().await;
}

#[tokio::test]
async fn silero_vad_matches_python_onnxruntime() {
    let models = models_dir();
    let gateway = TestGateway::start(&models).await;
    let reference: Value =
        serde_json::from_slice(&std::fs::read(models.join("silero_vad/reference.json")).unwrap())
            .unwrap();
    let cases = reference["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4, "two versions, two batch sizes");
    for case in cases {
        let version = case["version"].as_str().unwrap();
        let inputs = &case["inputs"];
        let body = json!({"inputs": [
            {"name": "input", "datatype": "FP32", "shape": inputs["input"]["shape"], "data": inputs["input"]["data"]},
            {"name": "state", "datatype": "FP32", "shape": inputs["state"]["shape"], "data": inputs["state"]["data"]},
            {"name": "sr", "datatype": "INT64", "shape": [], "data": inputs["sr"]["data"]},
        ]});
        let path = format!("/v2/models/silero_vad/versions/{version}/infer");
        let (status, response) = gateway.post_json(&path, &body).await;
        assert_eq!(status, 200, "{response}");
        assert_eq!(response["model_version"], version);
        for output in response["outputs"].as_array().unwrap() {
            let name = output["name"].as_str().unwrap();
            let expected = &case["outputs"][name];
            assert_eq!(
                output["shape"], expected["shape"],
                "version {version} output {name}"
            );
            assert_close(&as_f32s(&output["data"]), &as_f32s(&expected["data"]), 1e-5);
        }
    }

    // Without a version, the highest ready version serves.
    let case = &cases[0];
    let body = json!({"inputs": [
        {"name": "input", "datatype": "FP32", "shape": case["inputs"]["input"]["shape"], "data": case["inputs"]["input"]["data"]},
        {"name": "state", "datatype": "FP32", "shape": case["inputs"]["state"]["shape"], "data": case["inputs"]["state"]["data"]},
        {"name": "sr", "datatype": "INT64", "shape": [], "data": [16000]},
    ], "outputs": [{"name": "output"}]});
    let (status, response) = gateway
        .post_json("/v2/models/silero_vad/infer", &body)
        .await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["model_version"], "2");
    assert_eq!(response["outputs"].as_array().unwrap().len(), 1);
    assert_eq!(response["outputs"][0]["name"], "output");
    gateway.stop().await;
}

#[tokio::test]
async fn bad_requests_get_the_protocol_error_body() {
    let gateway = TestGateway::start(&models_dir()).await;
    let ones = vec![1.0f32; MLP_IN];
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("/v2/models/mlp/infer", "{\"inputs\": [".into(), 400, "malformed"),
        ("/v2/models/mlp/infer", "[]".into(), 400, "malformed"),
        ("/v2/models/mlp/infer",
         json!({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FLOAT32", "data": ones}]}).to_string(),
         400, "unknown datatype"),
        ("/v2/models/mlp/infer",
         json!({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": &ones[..63]}]}).to_string(),
         400, "needs 64 elements"),
        ("/v2/models/mlp/infer",
         json!({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "INT32", "data": vec![1; 64]}]}).to_string(),
         400, "expects FP32"),
        ("/v2/models/mlp/infer",
         json!({"inputs": [{"name": "x", "shape": [2, 32], "datatype": "FP32", "data": ones}]}).to_string(),
         400, "expects [-1, 64]"),
        ("/v2/models/mlp/infer",
         json!({"inputs": [{"name": "x", "shape": [65, 64], "datatype": "FP32", "data": vec![0.0f32; 65 * 64]}]}).to_string(),
         400, "batch size 65"),
        ("/v2/models/mlp/infer", json!({"inputs": []}).to_string(), 400, "missing input 'x'"),
        ("/v2/models/mlp/infer",
         json!({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": ones}],
                "outputs": [{"name": "z"}]}).to_string(),
         400, "no output 'z'"),
        ("/v2/models/silero_vad/infer",
         json!({"inputs": [{"name": "input", "shape": [1, 100], "datatype": "FP32", "data": vec![0.0f32; 100]},
                           {"name": "state", "shape": [2, 1, 128], "datatype": "FP32", "data": vec![0.0f32; 256]},
                           {"name": "sr", "shape": [], "datatype": "INT64", "data": 16000}]}).to_string(),
         400, "rejected the inputs"),
        ("/v2/models/nope/infer",
         json!({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": ones}]}).to_string(),
         404, "Request for unknown model: 'nope' is not found"),
        ("/v2/models/mlp/versions/9/infer",
         json!({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": ones}]}).to_string(),
         404, "Request for unknown model: 'mlp' version 9 is not found"),
    ];
    for (path, body, expected_status, expected_message) in cases {
        let (status, response) = gateway.post_raw(path, body.into_bytes()).await;
        assert_eq!(status, expected_status, "{path}: {response}");
        let message = response["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error string: {response}"));
        assert!(
            message.contains(expected_message),
            "{path}: '{message}' lacks '{expected_message}'"
        );
    }

    let (status, response) = gateway.get("/v2/models/nope").await;
    assert_eq!((status, response["error"].is_string()), (404, true));
    let (status, response) = gateway.get("/v2/no/such/endpoint").await;
    assert_eq!((status, response["error"].is_string()), (404, true));
    let response = gateway
        .client
        .delete(gateway.url("/v2/models/mlp/infer"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    // The gateway still serves after all of that.
    let (status, _) = gateway
        .post_json("/v2/models/mlp/infer", &mlp_request(&ones, 1))
        .await;
    assert_eq!(status, 200);
    gateway.stop().await;
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let gateway = TestGateway::start_with(&models_dir(), |config| {
        config.http.max_request_size = switchyard_gateway::config::ByteSize(1 << 20);
    })
    .await;
    let oversized = vec![b' '; (1 << 20) + 1];
    let (status, response) = gateway.post_raw("/v2/models/mlp/infer", oversized).await;
    assert_eq!(status, 413);
    assert!(response["error"].as_str().unwrap().contains("limit"));

    // Without a Content-Length (chunked), the limit holds while the body streams in.
    let chunks = futures_chunks(3, 512 * 1024);
    let response = gateway
        .client
        .post(gateway.url("/v2/models/mlp/infer"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].is_string());

    // Just under the limit is read (and refused only because it is not JSON).
    let (status, _) = gateway
        .post_raw("/v2/models/mlp/infer", vec![b' '; 1 << 19])
        .await;
    assert_eq!(status, 400);
    gateway.stop().await;
}

fn futures_chunks(
    count: usize,
    size: usize,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    let mut remaining = count;
    futures_util::stream::poll_fn(move |_| {
        if remaining == 0 {
            return std::task::Poll::Ready(None);
        }
        remaining -= 1;
        std::task::Poll::Ready(Some(Ok(vec![b' '; size])))
    })
}

#[tokio::test]
async fn a_corrupt_model_fails_alone() {
    let source = models_dir();
    let repo = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(repo.path().join("mlp/1")).unwrap();
    std::fs::copy(
        source.join("mlp/1/model.onnx"),
        repo.path().join("mlp/1/model.onnx"),
    )
    .unwrap();
    std::fs::create_dir_all(repo.path().join("broken/1")).unwrap();
    std::fs::write(
        repo.path().join("broken/1/model.onnx"),
        b"this is not an ONNX protobuf",
    )
    .unwrap();

    let gateway = TestGateway::start(repo.path()).await;
    assert_eq!(gateway.get("/v2/health/ready").await.0, 200);

    let (status, metadata) = gateway.get("/v2/models/broken/versions/1").await;
    assert_eq!(status, 200);
    assert_eq!(metadata["state"], "FAILED");
    let reason = metadata["reason"].as_str().unwrap();
    assert!(reason.contains("model.onnx"), "{reason}");

    let (status, body) = gateway.get("/v2/models/broken/versions/1/ready").await;
    assert_eq!(status, 503);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("version 1 is not at ready state")
    );
    let (status, body) = gateway
        .post_json("/v2/models/broken/infer", &json!({"inputs": []}))
        .await;
    assert_eq!(status, 503);
    assert!(body["error"].as_str().unwrap().contains("failed"), "{body}");

    let x = sample_inputs(MLP_IN, 1);
    let (status, response) = gateway
        .post_json("/v2/models/mlp/infer", &mlp_request(&x, 1))
        .await;
    assert_eq!(status, 200);
    assert_close(
        &as_f32s(&response["outputs"][0]["data"]),
        &MlpWeights::load().forward(&x),
        1e-5,
    );
    gateway.stop().await;
}

#[tokio::test]
async fn batched_outputs_equal_unbatched_ones() {
    let batching = mlp_repository("max_batch_size = 64\nmax_queue_delay = \"50ms\"\n");
    let batched = TestGateway::start(batching.path()).await;
    // Requests sent one at a time run alone.
    let unbatched_repo = mlp_repository("max_batch_size = 64\n");
    let unbatched = TestGateway::start(unbatched_repo.path()).await;

    let requests: Vec<(usize, Vec<f32>)> = (0..12)
        .map(|i| {
            let rows = 1 + i % 4;
            (rows, sample_inputs(rows * MLP_IN, 1000 + i as u64))
        })
        .collect();
    let bodies: Vec<Value> = requests
        .iter()
        .map(|(rows, x)| mlp_request(x, *rows))
        .collect();
    let together = futures_util::future::join_all(
        bodies
            .iter()
            .map(|body| batched.post_json("/v2/models/mlp/infer", body)),
    )
    .await;
    let weights = MlpWeights::load();
    for ((rows, x), (status, response)) in requests.iter().zip(together) {
        assert_eq!(status, 200, "{response}");
        let (status, alone) = unbatched
            .post_json("/v2/models/mlp/infer", &mlp_request(x, *rows))
            .await;
        assert_eq!(status, 200);
        assert_eq!(response["outputs"][0]["shape"], json!([rows, MLP_OUT]));
        let batched_y = as_f32s(&response["outputs"][0]["data"]);
        let alone_y = as_f32s(&alone["outputs"][0]["data"]);
        assert_close(&batched_y, &alone_y, 0.0);
        assert_close(&batched_y, &weights.forward(x), 1e-5);
    }
    batched.stop().await;
    unbatched.stop().await;
}

#[tokio::test]
async fn shutdown_finishes_accepted_requests() {
    // Each batch waits 300 ms for company: requests are reliably in flight when stop begins.
    let repo = mlp_repository("max_batch_size = 64\nmax_queue_delay = \"300ms\"\n");
    let gateway = TestGateway::start(repo.path()).await;
    let x = sample_inputs(MLP_IN, 3);
    let url = gateway.url("/v2/models/mlp/infer");
    let body = serde_json::to_vec(&mlp_request(&x, 1)).unwrap();
    let in_flight: Vec<_> = (0..4)
        .map(|_| {
            let request = gateway.client.post(&url).body(body.clone()).send();
            tokio::spawn(request)
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let base = gateway.base.clone();
    gateway.stop().await;
    for request in in_flight {
        let response = request
            .await
            .unwrap()
            .expect("an accepted request is answered");
        assert_eq!(response.status(), 200);
    }
    let after = reqwest::Client::new()
        .get(format!("{base}/v2/health/live"))
        .send()
        .await;
    assert!(
        after.is_err(),
        "a stopped gateway accepts no new connection"
    );
}

#[tokio::test]
async fn onnx_and_torchscript_versions_agree_and_pins_hold() {
    let gateway = TestGateway::start(&models_dir()).await;
    let weights = MlpWeights::load();
    for case in 0..20u64 {
        let rows = 1 + (case as usize % 5);
        let x = sample_inputs(rows * MLP_IN, 500 + case);
        let expected = weights.forward(&x);
        let mut answers = Vec::new();
        for version in ["1", "2"] {
            let (status, response) = gateway
                .post_json(
                    &format!("/v2/models/mlp/versions/{version}/infer"),
                    &mlp_request(&x, rows),
                )
                .await;
            assert_eq!(status, 200, "{response}");
            assert_eq!(response["model_version"], version);
            let y = as_f32s(&response["outputs"][0]["data"]);
            assert_close(&y, &expected, 1e-5);
            answers.push(y);
        }
        assert_close(&answers[0], &answers[1], 1e-5);
    }
    gateway.stop().await;
}

#[tokio::test]
async fn a_corrupt_torchscript_file_fails_only_its_own_version() {
    let repo =
        mlp_repository(&std::fs::read_to_string(models_dir().join("mlp/model.toml")).unwrap());
    for (version, contents) in [
        (
            "2",
            std::fs::read(models_dir().join("mlp/2/model.pt")).unwrap(),
        ),
        ("3", b"PK\x03\x04 truncated".to_vec()),
    ] {
        std::fs::create_dir_all(repo.path().join("mlp").join(version)).unwrap();
        std::fs::write(
            repo.path().join("mlp").join(version).join("model.pt"),
            contents,
        )
        .unwrap();
    }
    let gateway = TestGateway::start(repo.path()).await;
    let (status, broken) = gateway.get("/v2/models/mlp/versions/3").await;
    assert_eq!(status, 200);
    assert_eq!(broken["state"], "FAILED");
    let reason = broken["reason"].as_str().unwrap();
    assert!(reason.contains("mlp/3/model.pt"), "{reason}");
    assert_eq!(gateway.get("/v2/models/mlp/versions/3/ready").await.0, 503);
    for version in ["1", "2"] {
        let path = format!("/v2/models/mlp/versions/{version}/ready");
        assert_eq!(gateway.get(&path).await.0, 200, "{path}");
    }
    // Unpinned requests go to the highest ready version, not the failed one.
    let x = sample_inputs(MLP_IN, 9);
    let (status, response) = gateway
        .post_json("/v2/models/mlp/infer", &mlp_request(&x, 1))
        .await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["model_version"], "2");
    gateway.stop().await;
}

#[tokio::test]
async fn a_cuda_version_without_a_gpu_fails_with_what_is_missing() {
    if std::path::Path::new("/dev/nvidiactl").exists() {
        eprintln!("SKIPPED: this machine has an NVIDIA GPU; the CUDA tests cover it");
        return;
    }
    let repo = mlp_onnx_and_torchscript("device = \"cuda:0\"\n");
    let gateway = TestGateway::start(repo.path()).await;
    for (version, runtime) in [("1", "ONNX Runtime"), ("2", "libtorch")] {
        let (_, metadata) = gateway
            .get(&format!("/v2/models/mlp/versions/{version}"))
            .await;
        assert_eq!(metadata["state"], "FAILED", "{metadata}");
        let reason = metadata["reason"].as_str().unwrap();
        assert!(reason.contains("cuda:0"), "{reason}");
        assert!(reason.contains(runtime), "{reason}");
    }
    gateway.stop().await;
}

#[tokio::test]
async fn serving_defaults_out_of_bounds_stop_the_start() {
    for (adjust, refusal) in [
        (
            (|config: &mut switchyard_gateway::Config| {
                config.serving.worker_spin =
                    switchyard_gateway::config::HumanDuration(std::time::Duration::from_secs(1))
            }) as fn(&mut switchyard_gateway::Config),
            "worker_spin may be at most 10ms",
        ),
        (
            |config: &mut switchyard_gateway::Config| config.serving.nice = -40,
            "nice must be between -20 and 19",
        ),
    ] {
        let mut config = switchyard_gateway::Config::default();
        adjust(&mut config);
        // Refused before anything is opened or bound.
        match switchyard_gateway::start(&config).await {
            Ok(_) => panic!("a gateway started with {refusal:?} broken"),
            Err(error) => {
                let message = format!("{error:#}");
                assert!(
                    message.contains("invalid [serving] settings") && message.contains(refusal),
                    "{message}"
                );
            }
        }
    }
}
