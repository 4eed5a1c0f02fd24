//! The gateway's configuration: `config/switchyard.toml`, embedded as the default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The default configuration file, compiled into the binary.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/switchyard.toml");

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub tracing: TracingConfig,
    pub http: HttpConfig,
    pub grpc: GrpcConfig,
    pub metrics: MetricsConfig,
    pub inference: InferenceConfig,
    pub admin: AdminConfig,
    pub registry: RegistryConfig,
    pub models: ModelsConfig,
    pub onnxruntime: OnnxRuntimeConfig,
    pub serving: ServingConfig,
    pub connections: ConnectionsConfig,
    pub tls: TlsConfig,
    pub log: LogConfig,
    pub cluster: ClusterConfig,
    pub shared_memory: SharedMemoryConfig,
    pub capture: CaptureConfig,
    /// Devices and their memory budgets; a device not listed gets its physical memory (the
    /// host's RAM for `cpu`, NVML's figure for `cuda:N`) less nothing.
    pub devices: Vec<DeviceConfig>,
}

/// `[[devices]] id = "cuda:0" memory = "80GiB" reserve = "2GiB"`: what may be placed on a
/// device. A declared size below the physical one wins, so this also defines virtual devices
/// for tests and CPU-only machines.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    pub id: String,
    pub memory: Option<ByteSize>,
    #[serde(default)]
    pub reserve: ByteSize,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub addr: SocketAddr,
    pub max_request_size: ByteSize,
    /// How long a request's body (or a gRPC message) may take to arrive, from its first byte
    /// to its last; past it the request is refused with 408 / DEADLINE_EXCEEDED.
    pub request_read_timeout: HumanDuration,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcConfig {
    pub addr: SocketAddr,
    /// Largest message received or sent.
    pub max_message_size: ByteSize,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsConfig {
    pub dir: PathBuf,
    /// Register model folders that the registry does not know yet at every start (the first
    /// start always imports the whole repository).
    pub import_on_start: bool,
    /// How the repository folder and the served models follow each other (Triton's
    /// `--model-control-mode`): `none`, `poll` or `explicit`.
    pub control_mode: ControlMode,
    /// With `poll`: how often the folder is read again.
    pub poll_interval: HumanDuration,
    /// With `explicit`: the models loaded at start (`*`: every one), as Triton's `--load-model`.
    pub load: Vec<String>,
    /// How long a repository load or unload waits for the versions it changed.
    pub load_timeout: HumanDuration,
}

/// Triton's system shared-memory extension: bounds on what clients may register.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SharedMemoryConfig {
    /// Regions registered at once.
    pub max_regions: usize,
    /// The sum of the registered regions' sizes.
    pub max_total_size: ByteSize,
}

impl Default for SharedMemoryConfig {
    fn default() -> Self {
        SharedMemoryConfig {
            max_regions: 256,
            max_total_size: ByteSize(16 << 30),
        }
    }
}

/// `[capture]`: where captured requests may be written, and the bounds that keep capture off
/// the request path (docs/capture.md).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaptureConfig {
    /// The folders a model's file sinks may be in (a relative folder is under the first).
    pub roots: Vec<PathBuf>,
    /// Events waiting to be encoded, and waiting for each sink.
    pub queue_events: usize,
    /// Bytes of events each queue holds: the encoder's (tensors), each sink's (encoded).
    pub queue_bytes: ByteSize,
    /// Tensor bytes one event carries; the tensors past it are kept as their name, datatype
    /// and shape only.
    pub event_bytes: ByteSize,
    /// A file sink's file is rotated past this size.
    pub file_bytes: ByteSize,
    /// Rotated files a file sink keeps; the oldest is deleted past it.
    pub files_kept: usize,
    /// How long one HTTP sink delivery may take.
    pub http_timeout: HumanDuration,
    /// Deliveries one HTTP sink makes at once.
    pub http_concurrency: usize,
    /// A CA (PEM) that https sinks' certificates may chain to, beside the public roots.
    pub http_ca: PathBuf,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            roots: vec![PathBuf::from("data/capture")],
            queue_events: 4096,
            queue_bytes: ByteSize(64 << 20),
            event_bytes: ByteSize(1 << 20),
            file_bytes: ByteSize(64 << 20),
            files_kept: 8,
            http_timeout: HumanDuration(Duration::from_secs(2)),
            http_concurrency: 8,
            http_ca: PathBuf::new(),
        }
    }
}

/// How the model repository's folder and the served models follow each other.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ControlMode {
    /// Imported at the first start (or every start with `import_on_start`); Triton's
    /// repository load and unload are refused.
    #[default]
    None,
    /// Imported at every start, then read again every `poll_interval`: new models and
    /// versions registered, changed ones reloaded, removed ones unloaded.
    Poll,
    /// Only what `load` names at start, then what the repository extension's load asks.
    Explicit,
}

impl ControlMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ControlMode::None => "none",
            ControlMode::Poll => "poll",
            ControlMode::Explicit => "explicit",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracingConfig {
    /// OTLP/gRPC endpoint of a trace collector, e.g. "http://127.0.0.1:4317"; empty: no export.
    pub otlp_endpoint: String,
    /// Share of new traces recorded (0 to 1); a caller's sampled `traceparent` is followed.
    pub sampling_ratio: f64,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            otlp_endpoint: String::new(),
            sampling_ratio: 1.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Prometheus text exposition at /metrics.
    pub addr: SocketAddr,
    /// Off only to measure what metrics cost: every metric becomes a no-op.
    pub enabled: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            addr: SocketAddr::from(([0, 0, 0, 0], 8002)),
            enabled: true,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferenceConfig {
    /// API keys of the inference endpoints (HTTP and gRPC), as SHA-256 hex digests; empty
    /// leaves them open. SWITCHYARD_API_KEY adds one.
    pub api_keys: Vec<String>,
    /// The key of the MAC in the request ids the gateway issues, 128 hex digits; empty: the
    /// one stored in the registry (the first gateway to start makes it), so that every
    /// gateway sharing a registry accepts feedback on the others' ids.
    pub request_id_key: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// The management API; loopback by default.
    pub addr: SocketAddr,
    /// Bearer tokens, kept as SHA-256 hex digests.
    pub tokens: Vec<AdminToken>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminToken {
    /// SHA-256 of the token, hex (`printf %s TOKEN | sha256sum`).
    pub sha256: String,
    pub role: AdminRole,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminRole {
    Read,
    Write,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// `sqlite://PATH` or `postgres://...`.
    pub url: String,
    /// Where the artifacts of versions registered through the API may be; empty: the model
    /// repository and `data/`.
    pub artifact_roots: Vec<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tokens: Vec::new(),
        }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            url: "sqlite://data/registry.db".into(),
            artifact_roots: Vec::new(),
        }
    }
}

/// `[cluster]`: gateways sharing a PostgreSQL registry as one cluster (see docs/cluster.md).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    pub enabled: bool,
    /// This node's id; empty: the host name.
    pub node_id: String,
    /// host:port at which peers reach this node's gRPC listener; empty: the node id and the
    /// gRPC port when the listener binds every address, else the listener's address.
    pub advertise: String,
    /// How often the node writes its heartbeat (and reads the others').
    pub heartbeat: HumanDuration,
    /// A node whose heartbeat has not moved for this long is dead.
    pub dead_after: HumanDuration,
    /// `auction` or `best_fit` (see docs/cluster.md for the comparison).
    pub placer: String,
    /// The CA (PEM) that peers' certificates chain to, when `[tls]` is on and forwards go over
    /// TLS; empty: `tls.cert` itself (one certificate shared by the nodes, or a chain that
    /// ends in the CA).
    pub peer_ca: PathBuf,
    /// Forwards one peer may hold at once; past it, others take the requests, or 429.
    pub max_forwards_per_peer: u64,
    /// A peer that answers none of the forwards it holds for this long is out of rotation
    /// until it answers again.
    pub peer_stall_timeout: HumanDuration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            enabled: false,
            node_id: String::new(),
            advertise: String::new(),
            heartbeat: HumanDuration(Duration::from_secs(1)),
            dead_after: HumanDuration(Duration::from_secs(3)),
            placer: "auction".into(),
            peer_ca: PathBuf::new(),
            max_forwards_per_peer: 512,
            peer_stall_timeout: HumanDuration(Duration::from_secs(5)),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OnnxRuntimeConfig {
    /// Empty means: search for it (see `switchyard_runtimes::onnx::locate_library`).
    pub library: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServingConfig {
    /// Inference requests handled at once by the whole gateway; past it, 429 at once.
    pub max_in_flight: usize,
    /// Bytes of request bodies being read or handled, with what decoding them takes; past it,
    /// 429 / RESOURCE_EXHAUSTED at once.
    pub max_in_flight_bytes: ByteSize,
    pub queue_capacity: usize,
    /// Threads ONNX Runtime (or libtorch) may use inside one operator of one call; 0: the
    /// cores this process may use, shared among a version's replicas.
    pub intra_op_threads: usize,
    pub replicas: usize,
    pub max_queue_delay: HumanDuration,
    pub timeout: HumanDuration,
    /// How long a replica's worker whose queue ran dry polls it (yielding its core between
    /// polls) before it sleeps; zero sleeps at once.
    pub worker_spin: HumanDuration,
    /// The nice value of the replicas' worker threads (-20 to 19; below 0 needs
    /// CAP_SYS_NICE, and is left at 0 with a warning without it).
    pub nice: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// TLS on the HTTP, gRPC and management listeners: on when a certificate and key are set.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, PEM.
    pub cert: PathBuf,
    /// Its private key, PEM.
    pub key: PathBuf,
    /// A CA (PEM) whose client certificates the management API then requires (mutual TLS).
    pub admin_client_ca: PathBuf,
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        !self.cert.as_os_str().is_empty() && !self.key.as_os_str().is_empty()
    }
}

/// What every listener (HTTP, gRPC, management, metrics) allows a connection.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionsConfig {
    /// Connections open at once per listener; past it a new one is closed at once.
    pub max: usize,
    /// Connections one client address may hold open at once per listener.
    pub max_per_client: usize,
    /// A connection this old is shut down gracefully (HTTP/2's GOAWAY; HTTP/1 closes after the
    /// request in hand), and the client reconnects; "0s": no limit.
    pub max_age: HumanDuration,
    /// HTTP/1: from the first byte of a request's head to its last; an overdue head gets 408.
    pub header_read_timeout: HumanDuration,
    /// A connection with no request in service for this long is closed (pings and other
    /// bytes without a request do not count); one serving a request is never idle.
    pub idle_timeout: HumanDuration,
    /// HTTP/2 and gRPC: how often the server pings a connection, and how long it waits for the
    /// answer before closing it.
    pub keepalive_interval: HumanDuration,
    pub keepalive_timeout: HumanDuration,
    /// HTTP/2 and gRPC: streams (requests) open at once on one connection.
    pub max_concurrent_streams: u32,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        ConnectionsConfig {
            max: 4096,
            max_per_client: 1024,
            max_age: HumanDuration(Duration::from_secs(3600)),
            header_read_timeout: HumanDuration(Duration::from_secs(10)),
            idle_timeout: HumanDuration(Duration::from_secs(60)),
            keepalive_interval: HumanDuration(Duration::from_secs(20)),
            keepalive_timeout: HumanDuration(Duration::from_secs(10)),
            max_concurrent_streams: 256,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            addr: SocketAddr::from(([0, 0, 0, 0], 8000)),
            max_request_size: ByteSize(64 * 1024 * 1024),
            request_read_timeout: HumanDuration(Duration::from_secs(10)),
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            addr: SocketAddr::from(([0, 0, 0, 0], 8001)),
            max_message_size: ByteSize(64 * 1024 * 1024),
        }
    }
}

impl Default for ModelsConfig {
    fn default() -> Self {
        ModelsConfig {
            dir: PathBuf::from("models"),
            import_on_start: false,
            control_mode: ControlMode::None,
            poll_interval: HumanDuration(Duration::from_secs(5)),
            load: Vec::new(),
            load_timeout: HumanDuration(Duration::from_secs(120)),
        }
    }
}

/// Long enough to cover a loopback client's turn-around between two requests (about 100 µs
/// here), short enough that a worker spins only while requests keep coming.
pub const DEFAULT_WORKER_SPIN: Duration = Duration::from_micros(250);

impl Default for ServingConfig {
    fn default() -> Self {
        ServingConfig {
            max_in_flight: 1024,
            max_in_flight_bytes: ByteSize(1 << 30),
            queue_capacity: 128,
            intra_op_threads: 0,
            replicas: 1,
            max_queue_delay: HumanDuration(Duration::ZERO),
            timeout: HumanDuration(Duration::from_secs(30)),
            worker_spin: HumanDuration(DEFAULT_WORKER_SPIN),
            nice: 0,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration {origin}: {source}")]
    Parse {
        origin: String,
        source: toml::de::Error,
    },
}

impl Config {
    /// Reads a configuration file, or the embedded default when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            None => Config::parse(EMBEDDED_DEFAULT, "(embedded default)"),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                Config::parse(&text, &path.display().to_string())
            }
        }
    }

    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            origin: origin.to_owned(),
            source,
        })
    }
}

/// A size in bytes, written as an integer or as a string such as "64MiB", "512KiB" or "1GB".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("'{text}' is not a size (expected e.g. 1048576 or \"64MiB\")"))?;
        let multiplier: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" => 1000,
            "KiB" => 1 << 10,
            "MB" => 1000 * 1000,
            "MiB" => 1 << 20,
            "GB" => 1000 * 1000 * 1000,
            "GiB" => 1 << 30,
            other => return Err(format!("unknown size unit '{other}' in '{text}'")),
        };
        number
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(|| format!("size '{text}' is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Bytes(bytes) => Ok(ByteSize(bytes)),
            Raw::Text(text) => ByteSize::parse(&text).map_err(serde::de::Error::custom),
        }
    }
}

/// A duration written as text: "500us", "2ms", "30s", "1m".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub fn parse(text: &str) -> Result<HumanDuration, String> {
        humantime::parse_duration(text.trim())
            .map(HumanDuration)
            .map_err(|e| format!("'{text}' is not a duration (e.g. \"500us\", \"30s\"): {e}"))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        HumanDuration::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_file_matches_the_defaults() {
        let embedded = Config::load(None).expect("embedded config parses");
        assert_eq!(embedded, Config::default());
        assert_eq!(embedded.http.max_request_size, ByteSize(64 * 1024 * 1024));
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(ByteSize::parse("1024"), Ok(ByteSize(1024)));
        assert_eq!(ByteSize::parse("64MiB"), Ok(ByteSize(64 << 20)));
        assert_eq!(ByteSize::parse("2 GB"), Ok(ByteSize(2_000_000_000)));
        assert!(ByteSize::parse("12 parsecs").is_err());
        assert!(ByteSize::parse("MiB").is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(
            HumanDuration::parse("500us"),
            Ok(HumanDuration(Duration::from_micros(500)))
        );
        assert_eq!(
            HumanDuration::parse("30s"),
            Ok(HumanDuration(Duration::from_secs(30)))
        );
        assert!(HumanDuration::parse("soon").is_err());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let error = Config::parse("[http]\nadress = \"127.0.0.1:1\"\n", "test");
        assert!(error.is_err());
    }
}
