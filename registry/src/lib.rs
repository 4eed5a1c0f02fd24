//! The model registry: what the gateway serves and how traffic is split, persisted in SQLite
//! (one process, no setup) or PostgreSQL (several gateways sharing one registry).
//!
//! Every write is one transaction that bumps the registry's revision and appends an [`Event`]:
//! the audit log and the change feed are the same table. Readers follow the revision with
//! [`Store::subscribe`] and read what changed with [`Store::events_after`] or a fresh
//! [`Store::snapshot`].

mod sql;
mod types;

pub use sql::{SqlStore, compare_labels, redacted};
pub use types::*;

use std::collections::BTreeMap;

/// The registry's operations; every write names its actor and returns the new revision.
#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    /// Follows the latest revision: local writes at once, other processes' writes as they are
    /// notified (PostgreSQL).
    fn subscribe(&self) -> tokio::sync::watch::Receiver<i64>;

    async fn revision(&self) -> Result<i64, RegistryError>;

    async fn create_model(&self, actor: &str, model: NewModel) -> Result<i64, RegistryError>;

    async fn list_models(&self) -> Result<Vec<Model>, RegistryError>;

    /// A model with its versions, traffic and aliases.
    async fn model(&self, name: &str) -> Result<ModelRecord, RegistryError>;

    /// Everything, in one consistent read.
    async fn snapshot(&self) -> Result<Snapshot, RegistryError>;

    /// Registers a version (labelled with the next integer when `label` is `None`) in state
    /// `registered`.
    async fn register_version(
        &self,
        actor: &str,
        model: &str,
        version: NewVersion,
    ) -> Result<(Version, i64), RegistryError>;

    async fn version(&self, model: &str, label: &str) -> Result<Version, RegistryError>;

    /// Serves a retired version again, from the runtime, artifact, config and metadata given
    /// (the label stays; `version.version`, if set, must be it): state `registered`, its
    /// scores and history kept. Refused unless it is retired. Triton's repository `load` of an
    /// unloaded model, or of a changed one, comes back this way.
    async fn reinstate_version(
        &self,
        actor: &str,
        model: &str,
        label: &str,
        version: NewVersion,
    ) -> Result<i64, RegistryError>;

    /// Moves a version through its lifecycle.
    async fn set_version_state(
        &self,
        actor: &str,
        model: &str,
        label: &str,
        state: VersionState,
        reason: &str,
    ) -> Result<i64, RegistryError>;

    /// Appends an event to the audit log (a scaling decision, say) without changing anything
    /// else.
    async fn log_event(
        &self,
        actor: &str,
        model: &str,
        action: &str,
        payload: serde_json::Value,
    ) -> Result<i64, RegistryError>;

    /// Sets a model's routing policy (a JSON object the gateway validates).
    async fn set_policy(
        &self,
        actor: &str,
        model: &str,
        policy: serde_json::Value,
    ) -> Result<i64, RegistryError>;

    /// Adds to a version's bandit rewards and returns the new totals. Not a revision: no
    /// event, no reload.
    async fn add_rewards(
        &self,
        model: &str,
        label: &str,
        added: Rewards,
    ) -> Result<Rewards, RegistryError>;

    /// The secret named `name` that every process sharing this registry uses: `proposed` if
    /// none was stored yet (it is stored then), else the stored one. Not a revision.
    async fn shared_secret(&self, name: &str, proposed: &str) -> Result<String, RegistryError>;

    /// Sets top-level keys of a version's metadata (measured memory, say), keeping the others.
    async fn merge_version_metadata(
        &self,
        actor: &str,
        model: &str,
        label: &str,
        patch: serde_json::Map<String, serde_json::Value>,
    ) -> Result<i64, RegistryError>;

    /// Starts removing a version (state `draining`); refused while it has traffic weight or an
    /// alias.
    async fn remove_version(
        &self,
        actor: &str,
        model: &str,
        label: &str,
    ) -> Result<i64, RegistryError>;

    async fn add_scores(
        &self,
        actor: &str,
        model: &str,
        label: &str,
        scores: NewScores,
    ) -> Result<i64, RegistryError>;

    async fn scores(&self, model: &str, label: &str) -> Result<Vec<Score>, RegistryError>;

    /// Replaces the model's traffic weights (version label -> weight).
    async fn set_traffic(
        &self,
        actor: &str,
        model: &str,
        weights: BTreeMap<String, u64>,
    ) -> Result<i64, RegistryError>;

    async fn set_alias(
        &self,
        actor: &str,
        model: &str,
        alias: &str,
        label: &str,
    ) -> Result<i64, RegistryError>;

    async fn remove_alias(
        &self,
        actor: &str,
        model: &str,
        alias: &str,
    ) -> Result<i64, RegistryError>;

    /// Events after `revision`, oldest first, at most `limit`.
    async fn events_after(&self, revision: i64, limit: i64) -> Result<Vec<Event>, RegistryError>;

    /// Creates or updates a rollout, with its traffic, policy and alias changes, as one
    /// revision and one event; returns the rollout as written and the revision.
    async fn write_rollout(
        &self,
        actor: &str,
        model: &str,
        write: RolloutWrite,
    ) -> Result<(RolloutRecord, i64), RegistryError>;

    /// A model's rollouts, newest first, at most `limit`.
    async fn rollouts(&self, model: &str, limit: i64) -> Result<Vec<RolloutRecord>, RegistryError>;

    /// Every active rollout (pending, running or paused), of every model.
    async fn active_rollouts(&self) -> Result<Vec<RolloutRecord>, RegistryError>;

    /// Replaces this gateway's running totals of the given versions: (model, version, body).
    async fn put_counters(
        &self,
        gateway: &str,
        rows: Vec<(String, String, serde_json::Value)>,
    ) -> Result<(), RegistryError>;

    /// Every gateway's running totals of a model's versions.
    async fn counters(&self, model: &str) -> Result<Vec<CounterRow>, RegistryError>;

    /// Records a new evaluation job, `running`.
    async fn create_evaluation(
        &self,
        actor: &str,
        model: &str,
        request: serde_json::Value,
    ) -> Result<(EvaluationRecord, i64), RegistryError>;

    /// Ends a running evaluation job: `done`, `failed` or `cancelled`, with its report.
    async fn finish_evaluation(
        &self,
        actor: &str,
        id: i64,
        state: &str,
        report: serde_json::Value,
    ) -> Result<i64, RegistryError>;

    /// Every evaluation still `running`, of every model, oldest first.
    async fn running_evaluations(&self) -> Result<Vec<EvaluationRecord>, RegistryError>;

    /// A model's evaluations, newest first, at most `limit`.
    async fn evaluations(
        &self,
        model: &str,
        limit: i64,
    ) -> Result<Vec<EvaluationRecord>, RegistryError>;

    /// Whether this process drives rollouts: always on SQLite (one process); on PostgreSQL
    /// the holder of a session advisory lock, kept until the process or its connection dies.
    async fn try_lead(&self) -> Result<bool, RegistryError>;

    /// Writes a node's heartbeat: its record (its beat grows by one) and its per-version
    /// state, replacing what it wrote before. Not a revision.
    async fn heartbeat(&self, beat: Heartbeat) -> Result<(), RegistryError>;

    /// Removes a node and its per-version state (a node that stops cleanly).
    async fn remove_node(&self, node: &str) -> Result<(), RegistryError>;

    /// Every node that ever wrote a heartbeat and was not removed, by id.
    async fn nodes(&self) -> Result<Vec<NodeRecord>, RegistryError>;

    /// Every node's per-version state, by node, model and version.
    async fn node_versions(&self) -> Result<Vec<NodeVersion>, RegistryError>;

    /// The cluster placer's last decision, sorted.
    async fn placements(&self) -> Result<Vec<PlacementRow>, RegistryError>;

    /// Adds an inference API key (a `key.create` event, which names no secret).
    async fn create_key(&self, actor: &str, key: NewKey)
    -> Result<(KeyRecord, i64), RegistryError>;

    /// Every key, revoked ones included, oldest first.
    async fn keys(&self) -> Result<Vec<KeyRecord>, RegistryError>;

    /// Replaces a live key's secret (its digest and prefix): the old secret admits nothing
    /// once the change reaches a gateway.
    async fn rotate_key(
        &self,
        actor: &str,
        id: &str,
        digest: &str,
        prefix: &str,
    ) -> Result<(KeyRecord, i64), RegistryError>;

    /// Replaces a live key's spec (its models, limits and priority).
    async fn set_key_spec(
        &self,
        actor: &str,
        id: &str,
        spec: serde_json::Value,
    ) -> Result<(KeyRecord, i64), RegistryError>;

    /// Revokes a key; unknown ids are `NotFound`, revoked ones a `Conflict`.
    async fn revoke_key(&self, actor: &str, id: &str) -> Result<i64, RegistryError>;

    /// Sets a model's limits for every caller (`None` removes them): a `model.limits` event.
    async fn set_model_limits(
        &self,
        actor: &str,
        model: &str,
        spec: Option<serde_json::Value>,
    ) -> Result<i64, RegistryError>;

    /// Every model's limits, by model.
    async fn model_limits(&self) -> Result<BTreeMap<String, serde_json::Value>, RegistryError>;

    /// Sets a model's payload capture (`None` stops it): a `model.capture` event.
    async fn set_model_capture(
        &self,
        actor: &str,
        model: &str,
        spec: Option<serde_json::Value>,
    ) -> Result<i64, RegistryError>;

    /// Every model's payload capture, by model.
    async fn model_captures(&self) -> Result<BTreeMap<String, serde_json::Value>, RegistryError>;

    /// Replaces the placement whole, as one revision with a `cluster.placed` event.
    async fn write_placements(
        &self,
        actor: &str,
        rows: Vec<PlacementRow>,
        payload: serde_json::Value,
    ) -> Result<i64, RegistryError>;
}
