//! The warm-up run every replica makes before it takes traffic.
//!
//! A run on inputs the configuration gives (`[warmup]` or Triton's `model_warmup`) must succeed
//! for the replica to load. A run on synthetic inputs is the gateway's guess, and a guess never
//! fails a load: a stock model whose dynamic dimensions cannot all be 1 (a detector whose
//! feature maps are upsampled and concatenated) would otherwise not load on the defaults, as it
//! does in Triton, which warms a model up only when asked. When the guess fails, the replica
//! serves without a warm-up and its memory is measured on its first request instead.

use std::collections::BTreeMap;

use switchyard_runtimes::{DataType, LoadedModel, NamedTensor, Tensor, TensorSpec};

/// The warm-up run, resolved from a version's settings: before a replica is ready it runs once
/// on an input whose elements are all 1 (never 0, which can take shortcuts that leave lazy
/// initialisation for the first real request), or as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct Warmup {
    pub enabled: bool,
    /// Whether the configuration gave the inputs (then a failed run fails the load).
    pub configured: bool,
    /// Shapes for inputs with dynamic dimensions; others are guessed.
    pub dims: BTreeMap<String, Vec<usize>>,
    /// The value an input is filled with instead of 1.
    pub fill: BTreeMap<String, f64>,
    /// Inputs filled with random values in [0, 1) instead.
    pub random: Vec<String>,
}

/// How a replica was warmed up.
#[derive(Debug, Clone, PartialEq)]
pub enum WarmupOutcome {
    /// On the inputs the configuration gave.
    Configured,
    /// On synthetic inputs of the shapes it chose, by input.
    Synthetic(Vec<(String, Vec<usize>)>),
    /// Not run: turned off, or the synthetic run failed on shapes it had guessed (why). Its
    /// memory is measured on its first request instead.
    Skipped(String),
}

impl WarmupOutcome {
    /// One line for the version's status.
    pub fn describe(&self) -> String {
        match self {
            WarmupOutcome::Configured => "configured inputs".to_owned(),
            WarmupOutcome::Synthetic(shapes) => {
                let shapes: Vec<String> = shapes
                    .iter()
                    .map(|(name, shape)| format!("{name} {shape:?}"))
                    .collect();
                format!("synthetic inputs ({})", shapes.join(", "))
            }
            WarmupOutcome::Skipped(why) => format!("skipped: {why}"),
        }
    }

    /// Whether the first request runs cold (and measures the memory the replica takes).
    pub fn skipped(&self) -> bool {
        matches!(self, WarmupOutcome::Skipped(_))
    }
}

/// The size a dynamic dimension is guessed at when it is neither the batch axis nor the first
/// dynamic dimension of its input, in an input of rank 3 or more (images and feature maps): a
/// multiple of the strides of common detectors and backbones, so that their downsampled and
/// upsampled maps still meet.
const GUESSED_SPATIAL_SIZE: usize = 64;

/// The size of dynamic spatial dimensions when the thread count is measured: a common image
/// size (ImageNet's), a multiple of the same strides. A 64x64 map is too small for more threads
/// to show what they do at an image's size.
const MEASURED_SPATIAL_SIZE: usize = 224;

/// A synthetic input's shape: the batch axis, and an input's first dynamic dimension (a batch
/// of another axis, as a recurrent state's), are 1; later dynamic dimensions of inputs of rank 3
/// or more are [`GUESSED_SPATIAL_SIZE`]; the rest 1.
fn guessed_shape(spec: &TensorSpec, batched: bool, spatial: usize) -> Vec<usize> {
    let first_dynamic = if batched {
        Some(0)
    } else {
        spec.dims.iter().position(|&dim| dim < 0)
    };
    spec.dims
        .iter()
        .enumerate()
        .map(|(axis, &dim)| match usize::try_from(dim) {
            Ok(size) => size,
            Err(_) if Some(axis) == first_dynamic => 1,
            Err(_) if spec.dims.len() >= 3 => spatial,
            Err(_) => 1,
        })
        .collect()
}

fn random_tensor(dtype: DataType, shape: Vec<usize>) -> Result<Tensor, String> {
    let count: usize = shape.iter().product();
    let values: Vec<f64> = (0..count).map(|_| fastrand::f64()).collect();
    Tensor::from_f64s(dtype, shape, &values).map_err(|e| e.to_string())
}

/// Each input's name and shape.
type Shapes = Vec<(String, Vec<usize>)>;

/// The warm-up inputs, with dynamic spatial dimensions guessed at `spatial`; and their shapes.
fn inputs_for(
    model: &dyn LoadedModel,
    warmup: &Warmup,
    batched: bool,
    spatial: usize,
) -> Result<(Vec<NamedTensor>, Shapes), String> {
    let mut shapes = Vec::new();
    let mut inputs = Vec::new();
    for spec in &model.signature().inputs {
        let shape = warmup
            .dims
            .get(&spec.name)
            .cloned()
            .unwrap_or_else(|| guessed_shape(spec, batched, spatial));
        let value = warmup.fill.get(&spec.name).copied().unwrap_or(1.0);
        let tensor = if warmup.random.contains(&spec.name) {
            random_tensor(spec.dtype, shape.clone())
        } else {
            Tensor::filled(spec.dtype, shape.clone(), value).map_err(|e| e.to_string())
        }
        .map_err(|e| format!("input '{}': {e}", spec.name))?;
        shapes.push((spec.name.clone(), shape));
        inputs.push(NamedTensor {
            name: spec.name.clone(),
            tensor,
        });
    }
    Ok((inputs, shapes))
}

/// The inputs the thread count is measured on: the warm-up's, with dynamic spatial dimensions
/// at [`MEASURED_SPATIAL_SIZE`] instead, an image's size rather than the smallest that runs.
pub(super) fn measuring_inputs(
    model: &dyn LoadedModel,
    warmup: &Warmup,
    batched: bool,
) -> Option<Vec<NamedTensor>> {
    inputs_for(model, warmup, batched, MEASURED_SPATIAL_SIZE)
        .ok()
        .map(|(inputs, _)| inputs)
}

/// Runs the model once before it serves, as `warmup` says; `batched` when axis 0 is the batch
/// axis. An error only for a configured run that failed.
/// Also returns the inputs of a run that succeeded (empty otherwise), for the thread count to
/// be measured on.
pub(super) fn warm_up(
    model: &mut dyn LoadedModel,
    warmup: &Warmup,
    batched: bool,
) -> Result<(WarmupOutcome, Vec<NamedTensor>), String> {
    if !warmup.enabled {
        return Ok((
            WarmupOutcome::Skipped("turned off ([warmup] enabled = false)".into()),
            Vec::new(),
        ));
    }
    let (inputs, shapes) = inputs_for(model, warmup, batched, GUESSED_SPATIAL_SIZE)?;
    let ran = model
        .run(&inputs)
        .map_err(|e| e.to_string())
        .and_then(|outputs| {
            let expected = model.signature().outputs.len();
            if outputs.len() == expected {
                Ok(())
            } else {
                Err(format!(
                    "it returned {} outputs for {expected} in the signature",
                    outputs.len()
                ))
            }
        });
    match (ran, warmup.configured) {
        (Ok(()), true) => Ok((WarmupOutcome::Configured, inputs)),
        (Ok(()), false) => Ok((WarmupOutcome::Synthetic(shapes), inputs)),
        (Err(error), true) => Err(error),
        (Err(error), false) => Ok((
            WarmupOutcome::Skipped(format!(
                "the synthetic run on guessed shapes failed ({error}); give the shapes in \
                 [warmup] or Triton's model_warmup to warm it up"
            )),
            Vec::new(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dims: &[i64]) -> TensorSpec {
        TensorSpec {
            name: "x".into(),
            dtype: DataType::Fp32,
            dims: dims.to_vec(),
        }
    }

    #[test]
    fn guessed_shapes_keep_feature_maps_large_enough_to_meet() {
        assert_eq!(
            guessed_shape(&spec(&[-1, 3, -1, -1]), true, 64),
            [1, 3, 64, 64]
        );
        assert_eq!(guessed_shape(&spec(&[-1, 64]), true, 64), [1, 64]);
        assert_eq!(guessed_shape(&spec(&[-1, -1]), true, 64), [1, 1]);
        // Unbatched: the first dynamic dimension is a batch of another kind (a state's).
        assert_eq!(guessed_shape(&spec(&[2, -1, 128]), false, 64), [2, 1, 128]);
        assert_eq!(
            guessed_shape(&spec(&[-1, 3, -1, -1]), false, 64),
            [1, 3, 64, 64]
        );
    }

    #[test]
    fn outcomes_describe_themselves() {
        let synthetic = WarmupOutcome::Synthetic(vec![("images".into(), vec![1, 3, 64, 64])]);
        assert_eq!(
            synthetic.describe(),
            "synthetic inputs (images [1, 3, 64, 64])"
        );
        assert!(!synthetic.skipped());
        assert!(WarmupOutcome::Skipped("why".into()).skipped());
    }
}
