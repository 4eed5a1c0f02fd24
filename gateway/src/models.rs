//! What the gateway serves: every model, its versions and the state of each, as one immutable
//! snapshot swapped atomically when something changes. Requests read the snapshot without a lock.

use std::collections::BTreeMap;
use std::sync::Arc;

use switchyard_runtimes::Signature;

use crate::error::GatewayError;
use crate::repository::ModelSettings;
use crate::serving::Replica;

/// Batch bound used when a model's inputs all start with a dynamic dimension and its
/// model.toml does not say otherwise.
pub const DEFAULT_MAX_BATCH_SIZE: u32 = 64;

/// A version that can serve.
pub struct ReadyVersion {
    pub replica: Replica,
    /// Largest batch along axis 0; 0 when the model has no batch axis.
    pub max_batch_size: u32,
}

impl ReadyVersion {
    pub fn new(replica: Replica, configured: Option<u32>) -> ReadyVersion {
        let max_batch_size =
            configured.unwrap_or_else(|| inferred_max_batch_size(replica.signature()));
        ReadyVersion {
            replica,
            max_batch_size,
        }
    }

    pub fn signature(&self) -> &Signature {
        self.replica.signature()
    }
}

fn inferred_max_batch_size(signature: &Signature) -> u32 {
    let batchable = signature
        .inputs
        .iter()
        .chain(&signature.outputs)
        .all(|spec| spec.dims.first() == Some(&-1));
    if batchable && !signature.inputs.is_empty() {
        DEFAULT_MAX_BATCH_SIZE
    } else {
        0
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
