//! The model table: every model, its versions and the state of each, as one immutable snapshot
//! that the control plane publishes whole ([`TableHandle`]) and requests read without a lock.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use switchyard_runtimes::{DataType, Device, Signature, Tensor};

use crate::core::forward::{Peer, RemoteVersion};
use crate::error::{GatewayError, quoted};
use crate::routing::{Candidate, TrafficPolicy, VersionStats};
use crate::serving::{JoinAxes, ReplicaSet};
use crate::telemetry::VersionMetrics;
use crate::version_key::VersionKey;
use crate::wire::pb::ModelConfig;

/// How Triton begins the message of a request for a model or version it cannot serve; clients
/// (tritonclient's examples among them) match on it. Switchyard's own reason follows.
pub const UNKNOWN_MODEL: &str = "Request for unknown model: ";

/// How a cluster's leader begins the reason of a version that requests want and that no live
/// node can hold, even by evicting idle replicas: requests for it are refused at once, not kept
/// waiting for a placement that is not coming.
pub const NO_ROOM_ANYWHERE: &str = "no live node has room for it, even evicting idle replicas";

/// A version label as Triton's messages write a version: a number bare, anything else quoted.
pub fn version_words(label: &str) -> String {
    if !label.is_empty() && label.bytes().all(|b| b.is_ascii_digit()) {
        label.to_owned()
    } else {
        format!("'{}'", quoted(label))
    }
}

/// How a version scales with its load.
#[derive(Debug, Clone, PartialEq)]
pub struct Scaling {
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub target_concurrency: f64,
    pub window: Duration,
    pub up_delay: Duration,
    pub down_delay: Duration,
    pub to_zero_after: Option<Duration>,
}

/// A version that can serve.
pub struct ReadyVersion {
    pub replicas: ReplicaSet,
    pub metrics: Arc<VersionMetrics>,
    pub device: Device,
    /// Largest batch along axis 0; 0 when the model has no batch axis.
    pub max_batch_size: u32,
    /// How long a request may take, queue included, unless the caller asks for less.
    pub timeout: Duration,
    /// Set when the version scales with its load.
    pub scaling: Option<Scaling>,
    /// What a new replica reserves on its device until it is measured.
    pub reserve_bytes: u64,
    /// The artifact's size: a replica's reservation never goes below it, whatever the
    /// measurement says (memory the allocator reused is invisible to it).
    pub artifact_bytes: u64,
    /// Devices its replicas may be placed on.
    pub allowed: Vec<Device>,
    /// Set for a model served as sequences (`[sequence]` and `[[state]]` in model.toml).
    pub sequence: Option<Arc<SequenceSettings>>,
    /// Its open sequences (kept by `core::sequence`).
    pub open_sequences: AtomicUsize,
    /// Never evicted to make room for another version (`always_loaded` in model.toml).
    pub always_loaded: bool,
    /// What requests may send: the model's inputs as clients see them.
    pub interface: Interface,
    /// Its configuration in Triton's form, as `/config` and gRPC `ModelConfig` report it
    /// (the instance count filled in when asked).
    pub config: Arc<ModelConfig>,
}

/// Where the inputs and outputs clients see differ from the model's: inputs they may leave
/// out, and tensors they see in another shape (Triton's `optional` and `reshape`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Interface {
    pub optional: Vec<String>,
    pub reshapes: Vec<Reshape>,
    /// Class labels of outputs, by output name (Triton's `label_filename`), for classification.
    pub labels: Vec<(String, Arc<[String]>)>,
}

impl Interface {
    pub fn labels(&self, output: &str) -> Option<&[String]> {
        self.labels
            .iter()
            .find(|(name, _)| name == output)
            .map(|(_, labels)| &labels[..])
    }
}

/// One tensor clients see in another shape than the model's; both shapes hold the batch axis
/// (-1) first when the model batches, and the same number of elements per batch row.
#[derive(Debug, Clone, PartialEq)]
pub struct Reshape {
    pub name: String,
    pub client: Vec<i64>,
    pub model: Vec<i64>,
}

impl Reshape {
    /// The shape a tensor of shape `from` (in `from_dims`' form) takes in `to_dims`' form: the
    /// batch axis kept, the rest replaced.
    pub fn convert(from: &[usize], from_dims: &[i64], to_dims: &[i64]) -> Vec<usize> {
        let batched = from_dims.first() == Some(&-1) && to_dims.first() == Some(&-1);
        let mut shape = Vec::with_capacity(to_dims.len());
        if batched {
            shape.push(from.first().copied().unwrap_or(1));
        }
        shape.extend(
            to_dims[usize::from(batched)..]
                .iter()
                .map(|&d| usize::try_from(d).unwrap_or(1)),
        );
        shape
    }
}

/// How a version serves sequences: the requests that share a `sequence_id` go to one version
/// and replica, one after the other, and the gateway carries the model's state between them.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceSettings {
    /// Open sequences per replica (Triton's direct slots); past them a new sequence gets 429.
    pub max_per_replica: usize,
    /// A sequence without a request for this long is released.
    pub idle_timeout: Duration,
    /// The implicit state: fed in by the gateway, taken from the outputs.
    pub states: Vec<StateSpec>,
    /// How concurrent sequences' calls join into one model call.
    pub join: Arc<JoinAxes>,
    /// Control inputs fed on every request of a sequence (Triton's `control_input`).
    pub controls: Vec<ControlSpec>,
}

/// What a control input tells the model on each request of a sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlKind {
    Start,
    End,
    Ready,
    CorrelationId,
}

/// One control input: its name, what it says, its datatype, and for the flags the values that
/// mean false and true.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlSpec {
    pub input: String,
    pub kind: ControlKind,
    pub dtype: DataType,
    pub false_true: [f64; 2],
}

/// One implicit state: the input it is fed to, the output its next value comes from, and the
/// value a sequence starts with.
#[derive(Debug, Clone, PartialEq)]
pub struct StateSpec {
    pub input: String,
    pub output: String,
    pub initial: Tensor,
}

impl SequenceSettings {
    /// Bytes of state one sequence holds.
    pub fn state_bytes(&self) -> usize {
        self.states
            .iter()
            .map(|state| state.initial.data().len())
            .sum()
    }

    /// Bytes of state a replica's sequence slots hold when all are open.
    pub fn slot_bytes(&self) -> u64 {
        (self.state_bytes() as u64).saturating_mul(self.max_per_replica as u64)
    }
}

impl ReadyVersion {
    pub fn signature(&self) -> &Signature {
        self.replicas.signature()
    }

    /// The signature requests are checked against: the model's, with the shapes clients see
    /// where the configuration reshapes a tensor.
    pub fn request_signature(&self) -> Signature {
        let mut signature = self.signature().clone();
        for reshape in &self.interface.reshapes {
            let specs = signature.inputs.iter_mut().chain(&mut signature.outputs);
            for spec in specs.filter(|spec| spec.name == reshape.name) {
                spec.dims = reshape.client.clone();
            }
        }
        signature
    }

    /// Its inputs and outputs as clients see them: reshaped as configured, and without its
    /// implicit state and control inputs, which the gateway feeds and takes itself (Triton lists
    /// them under `sequence_batching` only). A client may still send the state, or ask for it,
    /// by name.
    pub fn visible_signature(&self) -> Signature {
        let signature = self.request_signature();
        let (states, controls) = self
            .sequence
            .as_ref()
            .map_or((&[][..], &[][..]), |s| (&s.states[..], &s.controls[..]));
        let fed = |name: &str| {
            states.iter().any(|state| state.input == name)
                || controls.iter().any(|control| control.input == name)
        };
        let taken = |name: &str| states.iter().any(|state| state.output == name);
        Signature {
            inputs: signature
                .inputs
                .into_iter()
                .filter(|spec| !fed(&spec.name))
                .collect(),
            outputs: signature
                .outputs
                .into_iter()
                .filter(|spec| !taken(&spec.name))
                .collect(),
        }
    }

    /// What one replica holds on its device, from what it measured: never less than its
    /// artifact, plus the state of the sequences it can hold open.
    pub fn replica_bytes(&self, measured: u64) -> u64 {
        measured.max(self.artifact_bytes)
            + self
                .sequence
                .as_ref()
                .map_or(0, |sequence| sequence.slot_bytes())
    }
}

#[derive(Clone)]
pub enum VersionStatus {
    Loading,
    Ready(Arc<ReadyVersion>),
    Failed(String),
    /// Waiting for memory on an allowed device; why.
    Pending(String),
    /// Hosted by other nodes of the cluster only: requests are forwarded to one of them.
    Remote(Arc<RemoteVersion>),
}

impl VersionStatus {
    /// The protocol-facing name of the state.
    pub fn name(&self) -> &'static str {
        match self {
            VersionStatus::Loading => "LOADING",
            VersionStatus::Ready(_) | VersionStatus::Remote(_) => "READY",
            VersionStatus::Failed(_) => "FAILED",
            VersionStatus::Pending(_) => "PENDING",
        }
    }

    /// Why the version cannot serve, when it cannot.
    pub fn reason(&self) -> Option<&str> {
        match self {
            VersionStatus::Failed(reason) | VersionStatus::Pending(reason) => Some(reason),
            _ => None,
        }
    }

    /// Whether requests can be sent to it: served here, or by a peer.
    pub fn can_serve(&self) -> bool {
        matches!(self, VersionStatus::Ready(_) | VersionStatus::Remote(_))
    }
}

pub struct VersionEntry {
    pub label: Arc<str>,
    /// Triton's platform name (`onnxruntime_onnx`, `pytorch_libtorch`).
    pub platform: &'static str,
    /// Triton's backend name (`onnxruntime`, `pytorch`).
    pub backend: &'static str,
    pub status: VersionStatus,
    /// The experiment's figures of this version (kept across table swaps).
    pub stats: Arc<VersionStats>,
    /// The version's quality under the policy: the latest registry score of the metric it
    /// follows, or the weighted sum of several (score and objective modes).
    pub score: Option<f64>,
    /// In a cluster: the other live nodes on which it is ready (those a remote version is
    /// forwarded to; for a version served here too, where its sequences may live).
    pub peers: Vec<Arc<Peer>>,
}

pub struct ModelEntry {
    pub name: Arc<str>,
    /// Sorted by label, lowest first.
    pub versions: Vec<Arc<VersionEntry>>,
    /// Traffic weights by version label; empty: the highest ready version serves.
    pub traffic: Vec<(Arc<str>, u64)>,
    /// Alias -> version label.
    pub aliases: BTreeMap<String, Arc<str>>,
    pub policy: TrafficPolicy,
}

impl ModelEntry {
    /// A version by label or alias.
    pub fn version(&self, label: &str) -> Result<&Arc<VersionEntry>, GatewayError> {
        let label = self.aliases.get(label).map_or(label, |target| &**target);
        self.versions
            .iter()
            .find(|version| &*version.label == label)
            .ok_or_else(|| {
                GatewayError::not_found(format!(
                    "{UNKNOWN_MODEL}'{}' version {} is not found (its versions: {})",
                    self.name,
                    version_words(label),
                    self.labels().join(", ")
                ))
            })
    }

    /// Whether the policy may send requests to a version: it is ready, and its recent error
    /// rate is not over the policy's threshold.
    pub fn eligible(&self, version: &VersionEntry) -> bool {
        version.status.can_serve()
            && version
                .stats
                .recent_error_rate()
                .is_none_or(|rate| rate <= self.policy.max_error_rate)
    }

    /// The candidates of the policy: the versions with traffic weight, in the registry's order.
    pub fn candidates(&self) -> Vec<Candidate<'_>> {
        self.traffic
            .iter()
            .filter(|(_, weight)| *weight > 0)
            .filter_map(|(label, weight)| {
                let version = self.versions.iter().find(|v| v.label == *label)?;
                Some(Candidate {
                    label: &version.label,
                    base_weight: *weight as f64,
                    eligible: self.eligible(version),
                    score: version.score,
                    reward: version.stats.rewards(),
                    planned_share: version.stats.planned_share(),
                })
            })
            .collect()
    }

    /// The highest version that can serve, here or on a peer.
    pub fn highest_ready(&self) -> Option<&Arc<VersionEntry>> {
        self.versions
            .iter()
            .rev()
            .find(|version| version.status.can_serve())
    }

    /// The highest ready version, or the highest version when none is ready (to report why).
    pub fn representative_version(&self) -> Option<&Arc<VersionEntry>> {
        self.highest_ready().or_else(|| self.versions.last())
    }

    pub fn labels(&self) -> Vec<&str> {
        self.versions.iter().map(|v| &*v.label).collect()
    }
}

impl VersionEntry {
    /// The ready replica set, or why this version cannot serve.
    pub fn ready(&self, model: &str) -> Result<&Arc<ReadyVersion>, GatewayError> {
        match &self.status {
            VersionStatus::Ready(ready) => Ok(ready),
            VersionStatus::Loading => Err(GatewayError::unavailable(format!(
                "{UNKNOWN_MODEL}'{model}' version {} is not at ready state: it is still loading",
                version_words(&self.label)
            ))),
            VersionStatus::Failed(reason) | VersionStatus::Pending(reason) => {
                Err(GatewayError::unavailable(format!(
                    "{UNKNOWN_MODEL}'{model}' version {} is not at ready state: {reason}",
                    version_words(&self.label)
                )))
            }
            VersionStatus::Remote(_) => Err(GatewayError::unavailable(format!(
                "{UNKNOWN_MODEL}'{model}' version {} is not at ready state here: it is served \
                 by other nodes of the cluster only",
                version_words(&self.label)
            ))),
        }
    }
}

#[derive(Default)]
pub struct ModelTable {
    pub models: BTreeMap<Arc<str>, Arc<ModelEntry>>,
}

impl ModelTable {
    pub fn model(&self, name: &str) -> Result<&Arc<ModelEntry>, GatewayError> {
        self.models.get(name).ok_or_else(|| {
            GatewayError::not_found(format!("{UNKNOWN_MODEL}'{}' is not found", quoted(name)))
        })
    }
}

/// The published table, swapped whole: requests load a snapshot, the control plane publishes
/// a new one with the registry revision it was built from, and says when the server is ready.
pub struct TableHandle {
    table: ArcSwap<ModelTable>,
    revision: AtomicI64,
    /// Readiness as it changes, for those who must push it (the gRPC health service).
    ready: tokio::sync::watch::Sender<bool>,
    /// Bumped at every publish, for requests waiting for a version that is loading.
    published: tokio::sync::watch::Sender<u64>,
    /// Woken by a request for a version waiting for room (`pending`): the reconciler tries
    /// its load at once rather than at its next retry.
    pending_wanted: tokio::sync::Notify,
    /// Bumped after every retry of the versions waiting for room, for the requests that asked.
    pending_tries: AtomicU64,
    /// On a node of a cluster: the versions waiting for room that requests asked for, with
    /// when one last did, for the heartbeat (the leader places them on demand). At most one
    /// entry per registered version; read entries older than the heartbeat's window go.
    wanted: Mutex<HashMap<VersionKey, Instant>>,
    /// Set on a node of a cluster, where the leader, not this node, makes room.
    clustered: AtomicBool,
}

impl Default for TableHandle {
    fn default() -> Self {
        TableHandle {
            table: ArcSwap::from_pointee(ModelTable::default()),
            revision: AtomicI64::new(0),
            ready: tokio::sync::watch::Sender::new(false),
            published: tokio::sync::watch::Sender::new(0),
            pending_wanted: tokio::sync::Notify::new(),
            pending_tries: AtomicU64::new(0),
            wanted: Mutex::new(HashMap::new()),
            clustered: AtomicBool::new(false),
        }
    }
}

impl TableHandle {
    /// The current table. Cheap; hold it only briefly, never across an await.
    pub fn snapshot(&self) -> Arc<ModelTable> {
        self.table.load_full()
    }

    /// The current table without taking a reference count, for a lookup that ends before the
    /// next await.
    pub fn peek(&self) -> arc_swap::Guard<Arc<ModelTable>> {
        self.table.load()
    }

    /// Puts a new table in place; requests already routed keep the version they hold.
    pub fn publish(&self, table: ModelTable, revision: i64) {
        self.table.store(Arc::new(table));
        self.revision.store(revision, Ordering::Relaxed);
        self.wake_waiters();
    }

    /// Wakes the requests waiting for a table (a load, a try to make room, a revision).
    fn wake_waiters(&self) {
        self.published
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    /// The registry moved to `revision` with nothing the table is built from: the table is
    /// current as of it, and those waiting for it are told.
    pub fn advance_revision(&self, revision: i64) {
        self.revision.fetch_max(revision, Ordering::Relaxed);
        self.wake_waiters();
    }

    /// Follows publishes: `changed()` resolves after the next one.
    pub fn watch_published(&self) -> tokio::sync::watch::Receiver<u64> {
        self.published.subscribe()
    }

    /// A request wants a version that waits for room: its load is tried now (on a node of a
    /// cluster, the leader hears of it at the next heartbeat).
    pub fn want_pending(&self, key: &VersionKey) {
        if self.clustered() {
            // Not the reconciler: it cannot make room here, and each of its tries would wake
            // every waiting request again.
            let mut wanted = self.wanted.lock().unwrap_or_else(|e| e.into_inner());
            match wanted.get_mut(key) {
                Some(at) => *at = Instant::now(),
                None => {
                    wanted.insert(key.clone(), Instant::now());
                }
            }
            return;
        }
        self.pending_wanted.notify_one();
    }

    /// The versions waiting for room that a request asked for within `window`; older asks
    /// are forgotten.
    pub fn wanted_within(&self, window: Duration) -> Vec<VersionKey> {
        let mut wanted = self.wanted.lock().unwrap_or_else(|e| e.into_inner());
        wanted.retain(|_, at| at.elapsed() <= window);
        let mut keys: Vec<VersionKey> = wanted.keys().cloned().collect();
        keys.sort();
        keys
    }

    /// Marks this table a cluster node's: room is the leader's to make.
    pub fn set_clustered(&self) {
        self.clustered.store(true, Ordering::Relaxed);
    }

    pub fn clustered(&self) -> bool {
        self.clustered.load(Ordering::Relaxed)
    }

    /// Resolves when a request wants a version that waits for room.
    pub async fn pending_wanted(&self) {
        self.pending_wanted.notified().await;
    }

    /// How many retries of the versions waiting for room have run.
    pub fn pending_tries(&self) -> u64 {
        self.pending_tries.load(Ordering::Acquire)
    }

    /// The versions waiting for room were just tried (and a table published if one of them
    /// is loading now): the requests that asked look at the outcome.
    pub fn pending_tried(&self) {
        self.pending_tries.fetch_add(1, Ordering::Release);
        self.wake_waiters();
    }

    /// The registry revision the current table was built from.
    pub fn revision(&self) -> i64 {
        self.revision.load(Ordering::Relaxed)
    }

    /// Ready once the versions known at start have finished loading, successfully or not;
    /// versions registered later load without taking the server out of readiness.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Follows `is_ready`.
    pub fn watch_ready(&self) -> tokio::sync::watch::Receiver<bool> {
        self.ready.subscribe()
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.send_replace(ready);
    }
}
