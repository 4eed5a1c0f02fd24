//! Triton's model control over the registry (`models.control_mode`, Triton's
//! `--model-control-mode`): the repository index, a model's load (with a config override) and
//! unload, and polling the repository folder for changes. Every change goes through the
//! registry, as any other does; the reconciler then loads or drains, and a load answers once
//! the versions it asked for are ready or have failed.
//!
//! - `none`: the repository is imported at the first start (or at every start with
//!   `models.import_on_start`); load and unload are refused.
//! - `poll`: imported at every start, then the folder is read again every
//!   `models.poll_interval`: new models and versions are registered, changed ones reloaded,
//!   removed ones unloaded. Load and unload are refused, as in Triton.
//! - `explicit`: only what `models.load` names is imported at start (`*`: everything); load
//!   and unload do the rest.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use switchyard_registry::{NewVersion, RegistryError, Store, Version, VersionState};
use tokio::time::Instant;

use crate::config::{ControlMode, ServingConfig};
use crate::control::import::{known_labels, new_version};
use crate::control::repository::{
    self, ModelEntry, ModelToml, file_name, is_valid_name, sorted_subdirs,
};
use crate::control::triton;
use crate::core::TableHandle;
use crate::core::repository::{IndexEntry, ModelRepository, RepositoryFuture};
use crate::error::{ErrorKind, GatewayError, quoted};
use crate::wire;

/// The longest an unload waits for its versions to drain before it answers.
const RETIRE_WAIT: Duration = Duration::from_secs(5);

/// A config override longer than this is no model configuration.
const MAX_OVERRIDE_BYTES: usize = 1 << 20;

pub struct ModelControl {
    store: Arc<dyn Store>,
    tables: Arc<TableHandle>,
    dir: PathBuf,
    defaults: ServingConfig,
    mode: ControlMode,
    /// How long a load or unload waits for the versions it changed.
    wait: Duration,
    /// One load, unload or poll at a time: each reads the registry, then writes it.
    busy: tokio::sync::Mutex<()>,
}

impl ModelControl {
    pub fn new(
        store: Arc<dyn Store>,
        tables: Arc<TableHandle>,
        dir: PathBuf,
        defaults: ServingConfig,
        mode: ControlMode,
        wait: Duration,
    ) -> ModelControl {
        ModelControl {
            store,
            tables,
            dir,
            defaults,
            mode,
            wait,
            busy: tokio::sync::Mutex::new(()),
        }
    }

    fn refuse_unless_explicit(&self) -> Result<(), GatewayError> {
        if self.mode == ControlMode::Explicit {
            return Ok(());
        }
        Err(GatewayError::unavailable(format!(
            "explicit model load / unload is not allowed: models.control_mode is '{}' (start \
             with --model-control-mode explicit)",
            self.mode.as_str()
        )))
    }

    async fn index_entries(&self, ready_only: bool) -> Result<Vec<IndexEntry>, GatewayError> {
        let snapshot = self.store.snapshot().await.map_err(GatewayError::from)?;
        let mut names: Vec<String> = folder_models(&self.dir);
        for record in &snapshot.models {
            if !names.contains(&record.model.name) {
                names.push(record.model.name.clone());
            }
        }
        names.sort();
        let mut entries = Vec::new();
        for name in names {
            let record = snapshot.models.iter().find(|r| r.model.name == name);
            let versions: Vec<&Version> = record
                .map(|r| r.versions.iter().collect())
                .unwrap_or_default();
            if versions.is_empty() {
                entries.push(IndexEntry {
                    name,
                    version: String::new(),
                    state: "",
                    reason: String::new(),
                });
                continue;
            }
            for version in versions {
                let (state, reason) = index_state(version);
                entries.push(IndexEntry {
                    name: name.clone(),
                    version: version.label.clone(),
                    state,
                    reason,
                });
            }
        }
        if ready_only {
            entries.retain(|entry| entry.state == "READY");
        }
        Ok(entries)
    }

    async fn load_model(
        &self,
        actor: &str,
        model: &str,
        config: Option<&str>,
    ) -> Result<(), GatewayError> {
        self.refuse_unless_explicit()?;
        let failed = |message: String| format!("failed to load '{}': {message}", quoted(model));
        let model_dir = self.model_dir(model).map_err(|e| e.with_prefix(failed))?;
        let toml = match config {
            Some(text) => override_settings(text, model, &model_dir),
            None => repository::model_settings(&model_dir, model),
        }
        .and_then(|toml| repository::checked(toml, &model_dir, &self.defaults));
        if let Err(reason) = &toml {
            return Err(GatewayError::invalid(failed(reason.clone())));
        }
        let entry = repository::scan_model(&model_dir, model.to_owned(), toml)
            .map_err(|e| GatewayError::internal(failed(e.to_string())))?
            .ok_or_else(|| GatewayError::invalid(failed("it has no version folder".into())))?;
        let _busy = self.busy.lock().await;
        let deadline = Instant::now() + self.wait;
        let revision = self
            .sync_model(actor, &entry, deadline)
            .await
            .map_err(|e| e.with_prefix(failed))?;
        self.wait_for_table(revision, deadline).await;
        let labels: Vec<&str> = entry.versions.iter().map(|v| v.label.as_str()).collect();
        self.wait_for_versions(model, &labels, deadline)
            .await
            .map_err(|e| e.with_prefix(failed))
    }

    async fn unload_model(&self, actor: &str, model: &str) -> Result<(), GatewayError> {
        self.refuse_unless_explicit()?;
        let failed = |message: String| format!("failed to unload '{}': {message}", quoted(model));
        let _busy = self.busy.lock().await;
        let record = match self.store.model(model).await {
            Ok(record) => record,
            Err(RegistryError::NotFound(_)) if self.dir.join(model).is_dir() => return Ok(()),
            Err(RegistryError::NotFound(_)) => {
                return Err(GatewayError::not_found(failed(
                    "no such model in the repository".into(),
                )));
            }
            Err(error) => return Err(GatewayError::from(error).with_prefix(failed)),
        };
        // Triton answers an unload once the model is unloaded: the versions this gateway serves
        // are waited for until they have drained and retired.
        let serving: Vec<String> = match self.tables.peek().model(model) {
            Ok(entry) => entry
                .versions
                .iter()
                .filter(|v| matches!(v.status, crate::core::VersionStatus::Ready(_)))
                .map(|v| v.label.to_string())
                .collect(),
            Err(_) => Vec::new(),
        };
        let mut revision = None;
        for version in record
            .versions
            .iter()
            .filter(|v| v.state.is_live() || v.state == VersionState::Failed)
        {
            revision = Some(
                self.store
                    .remove_version(actor, model, &version.label)
                    .await
                    .map_err(|e| GatewayError::from(e).with_prefix(failed))?,
            );
        }
        if let Some(revision) = revision {
            let deadline = Instant::now() + self.wait;
            self.wait_for_table(revision, deadline).await;
            self.wait_for_retired(model, &serving, deadline.min(Instant::now() + RETIRE_WAIT))
                .await;
        }
        Ok(())
    }

    /// Waits until each of `labels` has retired (drained: no request holds it), at most until
    /// `deadline`.
    async fn wait_for_retired(&self, model: &str, labels: &[String], deadline: Instant) {
        let mut changes = self.store.subscribe();
        loop {
            let mut retired = true;
            for label in labels {
                if self
                    .store
                    .version(model, label)
                    .await
                    .is_ok_and(|version| version.state != VersionState::Retired)
                {
                    retired = false;
                    break;
                }
            }
            if retired || Instant::now() >= deadline {
                return;
            }
            let _ = tokio::time::timeout_at(deadline, changes.changed()).await;
        }
    }

    /// The model's folder in the repository, or why there is none.
    fn model_dir(&self, model: &str) -> Result<PathBuf, GatewayError> {
        if !is_valid_name(model) || model.len() > 255 {
            return Err(GatewayError::invalid(format!(
                "'{}' is not a model name",
                quoted(model)
            )));
        }
        let dir = self.dir.join(model);
        if !dir.is_dir() {
            return Err(GatewayError::not_found(format!(
                "no model folder '{model}' in the model repository {}",
                self.dir.display()
            )));
        }
        Ok(dir)
    }

    /// Makes the registry hold `entry`'s versions as the folder has them: new ones registered,
    /// unloaded ones served again, changed or failed ones unloaded and served again, and the
    /// model's other versions unloaded. Returns the registry revision of the last write.
    async fn sync_model(
        &self,
        actor: &str,
        entry: &ModelEntry,
        deadline: Instant,
    ) -> Result<i64, GatewayError> {
        let store = self.store.as_ref();
        known_labels(store, actor, entry)
            .await
            .map_err(GatewayError::from)?;
        let record = store.model(&entry.name).await.map_err(GatewayError::from)?;
        let mut revision = self.store.revision().await.map_err(GatewayError::from)?;
        let mut replaced = Vec::new();
        for version in &entry.versions {
            let new = new_version(&self.dir, entry, version)
                .map_err(|e| GatewayError::internal(e.to_string()))?;
            let existing = record.versions.iter().find(|v| v.label == version.label);
            revision = match existing {
                None => store
                    .register_version(actor, &entry.name, new)
                    .await
                    .map(|(_, revision)| revision),
                Some(current) if current.state == VersionState::Retired => {
                    store
                        .reinstate_version(actor, &entry.name, &version.label, new)
                        .await
                }
                Some(current) if current.state == VersionState::Draining => {
                    replaced.push((version.label.clone(), new));
                    continue;
                }
                Some(current) if current.state != VersionState::Failed && same(current, &new) => {
                    continue;
                }
                Some(_) => {
                    let removed = store
                        .remove_version(actor, &entry.name, &version.label)
                        .await;
                    replaced.push((version.label.clone(), new));
                    removed
                }
            }
            .map_err(GatewayError::from)?;
        }
        // The model's other versions from this folder go; those registered through the
        // management API (a canary from elsewhere) are not the folder's to remove.
        let wanted: Vec<&str> = entry.versions.iter().map(|v| v.label.as_str()).collect();
        let folder = self.dir.join(&entry.name);
        for other in &record.versions {
            if !wanted.contains(&other.label.as_str())
                && (other.state.is_live() || other.state == VersionState::Failed)
                && imported_from(other) == Some(folder.as_path())
            {
                revision = store
                    .remove_version(actor, &entry.name, &other.label)
                    .await
                    .map_err(GatewayError::from)?;
            }
        }
        // A changed version is served again once the old one has drained and retired.
        for (label, new) in replaced {
            self.wait_until_retired(&entry.name, &label, deadline)
                .await?;
            revision = store
                .reinstate_version(actor, &entry.name, &label, new)
                .await
                .map_err(GatewayError::from)?;
        }
        Ok(revision)
    }

    async fn wait_until_retired(
        &self,
        model: &str,
        label: &str,
        deadline: Instant,
    ) -> Result<(), GatewayError> {
        loop {
            let version = self
                .store
                .version(model, label)
                .await
                .map_err(GatewayError::from)?;
            if version.state == VersionState::Retired {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(GatewayError::new(
                    ErrorKind::DeadlineExceeded,
                    format!(
                        "version {label} is still {} (its requests or sequences are not done)",
                        version.state
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the served table was built from `revision` or a later one.
    async fn wait_for_table(&self, revision: i64, deadline: Instant) {
        let mut published = self.tables.watch_published();
        while self.tables.revision() < revision && Instant::now() < deadline {
            let _ = tokio::time::timeout_at(deadline, published.changed()).await;
        }
    }

    /// Waits until each of `labels` is ready (or forwarded to a peer) or has failed.
    async fn wait_for_versions(
        &self,
        model: &str,
        labels: &[&str],
        deadline: Instant,
    ) -> Result<(), GatewayError> {
        use crate::core::VersionStatus;
        let mut published = self.tables.watch_published();
        loop {
            let mut waiting = None;
            {
                let table = self.tables.peek();
                for label in labels {
                    let status = table
                        .model(model)
                        .ok()
                        .and_then(|entry| entry.versions.iter().find(|v| &*v.label == *label))
                        .map(|version| version.status.clone());
                    match status {
                        Some(VersionStatus::Ready(_) | VersionStatus::Remote(_)) => {}
                        Some(VersionStatus::Failed(reason)) => {
                            return Err(GatewayError::unavailable(format!(
                                "version {label}: {reason}"
                            )));
                        }
                        Some(VersionStatus::Pending(reason)) => {
                            waiting = Some(format!("version {label} is pending: {reason}"));
                        }
                        Some(VersionStatus::Loading) | None => {
                            waiting = Some(format!("version {label} is still loading"));
                        }
                    }
                }
            }
            let Some(why) = waiting else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                return Err(GatewayError::new(ErrorKind::DeadlineExceeded, why));
            }
            let _ = tokio::time::timeout_at(deadline, published.changed()).await;
        }
    }

    /// One pass of `poll`: every model folder synchronised with the registry, and the models
    /// this repository imported whose folder is gone unloaded.
    pub async fn poll_once(&self) {
        let _busy = self.busy.lock().await;
        let deadline = Instant::now() + self.wait;
        let folders = folder_models(&self.dir);
        for name in &folders {
            let model_dir = self.dir.join(name);
            let toml = repository::resolved_settings(&model_dir, name, &self.defaults);
            let entry = match repository::scan_model(&model_dir, name.clone(), toml) {
                Ok(Some(entry)) => entry,
                Ok(None) => continue,
                Err(error) => {
                    tracing::warn!(model = %name, %error, "cannot read the model's folder");
                    continue;
                }
            };
            if let Err(error) = self.sync_model("poll", &entry, deadline).await {
                tracing::warn!(model = %name, %error, "the repository poll could not apply the folder");
            }
        }
        let Ok(snapshot) = self.store.snapshot().await else {
            return;
        };
        for record in snapshot.models {
            if folders.contains(&record.model.name) {
                continue;
            }
            let folder = self.dir.join(&record.model.name);
            for version in record
                .versions
                .iter()
                .filter(|v| v.state.is_live() && imported_from(v) == Some(folder.as_path()))
            {
                if let Err(error) = self
                    .store
                    .remove_version("poll", &record.model.name, &version.label)
                    .await
                {
                    tracing::warn!(model = %record.model.name, version = %version.label, %error, "cannot unload a version whose folder is gone");
                }
            }
        }
    }
}

/// Polls the repository folder every `interval`, until the process stops.
pub async fn poll(control: Arc<ModelControl>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        control.poll_once().await;
    }
}

impl ModelRepository for ModelControl {
    fn index(&self, ready_only: bool) -> RepositoryFuture<'_, Vec<IndexEntry>> {
        Box::pin(self.index_entries(ready_only))
    }

    fn load<'a>(
        &'a self,
        actor: &'a str,
        model: &'a str,
        config: Option<&'a str>,
    ) -> RepositoryFuture<'a, ()> {
        Box::pin(self.load_model(actor, model, config))
    }

    fn unload<'a>(&'a self, actor: &'a str, model: &'a str) -> RepositoryFuture<'a, ()> {
        Box::pin(self.unload_model(actor, model))
    }
}

/// The model folders of the repository, by name.
fn folder_models(dir: &Path) -> Vec<String> {
    sorted_subdirs(dir)
        .unwrap_or_default()
        .iter()
        .filter_map(|path| file_name(path))
        .filter(|name| is_valid_name(name))
        .collect()
}

/// A version's state as Triton's index names them, and why.
fn index_state(version: &Version) -> (&'static str, String) {
    match version.state {
        VersionState::Ready => ("READY", String::new()),
        VersionState::Registered | VersionState::Loading => ("LOADING", String::new()),
        VersionState::Draining => ("UNLOADING", String::new()),
        VersionState::Retired => ("UNAVAILABLE", "unloaded".into()),
        VersionState::Failed | VersionState::Pending => {
            ("UNAVAILABLE", version.state_reason.clone())
        }
    }
}

/// Whether a registered version already is what `new` would register.
fn same(current: &Version, new: &NewVersion) -> bool {
    current.runtime == new.runtime
        && current.artifact == new.artifact
        && Some(&current.config) == new.config.as_ref()
}

fn imported_from(version: &Version) -> Option<&Path> {
    version
        .metadata
        .get("imported_from")
        .and_then(|dir| dir.as_str())
        .map(Path::new)
}

/// The settings a load's config override gives: Triton's `ModelConfig` in JSON, in place of
/// the folder's `config.pbtxt` (its `model.toml` still wins, as always).
fn override_settings(text: &str, model: &str, model_dir: &Path) -> Result<ModelToml, String> {
    if text.len() > MAX_OVERRIDE_BYTES {
        return Err(format!(
            "the config override is over {MAX_OVERRIDE_BYTES} bytes"
        ));
    }
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("the config override is not JSON: {e}"))?;
    let config = wire::model_config_from_json(&json)
        .map_err(|e| format!("the config override is not a model configuration: {e}"))?;
    let from_config = triton::to_model_toml(&config, model, model_dir)?;
    let toml_path = model_dir.join("model.toml");
    match std::fs::read_to_string(&toml_path) {
        Ok(text) => toml::from_str::<ModelToml>(&text)
            .map_err(|e| format!("invalid {}: {e}", toml_path.display()))
            .and_then(|from_toml| triton::combine(from_config, from_toml)),
        Err(_) => Ok(from_config),
    }
}
