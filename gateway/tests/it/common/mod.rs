//! Shared by the integration tests: a real gateway on a random loopback port, serving the
//! repository's models (built by `scripts/setup`), and reference computations.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod pki;
pub mod speech;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use switchyard_gateway::{Config, Running};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The repository's models folder; fails with a hint when `scripts/setup` has not run.
pub fn models_dir() -> PathBuf {
    let dir = repo_root().join("models");
    for needed in [
        "mlp/1/model.onnx",
        "mlp/1/weights.f32",
        "silero_vad/1/model.onnx",
        "silero_vad/2/model.onnx",
        "silero_vad/reference.json",
    ] {
        assert!(
            dir.join(needed).is_file(),
            "models/{needed} is missing: run scripts/setup (scripts/test does it for you)"
        );
    }
    dir
}

pub struct TestGateway {
    pub base: String,
    pub admin: String,
    pub metrics: String,
    pub grpc_addr: std::net::SocketAddr,
    pub client: reqwest::Client,
    running: Option<Running>,
    _registry_dir: Option<tempfile::TempDir>,
}

impl TestGateway {
    pub async fn start(models: &Path) -> TestGateway {
        TestGateway::start_with(models, |_| {}).await
    }

    pub async fn start_with(models: &Path, adjust: impl FnOnce(&mut Config)) -> TestGateway {
        let registry_dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.http.addr = "127.0.0.1:0".parse().unwrap();
        config.grpc.addr = "127.0.0.1:0".parse().unwrap();
        config.admin.addr = "127.0.0.1:0".parse().unwrap();
        config.metrics.addr = "127.0.0.1:0".parse().unwrap();
        config.models.dir = models.to_path_buf();
        // Tests register the repository's own sample models beside their temporary ones.
        config.registry.artifact_roots = vec![models.to_path_buf(), repo_root().join("models")];
        config.registry.url = format!(
            "sqlite://{}",
            registry_dir.path().join("registry.db").display()
        );
        adjust(&mut config);
        let running = switchyard_gateway::start(&config)
            .await
            .expect("gateway starts");
        let gateway = TestGateway {
            base: format!("http://{}", running.http_addr),
            admin: format!("http://{}", running.admin_addr),
            metrics: format!("http://{}/metrics", running.metrics_addr),
            grpc_addr: running.grpc_addr,
            client: reqwest::Client::new(),
            running: Some(running),
            _registry_dir: Some(registry_dir),
        };
        gateway.wait_until_ready().await;
        gateway
    }

    async fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let gateway = &self.running.as_ref().unwrap().gateway;
        loop {
            // Asked of the gateway itself: its listeners may speak TLS.
            if gateway.is_ready() {
                return;
            }
            assert!(Instant::now() < deadline, "gateway not ready within 60 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The value of one series on `/metrics`, named with its labels as Prometheus prints it
    /// (`switchyard_rejections_total{reason="request_timeout"}`); `None` while it is absent.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = self
            .client
            .get(&self.metrics)
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("the metrics text");
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let response = self.client.get(self.url(path)).send().await.expect("GET");
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON body"))
    }

    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.post_raw(path, serde_json::to_vec(body).unwrap()).await
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
        let response = self
            .client
            .post(self.url(path))
            .body(body)
            .send()
            .await
            .expect("POST");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("body");
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("not JSON ({status}): {}", String::from_utf8_lossy(&bytes)));
        (status, value)
    }

    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await.expect("clean stop");
        }
    }
}

/// The `mlp` weights, read from the file `scripts/build_mlp.py` writes beside the model.
pub struct MlpWeights {
    w1: Vec<f32>,
    b1: Vec<f32>,
    w2: Vec<f32>,
    b2: Vec<f32>,
}

pub const MLP_IN: usize = 64;
pub const MLP_HIDDEN: usize = 256;
pub const MLP_OUT: usize = 10;

impl MlpWeights {
    pub fn load() -> MlpWeights {
        let bytes = std::fs::read(models_dir().join("mlp/1/weights.f32")).expect("weights.f32");
        let floats: Vec<f32> = bytes
            .as_chunks::<4>()
            .0
            .iter()
            .map(|c| f32::from_le_bytes(*c))
            .collect();
        let sizes = [
            MLP_IN * MLP_HIDDEN,
            MLP_HIDDEN,
            MLP_HIDDEN * MLP_OUT,
            MLP_OUT,
        ];
        assert_eq!(
            floats.len(),
            sizes.iter().sum::<usize>(),
            "weights.f32 size"
        );
        let (w1, rest) = floats.split_at(sizes[0]);
        let (b1, rest) = rest.split_at(sizes[1]);
        let (w2, b2) = rest.split_at(sizes[2]);
        MlpWeights {
            w1: w1.to_vec(),
            b1: b1.to_vec(),
            w2: w2.to_vec(),
            b2: b2.to_vec(),
        }
    }

    /// y = relu(x W1 + b1) W2 + b2, in f64, for a row-major batch of inputs.
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        let mut y = Vec::new();
        for row in x.chunks(MLP_IN) {
            let hidden: Vec<f64> = (0..MLP_HIDDEN)
                .map(|j| {
                    let sum: f64 = (0..MLP_IN)
                        .map(|i| row[i] as f64 * self.w1[i * MLP_HIDDEN + j] as f64)
                        .sum();
                    (sum + self.b1[j] as f64).max(0.0)
                })
                .collect();
            for k in 0..MLP_OUT {
                let sum: f64 = (0..MLP_HIDDEN)
                    .map(|j| hidden[j] * self.w2[j * MLP_OUT + k] as f64)
                    .sum();
                y.push((sum + self.b2[k] as f64) as f32);
            }
        }
        y
    }
}

/// Deterministic pseudo-random inputs in [-1, 1).
pub fn sample_inputs(count: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..count)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

pub fn as_f32s(value: &serde_json::Value) -> Vec<f32> {
    value
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v.as_f64().expect("number") as f32)
        .collect()
}

pub fn assert_close(actual: &[f32], expected: &[f32], tolerance: f32) {
    assert_eq!(actual.len(), expected.len(), "element count");
    for (index, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= tolerance,
            "element {index}: got {a}, expected {e} (tolerance {tolerance})"
        );
    }
}

/// A repository holding only `mlp` (version 1), with the given model.toml.
pub fn mlp_repository(model_toml: &str) -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(repo.path().join("mlp/1")).unwrap();
    std::fs::copy(
        models_dir().join("mlp/1/model.onnx"),
        repo.path().join("mlp/1/model.onnx"),
    )
    .unwrap();
    std::fs::write(repo.path().join("mlp/model.toml"), model_toml).unwrap();
    repo
}

/// `mlp` version 1 (ONNX) and version 2 (TorchScript) with the sample model.toml, after
/// `toml_prefix` (settings that come first, such as a device).
pub fn mlp_onnx_and_torchscript(toml_prefix: &str) -> tempfile::TempDir {
    let toml = format!(
        "{toml_prefix}{}",
        std::fs::read_to_string(models_dir().join("mlp/model.toml")).unwrap()
    );
    let repo = mlp_repository(&toml);
    std::fs::create_dir_all(repo.path().join("mlp/2")).unwrap();
    std::fs::copy(
        models_dir().join("mlp/2/model.pt"),
        repo.path().join("mlp/2/model.pt"),
    )
    .unwrap();
    repo
}

/// A fresh database on the throwaway PostgreSQL server that scripts/test starts.
pub async fn postgres_url() -> String {
    let admin = std::env::var("SWITCHYARD_TEST_POSTGRES_URL").expect(
        "SWITCHYARD_TEST_POSTGRES_URL is not set: run the tests through scripts/test, which starts a throwaway PostgreSQL",
    );
    sqlx::any::install_default_drivers();
    let name = format!(
        "gw_{}_{}",
        std::process::id(),
        fastrand::u64(..1_000_000_000)
    );
    let mut connection = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin)
        .await
        .unwrap();
    sqlx::Executor::execute(&mut connection, format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    format!("{}/{name}", admin.rsplit_once('/').unwrap().0)
}

pub const WRITER_TOKEN: &str = "writer-secret";
pub const READER_TOKEN: &str = "reader-secret";

/// Admin tokens for the tests, as the configuration holds them (SHA-256).
pub fn test_tokens() -> Vec<switchyard_gateway::config::AdminToken> {
    use sha2::Digest;
    let hex = |token: &str| -> String {
        sha2::Sha256::digest(token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    vec![
        switchyard_gateway::config::AdminToken {
            sha256: hex(WRITER_TOKEN),
            role: switchyard_gateway::config::AdminRole::Write,
        },
        switchyard_gateway::config::AdminToken {
            sha256: hex(READER_TOKEN),
            role: switchyard_gateway::config::AdminRole::Read,
        },
    ]
}

impl TestGateway {
    /// A management API call with a token; returns status and JSON body.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let writes = method == reqwest::Method::POST || method == reqwest::Method::PUT;
        let mut request = self.client.request(method, format!("{}{path}", self.admin));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        match body {
            Some(body) => request = request.json(&body),
            // The API takes writes as JSON only, bodiless ones included.
            None if writes => request = request.header("content-type", "application/json"),
            None => {}
        }
        let response = request.send().await.expect("admin call");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("not JSON ({status}): {}", String::from_utf8_lossy(&bytes)));
        (status, value)
    }

    /// Waits until the management API reports the version as served READY by this gateway.
    pub async fn wait_for_serving(&self, model: &str, version: &str) {
        self.wait_for_version(model, version, "serving", "READY", Duration::from_secs(30))
            .await;
    }

    /// Waits, at most `within`, until the management API shows the version with `field` set
    /// to `value` (`"state"`, `"retired"`).
    pub async fn wait_for_version(
        &self,
        model: &str,
        version: &str,
        field: &str,
        value: &str,
        within: Duration,
    ) {
        let deadline = Instant::now() + within;
        loop {
            let (status, body) = self
                .admin(
                    reqwest::Method::GET,
                    &format!("/v1/models/{model}/versions/{version}"),
                    Some(WRITER_TOKEN),
                    None,
                )
                .await;
            if status == 200 && body[field] == value {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{model}/{version} never had {field} {value}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process that is killed when the test ends, even by a failed assertion.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Process {
    pub child: std::process::Child,
    pub http: String,
    pub admin: String,
    /// host:port of the gRPC listener.
    pub grpc: String,
    /// The Prometheus endpoint's URL.
    pub metrics: String,
    /// Where the child writes its log (stderr), for a failing test to show.
    pub log: tempfile::NamedTempFile,
}

impl Process {
    /// The child's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for Process {
    /// A failed assertion must not leave a gateway running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A management API call to a spawned gateway with the writer's token: (status, JSON body).
pub async fn admin_as_writer(
    gateway: &Process,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let client = reqwest::Client::new();
    let mut request = client
        .request(method, format!("{}{path}", gateway.admin))
        .bearer_auth(WRITER_TOKEN)
        .header("content-type", "application/json");
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (
        status,
        response.json().await.unwrap_or(serde_json::Value::Null),
    )
}

/// [`admin_as_writer`] that must succeed; its JSON body.
pub async fn must(
    gateway: &Process,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    let (status, value) = admin_as_writer(gateway, method, path, body).await;
    assert!((200..300).contains(&status), "{path}: {status} {value}");
    value
}

/// The k6 that `scripts/setup` installs, else the one on PATH.
pub fn k6() -> PathBuf {
    let bundled = repo_root().join(".tools/bin/k6");
    if bundled.is_file() {
        return bundled;
    }
    PathBuf::from("k6")
}

/// Starts the real `switchyard` binary and waits until it is ready.
///
/// Its ports are drawn here and bound by the child a moment later; in between, another test's
/// listener or an outgoing connection can take one. A child that could not listen is started
/// again on fresh ports; any other early exit, or a gateway that is not ready in time, fails
/// the test with the child's log.
pub async fn spawn_switchyard(repo: &std::path::Path, registry: &str, extra: &[&str]) -> Process {
    const ATTEMPTS: usize = 3;
    for attempt in 1..=ATTEMPTS {
        match try_spawn_switchyard(repo, registry, extra).await {
            Ok(process) => return process,
            Err(log) if log.contains("cannot listen") && attempt < ATTEMPTS => continue,
            Err(log) => panic!("switchyard exited before it was ready; its log:\n{log}"),
        }
    }
    unreachable!("the last attempt returns or panics")
}

/// One start: the ready gateway, or the log of a child that exited first.
async fn try_spawn_switchyard(
    repo: &std::path::Path,
    registry: &str,
    extra: &[&str],
) -> Result<Process, String> {
    let (http, grpc, admin, metrics) = (free_port(), free_port(), free_port(), free_port());
    let log = tempfile::NamedTempFile::new().unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["serve", "--models"])
        .arg(repo)
        .args(["--registry", registry])
        .args(["--http-addr", &format!("127.0.0.1:{http}")])
        .args(["--grpc-addr", &format!("127.0.0.1:{grpc}")])
        .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics}")])
        .args(extra)
        .env("SWITCHYARD_ADMIN_TOKEN", WRITER_TOKEN)
        .stdout(std::process::Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let mut process = Process {
        child,
        http: format!("http://127.0.0.1:{http}"),
        admin: format!("http://127.0.0.1:{admin}"),
        grpc: format!("127.0.0.1:{grpc}"),
        metrics: format!("http://127.0.0.1:{metrics}/metrics"),
        log,
    };
    // A connection the child accepted but never answers must not outlast the deadline.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    // Generous: on CI's 2 cores this start shares the machine with other tests' gateways.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = client
            .get(format!("{}/v2/health/ready", process.http))
            .send()
            .await;
        if ready.is_ok_and(|r| r.status() == 200) {
            return Ok(process);
        }
        if let Ok(Some(status)) = process.child.try_wait() {
            return Err(format!("({status})\n{}", process.log_text()));
        }
        assert!(
            Instant::now() < deadline,
            "switchyard did not become ready in 60 s; its log:\n{}",
            process.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A gRPC ModelInfer request for `mlp`, its rows as raw contents.
pub fn mlp_raw_request(
    x: &[f32],
    rows: usize,
) -> switchyard_gateway::protocol::grpc::pb::ModelInferRequest {
    use switchyard_gateway::protocol::grpc::pb;
    pb::ModelInferRequest {
        model_name: "mlp".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "x".into(),
            datatype: "FP32".into(),
            shape: vec![rows as i64, MLP_IN as i64],
            ..Default::default()
        }],
        raw_input_contents: vec![
            x.iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>()
                .into(),
        ],
        ..Default::default()
    }
}

/// A socket to `addr` from the loopback address 127.0.0.`host`: clients at different
/// addresses, as the gateway's per-client limits see them.
pub async fn connect_from(host: u8, addr: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(std::net::SocketAddr::from(([127, 0, 0, host], 0)))
        .unwrap();
    socket.connect(addr.parse().unwrap()).await.unwrap()
}
