//! The ONNX Runtime backend, on the `ort` crate with the library loaded at run time.
//!
//! The library is not linked at build time: it is the `libonnxruntime.so.1.31.1` shipped in the
//! PyPI wheel `onnxruntime==1.31.1`, which `scripts/setup` puts in `.tools/onnxruntime/`.

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use half::{bf16, f16};
use ort::session::{Session, SessionInputValue};
use ort::value::{
    DynValue, PrimitiveTensorElementType, Tensor as OrtTensor, TensorElementType, TensorRef,
    ValueType,
};

use crate::{
    DataType, Device, LoadOptions, LoadedModel, NamedTensor, Runtime, RuntimeError, Signature,
    Tensor, TensorSpec,
};

mod strings;

/// The ONNX Runtime version whose library the project ships and `ort` was built against.
pub const ONNXRUNTIME_VERSION: &str = "1.31.1";
const LIBRARY_FILE: &str = "libonnxruntime.so.1.31.1";
/// The file a version folder holds for this runtime.
pub const ARTIFACT_FILE_NAME: &str = "model.onnx";
/// Folder, relative to the project root, where `scripts/setup` puts the library.
const TOOLS_LIBRARY_DIR: &str = ".tools/onnxruntime";

/// Finds the ONNX Runtime shared library: an explicit path (from configuration) first, then
/// `ORT_DYLIB_PATH`, then `.tools/onnxruntime/` in the working directory or above it, or above
/// the running executable.
pub fn locate_library(configured: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    if let Some(path) = configured {
        return existing_file(path, "the configured onnxruntime.library");
    }
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        return existing_file(Path::new(&path), "ORT_DYLIB_PATH");
    }
    let mut searched = Vec::new();
    let roots = std::env::current_dir().into_iter().chain(
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf)),
    );
    for root in roots {
        for dir in root.ancestors() {
            let candidate = dir.join(TOOLS_LIBRARY_DIR).join(LIBRARY_FILE);
            if candidate.is_file() {
                return Ok(candidate);
            }
            searched.push(dir.join(TOOLS_LIBRARY_DIR));
        }
    }
    Err(RuntimeError::LibraryNotFound(format!(
        "ONNX Runtime library {LIBRARY_FILE} not found (searched {}). Run `scripts/setup`, which \
         extracts it from the PyPI wheel onnxruntime=={ONNXRUNTIME_VERSION} into {TOOLS_LIBRARY_DIR}/, \
         or point the config key onnxruntime.library or ORT_DYLIB_PATH at it",
        searched
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

fn existing_file(path: &Path, source: &str) -> Result<PathBuf, RuntimeError> {
    if path.is_file() {
        Ok(path.to_path_buf())
    } else {
        Err(RuntimeError::LibraryNotFound(format!(
            "ONNX Runtime library {} (from {source}) does not exist. Run `scripts/setup` to fetch \
             it from the PyPI wheel onnxruntime=={ONNXRUNTIME_VERSION}",
            path.display()
        )))
    }
}

/// ONNX Runtime, initialised once per process.
pub struct OnnxRuntime {
    environment: ort::environment::Environment,
    library: PathBuf,
}

impl Debug for OnnxRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxRuntime")
            .field("library", &self.library)
            .finish_non_exhaustive()
    }
}

impl OnnxRuntime {
    /// Loads the library and creates the runtime's environment. ONNX Runtime can be loaded only
    /// once per process, so later calls return the first runtime, whatever path they name.
    pub fn initialize(library: &Path) -> Result<Arc<OnnxRuntime>, RuntimeError> {
        static RUNTIME: OnceLock<Arc<OnnxRuntime>> = OnceLock::new();
        static INIT: Mutex<()> = Mutex::new(());
        if let Some(runtime) = RUNTIME.get() {
            return Ok(runtime.clone());
        }
        let _guard = INIT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(runtime) = RUNTIME.get() {
            return Ok(runtime.clone());
        }
        let init_error = |message: String| RuntimeError::Init {
            runtime: "ONNX Runtime",
            message,
        };
        let environment = ort::init_from(library)
            .map_err(|e| init_error(format!("cannot load {}: {e}", library.display())))?
            .with_name("switchyard")
            .build()
            .map_err(|e| init_error(e.to_string()))?;
        let runtime = Arc::new(OnnxRuntime {
            environment,
            library: library.to_path_buf(),
        });
        Ok(RUNTIME.get_or_init(|| runtime).clone())
    }

    pub fn library(&self) -> &Path {
        &self.library
    }
}

impl Runtime for OnnxRuntime {
    fn name(&self) -> &'static str {
        "onnx"
    }

    fn platform(&self) -> &'static str {
        "onnxruntime_onnx"
    }

    fn load(
        &self,
        artifact: &Path,
        options: &LoadOptions,
    ) -> Result<Box<dyn LoadedModel>, RuntimeError> {
        let load_error = |message: String| RuntimeError::Load {
            path: artifact.to_path_buf(),
            message,
        };
        let mut builder = Session::builder(&self.environment)
            .map_err(|e| load_error(e.to_string()))?
            .with_intra_threads(options.intra_op_threads.max(1))
            .map_err(|e| load_error(e.to_string()))?;
        if let Device::Cuda(index) = options.device {
            // error_on_failure: a version asked for a GPU must not quietly run on the CPU.
            let cuda = ort::ep::CUDA::default()
                .with_device_id(i32::try_from(index).unwrap_or(i32::MAX))
                .build()
                .error_on_failure();
            builder = builder
                .with_execution_providers([cuda])
                .map_err(|e| RuntimeError::DeviceUnavailable {
                    device: options.device.to_string(),
                    message: format!(
                        "ONNX Runtime's CUDA execution provider failed: {e}. The library in use ({}) \
                         needs to be the onnxruntime-gpu build with its CUDA libraries \
                         (`scripts/setup --gpu`, then onnxruntime.library = \
                         \".tools/onnxruntime-gpu/onnxruntime/capi/libonnxruntime.so.{ONNXRUNTIME_VERSION}\")",
                        self.library.display()
                    ),
                })?;
        }
        let session = builder
            .commit_from_file(artifact)
            .map_err(|e| load_error(e.to_string()))?;
        let mut signature = Signature {
            inputs: session
                .inputs()
                .iter()
                .map(|outlet| tensor_spec(outlet.name(), outlet.dtype()))
                .collect::<Result<_, _>>()
                .map_err(load_error)?,
            outputs: session
                .outputs()
                .iter()
                .map(|outlet| tensor_spec(outlet.name(), outlet.dtype()))
                .collect::<Result<_, _>>()
                .map_err(load_error)?,
        };
        if let Some(declared) = &options.declared {
            signature.check_declared(declared).map_err(load_error)?;
            signature.narrow_to(declared);
        }
        Ok(Box::new(OnnxModel { session, signature }))
    }
}

fn tensor_spec(name: &str, value_type: &ValueType) -> Result<TensorSpec, String> {
    let ValueType::Tensor { ty, shape, .. } = value_type else {
        return Err(format!(
            "'{name}' is a {value_type:?}, but only tensor inputs and outputs are supported"
        ));
    };
    let dtype = from_ort_type(*ty).ok_or_else(|| {
        format!("'{name}' has element type {ty:?}, which the protocol cannot carry")
    })?;
    Ok(TensorSpec {
        name: name.to_owned(),
        dtype,
        dims: shape.iter().map(|&d| if d < 0 { -1 } else { d }).collect(),
    })
}

fn from_ort_type(ty: TensorElementType) -> Option<DataType> {
    Some(match ty {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::Uint8,
        TensorElementType::Uint16 => DataType::Uint16,
        TensorElementType::Uint32 => DataType::Uint32,
        TensorElementType::Uint64 => DataType::Uint64,
        TensorElementType::Int8 => DataType::Int8,
        TensorElementType::Int16 => DataType::Int16,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Float16 => DataType::Fp16,
        TensorElementType::Bfloat16 => DataType::Bf16,
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

struct OnnxModel {
    session: Session,
    signature: Signature,
}

impl LoadedModel for OnnxModel {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn run(&mut self, inputs: &[NamedTensor]) -> Result<Vec<NamedTensor>, RuntimeError> {
        let mut values: Vec<(&str, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
        for input in inputs {
            values.push((
                input.name.as_str(),
                to_ort_value(&input.name, &input.tensor)?,
            ));
        }
        let mut outputs = self.session.run(values).map_err(|e| match e.code() {
            ort::error::ErrorCode::InvalidArgument => {
                RuntimeError::InvalidInput(format!("the model rejected the inputs: {e}"))
            }
            _ => RuntimeError::Execution(e.to_string()),
        })?;
        self.signature
            .outputs
            .iter()
            .map(|spec| {
                let value = outputs.remove(&spec.name).ok_or_else(|| {
                    RuntimeError::Execution(format!("the model produced no output '{}'", spec.name))
                })?;
                Ok(NamedTensor {
                    name: spec.name.clone(),
                    tensor: from_ort_value(&spec.name, value)?,
                })
            })
            .collect()
    }
}

/// Wraps tensor bytes for ONNX Runtime, without a copy when they are aligned for their type.
fn to_ort_value<'a>(name: &str, tensor: &'a Tensor) -> Result<SessionInputValue<'a>, RuntimeError> {
    let shape = tensor.shape();
    let data = tensor.data().as_ref();
    match tensor.dtype() {
        DataType::Bool => {
            let values = data
                .iter()
                .map(|&byte| match byte {
                    0 => Ok(false),
                    1 => Ok(true),
                    _ => Err(RuntimeError::InvalidInput(format!(
                        "input '{name}': BOOL elements must be 0 or 1, got {byte}"
                    ))),
                })
                .collect::<Result<Vec<bool>, _>>()?;
            owned(name, shape, values)
        }
        DataType::Uint8 => view::<u8>(name, shape, data),
        DataType::Uint16 => view::<u16>(name, shape, data),
        DataType::Uint32 => view::<u32>(name, shape, data),
        DataType::Uint64 => view::<u64>(name, shape, data),
        DataType::Int8 => view::<i8>(name, shape, data),
        DataType::Int16 => view::<i16>(name, shape, data),
        DataType::Int32 => view::<i32>(name, shape, data),
        DataType::Int64 => view::<i64>(name, shape, data),
        DataType::Fp16 => view::<f16>(name, shape, data),
        DataType::Bf16 => view::<bf16>(name, shape, data),
        DataType::Fp32 => view::<f32>(name, shape, data),
        DataType::Fp64 => view::<f64>(name, shape, data),
        DataType::Bytes => Ok(strings::string_tensor(name, shape, data)?.into()),
    }
}

fn view<'a, T>(
    name: &str,
    shape: &[usize],
    data: &'a [u8],
) -> Result<SessionInputValue<'a>, RuntimeError>
where
    T: bytemuck::Pod + PrimitiveTensorElementType + Debug,
{
    match bytemuck::try_cast_slice::<u8, T>(data) {
        Ok(elements) => Ok(TensorRef::from_array_view((shape.to_vec(), elements))
            .map_err(|e| input_error(name, e))?
            .into()),
        // Bytes that arrived at an odd offset (inside a binary request body) are copied once.
        Err(_) => owned(name, shape, bytemuck::pod_collect_to_vec::<u8, T>(data)),
    }
}

fn owned<T>(
    name: &str,
    shape: &[usize],
    values: Vec<T>,
) -> Result<SessionInputValue<'static>, RuntimeError>
where
    T: PrimitiveTensorElementType + Debug + Clone + 'static,
{
    Ok(OrtTensor::from_array((shape.to_vec(), values))
        .map_err(|e| input_error(name, e))?
        .into())
}

fn input_error(name: &str, error: ort::Error) -> RuntimeError {
    RuntimeError::InvalidInput(format!("input '{name}': {error}"))
}

fn from_ort_value(name: &str, value: DynValue) -> Result<Tensor, RuntimeError> {
    let ValueType::Tensor { ty, shape, .. } = value.dtype() else {
        return Err(RuntimeError::Execution(format!(
            "output '{name}' is not a tensor"
        )));
    };
    let dtype = from_ort_type(*ty).ok_or_else(|| {
        RuntimeError::Execution(format!(
            "output '{name}' has unsupported element type {ty:?}"
        ))
    })?;
    let dims: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
    let execution_error = |e: ort::Error| RuntimeError::Execution(format!("output '{name}': {e}"));
    let data = match dtype {
        DataType::Bool => {
            let (_, values) = value
                .try_extract_tensor::<bool>()
                .map_err(execution_error)?;
            Bytes::from(values.iter().map(|&b| u8::from(b)).collect::<Vec<u8>>())
        }
        DataType::Uint8 => extract::<u8>(value).map_err(execution_error)?,
        DataType::Uint16 => extract::<u16>(value).map_err(execution_error)?,
        DataType::Uint32 => extract::<u32>(value).map_err(execution_error)?,
        DataType::Uint64 => extract::<u64>(value).map_err(execution_error)?,
        DataType::Int8 => extract::<i8>(value).map_err(execution_error)?,
        DataType::Int16 => extract::<i16>(value).map_err(execution_error)?,
        DataType::Int32 => extract::<i32>(value).map_err(execution_error)?,
        DataType::Int64 => extract::<i64>(value).map_err(execution_error)?,
        DataType::Fp16 => extract::<f16>(value).map_err(execution_error)?,
        DataType::Bf16 => extract::<bf16>(value).map_err(execution_error)?,
        DataType::Fp32 => extract::<f32>(value).map_err(execution_error)?,
        DataType::Fp64 => extract::<f64>(value).map_err(execution_error)?,
        DataType::Bytes => {
            let count = dims.iter().product();
            return strings::string_elements(&value, dims, count)
                .map_err(|e| RuntimeError::Execution(format!("output '{name}': {e}")));
        }
    };
    Tensor::new(dtype, dims, data)
        .map_err(|e| RuntimeError::Execution(format!("output '{name}': {e}")))
}

/// An output's bytes where ONNX Runtime wrote them: the answer reads them there, and the
/// value that owns them lives until the last reader is done (a response on its way out, or
/// the slices of a batch split among its requests).
fn extract<T>(value: DynValue) -> Result<Bytes, ort::Error>
where
    T: bytemuck::Pod + PrimitiveTensorElementType + Send + Sync + 'static,
{
    // Checked once here, so that `as_ref` below cannot fail.
    value.try_extract_tensor::<T>()?;
    Ok(Bytes::from_owner(OutputBytes::<T> {
        value,
        element: std::marker::PhantomData,
    }))
}

struct OutputBytes<T> {
    value: DynValue,
    element: std::marker::PhantomData<T>,
}

impl<T> AsRef<[u8]> for OutputBytes<T>
where
    T: bytemuck::Pod + PrimitiveTensorElementType,
{
    fn as_ref(&self) -> &[u8] {
        self.value
            .try_extract_tensor::<T>()
            .map_or(&[], |(_, elements)| bytemuck::cast_slice(elements))
    }
}
