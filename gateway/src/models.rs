//! What the gateway serves: every model, its versions and the state of each, as one immutable
//! snapshot swapped atomically when something changes. Requests read the snapshot without a lock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use switchyard_runtimes::{Device, Signature};

use crate::error::GatewayError;
use crate::serving::ReplicaSet;
use crate::telemetry::VersionMetrics;

/// A version that can serve.
pub struct ReadyVersion {
    pub replicas: ReplicaSet,
    pub metrics: Arc<VersionMetrics>,
    pub device: Device,
    /// Largest batch along axis 0; 0 when the model has no batch axis.
    pub max_batch_size: u32,
    /// How long a request may take, queue included, unless the caller asks for less.
    pub timeout: Duration,
}

impl ReadyVersion {
    pub fn new(
        replicas: ReplicaSet,
        metrics: Arc<VersionMetrics>,
        device: Device,
        timeout: Duration,
    ) -> ReadyVersion {
        let max_batch_size = u32::try_from(replicas.max_batch_size()).unwrap_or(u32::MAX);
        ReadyVersion {
            replicas,
            metrics,
            device,
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
    /// Triton's platform name (`onnxruntime_onnx`, `pytorch_libtorch`).
    pub platform: &'static str,
    /// Triton's backend name (`onnxruntime`, `pytorch`).
    pub backend: &'static str,
    pub status: VersionStatus,
}

pub struct ModelState {
    pub name: Arc<str>,
    /// Sorted by label, lowest first.
    pub versions: Vec<Arc<VersionState>>,
    /// Traffic weights by version label; empty: the highest ready version serves.
    pub traffic: Vec<(Arc<str>, u64)>,
    /// Alias -> version label.
    pub aliases: BTreeMap<String, Arc<str>>,
}

impl ModelState {
    /// A version by label or alias.
    pub fn version(&self, label: &str) -> Result<&Arc<VersionState>, GatewayError> {
        let label = self.aliases.get(label).map_or(label, |target| &**target);
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

    /// The version that serves a request naming none: one of the ready versions with traffic
    /// weight, picked in proportion to the weights; without such a version, the highest
    /// ready one (so that a traffic change towards a version still loading costs no request).
    pub fn route(&self) -> Option<&Arc<VersionState>> {
        let weighted = || {
            self.traffic
                .iter()
                .filter(|(_, weight)| *weight > 0)
                .filter_map(|(label, weight)| {
                    self.versions
                        .iter()
                        .find(|v| v.label == *label && matches!(v.status, VersionStatus::Ready(_)))
                        .map(|version| (version, *weight))
                })
        };
        let total: u64 = weighted().map(|(_, weight)| weight).sum();
        if total > 0 {
            let mut pick = fastrand::u64(..total);
            for (version, weight) in weighted() {
                if pick < weight {
                    return Some(version);
                }
                pick -= weight;
            }
        }
        self.highest_ready()
    }

    pub fn highest_ready(&self) -> Option<&Arc<VersionState>> {
        self.versions
            .iter()
            .rev()
            .find(|version| matches!(version.status, VersionStatus::Ready(_)))
    }

    /// The highest ready version, or the highest version when none is ready (to report why).
    pub fn representative_version(&self) -> Option<&Arc<VersionState>> {
        self.highest_ready().or_else(|| self.versions.last())
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
}
