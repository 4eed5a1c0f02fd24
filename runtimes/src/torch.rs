//! The libtorch backend: TorchScript modules (`model.pt`) through the `tch` crate.
//!
//! libtorch is the one inside the PyPI wheel `torch==2.13.0`, which `scripts/setup` installs
//! into `.tools/libtorch` without its Python dependencies. A TorchScript module does not carry
//! the element types and shapes of its inputs and outputs, so a version declares them (the
//! `[[input]]` and `[[output]]` tables of its model.toml), as Triton's PyTorch backend asks.

use bytes::Bytes;
use tch::{CModule, IValue, Kind};

use crate::{
    DataType, Device, LoadOptions, LoadedModel, NamedTensor, Runtime, RuntimeError, Signature,
    Tensor,
};

/// The libtorch version `tch` 0.26 is built against.
pub const LIBTORCH_VERSION: &str = "2.13.0";
/// The file a version folder holds for this runtime.
pub const ARTIFACT_FILE_NAME: &str = "model.pt";

/// libtorch, linked into the binary; stateless, so one value serves every load.
#[derive(Debug, Default)]
pub struct TorchRuntime;

impl TorchRuntime {
    /// Whether libtorch sees a CUDA device with this index, and if not, why.
    fn check_cuda(index: u32) -> Result<tch::Device, RuntimeError> {
        let unavailable = |message: String| RuntimeError::DeviceUnavailable {
            device: Device::Cuda(index).to_string(),
            message,
        };
        if !tch::Cuda::is_available() {
            return Err(unavailable(
                "libtorch reports no CUDA device: either this machine has no NVIDIA GPU and \
                 driver, or the binary was built without the `cuda` feature (which links \
                 libtorch_cuda and needs the full torch wheel with its nvidia dependencies: \
                 `scripts/setup --gpu`, then build with `--features cuda`)"
                    .into(),
            ));
        }
        let count = tch::Cuda::device_count();
        if i64::from(index) >= count {
            return Err(unavailable(format!("libtorch sees {count} CUDA device(s)")));
        }
        Ok(tch::Device::Cuda(index as usize))
    }
}

impl Runtime for TorchRuntime {
    fn name(&self) -> &'static str {
        "libtorch"
    }

    fn platform(&self) -> &'static str {
        "pytorch_libtorch"
    }

    fn load(
        &self,
        artifact: &std::path::Path,
        options: &LoadOptions,
    ) -> Result<Box<dyn LoadedModel>, RuntimeError> {
        let load_error = |message: String| RuntimeError::Load {
            path: artifact.to_path_buf(),
            message,
        };
        let signature = options.declared.clone().ok_or_else(|| {
            load_error(
                "a TorchScript model needs its inputs and outputs declared ([[input]] and \
                 [[output]] with name, datatype and dims in model.toml)"
                    .into(),
            )
        })?;
        for spec in signature.inputs.iter().chain(&signature.outputs) {
            to_kind(spec.dtype).ok_or_else(|| {
                load_error(format!(
                    "'{}' is declared {}, which libtorch tensors cannot hold",
                    spec.name, spec.dtype
                ))
            })?;
        }
        let device = match options.device {
            Device::Cpu => tch::Device::Cpu,
            Device::Cuda(index) => TorchRuntime::check_cuda(index)?,
        };
        let mut module = CModule::load_on_device(artifact, device)
            .map_err(|e| load_error(first_line(&e.to_string())))?;
        module.set_eval();
        Ok(Box::new(TorchModel {
            module,
            signature,
            device,
            intra_op_threads: options.intra_op_threads.max(1),
            threads_set: false,
        }))
    }
}

struct TorchModel {
    module: CModule,
    signature: Signature,
    device: tch::Device,
    intra_op_threads: usize,
    threads_set: bool,
}

impl LoadedModel for TorchModel {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn run(&mut self, inputs: &[NamedTensor]) -> Result<Vec<NamedTensor>, RuntimeError> {
        if !self.threads_set {
            // libtorch's intra-op setting belongs to the calling thread's OpenMP team, and the
            // model always runs on its replica's worker thread.
            tch::set_num_threads(i32::try_from(self.intra_op_threads).unwrap_or(1));
            self.threads_set = true;
        }
        let _no_grad = tch::no_grad_guard();
        let mut arguments = Vec::with_capacity(self.signature.inputs.len());
        for spec in &self.signature.inputs {
            let input = inputs
                .iter()
                .find(|input| input.name == spec.name)
                .ok_or_else(|| {
                    RuntimeError::InvalidInput(format!("missing input '{}'", spec.name))
                })?;
            arguments.push(IValue::Tensor(to_torch(
                &input.name,
                &input.tensor,
                self.device,
            )?));
        }
        let output = self
            .module
            .forward_is(&arguments)
            .map_err(|e| RuntimeError::Execution(first_line(&e.to_string())))?;
        let tensors = flatten_output(output)?;
        if tensors.len() != self.signature.outputs.len() {
            return Err(RuntimeError::Execution(format!(
                "the module returned {} tensor(s), but {} output(s) are declared",
                tensors.len(),
                self.signature.outputs.len()
            )));
        }
        self.signature
            .outputs
            .iter()
            .zip(tensors)
            .map(|(spec, tensor)| {
                Ok(NamedTensor {
                    name: spec.name.clone(),
                    tensor: from_torch(&spec.name, spec.dtype, &tensor)?,
                })
            })
            .collect()
    }
}

fn flatten_output(output: IValue) -> Result<Vec<tch::Tensor>, RuntimeError> {
    match output {
        IValue::Tensor(tensor) => Ok(vec![tensor]),
        IValue::TensorList(tensors) => Ok(tensors),
        IValue::Tuple(values) | IValue::GenericList(values) => values
            .into_iter()
            .map(|value| match value {
                IValue::Tensor(tensor) => Ok(tensor),
                other => Err(not_a_tensor(&other)),
            })
            .collect(),
        other => Err(not_a_tensor(&other)),
    }
}

fn not_a_tensor(value: &IValue) -> RuntimeError {
    let kind = match value {
        IValue::None => "None",
        IValue::Double(_) | IValue::Int(_) | IValue::Bool(_) => "a scalar",
        IValue::String(_) | IValue::StringList(_) => "a string",
        IValue::GenericDict(_) => "a dict",
        _ => "a value that is not a tensor",
    };
    RuntimeError::Execution(format!(
        "the module returned {kind}; outputs must be tensors (a tensor, or a tuple or list of them)"
    ))
}

fn to_kind(dtype: DataType) -> Option<Kind> {
    Some(match dtype {
        DataType::Bool => Kind::Bool,
        DataType::Uint8 => Kind::Uint8,
        DataType::Int8 => Kind::Int8,
        DataType::Int16 => Kind::Int16,
        DataType::Int32 => Kind::Int,
        DataType::Int64 => Kind::Int64,
        DataType::Fp16 => Kind::Half,
        DataType::Bf16 => Kind::BFloat16,
        DataType::Fp32 => Kind::Float,
        DataType::Fp64 => Kind::Double,
        DataType::Uint16 | DataType::Uint32 | DataType::Uint64 | DataType::Bytes => return None,
    })
}

fn to_torch(name: &str, tensor: &Tensor, device: tch::Device) -> Result<tch::Tensor, RuntimeError> {
    let kind = to_kind(tensor.dtype()).ok_or_else(|| {
        RuntimeError::InvalidInput(format!(
            "input '{name}': libtorch cannot take {} tensors",
            tensor.dtype()
        ))
    })?;
    let data = tensor.data().as_ref();
    if tensor.dtype() == DataType::Bool && data.iter().any(|&byte| byte > 1) {
        return Err(RuntimeError::InvalidInput(format!(
            "input '{name}': BOOL elements must be 0 or 1"
        )));
    }
    let shape = tensor
        .shape()
        .iter()
        .map(|&d| i64::try_from(d))
        .collect::<Result<Vec<i64>, _>>()
        .map_err(|_| RuntimeError::InvalidInput(format!("input '{name}': shape too large")))?;
    let input_error = |e: tch::TchError| RuntimeError::InvalidInput(format!("input '{name}': {e}"));
    // `Tensor::new` checked that the bytes hold exactly the shape's elements, which libtorch's
    // copy relies on.
    let host = tch::Tensor::f_from_data_size(data, &shape, kind).map_err(input_error)?;
    match device {
        tch::Device::Cpu => Ok(host),
        device => host.f_to(device).map_err(input_error),
    }
}

fn from_torch(
    name: &str,
    declared: DataType,
    tensor: &tch::Tensor,
) -> Result<Tensor, RuntimeError> {
    let execution_error =
        |e: tch::TchError| RuntimeError::Execution(format!("output '{name}': {e}"));
    let kind = tensor.f_kind().map_err(execution_error)?;
    if Some(kind) != to_kind(declared) {
        return Err(RuntimeError::Execution(format!(
            "output '{name}' is declared {declared} but the module returned {kind:?}"
        )));
    }
    let host = tensor
        .f_to(tch::Device::Cpu)
        .and_then(|t| t.f_contiguous())
        .map_err(execution_error)?;
    let shape = host
        .size()
        .into_iter()
        .map(|d| usize::try_from(d).unwrap_or(0))
        .collect::<Vec<usize>>();
    let count = host.numel();
    let mut data = vec![0u8; count * kind.elt_size_in_bytes()];
    host.f_copy_data_u8(&mut data, count)
        .map_err(execution_error)?;
    Tensor::new(declared, shape, Bytes::from(data))
        .map_err(|e| RuntimeError::Execution(format!("output '{name}': {e}")))
}

/// libtorch errors carry a C++ backtrace after the first line; callers need only the message.
fn first_line(message: &str) -> String {
    let trimmed = message.trim_start();
    let mut lines = trimmed.lines().filter(|line| !line.trim().is_empty());
    let first = lines.next().unwrap_or("unknown error").trim();
    match lines.next() {
        // TorchScript puts the useful part of a schema error on the second line.
        Some(second) if first.ends_with(':') => format!("{first} {}", second.trim()),
        _ => first.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TensorSpec;

    fn mlp_signature() -> Signature {
        Signature {
            inputs: vec![TensorSpec {
                name: "x".into(),
                dtype: DataType::Fp32,
                dims: vec![-1, 3],
            }],
            outputs: vec![TensorSpec {
                name: "y".into(),
                dtype: DataType::Fp32,
                dims: vec![-1, 2],
            }],
        }
    }

    /// Traces y = relu(x W + b) for a 3 -> 2 layer and saves it, as the project's exporter does.
    fn traced_linear(path: &std::path::Path) {
        let weight = tch::Tensor::from_slice(&[1.0f32, -1.0, 0.5, 2.0, -0.5, 1.0]).reshape([3, 2]);
        let bias = tch::Tensor::from_slice(&[0.25f32, -0.25]);
        let example = tch::Tensor::zeros([1, 3], (Kind::Float, tch::Device::Cpu));
        let module = CModule::create_by_tracing("Linear", "forward", &[example], &mut |inputs| {
            vec![(inputs[0].matmul(&weight) + &bias).relu()]
        })
        .expect("trace");
        module.save(path).expect("save");
    }

    #[test]
    fn runs_a_traced_module_with_the_declared_signature() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("model.pt");
        traced_linear(&path);
        let options = LoadOptions {
            declared: Some(mlp_signature()),
            ..LoadOptions::default()
        };
        let mut model = TorchRuntime.load(&path, &options).expect("load");
        let x = Tensor::from_slice(
            DataType::Fp32,
            vec![2, 3],
            &[1.0f32, 2.0, 3.0, 0.0, 0.0, 0.0],
        )
        .expect("x");
        let outputs = model
            .run(&[NamedTensor {
                name: "x".into(),
                tensor: x,
            }])
            .expect("run");
        assert_eq!(outputs[0].name, "y");
        assert_eq!(outputs[0].tensor.shape(), [2, 2]);
        let y: &[f32] = bytemuck::cast_slice(outputs[0].tensor.data());
        // Row 1: [1*1 + 2*0.5 + 3*-0.5 + 0.25, 1*-1 + 2*2 + 3*1 - 0.25] = [0.75, 5.75].
        assert_eq!(y, [0.75, 5.75, 0.25, 0.0]);
    }

    #[test]
    fn refuses_what_it_cannot_serve() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("model.pt");
        traced_linear(&path);
        let undeclared = TorchRuntime
            .load(&path, &LoadOptions::default())
            .err()
            .expect("no signature");
        assert!(undeclared.to_string().contains("[[input]]"), "{undeclared}");

        let corrupt = dir.path().join("corrupt.pt");
        std::fs::write(&corrupt, b"not a zip archive").expect("write");
        let options = LoadOptions {
            declared: Some(mlp_signature()),
            ..LoadOptions::default()
        };
        let error = TorchRuntime
            .load(&corrupt, &options)
            .err()
            .expect("corrupt");
        assert!(error.to_string().contains("corrupt.pt"), "{error}");
        assert!(!error.to_string().contains('\n'), "{error}");

        let mut model = TorchRuntime.load(&path, &options).expect("load");
        let wrong_width = Tensor::from_slice(DataType::Fp32, vec![1, 4], &[1.0f32; 4]).expect("x");
        let error = model
            .run(&[NamedTensor {
                name: "x".into(),
                tensor: wrong_width,
            }])
            .expect_err("shape mismatch");
        assert!(matches!(error, RuntimeError::Execution(_)), "{error}");

        if !tch::Cuda::is_available() {
            let cuda = LoadOptions {
                device: Device::Cuda(0),
                ..options
            };
            let error = TorchRuntime.load(&path, &cuda).err().expect("no cuda");
            assert!(
                matches!(error, RuntimeError::DeviceUnavailable { .. }),
                "{error}"
            );
            assert!(error.to_string().contains("cuda:0"), "{error}");
        }
    }
}
