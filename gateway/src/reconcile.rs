//! Keeps what the gateway serves in line with the registry: imports the model repository,
//! loads versions as they are registered (off the request path), drains removed ones, and
//! swaps in a new model table with the registry's traffic and aliases after every change.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_registry::{
    NewModel, NewVersion, RegistryError, Snapshot, Store, Version, VersionState,
};
use switchyard_runtimes::onnx::{OnnxRuntime, locate_library};
use switchyard_runtimes::{Device, LoadOptions, Runtime};
use tokio::sync::mpsc;

use crate::config::ServingConfig;
use crate::gateway::Gateway;
use crate::models::{
    ModelState, ModelTable, ReadyVersion, VersionState as TableVersion, VersionStatus,
};
use crate::repository::{self, ModelSettings, ModelToml};
use crate::routing::{PolicyMode, TrafficPolicy};
use crate::serving::{Batching, ReplicaLoad, ReplicaSet};
use crate::telemetry::VersionMetrics;

/// The runtimes this build can load, by their registry name.
#[cfg(feature = "libtorch")]
pub const RUNTIMES: &[&str] = &["onnx", "libtorch"];
#[cfg(not(feature = "libtorch"))]
pub const RUNTIMES: &[&str] = &["onnx"];
const ACTOR: &str = "gateway";

/// The platform Triton's clients expect in model metadata, by runtime name.
pub fn platform(runtime: &str) -> &'static str {
    match runtime {
        "onnx" => "onnxruntime_onnx",
        "libtorch" => "pytorch_libtorch",
        _ => "unknown",
    }
}

/// The backend named in Triton's model configuration, by runtime name.
pub fn backend(runtime: &str) -> &'static str {
    match runtime {
        "onnx" => "onnxruntime",
        "libtorch" => "pytorch",
        _ => "unknown",
    }
}

/// Registers the repository's models and versions that the registry does not know yet.
/// Returns them as "model/version".
pub async fn import_repository(
    store: &dyn Store,
    dir: &Path,
    defaults: &ServingConfig,
) -> anyhow::Result<Vec<String>> {
    let entries = repository::scan(dir, defaults)?;
    let mut imported = Vec::new();
    for entry in entries {
        let known: Vec<String> = match store.model(&entry.name).await {
            Ok(record) => record.versions.into_iter().map(|v| v.label).collect(),
            Err(RegistryError::NotFound(_)) => {
                let description = entry
                    .toml
                    .as_ref()
                    .ok()
                    .and_then(|toml| toml.description.clone())
                    .unwrap_or_default();
                let created = store
                    .create_model(
                        "import",
                        NewModel {
                            name: entry.name.clone(),
                            description,
                        },
                    )
                    .await;
                match created {
                    // Another gateway starting at the same time imported it first.
                    Ok(_) | Err(RegistryError::Conflict(_)) => Vec::new(),
                    Err(error) => return Err(error.into()),
                }
            }
            Err(error) => return Err(error.into()),
        };
        for version in &entry.versions {
            if known.contains(&version.label) {
                continue;
            }
            let artifact =
                std::path::absolute(&version.artifact).unwrap_or_else(|_| version.artifact.clone());
            let config = match &entry.toml {
                Ok(toml) => serde_json::to_value(toml)?,
                Err(_) => serde_json::json!({}),
            };
            let mut metadata =
                serde_json::json!({"imported_from": dir.join(&entry.name).display().to_string()});
            if let Err(reason) = &entry.toml {
                // Kept with the version so that no process loads it with default settings.
                metadata["import_error"] = serde_json::json!(reason);
            }
            let new = NewVersion {
                version: Some(version.label.clone()),
                runtime: version.runtime.into(),
                artifact: artifact.display().to_string(),
                config: Some(config),
                metadata: Some(metadata),
            };
            match store.register_version("import", &entry.name, new).await {
                Ok(_) => {}
                Err(RegistryError::Conflict(_)) => continue,
                Err(error) => return Err(error.into()),
            }
            if let Err(reason) = &entry.toml {
                store
                    .set_version_state(
                        "import",
                        &entry.name,
                        &version.label,
                        VersionState::Failed,
                        reason,
                    )
                    .await?;
            }
            imported.push(format!("{}/{}", entry.name, version.label));
        }
    }
    Ok(imported)
}

/// Reads a version's serving settings from its registry config (a model.toml as JSON).
pub fn version_settings(
    config: &serde_json::Value,
    defaults: &ServingConfig,
) -> Result<ModelSettings, String> {
    let toml: ModelToml =
        serde_json::from_value(config.clone()).map_err(|e| format!("invalid config: {e}"))?;
    ModelSettings::resolve(toml, defaults).map_err(|e| format!("invalid config: {e}"))
}

/// ONNX Runtime, loaded the first time a version needs it, and libtorch, linked in.
pub struct Runtimes {
    library: Option<PathBuf>,
    onnx: Option<Arc<dyn Runtime>>,
}

impl Runtimes {
    pub fn new(library: Option<PathBuf>) -> Runtimes {
        Runtimes {
            library,
            onnx: None,
        }
    }

    pub fn get(&mut self, name: &str) -> Result<Arc<dyn Runtime>, String> {
        #[cfg(feature = "libtorch")]
        if name == "libtorch" {
            return Ok(Arc::new(switchyard_runtimes::torch::TorchRuntime));
        }
        if name != "onnx" {
            return Err(format!(
                "runtime '{name}' is not available in this build (available: {})",
                RUNTIMES.join(", ")
            ));
        }
        if let Some(runtime) = &self.onnx {
            return Ok(runtime.clone());
        }
        let library = locate_library(self.library.as_deref()).map_err(|e| e.to_string())?;
        let runtime = OnnxRuntime::initialize(&library).map_err(|e| e.to_string())?;
        tracing::info!(library = %runtime.library().display(), "ONNX Runtime loaded");
        let runtime: Arc<dyn Runtime> = runtime;
        self.onnx = Some(runtime.clone());
        Ok(runtime)
    }
}

type Key = (String, String);

enum Local {
    Loading,
    Ready(Arc<ReadyVersion>),
    Failed(String),
    /// No allowed device has room for it; retried every second.
    Pending(String),
}

struct Loaded {
    key: Key,
    result: Result<ReadyVersion, String>,
    elapsed: Duration,
}

pub struct Reconciler {
    gateway: Arc<Gateway>,
    store: Arc<dyn Store>,
    defaults: ServingConfig,
    runtimes: Runtimes,
    local: HashMap<Key, Local>,
    snapshot: Option<Snapshot>,
    /// Versions whose first load the server's readiness waits for.
    startup: Option<HashSet<Key>>,
    /// Removed versions still answering the requests they hold, and since when.
    draining: Vec<(Key, Arc<ReadyVersion>, Instant)>,
    loaded_tx: mpsc::UnboundedSender<Loaded>,
    loaded_rx: mpsc::UnboundedReceiver<Loaded>,
}

impl Reconciler {
    pub fn new(
        gateway: Arc<Gateway>,
        store: Arc<dyn Store>,
        defaults: ServingConfig,
        runtimes: Runtimes,
    ) -> Self {
        let (loaded_tx, loaded_rx) = mpsc::unbounded_channel();
        Reconciler {
            gateway,
            store,
            defaults,
            runtimes,
            local: HashMap::new(),
            snapshot: None,
            startup: Some(HashSet::new()),
            draining: Vec::new(),
            loaded_tx,
            loaded_rx,
        }
    }

    /// Follows the registry until it closes.
    pub async fn run(mut self) {
        let mut revisions = self.store.subscribe();
        revisions.mark_changed();
        let mut drain_check = tokio::time::interval(Duration::from_millis(50));
        let mut retry = tokio::time::interval(Duration::from_secs(1));
        let mut synced = true;
        loop {
            tokio::select! {
                changed = revisions.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    synced = self.sync().await;
                }
                _ = retry.tick() => {
                    if !synced {
                        synced = self.sync().await;
                    } else {
                        self.retry_pending().await;
                    }
                }
                Some(loaded) = self.loaded_rx.recv() => self.finish_load(loaded).await,
                _ = drain_check.tick(), if !self.draining.is_empty() => self.retire_drained().await,
            }
        }
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
        for record in &snapshot.models {
            for version in &record.versions {
                let key = (version.model.clone(), version.label.clone());
                let removing = matches!(
                    version.state,
                    VersionState::Draining | VersionState::Retired
                );
                match (removing, self.local.get(&key)) {
                    (false, None) => self.start_load(key, version).await,
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
        self.publish();
        self.check_startup();
        true
    }

    async fn start_load(&mut self, key: Key, version: &Version) {
        let runtime = self.runtimes.get(&version.runtime);
        let settings = match version
            .metadata
            .get("import_error")
            .and_then(|e| e.as_str())
        {
            Some(reason) => Err(reason.to_owned()),
            None => version_settings(&version.config, &self.defaults),
        };
        let (runtime, settings) = match (runtime, settings) {
            (Ok(runtime), Ok(settings)) => (runtime, settings),
            (Err(reason), _) | (_, Err(reason)) => {
                tracing::error!(model = %key.0, version = %key.1, %reason, "version not loaded");
                self.local
                    .insert(key.clone(), Local::Failed(reason.clone()));
                self.write_state(&key, VersionState::Failed, &reason).await;
                return;
            }
        };
        let artifact = PathBuf::from(&version.artifact);
        // Until a replica is measured it reserves what its model.toml declares, else at least
        // the size of its weights.
        let artifact_bytes = std::fs::metadata(&artifact).map_or(0, |metadata| metadata.len());
        let reserve_bytes = settings.memory.unwrap_or(artifact_bytes);
        let count = match &settings.scaling {
            Some(scaling) => u32::try_from(settings.replicas)
                .unwrap_or(u32::MAX)
                .clamp(scaling.min_replicas, scaling.max_replicas),
            None => u32::try_from(settings.replicas).unwrap_or(u32::MAX),
        };
        let devices = match self.gateway.capacity().admit(
            &key.0,
            &key.1,
            reserve_bytes,
            count,
            &settings.devices,
        ) {
            Ok(devices) => devices,
            Err(refusal) => {
                let first = !matches!(self.local.get(&key), Some(Local::Pending(_)));
                self.local
                    .insert(key.clone(), Local::Pending(refusal.message.clone()));
                if first {
                    // Recorded once: the live figures in later refusals would make every retry
                    // a registry revision. The model's metadata shows the latest reason.
                    tracing::warn!(model = %key.0, version = %key.1, reason = %refusal.message, "version pending: no room");
                    self.write_state(&key, VersionState::Pending, &refusal.message)
                        .await;
                }
                return;
            }
        };
        self.local.insert(key.clone(), Local::Loading);
        if let Some(startup) = &mut self.startup {
            startup.insert(key.clone());
        }
        self.write_state(&key, VersionState::Loading, "").await;
        let loaded_tx = self.loaded_tx.clone();
        let metrics = Arc::new(self.gateway.telemetry().version(&key.0, &key.1));
        let gateway = self.gateway.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let sizes = (reserve_bytes, artifact_bytes);
            let result = load(runtime, &key, artifact, settings, metrics, devices, sizes).await;
            match &result {
                Ok(ready) => {
                    for replica in ready.replicas.replicas() {
                        if let Some(bytes) = replica.memory_bytes {
                            gateway.capacity().record_measured(
                                &key.0,
                                &key.1,
                                replica.index,
                                bytes.max(artifact_bytes),
                            );
                        }
                    }
                }
                Err(_) => gateway.capacity().release_version(&key.0, &key.1),
            }
            let _ = loaded_tx.send(Loaded {
                key,
                result,
                elapsed: started.elapsed(),
            });
        });
    }

    async fn finish_load(&mut self, loaded: Loaded) {
        let Loaded {
            key,
            result,
            elapsed,
        } = loaded;
        let elapsed_ms = elapsed.as_millis() as u64;
        if let Some(startup) = &mut self.startup {
            startup.remove(&key);
        }
        if !matches!(self.local.get(&key), Some(Local::Loading)) {
            // Removed while loading: dropping the result unloads it.
            self.gateway.capacity().release_version(&key.0, &key.1);
            self.check_startup();
            return;
        }
        match result {
            Ok(ready) => {
                tracing::info!(
                    model = %key.0,
                    version = %key.1,
                    replicas = ready.replicas.replica_count(),
                    max_batch_size = ready.max_batch_size,
                    elapsed_ms,
                    "version ready"
                );
                let measured = ready.replicas.memory_per_replica().map(|bytes| {
                    serde_json::json!({
                        "device": ready.device.to_string(),
                        "bytes_per_replica": bytes,
                        "replicas": ready.replicas.replica_count(),
                        "source": memory_source(ready.device),
                    })
                });
                self.local
                    .insert(key.clone(), Local::Ready(Arc::new(ready)));
                // Recorded before it is served, so that the registry says ready by the time a
                // request can reach it; a refusal means it was removed while loading.
                if !self.write_state(&key, VersionState::Ready, "").await {
                    self.start_drain(&key);
                } else if let Some(measured) = measured {
                    // Kept with the version for resource accounting across restarts.
                    let patch =
                        serde_json::Map::from_iter([("measured_memory".to_owned(), measured)]);
                    if let Err(error) = self
                        .store
                        .merge_version_metadata(ACTOR, &key.0, &key.1, patch)
                        .await
                    {
                        tracing::warn!(model = %key.0, version = %key.1, %error, "cannot record the measured memory");
                    }
                }
                self.publish();
            }
            Err(reason) => {
                tracing::error!(model = %key.0, version = %key.1, %reason, elapsed_ms, "version failed to load");
                self.local
                    .insert(key.clone(), Local::Failed(reason.clone()));
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
        let mut retried = false;
        for version in snapshot.models.iter().flat_map(|record| &record.versions) {
            let key = (version.model.clone(), version.label.clone());
            if matches!(self.local.get(&key), Some(Local::Pending(_))) && version.state.is_live() {
                self.start_load(key, version).await;
                retried = true;
            }
        }
        self.snapshot = Some(snapshot);
        if retried {
            self.publish();
        }
    }

    /// Takes a removed version out of service; true if it was serving and now drains (it
    /// retires once no request holds it), false if there was nothing to drain.
    fn start_drain(&mut self, key: &Key) -> bool {
        match self.local.remove(key) {
            Some(Local::Ready(ready)) => {
                tracing::info!(model = %key.0, version = %key.1, "draining");
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
        for (key, ready, since) in done {
            drop(ready);
            self.gateway.capacity().release_version(&key.0, &key.1);
            self.gateway.experiments().forget(&key.0, &key.1);
            let drained_ms = since.elapsed().as_millis() as u64;
            tracing::info!(model = %key.0, version = %key.1, drained_ms, "version unloaded and retired");
            self.write_state(&key, VersionState::Retired, "").await;
        }
    }

    fn check_startup(&mut self) {
        if self.startup.as_ref().is_some_and(HashSet::is_empty) && self.snapshot.is_some() {
            self.startup = None;
            self.gateway.set_ready(true);
        }
    }

    /// Records a version's state; false when the registry refuses because the version is
    /// being removed.
    async fn write_state(&self, key: &Key, state: VersionState, reason: &str) -> bool {
        match self
            .store
            .set_version_state(ACTOR, &key.0, &key.1, state, reason)
            .await
        {
            Ok(_) => true,
            Err(RegistryError::Conflict(_)) => false,
            Err(error) => {
                tracing::warn!(model = %key.0, version = %key.1, %error, "cannot record the version's state");
                true
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
            let score_metric = match &policy.mode {
                PolicyMode::Score { metric, .. } => Some(metric.as_str()),
                _ => None,
            };
            let versions = record
                .versions
                .iter()
                .filter_map(|version| {
                    let key = (version.model.clone(), version.label.clone());
                    let status = match self.local.get(&key)? {
                        Local::Loading => VersionStatus::Loading,
                        Local::Ready(ready) => VersionStatus::Ready(ready.clone()),
                        Local::Failed(reason) => VersionStatus::Failed(reason.clone()),
                        Local::Pending(reason) => VersionStatus::Pending(reason.clone()),
                    };
                    let stats = self.gateway.experiments().version(
                        &version.model,
                        &version.label,
                        record.rewards.get(&version.label).copied(),
                    );
                    let score = score_metric.and_then(|metric| {
                        record
                            .latest_scores
                            .get(&version.label)?
                            .get(metric)
                            .copied()
                    });
                    Some(Arc::new(TableVersion {
                        label: version.label.as_str().into(),
                        platform: platform(&version.runtime),
                        backend: backend(&version.runtime),
                        status,
                        stats,
                        score,
                    }))
                })
                .collect();
            let name: Arc<str> = record.model.name.as_str().into();
            models.insert(
                name.clone(),
                Arc::new(ModelState {
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
        self.gateway
            .install(ModelTable { models }, snapshot.revision);
    }
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
    key: &Key,
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
    let load = ReplicaLoad {
        runtime,
        artifact,
        options,
        warmup: settings.warmup.clone(),
        queue_capacity: settings.queue_capacity,
        metrics: Some(metrics.clone()),
    };
    let replicas = ReplicaSet::start(load, batching, &devices, &format!("sy-{}-{}", key.0, key.1))
        .await
        .map_err(|e| e.to_string())?;
    let mut ready = ReadyVersion::new(replicas, metrics, &settings, reserve_bytes, artifact_bytes);
    // Where it was placed, which may differ from `device` when `devices` lists several.
    if let Some(first) = devices.first() {
        ready.device = *first;
    }
    Ok(ready)
}
