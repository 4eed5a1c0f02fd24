//! The control loop: keeps what the gateway serves in line with the registry. On every change
//! it loads the versions registered (off the request path), drains removed ones, and publishes
//! a new model table with the registry's traffic, aliases and policies.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_registry::{PlacementRow, RegistryError, Snapshot, Store, Version, VersionState};
use switchyard_runtimes::{Device, LoadOptions, Runtime, Signature, TensorSpec};

use tokio::sync::mpsc;

use crate::config::ServingConfig;
use crate::control::Handles;
use crate::control::capacity::{self, Capacity, MeasuredMemory};
use crate::control::cluster::{ClusterView, Hosted};
use crate::control::import::registered_settings;
use crate::control::repository::{self, ModelSettings};
use crate::control::runtimes::{self, Runtimes};
use crate::control::triton;
use crate::core::forward::RemoteVersion;
use crate::core::{
    Interface, ModelEntry, ModelTable, ReadyVersion, SequenceSettings, VersionEntry, VersionStatus,
};
use crate::routing::{BetaStats, TrafficPolicy};
use crate::serving::{Batching, ReplicaLoad, ReplicaSet, Threads};
use crate::tasks::{self, TaskKind};
use crate::telemetry::VersionMetrics;
use crate::version_key::VersionKey;

static VERSION_LOAD: TaskKind = TaskKind::new("version_load");

const ACTOR: &str = "gateway";

/// The longest wait between two tries of a registry write.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A version state the registry refused to record, to be written again.
struct UnwrittenState {
    key: VersionKey,
    state: VersionState,
    reason: String,
    attempts: u32,
    next: Instant,
}

struct LoadOutcome {
    key: VersionKey,
    result: Result<ReadyVersion, String>,
    elapsed: Duration,
}

/// The registry events that only record what the capacity did ([`Reconciler::run`] reads no
/// snapshot for them).
const CAPACITY_RECORDS: [&str; 3] = [
    capacity::SCALE_ACTION,
    capacity::EVICT_ACTION,
    capacity::LOAD_ACTION,
];

/// The most events looked at before a full read is cheaper.
const RECORDS_LOOKED_AT: i64 = 64;

/// A node's link to its cluster: what the leader placed on it, and the view of its peers.
pub struct ClusterLink {
    pub node: String,
    pub view: tokio::sync::watch::Receiver<Arc<ClusterView>>,
    /// What this node hosts and drains, for its heartbeat.
    pub hosted: tokio::sync::watch::Sender<Arc<Hosted>>,
}

pub struct Reconciler {
    handles: Handles,
    /// Set on a node of a cluster: it loads only what the leader placed on it, reports its
    /// states in its heartbeat (not as the version's), and forwards the rest.
    cluster: Option<ClusterLink>,
    /// In a cluster: this node's replicas of each version placed on it, by device.
    placed: HashMap<VersionKey, Vec<(Device, u32)>>,
    /// In a cluster: every version the leader placed on some node.
    placed_anywhere: HashSet<VersionKey>,
    store: Arc<dyn Store>,
    defaults: ServingConfig,
    runtimes: Runtimes,
    /// What this process does with each version (a pending one is retried every second).
    local: HashMap<VersionKey, VersionStatus>,
    snapshot: Option<Snapshot>,
    /// Versions whose first load the server's readiness waits for.
    startup: Option<HashSet<VersionKey>>,
    /// Removed versions still answering the requests they hold, and since when.
    draining: Vec<(VersionKey, Arc<ReadyVersion>, Instant)>,
    /// States the registry refused to record, retried with backoff.
    unwritten: Vec<UnwrittenState>,
    loaded_tx: mpsc::UnboundedSender<LoadOutcome>,
    loaded_rx: mpsc::UnboundedReceiver<LoadOutcome>,
}

impl Reconciler {
    pub fn new(
        handles: Handles,
        store: Arc<dyn Store>,
        defaults: ServingConfig,
        runtimes: Runtimes,
    ) -> Self {
        let (loaded_tx, loaded_rx) = mpsc::unbounded_channel();
        Reconciler {
            handles,
            cluster: None,
            placed: HashMap::new(),
            placed_anywhere: HashSet::new(),
            store,
            defaults,
            runtimes,
            local: HashMap::new(),
            snapshot: None,
            startup: Some(HashSet::new()),
            draining: Vec::new(),
            unwritten: Vec::new(),
            loaded_tx,
            loaded_rx,
        }
    }

    /// Makes this reconciler a cluster node's.
    pub fn in_cluster(mut self, link: ClusterLink) -> Self {
        self.handles.tables.set_clustered();
        self.cluster = Some(link);
        self
    }

    /// Follows the registry until it closes.
    pub async fn run(mut self) {
        let mut revisions = self.store.subscribe();
        revisions.mark_changed();
        let mut drain_check = tokio::time::interval(Duration::from_millis(50));
        let mut retry = tokio::time::interval(Duration::from_secs(1));
        let tables = self.handles.tables.clone();
        let mut synced = true;
        loop {
            tokio::select! {
                changed = revisions.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let latest = *revisions.borrow_and_update();
                    if synced && self.only_records_since_sync(latest).await {
                        continue;
                    }
                    synced = self.sync().await;
                }
                _ = retry.tick() => {
                    if !synced {
                        synced = self.sync().await;
                    } else {
                        self.retry_pending().await;
                    }
                    if !self.unwritten.is_empty() {
                        self.retry_unwritten().await;
                    }
                }
                Some(loaded) = self.loaded_rx.recv() => self.finish_load(loaded).await,
                () = tables.pending_wanted(), if synced => self.retry_pending().await,
                changed = peers_changed(&mut self.cluster) => {
                    if changed {
                        self.release_moved();
                        self.publish();
                    }
                }
                _ = drain_check.tick(), if !self.draining.is_empty() => self.retire_drained().await,
            }
        }
    }

    /// Whether every registry change since the table was built, up to `latest`, only records
    /// what the capacity did (loads, evictions, scaling): those change nothing the table is
    /// built from, so the table is current as it is (its revision advances) and no snapshot
    /// is read. A pool under load writes thousands of them a minute.
    async fn only_records_since_sync(&mut self, latest: i64) -> bool {
        let Some(snapshot) = &mut self.snapshot else {
            return false;
        };
        let Ok(events) = self
            .store
            .events_after(snapshot.revision, RECORDS_LOOKED_AT)
            .await
        else {
            return false;
        };
        let covered = events.last().is_some_and(|last| last.revision >= latest)
            && events.len() < RECORDS_LOOKED_AT as usize;
        if !covered
            || !events
                .iter()
                .all(|event| CAPACITY_RECORDS.contains(&event.action.as_str()))
        {
            return false;
        }
        snapshot.revision = latest;
        self.handles.tables.advance_revision(latest);
        true
    }

    /// Applies the registry's current state; false if it could not be read (to retry).
    async fn sync(&mut self) -> bool {
        let snapshot = match self.store.snapshot().await {
            Ok(snapshot) => snapshot,
            Err(error) => {
                tracing::error!(%error, "cannot read the registry; keeping the current table and retrying");
                return false;
            }
        };
        if let Some(link) = &self.cluster {
            match self.store.placements().await {
                Ok(rows) => {
                    self.placed = placed_on(&link.node, &rows);
                    self.placed_anywhere = rows
                        .iter()
                        .map(|row| VersionKey::new(&row.model, &row.version))
                        .collect();
                    self.handles.capacity.set_placed_here(
                        self.placed
                            .iter()
                            .map(|(key, on)| (key.clone(), on.iter().map(|(_, n)| n).sum()))
                            .collect(),
                    );
                }
                Err(error) => {
                    tracing::error!(%error, "cannot read the cluster's placement; retrying");
                    return false;
                }
            }
        }
        for record in &snapshot.models {
            for version in &record.versions {
                let key = VersionKey::new(&version.model, &version.label);
                let removing = matches!(
                    version.state,
                    VersionState::Draining | VersionState::Retired
                );
                let hosted_here = self.cluster.is_none() || self.placed.contains_key(&key);
                match (removing, self.local.get(&key)) {
                    (false, None) if hosted_here => self.start_load(key, version).await,
                    (true, Some(_)) => {
                        let draining = self.start_drain(&key);
                        if !draining {
                            self.write_state(&key, VersionState::Retired, "").await;
                        }
                    }
                    (true, None) if version.state == VersionState::Draining => {
                        self.write_state(&key, VersionState::Retired, "").await;
                    }
                    _ => {}
                }
            }
        }
        self.snapshot = Some(snapshot);
        self.release_moved();
        self.publish();
        self.check_startup();
        true
    }

    /// Stops hosting the versions the leader placed elsewhere: at once where they do not serve
    /// here, else once a peer serves them, so that a moved version keeps answering here while
    /// it loads there (make before break).
    fn release_moved(&mut self) {
        let Some(link) = &self.cluster else {
            return;
        };
        let view = link.view.borrow().clone();
        let moved: Vec<VersionKey> = self
            .local
            .iter()
            .filter(|(key, status)| {
                // Placed nowhere (the leader evicted it for a version requests wait for, or no
                // live node has room for it): the leader has given its memory away, so it goes
                // at once, with no peer to wait for. This node's view of memory (measured) may
                // hold it still; the leader's (never below what a version declares) decides.
                !self.placed.contains_key(*key)
                    && (!matches!(status, VersionStatus::Ready(_))
                        || !view.peers_for(key).is_empty()
                        || !self.placed_anywhere.contains(*key))
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in &moved {
            // Placed nowhere while it served here: the leader evicted it for a version that
            // requests wait for (its event names the node and the reason).
            if !self.placed_anywhere.contains(key)
                && let Some(VersionStatus::Ready(ready)) = self.local.get(key)
            {
                for replica in ready.replicas.replicas() {
                    self.handles.metrics.evicted(
                        &key.model,
                        &key.version,
                        &replica.device.to_string(),
                    );
                }
            }
            self.stop_hosting(key);
        }
    }

    async fn start_load(&mut self, key: VersionKey, version: &Version) {
        let runtime = self.runtimes.get(&version.runtime);
        let settings = registered_settings(version, &self.defaults);
        let (runtime, settings) = match (runtime, settings) {
            (Ok(runtime), Ok(settings)) => (runtime, settings),
            // The settings' reason first: a model whose config cannot be served was registered
            // with no runtime it could load.
            (_, Err(reason)) | (Err(reason), _) => {
                tracing::error!(version = %key, %reason, "version not loaded");
                self.local
                    .insert(key.clone(), VersionStatus::Failed(reason.clone()));
                self.write_state(&key, VersionState::Failed, &reason).await;
                return;
            }
        };
        let artifact = PathBuf::from(&version.artifact);
        // Until a replica is measured it reserves what its model.toml declares, else at least
        // the size of its weights.
        let artifact_bytes = std::fs::metadata(&artifact).map_or(0, |metadata| metadata.len());
        // What it measured when it last loaded, if more: a load is admitted against what it
        // will take, not only against what it declares.
        let measured = MeasuredMemory::of(&version.metadata).map_or(0, |m| m.bytes_per_replica);
        let reserve_bytes = settings.reserve_bytes(artifact_bytes).max(measured);
        let mut count = settings.starting_replicas();
        let mut allowed = settings.devices.clone();
        if let Some(placed) = self.placed.get(&key) {
            // The leader chose the devices and the count for this node.
            count = placed.iter().map(|(_, replicas)| replicas).sum();
            allowed = placed.iter().map(|(device, _)| *device).collect();
        }
        let table = self.handles.tables.snapshot();
        let reserved = self.handles.capacity.reserve_first_replicas(
            &table,
            &key,
            reserve_bytes,
            count,
            &allowed,
        );
        drop(table);
        let (devices, victims) = match reserved {
            Ok(reserved) => reserved,
            Err(refusal) => {
                let first = !matches!(self.local.get(&key), Some(VersionStatus::Pending(_)));
                self.local
                    .insert(key.clone(), VersionStatus::Pending(refusal.message.clone()));
                if first {
                    // Recorded once: the live figures in later refusals would make every retry
                    // a registry revision. The model's metadata shows the latest reason.
                    tracing::warn!(version = %key, reason = %refusal.message, "version pending: no room");
                    self.write_state(&key, VersionState::Pending, &refusal.message)
                        .await;
                }
                return;
            }
        };
        self.local.insert(key.clone(), VersionStatus::Loading);
        if let Some(startup) = &mut self.startup {
            startup.insert(key.clone());
        }
        self.write_state(&key, VersionState::Loading, "").await;
        let loaded_tx = self.loaded_tx.clone();
        let figures = self
            .handles
            .experiments
            .version(&key, None)
            .figures()
            .clone();
        let metrics = Arc::new(
            self.handles
                .metrics
                .version(&key.model, &key.version, figures),
        );
        let capacity = self.handles.capacity.clone();
        let gateway_metrics = self.handles.metrics.clone();
        tasks::spawn(&VERSION_LOAD, async move {
            let started = Instant::now();
            Capacity::evict(victims, &gateway_metrics).await;
            let sizes = (reserve_bytes, artifact_bytes);
            let result = load(runtime, &key, artifact, settings, metrics, devices, sizes).await;
            match &result {
                Ok(ready) => {
                    for replica in ready.replicas.replicas() {
                        if let Some(bytes) = replica.memory_bytes {
                            capacity.record_measured(
                                &key,
                                replica.index,
                                ready.replica_bytes(bytes),
                            );
                        }
                    }
                }
                Err(_) => capacity.release_version(&key),
            }
            let _ = loaded_tx.send(LoadOutcome {
                key,
                result,
                elapsed: started.elapsed(),
            });
        });
    }

    async fn finish_load(&mut self, loaded: LoadOutcome) {
        let LoadOutcome {
            key,
            result,
            elapsed,
        } = loaded;
        let elapsed_ms = elapsed.as_millis() as u64;
        if let Some(startup) = &mut self.startup {
            startup.remove(&key);
        }
        if !matches!(self.local.get(&key), Some(VersionStatus::Loading)) {
            // Removed while loading: dropping the result unloads it.
            self.handles.capacity.release_version(&key);
            self.check_startup();
            return;
        }
        match result {
            Ok(ready) => {
                tracing::info!(
                    version = %key,
                    replicas = ready.replicas.replica_count(),
                    max_batch_size = ready.max_batch_size,
                    elapsed_ms,
                    "version ready"
                );
                let mut patch = serde_json::Map::new();
                if let Some(bytes) = ready.replicas.memory_per_replica() {
                    // Kept with the version for resource accounting across restarts.
                    let measured = MeasuredMemory {
                        device: ready.device.to_string(),
                        bytes_per_replica: bytes,
                        replicas: ready.replicas.replica_count(),
                        source: memory_source(ready.device).to_owned(),
                    };
                    patch.insert(
                        MeasuredMemory::KEY.to_owned(),
                        serde_json::to_value(measured).unwrap_or_default(),
                    );
                }
                patch.insert(
                    "warmup".to_owned(),
                    serde_json::json!(ready.replicas.warmup().describe()),
                );
                if self.cluster.is_some() {
                    // For the nodes that forward it: they answer its metadata themselves.
                    patch.insert("signature".to_owned(), signature_json(&ready));
                }
                self.local
                    .insert(key.clone(), VersionStatus::Ready(Arc::new(ready)));
                // Recorded before it is served, so that the registry says ready by the time a
                // request can reach it; a refusal means it was removed while loading.
                if !self.write_state(&key, VersionState::Ready, "").await {
                    self.start_drain(&key);
                } else if !patch.is_empty()
                    && let Err(error) = self
                        .store
                        .merge_version_metadata(ACTOR, &key.model, &key.version, patch)
                        .await
                {
                    tracing::warn!(version = %key, %error, "cannot record the measured memory and signature");
                }
                self.publish();
            }
            Err(reason) => {
                tracing::error!(version = %key, %reason, elapsed_ms, "version failed to load");
                self.local
                    .insert(key.clone(), VersionStatus::Failed(reason.clone()));
                if !self.write_state(&key, VersionState::Failed, &reason).await {
                    // Removed while it loaded: nothing to drain.
                    self.local.remove(&key);
                    self.write_state(&key, VersionState::Retired, "").await;
                }
                self.publish();
            }
        }
        self.check_startup();
    }

    /// Tries again to load the versions that were waiting for memory.
    async fn retry_pending(&mut self) {
        let Some(snapshot) = self.snapshot.take() else {
            return;
        };
        let mut loading = false;
        for version in snapshot.models.iter().flat_map(|record| &record.versions) {
            let key = VersionKey::new(&version.model, &version.label);
            if matches!(self.local.get(&key), Some(VersionStatus::Pending(_)))
                && version.state.is_live()
            {
                self.start_load(key.clone(), version).await;
                loading |= !matches!(self.local.get(&key), Some(VersionStatus::Pending(_)));
            }
        }
        self.snapshot = Some(snapshot);
        // A table only when one left the wait: a refused try changes nothing requests see
        // but the reason's live figures.
        if loading {
            self.publish();
        }
        self.handles.tables.pending_tried();
    }

    /// Stops hosting a version the leader placed elsewhere: a serving one drains; one waiting
    /// for memory or failed is forgotten.
    fn stop_hosting(&mut self, key: &VersionKey) {
        tracing::info!(version = %key, "placed on other nodes; no longer hosted here");
        if !self.start_drain(key) {
            self.local.remove(key);
        }
    }

    /// Takes a removed version out of service; true if it was serving and now drains (it
    /// retires once no request holds it), false if there was nothing to drain.
    fn start_drain(&mut self, key: &VersionKey) -> bool {
        match self.local.remove(key) {
            Some(VersionStatus::Ready(ready)) => {
                tracing::info!(version = %key, "draining");
                self.draining.push((key.clone(), ready, Instant::now()));
                true
            }
            _ => false,
        }
    }

    /// Retires the removed versions that no request holds any more; dropping the last
    /// reference stops their workers after their queues are empty.
    async fn retire_drained(&mut self) {
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.draining)
            .into_iter()
            .partition(|(_, ready, _)| Arc::strong_count(ready) == 1);
        self.draining = waiting;
        let mut released = false;
        for (key, ready, since) in done {
            drop(ready);
            self.handles.capacity.release_version(&key);
            self.handles.experiments.forget(&key);
            let drained_ms = since.elapsed().as_millis() as u64;
            tracing::info!(version = %key, drained_ms, "version unloaded and retired");
            self.write_state(&key, VersionState::Retired, "").await;
            released = true;
        }
        self.report_hosted();
        // A version placed here may have been waiting for that memory (a cluster's leader
        // evicts an idle version to place a wanted one).
        if released
            && self
                .local
                .values()
                .any(|status| matches!(status, VersionStatus::Pending(_)))
        {
            self.retry_pending().await;
        }
    }

    /// Tells the heartbeat what this node hosts and drains.
    fn report_hosted(&self) {
        if let Some(link) = &self.cluster {
            link.hosted.send_replace(Arc::new(Hosted {
                local: self.local.keys().cloned().collect(),
                draining: self
                    .draining
                    .iter()
                    .map(|(key, _, _)| key.clone())
                    .collect(),
            }));
        }
    }

    fn check_startup(&mut self) {
        if self.startup.as_ref().is_some_and(HashSet::is_empty) && self.snapshot.is_some() {
            self.startup = None;
            self.handles.tables.set_ready(true);
        }
    }

    /// Records a version's state; false when the registry refuses because the version is
    /// being removed.
    async fn write_state(&mut self, key: &VersionKey, state: VersionState, reason: &str) -> bool {
        if self.cluster.is_some() {
            // A node reports its states in its heartbeat; the leader derives the version's.
            return true;
        }
        match self
            .store
            .set_version_state(ACTOR, &key.model, &key.version, state, reason)
            .await
        {
            Ok(_) => {
                // A newer state supersedes one still waiting to be written.
                self.unwritten.retain(|write| write.key != *key);
                true
            }
            Err(RegistryError::Conflict(_)) => false,
            Err(error) => {
                self.handles.metrics.registry_write_failed();
                tracing::warn!(version = %key, %error, "cannot record the version's state; retrying");
                self.unwritten.retain(|write| write.key != *key);
                self.unwritten.push(UnwrittenState {
                    key: key.clone(),
                    state,
                    reason: reason.to_owned(),
                    attempts: 1,
                    next: Instant::now() + Duration::from_secs(1),
                });
                true
            }
        }
    }

    /// Writes again the states the registry refused, each with its own backoff (1 s, doubling
    /// up to a minute); never dropped while the version is known.
    async fn retry_unwritten(&mut self) {
        let now = Instant::now();
        for mut write in std::mem::take(&mut self.unwritten) {
            if write.next > now {
                self.unwritten.push(write);
                continue;
            }
            let result = self
                .store
                .set_version_state(
                    ACTOR,
                    &write.key.model,
                    &write.key.version,
                    write.state,
                    &write.reason,
                )
                .await;
            match result {
                Ok(_) | Err(RegistryError::Conflict(_) | RegistryError::NotFound(_)) => {}
                Err(error) => {
                    self.handles.metrics.registry_write_failed();
                    write.attempts += 1;
                    // 1 s after the first failure, then 2, 4, ... up to the maximum.
                    let backoff =
                        Duration::from_secs(1u64 << (write.attempts - 1).min(6)).min(MAX_BACKOFF);
                    tracing::error!(version = %write.key, attempts = write.attempts, %error, "the registry still refuses the version's state");
                    write.next = now + backoff;
                    self.unwritten.push(write);
                }
            }
        }
    }

    /// Builds the model table from the registry's last snapshot and this process's versions.
    fn publish(&self) {
        let Some(snapshot) = &self.snapshot else {
            return;
        };
        let mut models = BTreeMap::new();
        for record in &snapshot.models {
            let policy = match serde_json::from_value::<TrafficPolicy>(record.policy.clone()) {
                Ok(policy) => policy,
                Err(error) => {
                    // The API validates policies; this is a registry edited by hand.
                    tracing::error!(model = %record.model.name, %error, "ignoring the stored routing policy");
                    TrafficPolicy::default()
                }
            };
            let versions = record
                .versions
                .iter()
                .filter_map(|version| {
                    let key = VersionKey::new(&version.model, &version.label);
                    let status = match self.local.get(&key) {
                        Some(status @ VersionStatus::Ready(_)) => status.clone(),
                        // Loading, pending or failed here, while a peer serves it: forwarded
                        // meanwhile.
                        Some(status) => self
                            .remote(&key, version)
                            .filter(|remote| matches!(remote, VersionStatus::Remote(_)))
                            .unwrap_or_else(|| status.clone()),
                        None => self.remote(&key, version)?,
                    };
                    let stored = record.rewards.get(&version.label).map(|r| BetaStats {
                        successes: r.successes,
                        failures: r.failures,
                    });
                    let stats = self.handles.experiments.version(&key, stored);
                    let kind = runtimes::kind(&version.runtime);
                    let score = record
                        .latest_scores
                        .get(&version.label)
                        .and_then(|latest| policy.quality(latest));
                    let peers = self
                        .cluster
                        .as_ref()
                        .map(|link| link.view.borrow().peers_for(&key))
                        .unwrap_or_default();
                    Some(Arc::new(VersionEntry {
                        label: key.version,
                        platform: kind.map_or("unknown", |kind| kind.platform),
                        backend: kind.map_or("unknown", |kind| kind.backend),
                        status,
                        stats,
                        score,
                        peers,
                    }))
                })
                .collect();
            let name: Arc<str> = record.model.name.as_str().into();
            models.insert(
                name.clone(),
                Arc::new(ModelEntry {
                    name,
                    versions,
                    traffic: record
                        .traffic
                        .iter()
                        .map(|(label, weight)| (label.as_str().into(), *weight))
                        .collect(),
                    aliases: record
                        .aliases
                        .iter()
                        .map(|(alias, label)| (alias.clone(), label.as_str().into()))
                        .collect(),
                    policy,
                }),
            );
        }
        self.handles
            .tables
            .publish(ModelTable { models }, snapshot.revision);
        self.report_hosted();
    }
}

impl Reconciler {
    /// A version this node does not host: forwarded where peers serve it; otherwise as the
    /// registry says, so that a request naming a version that is being placed again (its
    /// node died) waits for it as for any loading version, instead of finding no such
    /// version. `None` outside a cluster, or for a version being removed.
    fn remote(&self, key: &VersionKey, version: &Version) -> Option<VersionStatus> {
        let link = self.cluster.as_ref()?;
        let peers = link.view.borrow().peers_for(key);
        match version.state {
            VersionState::Draining | VersionState::Retired => None,
            _ if !peers.is_empty() => {
                let recorded = version.metadata.get("signature");
                Some(VersionStatus::Remote(Arc::new(RemoteVersion {
                    peers,
                    signature: recorded.map(parse_signature).unwrap_or_default(),
                    max_batch_size: recorded
                        .and_then(|s| s.get("max_batch_size"))
                        .and_then(serde_json::Value::as_u64)
                        .and_then(|size| u32::try_from(size).ok())
                        .unwrap_or(0),
                    device: recorded
                        .and_then(|s| s.get("device"))
                        .and_then(serde_json::Value::as_str)
                        .and_then(|device| device.parse().ok())
                        .unwrap_or(Device::Cpu),
                })))
            }
            // Placed, and loading there (or ready, and this node's view a heartbeat behind).
            _ if self.placed_anywhere.contains(key) => Some(VersionStatus::Loading),
            VersionState::Failed => Some(VersionStatus::Failed(version.state_reason.clone())),
            VersionState::Pending => Some(VersionStatus::Pending(version.state_reason.clone())),
            VersionState::Registered | VersionState::Loading | VersionState::Ready => {
                Some(VersionStatus::Loading)
            }
        }
    }
}

/// Resolves when the cluster's view changed (true) or its sender is gone (false, and then
/// never again); never resolves outside a cluster.
async fn peers_changed(cluster: &mut Option<ClusterLink>) -> bool {
    let Some(link) = cluster else {
        return std::future::pending().await;
    };
    if link.view.changed().await.is_ok() {
        return true;
    }
    std::future::pending().await
}

/// What a node that forwards a version needs to answer its metadata: its inputs and outputs
/// as clients see them, its batch bound and its device.
fn signature_json(ready: &ReadyVersion) -> serde_json::Value {
    let specs = |specs: &[TensorSpec]| {
        specs
            .iter()
            .map(|spec| {
                serde_json::json!({
                    "name": spec.name,
                    "datatype": spec.dtype.as_str(),
                    "dims": spec.dims,
                })
            })
            .collect::<Vec<_>>()
    };
    let visible = ready.visible_signature();
    serde_json::json!({
        "inputs": specs(&visible.inputs),
        "outputs": specs(&visible.outputs),
        "max_batch_size": ready.max_batch_size,
        "device": ready.device.to_string(),
    })
}

/// The signature another node recorded; what does not parse is left out.
fn parse_signature(recorded: &serde_json::Value) -> Signature {
    let specs = |key: &str| {
        recorded
            .get(key)
            .and_then(serde_json::Value::as_array)
            .map(|specs| {
                specs
                    .iter()
                    .filter_map(|spec| {
                        Some(TensorSpec {
                            name: spec.get("name")?.as_str()?.to_owned(),
                            dtype: spec.get("datatype")?.as_str()?.parse().ok()?,
                            dims: spec
                                .get("dims")?
                                .as_array()?
                                .iter()
                                .map(serde_json::Value::as_i64)
                                .collect::<Option<Vec<i64>>>()?,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    Signature {
        inputs: specs("inputs"),
        outputs: specs("outputs"),
    }
}

/// This node's share of the placement: each version's replicas per device.
fn placed_on(node: &str, rows: &[PlacementRow]) -> HashMap<VersionKey, Vec<(Device, u32)>> {
    let mut placed: HashMap<VersionKey, Vec<(Device, u32)>> = HashMap::new();
    for row in rows.iter().filter(|row| row.node == node) {
        let Ok(device) = row.device.parse::<Device>() else {
            tracing::warn!(device = %row.device, "the placement names a device this node cannot parse");
            continue;
        };
        placed
            .entry(VersionKey::new(&row.model, &row.version))
            .or_default()
            .push((device, u32::try_from(row.replicas).unwrap_or(0)));
    }
    placed
}

/// How a device's memory figure is measured (see `switchyard_runtimes::memory`).
fn memory_source(device: Device) -> &'static str {
    match device {
        Device::Cpu => "resident set, before load and after warm-up",
        Device::Cuda(_) => "NVML process usage, before load and after warm-up",
    }
}

async fn load(
    runtime: Arc<dyn Runtime>,
    key: &VersionKey,
    artifact: PathBuf,
    settings: ModelSettings,
    metrics: Arc<VersionMetrics>,
    devices: Vec<Device>,
    (reserve_bytes, artifact_bytes): (u64, u64),
) -> Result<ReadyVersion, String> {
    let options = LoadOptions {
        device: settings.device,
        intra_op_threads: settings.intra_op_threads,
        declared: settings.declared.clone(),
    };
    let batching = Batching {
        max_batch_size: 0,
        configured_max_batch_size: settings.max_batch_size.map(|size| size as usize),
        max_queue_delay: settings.max_queue_delay,
        preferred_batch_sizes: settings.preferred_batch_sizes.clone(),
    };
    let runtime_name = runtime.name();
    // A version's folder is in its model's folder, where the label files are.
    let model_dir = artifact
        .parent()
        .and_then(std::path::Path::parent)
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let labels = repository::output_labels(&model_dir, &settings.source)?;
    let load = ReplicaLoad {
        runtime,
        artifact,
        options,
        warmup: settings.warmup.clone(),
        queue_capacity: settings.queue_capacity,
        metrics: Some(metrics.clone()),
        worker_spin: settings.worker_spin,
        nice: settings.nice,
        threads: if settings.measure_threads {
            Threads::measured()
        } else {
            Threads::Fixed
        },
    };
    let thread_name = format!("sy-{}-{}", key.model, key.version);
    let replicas = ReplicaSet::start(load, batching, &devices, &thread_name)
        .await
        .map_err(|e| e.to_string())?;
    let max_batch_size = u32::try_from(replicas.max_batch_size()).unwrap_or(u32::MAX);
    if let Some(sequence) = &settings.sequence {
        check_states(sequence, replicas.signature())?;
        check_controls(sequence, replicas.signature())?;
    }
    let config = triton::effective_config(&triton::ServedVersion {
        model: &key.model,
        runtime: runtime_name,
        settings: &settings,
        signature: replicas.signature(),
        max_batch_size,
        warmup: replicas.warmup(),
    });
    Ok(ReadyVersion {
        replicas,
        metrics,
        // Where it was placed, which may differ from `device` when `devices` lists several.
        device: devices.first().copied().unwrap_or(settings.device),
        max_batch_size,
        timeout: settings.timeout,
        scaling: settings.scaling,
        reserve_bytes,
        artifact_bytes,
        allowed: settings.devices,
        sequence: settings.sequence,
        open_sequences: Default::default(),
        always_loaded: settings.always_loaded,
        interface: Interface {
            labels,
            ..settings.interface
        },
        config: Arc::new(config),
    })
}

/// Refuses a version whose control inputs the model lacks or takes in another datatype:
/// caught at load, not at a sequence's first request.
fn check_controls(sequence: &SequenceSettings, signature: &Signature) -> Result<(), String> {
    for control in &sequence.controls {
        let input = signature.input(&control.input).ok_or_else(|| {
            format!(
                "control input '{}' is not one of the model's inputs",
                control.input
            )
        })?;
        if input.dtype != control.dtype {
            return Err(format!(
                "control input '{}' is fed as {}, but the model takes {}",
                control.input, control.dtype, input.dtype
            ));
        }
    }
    Ok(())
}

/// Refuses a version whose `[[state]]` names an input or output the model lacks, or a state
/// of another datatype: caught at load, not at a sequence's first request.
fn check_states(sequence: &SequenceSettings, signature: &Signature) -> Result<(), String> {
    for state in &sequence.states {
        let input = signature.input(&state.input).ok_or_else(|| {
            format!(
                "[[state]] names input '{}', which the model lacks",
                state.input
            )
        })?;
        if input.dtype != state.initial.dtype() {
            return Err(format!(
                "[[state]] '{}' is {}, but the model's input is {}",
                state.input,
                state.initial.dtype(),
                input.dtype
            ));
        }
        let dims = state.initial.shape();
        let fits = |spec: &[i64]| {
            spec.len() == dims.len()
                && spec
                    .iter()
                    .zip(dims)
                    .all(|(&expected, &dim)| expected < 0 || expected == dim as i64)
        };
        if !fits(&input.dims) {
            return Err(format!(
                "[[state]] '{}' has dims {dims:?}, but the model's input is {:?}",
                state.input, input.dims
            ));
        }
        let output = signature.output(&state.output).ok_or_else(|| {
            format!(
                "[[state]] names output '{}', which the model lacks",
                state.output
            )
        })?;
        if output.dtype != state.initial.dtype() || !fits(&output.dims) {
            return Err(format!(
                "[[state]] output '{}' is {} {:?}, but the state is {} {dims:?}",
                state.output,
                output.dtype,
                output.dims,
                state.initial.dtype()
            ));
        }
    }
    Ok(())
}
