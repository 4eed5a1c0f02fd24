//! Sequence batching: calls of different sequences of one version joined into one model call,
//! each tensor along its own axis (silero-vad's audio along axis 0, its recurrent state along
//! axis 1), and the outputs cut back per call. Inputs without an axis (a sampling rate) must be
//! equal in every call joined; they are passed once.

use std::time::Duration;

use bytes::Bytes;
use switchyard_runtimes::{NamedTensor, Tensor};

use crate::error::GatewayError;

/// How the calls of a version's sequences join: the axis of each input and output.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinAxes {
    pub inputs: Vec<(String, usize)>,
    pub outputs: Vec<(String, usize)>,
    /// The most calls joined into one model call; 1 runs each alone.
    pub max_calls: usize,
    /// How long the first call waits for the others' when their sequences are open.
    pub max_delay: Duration,
}

impl JoinAxes {
    pub fn input_axis(&self, name: &str) -> Option<usize> {
        axis_of(&self.inputs, name)
    }

    pub fn output_axis(&self, name: &str) -> Option<usize> {
        axis_of(&self.outputs, name)
    }

    /// A call's extent along the join: the size of its first joined input along its axis.
    pub(super) fn extent(&self, inputs: &[NamedTensor]) -> usize {
        inputs
            .iter()
            .find_map(|input| {
                let axis = self.input_axis(&input.name)?;
                input.tensor.shape().get(axis).copied()
            })
            .unwrap_or(1)
    }

    /// Whether every joined input of a call has the same extent along its axis: otherwise its
    /// outputs could not be cut back by one extent.
    fn consistent(&self, inputs: &[NamedTensor]) -> bool {
        let mut extents = inputs.iter().filter_map(|input| {
            let axis = self.input_axis(&input.name)?;
            Some(input.tensor.shape().get(axis).copied())
        });
        match extents.next() {
            None => true,
            Some(first) => first.is_some() && extents.all(|extent| extent == first),
        }
    }

    /// Whether two calls can share a model call: each is consistent, joined inputs agree on
    /// every dimension but their axis, and the others are equal, element for element.
    pub(super) fn joinable(&self, first: &[NamedTensor], other: &[NamedTensor]) -> bool {
        self.consistent(first)
            && self.consistent(other)
            && first.len() == other.len()
            && first.iter().all(|input| {
                let Some(theirs) = other.iter().find(|o| o.name == input.name) else {
                    return false;
                };
                let (mine, theirs) = (&input.tensor, &theirs.tensor);
                if mine.dtype() != theirs.dtype() || mine.dtype().element_size().is_none() {
                    return false;
                }
                match self.input_axis(&input.name) {
                    Some(axis) => {
                        let (a, b) = (mine.shape(), theirs.shape());
                        a.len() == b.len()
                            && axis < a.len()
                            && a.iter()
                                .zip(b)
                                .enumerate()
                                .all(|(dim, (x, y))| dim == axis || x == y)
                    }
                    None => mine.shape() == theirs.shape() && mine.data() == theirs.data(),
                }
            })
    }
}

fn axis_of(axes: &[(String, usize)], name: &str) -> Option<usize> {
    axes.iter()
        .find(|(input, _)| input == name)
        .map(|(_, axis)| *axis)
}

/// Bytes before the axis repeat `outer` times; each repetition holds `extent × inner` bytes.
fn layout(tensor: &Tensor, axis: usize) -> Result<(usize, usize), GatewayError> {
    let shape = tensor.shape();
    let element = tensor.dtype().element_size().ok_or_else(|| {
        GatewayError::internal("a tensor of variable-size elements cannot join a sequence batch")
    })?;
    if axis >= shape.len() {
        return Err(GatewayError::internal(format!(
            "a tensor of shape {shape:?} has no axis {axis} to join along"
        )));
    }
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product::<usize>() * element;
    Ok((outer, inner))
}

/// Joins the calls' inputs: along its axis for a joined input, once for the others.
pub(super) fn join(
    calls: &[&[NamedTensor]],
    axes: &JoinAxes,
) -> Result<Vec<NamedTensor>, GatewayError> {
    let first = calls[0];
    first
        .iter()
        .map(|input| {
            let Some(axis) = axes.input_axis(&input.name) else {
                return Ok(input.clone());
            };
            let parts: Vec<&Tensor> = calls
                .iter()
                .map(|call| {
                    call.iter()
                        .find(|other| other.name == input.name)
                        .map(|other| &other.tensor)
                        .ok_or_else(|| {
                            GatewayError::internal(format!("a joined call lacks '{}'", input.name))
                        })
                })
                .collect::<Result<_, _>>()?;
            let (outer, inner) = layout(&input.tensor, axis)?;
            let total: usize = parts.iter().map(|part| part.shape()[axis]).sum();
            let mut data = Vec::with_capacity(outer * total * inner);
            for repetition in 0..outer {
                for part in &parts {
                    let chunk = part.shape()[axis] * inner;
                    data.extend_from_slice(
                        &part.data()[repetition * chunk..(repetition + 1) * chunk],
                    );
                }
            }
            let mut shape = input.tensor.shape().to_vec();
            shape[axis] = total;
            let tensor = Tensor::new(input.tensor.dtype(), shape, Bytes::from(data))
                .map_err(|e| GatewayError::internal(format!("cannot join a batch: {e}")))?;
            Ok(NamedTensor {
                name: input.name.clone(),
                tensor,
            })
        })
        .collect()
}

/// Cuts each output along its axis into pieces of the calls' extents, in call order. With
/// nothing before the axis a piece is a slice of the output's buffer; otherwise it is copied.
pub(super) fn cut(
    outputs: Vec<NamedTensor>,
    extents: &[usize],
    axes: &JoinAxes,
) -> Result<Vec<Vec<NamedTensor>>, GatewayError> {
    let total: usize = extents.iter().sum();
    let mut per_call: Vec<Vec<NamedTensor>> = extents
        .iter()
        .map(|_| Vec::with_capacity(outputs.len()))
        .collect();
    for output in outputs {
        let tensor = &output.tensor;
        let axis = axes.output_axis(&output.name).ok_or_else(|| {
            GatewayError::internal(format!(
                "output '{}' has no join axis in the model's [sequence] settings",
                output.name
            ))
        })?;
        let (outer, inner) = layout(tensor, axis)?;
        if tensor.shape()[axis] != total {
            return Err(GatewayError::internal(format!(
                "output '{}' has shape {:?}, not {total} along axis {axis}",
                output.name,
                tensor.shape()
            )));
        }
        let data = tensor.data();
        let mut start = 0;
        for (extent, outputs) in extents.iter().zip(per_call.iter_mut()) {
            let piece = if outer == 1 {
                data.slice(start * inner..(start + extent) * inner)
            } else {
                let mut copied = Vec::with_capacity(outer * extent * inner);
                for repetition in 0..outer {
                    let base = repetition * total * inner + start * inner;
                    copied.extend_from_slice(&data[base..base + extent * inner]);
                }
                Bytes::from(copied)
            };
            let mut shape = tensor.shape().to_vec();
            shape[axis] = *extent;
            let piece = Tensor::new(tensor.dtype(), shape, piece)
                .map_err(|e| GatewayError::internal(format!("cannot cut a batch: {e}")))?;
            outputs.push(NamedTensor {
                name: output.name.clone(),
                tensor: piece,
            });
            start += extent;
        }
    }
    Ok(per_call)
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_runtimes::DataType;

    fn f32_tensor(name: &str, shape: Vec<usize>, values: &[f32]) -> NamedTensor {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        NamedTensor {
            name: name.into(),
            tensor: Tensor::new(DataType::Fp32, shape, bytes.into()).expect("tensor"),
        }
    }

    fn values(tensor: &Tensor) -> Vec<f32> {
        tensor
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    fn axes() -> JoinAxes {
        JoinAxes {
            inputs: vec![("x".into(), 0), ("state".into(), 1)],
            outputs: vec![("y".into(), 0), ("stateN".into(), 1)],
            max_calls: 8,
            max_delay: Duration::ZERO,
        }
    }

    #[test]
    fn joins_each_tensor_along_its_axis_and_cuts_back() {
        // Two calls: x [1, 2], state [2, 1, 2] (batch on axis 1), sr shared.
        let a = vec![
            f32_tensor("x", vec![1, 2], &[1.0, 2.0]),
            f32_tensor("state", vec![2, 1, 2], &[10.0, 11.0, 12.0, 13.0]),
            f32_tensor("sr", vec![], &[16.0]),
        ];
        let b = vec![
            f32_tensor("x", vec![1, 2], &[3.0, 4.0]),
            f32_tensor("state", vec![2, 1, 2], &[20.0, 21.0, 22.0, 23.0]),
            f32_tensor("sr", vec![], &[16.0]),
        ];
        let axes = axes();
        assert!(axes.joinable(&a, &b));
        let joined = join(&[&a, &b], &axes).expect("join");
        assert_eq!(joined[0].tensor.shape(), &[2, 2]);
        assert_eq!(values(&joined[0].tensor), [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(joined[1].tensor.shape(), &[2, 2, 2]);
        assert_eq!(
            values(&joined[1].tensor),
            [10.0, 11.0, 20.0, 21.0, 12.0, 13.0, 22.0, 23.0]
        );
        assert_eq!(joined[2].tensor.shape(), &[] as &[usize]);
        // The model's outputs as if it were the identity on x and state.
        let outputs = vec![
            NamedTensor {
                name: "y".into(),
                tensor: joined[0].tensor.clone(),
            },
            NamedTensor {
                name: "stateN".into(),
                tensor: joined[1].tensor.clone(),
            },
        ];
        let per_call = cut(outputs, &[1, 1], &axes).expect("cut");
        assert_eq!(values(&per_call[0][0].tensor), [1.0, 2.0]);
        assert_eq!(values(&per_call[1][0].tensor), [3.0, 4.0]);
        assert_eq!(per_call[0][1].tensor.shape(), &[2, 1, 2]);
        assert_eq!(values(&per_call[0][1].tensor), [10.0, 11.0, 12.0, 13.0]);
        assert_eq!(values(&per_call[1][1].tensor), [20.0, 21.0, 22.0, 23.0]);
    }

    #[test]
    fn calls_that_differ_in_a_shared_input_do_not_join() {
        let a = vec![
            f32_tensor("x", vec![1, 2], &[1.0, 2.0]),
            f32_tensor("sr", vec![], &[16.0]),
        ];
        let other_rate = vec![
            f32_tensor("x", vec![1, 2], &[3.0, 4.0]),
            f32_tensor("sr", vec![], &[8.0]),
        ];
        let other_width = vec![
            f32_tensor("x", vec![1, 3], &[3.0, 4.0, 5.0]),
            f32_tensor("sr", vec![], &[16.0]),
        ];
        // Two rows of x beside a state of one sequence: its outputs could not be cut back.
        let inconsistent = vec![
            f32_tensor("x", vec![2, 2], &[1.0, 2.0, 3.0, 4.0]),
            f32_tensor("state", vec![2, 1, 2], &[0.0; 4]),
            f32_tensor("sr", vec![], &[16.0]),
        ];
        let fine = vec![
            f32_tensor("x", vec![1, 2], &[1.0, 2.0]),
            f32_tensor("state", vec![2, 1, 2], &[0.0; 4]),
            f32_tensor("sr", vec![], &[16.0]),
        ];
        assert!(!axes().joinable(&fine, &inconsistent));
        assert!(axes().joinable(&fine, &fine));
        assert!(!axes().joinable(&a, &other_rate));
        assert!(!axes().joinable(&a, &other_width));
        assert!(axes().joinable(&a, &a));
    }
}
