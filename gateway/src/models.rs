//! What the gateway serves: every model, its versions and the state of each, as one immutable
//! snapshot swapped atomically when something changes. Requests read the snapshot without a lock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use switchyard_runtimes::Signature;

use crate::error::GatewayError;
use crate::repository::ModelSettings;
use crate::serving::ReplicaSet;

/// A version that can serve.
pub struct ReadyVersion {
    pub replicas: ReplicaSet,
    /// Largest batch along axis 0; 0 when the model has no batch axis.
    pub max_batch_size: u32,
    /// How long a request may take, queue included, unless the caller asks for less.
    pub timeout: Duration,
}

impl ReadyVersion {
    pub fn new(replicas: ReplicaSet, timeout: Duration) -> ReadyVersion {
        let max_batch_size = u32::try_from(replicas.max_batch_size()).unwrap_or(u32::MAX);
        ReadyVersion {
            replicas,
            max_batch_size,
            timeout,
        }
    }

    pub fn signature(&self) -> &Signature {
        self.replicas.signature()
    }
}

#[derive(Clone)]
pub enum VersionStatus {
    Loading,
    Ready(Arc<ReadyVersion>),
    Failed(String),
}

impl VersionStatus {
    /// The protocol-facing name of the state.
    pub fn name(&self) -> &'static str {
        match self {
            VersionStatus::Loading => "LOADING",
            VersionStatus::Ready(_) => "READY",
            VersionStatus::Failed(_) => "FAILED",
        }
    }
}

pub struct VersionState {
    pub label: Arc<str>,
    pub platform: &'static str,
    pub status: VersionStatus,
}

pub struct ModelState {
    pub name: Arc<str>,
    pub settings: Option<ModelSettings>,
    /// Sorted by label, lowest first.
    pub versions: Vec<Arc<VersionState>>,
}

impl ModelState {
    pub fn version(&self, label: &str) -> Result<&Arc<VersionState>, GatewayError> {
        self.versions
            .iter()
            .find(|version| &*version.label == label)
            .ok_or_else(|| {
                GatewayError::not_found(format!(
                    "model '{}' has no version '{label}' (versions: {})",
                    self.name,
                    self.labels().join(", ")
                ))
            })
    }

    /// The version that serves requests naming none: the highest ready one.
    pub fn default_version(&self) -> Option<&Arc<VersionState>> {
        self.versions
            .iter()
            .rev()
            .find(|version| matches!(version.status, VersionStatus::Ready(_)))
    }

    /// The default version, or the highest version when none is ready (to report why).
    pub fn representative_version(&self) -> Option<&Arc<VersionState>> {
        self.default_version().or_else(|| self.versions.last())
    }

    pub fn labels(&self) -> Vec<&str> {
        self.versions.iter().map(|v| &*v.label).collect()
    }
}

impl VersionState {
    /// The ready replica set, or why this version cannot serve.
    pub fn ready(&self, model: &str) -> Result<&Arc<ReadyVersion>, GatewayError> {
        match &self.status {
            VersionStatus::Ready(ready) => Ok(ready),
            VersionStatus::Loading => Err(GatewayError::unavailable(format!(
                "model '{model}' version '{}' is still loading",
                self.label
            ))),
            VersionStatus::Failed(reason) => Err(GatewayError::unavailable(format!(
                "model '{model}' version '{}' is not ready: {reason}",
                self.label
            ))),
        }
    }
}

#[derive(Default)]
pub struct ModelTable {
    pub models: BTreeMap<Arc<str>, Arc<ModelState>>,
}

impl ModelTable {
    pub fn model(&self, name: &str) -> Result<&Arc<ModelState>, GatewayError> {
        self.models
            .get(name)
            .ok_or_else(|| GatewayError::not_found(format!("unknown model '{name}'")))
    }

    /// True once no version is still loading.
    pub fn settled(&self) -> bool {
        self.models.values().all(|model| {
            model
                .versions
                .iter()
                .all(|version| !matches!(version.status, VersionStatus::Loading))
        })
    }

    /// A copy of this table with one version's status replaced.
    pub fn with_status(&self, model: &str, label: &str, status: &VersionStatus) -> ModelTable {
        let mut models = self.models.clone();
        if let Some(state) = models.get_mut(model) {
            let versions = state
                .versions
                .iter()
                .map(|version| {
                    if &*version.label == label {
                        Arc::new(VersionState {
                            label: version.label.clone(),
                            platform: version.platform,
                            status: status.clone(),
                        })
                    } else {
                        version.clone()
                    }
                })
                .collect();
            *state = Arc::new(ModelState {
                name: state.name.clone(),
                settings: state.settings.clone(),
                versions,
            });
        }
        ModelTable { models }
    }
}
