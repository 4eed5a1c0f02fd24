//! Triton's model configuration (`<model>/config.pbtxt`, protobuf text format) as a source of a
//! model's settings: read with the descriptors of `proto/model_config.proto` (no hand-written
//! parser) and mapped onto [`ModelToml`], the same settings `model.toml` gives, so that nothing
//! downstream knows which file they came from. Every field that has a meaning here is mapped;
//! a field or value this gateway cannot honour fails the model with a reason naming it, and
//! none is ignored silently (the few accepted without effect are listed in
//! `docs/triton.md`).
//!
//! The way back is here too: [`effective_config`] writes a served version's settings in
//! Triton's form, for `/v2/models/{m}/config` and gRPC `ModelConfig`.

use std::path::Path;

use switchyard_runtimes::{DataType, Device, Signature};

use crate::control::repository::{
    ControlToml, ModelSettings, ModelToml, SequenceToml, StateToml, TensorToml, VersionPolicyToml,
    WarmupToml,
};
use crate::control::runtimes::RUNTIME_KINDS;
use crate::core::ControlKind;
use crate::serving::WarmupOutcome;
use crate::wire::{self, pb};

/// Triton's configuration file in a model's folder.
pub const CONFIG_FILE: &str = "config.pbtxt";

/// Triton's default for `max_sequence_idle_microseconds`.
const DEFAULT_SEQUENCE_IDLE_MICROS: u64 = 1_000_000;

/// Reads `<model_dir>/config.pbtxt`: `Ok(None)` when there is none, else the settings it
/// gives, or why it cannot be served (a parse error names its line and column).
pub fn read_config(model_dir: &Path, folder: &str) -> Result<Option<ModelToml>, String> {
    let path = model_dir.join(CONFIG_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let config = wire::model_config_from_text(&text)
        .map_err(|e| format!("{} does not parse: {e}", path.display()))?;
    to_model_toml(&config, folder, model_dir)
        .map(Some)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The settings a Triton configuration gives, or the first field that cannot be honoured.
pub fn to_model_toml(
    config: &pb::ModelConfig,
    folder: &str,
    model_dir: &Path,
) -> Result<ModelToml, String> {
    if !config.name.is_empty() && config.name != folder {
        return Err(format!(
            "name '{}' differs from the model's folder '{folder}' (Triton requires them equal)",
            config.name
        ));
    }
    let mut toml = ModelToml {
        runtime: runtime(config)?,
        ..ModelToml::default()
    };
    let max_batch_size = u32::try_from(config.max_batch_size)
        .map_err(|_| format!("max_batch_size {} is negative", config.max_batch_size))?;
    toml.max_batch_size = Some(u64::from(max_batch_size));
    let batched = max_batch_size > 0;
    refuse_unsupported(config)?;

    let mut inputs = Vec::with_capacity(config.input.len());
    for input in &config.input {
        let field = |name: &str| format!("input '{}': {name}", input.name);
        if input.is_shape_tensor {
            return Err(format!(
                "{} (shape tensors are not supported)",
                field("is_shape_tensor")
            ));
        }
        if input.allow_ragged_batch {
            return Err(format!(
                "{} (ragged batches are not supported)",
                field("allow_ragged_batch")
            ));
        }
        if input.is_non_linear_format_io {
            return Err(format!(
                "{} (non-linear formats are TensorRT's)",
                field("is_non_linear_format_io")
            ));
        }
        let format = match pb::model_input::Format::try_from(input.format) {
            Ok(pb::model_input::Format::None) => None,
            Ok(pb::model_input::Format::Nchw) => Some("NCHW".to_owned()),
            Ok(pb::model_input::Format::Nhwc) => Some("NHWC".to_owned()),
            Err(_) => return Err(field("format is not NONE, NCHW or NHWC")),
        };
        inputs.push(TensorToml {
            name: input.name.clone(),
            datatype: datatype(input.data_type).map_err(|e| field(&e))?,
            dims: with_batch(&input.dims, batched),
            reshape: input
                .reshape
                .as_ref()
                .map(|reshape| with_batch(&reshape.shape, batched)),
            optional: input.optional,
            format,
            label_filename: None,
        });
    }
    let mut outputs = Vec::with_capacity(config.output.len());
    for output in &config.output {
        let field = |name: &str| format!("output '{}': {name}", output.name);
        if output.is_shape_tensor {
            return Err(format!(
                "{} (shape tensors are not supported)",
                field("is_shape_tensor")
            ));
        }
        if output.is_non_linear_format_io {
            return Err(format!(
                "{} (non-linear formats are TensorRT's)",
                field("is_non_linear_format_io")
            ));
        }
        let label_filename = (!output.label_filename.is_empty()).then(|| {
            let file = output.label_filename.clone();
            (file, model_dir.join(&output.label_filename).is_file())
        });
        if let Some((file, false)) = &label_filename {
            return Err(field(&format!(
                "label_filename '{file}' is not a file in the model's folder"
            )));
        }
        outputs.push(TensorToml {
            name: output.name.clone(),
            datatype: datatype(output.data_type).map_err(|e| field(&e))?,
            dims: with_batch(&output.dims, batched),
            reshape: output
                .reshape
                .as_ref()
                .map(|reshape| with_batch(&reshape.shape, batched)),
            optional: false,
            format: None,
            label_filename: label_filename.map(|(file, _)| file),
        });
    }
    match (inputs.is_empty(), outputs.is_empty()) {
        (true, true) => {}
        (false, false) => {
            toml.input = Some(inputs);
            toml.output = Some(outputs);
        }
        // Triton completes such a config from the model (auto-complete); the ONNX file describes
        // itself, so the model's own list is used, as when neither is given.
        _ => {
            return Err(
                "declare both input and output, or neither (the ONNX file then describes them)"
                    .into(),
            );
        }
    }

    use pb::model_config::SchedulingChoice;
    match &config.scheduling_choice {
        None => {}
        Some(SchedulingChoice::DynamicBatching(batching)) => dynamic_batching(&mut toml, batching)?,
        Some(SchedulingChoice::SequenceBatching(sequence)) => {
            sequence_batching(&mut toml, sequence, config, batched)?;
        }
        Some(SchedulingChoice::EnsembleScheduling(_)) => {
            return Err("ensemble_scheduling: ensembles are not supported".into());
        }
    }
    instance_groups(&mut toml, &config.instance_group)?;
    toml.version_policy = version_policy(config.version_policy.as_ref())?;
    if !config.default_model_filename.is_empty() {
        toml.default_model_filename = Some(config.default_model_filename.clone());
    }
    if !config.parameters.is_empty() {
        toml.parameters = Some(
            config
                .parameters
                .iter()
                .map(|(key, value)| (key.clone(), value.string_value.clone()))
                .collect(),
        );
    }
    toml.warmup = warmup(&config.model_warmup, batched)?;
    Ok(toml)
}

/// The runtime the configuration names by `platform` or `backend`; `None` when it names
/// neither (the artifact decides).
fn runtime(config: &pb::ModelConfig) -> Result<Option<String>, String> {
    if !config.runtime.is_empty() {
        return Err(format!(
            "runtime '{}': a backend's runtime library cannot be loaded here",
            config.runtime
        ));
    }
    let by_platform = (!config.platform.is_empty()).then(|| {
        RUNTIME_KINDS
            .iter()
            .find(|kind| kind.platform == config.platform)
            .ok_or_else(|| {
                format!(
                    "platform '{}' is not supported (Switchyard serves {})",
                    config.platform,
                    supported()
                )
            })
    });
    let by_backend = (!config.backend.is_empty()).then(|| {
        RUNTIME_KINDS
            .iter()
            .find(|kind| kind.backend == config.backend)
            .ok_or_else(|| {
                format!(
                    "backend '{}' is not supported (Switchyard serves {})",
                    config.backend,
                    supported()
                )
            })
    });
    match (by_platform.transpose()?, by_backend.transpose()?) {
        (Some(a), Some(b)) if a.name != b.name => Err(format!(
            "platform '{}' and backend '{}' name different runtimes",
            config.platform, config.backend
        )),
        (Some(kind), _) | (None, Some(kind)) => Ok(Some(kind.name.to_owned())),
        (None, None) => Ok(None),
    }
}

fn supported() -> String {
    RUNTIME_KINDS
        .iter()
        .map(|kind| format!("{} (backend {})", kind.platform, kind.backend))
        .collect::<Vec<_>>()
        .join(" and ")
}

/// The fields that ask for what this gateway does not do: each fails the model, named.
fn refuse_unsupported(config: &pb::ModelConfig) -> Result<(), String> {
    let refusals: [(bool, &str, &str); 11] = [
        (
            !config.batch_input.is_empty(),
            "batch_input",
            "batch inputs are not supported",
        ),
        (
            !config.batch_output.is_empty(),
            "batch_output",
            "batch outputs are not supported",
        ),
        (
            !config.cc_model_filenames.is_empty(),
            "cc_model_filenames",
            "per-GPU artifacts are TensorRT's",
        ),
        (
            !config.metric_tags.is_empty(),
            "metric_tags",
            "custom metric labels are not supported",
        ),
        (
            config
                .model_transaction_policy
                .as_ref()
                .is_some_and(|policy| policy.decoupled),
            "model_transaction_policy.decoupled",
            "decoupled models (several responses per request) are not supported",
        ),
        (
            config
                .model_operations
                .as_ref()
                .is_some_and(|ops| !ops.op_library_filename.is_empty()),
            "model_operations",
            "custom operator libraries are not loaded",
        ),
        (
            config
                .model_repository_agents
                .as_ref()
                .is_some_and(|agents| !agents.agents.is_empty()),
            "model_repository_agents",
            "repository agents are not supported",
        ),
        (
            config.response_cache.as_ref().is_some_and(|c| c.enable),
            "response_cache",
            "the response cache is not supported",
        ),
        (
            config
                .model_metrics
                .as_ref()
                .is_some_and(|m| !m.metric_control.is_empty()),
            "model_metrics",
            "custom metric buckets are not supported",
        ),
        (
            config.optimization.as_ref().is_some_and(|o| {
                o.graph.is_some()
                    || o.cuda.is_some()
                    || o.execution_accelerators.as_ref().is_some_and(|a| {
                        !a.gpu_execution_accelerator.is_empty()
                            || !a.cpu_execution_accelerator.is_empty()
                    })
            }),
            "optimization",
            "graph levels, CUDA graphs and execution accelerators (TensorRT, OpenVINO) are not \
             supported; only input_pinned_memory, output_pinned_memory and priority are accepted",
        ),
        (
            config
                .optimization
                .as_ref()
                .is_some_and(|o| o.gather_kernel_buffer_threshold != 0 || o.eager_batching),
            "optimization",
            "gather_kernel_buffer_threshold and eager_batching are not supported",
        ),
    ];
    match refusals.iter().find(|(refused, _, _)| *refused) {
        Some((_, field, why)) => Err(format!("{field}: {why}")),
        None => Ok(()),
    }
}

fn datatype(value: i32) -> Result<String, String> {
    wire::protocol_data_type(value)
        .map(|dtype| dtype.as_str().to_owned())
        .ok_or_else(|| format!("data_type {value} is not a tensor datatype"))
}

/// A configuration's dims with the batch axis (-1) in front when the model batches, as
/// model.toml writes them.
fn with_batch(dims: &[i64], batched: bool) -> Vec<i64> {
    let mut full = Vec::with_capacity(dims.len() + 1);
    if batched {
        full.push(-1);
    }
    full.extend_from_slice(dims);
    full
}

fn micros(value: u64) -> String {
    format!("{value}us")
}

fn dynamic_batching(
    toml: &mut ModelToml,
    batching: &pb::ModelDynamicBatching,
) -> Result<(), String> {
    if batching.priority_levels > 0
        || batching.default_priority_level > 0
        || !batching.priority_queue_policy.is_empty()
    {
        return Err(
            "dynamic_batching.priority_levels: priority queues are not supported yet".into(),
        );
    }
    let mut sizes = Vec::with_capacity(batching.preferred_batch_size.len());
    for &size in &batching.preferred_batch_size {
        sizes
            .push(usize::try_from(size).map_err(|_| {
                format!("dynamic_batching.preferred_batch_size {size} is negative")
            })?);
    }
    if !sizes.is_empty() {
        toml.preferred_batch_sizes = Some(sizes);
    }
    toml.max_queue_delay = Some(micros(batching.max_queue_delay_microseconds));
    if let Some(policy) = &batching.default_queue_policy {
        if policy.timeout_action == pb::model_queue_policy::TimeoutAction::Delay as i32 {
            return Err(
                "dynamic_batching.default_queue_policy.timeout_action: DELAY is not supported \
                 (a request past its timeout is refused)"
                    .into(),
            );
        }
        if policy.max_queue_size > 0 {
            toml.queue_capacity = Some(policy.max_queue_size as usize);
        }
        if policy.default_timeout_microseconds > 0 {
            toml.timeout = Some(micros(policy.default_timeout_microseconds));
        }
    }
    Ok(())
}

fn sequence_batching(
    toml: &mut ModelToml,
    sequence: &pb::ModelSequenceBatching,
    config: &pb::ModelConfig,
    batched: bool,
) -> Result<(), String> {
    use pb::model_sequence_batching::StrategyChoice;
    if sequence.iterative_sequence {
        return Err("sequence_batching.iterative_sequence is not supported".into());
    }
    let idle = match sequence.max_sequence_idle_microseconds {
        0 => DEFAULT_SEQUENCE_IDLE_MICROS,
        micros => micros,
    };
    let mut settings = SequenceToml {
        idle_timeout: Some(micros(idle)),
        ..SequenceToml::default()
    };
    match &sequence.strategy_choice {
        None => settings.strategy = Some("direct".into()),
        Some(StrategyChoice::Direct(direct)) => {
            settings.strategy = Some("direct".into());
            settings.max_queue_delay = Some(micros(direct.max_queue_delay_microseconds));
        }
        Some(StrategyChoice::Oldest(oldest)) => {
            settings.strategy = Some("oldest".into());
            settings.max_queue_delay = Some(micros(oldest.max_queue_delay_microseconds));
            if oldest.max_candidate_sequences > 0 {
                settings.max_sequences = Some(oldest.max_candidate_sequences as usize);
            }
        }
    }
    if batched {
        // Triton batches the calls of different sequences along the batch axis, one slot each.
        let max_batch = config.max_batch_size as usize;
        settings.max_batch = Some(max_batch.min(settings.max_sequences.unwrap_or(max_batch)));
        settings.max_sequences = Some(settings.max_sequences.unwrap_or(64).max(max_batch));
        for tensor in config
            .input
            .iter()
            .map(|t| &t.name)
            .chain(config.output.iter().map(|t| &t.name))
        {
            settings.axes.insert(tensor.clone(), 0);
        }
    }
    for control_input in &sequence.control_input {
        let [control] = control_input.control.as_slice() else {
            return Err(format!(
                "sequence_batching.control_input '{}': one control per input is supported, \
                 not {}",
                control_input.name,
                control_input.control.len()
            ));
        };
        settings
            .control
            .push(control_toml(&control_input.name, control)?);
    }
    let mut states = Vec::with_capacity(sequence.state.len());
    for state in &sequence.state {
        let field = |name: &str| format!("sequence_batching.state '{}': {name}", state.input_name);
        if state.use_growable_memory {
            return Err(field("use_growable_memory is not supported"));
        }
        let dims = state
            .dims
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<Vec<usize>, _>>()
            .map_err(|_| field("dims must be fixed (no -1)"))?;
        let mut initial = 0.0;
        for given in &state.initial_state {
            match &given.state_data {
                Some(pb::model_sequence_batching::initial_state::StateData::ZeroData(_)) | None => {
                    initial = 0.0;
                }
                Some(pb::model_sequence_batching::initial_state::StateData::DataFile(_)) => {
                    return Err(field("initial_state.data_file is not supported"));
                }
            }
        }
        states.push(StateToml {
            input: state.input_name.clone(),
            output: state.output_name.clone(),
            datatype: datatype(state.data_type).map_err(|e| field(&e))?,
            // One sequence's state is one row of the batch when the model batches.
            dims: if batched {
                [vec![1], dims].concat()
            } else {
                dims
            },
            axis: 0,
            initial,
        });
        if batched {
            settings.axes.remove(&state.input_name);
            settings.axes.remove(&state.output_name);
        }
    }
    if !states.is_empty() {
        toml.state = Some(states);
    }
    toml.sequence = Some(settings);
    Ok(())
}

fn control_toml(
    input: &str,
    control: &pb::model_sequence_batching::Control,
) -> Result<ControlToml, String> {
    use pb::model_sequence_batching::control::Kind;
    let field = |message: String| format!("sequence_batching.control_input '{input}': {message}");
    let kind = Kind::try_from(control.kind).map_err(|_| field("unknown kind".into()))?;
    let flags = [
        (!control.int32_false_true.is_empty(), "INT32"),
        (!control.fp32_false_true.is_empty(), "FP32"),
        (!control.bool_false_true.is_empty(), "BOOL"),
    ];
    let given: Vec<&str> = flags.iter().filter(|(set, _)| *set).map(|f| f.1).collect();
    if kind == Kind::ControlSequenceCorrid {
        if !given.is_empty() {
            return Err(field(
                "a CORRID control takes data_type, not false/true values".into(),
            ));
        }
        let datatype = datatype(control.data_type).map_err(field)?;
        return Ok(ControlToml {
            input: input.to_owned(),
            kind: "corrid".into(),
            datatype,
            false_true: None,
        });
    }
    let pair = |values: Vec<f64>| -> Result<[f64; 2], String> {
        <[f64; 2]>::try_from(values)
            .map_err(|_| field("false_true needs two values: false, then true".into()))
    };
    let (datatype, false_true) = match given.as_slice() {
        ["INT32"] => (
            "INT32",
            pair(
                control
                    .int32_false_true
                    .iter()
                    .map(|&v| f64::from(v))
                    .collect(),
            )?,
        ),
        ["FP32"] => (
            "FP32",
            pair(
                control
                    .fp32_false_true
                    .iter()
                    .map(|&v| f64::from(v))
                    .collect(),
            )?,
        ),
        ["BOOL"] => (
            "BOOL",
            pair(
                control
                    .bool_false_true
                    .iter()
                    .map(|&v| f64::from(u8::from(v)))
                    .collect(),
            )?,
        ),
        _ => {
            return Err(field(
                "needs exactly one of int32_false_true, fp32_false_true, bool_false_true".into(),
            ));
        }
    };
    let kind = match kind {
        Kind::ControlSequenceStart => "start",
        Kind::ControlSequenceEnd => "end",
        Kind::ControlSequenceReady => "ready",
        Kind::ControlSequenceCorrid => "corrid",
    };
    Ok(ControlToml {
        input: input.to_owned(),
        kind: kind.into(),
        datatype: datatype.into(),
        false_true: Some(false_true),
    })
}

fn instance_groups(toml: &mut ModelToml, groups: &[pb::ModelInstanceGroup]) -> Result<(), String> {
    use pb::model_instance_group::Kind;
    if groups.is_empty() {
        return Ok(());
    }
    let mut replicas = 0usize;
    let mut devices: Vec<String> = Vec::new();
    let mut kinds = Vec::new();
    for group in groups {
        let field = |name: &str| format!("instance_group '{}': {name}", group.name);
        if group.rate_limiter.is_some()
            || !group.secondary_devices.is_empty()
            || !group.profile.is_empty()
            || group.passive
            || !group.host_policy.is_empty()
        {
            return Err(field(
                "rate_limiter, secondary_devices, profile, passive and host_policy are not supported",
            ));
        }
        let count =
            usize::try_from(group.count.max(1)).map_err(|_| field("count must be positive"))?;
        let kind = Kind::try_from(group.kind).map_err(|_| field("unknown kind"))?;
        match kind {
            Kind::Auto | Kind::Cpu => {
                replicas += count;
                if !devices.contains(&"cpu".to_owned()) {
                    devices.push("cpu".into());
                }
            }
            Kind::Gpu => {
                let gpus = if group.gpus.is_empty() {
                    vec![0]
                } else {
                    group.gpus.clone()
                };
                for gpu in gpus {
                    let gpu = u32::try_from(gpu).map_err(|_| field("gpus must be 0 or more"))?;
                    let device = Device::Cuda(gpu).to_string();
                    if !devices.contains(&device) {
                        devices.push(device);
                    }
                    replicas += count;
                }
            }
            Kind::Model => {
                return Err(field(
                    "KIND_MODEL (the framework places itself) is not supported",
                ));
            }
        }
        kinds.push(kind);
    }
    if kinds.contains(&Kind::Gpu) && kinds.iter().any(|k| *k != Kind::Gpu) {
        return Err("instance_group: CPU and GPU groups in one model are not supported".into());
    }
    // Bounded where every setting is (ModelSettings::resolve), naming `replicas`.
    toml.replicas = Some(replicas);
    toml.device = devices.first().cloned();
    if devices.len() > 1 {
        toml.devices = Some(devices);
    }
    Ok(())
}

fn version_policy(
    policy: Option<&pb::ModelVersionPolicy>,
) -> Result<Option<VersionPolicyToml>, String> {
    use pb::model_version_policy::PolicyChoice;
    // Triton's default is the latest version only.
    let Some(choice) = policy.and_then(|p| p.policy_choice.as_ref()) else {
        return Ok(Some(VersionPolicyToml::Latest(1)));
    };
    Ok(Some(match choice {
        PolicyChoice::Latest(latest) => {
            if latest.num_versions == 0 {
                return Err("version_policy.latest.num_versions must be at least 1".into());
            }
            VersionPolicyToml::Latest(latest.num_versions)
        }
        PolicyChoice::All(_) => VersionPolicyToml::All(true),
        PolicyChoice::Specific(specific) => {
            VersionPolicyToml::Specific(specific.versions.iter().map(|v| v.to_string()).collect())
        }
    }))
}

fn warmup(warmups: &[pb::ModelWarmup], batched: bool) -> Result<Option<WarmupToml>, String> {
    let [warmup] = warmups else {
        return match warmups.len() {
            0 => Ok(None),
            n => Err(format!("model_warmup: one warm-up is supported, not {n}")),
        };
    };
    let field = |message: String| format!("model_warmup '{}': {message}", warmup.name);
    let mut toml = WarmupToml::default();
    let batch = warmup.batch_size.max(1) as usize;
    for (name, input) in &warmup.inputs {
        let mut dims = Vec::with_capacity(input.dims.len() + 1);
        if batched {
            dims.push(batch);
        }
        for &dim in &input.dims {
            dims.push(
                usize::try_from(dim)
                    .map_err(|_| field(format!("input '{name}': dims must be fixed")))?,
            );
        }
        toml.dims.insert(name.clone(), dims);
        use pb::model_warmup::input::InputDataType;
        match &input.input_data_type {
            Some(InputDataType::ZeroData(_)) => {
                toml.fill.insert(name.clone(), 0.0);
            }
            Some(InputDataType::RandomData(_)) | None => toml.random.push(name.clone()),
            Some(InputDataType::InputDataFile(_)) => {
                return Err(field(format!(
                    "input '{name}': input_data_file is not supported (zero_data and random_data are)"
                )));
            }
        }
    }
    Ok(Some(toml))
}

/// What a served version reports as its configuration, in Triton's form.
pub struct ServedVersion<'a> {
    pub model: &'a str,
    pub runtime: &'a str,
    pub settings: &'a ModelSettings,
    /// The model's signature (what it takes).
    pub signature: &'a Signature,
    pub max_batch_size: u32,
    pub warmup: &'a WarmupOutcome,
}

/// The effective configuration of a served version in Triton's form: its settings after
/// defaults, and its inputs and outputs as clients see them (without the state and control
/// inputs the gateway feeds, which are listed under `sequence_batching`).
pub fn effective_config(served: &ServedVersion<'_>) -> pb::ModelConfig {
    let settings = served.settings;
    let source = &settings.source;
    let kind = RUNTIME_KINDS
        .iter()
        .find(|kind| kind.name == served.runtime);
    let batched = served.max_batch_size > 0;
    let skip = usize::from(batched);
    let declared = |list: &Option<Vec<TensorToml>>, name: &str| -> Option<TensorToml> {
        list.as_ref()?.iter().find(|t| t.name == name).cloned()
    };
    let fed: Vec<&str> = settings
        .sequence
        .iter()
        .flat_map(|sequence| {
            sequence
                .states
                .iter()
                .map(|s| s.input.as_str())
                .chain(sequence.controls.iter().map(|c| c.input.as_str()))
        })
        .collect();
    let taken: Vec<&str> = settings
        .sequence
        .iter()
        .flat_map(|sequence| sequence.states.iter().map(|s| s.output.as_str()))
        .collect();
    let client_dims = |model_dims: &[i64],
                       toml: &Option<TensorToml>|
     -> (Vec<i64>, Option<pb::ModelTensorReshape>) {
        match toml {
            Some(toml) if toml.reshape.is_some() => (
                toml.dims.get(skip..).unwrap_or_default().to_vec(),
                toml.reshape.as_ref().map(|reshape| pb::ModelTensorReshape {
                    shape: reshape.get(skip..).unwrap_or_default().to_vec(),
                }),
            ),
            _ => {
                let dims = model_dims.get(skip..).unwrap_or_default();
                // Triton's config cannot say "no dimensions": a scalar is [1] reshaped to [].
                if dims.is_empty() {
                    (vec![1], Some(pb::ModelTensorReshape { shape: Vec::new() }))
                } else {
                    (dims.to_vec(), None)
                }
            }
        }
    };
    let input = served
        .signature
        .inputs
        .iter()
        .filter(|spec| !fed.contains(&spec.name.as_str()))
        .map(|spec| {
            let toml = declared(&source.input, &spec.name);
            let (dims, reshape) = client_dims(&spec.dims, &toml);
            let format = match toml.as_ref().and_then(|t| t.format.as_deref()) {
                Some("NCHW") => pb::model_input::Format::Nchw,
                Some("NHWC") => pb::model_input::Format::Nhwc,
                _ => pb::model_input::Format::None,
            };
            pb::ModelInput {
                name: spec.name.clone(),
                data_type: wire::config_data_type(spec.dtype) as i32,
                format: format as i32,
                dims,
                reshape,
                optional: settings.interface.optional.contains(&spec.name),
                ..Default::default()
            }
        })
        .collect();
    let output = served
        .signature
        .outputs
        .iter()
        .filter(|spec| !taken.contains(&spec.name.as_str()))
        .map(|spec| {
            let toml = declared(&source.output, &spec.name);
            let (dims, reshape) = match &toml {
                Some(t) if t.reshape.is_some() => client_dims(&spec.dims, &toml),
                _ => (spec.dims.get(skip..).unwrap_or_default().to_vec(), None),
            };
            pb::ModelOutput {
                name: spec.name.clone(),
                data_type: wire::config_data_type(spec.dtype) as i32,
                dims,
                reshape,
                label_filename: toml.and_then(|t| t.label_filename).unwrap_or_default(),
                ..Default::default()
            }
        })
        .collect();
    let scheduling = Some(match &settings.sequence {
        Some(sequence) => {
            use pb::model_sequence_batching::{
                Control, ControlInput, State, StrategyChoice, StrategyDirect, StrategyOldest,
                control,
            };
            let delay = sequence.join.max_delay.as_micros() as u64;
            let oldest =
                source.sequence.as_ref().and_then(|s| s.strategy.as_deref()) == Some("oldest");
            let strategy = if oldest {
                StrategyChoice::Oldest(StrategyOldest {
                    max_candidate_sequences: i32::try_from(sequence.max_per_replica)
                        .unwrap_or(i32::MAX),
                    max_queue_delay_microseconds: delay,
                    ..Default::default()
                })
            } else {
                StrategyChoice::Direct(StrategyDirect {
                    max_queue_delay_microseconds: delay,
                    minimum_slot_utilization: 0.0,
                })
            };
            let control_input = sequence
                .controls
                .iter()
                .map(|spec| {
                    let kind = match spec.kind {
                        ControlKind::Start => control::Kind::ControlSequenceStart,
                        ControlKind::End => control::Kind::ControlSequenceEnd,
                        ControlKind::Ready => control::Kind::ControlSequenceReady,
                        ControlKind::CorrelationId => control::Kind::ControlSequenceCorrid,
                    };
                    let [no, yes] = spec.false_true;
                    let mut control = Control {
                        kind: kind as i32,
                        ..Default::default()
                    };
                    match (spec.kind, spec.dtype) {
                        (ControlKind::CorrelationId, dtype) => {
                            control.data_type = wire::config_data_type(dtype) as i32;
                        }
                        (_, DataType::Fp32) => {
                            control.fp32_false_true = vec![no as f32, yes as f32]
                        }
                        (_, DataType::Bool) => {
                            control.bool_false_true = vec![no != 0.0, yes != 0.0]
                        }
                        _ => control.int32_false_true = vec![no as i32, yes as i32],
                    }
                    ControlInput {
                        name: spec.input.clone(),
                        control: vec![control],
                    }
                })
                .collect();
            let state = sequence
                .states
                .iter()
                .map(|state| State {
                    input_name: state.input.clone(),
                    output_name: state.output.clone(),
                    data_type: wire::config_data_type(state.initial.dtype()) as i32,
                    dims: state.initial.shape()[skip.min(state.initial.shape().len())..]
                        .iter()
                        .map(|&d| d as i64)
                        .collect(),
                    ..Default::default()
                })
                .collect();
            pb::model_config::SchedulingChoice::SequenceBatching(pb::ModelSequenceBatching {
                max_sequence_idle_microseconds: sequence.idle_timeout.as_micros() as u64,
                control_input,
                state,
                strategy_choice: Some(strategy),
                iterative_sequence: false,
            })
        }
        None => pb::model_config::SchedulingChoice::DynamicBatching(pb::ModelDynamicBatching {
            preferred_batch_size: settings
                .preferred_batch_sizes
                .iter()
                .map(|&size| i32::try_from(size).unwrap_or(i32::MAX))
                .collect(),
            max_queue_delay_microseconds: settings.max_queue_delay.as_micros() as u64,
            default_queue_policy: Some(pb::ModelQueuePolicy {
                max_queue_size: u32::try_from(settings.queue_capacity).unwrap_or(u32::MAX),
                default_timeout_microseconds: settings.timeout.as_micros() as u64,
                allow_timeout_override: true,
                ..Default::default()
            }),
            ..Default::default()
        }),
    });
    let gpus: Vec<i32> = settings
        .devices
        .iter()
        .filter_map(|device| match device {
            Device::Cuda(index) => Some(i32::try_from(*index).unwrap_or(i32::MAX)),
            Device::Cpu => None,
        })
        .collect();
    let kind_of_group = if gpus.is_empty() {
        pb::model_instance_group::Kind::Cpu
    } else {
        pb::model_instance_group::Kind::Gpu
    };
    let version_policy = source.version_policy.as_ref().map(|policy| {
        use pb::model_version_policy::{All, Latest, PolicyChoice, Specific};
        pb::ModelVersionPolicy {
            policy_choice: Some(match policy {
                VersionPolicyToml::Latest(n) => PolicyChoice::Latest(Latest { num_versions: *n }),
                VersionPolicyToml::All(_) => PolicyChoice::All(All {}),
                VersionPolicyToml::Specific(labels) => PolicyChoice::Specific(Specific {
                    versions: labels.iter().filter_map(|l| l.parse().ok()).collect(),
                }),
            }),
        }
    });
    let model_warmup = match (served.warmup, &source.warmup) {
        (WarmupOutcome::Configured, Some(warmup)) => vec![pb::ModelWarmup {
            name: "configured".into(),
            batch_size: 1,
            inputs: warmup
                .dims
                .iter()
                .filter_map(|(name, dims)| {
                    let spec = served.signature.input(name)?;
                    use pb::model_warmup::input::InputDataType;
                    let data = if warmup.random.contains(name) {
                        InputDataType::RandomData(true)
                    } else {
                        InputDataType::ZeroData(warmup.fill.get(name) == Some(&0.0))
                    };
                    Some((
                        name.clone(),
                        pb::model_warmup::Input {
                            data_type: wire::config_data_type(spec.dtype) as i32,
                            dims: dims[skip.min(dims.len())..]
                                .iter()
                                .map(|&d| d as i64)
                                .collect(),
                            input_data_type: Some(data),
                        },
                    ))
                })
                .collect(),
            count: 1,
        }],
        _ => Vec::new(),
    };
    pb::ModelConfig {
        name: served.model.to_owned(),
        platform: kind.map_or("", |k| k.platform).to_owned(),
        backend: kind.map_or("", |k| k.backend).to_owned(),
        version_policy,
        max_batch_size: i32::try_from(served.max_batch_size).unwrap_or(i32::MAX),
        input,
        output,
        scheduling_choice: scheduling,
        instance_group: vec![pb::ModelInstanceGroup {
            name: served.model.to_owned(),
            kind: kind_of_group as i32,
            count: i32::try_from(settings.replicas).unwrap_or(i32::MAX),
            gpus,
            ..Default::default()
        }],
        default_model_filename: source
            .default_model_filename
            .clone()
            .or_else(|| kind.map(|k| k.artifact_file.to_owned()))
            .unwrap_or_default(),
        parameters: source
            .parameters
            .iter()
            .flatten()
            .map(|(key, value)| {
                (
                    key.clone(),
                    pb::ModelParameter {
                        string_value: value.clone(),
                    },
                )
            })
            .collect(),
        model_warmup,
        ..Default::default()
    }
}

/// The settings of a model folder with both files: `model.toml`'s keys win over those
/// `config.pbtxt` gives, key by key, tables merged one level down (`[sequence]`, `[warmup]`),
/// lists replaced whole.
pub fn combine(from_config: ModelToml, from_toml: ModelToml) -> Result<ModelToml, String> {
    let to_json = |toml: &ModelToml| serde_json::to_value(toml).map_err(|e| e.to_string());
    let (mut base, over) = (to_json(&from_config)?, to_json(&from_toml)?);
    if let (Some(base), serde_json::Value::Object(over)) = (base.as_object_mut(), over) {
        for (key, value) in over {
            if value.is_null() {
                continue;
            }
            match (base.get_mut(&key), value) {
                (Some(serde_json::Value::Object(inner)), serde_json::Value::Object(value)) => {
                    for (inner_key, inner_value) in value {
                        if !inner_value.is_null() && !is_empty_default(&inner_value) {
                            inner.insert(inner_key, inner_value);
                        }
                    }
                }
                (_, value) => {
                    base.insert(key, value);
                }
            }
        }
    }
    serde_json::from_value(base).map_err(|e| e.to_string())
}

/// An empty list or table inside a model.toml table is serde's default, not a choice.
fn is_empty_default(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Array(items) => items.is_empty(),
        serde_json::Value::Object(map) => map.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServingConfig;

    fn toml_of(text: &str) -> Result<ModelToml, String> {
        let config = wire::model_config_from_text(text).map_err(|e| e.to_string())?;
        to_model_toml(&config, "m", Path::new("/nonexistent"))
    }

    const SEQUENCE: &str = r#"
        name: "m" platform: "onnxruntime_onnx" max_batch_size: 8
        sequence_batching {
          max_sequence_idle_microseconds: 5000000
          oldest { max_candidate_sequences: 4 max_queue_delay_microseconds: 100 }
          control_input [
            { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
            { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY fp32_false_true: [ 0, 1 ] } ] },
            { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }
          ]
        }
        input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
        output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
        instance_group [ { count: 2 kind: KIND_CPU } ]
    "#;

    #[test]
    fn a_sequence_config_maps_onto_model_toml() {
        let toml = toml_of(SEQUENCE).expect("maps");
        assert_eq!(toml.runtime.as_deref(), Some("onnx"));
        assert_eq!(toml.max_batch_size, Some(8));
        assert_eq!(toml.replicas, Some(2));
        assert_eq!(toml.input.as_ref().expect("inputs")[0].dims, [-1, 1]);
        let sequence = toml.sequence.as_ref().expect("sequence");
        assert_eq!(sequence.strategy.as_deref(), Some("oldest"));
        assert_eq!(sequence.max_batch, Some(4));
        assert_eq!(sequence.idle_timeout.as_deref(), Some("5000000us"));
        let kinds: Vec<(&str, &str)> = sequence
            .control
            .iter()
            .map(|c| (c.kind.as_str(), c.datatype.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [("start", "INT32"), ("ready", "FP32"), ("corrid", "UINT64")]
        );
        assert_eq!(toml.version_policy, Some(VersionPolicyToml::Latest(1)));
        let settings = ModelSettings::resolve(toml, &ServingConfig::default()).expect("resolves");
        let declared = settings.declared.expect("declared");
        let names: Vec<&str> = declared.inputs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["INPUT", "START", "READY", "CORRID"]);
        assert_eq!(declared.inputs[3].dims, [-1, 1]);
    }

    #[test]
    fn unsupported_fields_fail_with_their_name() {
        for (text, named) in [
            (
                r#"name: "m" backend: "python""#,
                "backend 'python' is not supported",
            ),
            (
                r#"name: "m" platform: "tensorrt_plan""#,
                "platform 'tensorrt_plan'",
            ),
            (r#"name: "other""#, "differs from the model's folder"),
            (
                r#"name: "m" model_transaction_policy { decoupled: true }"#,
                "model_transaction_policy.decoupled",
            ),
            (
                r#"input [ { name: "x" data_type: TYPE_INT64 dims: [ 1 ] is_shape_tensor: true } ] output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]"#,
                "is_shape_tensor",
            ),
            (
                r#"optimization { execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt" } ] } }"#,
                "optimization",
            ),
            (
                r#"ensemble_scheduling { step [ { model_name: "a" } ] }"#,
                "ensemble_scheduling",
            ),
            (
                r#"dynamic_batching { priority_levels: 2 }"#,
                "dynamic_batching.priority_levels",
            ),
            (r#"instance_group [ { kind: KIND_MODEL } ]"#, "KIND_MODEL"),
            (
                r#"sequence_batching { control_input [ { name: "S" control [ { kind: CONTROL_SEQUENCE_START } ] } ] }"#,
                "control_input 'S'",
            ),
        ] {
            let error = toml_of(text).expect_err(text);
            assert!(error.contains(named), "{text}: {error}");
        }
    }

    #[test]
    fn model_toml_keys_win_over_config_pbtxt() {
        let from_config = toml_of(SEQUENCE).expect("maps");
        let from_toml: ModelToml =
            toml::from_str("replicas = 3\n[sequence]\nmax_queue_delay = \"2ms\"\n").expect("toml");
        let combined = combine(from_config, from_toml).expect("combines");
        assert_eq!(combined.replicas, Some(3));
        let sequence = combined.sequence.expect("sequence");
        assert_eq!(sequence.max_queue_delay.as_deref(), Some("2ms"));
        assert_eq!(
            sequence.strategy.as_deref(),
            Some("oldest"),
            "kept from config.pbtxt"
        );
        assert_eq!(sequence.control.len(), 3, "kept from config.pbtxt");
    }

    #[test]
    fn the_effective_config_says_what_the_config_said() {
        let toml = toml_of(SEQUENCE).expect("maps");
        let settings = ModelSettings::resolve(toml, &ServingConfig::default()).expect("resolves");
        let signature = settings.declared.clone().expect("declared");
        let config = effective_config(&ServedVersion {
            model: "m",
            runtime: "onnx",
            settings: &settings,
            signature: &signature,
            max_batch_size: 8,
            warmup: &WarmupOutcome::Synthetic(Vec::new()),
        });
        assert_eq!(config.platform, "onnxruntime_onnx");
        assert_eq!(config.input.len(), 1, "the controls are not client inputs");
        assert_eq!(config.input[0].dims, [1]);
        let Some(pb::model_config::SchedulingChoice::SequenceBatching(sequence)) =
            &config.scheduling_choice
        else {
            panic!("a sequence model: {config:?}");
        };
        assert_eq!(sequence.control_input.len(), 3);
        assert_eq!(sequence.max_sequence_idle_microseconds, 5_000_000);
        assert_eq!(config.instance_group[0].count, 2);
        // And it reads back into the same settings.
        let again = to_model_toml(&config, "m", Path::new("/nonexistent")).expect("reads back");
        assert_eq!(again.sequence.expect("sequence").control.len(), 3);
    }
}
