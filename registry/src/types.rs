use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Model {
    pub name: String,
    pub description: String,
    pub created_ms: i64,
}

/// The longest description a model keeps, and the longest `source` or `dataset` of scores.
pub const MAX_DESCRIPTION_BYTES: usize = 4096;
/// The most metrics one write of scores may carry.
pub const MAX_METRICS: usize = 64;
/// The most versions one write of traffic weights may name.
pub const MAX_WEIGHTS: usize = 1024;

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewModel {
    /// Letters, digits, `_`, `-` and `.` (not first); at most 128.
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")
    )]
    pub name: String,
    /// At most 4096 bytes.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 4096))]
    pub description: String,
}

/// Where a version is in its life: `registered` -> `loading` -> `ready` | `failed`, or
/// `pending` while its memory does not fit on any allowed device; removal goes `draining` ->
/// `retired`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum VersionState {
    Registered,
    Pending,
    Loading,
    Ready,
    Failed,
    Draining,
    Retired,
}

impl VersionState {
    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Registered => "registered",
            VersionState::Pending => "pending",
            VersionState::Loading => "loading",
            VersionState::Ready => "ready",
            VersionState::Failed => "failed",
            VersionState::Draining => "draining",
            VersionState::Retired => "retired",
        }
    }

    /// Whether the version is meant to be served (loaded, or to be loaded).
    pub fn is_live(self) -> bool {
        matches!(
            self,
            VersionState::Registered
                | VersionState::Pending
                | VersionState::Loading
                | VersionState::Ready
        )
    }
}

impl fmt::Display for VersionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for VersionState {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match text {
            "registered" => VersionState::Registered,
            "pending" => VersionState::Pending,
            "loading" => VersionState::Loading,
            "ready" => VersionState::Ready,
            "failed" => VersionState::Failed,
            "draining" => VersionState::Draining,
            "retired" => VersionState::Retired,
            other => return Err(format!("unknown version state '{other}'")),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Version {
    pub model: String,
    pub label: String,
    /// `onnx` or `libtorch` (TorchScript), as `gateway/src/control/runtimes.rs` lists them.
    pub runtime: String,
    /// Path of the model file.
    pub artifact: String,
    /// Serving settings, as in a model.toml (JSON object).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub config: serde_json::Value,
    /// Free-form metadata (JSON object).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub metadata: serde_json::Value,
    pub state: VersionState,
    /// Why the version is in its state (a load error, say); empty otherwise.
    pub state_reason: String,
    pub created_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewVersion {
    /// The label; the next integer when absent.
    #[serde(default)]
    pub version: Option<String>,
    /// `onnx` or `libtorch` (TorchScript), as `gateway/src/control/runtimes.rs` lists them.
    pub runtime: String,
    /// Path of the model file on the gateway's machine.
    pub artifact: String,
    /// Serving settings: the keys of `model.toml`.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub config: Option<serde_json::Value>,
    /// Free-form metadata kept with the version.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub metadata: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Score {
    pub model: String,
    pub version: String,
    pub metric: String,
    pub value: f64,
    pub source: String,
    pub dataset: String,
    pub revision: i64,
    pub created_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewScores {
    /// 1 to 64 metrics: a name (as a model's) and a finite number.
    #[cfg_attr(feature = "openapi", schema(schema_with = metrics_schema))]
    pub metrics: BTreeMap<String, f64>,
    /// At most 4096 bytes.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 4096))]
    pub source: String,
    /// At most 4096 bytes.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 4096))]
    pub dataset: String,
}

/// `{name: number}`, the names as a model's.
#[cfg(feature = "openapi")]
fn metrics_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
    let mut names = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$"))
        .build();
    names.max_length = Some(128);
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(names))
        .additional_properties(Some(AdditionalProperties::RefOr(
            ObjectBuilder::new().schema_type(Type::Number).into(),
        )))
        .min_properties(Some(1))
        .max_properties(Some(MAX_METRICS))
        .build()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    pub revision: i64,
    pub actor: String,
    pub action: String,
    pub model: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub payload: serde_json::Value,
    pub created_ms: i64,
}

/// A model with everything that decides how it is served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelRecord {
    pub model: Model,
    pub versions: Vec<Version>,
    /// Version label -> weight; empty means no policy (the highest ready version serves).
    pub traffic: BTreeMap<String, u64>,
    /// Alias -> version label.
    pub aliases: BTreeMap<String, String>,
    /// The routing policy (JSON object; `{"mode": "fixed"}` unless set).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub policy: serde_json::Value,
    /// Version label -> metric -> its latest score.
    pub latest_scores: BTreeMap<String, BTreeMap<String, f64>>,
    /// Version label -> the bandit's reward statistics.
    pub rewards: BTreeMap<String, Rewards>,
}

/// Rewards in [0, 1] summed: `successes` holds the sum of rewards, `failures` the sum of
/// their complements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Rewards {
    pub successes: f64,
    pub failures: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Snapshot {
    pub revision: i64,
    pub models: Vec<ModelRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the registry's state (a duplicate, a version with traffic).
    #[error("{0}")]
    Conflict(String),
    /// The request is malformed or names something it may not.
    #[error("{0}")]
    Invalid(String),
    #[error("registry storage failed: {0}")]
    Storage(String),
}

impl From<sqlx::Error> for RegistryError {
    fn from(error: sqlx::Error) -> Self {
        RegistryError::Storage(error.to_string())
    }
}

impl From<sqlx::migrate::MigrateError> for RegistryError {
    fn from(error: sqlx::migrate::MigrateError) -> Self {
        RegistryError::Storage(format!("migration failed: {error}"))
    }
}

/// Names of models, versions and aliases: what a URL path segment and a folder can hold.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// A rollout as the registry keeps it: `body` is the gateway's document of its steps, gates,
/// progress and analyses; the registry knows only its model, state and generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutRecord {
    pub id: i64,
    pub model: String,
    /// `pending`, `running` and `paused` are active; at most one per model.
    pub state: String,
    /// Grows by one with every write.
    pub generation: i64,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub body: serde_json::Value,
    pub created_ms: i64,
    pub updated_ms: i64,
}

impl RolloutRecord {
    pub fn is_active(state: &str) -> bool {
        matches!(state, "pending" | "running" | "paused")
    }
}

/// One write of a rollout, applied in one transaction with what it does to the model's
/// traffic, so that a crash never leaves the rollout and the weights apart.
#[derive(Debug, Clone, Default)]
pub struct RolloutWrite {
    /// `None` creates a rollout; `Some(g)` updates the one with that id whose generation is
    /// still `g` (else [`RegistryError::Conflict`]).
    pub existing: Option<(i64, i64)>,
    pub state: String,
    pub body: serde_json::Value,
    /// The event's action (`rollout.started`, `rollout.step`, ...) and payload.
    pub action: String,
    pub payload: serde_json::Value,
    /// New traffic weights for the model.
    pub weights: Option<BTreeMap<String, u64>>,
    /// A new routing policy for the model (JSON object).
    pub policy: Option<serde_json::Value>,
    /// (alias, version) to set.
    pub alias: Option<(String, String)>,
}

/// One gateway's running totals for one version (a JSON document the gateway defines).
#[derive(Debug, Clone, PartialEq)]
pub struct CounterRow {
    pub gateway: String,
    pub version: String,
    pub body: serde_json::Value,
    pub updated_ms: i64,
}

/// An evaluation job: `running`, then `done` (with its report), `failed` (with the reason in
/// the report's `error`) or `cancelled`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EvaluationRecord {
    pub id: i64,
    pub model: String,
    pub state: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub request: serde_json::Value,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub report: serde_json::Value,
    pub created_ms: i64,
    /// 0 while running.
    pub finished_ms: i64,
}

/// A gateway of the cluster, as its heartbeat last wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeRecord {
    pub id: String,
    /// host:port of its gRPC listener, for peers that forward to it.
    pub address: String,
    /// Its devices with their budgets, free memory and load (a JSON document the gateway
    /// defines).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub body: serde_json::Value,
    /// Grows by one with every heartbeat.
    pub beat: i64,
    pub started_ms: i64,
    pub heartbeat_ms: i64,
    /// How long ago its last heartbeat was written, by the database's clock (both times are
    /// the database's, so machines whose clocks disagree agree on this).
    pub age_ms: i64,
}

/// What one node does with one version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeVersion {
    pub node: String,
    pub model: String,
    pub version: String,
    /// `loading`, `ready`, `failed`, `pending` or `draining`.
    pub state: String,
    pub reason: String,
    pub replicas: i64,
    pub updated_ms: i64,
}

/// One heartbeat: the node's record and the whole of its per-version state, written together.
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    pub node: String,
    pub address: String,
    pub body: serde_json::Value,
    /// (model, version, state, reason, replicas).
    pub versions: Vec<(String, String, String, String, i64)>,
}

/// Replicas of a version that the cluster placer put on a node's device.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlacementRow {
    pub model: String,
    pub version: String,
    pub node: String,
    pub device: String,
    pub replicas: i64,
}

/// An inference API key as the registry keeps it: its digest, never its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The key's public id, which the management API names it by.
    pub id: String,
    /// The tenant: the name its requests are counted under.
    pub name: String,
    /// SHA-256 of the secret, as 64 hex digits.
    pub digest: String,
    /// The first characters of the secret, to recognise it by.
    pub prefix: String,
    /// What the key may do: allowed models, limits, default priority (a JSON document the
    /// gateway defines and checks).
    pub spec: serde_json::Value,
    pub created_ms: i64,
    /// When its secret was last replaced.
    pub rotated_ms: Option<i64>,
    /// When it was revoked; a revoked key admits nothing.
    pub revoked_ms: Option<i64>,
}

/// A key to add: the gateway makes the secret and passes only its digest.
#[derive(Debug, Clone, PartialEq)]
pub struct NewKey {
    pub id: String,
    pub name: String,
    pub digest: String,
    pub prefix: String,
    pub spec: serde_json::Value,
}
