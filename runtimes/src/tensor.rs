use bytes::Bytes;

use crate::DataType;

/// A dense tensor: element type, shape and little-endian element bytes.
///
/// The bytes are reference-counted ([`Bytes`]) so a tensor can point straight into a request
/// body or a protocol buffer without a copy.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    dtype: DataType,
    shape: Vec<usize>,
    data: Bytes,
}

/// A tensor with the name of the model input or output it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub tensor: Tensor,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TensorError {
    #[error("shape {0:?} has more elements than fit in memory")]
    ShapeOverflow(Vec<usize>),
    #[error("shape {shape:?} of {dtype} needs {expected} bytes, got {actual}")]
    LengthMismatch {
        dtype: DataType,
        shape: Vec<usize>,
        expected: usize,
        actual: usize,
    },
    #[error("shape {shape:?} needs {expected} BYTES elements, got {actual}")]
    ElementCountMismatch {
        shape: Vec<usize>,
        expected: usize,
        actual: usize,
    },
    #[error("malformed BYTES data: {0}")]
    MalformedBytes(&'static str),
}

/// The number of elements of a shape, or `None` if it overflows.
pub fn element_count(shape: &[usize]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |count, &dim| count.checked_mul(dim))
}

/// Iterates over the elements of `BYTES` data (4-byte little-endian length, then the bytes).
pub fn bytes_elements(data: &[u8]) -> impl Iterator<Item = Result<&[u8], TensorError>> {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let Some((length, tail)) = rest.split_first_chunk::<4>() else {
            rest = &[];
            return Some(Err(TensorError::MalformedBytes("truncated element length")));
        };
        let length = u32::from_le_bytes(*length) as usize;
        if tail.len() < length {
            rest = &[];
            return Some(Err(TensorError::MalformedBytes(
                "element length runs past the end of the data",
            )));
        }
        let (element, tail) = tail.split_at(length);
        rest = tail;
        Some(Ok(element))
    })
}

impl Tensor {
    /// Builds a tensor, checking that `data` holds exactly the elements that `shape` asks for.
    pub fn new(dtype: DataType, shape: Vec<usize>, data: Bytes) -> Result<Self, TensorError> {
        let count =
            element_count(&shape).ok_or_else(|| TensorError::ShapeOverflow(shape.clone()))?;
        match dtype.element_size() {
            Some(size) => {
                let expected = count
                    .checked_mul(size)
                    .ok_or_else(|| TensorError::ShapeOverflow(shape.clone()))?;
                if data.len() != expected {
                    return Err(TensorError::LengthMismatch {
                        dtype,
                        shape,
                        expected,
                        actual: data.len(),
                    });
                }
            }
            None => {
                let mut actual = 0usize;
                for element in bytes_elements(&data) {
                    element?;
                    actual += 1;
                }
                if actual != count {
                    return Err(TensorError::ElementCountMismatch {
                        shape,
                        expected: count,
                        actual,
                    });
                }
            }
        }
        Ok(Tensor { dtype, shape, data })
    }

    /// A tensor of plain-old-data elements, copied into little-endian bytes.
    pub fn from_slice<T: bytemuck::Pod>(
        dtype: DataType,
        shape: Vec<usize>,
        values: &[T],
    ) -> Result<Self, TensorError> {
        Tensor::new(
            dtype,
            shape,
            Bytes::copy_from_slice(bytemuck::cast_slice(values)),
        )
    }

    /// A `BYTES` tensor from its elements.
    pub fn from_byte_strings<S: AsRef<[u8]>>(
        shape: Vec<usize>,
        elements: &[S],
    ) -> Result<Self, TensorError> {
        let total: usize = elements.iter().map(|e| 4 + e.as_ref().len()).sum();
        let mut data = Vec::with_capacity(total);
        for element in elements {
            let element = element.as_ref();
            let length = u32::try_from(element.len())
                .map_err(|_| TensorError::MalformedBytes("element longer than 4 GiB"))?;
            data.extend_from_slice(&length.to_le_bytes());
            data.extend_from_slice(element);
        }
        Tensor::new(DataType::Bytes, shape, Bytes::from(data))
    }

    pub fn dtype(&self) -> DataType {
        self.dtype
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The little-endian element bytes.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    pub fn element_count(&self) -> usize {
        // `new` checked that the count fits.
        element_count(&self.shape).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_byte_length_against_shape() {
        let ok = Tensor::new(DataType::Fp32, vec![2, 3], Bytes::from(vec![0u8; 24]));
        assert!(ok.is_ok());
        let short = Tensor::new(DataType::Fp32, vec![2, 3], Bytes::from(vec![0u8; 20]));
        assert!(matches!(
            short,
            Err(TensorError::LengthMismatch {
                expected: 24,
                actual: 20,
                ..
            })
        ));
    }

    #[test]
    fn scalar_has_one_element() {
        let scalar = Tensor::from_slice(DataType::Int64, vec![], &[16000i64]);
        assert_eq!(scalar.map(|t| t.element_count()), Ok(1));
    }

    #[test]
    fn overflowing_shape_is_an_error() {
        let huge = Tensor::new(DataType::Fp64, vec![usize::MAX, 2], Bytes::new());
        assert!(matches!(huge, Err(TensorError::ShapeOverflow(_))));
    }

    #[test]
    fn byte_strings_round_trip() {
        let tensor = Tensor::from_byte_strings(vec![3], &["a", "", "xyz"]);
        let tensor = tensor.expect("valid BYTES tensor");
        let elements: Vec<&[u8]> = bytes_elements(tensor.data())
            .collect::<Result<_, _>>()
            .expect("well-formed");
        assert_eq!(elements, vec![&b"a"[..], b"", b"xyz"]);
    }

    #[test]
    fn malformed_byte_strings_are_rejected() {
        let truncated = Bytes::from_static(&[5, 0, 0, 0, b'a']);
        assert!(matches!(
            Tensor::new(DataType::Bytes, vec![1], truncated),
            Err(TensorError::MalformedBytes(_))
        ));
        let wrong_count = Tensor::from_byte_strings(vec![3], &["a", "b"]);
        assert!(matches!(
            wrong_count,
            Err(TensorError::ElementCountMismatch { .. })
        ));
    }
}
