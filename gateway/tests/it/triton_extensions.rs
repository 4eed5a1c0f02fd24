//! Triton's repository, shared-memory and classification extensions on a real gateway, with
//! the refusals a new user or a hostile client meets: the management rule on the calls that
//! change what is served, a config override that does not parse, and shared memory that is
//! unknown, too small, past its end or truncated under the gateway. Triton's own clients drive
//! the same extensions in scripts/test (loadtest/triton_repository_check.py).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::fs::File;
use std::path::PathBuf;

use common::{READER_TOKEN, TestGateway, WRITER_TOKEN, repo_root, test_tokens};
use serde_json::{Value, json};
use switchyard_gateway::config::ControlMode;
use switchyard_gateway::protocol::grpc::pb;
use tonic::Code;

fn triton_repository() -> PathBuf {
    let dir = repo_root().join("data/triton_repository");
    assert!(
        dir.join("simple/config.pbtxt").is_file(),
        "data/triton_repository is missing: run scripts/setup (scripts/test does it for you)"
    );
    dir
}

/// A repository holding Triton's `simple` and the classifier.
fn repository() -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    for model in ["simple", "classifier"] {
        let source = triton_repository().join(model);
        let target = repo.path().join(model);
        std::fs::create_dir_all(target.join("1")).unwrap();
        for file in ["1/model.onnx", "config.pbtxt", "labels.txt"] {
            if source.join(file).is_file() {
                std::fs::copy(source.join(file), target.join(file)).unwrap();
            }
        }
    }
    repo
}

async fn post(gateway: &TestGateway, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut request = gateway.client.post(gateway.url(path)).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn grpc(
    gateway: &TestGateway,
) -> pb::grpc_inference_service_client::GrpcInferenceServiceClient<tonic::transport::Channel> {
    pb::grpc_inference_service_client::GrpcInferenceServiceClient::connect(format!(
        "http://{}",
        gateway.grpc_addr
    ))
    .await
    .unwrap()
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_control_needs_the_write_role_and_answers_in_triton_s_words() {
    let repo = repository();
    let gateway = TestGateway::start_with(repo.path(), |config| {
        config.models.control_mode = ControlMode::Explicit;
        config.admin.tokens = test_tokens();
    })
    .await;
    // Nothing is served until a load asks for it.
    let (status, _) = gateway.get("/v2/models/simple/ready").await;
    assert_eq!(status, 404);
    let (status, _) = post(&gateway, "/v2/repository/index", None, json!({})).await;
    assert_eq!(status, 401, "the index without a token");
    let (status, index) = post(
        &gateway,
        "/v2/repository/index",
        Some(READER_TOKEN),
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(index, json!([{"name": "classifier"}, {"name": "simple"}]));

    let load = "/v2/repository/models/simple/load";
    assert_eq!(post(&gateway, load, None, json!({})).await.0, 401);
    assert_eq!(
        post(&gateway, load, Some(READER_TOKEN), json!({})).await.0,
        403
    );
    let mut client = grpc(&gateway).await;
    let refused = client
        .repository_model_load(pb::RepositoryModelLoadRequest {
            model_name: "simple".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);

    let (status, body) = post(&gateway, load, Some(WRITER_TOKEN), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(gateway.get("/v2/models/simple/ready").await.0, 200);
    // A config override that does not parse, and one that does.
    let bad = json!({"parameters": {"config": "{\"max_batch_size\": \"many\"}"}});
    let (status, body) = post(&gateway, load, Some(WRITER_TOKEN), bad).await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.starts_with("failed to load 'simple': the config override"),
        "{message}"
    );
    let files = json!({"parameters": {"file:1/model.onnx": "AAAA"}});
    let (status, body) = post(&gateway, load, Some(WRITER_TOKEN), files).await;
    assert_eq!(status, 400, "{body}");
    let good = pb::RepositoryModelLoadRequest {
        model_name: "simple".into(),
        parameters: [(
            "config".to_owned(),
            pb::ModelRepositoryParameter {
                parameter_choice: Some(
                    pb::model_repository_parameter::ParameterChoice::StringParam(
                        r#"{"max_batch_size": 4}"#.into(),
                    ),
                ),
            },
        )]
        .into(),
        ..Default::default()
    };
    client
        .repository_model_load(with_token(good, WRITER_TOKEN))
        .await
        .unwrap();
    let (_, config) = gateway.get("/v2/models/simple/config").await;
    assert_eq!(config["max_batch_size"], 4, "{config}");
    // An unknown model, in Triton's words.
    let (status, body) = post(
        &gateway,
        "/v2/repository/models/wrong_model_name/load",
        Some(WRITER_TOKEN),
        json!({}),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("failed to load 'wrong_model_name'")
    );

    let unload = "/v2/repository/models/simple/unload";
    assert_eq!(
        post(&gateway, unload, Some(READER_TOKEN), json!({}))
            .await
            .0,
        403
    );
    assert_eq!(
        post(&gateway, unload, Some(WRITER_TOKEN), json!({}))
            .await
            .0,
        200
    );
    assert_eq!(gateway.get("/v2/models/simple/ready").await.0, 503);
    let (_, index) = post(
        &gateway,
        "/v2/repository/index",
        Some(READER_TOKEN),
        json!({"ready": false}),
    )
    .await;
    let simple = index
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["name"] == "simple")
        .unwrap();
    assert_eq!(simple["state"], "UNAVAILABLE", "{index}");
    // Loaded again: the same version serves once more.
    assert_eq!(
        post(&gateway, load, Some(WRITER_TOKEN), json!({})).await.0,
        200
    );
    assert_eq!(gateway.get("/v2/models/simple/ready").await.0, 200);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tokens_only_this_machine_may_load_and_only_in_explicit_mode() {
    let repo = repository();
    let gateway = TestGateway::start(repo.path()).await;
    // A page on another site driving a browser here, or a name that rebinds to loopback.
    let response = gateway
        .client
        .post(gateway.url("/v2/repository/models/simple/unload"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    let response = gateway
        .client
        .post(gateway.url("/v2/systemsharedmemory/region/r/register"))
        .header("host", "evil.example")
        .json(&json!({"key": "/x", "byte_size": 8}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    // The default mode imports the repository at start and refuses loads, as Triton's none.
    let (status, body) = post(
        &gateway,
        "/v2/repository/models/simple/load",
        None,
        json!({}),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("models.control_mode is 'none'")
    );
    gateway.stop().await;
}

/// A POSIX shared-memory object of `size` bytes, removed when dropped.
struct Object(String);

impl Object {
    fn new(tag: &str, size: u64) -> Object {
        let key = format!("/sy-ext-{tag}-{}", std::process::id());
        let fd = rustix::shm::open(
            key.as_str(),
            rustix::shm::OFlags::CREATE | rustix::shm::OFlags::RDWR | rustix::shm::OFlags::TRUNC,
            rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        )
        .unwrap();
        File::from(fd).set_len(size).unwrap();
        Object(key)
    }

    fn file(&self) -> File {
        File::from(
            rustix::shm::open(
                self.0.as_str(),
                rustix::shm::OFlags::RDWR,
                rustix::fs::Mode::empty(),
            )
            .unwrap(),
        )
    }
}

impl Drop for Object {
    fn drop(&mut self) {
        let _ = rustix::shm::unlink(self.0.as_str());
    }
}

fn simple_request(region: &str, offset: i64, byte_size: i64, out: Option<(&str, i64)>) -> Value {
    let shm = |region: &str, offset: i64, size: i64| {
        json!({"shared_memory_region": region, "shared_memory_offset": offset,
               "shared_memory_byte_size": size})
    };
    let mut body = json!({"inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "parameters": shm(region, offset, byte_size)},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": vec![1; 16]},
    ]});
    if let Some((region, size)) = out {
        body["outputs"] = json!([{"name": "OUTPUT0", "parameters": shm(region, 0, size)}]);
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_memory_refusals_are_clear_and_the_gateway_survives_a_truncation() {
    let repo = repository();
    let gateway = TestGateway::start_with(repo.path(), |config| {
        config.shared_memory.max_regions = 2;
    })
    .await;
    let object = Object::new("in", 256);
    let numbers: Vec<u8> = (0..16i32).flat_map(|v| v.to_le_bytes()).collect();
    std::os::unix::fs::FileExt::write_all_at(&object.file(), &numbers, 0).unwrap();
    let register = |name: &str, key: &str, offset: u64, size: u64| {
        (
            format!("/v2/systemsharedmemory/region/{name}/register"),
            json!({"key": key, "offset": offset, "byte_size": size}),
        )
    };
    let (path, body) = register("in", &object.0, 0, 128);
    assert_eq!(post(&gateway, &path, None, body).await.0, 200);
    let out = Object::new("out", 64);
    let (path, body) = register("out", &out.0, 0, 64);
    assert_eq!(post(&gateway, &path, None, body).await.0, 200);
    for (name, key, offset, size, status, words) in [
        ("x", "/sy-no-such-object", 0, 8, 400, "Unable to open"),
        ("x", object.0.as_str(), 200, 100, 400, "runs past the end"),
        ("in", object.0.as_str(), 0, 8, 409, "already in manager"),
        ("x", object.0.as_str(), 0, 8, 429, "max_regions"),
    ] {
        let (path, body) = register(name, key, offset, size);
        let (got, answer) = post(&gateway, &path, None, body).await;
        assert_eq!(got, status, "{words}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(words),
            "{answer}"
        );
    }

    // Read from and written into shared memory.
    let (status, answer) = post(
        &gateway,
        "/v2/models/simple/infer",
        None,
        simple_request("in", 0, 64, Some(("out", 64))),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["outputs"][0].get("data").is_none(), "{answer}");
    let mut written = vec![0u8; 64];
    std::os::unix::fs::FileExt::read_exact_at(&out.file(), &mut written, 0).unwrap();
    let sums: Vec<i32> = written
        .chunks(4)
        .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(sums, (1..=16).collect::<Vec<i32>>());

    for (body, status, words) in [
        (
            simple_request("nope", 0, 64, None),
            404,
            "Unable to find system shared memory region",
        ),
        (
            simple_request("in", 96, 64, None),
            400,
            "runs past shared memory region",
        ),
        (simple_request("in", 0, 60, None), 400, "INPUT0"),
        (
            simple_request("in", 0, 64, Some(("out", 32))),
            400,
            "more than the 32",
        ),
    ] {
        let (got, answer) = post(&gateway, "/v2/models/simple/infer", None, body).await;
        assert_eq!(got, status, "{words}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(words),
            "{answer}"
        );
    }
    // Truncated under the gateway: a clear error for that request, and the gateway lives on.
    object.file().set_len(16).unwrap();
    let (status, answer) = post(
        &gateway,
        "/v2/models/simple/infer",
        None,
        simple_request("in", 0, 64, None),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("truncated"),
        "{answer}"
    );
    assert_eq!(gateway.get("/v2/health/live").await.0, 200);

    let (status, regions) = gateway.get("/v2/systemsharedmemory/status").await;
    assert_eq!(status, 200);
    assert_eq!(regions.as_array().unwrap().len(), 2, "{regions}");
    assert_eq!(
        post(
            &gateway,
            "/v2/systemsharedmemory/unregister",
            None,
            json!({})
        )
        .await
        .0,
        200
    );
    let (_, regions) = gateway.get("/v2/systemsharedmemory/status").await;
    assert_eq!(regions, json!([]));
    // CUDA shared memory: a clear refusal without a GPU.
    let (status, answer) = post(
        &gateway,
        "/v2/cudasharedmemory/region/g/register",
        None,
        json!({"raw_handle": {"b64": ""}, "device_id": 0, "byte_size": 8}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("CUDA shared memory is not supported")
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classification_answers_the_top_classes_with_their_labels() {
    let repo = repository();
    let gateway = TestGateway::start(repo.path()).await;
    let image: Vec<f32> = (0..192).map(|i| (i % 7) as f32 / 7.0).collect();
    let request = |count: Value| {
        json!({"inputs": [{"name": "data_0", "shape": [3, 8, 8], "datatype": "FP32", "data": image}],
               "outputs": [{"name": "fc6_1", "parameters": {"classification": count}}]})
    };
    let (status, answer) = post(
        &gateway,
        "/v2/models/classifier/infer",
        None,
        request(json!(2)),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let output = &answer["outputs"][0];
    assert_eq!(
        (&output["datatype"], &output["shape"]),
        (&json!("BYTES"), &json!([2]))
    );
    let labels = std::fs::read_to_string(repo.path().join("classifier/labels.txt")).unwrap();
    let labels: Vec<&str> = labels.lines().collect();
    // The same scores without classification, to check the order and the labels against.
    let plain = json!({"inputs": [{"name": "data_0", "shape": [3, 8, 8], "datatype": "FP32", "data": image}]});
    let (_, scores) = post(&gateway, "/v2/models/classifier/infer", None, plain).await;
    let scores: Vec<f64> = scores["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(scores.len(), 5, "the configured dims, reshaped back");
    let mut order: Vec<usize> = (0..5).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    for (rank, entry) in output["data"].as_array().unwrap().iter().enumerate() {
        let index = order[rank];
        let parts: Vec<&str> = entry.as_str().unwrap().splitn(3, ':').collect();
        assert_eq!(parts[1], index.to_string(), "{entry}");
        assert_eq!(parts[2], labels[index], "{entry}");
        assert!(
            (parts[0].parse::<f64>().unwrap() - scores[index]).abs() < 1e-4,
            "{entry}"
        );
    }
    let (status, answer) = post(
        &gateway,
        "/v2/models/classifier/infer",
        None,
        request(json!(0)),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_mode_follows_the_folder() {
    let repo = repository();
    let gateway = TestGateway::start_with(repo.path(), |config| {
        config.models.control_mode = ControlMode::Poll;
        config.models.poll_interval =
            switchyard_gateway::config::HumanDuration(std::time::Duration::from_millis(100));
    })
    .await;
    let versions = |body: &Value| body["versions"].clone();
    let (_, simple) = gateway.get("/v2/models/simple").await;
    assert_eq!(versions(&simple), json!(["1"]));
    // A new version folder: served (Triton's default policy then serves the latest only).
    let simple_dir = repo.path().join("simple");
    std::fs::create_dir_all(simple_dir.join("2")).unwrap();
    std::fs::copy(
        simple_dir.join("1/model.onnx"),
        simple_dir.join("2/model.onnx"),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (ready, _) = gateway.get("/v2/models/simple/versions/2/ready").await;
        let (_, simple) = gateway.get("/v2/models/simple").await;
        if ready == 200 && versions(&simple) == json!(["2"]) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "version 2 never took over: {simple}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        gateway.get("/v2/models/simple/versions/2/ready").await.0,
        200
    );
    // A model whose folder is gone is unloaded.
    std::fs::remove_dir_all(repo.path().join("classifier")).unwrap();
    loop {
        if gateway.get("/v2/models/classifier/ready").await.0 != 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "classifier still served"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Load and unload are refused in this mode, as in Triton.
    let (status, body) = post(
        &gateway,
        "/v2/repository/models/simple/load",
        None,
        json!({}),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    gateway.stop().await;
}
