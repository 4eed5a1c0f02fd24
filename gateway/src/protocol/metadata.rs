//! What the protocols report about models: metadata, readiness and Triton's model
//! configuration, built once here so that every protocol front reports the same thing.

use std::sync::Arc;

use switchyard_runtimes::{DataType, Device, TensorSpec};

use crate::core::{
    ModelEntry, ModelTable, ReadyVersion, SequenceSettings, VersionEntry, VersionStatus,
};
use crate::error::GatewayError;
use crate::telemetry::statistics::StatisticsSnapshot;

pub const SERVER_NAME: &str = "switchyard";
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");
pub const EXTENSIONS: &[&str] = &["binary_tensor_data", "model_configuration", "statistics"];

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
}

pub struct MeasuredMemory {
    pub device: Device,
    pub replicas: usize,
    pub bytes_per_replica: Option<u64>,
}

/// Triton's model configuration, as far as Switchyard has one.
pub struct ModelConfig {
    pub name: Arc<str>,
    pub platform: &'static str,
    pub backend: &'static str,
    pub max_batch_size: u32,
    /// With a batch axis (max_batch_size > 0) the dims leave it out, as Triton's do.
    pub inputs: Vec<ConfigTensor>,
    pub outputs: Vec<ConfigTensor>,
    pub device: Device,
    pub instance_count: u32,
    /// Set for a model served as sequences.
    pub sequence: Option<Arc<SequenceSettings>>,
}

pub struct ConfigTensor {
    pub name: String,
    pub dtype: DataType,
    pub dims: Vec<i64>,
    /// For a scalar input, Triton's way to say so: `dims` [1], reshaped to this ([]).
    pub reshape: Option<Vec<i64>>,
}

/// Triton's config cannot say "no dimensions": a scalar input is dims [1], reshaped to [].
fn client_dims(dims: &[i64]) -> (Vec<i64>, Option<Vec<i64>>) {
    if dims.is_empty() {
        (vec![1], Some(Vec::new()))
    } else {
        (dims.to_vec(), None)
    }
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
        input.dims = client_dims(&input.dims).0;
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

pub fn model_config(
    table: &ModelTable,
    model: &str,
    version: Option<&str>,
) -> Result<ModelConfig, GatewayError> {
    let model = table.model(model)?;
    let chosen = resolve(model, version)?;
    if let VersionStatus::Remote(remote) = &chosen.status {
        let (inputs, outputs) = (&remote.signature.inputs, &remote.signature.outputs);
        return Ok(ModelConfig {
            name: model.name.clone(),
            platform: chosen.platform,
            backend: chosen.backend,
            max_batch_size: remote.max_batch_size,
            inputs: config_tensors(inputs, remote.max_batch_size, true),
            outputs: config_tensors(outputs, remote.max_batch_size, false),
            device: remote.device,
            instance_count: u32::try_from(remote.peers.len()).unwrap_or(u32::MAX),
            sequence: None,
        });
    }
    let ready = chosen.ready(&model.name)?;
    let max_batch_size = ready.max_batch_size;
    let (inputs, outputs) = visible(ready);
    Ok(ModelConfig {
        name: model.name.clone(),
        platform: chosen.platform,
        backend: chosen.backend,
        max_batch_size,
        inputs: config_tensors(&inputs, max_batch_size, true),
        outputs: config_tensors(&outputs, max_batch_size, false),
        device: ready.device,
        instance_count: u32::try_from(ready.replicas.replica_count()).unwrap_or(u32::MAX),
        sequence: ready.sequence.clone(),
    })
}

/// Tensors as Triton's config lists them: without the batch axis when the model batches, and
/// a scalar input as [1] reshaped to [].
fn config_tensors(specs: &[TensorSpec], max_batch_size: u32, inputs: bool) -> Vec<ConfigTensor> {
    let skip = usize::from(max_batch_size > 0);
    specs
        .iter()
        .map(|spec| {
            let dims = spec.dims.get(skip..).unwrap_or_default();
            let (dims, reshape) = match inputs {
                true => client_dims(dims),
                false => (dims.to_vec(), None),
            };
            ConfigTensor {
                name: spec.name.clone(),
                dtype: spec.dtype,
                dims,
                reshape,
            }
        })
        .collect()
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
            figures: ready.metrics.statistics.snapshot(),
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
