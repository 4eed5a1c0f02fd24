//! How a replica groups queued requests into one model call: the batch bound a model's
//! signature allows, and joining inputs along the batch axis and splitting outputs back per
//! caller.

use std::time::Duration;

use bytes::Bytes;
use switchyard_runtimes::{NamedTensor, Signature, Tensor, bytes_elements};

use crate::error::GatewayError;
use crate::serving::worker::{Job, find_input};

/// Batch bound used when a model's inputs and outputs all start with a dynamic dimension and
/// its settings do not say otherwise.
pub const DEFAULT_MAX_BATCH_SIZE: usize = 64;

/// How a replica groups queued requests into one model call.
#[derive(Debug, Clone, PartialEq)]
pub struct Batching {
    /// Largest number of rows (along axis 0) in one call; 0 means the model has no batch axis
    /// and 1 that it has one but requests run one by one.
    pub max_batch_size: usize,
    /// The bound from the model's settings; `None` lets the model's signature decide.
    pub configured_max_batch_size: Option<usize>,
    /// How long the first request of a batch may wait for others; zero takes what is queued.
    pub max_queue_delay: Duration,
    /// Batch sizes at which a batch is sent at once.
    pub preferred_batch_sizes: Vec<usize>,
}

impl Batching {
    #[cfg(test)]
    pub(super) fn none() -> Batching {
        Batching {
            max_batch_size: 0,
            configured_max_batch_size: Some(0),
            max_queue_delay: Duration::ZERO,
            preferred_batch_sizes: Vec::new(),
        }
    }

    pub(super) fn enabled(&self) -> bool {
        self.max_batch_size > 1
    }

    /// Settles the batch bound once the model's signature is known: a configured bound needs
    /// every input and output to start with a dynamic dimension.
    pub(super) fn resolve(
        configured: Option<usize>,
        signature: &Signature,
    ) -> Result<usize, String> {
        let batch_axis = !signature.inputs.is_empty()
            && signature
                .inputs
                .iter()
                .chain(&signature.outputs)
                .all(|spec| spec.dims.first() == Some(&-1));
        match configured {
            None if batch_axis => Ok(DEFAULT_MAX_BATCH_SIZE),
            None | Some(0) => Ok(0),
            Some(size) if batch_axis => Ok(size),
            Some(size) => Err(format!(
                "max_batch_size = {size} needs every input and output to start with a dynamic batch \
                 dimension, which this model does not have; set max_batch_size = 0"
            )),
        }
    }
}

/// Joins the jobs' inputs along axis 0, in job order.
pub(super) fn concatenate(batch: &[Job], rows: usize) -> Result<Vec<NamedTensor>, GatewayError> {
    let first = &batch[0];
    first
        .inputs
        .iter()
        .map(|input| {
            let mut parts = Vec::with_capacity(batch.len());
            for job in batch {
                parts.push(find_input(job, &input.name).ok_or_else(|| {
                    GatewayError::internal(format!("batched request lacks input '{}'", input.name))
                })?);
            }
            let mut data = Vec::with_capacity(parts.iter().map(|t| t.data().len()).sum());
            for part in &parts {
                data.extend_from_slice(part.data());
            }
            let mut shape = input.tensor.shape().to_vec();
            shape[0] = rows;
            let tensor = Tensor::new(input.tensor.dtype(), shape, Bytes::from(data))
                .map_err(|e| GatewayError::internal(format!("cannot form a batch: {e}")))?;
            Ok(NamedTensor {
                name: input.name.clone(),
                tensor,
            })
        })
        .collect()
}

/// Cuts each output along axis 0 into the jobs' rows; the pieces share the output's buffer.
pub(super) fn split(
    outputs: Vec<NamedTensor>,
    batch: &[Job],
    rows: usize,
) -> Result<Vec<Vec<NamedTensor>>, GatewayError> {
    let mut per_job: Vec<Vec<NamedTensor>> = batch
        .iter()
        .map(|_| Vec::with_capacity(outputs.len()))
        .collect();
    for output in outputs {
        let tensor = &output.tensor;
        if tensor.shape().first() != Some(&rows) {
            return Err(GatewayError::internal(format!(
                "output '{}' has shape {:?}, not {rows} rows along the batch axis",
                output.name,
                tensor.shape()
            )));
        }
        let offsets = row_offsets(tensor, rows)?;
        let mut row = 0;
        for (job, outputs) in batch.iter().zip(per_job.iter_mut()) {
            let data = tensor.data().slice(offsets[row]..offsets[row + job.rows]);
            let mut shape = tensor.shape().to_vec();
            shape[0] = job.rows;
            let piece = Tensor::new(tensor.dtype(), shape, data)
                .map_err(|e| GatewayError::internal(format!("cannot split a batch: {e}")))?;
            outputs.push(NamedTensor {
                name: output.name.clone(),
                tensor: piece,
            });
            row += job.rows;
        }
    }
    Ok(per_job)
}

/// Byte offset of the start of each row, plus the end.
pub(super) fn row_offsets(tensor: &Tensor, rows: usize) -> Result<Vec<usize>, GatewayError> {
    let data = tensor.data();
    match tensor.dtype().element_size() {
        Some(_) => {
            let row_bytes = data.len() / rows.max(1);
            Ok((0..=rows).map(|row| row * row_bytes).collect())
        }
        None => {
            let per_row = tensor.element_count() / rows.max(1);
            let mut offsets = Vec::with_capacity(rows + 1);
            let mut offset = 0;
            for (index, element) in bytes_elements(data).enumerate() {
                if index % per_row.max(1) == 0 {
                    offsets.push(offset);
                }
                let element = element
                    .map_err(|e| GatewayError::internal(format!("malformed output: {e}")))?;
                offset += 4 + element.len();
            }
            offsets.resize(rows, offset);
            offsets.push(offset);
            Ok(offsets)
        }
    }
}
