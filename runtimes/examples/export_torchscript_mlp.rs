//! Writes the TorchScript twin of an MLP built by scripts/build_mlp.py: the same layers with
//! exactly the weights in its weights.f32, traced with libtorch and saved as model.pt.
//!
//!     export_torchscript_mlp WEIGHTS_F32 SIZES OUT_PT      (SIZES as in build_mlp.py: 64,256,10)
//!
//! scripts/setup runs it to produce `mlp` version 2 from version 1.

use std::path::PathBuf;

use anyhow::{Context, bail};
use tch::{CModule, Device, Kind, Tensor};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [weights, sizes, out] = args.as_slice() else {
        bail!("usage: export_torchscript_mlp WEIGHTS_F32 SIZES OUT_PT");
    };
    let sizes: Vec<i64> = sizes
        .split(',')
        .map(|size| {
            size.parse()
                .context("SIZES must be comma-separated integers")
        })
        .collect::<anyhow::Result<_>>()?;
    if sizes.len() < 2 {
        bail!("SIZES needs at least an input and an output size");
    }
    let bytes = std::fs::read(weights).with_context(|| format!("cannot read {weights}"))?;
    let floats: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
        .collect();
    let mut layers = Vec::new();
    let mut offset = 0usize;
    for pair in sizes.windows(2) {
        let (fan_in, fan_out) = (pair[0], pair[1]);
        let w_len = (fan_in * fan_out) as usize;
        let b_len = fan_out as usize;
        let end = offset + w_len + b_len;
        if end > floats.len() {
            bail!(
                "{weights} holds {} floats, fewer than SIZES needs",
                floats.len()
            );
        }
        let w = Tensor::from_slice(&floats[offset..offset + w_len]).reshape([fan_in, fan_out]);
        let b = Tensor::from_slice(&floats[offset + w_len..end]);
        layers.push((w, b));
        offset = end;
    }
    if offset != floats.len() {
        bail!(
            "{weights} holds {} floats, more than SIZES needs ({offset})",
            floats.len()
        );
    }
    let example = Tensor::ones([2, sizes[0]], (Kind::Float, Device::Cpu));
    let last = layers.len() - 1;
    let module = CModule::create_by_tracing("Mlp", "forward", &[example], &mut |inputs| {
        let mut hidden = inputs[0].shallow_clone();
        for (index, (w, b)) in layers.iter().enumerate() {
            hidden = hidden.matmul(w) + b;
            if index != last {
                hidden = hidden.relu();
            }
        }
        vec![hidden]
    })?;
    let out = PathBuf::from(out);
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    module.save(&out)?;
    println!("built {}", out.display());
    Ok(())
}
