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

    /// Checks a declared signature against the model's own: the same names, in any order,
    /// with the same element types and dimensions (a declared `-1` accepts any size, and a
    /// model's `-1` accepts a declared fixed size).
    /// Fixes the dimensions the model leaves dynamic where the declaration gives a size, so that
    /// requests are checked against what the configuration says (call after `check_declared`).
    pub fn narrow_to(&mut self, declared: &Signature) {
        let specs = self.inputs.iter_mut().chain(&mut self.outputs);
        for spec in specs {
            let found = declared
                .inputs
                .iter()
                .chain(&declared.outputs)
                .find(|d| d.name == spec.name && d.dims.len() == spec.dims.len());
            if let Some(found) = found {
                for (dim, &given) in spec.dims.iter_mut().zip(&found.dims) {
                    if *dim == -1 {
                        *dim = given;
                    }
                }
            }
        }
    }

    pub fn check_declared(&self, declared: &Signature) -> Result<(), String> {
        let pairs = [
            ("input", &self.inputs, &declared.inputs),
            ("output", &self.outputs, &declared.outputs),
        ];
        for (role, actual, declared) in pairs {
            for spec in declared {
                let Some(found) = actual.iter().find(|a| a.name == spec.name) else {
                    return Err(format!(
                        "declared {role} '{}' is not one of the model's ({})",
                        spec.name,
                        actual
                            .iter()
                            .map(|a| a.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                };
                let dims_agree = found.dims.len() == spec.dims.len()
                    && found
                        .dims
                        .iter()
                        .zip(&spec.dims)
                        .all(|(&a, &d)| a == d || a == -1 || d == -1);
                if found.dtype != spec.dtype || !dims_agree {
                    return Err(format!(
                        "{role} '{}' is declared {} {:?} but the model has {} {:?}",
                        spec.name, spec.dtype, spec.dims, found.dtype, found.dims
                    ));
                }
            }
            if declared.len() != actual.len() {
                return Err(format!(
                    "the model has {} {role}s but {} are declared",
                    actual.len(),
                    declared.len()
                ));
            }
        }
        Ok(())
    }
}

/// How to load one replica of a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// Threads the runtime may use inside one operator (the gateway sizes it to the cores it
    /// shares among a version's replicas).
    pub intra_op_threads: usize,
    /// Inputs and outputs as the version's configuration declares them: required by runtimes
    /// whose artifacts do not describe themselves (TorchScript), checked against the model by
    /// those that do.
    pub declared: Option<Signature>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            intra_op_threads: 1,
            declared: None,
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
