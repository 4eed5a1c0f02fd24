//! Tensors, model signatures and the runtimes that execute models.
//!
//! Everything here is synchronous: a [`LoadedModel`] runs on the thread that calls it, and the
//! gateway gives every loaded model a worker thread of its own so that runtimes never block the
//! async executor.

// Tensor bytes are little-endian on the wire and are handed to runtimes as they are.
#[cfg(not(target_endian = "little"))]
compile_error!("Switchyard supports little-endian targets only");

mod datatype;
mod device;
mod error;
pub mod fake;
pub mod memory;
pub mod onnx;
mod runtime;
mod tensor;
#[cfg(feature = "libtorch")]
pub mod torch;

pub use datatype::DataType;
pub use device::Device;
pub use error::RuntimeError;
pub use runtime::{LoadOptions, LoadedModel, Runtime, Signature, TensorSpec};
pub use tensor::{
    Element, NamedTensor, Tensor, TensorError, TensorView, bytes_elements, element_count,
    push_bytes_element,
};
