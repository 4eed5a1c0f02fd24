use std::path::Path;

use crate::{DataType, Device, NamedTensor, RuntimeError};

/// One input or output of a model: its name, element type and dimensions, where `-1` marks a
/// dimension that can take any size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DataType,
    pub dims: Vec<i64>,
}

/// The inputs and outputs of a loaded model, in the model's own order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Signature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

impl Signature {
    pub fn input(&self, name: &str) -> Option<&TensorSpec> {
        self.inputs.iter().find(|spec| spec.name == name)
    }

    pub fn output(&self, name: &str) -> Option<&TensorSpec> {
        self.outputs.iter().find(|spec| spec.name == name)
    }
}

/// How to load one replica of a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// Threads the runtime may use inside one operator; 1 keeps replicas from competing for cores.
    pub intra_op_threads: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            intra_op_threads: 1,
        }
    }
}

/// A model-execution backend (ONNX Runtime, libtorch, ...).
pub trait Runtime: Send + Sync {
    /// Short name used in configuration and the registry (`onnx`).
    fn name(&self) -> &'static str;

    /// The platform name that Triton's clients expect in model metadata (`onnxruntime_onnx`).
    fn platform(&self) -> &'static str;

    /// Loads an artifact; blocks for as long as loading takes.
    fn load(
        &self,
        artifact: &Path,
        options: &LoadOptions,
    ) -> Result<Box<dyn LoadedModel>, RuntimeError>;
}

/// A model ready to run. Not `Sync`: each replica is driven by one worker thread.
pub trait LoadedModel: Send {
    fn signature(&self) -> &Signature;

    /// Runs the model on named inputs (all of the signature's inputs, already checked against
    /// it) and returns every output, in signature order.
    fn run(&mut self, inputs: &[NamedTensor]) -> Result<Vec<NamedTensor>, RuntimeError>;
}
