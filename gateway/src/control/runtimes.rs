//! The runtimes a version can name, in one table: the registry's name, the artifact file the
//! repository looks for, Triton's platform and backend names, and the factory that makes the
//! runtime when this build has it. Adding a runtime is one entry here.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use switchyard_runtimes::Runtime;
use switchyard_runtimes::onnx::{OnnxRuntime, locate_library};

/// Makes a runtime; it is made once per process, the first time a version needs it.
type Factory = fn(&RuntimeSettings) -> Result<Arc<dyn Runtime>, String>;

/// What a factory may need from the configuration.
#[derive(Debug, Clone, Default)]
pub struct RuntimeSettings {
    /// ONNX Runtime's shared library; `None` searches the known places.
    pub onnxruntime_library: Option<PathBuf>,
}

pub struct RuntimeKind {
    /// The name versions carry in the registry.
    pub name: &'static str,
    /// The file a repository version folder holds for this runtime.
    pub artifact_file: &'static str,
    /// Triton's platform name, reported in model metadata.
    pub platform: &'static str,
    /// Triton's backend name, reported in the model configuration.
    pub backend: &'static str,
    /// `None` when this build leaves the runtime out.
    factory: Option<Factory>,
}

pub const RUNTIME_KINDS: &[RuntimeKind] = &[
    RuntimeKind {
        name: "onnx",
        artifact_file: "model.onnx",
        platform: "onnxruntime_onnx",
        backend: "onnxruntime",
        factory: Some(onnx_runtime),
    },
    RuntimeKind {
        name: "libtorch",
        artifact_file: "model.pt",
        platform: "pytorch_libtorch",
        backend: "pytorch",
        factory: LIBTORCH,
    },
];

#[cfg(feature = "libtorch")]
const LIBTORCH: Option<Factory> = Some(|_| Ok(Arc::new(switchyard_runtimes::torch::TorchRuntime)));
#[cfg(not(feature = "libtorch"))]
const LIBTORCH: Option<Factory> = None;

fn onnx_runtime(settings: &RuntimeSettings) -> Result<Arc<dyn Runtime>, String> {
    let library =
        locate_library(settings.onnxruntime_library.as_deref()).map_err(|e| e.to_string())?;
    let runtime = OnnxRuntime::initialize(&library).map_err(|e| e.to_string())?;
    tracing::info!(library = %runtime.library().display(), "ONNX Runtime loaded");
    Ok(runtime)
}

/// A runtime kind by its registry name.
pub fn kind(name: &str) -> Option<&'static RuntimeKind> {
    RUNTIME_KINDS.iter().find(|kind| kind.name == name)
}

/// The names of the runtimes this build can load.
pub fn available() -> Vec<&'static str> {
    RUNTIME_KINDS
        .iter()
        .filter(|kind| kind.factory.is_some())
        .map(|kind| kind.name)
        .collect()
}

pub fn is_available(name: &str) -> bool {
    kind(name).is_some_and(|kind| kind.factory.is_some())
}

/// Why a runtime cannot be had in this build.
pub fn unavailable(name: &str) -> String {
    format!(
        "runtime '{name}' is not available in this build (available: {})",
        available().join(", ")
    )
}

/// The runtimes made so far, each made the first time a version needs it.
pub struct Runtimes {
    settings: RuntimeSettings,
    made: HashMap<&'static str, Arc<dyn Runtime>>,
}

impl Runtimes {
    pub fn new(settings: RuntimeSettings) -> Runtimes {
        Runtimes {
            settings,
            made: HashMap::new(),
        }
    }

    pub fn get(&mut self, name: &str) -> Result<Arc<dyn Runtime>, String> {
        let Some((kind, factory)) = kind(name).and_then(|k| Some((k, k.factory?))) else {
            return Err(unavailable(name));
        };
        if let Some(runtime) = self.made.get(kind.name) {
            return Ok(runtime.clone());
        }
        let runtime = factory(&self.settings)?;
        self.made.insert(kind.name, runtime.clone());
        Ok(runtime)
    }
}
