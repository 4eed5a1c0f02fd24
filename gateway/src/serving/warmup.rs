//! The warm-up run every replica makes before it takes traffic.

use std::collections::BTreeMap;

use switchyard_runtimes::{LoadedModel, NamedTensor, Tensor};

/// The warm-up run, resolved from a version's settings: before a replica is ready it runs once
/// on a synthetic input whose elements are all 1 (never 0, which can take shortcuts that leave
/// lazy initialisation for the first real request).
#[derive(Debug, Clone, PartialEq)]
pub struct Warmup {
    pub enabled: bool,
    /// Shapes for inputs with dynamic dimensions; by default every `-1` becomes 1.
    pub dims: BTreeMap<String, Vec<usize>>,
    /// The value an input is filled with instead of 1.
    pub fill: BTreeMap<String, f64>,
}

/// Runs the model once on inputs whose every element is 1 (or the configured fill), so that
/// lazy initialisation happens before the first request.
pub(super) fn warm_up(model: &mut dyn LoadedModel, warmup: &Warmup) -> Result<(), String> {
    let inputs = model
        .signature()
        .inputs
        .iter()
        .map(|spec| {
            let shape = match warmup.dims.get(&spec.name) {
                Some(dims) => dims.clone(),
                None => spec
                    .dims
                    .iter()
                    .map(|&d| usize::try_from(d).unwrap_or(1))
                    .collect(),
            };
            let value = warmup.fill.get(&spec.name).copied().unwrap_or(1.0);
            Tensor::filled(spec.dtype, shape, value)
                .map(|tensor| NamedTensor {
                    name: spec.name.clone(),
                    tensor,
                })
                .map_err(|e| format!("input '{}': {e}", spec.name))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = model.run(&inputs).map_err(|e| e.to_string())?;
    if outputs.len() != model.signature().outputs.len() {
        return Err(format!(
            "it returned {} outputs for {} in the signature",
            outputs.len(),
            model.signature().outputs.len()
        ));
    }
    Ok(())
}
