//! The management API's answers, one type per shape. The handlers build them, the OpenAPI
//! document names them (`docs/openapi.json`), and the CLI's tables read them back
//! ([`super::output`]): a field renamed here breaks the build, not a script at run time.
//!
//! Registry records ([`switchyard_registry::ModelRecord`] and the rest) appear as they are;
//! the answers that the gateway computes live beside what computes them (the resources in
//! `control::capacity`, a rollout's view in `control::rollout::control`, the cluster's node
//! body in `control::cluster`) and are re-exported here, so that this file lists them all.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use switchyard_registry::{
    EvaluationRecord, Event, Model, ModelRecord, NodeVersion, PlacementRow, Rewards, Score,
    Version, VersionState,
};
use utoipa::ToSchema;

use crate::routing::TrafficPolicy;

pub use crate::auth::keys::{KeySpec, Limits};
pub use crate::control::capacity::{
    DeviceReport, PlannedQuality, QualityPlanReport, QualityStep, ReplicaReport, ResourceReport,
    ScalerReport, VersionResources,
};
pub use crate::control::cluster::{NodeBody, NodeDevice};
pub use crate::control::rollout::control::{LiveStage, RolloutView};
pub use crate::core::capture::CaptureView;
pub use crate::core::feedback::FeedbackReceipt;
pub use crate::routing::objective::{ObjectivePlan, PlannedVersion};
pub use crate::telemetry::keys::KeyFiguresView;

/// `GET /v1/models`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelList {
    pub revision: i64,
    pub models: Vec<ModelRecord>,
}

/// `POST /v1/models`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelCreated {
    pub revision: i64,
    pub model: ModelRecord,
}

/// `GET /v1/models/{m}`: the registry's record, each version with what this gateway (and, in
/// a cluster, each node) does with it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ServedModel {
    pub model: Model,
    pub versions: Vec<ServedVersion>,
    /// Version label -> weight.
    pub traffic: BTreeMap<String, u64>,
    /// Alias -> version label.
    pub aliases: BTreeMap<String, String>,
    /// The routing policy (`{"mode": "fixed"}` unless set).
    #[schema(value_type = Object)]
    pub policy: serde_json::Value,
    /// Version label -> metric -> its latest score.
    pub latest_scores: BTreeMap<String, BTreeMap<String, f64>>,
    /// Version label -> the bandit's reward statistics.
    pub rewards: BTreeMap<String, Rewards>,
}

/// A version's record with how this gateway serves it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ServedVersion {
    #[serde(flatten)]
    pub version: Version,
    /// This gateway's state for it (`ready`, `loading`, `pending`, `failed`, `remote`...);
    /// null when this gateway does not hold it.
    pub serving: Option<String>,
    /// In a model's answer: what each node of the cluster does with it (empty outside one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<NodeVersion>>,
}

/// `GET /v1/models/{m}/versions`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VersionList {
    pub versions: Vec<Version>,
}

/// `POST /v1/models/{m}/versions`: the version as the gateway picked it up (`loading`, or
/// `failed` with its reason), or `registered` when it had not within two seconds.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VersionCreated {
    pub revision: i64,
    pub version: Version,
}

/// `DELETE /v1/models/{m}/versions/{v}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VersionRemoved {
    pub revision: i64,
    /// `draining`: it retires once no request holds it.
    pub state: VersionState,
}

/// A write whose answer is the registry's new revision alone.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Revision {
    pub revision: i64,
}

/// `GET /v1/models/{m}/versions/{v}/scores`, oldest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ScoreList {
    pub scores: Vec<Score>,
}

/// A model's traffic weights, read or written.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Traffic {
    /// Version label -> weight; a version's share is its weight over the sum.
    pub weights: BTreeMap<String, u64>,
    pub revision: i64,
}

/// A model's routing policy; a write's answer carries the new revision too.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PolicyAnswer {
    /// As `PUT /v1/models/{m}/policy` takes it.
    #[schema(value_type = Object)]
    pub policy: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
}

/// `PUT /v1/models/{m}/aliases/{a}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AliasSet {
    pub alias: String,
    pub version: String,
    pub revision: i64,
}

/// `GET /v1/models/{m}/experiment`: this gateway's live figures per version.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Experiment {
    pub model: String,
    pub policy: TrafficPolicy,
    /// Whether any feedback reached this model since the gateway started.
    pub feedback_received: bool,
    /// Under the objective policy: its latest plan.
    pub objective: Option<ObjectivePlan>,
    pub versions: Vec<ExperimentVersion>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ExperimentVersion {
    pub version: String,
    /// This gateway's state for it.
    pub state: String,
    /// Whether the policy may route to it now.
    pub eligible: bool,
    pub traffic_weight: u64,
    /// Its share of the policy's routing now, in [0, 1].
    pub effective_weight: f64,
    /// The score the score policy ranks it by.
    pub score: Option<f64>,
    pub requests: u64,
    pub errors: u64,
    /// Over the last requests, in [0, 1]; null before any.
    pub recent_error_rate: Option<f64>,
    pub latency_ms: Quantiles,
    pub reward: RewardEstimate,
    /// Primary version -> how this version's mirrored outputs compared with its.
    pub shadow_of: BTreeMap<String, ShadowComparison>,
}

/// Latency quantiles in milliseconds; null before any request.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Quantiles {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RewardEstimate {
    pub observations: f64,
    pub mean: f64,
    /// The mean's 95% interval.
    pub ci95: [f64; 2],
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ShadowComparison {
    pub pairs: u64,
    pub errors: u64,
    pub max_abs_diff: f64,
    pub mean_max_abs_diff: Option<f64>,
    /// The share of compared pairs whose argmax agreed; null before any.
    pub argmax_agreement: Option<f64>,
}

/// `GET /v1/models/{m}/figures`: series aligned with `times` (null where a version did not
/// exist or served nothing).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FigureSeries {
    pub model: String,
    pub interval_s: f64,
    /// Unix time of each sample, in seconds.
    pub times: Vec<f64>,
    pub versions: BTreeMap<String, VersionSeries>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VersionSeries {
    pub requests_per_s: Vec<Option<f64>>,
    pub error_rate: Vec<Option<f64>>,
    pub p50_ms: Vec<Option<f64>>,
    pub p99_ms: Vec<Option<f64>>,
}

/// `POST /v1/models/{m}/evaluations` and `.../cancel`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EvaluationAnswer {
    pub revision: i64,
    pub evaluation: Option<EvaluationRecord>,
}

/// `GET /v1/models/{m}/evaluations`, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EvaluationList {
    pub evaluations: Vec<EvaluationRecord>,
}

/// A rollout as the API shows it: readable, or a row this build cannot read (which can still
/// be aborted).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum RolloutEntry {
    Shown(Box<RolloutView>),
    Unreadable(UnreadableRollout),
}

/// Its fields alone (no others), so that a readable rollout never also reads as this one.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnreadableRollout {
    pub id: i64,
    pub model: String,
    pub state: String,
    /// Why it cannot be read; absent on the answer to its abort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A rollout write's answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RolloutAnswer {
    pub revision: i64,
    pub rollout: RolloutEntry,
}

/// `GET /v1/models/{m}/rollouts`, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RolloutList {
    pub rollouts: Vec<RolloutEntry>,
}

/// `GET /v1/cluster`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Cluster {
    /// Whether this gateway runs with `[cluster] enabled = true`.
    pub enabled: bool,
    /// This gateway's node id, in a cluster.
    pub node: Option<String>,
    pub nodes: Vec<ClusterNode>,
    /// The leader's placement: replicas of a version on a node's device.
    pub placements: Vec<PlacementRow>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClusterNode {
    pub id: String,
    /// host:port of its gRPC listener.
    pub address: String,
    /// Whether its last heartbeat is younger than `cluster.dead_after`.
    pub alive: bool,
    pub heartbeat_age_ms: i64,
    pub started_ms: i64,
    #[serde(flatten)]
    pub body: NodeBody,
    pub versions: Vec<NodeVersion>,
}

/// `GET /v1/events`, oldest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Events {
    pub events: Vec<Event>,
    /// The revision to ask for events after, next.
    pub next_after: i64,
}

/// `POST /v1/repository/import`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Imported {
    /// The models registered, by name.
    pub imported: Vec<String>,
    pub revision: i64,
}

/// `POST /v1/keys` and `POST /v1/keys/{id}/rotate`: the key's secret, shown this once (the
/// registry keeps only its digest).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct IssuedKey {
    pub id: String,
    pub name: String,
    /// The secret, to send as `Authorization: Bearer KEY` or `X-API-Key: KEY`.
    pub key: String,
    /// The secret's first characters, by which the key list shows it.
    pub prefix: String,
    pub spec: KeySpec,
    /// What is legal but likely a mistake: a model glob that matches no model today.
    pub warnings: Vec<String>,
    pub revision: i64,
}

/// One key as `GET /v1/keys` shows it: never its secret or digest.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyView {
    pub id: String,
    /// The tenant: its requests are counted under this name.
    pub name: String,
    pub prefix: String,
    pub spec: KeySpec,
    pub created_ms: i64,
    pub rotated_ms: Option<i64>,
    /// Set once revoked; a revoked key admits nothing.
    pub revoked_ms: Option<i64>,
    /// Its requests being handled on this gateway.
    pub in_flight: u32,
    /// This gateway's share of the key's rates (1 alone; in a cluster, its part of the sum).
    pub share: f64,
    /// What its name's requests came to on this gateway since it started.
    pub figures: KeyFiguresView,
}

/// `GET /v1/keys`: every key, revoked ones included, oldest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyView>,
    pub revision: i64,
}

/// `PUT /v1/keys/{id}`: the key as changed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyChanged {
    pub key: KeyView,
    pub warnings: Vec<String>,
    pub revision: i64,
}

/// `GET` and `PUT /v1/models/{m}/limits`: a model's limits for every caller (none set: no
/// limits).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelLimitsAnswer {
    pub model: String,
    pub limits: Limits,
    pub revision: i64,
}

/// `GET`, `PUT /v1/models/{m}/capture`: a model's capture, with this gateway's figures for it
/// and its sinks (`capture` is null when the model has none).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CaptureAnswer {
    pub model: String,
    pub capture: Option<CaptureView>,
    pub revision: i64,
}

/// `GET /v1/capture`: every captured model.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CaptureList {
    pub captures: Vec<CaptureView>,
    pub revision: i64,
}
