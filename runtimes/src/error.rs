use std::path::PathBuf;

/// What can go wrong in a runtime: finding it, loading a model, or running one.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0}")]
    LibraryNotFound(String),
    #[error("failed to initialise {runtime}: {message}")]
    Init {
        runtime: &'static str,
        message: String,
    },
    #[error("failed to load {}: {message}", path.display())]
    Load { path: PathBuf, message: String },
    #[error("device {device} is not available: {message}")]
    DeviceUnavailable { device: String, message: String },
    /// The inputs do not suit the model; the caller's fault.
    #[error("{0}")]
    InvalidInput(String),
    /// The model failed while running on valid inputs.
    #[error("model execution failed: {0}")]
    Execution(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
}
