//! The gateway's error: a kind that each protocol maps to its own status code, and a message
//! for the caller.

use switchyard_runtimes::RuntimeError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or does not suit the model (HTTP 400, gRPC INVALID_ARGUMENT).
    InvalidArgument,
    /// No such model or version (404, NOT_FOUND).
    NotFound,
    /// The request is larger than the configured limit (413, RESOURCE_EXHAUSTED).
    PayloadTooLarge,
    /// The queue is full; try again shortly (429, RESOURCE_EXHAUSTED).
    Overloaded,
    /// The model or version exists but cannot serve now (503, UNAVAILABLE).
    Unavailable,
    /// The request's deadline passed before it was served (504, DEADLINE_EXCEEDED).
    DeadlineExceeded,
    /// The gateway or the runtime failed (500, INTERNAL).
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct GatewayError {
    pub kind: ErrorKind,
    pub message: String,
}

impl GatewayError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        GatewayError {
            kind,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        GatewayError::new(ErrorKind::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        GatewayError::new(ErrorKind::NotFound, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        GatewayError::new(ErrorKind::Unavailable, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        GatewayError::new(ErrorKind::Internal, message)
    }
}

impl From<RuntimeError> for GatewayError {
    fn from(error: RuntimeError) -> Self {
        let kind = match &error {
            RuntimeError::InvalidInput(_) => ErrorKind::InvalidArgument,
            RuntimeError::DeviceUnavailable { .. } | RuntimeError::LibraryNotFound(_) => {
                ErrorKind::Unavailable
            }
            RuntimeError::Init { .. }
            | RuntimeError::Load { .. }
            | RuntimeError::Execution(_)
            | RuntimeError::Unsupported(_) => ErrorKind::Internal,
        };
        GatewayError::new(kind, error.to_string())
    }
}
