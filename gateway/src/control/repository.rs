//! The model repository on disk: `<dir>/<model>/<version>/model.onnx` (ONNX Runtime) or
//! `model.pt` (TorchScript, for libtorch), and an optional `<dir>/<model>/model.toml` with the
//! model's serving settings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard_runtimes::{DataType, Device, Signature, Tensor, TensorSpec};

use switchyard_registry::compare_labels;

use crate::config::{ByteSize, HumanDuration, ServingConfig};
use crate::control::runtimes::RUNTIME_KINDS;
use crate::control::triton;
use crate::core::{
    ControlKind, ControlSpec, Interface, Reshape, Scaling, SequenceSettings, StateSpec,
};
use crate::serving::JoinAxes;
use crate::serving::Warmup;

/// Serving settings of one model, from its `model.toml`; unset keys take the gateway defaults.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ModelToml {
    #[schema(max_length = 4096)]
    pub description: Option<String>,
    /// Largest batch along axis 0 a request may carry; 0 means the model has no batch axis.
    /// Unset: 64 when every input's first dimension is dynamic, else 0.
    #[schema(maximum = 65536)]
    pub max_batch_size: Option<u64>,
    /// `cpu` or `cuda:N`.
    #[schema(pattern = r"^(cpu|cuda:[0-9]{1,3})$")]
    pub device: Option<String>,
    /// Requests that may wait per replica; past this the gateway answers 429.
    #[schema(minimum = 1, maximum = 65536)]
    pub queue_capacity: Option<usize>,
    /// Threads ONNX Runtime (or libtorch) may use inside one operator of one call; 0: the
    /// cores shared among the replicas (see [`threads_per_replica`]).
    #[schema(maximum = 256)]
    pub intra_op_threads: Option<usize>,
    /// Worker threads, each with its own copy of the model.
    #[schema(minimum = 1, maximum = 256)]
    pub replicas: Option<usize>,
    /// How long a batch may wait for more requests, e.g. "500us".
    #[schema(pattern = r"^[0-9]{1,9}(ns|us|ms|s|m|h)$")]
    pub max_queue_delay: Option<String>,
    /// How long a worker whose queue ran dry polls it before it sleeps, e.g. "250us"; "0us"
    /// sleeps at once.
    #[schema(pattern = r"^[0-9]{1,9}(ns|us|ms|s|m|h)$")]
    pub worker_spin: Option<String>,
    /// The nice value of its replicas' worker threads, -20 (first) to 19 (last).
    #[schema(minimum = -20, maximum = 19)]
    pub nice: Option<i32>,
    /// Batch sizes sent at once when reached.
    #[schema(max_items = 1024)]
    pub preferred_batch_sizes: Option<Vec<usize>>,
    /// How long a request may take, queue included, e.g. "30s".
    #[schema(pattern = r"^[0-9]{1,9}(ns|us|ms|s|m|h)$")]
    pub timeout: Option<String>,
    /// The model's inputs, in the order the model takes them. Required for TorchScript, whose
    /// files do not describe them; checked against the model for ONNX.
    #[schema(max_items = 1024)]
    pub input: Option<Vec<TensorToml>>,
    /// The model's outputs, in the order the model returns them.
    #[schema(max_items = 1024)]
    pub output: Option<Vec<TensorToml>>,
    /// The run each replica makes before it is ready.
    pub warmup: Option<WarmupToml>,
    /// Memory one replica needs on its device, e.g. "300MiB": what it reserves until its own
    /// use is measured after warm-up. Unset: the size of its artifact file.
    #[schema(pattern = r"^[0-9]{1,12}(B|KB|KiB|MB|MiB|GB|GiB)?$")]
    pub memory: Option<String>,
    /// Devices a replica may be placed on (best fit); unset: `device` alone.
    #[schema(max_items = 1024)]
    pub devices: Option<Vec<String>>,
    /// Never evicted to make room for another version (the version the `stable` alias names
    /// never is either); default false.
    pub always_loaded: Option<bool>,
    /// Autoscaling bounds; `max_replicas` turns autoscaling on (else `replicas` is fixed).
    #[schema(minimum = 1, maximum = 256)]
    pub min_replicas: Option<u64>,
    #[schema(minimum = 1, maximum = 256)]
    pub max_replicas: Option<u64>,
    /// Requests in flight (queued or running) one replica should carry; default 4.
    #[schema(exclusive_minimum = 0, maximum = 1000000)]
    pub target_concurrency: Option<f64>,
    /// How long concurrency is averaged over, e.g. "10s".
    #[schema(pattern = r"^[0-9]{1,9}(ns|us|ms|s|m|h)$")]
    pub scale_window: Option<String>,
    /// How long more (fewer) replicas must be wanted before they are added (removed).
    #[schema(pattern = r"^[0-9]{1,9}(ns|us|ms|s|m|h)$")]
    pub scale_up_delay: Option<String>,
    #[schema(pattern = r"^[0-9]{1,9}(ns|us|ms|s|m|h)$")]
    pub scale_down_delay: Option<String>,
    /// With autoscaling: no replica at all after this long without a request, e.g. "10m"; the
    /// next request waits (at most until its deadline) for a cold start.
    #[schema(pattern = r"^[0-9]{1,9}(ns|us|ms|s|m|h)$")]
    pub scale_to_zero_after: Option<String>,
    /// Serves the model as sequences: requests with a `sequence_id` stay on one version.
    pub sequence: Option<SequenceToml>,
    /// Implicit state the gateway carries between a sequence's requests; implies `[sequence]`.
    #[schema(max_items = 1024)]
    pub state: Option<Vec<StateToml>>,
    /// The runtime of the model's versions (`onnx` or `libtorch`), as Triton's `platform` or
    /// `backend` names it. Unset: the artifact file in each version folder decides.
    #[schema(max_length = 64)]
    pub runtime: Option<String>,
    /// The artifact's file name in each version folder, instead of the runtime's default
    /// (`model.onnx`, `model.pt`): Triton's `default_model_filename`.
    #[schema(pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,254}$")]
    pub default_model_filename: Option<String>,
    /// Which version folders are served (Triton's `version_policy`). Unset: every one.
    pub version_policy: Option<VersionPolicyToml>,
    /// Free-form parameters, as Triton's `parameters` (kept and shown in the model's config;
    /// `intra_op_thread_count` sets `intra_op_threads`, the others have no effect, as in
    /// Triton's ONNX Runtime backend).
    pub parameters: Option<BTreeMap<String, String>>,
}

/// `version_policy`: `{ latest = 2 }`, `{ all = true }` or `{ specific = ["1", "3"] }`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum VersionPolicyToml {
    /// The highest N version labels.
    Latest(u32),
    All(bool),
    /// These labels only.
    Specific(Vec<String>),
}

impl VersionPolicyToml {
    /// Whether a version label is served, among `labels` (sorted, lowest first).
    pub fn serves(&self, label: &str, labels: &[&str]) -> bool {
        match self {
            VersionPolicyToml::All(_) => true,
            VersionPolicyToml::Specific(chosen) => chosen.iter().any(|c| c == label),
            VersionPolicyToml::Latest(count) => labels
                .iter()
                .rev()
                .take(*count as usize)
                .any(|latest| *latest == label),
        }
    }
}

/// `[sequence]`: how a model's sequences are served.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SequenceToml {
    /// Open sequences per replica; default 64.
    #[schema(minimum = 1, maximum = 4096)]
    pub max_sequences: Option<usize>,
    /// A sequence without a request for this long is released, e.g. "30s"; default 60s.
    #[schema(pattern = r"^[0-9]{1,9}(ns|us|ms|s|m|h)$")]
    pub idle_timeout: Option<String>,
    /// Most sequences' calls joined into one model call; default `max_sequences`; 1 runs each
    /// call alone.
    #[schema(minimum = 1, maximum = 4096)]
    pub max_batch: Option<usize>,
    /// How long a call may wait for other open sequences' calls to join it, e.g. "1ms"; it
    /// never waits when its sequence is the only one open. Default 0: join what is queued.
    #[schema(pattern = r"^[0-9]{1,9}(ns|us|ms|s|m|h)$")]
    pub max_queue_delay: Option<String>,
    /// Triton's scheduling strategy: `direct` (each sequence holds a slot of a replica; the
    /// default) or `oldest` (calls of the oldest sequences joined first); both join calls as
    /// `axes`, `max_batch` and `max_queue_delay` say, and differ in nothing else here.
    #[schema(pattern = r"^(direct|oldest)$")]
    pub strategy: Option<String>,
    /// Control inputs the gateway feeds on every request of a sequence (Triton's
    /// `control_input`), e.g. `{ input = "START", kind = "start", datatype = "INT32",
    /// false_true = [0, 1] }`.
    #[schema(max_items = 1024)]
    pub control: Vec<ControlToml>,
    /// The axis along which concurrent sequences' data inputs and outputs join, by tensor
    /// name, e.g. `{ input = 0, output = 0 }`; inputs not named here or in `[[state]]` (a
    /// sampling rate) must be equal in the calls joined. Unset: nothing joins.
    pub axes: BTreeMap<String, usize>,
}

/// One control input of a sequence model: `kind` is `start`, `end`, `ready` (1 on every
/// request the gateway runs) or `corrid` (the sequence's id, in `datatype`: an integer type or
/// BYTES); the flags take `false_true` in `datatype` (INT32, FP32 or BOOL).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ControlToml {
    pub input: String,
    #[schema(pattern = r"^(start|end|ready|corrid)$")]
    pub kind: String,
    pub datatype: String,
    /// The values for false and true; default `[0, 1]`. Not for `corrid`.
    #[schema(value_type = Option<Vec<f64>>, min_items = 2, max_items = 2)]
    pub false_true: Option<[f64; 2]>,
}

/// `[[state]]`: one implicit state, e.g. `{ input = "state", output = "stateN",
/// datatype = "FP32", dims = [2, 1, 128], axis = 1 }`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StateToml {
    pub input: String,
    pub output: String,
    pub datatype: String,
    /// One sequence's state, every dimension fixed.
    #[schema(max_items = 64)]
    pub dims: Vec<usize>,
    /// The axis along which the states of sequences joined into one call are stacked.
    #[serde(default)]
    pub axis: usize,
    /// Every element's value when a sequence starts; default 0.
    #[serde(default)]
    pub initial: f64,
}

/// A worker spinning longer than this would hold a core for nothing: a gap that long is no
/// burst, and a wake-up costs a few percent of it.
const MAX_WORKER_SPIN: Duration = Duration::from_millis(10);

/// The most elements one state may hold.
const MAX_STATE_ELEMENTS: usize = 1 << 22;
/// The most open sequences per replica.
const MAX_SEQUENCES_PER_REPLICA: usize = 4096;

/// One declared input or output: `{ name = "x", datatype = "FP32", dims = [-1, 64] }`, where
/// `-1` is a dimension of any size (the batch axis among them).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TensorToml {
    #[schema(max_length = 256)]
    pub name: String,
    pub datatype: String,
    /// The shape clients see, the batch axis included.
    #[schema(max_items = 64)]
    pub dims: Vec<i64>,
    /// The shape the model takes when it differs from `dims` (Triton's `reshape`), the batch
    /// axis included: requests are reshaped on the way in, answers on the way out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_items = 64)]
    pub reshape: Option<Vec<i64>>,
    /// An input clients may leave out (Triton's `optional`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
    /// An image input's layout, `NCHW` or `NHWC` (Triton's `format`), told to clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// An output's class labels, one per line, in a file of the model's folder (Triton's
    /// `label_filename`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_filename: Option<String>,
}

/// Before a replica is ready it runs once on a synthetic input whose elements are all 1 (never
/// 0, which can take shortcuts that leave lazy initialisation for the first real request).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct WarmupToml {
    /// `false` skips the run.
    pub enabled: Option<bool>,
    /// Shapes for inputs with dynamic dimensions, e.g. `{ input = [1, 512] }`; by default
    /// every `-1` becomes 1.
    pub dims: BTreeMap<String, Vec<usize>>,
    /// The value an input is filled with instead of 1, e.g. `{ sr = 16000 }`.
    pub fill: BTreeMap<String, f64>,
    /// Inputs filled with random values instead (Triton's `random_data`).
    pub random: Vec<String>,
}

/// The settings a version is served with, after defaults are applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSettings {
    pub description: String,
    pub max_batch_size: Option<u32>,
    pub device: Device,
    pub queue_capacity: usize,
    /// The threads a call may use: the count, or with `measure_threads` the most that the
    /// measurement at load may choose (see `serving::threads`).
    pub intra_op_threads: usize,
    pub measure_threads: bool,
    pub replicas: usize,
    pub max_queue_delay: Duration,
    pub worker_spin: Duration,
    pub nice: i32,
    pub preferred_batch_sizes: Vec<usize>,
    pub timeout: Duration,
    pub declared: Option<Signature>,
    pub warmup: Warmup,
    /// Declared memory per replica, if any.
    pub memory: Option<u64>,
    /// Where replicas may go, in preference order (never empty).
    pub devices: Vec<Device>,
    /// Never evicted to make room for another version.
    pub always_loaded: bool,
    pub scaling: Option<Scaling>,
    pub sequence: Option<Arc<SequenceSettings>>,
    /// Optional inputs and reshaped tensors.
    pub interface: Interface,
    /// What the settings were resolved from, for the configuration the version reports.
    pub source: ModelToml,
}

impl ModelSettings {
    /// What a replica reserves until it is measured: the declared memory, else at least the
    /// size of its weights, plus the state of the sequences it can hold open.
    pub fn reserve_bytes(&self, artifact_bytes: u64) -> u64 {
        self.memory.unwrap_or(artifact_bytes) + self.slot_bytes()
    }

    /// The state its sequences hold when every slot of a replica is open (0 for a model not
    /// served as sequences).
    pub fn slot_bytes(&self) -> u64 {
        self.sequence
            .as_ref()
            .map_or(0, |sequence| sequence.slot_bytes())
    }

    /// The replicas a version starts with: `replicas`, within the autoscaler's bounds.
    pub fn starting_replicas(&self) -> u32 {
        let replicas = u32::try_from(self.replicas).unwrap_or(u32::MAX);
        match &self.scaling {
            Some(scaling) => replicas.clamp(scaling.min_replicas, scaling.max_replicas),
            None => replicas,
        }
    }

    pub fn resolve(toml: ModelToml, defaults: &ServingConfig) -> Result<ModelSettings, String> {
        check_bounds(&toml)?;
        let source = toml.clone();
        let device = match toml.device {
            None => Device::Cpu,
            Some(text) => text.parse().map_err(|e| format!("{e}"))?,
        };
        let queue_capacity = toml.queue_capacity.unwrap_or(defaults.queue_capacity);
        if queue_capacity == 0 {
            return Err("queue_capacity must be at least 1".into());
        }
        let max_queue_delay = duration(toml.max_queue_delay, defaults.max_queue_delay.0)?;
        if max_queue_delay > Duration::from_secs(10) {
            return Err("max_queue_delay may be at most 10s".into());
        }
        let worker_spin = duration(toml.worker_spin, defaults.worker_spin.0)?;
        if worker_spin > MAX_WORKER_SPIN {
            return Err(format!(
                "worker_spin may be at most {}",
                humantime::format_duration(MAX_WORKER_SPIN)
            ));
        }
        let nice = toml.nice.unwrap_or(defaults.nice);
        if !(-20..=19).contains(&nice) {
            return Err(format!("nice must be between -20 and 19, not {nice}"));
        }
        let timeout = duration(toml.timeout, defaults.timeout.0)?;
        if timeout > Duration::from_secs(24 * 3600) || timeout.is_zero() {
            return Err("timeout must be more than 0 and at most 24h".into());
        }
        let replicas = toml.replicas.unwrap_or(defaults.replicas);
        if replicas == 0 {
            return Err("replicas must be at least 1".into());
        }
        let sequence = sequence_settings(toml.sequence, toml.state.unwrap_or_default())?;
        let (declared, interface) = match (toml.input, toml.output) {
            (None, None) => (None, Interface::default()),
            (Some(inputs), Some(outputs)) => {
                let interface = interface(&inputs, &outputs)?;
                let mut inputs = declared_specs(inputs, "input")?;
                // The model takes the inputs the gateway feeds besides those clients send.
                let fed = sequence.iter().flat_map(|sequence| {
                    let controls = sequence.controls.iter().map(|control| TensorSpec {
                        name: control.input.clone(),
                        dtype: control.dtype,
                        dims: control_dims(toml.max_batch_size),
                    });
                    // Joined sequences' states stack along their axis: any size there.
                    let states = sequence.states.iter().map(|state| TensorSpec {
                        name: state.input.clone(),
                        dtype: state.initial.dtype(),
                        dims: state_dims(state, sequence.join.input_axis(&state.input)),
                    });
                    controls.chain(states).collect::<Vec<_>>()
                });
                for spec in fed {
                    if !inputs.iter().any(|input| input.name == spec.name) {
                        inputs.push(spec);
                    }
                }
                let mut outputs = declared_specs(outputs, "output")?;
                if let Some(sequence) = &sequence {
                    for state in &sequence.states {
                        if !outputs.iter().any(|output| output.name == state.output) {
                            outputs.push(TensorSpec {
                                name: state.output.clone(),
                                dtype: state.initial.dtype(),
                                dims: state_dims(state, sequence.join.output_axis(&state.output)),
                            });
                        }
                    }
                }
                (Some(Signature { inputs, outputs }), interface)
            }
            _ => return Err("declare both [[input]] and [[output]], or neither".into()),
        };
        let warmup = toml.warmup.unwrap_or_default();
        let memory = toml
            .memory
            .map(|text| ByteSize::parse(&text).map(|size| size.0))
            .transpose()
            .map_err(|e| format!("memory: {e}"))?;
        let devices = match toml.devices {
            None => vec![device],
            Some(list) if list.is_empty() => return Err("devices may not be empty".into()),
            Some(list) => list
                .iter()
                .map(|text| text.parse().map_err(|e| format!("devices: {e}")))
                .collect::<Result<Vec<Device>, String>>()?,
        };
        let scaling = match toml.max_replicas {
            None if toml.scale_to_zero_after.is_some() => {
                return Err("scale_to_zero_after needs max_replicas (autoscaling)".into());
            }
            None => None,
            Some(max_replicas) => {
                // Both within MAX_REPLICAS (check_bounds).
                let max_replicas = max_replicas as u32;
                let min_replicas = toml.min_replicas.map_or(1, |n| n as u32);
                if min_replicas == 0 || max_replicas < min_replicas {
                    return Err(format!(
                        "replicas must satisfy 1 <= min_replicas ({min_replicas}) <= max_replicas ({max_replicas})"
                    ));
                }
                let target_concurrency = toml.target_concurrency.unwrap_or(4.0);
                if !(target_concurrency.is_finite() && target_concurrency > 0.0) {
                    return Err("target_concurrency must be a number above 0".into());
                }
                let seconds = Duration::from_secs;
                Some(Scaling {
                    min_replicas,
                    max_replicas,
                    target_concurrency,
                    window: duration(toml.scale_window, seconds(10))?,
                    up_delay: duration(toml.scale_up_delay, seconds(5))?,
                    down_delay: duration(toml.scale_down_delay, seconds(30))?,
                    to_zero_after: toml
                        .scale_to_zero_after
                        .map(|text| HumanDuration::parse(&text).map(|d| d.0))
                        .transpose()?,
                })
            }
        };
        let intra_op_threads = match toml
            .parameters
            .as_ref()
            .and_then(|p| p.get("intra_op_thread_count"))
        {
            // Triton's 0 is ONNX Runtime's own choice, the cores: ours is the same rule.
            Some(text) => text
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|&threads| threads <= 256)
                .ok_or_else(|| {
                    format!("parameters: intra_op_thread_count must be 0 to 256, not '{text}'")
                })?,
            None => toml.intra_op_threads.unwrap_or(defaults.intra_op_threads),
        };
        // Left to the gateway: at most the cores shared among the replicas, measured at load.
        let measure_threads = intra_op_threads == 0;
        let intra_op_threads = match intra_op_threads {
            0 => threads_per_replica(
                available_cores(),
                scaling.as_ref().map_or(replicas as u32, |s| s.max_replicas),
            ),
            threads => threads,
        };
        if let Some(name) = &toml.default_model_filename
            && !is_valid_name(name)
        {
            return Err(format!(
                "default_model_filename '{name}' must be a file name in the version folder"
            ));
        }
        let warmup_configured =
            !warmup.dims.is_empty() || !warmup.fill.is_empty() || !warmup.random.is_empty();
        Ok(ModelSettings {
            description: toml.description.unwrap_or_default(),
            // Within MAX_BATCH_SIZE (check_bounds).
            max_batch_size: toml.max_batch_size.map(|size| size as u32),
            device,
            queue_capacity,
            intra_op_threads,
            measure_threads,
            replicas,
            max_queue_delay,
            worker_spin,
            nice,
            preferred_batch_sizes: toml.preferred_batch_sizes.unwrap_or_default(),
            timeout,
            declared,
            warmup: Warmup {
                enabled: warmup.enabled.unwrap_or(true),
                configured: warmup_configured,
                dims: warmup.dims,
                fill: warmup.fill,
                random: warmup.random,
            },
            memory,
            devices,
            always_loaded: toml.always_loaded.unwrap_or(false),
            scaling,
            sequence,
            interface,
            source,
        })
    }
}

/// A state's dims as the model sees them: one sequence's, any size along the axis it joins on.
fn state_dims(state: &StateSpec, axis: Option<usize>) -> Vec<i64> {
    state
        .initial
        .shape()
        .iter()
        .enumerate()
        .map(|(index, &dim)| if Some(index) == axis { -1 } else { dim as i64 })
        .collect()
}

/// The cores this process may run on (its affinity and cgroup quota), for the default thread
/// count.
fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// The default (`intra_op_threads = 0`): the cores shared among the replicas a version may
/// run at once (`max_replicas` when it autoscales), at least one thread each, so that one
/// version on an idle machine uses every core, as Triton's default (ONNX Runtime's own pool,
/// sized to the cores) does, and its replicas at their most do not oversubscribe them.
pub fn threads_per_replica(cores: usize, replicas: u32) -> usize {
    (cores / (replicas.max(1) as usize)).max(1)
}

/// The most replicas of one version, and the bounds of autoscaling.
pub const MAX_REPLICAS: u64 = 256;
/// The largest batch a version may take along its batch axis.
pub const MAX_BATCH_SIZE: u64 = 1 << 16;
/// Requests waiting per replica: each slot of a replica's queue is allocated up front.
pub const MAX_QUEUE_CAPACITY: u64 = 1 << 16;
/// Threads one replica's runtime may use inside an operator.
pub const MAX_INTRA_OP_THREADS: u64 = 256;
/// Entries of the lists and tables a version's settings hold (devices, preferred batch sizes,
/// parameters, states, declared tensors, sequence axes, warm-up inputs).
pub const MAX_LIST_ENTRIES: usize = 1024;
/// Dimensions of a declared tensor or a warm-up shape.
pub const MAX_RANK: usize = 64;
/// Elements of one warm-up input: it is allocated and run before the version serves.
pub const MAX_WARMUP_ELEMENTS: u64 = 1 << 24;
/// A parameter's key or value.
pub const MAX_PARAMETER_BYTES: usize = 4096;

/// Every count and list a version's settings hold, within its bound: checked where the settings
/// enter (the management API, model.toml, config.pbtxt), so that nothing later loops or
/// allocates in proportion to a number a client chose. An error names the field and its bound.
fn check_bounds(toml: &ModelToml) -> Result<(), String> {
    fn within(field: &str, value: Option<u64>, low: u64, high: u64) -> Result<(), String> {
        match value {
            Some(value) if !(low..=high).contains(&value) => {
                Err(format!("{field} must be {low} to {high}, not {value}"))
            }
            _ => Ok(()),
        }
    }
    fn entries(field: &str, count: usize) -> Result<(), String> {
        if count > MAX_LIST_ENTRIES {
            return Err(format!(
                "{field} may hold at most {MAX_LIST_ENTRIES} entries, not {count}"
            ));
        }
        Ok(())
    }
    if toml
        .description
        .as_ref()
        .is_some_and(|text| text.len() > MAX_PARAMETER_BYTES)
    {
        return Err(format!(
            "description may be at most {MAX_PARAMETER_BYTES} bytes"
        ));
    }
    let wide = |value: Option<usize>| value.map(|n| n as u64);
    within("replicas", wide(toml.replicas), 1, MAX_REPLICAS)?;
    within("min_replicas", toml.min_replicas, 1, MAX_REPLICAS)?;
    within("max_replicas", toml.max_replicas, 1, MAX_REPLICAS)?;
    within("max_batch_size", toml.max_batch_size, 0, MAX_BATCH_SIZE)?;
    within(
        "queue_capacity",
        wide(toml.queue_capacity),
        1,
        MAX_QUEUE_CAPACITY,
    )?;
    within(
        "intra_op_threads",
        wide(toml.intra_op_threads),
        0,
        MAX_INTRA_OP_THREADS,
    )?;
    if let Some(target) = toml.target_concurrency
        && !(target.is_finite() && target > 0.0 && target <= 1e6)
    {
        return Err(format!(
            "target_concurrency must be above 0 and at most 1000000, not {target}"
        ));
    }
    if let Some(sizes) = &toml.preferred_batch_sizes {
        entries("preferred_batch_sizes", sizes.len())?;
        for &size in sizes {
            within(
                "preferred_batch_sizes",
                Some(size as u64),
                1,
                MAX_BATCH_SIZE,
            )?;
        }
    }
    entries("devices", toml.devices.as_ref().map_or(0, Vec::len))?;
    if let Some(parameters) = &toml.parameters {
        entries("parameters", parameters.len())?;
        if let Some((key, _)) = parameters
            .iter()
            .find(|(k, v)| k.len() > MAX_PARAMETER_BYTES || v.len() > MAX_PARAMETER_BYTES)
        {
            return Err(format!(
                "parameters: '{}' or its value is over {MAX_PARAMETER_BYTES} bytes",
                crate::error::quoted(key)
            ));
        }
    }
    for (field, tensors) in [("input", &toml.input), ("output", &toml.output)] {
        let tensors = tensors.as_deref().unwrap_or_default();
        entries(field, tensors.len())?;
        for tensor in tensors {
            let ranks = [
                tensor.dims.len(),
                tensor.reshape.as_ref().map_or(0, Vec::len),
            ];
            if ranks.iter().any(|&rank| rank > MAX_RANK) {
                return Err(format!(
                    "{field} '{}': at most {MAX_RANK} dimensions",
                    tensor.name
                ));
            }
        }
    }
    entries("state", toml.state.as_ref().map_or(0, Vec::len))?;
    if let Some(sequence) = &toml.sequence {
        within(
            "[sequence] max_sequences",
            wide(sequence.max_sequences),
            1,
            MAX_SEQUENCES_PER_REPLICA as u64,
        )?;
        within(
            "[sequence] max_batch",
            wide(sequence.max_batch),
            1,
            MAX_SEQUENCES_PER_REPLICA as u64,
        )?;
        entries("[sequence] axes", sequence.axes.len())?;
        entries("[sequence] control", sequence.control.len())?;
    }
    if let Some(warmup) = &toml.warmup {
        entries("[warmup] dims", warmup.dims.len())?;
        entries("[warmup] fill", warmup.fill.len())?;
        entries("[warmup] random", warmup.random.len())?;
        for (input, dims) in &warmup.dims {
            let elements = dims
                .iter()
                .try_fold(1u64, |count, &dim| count.checked_mul(dim as u64));
            if dims.len() > MAX_RANK || elements.is_none_or(|n| n > MAX_WARMUP_ELEMENTS) {
                return Err(format!(
                    "[warmup] dims of '{}': at most {MAX_RANK} dimensions and \
                     {MAX_WARMUP_ELEMENTS} elements",
                    crate::error::quoted(input)
                ));
            }
        }
    }
    if let Some(VersionPolicyToml::Specific(labels)) = &toml.version_policy {
        entries("version_policy.specific", labels.len())?;
    }
    Ok(())
}

/// A control input's dims: one value per batch row when the model batches.
fn control_dims(max_batch_size: Option<u64>) -> Vec<i64> {
    match max_batch_size {
        Some(0) => vec![1],
        _ => vec![-1, 1],
    }
}

/// Optional inputs and reshapes of the declared tensors, checked: a reshape keeps the batch
/// axis and the number of elements of a row.
fn interface(inputs: &[TensorToml], outputs: &[TensorToml]) -> Result<Interface, String> {
    let mut interface = Interface::default();
    for tensor in inputs.iter().chain(outputs) {
        let Some(model) = &tensor.reshape else {
            continue;
        };
        let client = &tensor.dims;
        let batched = client.first() == Some(&-1) && model.first() == Some(&-1);
        let rest = |dims: &[i64]| dims[usize::from(batched)..].to_vec();
        let (client_rest, model_rest) = (rest(client), rest(model));
        let elements = |dims: &[i64]| -> Option<i64> {
            dims.iter()
                .try_fold(1i64, |count, &d| (d >= 0).then(|| count.checked_mul(d))?)
        };
        match (elements(&client_rest), elements(&model_rest)) {
            (Some(a), Some(b)) if a == b => {}
            _ => {
                return Err(format!(
                    "'{}': reshape {model:?} must hold the elements of dims {client:?}, with fixed \
                     dimensions besides the batch axis",
                    tensor.name
                ));
            }
        }
        interface.reshapes.push(Reshape {
            name: tensor.name.clone(),
            client: client.clone(),
            model: model.clone(),
        });
    }
    interface.optional = inputs
        .iter()
        .filter(|input| input.optional)
        .map(|input| input.name.clone())
        .collect();
    for output in outputs {
        if output.optional {
            return Err(format!(
                "output '{}': only inputs can be optional",
                output.name
            ));
        }
        if output.format.is_some() {
            return Err(format!(
                "output '{}': only inputs have a format",
                output.name
            ));
        }
    }
    for input in inputs {
        if input.label_filename.is_some() {
            return Err(format!("input '{}': only outputs have labels", input.name));
        }
        if let Some(format) = &input.format
            && !matches!(format.as_str(), "NCHW" | "NHWC")
        {
            return Err(format!(
                "input '{}': format must be NCHW or NHWC, not '{format}'",
                input.name
            ));
        }
    }
    Ok(interface)
}

/// A duration from model.toml ("500us", "30s"), or `default` when unset.
fn duration(text: Option<String>, default: Duration) -> Result<Duration, String> {
    match text {
        None => Ok(default),
        Some(text) => HumanDuration::parse(&text).map(|d| d.0),
    }
}

fn sequence_settings(
    sequence: Option<SequenceToml>,
    states: Vec<StateToml>,
) -> Result<Option<Arc<SequenceSettings>>, String> {
    if sequence.is_none() && states.is_empty() {
        return Ok(None);
    }
    let sequence = sequence.unwrap_or_default();
    let max_per_replica = sequence.max_sequences.unwrap_or(64);
    if !(1..=MAX_SEQUENCES_PER_REPLICA).contains(&max_per_replica) {
        return Err(format!(
            "[sequence] max_sequences must be 1 to {MAX_SEQUENCES_PER_REPLICA}"
        ));
    }
    let idle_timeout = duration(sequence.idle_timeout, Duration::from_secs(60))?;
    if idle_timeout.is_zero() || idle_timeout > Duration::from_secs(24 * 3600) {
        return Err("[sequence] idle_timeout must be more than 0 and at most 24h".into());
    }
    let max_calls = sequence.max_batch.unwrap_or(max_per_replica);
    if max_calls == 0 || max_calls > max_per_replica {
        return Err(format!(
            "[sequence] max_batch must be 1 to max_sequences ({max_per_replica})"
        ));
    }
    let max_delay = duration(sequence.max_queue_delay, Duration::ZERO)?;
    if max_delay > Duration::from_secs(1) {
        return Err("[sequence] max_queue_delay may be at most 1s".into());
    }
    if let Some(strategy) = &sequence.strategy
        && !matches!(strategy.as_str(), "direct" | "oldest")
    {
        return Err(format!(
            "[sequence] strategy must be 'direct' or 'oldest', not '{strategy}'"
        ));
    }
    let mut inputs = Vec::new();
    let mut outputs = Vec::new();
    for (name, axis) in &sequence.axes {
        inputs.push((name.clone(), *axis));
        outputs.push((name.clone(), *axis));
    }
    let controls = sequence
        .control
        .iter()
        .map(control_spec)
        .collect::<Result<Vec<_>, _>>()?;
    for (index, control) in controls.iter().enumerate() {
        if controls[..index]
            .iter()
            .any(|other| other.input == control.input || other.kind == control.kind)
        {
            return Err(format!(
                "[sequence] control '{}': each control input and each kind may appear once",
                control.input
            ));
        }
        if !sequence.axes.is_empty() {
            // One value per call, joined along the batch axis as the data inputs are.
            inputs.push((control.input.clone(), 0));
        }
    }
    let mut specs = Vec::with_capacity(states.len());
    for state in states {
        let dtype: DataType = state
            .datatype
            .parse()
            .map_err(|e| format!("[[state]] '{}': {e}", state.input))?;
        if dtype.element_size().is_none() {
            return Err(format!(
                "[[state]] '{}': a state needs a fixed-size datatype, not {dtype}",
                state.input
            ));
        }
        state
            .dims
            .iter()
            .try_fold(1usize, |count, &dim| count.checked_mul(dim))
            .filter(|&count| count > 0 && count <= MAX_STATE_ELEMENTS)
            .ok_or_else(|| {
                format!(
                    "[[state]] '{}': dims {:?} must all be positive and hold at most {MAX_STATE_ELEMENTS} elements",
                    state.input, state.dims
                )
            })?;
        if state.axis >= state.dims.len() {
            return Err(format!(
                "[[state]] '{}': axis {} is past its {} dims",
                state.input,
                state.axis,
                state.dims.len()
            ));
        }
        if state.input == state.output
            || specs
                .iter()
                .any(|s: &StateSpec| s.input == state.input || s.output == state.output)
        {
            return Err(format!(
                "[[state]] '{}' is declared twice, shares its output, or feeds itself",
                state.input
            ));
        }
        let initial = Tensor::filled(dtype, state.dims.clone(), state.initial)
            .map_err(|e| format!("[[state]] '{}': {e}", state.input))?;
        inputs.push((state.input.clone(), state.axis));
        outputs.push((state.output.clone(), state.axis));
        specs.push(StateSpec {
            input: state.input,
            output: state.output,
            initial,
        });
    }
    if let Some(clash) = controls
        .iter()
        .find(|control| specs.iter().any(|state| state.input == control.input))
    {
        return Err(format!(
            "[sequence] control '{}' is also a state input",
            clash.input
        ));
    }
    Ok(Some(Arc::new(SequenceSettings {
        max_per_replica,
        idle_timeout,
        states: specs,
        controls,
        join: Arc::new(JoinAxes {
            inputs,
            outputs,
            max_delay,
            max_calls: if sequence.axes.is_empty() {
                1
            } else {
                max_calls
            },
        }),
    })))
}

/// One `[[sequence.control]]`, checked: a flag takes INT32, FP32 or BOOL values, a correlation
/// id an integer type or BYTES.
fn control_spec(control: &ControlToml) -> Result<ControlSpec, String> {
    let error = |message: String| format!("[sequence] control '{}': {message}", control.input);
    let kind = match control.kind.as_str() {
        "start" => ControlKind::Start,
        "end" => ControlKind::End,
        "ready" => ControlKind::Ready,
        "corrid" => ControlKind::CorrelationId,
        other => {
            return Err(error(format!(
                "kind must be start, end, ready or corrid, not '{other}'"
            )));
        }
    };
    let dtype: DataType = control
        .datatype
        .parse()
        .map_err(|e| error(format!("{e}")))?;
    if control.input.is_empty() {
        return Err(error("the input needs a name".into()));
    }
    let allowed: &[DataType] = match kind {
        ControlKind::CorrelationId => &[
            DataType::Uint64,
            DataType::Int64,
            DataType::Uint32,
            DataType::Int32,
            DataType::Bytes,
        ],
        _ => &[DataType::Int32, DataType::Fp32, DataType::Bool],
    };
    if !allowed.contains(&dtype) {
        return Err(error(format!(
            "{} cannot carry it; it takes {}",
            dtype,
            allowed
                .iter()
                .map(|d| d.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let false_true = match (kind, control.false_true) {
        (ControlKind::CorrelationId, Some(_)) => {
            return Err(error("a correlation id has no false_true values".into()));
        }
        (_, Some(values)) if values.iter().any(|v| !v.is_finite()) => {
            return Err(error("false_true must be numbers".into()));
        }
        (_, Some([no, yes])) if dtype == DataType::Bool && (no > 1.0 || yes > 1.0) => {
            return Err(error("BOOL false_true values are 0 or 1".into()));
        }
        (_, values) => values.unwrap_or([0.0, 1.0]),
    };
    Ok(ControlSpec {
        input: control.input.clone(),
        kind,
        dtype,
        false_true,
    })
}

fn declared_specs(tensors: Vec<TensorToml>, role: &str) -> Result<Vec<TensorSpec>, String> {
    if tensors.is_empty() {
        return Err(format!("at least one {role} must be declared"));
    }
    let mut specs: Vec<TensorSpec> = Vec::with_capacity(tensors.len());
    for tensor in tensors {
        let dtype: DataType = tensor
            .datatype
            .parse()
            .map_err(|e| format!("{role} '{}': {e}", tensor.name))?;
        if tensor.name.is_empty() || specs.iter().any(|s| s.name == tensor.name) {
            return Err(format!(
                "{role} names must be unique and non-empty ('{}')",
                tensor.name
            ));
        }
        if tensor.dims.iter().any(|&d| d < -1) {
            return Err(format!(
                "{role} '{}': dims must be sizes or -1, got {:?}",
                tensor.name, tensor.dims
            ));
        }
        if let Some(labels) = &tensor.label_filename
            && !is_valid_name(labels)
        {
            return Err(format!(
                "{role} '{}': label_filename '{labels}' must be a file name in the model's folder",
                tensor.name
            ));
        }
        // The model takes the reshaped form; clients see `dims`.
        let dims = tensor.reshape.unwrap_or(tensor.dims);
        if dims.iter().any(|&d| d < -1) {
            return Err(format!(
                "{role} '{}': reshape must be sizes or -1, got {dims:?}",
                tensor.name
            ));
        }
        specs.push(TensorSpec {
            name: tensor.name,
            dtype,
            dims,
        });
    }
    Ok(specs)
}

/// An output's name and its class labels.
pub type OutputLabels = (String, Arc<[String]>);

/// The most bytes of one label file: labels, not a dataset.
const MAX_LABEL_FILE_BYTES: u64 = 16 << 20;

/// The class labels of the outputs that name a `label_filename`, read from the model's folder
/// (the parent of its version folders), one label per line.
pub fn output_labels(model_dir: &Path, toml: &ModelToml) -> Result<Vec<OutputLabels>, String> {
    let mut labels = Vec::new();
    for output in toml.output.iter().flatten() {
        let Some(file) = &output.label_filename else {
            continue;
        };
        let path = model_dir.join(file);
        let size = std::fs::metadata(&path)
            .map_err(|e| {
                format!(
                    "output '{}': label file {}: {e}",
                    output.name,
                    path.display()
                )
            })?
            .len();
        if size > MAX_LABEL_FILE_BYTES {
            return Err(format!(
                "output '{}': label file {} is over {MAX_LABEL_FILE_BYTES} bytes",
                output.name,
                path.display()
            ));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "output '{}': label file {}: {e}",
                output.name,
                path.display()
            )
        })?;
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        labels.push((output.name.clone(), Arc::from(lines)));
    }
    Ok(labels)
}

/// A model found in the repository.
#[derive(Debug, Clone)]
pub struct ModelEntry {
    pub name: String,
    /// The model's `model.toml`, or why it could not be used (then no version can load).
    pub toml: Result<ModelToml, String>,
    pub versions: Vec<VersionEntry>,
}

#[derive(Debug, Clone)]
pub struct VersionEntry {
    pub label: String,
    pub artifact: PathBuf,
    /// The runtime that loads the artifact (`onnx` or `libtorch`).
    pub runtime: &'static str,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read the model repository {}: {source}", path.display())]
pub struct RepositoryError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// A name a model or version folder may have.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Lists the models and versions under `dir`. A model's settings come from its `model.toml`,
/// its `config.pbtxt` (Triton's), or both (`control::triton::combine` says how); a version is a
/// folder holding one artifact (see [`RUNTIME_KINDS`], or the file `default_model_filename`
/// names), among those the version policy serves; anything else is skipped with a warning. A
/// model whose settings cannot be used still lists its version folders, so that each is
/// registered failed with the reason.
pub fn scan(dir: &Path, defaults: &ServingConfig) -> Result<Vec<ModelEntry>, RepositoryError> {
    let read_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RepositoryError { path, source }
    };
    let mut models = Vec::new();
    for model_dir in sorted_subdirs(dir).map_err(read_error(dir))? {
        let Some(name) = file_name(&model_dir) else {
            continue;
        };
        if !is_valid_name(&name) {
            tracing::warn!(folder = %model_dir.display(), "skipping: model names may hold only letters, digits, '_', '-' and '.'");
            continue;
        }
        let toml = resolved_settings(&model_dir, &name, defaults);
        match scan_model(&model_dir, name, toml).map_err(read_error(&model_dir))? {
            Some(entry) => models.push(entry),
            None => continue,
        }
    }
    Ok(models)
}

/// A model folder's settings, checked: its `config.pbtxt` and its `model.toml`, combined, or
/// why they cannot be used.
pub fn resolved_settings(
    model_dir: &Path,
    name: &str,
    defaults: &ServingConfig,
) -> Result<ModelToml, String> {
    model_settings(model_dir, name).and_then(|toml| checked(toml, model_dir, defaults))
}

/// Settings that resolve, or why not (named by the model's folder).
pub fn checked(
    toml: ModelToml,
    model_dir: &Path,
    defaults: &ServingConfig,
) -> Result<ModelToml, String> {
    ModelSettings::resolve(toml.clone(), defaults)
        .map(|_| toml)
        .map_err(|e| format!("invalid settings in {}: {e}", model_dir.display()))
}

/// One model folder's versions, as `toml` (its settings, or why they cannot be used) selects
/// them; `None` when it holds no version folder.
pub fn scan_model(
    model_dir: &Path,
    name: String,
    toml: Result<ModelToml, String>,
) -> std::io::Result<Option<ModelEntry>> {
    let mut versions = Vec::new();
    for version_dir in sorted_subdirs(model_dir)? {
        let Some(label) = file_name(&version_dir) else {
            continue;
        };
        if !is_valid_name(&label) {
            tracing::warn!(folder = %version_dir.display(), "skipping: version labels may hold only letters, digits, '_', '-' and '.'");
            continue;
        }
        match version_artifact(&version_dir, toml.as_ref().ok()) {
            Ok(Some((runtime, artifact))) => versions.push(VersionEntry {
                label,
                artifact,
                runtime,
            }),
            Ok(None) => {}
            Err(warning) => {
                tracing::warn!(folder = %version_dir.display(), "skipping: {warning}");
            }
        }
    }
    versions.sort_by(|a, b| compare_labels(&a.label, &b.label));
    if let Ok(ModelToml {
        version_policy: Some(policy),
        ..
    }) = &toml
    {
        let labels: Vec<String> = versions.iter().map(|v| v.label.clone()).collect();
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        versions.retain(|version| {
            let served = policy.serves(&version.label, &labels);
            if !served {
                tracing::info!(model = %name, version = %version.label, "not served: the version policy leaves it out");
            }
            served
        });
    }
    if versions.is_empty() {
        tracing::warn!(model = %name, "skipping: the model has no version folders");
        return Ok(None);
    }
    Ok(Some(ModelEntry {
        name,
        toml,
        versions,
    }))
}

/// A model folder's settings: its `config.pbtxt` and its `model.toml`, combined, or why they
/// cannot be used.
pub fn model_settings(model_dir: &Path, name: &str) -> Result<ModelToml, String> {
    let toml_path = model_dir.join("model.toml");
    let from_toml =
        read_model_toml(&toml_path).map_err(|e| format!("invalid {}: {e}", toml_path.display()))?;
    match (triton::read_config(model_dir, name)?, from_toml) {
        (Some(from_config), Some(from_toml)) => triton::combine(from_config, from_toml)
            .map_err(|e| format!("{} and model.toml do not combine: {e}", triton::CONFIG_FILE)),
        (Some(from_config), None) => Ok(from_config),
        (None, from_toml) => Ok(from_toml.unwrap_or_default()),
    }
}

/// The artifact a version folder holds and the runtime that loads it; `Ok(None)` for a folder
/// that is not a version; `Err` (a warning) for one that cannot be used. With no usable settings
/// (`toml` is `None`), a folder with any file is a version, registered to fail with the reason.
fn version_artifact(
    version_dir: &Path,
    toml: Option<&ModelToml>,
) -> Result<Option<(&'static str, PathBuf)>, String> {
    let Some(toml) = toml else {
        let any_file = std::fs::read_dir(version_dir)
            .map_err(|e| e.to_string())?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .find(|path| path.is_file());
        return Ok(any_file.map(|file| (UNSERVABLE_RUNTIME, file)));
    };
    let kinds: Vec<_> = RUNTIME_KINDS
        .iter()
        .filter(|kind| toml.runtime.as_deref().is_none_or(|name| name == kind.name))
        .collect();
    let artifacts: Vec<(&'static str, PathBuf)> = match &toml.default_model_filename {
        Some(file) => {
            let path = version_dir.join(file);
            let runtime = match kinds.as_slice() {
                [kind] => kind.name,
                _ => kinds
                    .iter()
                    .find(|kind| {
                        Path::new(kind.artifact_file).extension() == Path::new(file).extension()
                    })
                    .map(|kind| kind.name)
                    .ok_or_else(|| {
                        format!(
                            "default_model_filename '{file}' names no runtime; set the platform"
                        )
                    })?,
            };
            path.is_file()
                .then_some((runtime, path))
                .into_iter()
                .collect()
        }
        None => kinds
            .iter()
            .map(|kind| (kind.name, version_dir.join(kind.artifact_file)))
            .filter(|(_, path)| path.is_file())
            .collect(),
    };
    match artifacts.as_slice() {
        [(runtime, artifact)] => Ok(Some((runtime, artifact.clone()))),
        [] => Err(format!(
            "no {} inside",
            kinds
                .iter()
                .map(|kind| toml
                    .default_model_filename
                    .as_deref()
                    .unwrap_or(kind.artifact_file))
                .collect::<Vec<_>>()
                .join(" or ")
        )),
        _ => Err("both model.onnx and model.pt inside; a version has one artifact".into()),
    }
}

/// The runtime a version is registered with when its model's settings cannot be used: it never
/// loads, and the registry keeps why.
pub const UNSERVABLE_RUNTIME: &str = "unservable";

fn read_model_toml(path: &Path) -> Result<Option<ModelToml>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).map(Some).map_err(|e| e.to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

pub fn sorted_subdirs(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            dirs.push(path);
        }
    }
    dirs.sort();
    Ok(dirs)
}

pub fn file_name(path: &Path) -> Option<String> {
    path.file_name()
        .and_then(|name| name.to_str())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering;

    #[test]
    fn by_default_a_version_s_replicas_share_the_cores() {
        assert_eq!(threads_per_replica(2, 1), 2);
        assert_eq!(threads_per_replica(8, 3), 2);
        assert_eq!(threads_per_replica(2, 4), 1, "never fewer than one thread");
        let defaults = ServingConfig::default();
        let resolve = |toml: &str| {
            ModelSettings::resolve(toml::from_str(toml).unwrap(), &defaults)
                .unwrap()
                .intra_op_threads
        };
        let cores = available_cores();
        assert_eq!(resolve(""), cores);
        assert_eq!(resolve("replicas = 2"), threads_per_replica(cores, 2));
        assert_eq!(
            resolve("replicas = 1\nmax_replicas = 4"),
            threads_per_replica(cores, 4),
            "an autoscaled version divides by its most replicas"
        );
        assert_eq!(resolve("intra_op_threads = 3"), 3, "an override stays");
        assert_eq!(
            resolve("[parameters]\nintra_op_thread_count = \"0\""),
            cores
        );
    }

    #[test]
    fn labels_sort_numerically() {
        assert_eq!(compare_labels("2", "10"), Ordering::Less);
        assert_eq!(compare_labels("10", "9"), Ordering::Greater);
        assert_eq!(compare_labels("3", "canary"), Ordering::Less);
        assert_eq!(compare_labels("b", "a"), Ordering::Greater);
    }

    #[test]
    fn scan_finds_versions_and_settings() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        for (model, version) in [
            ("alpha", "1"),
            ("alpha", "10"),
            ("alpha", "2"),
            ("beta", "1"),
        ] {
            let path = root.join(model).join(version);
            std::fs::create_dir_all(&path).expect("mkdir");
            std::fs::write(path.join("model.onnx"), b"x").expect("write");
        }
        std::fs::create_dir_all(root.join("alpha/notes")).expect("mkdir");
        std::fs::create_dir_all(root.join("empty/1")).expect("mkdir");
        std::fs::write(
            root.join("alpha/model.toml"),
            "max_batch_size = 8\nqueue_capacity = 3\nmax_queue_delay = \"500us\"\nreplicas = 2\n",
        )
        .expect("write");
        std::fs::write(root.join("beta/model.toml"), "max_batch = 8\n").expect("write");

        let models = scan(root, &ServingConfig::default()).expect("scan");
        let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["alpha", "beta"]);
        let labels: Vec<&str> = models[0]
            .versions
            .iter()
            .map(|v| v.label.as_str())
            .collect();
        assert_eq!(labels, ["1", "2", "10"]);
        let alpha = ModelSettings::resolve(
            models[0].toml.clone().expect("alpha model.toml"),
            &ServingConfig::default(),
        )
        .expect("alpha settings");
        assert_eq!(alpha.max_batch_size, Some(8));
        assert_eq!(alpha.queue_capacity, 3);
        assert_eq!(alpha.max_queue_delay, Duration::from_micros(500));
        assert_eq!(alpha.replicas, 2);
        assert_eq!(alpha.timeout, Duration::from_secs(30));
        let beta = models[1].toml.as_ref().expect_err("unknown key");
        assert!(beta.contains("max_batch"), "{beta}");
    }

    #[test]
    fn worker_settings_take_the_defaults_and_their_bounds() {
        let defaults = ServingConfig::default();
        let plain = ModelSettings::resolve(ModelToml::default(), &defaults).expect("defaults");
        assert_eq!(
            (plain.worker_spin, plain.nice),
            (crate::config::DEFAULT_WORKER_SPIN, 0)
        );
        let set: ModelToml =
            toml::from_str("worker_spin = \"0us\"\nnice = -10\n").expect("model.toml");
        let set = ModelSettings::resolve(set, &defaults).expect("settings");
        assert_eq!((set.worker_spin, set.nice), (Duration::ZERO, -10));
        for (text, refusal) in [
            ("nice = -21", "nice must be between -20 and 19"),
            ("nice = 20", "nice must be between -20 and 19"),
            ("worker_spin = \"11ms\"", "worker_spin may be at most 10ms"),
        ] {
            let toml: ModelToml = toml::from_str(text).expect("model.toml");
            let error = ModelSettings::resolve(toml, &defaults).expect_err(text);
            assert!(error.contains(refusal), "{text}: {error}");
        }
    }
}
