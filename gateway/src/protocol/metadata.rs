//! What the protocols report about models: metadata, readiness and Triton's model
//! configuration, built once here so that every protocol front reports the same thing.

use std::sync::Arc;

use switchyard_runtimes::{Device, TensorSpec};

use crate::core::{ModelEntry, ModelTable, ReadyVersion, VersionEntry, VersionStatus};
use crate::error::GatewayError;
use crate::telemetry::statistics::StatisticsSnapshot;
use crate::wire::{self, pb};

pub const SERVER_NAME: &str = "switchyard";
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Triton's protocol extensions this server implements, and no other.
pub const EXTENSIONS: &[&str] = &[
    "classification",
    "sequence",
    "model_repository",
    "model_configuration",
    "system_shared_memory",
    "binary_tensor_data",
    "statistics",
];

/// What a CUDA shared-memory registration gets: no GPU memory is shared here.
pub fn cuda_shared_memory_refusal() -> GatewayError {
    GatewayError::invalid(
        "CUDA shared memory is not supported by this server: it shares no GPU memory with \
         clients (use system shared memory, or send the tensors in the request)",
    )
}

pub struct ModelMetadata {
    pub name: Arc<str>,
    pub versions: Vec<Arc<str>>,
    pub platform: &'static str,
    /// Empty unless the version is ready (the signature is read from the loaded model).
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// `LOADING`, `READY` or `FAILED`.
    pub state: &'static str,
    /// Why the version failed to load.
    pub reason: Option<String>,
    /// What the ready version's replicas take, as measured when they loaded.
    pub memory: Option<MeasuredMemory>,
    /// How the ready version was warmed up (synthetic shapes, configured, or skipped and why).
    pub warmup: Option<String>,
}

pub struct MeasuredMemory {
    pub device: Device,
    pub replicas: usize,
    pub bytes_per_replica: Option<u64>,
}

/// The version a metadata request is about: the named one, or the model's default (the
/// highest ready version, else the highest one, so that its state and reason show).
fn resolve<'t>(
    model: &'t ModelEntry,
    version: Option<&str>,
) -> Result<&'t Arc<VersionEntry>, GatewayError> {
    match version {
        Some(label) => model.version(label),
        None => model
            .representative_version()
            .ok_or_else(|| GatewayError::unavailable("the model has no versions")),
    }
}

fn visible(ready: &ReadyVersion) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
    let signature = ready.visible_signature();
    (signature.inputs, signature.outputs)
}

pub fn model_metadata(
    table: &ModelTable,
    model: &str,
    version: Option<&str>,
) -> Result<ModelMetadata, GatewayError> {
    let model = table.model(model)?;
    let chosen = resolve(model, version)?;
    let (mut inputs, outputs) = match &chosen.status {
        VersionStatus::Ready(ready) => visible(ready),
        VersionStatus::Remote(remote) => (
            remote.signature.inputs.clone(),
            remote.signature.outputs.clone(),
        ),
        _ => (Vec::new(), Vec::new()),
    };
    // As in the config: a scalar input is shown as shape [1], which it accepts beside [].
    for input in &mut inputs {
        if input.dims.is_empty() {
            input.dims = vec![1];
        }
    }
    let versions = match version {
        Some(_) => vec![chosen.label.clone()],
        None => model.versions.iter().map(|v| v.label.clone()).collect(),
    };
    Ok(ModelMetadata {
        name: model.name.clone(),
        versions,
        platform: chosen.platform,
        inputs,
        outputs,
        state: chosen.status.name(),
        reason: chosen.status.reason().map(str::to_owned),
        memory: match &chosen.status {
            VersionStatus::Ready(ready) => Some(MeasuredMemory {
                device: ready.device,
                replicas: ready.replicas.replica_count(),
                bytes_per_replica: ready.replicas.memory_per_replica(),
            }),
            _ => None,
        },
        warmup: match &chosen.status {
            VersionStatus::Ready(ready) => Some(ready.replicas.warmup().describe()),
            _ => None,
        },
    })
}

/// `Ok` when the model (any version) or the named version can serve; otherwise why not.
pub fn model_ready(
    table: &ModelTable,
    model: &str,
    version: Option<&str>,
) -> Result<(), GatewayError> {
    let model = table.model(model)?;
    if version.is_none() && model.highest_ready().is_some() {
        return Ok(());
    }
    let chosen = resolve(model, version)?;
    if matches!(chosen.status, VersionStatus::Remote(_)) {
        return Ok(());
    }
    chosen.ready(&model.name).map(|_| ())
}

/// Triton's model configuration of a version: the one it was loaded with (its instance count as
/// it is now), or, for a version only peers serve, what its signature says.
pub fn model_config(
    table: &ModelTable,
    model: &str,
    version: Option<&str>,
) -> Result<pb::ModelConfig, GatewayError> {
    let model = table.model(model)?;
    let chosen = resolve(model, version)?;
    if let VersionStatus::Remote(remote) = &chosen.status {
        let skip = usize::from(remote.max_batch_size > 0);
        let dims = |spec: &TensorSpec| spec.dims.get(skip..).unwrap_or_default().to_vec();
        return Ok(pb::ModelConfig {
            name: model.name.to_string(),
            platform: chosen.platform.into(),
            backend: chosen.backend.into(),
            max_batch_size: i32::try_from(remote.max_batch_size).unwrap_or(i32::MAX),
            input: remote
                .signature
                .inputs
                .iter()
                .map(|spec| pb::ModelInput {
                    name: spec.name.clone(),
                    data_type: wire::config_data_type(spec.dtype) as i32,
                    dims: dims(spec),
                    ..Default::default()
                })
                .collect(),
            output: remote
                .signature
                .outputs
                .iter()
                .map(|spec| pb::ModelOutput {
                    name: spec.name.clone(),
                    data_type: wire::config_data_type(spec.dtype) as i32,
                    dims: dims(spec),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
    }
    let ready = chosen.ready(&model.name)?;
    let mut config = (*ready.config).clone();
    let count = i32::try_from(ready.replicas.replica_count()).unwrap_or(i32::MAX);
    for group in &mut config.instance_group {
        group.count = count;
    }
    Ok(config)
}

/// Triton's statistics of one loaded version.
pub struct VersionStatistics {
    pub name: Arc<str>,
    pub version: Arc<str>,
    pub figures: StatisticsSnapshot,
}

/// The statistics of every loaded version of every model (`model` empty), of one model
/// (`version` empty), or of one version or alias, which must be loaded.
pub fn model_statistics(
    table: &ModelTable,
    model: Option<&str>,
    version: Option<&str>,
) -> Result<Vec<VersionStatistics>, GatewayError> {
    let of = |model: &ModelEntry, entry: &VersionEntry| match &entry.status {
        VersionStatus::Ready(ready) => Some(VersionStatistics {
            name: model.name.clone(),
            version: entry.label.clone(),
            figures: ready.metrics.statistics(),
        }),
        _ => None,
    };
    let Some(name) = model else {
        return Ok(table
            .models
            .values()
            .flat_map(|model| model.versions.iter().filter_map(|v| of(model, v)))
            .collect());
    };
    let model = table.model(name)?;
    match version {
        None => Ok(model.versions.iter().filter_map(|v| of(model, v)).collect()),
        Some(label) => {
            let entry = model.version(label)?;
            of(model, entry)
                .map(|figures| vec![figures])
                .ok_or_else(|| {
                    GatewayError::unavailable(format!(
                        "version '{}' of model '{}' is not loaded",
                        crate::error::quoted(&entry.label),
                        crate::error::quoted(&model.name)
                    ))
                })
        }
    }
}
