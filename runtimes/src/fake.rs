//! A runtime without a model file, for tests of everything above the runtimes: `y = scale * x`
//! over FP32 `[batch, width]`, with an optional delay per call and a switch that makes every
//! call fail. The gateway's core can be driven with it where ONNX Runtime is not installed.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::{
    DataType, LoadOptions, LoadedModel, NamedTensor, Runtime, RuntimeError, Signature, Tensor,
    TensorSpec,
};

/// Input `x` and output `y`, both FP32 `[-1, width]`.
#[derive(Clone)]
pub struct FakeRuntime {
    pub width: usize,
    pub scale: f32,
    pub delay: Duration,
    /// While set, every call fails with an execution error.
    pub failing: Arc<AtomicBool>,
    /// Model calls made, over every replica.
    pub calls: Arc<AtomicU64>,
}

impl FakeRuntime {
    pub fn new(width: usize, scale: f32) -> FakeRuntime {
        FakeRuntime {
            width,
            scale,
            delay: Duration::ZERO,
            failing: Arc::new(AtomicBool::new(false)),
            calls: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn signature(&self) -> Signature {
        let spec = |name: &str| TensorSpec {
            name: name.into(),
            dtype: DataType::Fp32,
            dims: vec![-1, i64::try_from(self.width).unwrap_or(i64::MAX)],
        };
        Signature {
            inputs: vec![spec("x")],
            outputs: vec![spec("y")],
        }
    }
}

struct FakeModel {
    runtime: FakeRuntime,
    signature: Signature,
}

impl Runtime for FakeRuntime {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn platform(&self) -> &'static str {
        "fake"
    }

    fn load(&self, _: &Path, _: &LoadOptions) -> Result<Box<dyn LoadedModel>, RuntimeError> {
        Ok(Box::new(FakeModel {
            runtime: self.clone(),
            signature: self.signature(),
        }))
    }
}

impl LoadedModel for FakeModel {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn run(&mut self, inputs: &[NamedTensor]) -> Result<Vec<NamedTensor>, RuntimeError> {
        self.runtime.calls.fetch_add(1, Ordering::Relaxed);
        if !self.runtime.delay.is_zero() {
            std::thread::sleep(self.runtime.delay);
        }
        if self.runtime.failing.load(Ordering::Relaxed) {
            return Err(RuntimeError::Execution(
                "the fake model is set to fail".into(),
            ));
        }
        let x = inputs
            .iter()
            .find(|input| input.name == "x")
            .ok_or_else(|| RuntimeError::InvalidInput("no input 'x'".into()))?;
        let values = x
            .tensor
            .values::<f32>()
            .map_err(|e| RuntimeError::InvalidInput(e.to_string()))?;
        let scaled: Vec<f32> = values.iter().map(|v| v * self.runtime.scale).collect();
        let tensor = Tensor::from_slice(DataType::Fp32, x.tensor.shape().to_vec(), &scaled)
            .map_err(|e| RuntimeError::Execution(e.to_string()))?;
        Ok(vec![NamedTensor {
            name: "y".into(),
            tensor,
        }])
    }
}
