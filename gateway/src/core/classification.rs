//! Triton's classification extension: an output asked for with `classification: k` is answered
//! as its k highest values, each as the text `value:index` or `value:index:label` (labels from
//! the output's `label_filename`), highest first, per batch row.

use std::cmp::Ordering;

use switchyard_runtimes::{DataType, Tensor, TensorView};

use crate::error::GatewayError;

/// `tensor` as its top `k` classes: a BYTES tensor of shape [rows, k'] when `batched` (axis 0
/// is the batch), else [k'], where k' is k or the number of classes if fewer.
pub fn classify(
    name: &str,
    tensor: &Tensor,
    k: usize,
    batched: bool,
    labels: Option<&[String]>,
) -> Result<Tensor, GatewayError> {
    let values = numbers(tensor).ok_or_else(|| {
        GatewayError::invalid(format!(
            "output '{name}' is {}: classification needs numbers",
            tensor.dtype()
        ))
    })?;
    let rows = if batched {
        tensor.shape().first().copied().unwrap_or(1).max(1)
    } else {
        1
    };
    let per_row = if values.is_empty() {
        0
    } else {
        values.len() / rows
    };
    let keep = k.min(per_row);
    let integer = !matches!(
        tensor.dtype(),
        DataType::Fp16 | DataType::Bf16 | DataType::Fp32 | DataType::Fp64
    );
    let mut classes = Vec::with_capacity(rows * keep);
    for row in values.chunks(per_row.max(1)).take(rows) {
        let mut order: Vec<usize> = (0..row.len()).collect();
        // Highest first; among equals, the lower index first, as a stable sort keeps them.
        order.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).unwrap_or(Ordering::Equal));
        for &index in order.iter().take(keep) {
            let value = if integer {
                format!("{}", row[index] as i64)
            } else {
                format!("{:.6}", row[index])
            };
            classes.push(match labels.and_then(|labels| labels.get(index)) {
                Some(label) => format!("{value}:{index}:{label}"),
                None => format!("{value}:{index}"),
            });
        }
    }
    let shape = if batched {
        vec![rows, keep]
    } else {
        vec![keep]
    };
    Tensor::from_byte_strings(shape, &classes)
        .map_err(|e| GatewayError::internal(format!("output '{name}': {e}")))
}

fn numbers(tensor: &Tensor) -> Option<Vec<f64>> {
    fn all<T: Copy>(values: &[T], into: impl Fn(T) -> f64) -> Vec<f64> {
        values.iter().map(|&v| into(v)).collect()
    }
    Some(match tensor.view() {
        TensorView::Bool(v) => all(v, f64::from),
        TensorView::Uint8(v) => all(v, f64::from),
        TensorView::Int8(v) => all(&v, f64::from),
        TensorView::Uint16(v) => all(&v, f64::from),
        TensorView::Int16(v) => all(&v, f64::from),
        TensorView::Uint32(v) => all(&v, f64::from),
        TensorView::Int32(v) => all(&v, f64::from),
        TensorView::Uint64(v) => all(&v, |x| x as f64),
        TensorView::Int64(v) => all(&v, |x| x as f64),
        TensorView::Fp16(v) => all(&v, |x| f64::from(x.to_f32())),
        TensorView::Bf16(v) => all(&v, |x| f64::from(x.to_f32())),
        TensorView::Fp32(v) => all(&v, f64::from),
        TensorView::Fp64(v) => all(&v, |x| x),
        TensorView::Bytes(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(tensor: &Tensor) -> Vec<String> {
        match tensor.view() {
            TensorView::Bytes(elements) => elements
                .iter()
                .map(|e| String::from_utf8_lossy(e).into_owned())
                .collect(),
            _ => panic!("not BYTES"),
        }
    }

    #[test]
    fn the_top_classes_come_first_with_their_labels() {
        let scores = Tensor::from_slice(
            DataType::Fp32,
            vec![2, 3],
            &[0.1f32, 0.7, 0.2, 0.5, 0.1, 0.4],
        )
        .expect("tensor");
        let labels = ["cat".to_owned(), "dog".to_owned(), "bird".to_owned()];
        let top = classify("y", &scores, 2, true, Some(&labels)).expect("classifies");
        assert_eq!(top.shape(), [2, 2]);
        assert_eq!(
            strings(&top),
            [
                "0.700000:1:dog",
                "0.200000:2:bird",
                "0.500000:0:cat",
                "0.400000:2:bird"
            ]
        );
        let counts = Tensor::from_slice(DataType::Int32, vec![3], &[3i32, 9, 1]).expect("tensor");
        let top = classify("y", &counts, 5, false, None).expect("classifies");
        assert_eq!(top.shape(), [3]);
        assert_eq!(strings(&top), ["9:1", "3:0", "1:2"]);
        let text = Tensor::from_byte_strings(vec![1], &["a"]).expect("tensor");
        assert!(classify("y", &text, 1, false, None).is_err());
    }
}
