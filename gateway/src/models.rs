//! What the gateway serves: every model, its versions and the state of each, as one immutable
//! snapshot swapped atomically when something changes. Requests read the snapshot without a lock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use switchyard_runtimes::{Device, Signature};

use crate::error::GatewayError;
use crate::experiment::VersionStats;
use crate::repository::{ModelSettings, Scaling};
use crate::routing::{self, Candidate, TrafficPolicy};
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
    /// Set when the version scales with its load.
    pub scaling: Option<Scaling>,
    /// What a new replica reserves on its device until it is measured.
    pub reserve_bytes: u64,
    /// The artifact's size: a replica's reservation never goes below it, whatever the
    /// measurement says (memory the allocator reused is invisible to it).
    pub artifact_bytes: u64,
    /// Devices its replicas may be placed on.
    pub allowed: Vec<Device>,
}

impl ReadyVersion {
    pub fn new(
        replicas: ReplicaSet,
        metrics: Arc<VersionMetrics>,
        settings: &ModelSettings,
        reserve_bytes: u64,
        artifact_bytes: u64,
    ) -> ReadyVersion {
        let max_batch_size = u32::try_from(replicas.max_batch_size()).unwrap_or(u32::MAX);
        ReadyVersion {
            replicas,
            metrics,
            device: settings.device,
            max_batch_size,
            timeout: settings.timeout,
            scaling: settings.scaling.clone(),
            reserve_bytes,
            artifact_bytes,
            allowed: settings.devices.clone(),
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
    /// Waiting for memory on an allowed device; why.
    Pending(String),
}

impl VersionStatus {
    /// The protocol-facing name of the state.
    pub fn name(&self) -> &'static str {
        match self {
            VersionStatus::Loading => "LOADING",
            VersionStatus::Ready(_) => "READY",
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
}

pub struct VersionState {
    pub label: Arc<str>,
    /// Triton's platform name (`onnxruntime_onnx`, `pytorch_libtorch`).
    pub platform: &'static str,
    /// Triton's backend name (`onnxruntime`, `pytorch`).
    pub backend: &'static str,
    pub status: VersionStatus,
    /// The experiment's figures of this version (kept across table swaps).
    pub stats: Arc<VersionStats>,
    /// The latest registry score of the metric the policy follows (score mode).
    pub score: Option<f64>,
}

pub struct ModelState {
    pub name: Arc<str>,
    /// Sorted by label, lowest first.
    pub versions: Vec<Arc<VersionState>>,
    /// Traffic weights by version label; empty: the highest ready version serves.
    pub traffic: Vec<(Arc<str>, u64)>,
    /// Alias -> version label.
    pub aliases: BTreeMap<String, Arc<str>>,
    pub policy: TrafficPolicy,
}

/// Why the policy found no version for a request.
pub struct NoVersion(pub String);

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

    /// Whether the policy may send requests to a version: it is ready, and its recent error
    /// rate is not over the policy's threshold.
    pub fn eligible(&self, version: &VersionState) -> bool {
        matches!(version.status, VersionStatus::Ready(_))
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
                })
            })
            .collect()
    }

    /// The version that serves a request naming none, by the model's policy (`key` is the
    /// sticky key, if the request carries one). Without traffic weights, or when no weighted
    /// version is eligible, the highest eligible version serves, so that a shift towards a
    /// version still loading costs no request; with none at all, the reason.
    pub fn route(
        &self,
        key: Option<&[u8]>,
        rng: &mut fastrand::Rng,
    ) -> Result<&Arc<VersionState>, NoVersion> {
        if !self.traffic.is_empty() {
            let candidates = self.candidates();
            let chosen = routing::choose(&self.policy, &candidates, key, rng).and_then(|index| {
                self.versions
                    .iter()
                    .find(|v| *v.label == *candidates[index].label)
            });
            if let Some(version) = chosen {
                return Ok(version);
            }
        }
        self.versions
            .iter()
            .rev()
            .find(|version| self.eligible(version))
            .ok_or_else(|| NoVersion(self.why_no_version()))
    }

    fn why_no_version(&self) -> String {
        let reasons: Vec<String> = self
            .versions
            .iter()
            .map(|version| match &version.status {
                VersionStatus::Failed(reason) => {
                    format!("version '{}' failed: {reason}", version.label)
                }
                VersionStatus::Pending(reason) => {
                    format!("version '{}' is pending: {reason}", version.label)
                }
                VersionStatus::Ready(_) => format!(
                    "version '{}' has a recent error rate of {:.0}%, over the policy's limit of {:.0}%",
                    version.label,
                    version.stats.recent_error_rate().unwrap_or(0.0) * 100.0,
                    self.policy.max_error_rate * 100.0
                ),
                other => format!(
                    "version '{}' is {}",
                    version.label,
                    other.name().to_lowercase()
                ),
            })
            .collect();
        if reasons.is_empty() {
            format!("model '{}' has no versions", self.name)
        } else {
            format!(
                "model '{}' has no version that can serve ({})",
                self.name,
                reasons.join("; ")
            )
        }
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
            VersionStatus::Failed(reason) | VersionStatus::Pending(reason) => {
                Err(GatewayError::unavailable(format!(
                    "model '{model}' version '{}' is not ready: {reason}",
                    self.label
                )))
            }
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
