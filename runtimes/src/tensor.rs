use std::borrow::Cow;

use bytes::Bytes;
use half::{bf16, f16};

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
    #[error("a {dtype} tensor has no elements of type {wanted}")]
    WrongElementType {
        dtype: DataType,
        wanted: &'static str,
    },
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

    /// A tensor whose every element is `value`, converted to `dtype` (`BYTES` elements hold
    /// its decimal text). Used for synthetic warm-up inputs and initial states.
    pub fn filled(dtype: DataType, shape: Vec<usize>, value: f64) -> Result<Self, TensorError> {
        let count =
            element_count(&shape).ok_or_else(|| TensorError::ShapeOverflow(shape.clone()))?;
        Tensor::from_f64s(dtype, shape, &vec![value; count])
    }

    /// A tensor of `values` (one per element), each converted to `dtype` (`BYTES` elements hold
    /// the decimal text).
    pub fn from_f64s(
        dtype: DataType,
        shape: Vec<usize>,
        values: &[f64],
    ) -> Result<Self, TensorError> {
        fn convert<T: bytemuck::Pod>(values: &[f64], element: impl Fn(f64) -> T) -> Bytes {
            let elements: Vec<T> = values.iter().map(|&value| element(value)).collect();
            Bytes::from(bytemuck::cast_slice::<T, u8>(&elements).to_vec())
        }
        // `as` saturates, which is what a value out of a type's range should do.
        let data = match dtype {
            DataType::Bool => convert(values, |v| u8::from(v != 0.0)),
            DataType::Uint8 => convert(values, |v| v as u8),
            DataType::Uint16 => convert(values, |v| v as u16),
            DataType::Uint32 => convert(values, |v| v as u32),
            DataType::Uint64 => convert(values, |v| v as u64),
            DataType::Int8 => convert(values, |v| v as i8),
            DataType::Int16 => convert(values, |v| v as i16),
            DataType::Int32 => convert(values, |v| v as i32),
            DataType::Int64 => convert(values, |v| v as i64),
            DataType::Fp16 => convert(values, half::f16::from_f64),
            DataType::Bf16 => convert(values, half::bf16::from_f64),
            DataType::Fp32 => convert(values, |v| v as f32),
            DataType::Fp64 => convert(values, |v| v),
            DataType::Bytes => {
                let texts: Vec<String> = values.iter().map(f64::to_string).collect();
                return Tensor::from_byte_strings(shape, &texts);
            }
        };
        Tensor::new(dtype, shape, data)
    }

    /// A `BYTES` tensor from its elements.
    pub fn from_byte_strings<S: AsRef<[u8]>>(
        shape: Vec<usize>,
        elements: &[S],
    ) -> Result<Self, TensorError> {
        let total: usize = elements.iter().map(|e| 4 + e.as_ref().len()).sum();
        let mut data = Vec::with_capacity(total);
        for element in elements {
            push_bytes_element(&mut data, element.as_ref())?;
        }
        Tensor::new(DataType::Bytes, shape, Bytes::from(data))
    }

    /// The elements, typed by the tensor's datatype: borrowed when the bytes are aligned for
    /// the element type, copied otherwise (a tensor sliced out of a request body may start
    /// anywhere).
    pub fn view(&self) -> TensorView<'_> {
        let data = self.data.as_ref();
        match self.dtype {
            DataType::Bool => TensorView::Bool(data),
            DataType::Uint8 => TensorView::Uint8(data),
            DataType::Uint16 => TensorView::Uint16(cast(data)),
            DataType::Uint32 => TensorView::Uint32(cast(data)),
            DataType::Uint64 => TensorView::Uint64(cast(data)),
            DataType::Int8 => TensorView::Int8(cast(data)),
            DataType::Int16 => TensorView::Int16(cast(data)),
            DataType::Int32 => TensorView::Int32(cast(data)),
            DataType::Int64 => TensorView::Int64(cast(data)),
            DataType::Fp16 => TensorView::Fp16(cast(data)),
            DataType::Bf16 => TensorView::Bf16(cast(data)),
            DataType::Fp32 => TensorView::Fp32(cast(data)),
            DataType::Fp64 => TensorView::Fp64(cast(data)),
            // `new` checked every element's length.
            DataType::Bytes => {
                TensorView::Bytes(bytes_elements(data).filter_map(Result::ok).collect())
            }
        }
    }

    /// The elements as `T`, which must be the tensor's own element type.
    pub fn values<T: Element>(&self) -> Result<Cow<'_, [T]>, TensorError> {
        if !T::DATATYPES.contains(&self.dtype) {
            return Err(TensorError::WrongElementType {
                dtype: self.dtype,
                wanted: std::any::type_name::<T>(),
            });
        }
        Ok(cast(self.data.as_ref()))
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

/// Appends one `BYTES` element: its 4-byte little-endian length, then its bytes.
pub fn push_bytes_element(out: &mut Vec<u8>, element: &[u8]) -> Result<(), TensorError> {
    let length = u32::try_from(element.len())
        .map_err(|_| TensorError::MalformedBytes("element longer than 4 GiB"))?;
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(element);
    Ok(())
}

fn cast<T: bytemuck::Pod>(data: &[u8]) -> Cow<'_, [T]> {
    match bytemuck::try_cast_slice(data) {
        Ok(values) => Cow::Borrowed(values),
        Err(_) => Cow::Owned(bytemuck::pod_collect_to_vec(data)),
    }
}

/// A Rust type that holds the elements of some fixed-size datatypes.
pub trait Element: bytemuck::Pod {
    const DATATYPES: &'static [DataType];
}

macro_rules! element {
    ($t:ty, $($dtype:ident),+) => {
        impl Element for $t {
            const DATATYPES: &'static [DataType] = &[$(DataType::$dtype),+];
        }
    };
}
element!(u8, Uint8, Bool);
element!(u16, Uint16);
element!(u32, Uint32);
element!(u64, Uint64);
element!(i8, Int8);
element!(i16, Int16);
element!(i32, Int32);
element!(i64, Int64);
element!(f16, Fp16);
element!(bf16, Bf16);
element!(f32, Fp32);
element!(f64, Fp64);

/// A tensor's elements by datatype (see [`Tensor::view`]); `Bool` holds 0 or 1 per element.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorView<'a> {
    Bool(&'a [u8]),
    Uint8(&'a [u8]),
    Uint16(Cow<'a, [u16]>),
    Uint32(Cow<'a, [u32]>),
    Uint64(Cow<'a, [u64]>),
    Int8(Cow<'a, [i8]>),
    Int16(Cow<'a, [i16]>),
    Int32(Cow<'a, [i32]>),
    Int64(Cow<'a, [i64]>),
    Fp16(Cow<'a, [f16]>),
    Bf16(Cow<'a, [bf16]>),
    Fp32(Cow<'a, [f32]>),
    Fp64(Cow<'a, [f64]>),
    Bytes(Vec<&'a [u8]>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_are_typed_and_survive_misalignment() {
        let values = [1.5f32, -2.0, 3.25];
        let tensor = Tensor::from_slice(DataType::Fp32, vec![3], &values).unwrap();
        assert_eq!(tensor.view(), TensorView::Fp32(Cow::Borrowed(&values[..])));
        assert_eq!(&*tensor.values::<f32>().unwrap(), &values);
        assert!(tensor.values::<i32>().is_err());
        // One byte in: the f32s are no longer aligned, and are copied out.
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(bytemuck::cast_slice(&values));
        let data = Bytes::from(shifted).slice(1..);
        let unaligned = Tensor::new(DataType::Fp32, vec![3], data).unwrap();
        assert_eq!(&*unaligned.values::<f32>().unwrap(), &values);
        let strings = Tensor::from_byte_strings(vec![2], &["ab", ""]).unwrap();
        assert_eq!(
            strings.view(),
            TensorView::Bytes(vec![b"ab".as_slice(), b"".as_slice()])
        );
    }

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
    fn filled_tensors_hold_the_value() {
        let ints = Tensor::filled(DataType::Int64, vec![2], 16000.0).unwrap();
        assert_eq!(bytemuck::cast_slice::<u8, i64>(ints.data()), [16000, 16000]);
        let halves = Tensor::filled(DataType::Fp16, vec![1, 3], 1.0).unwrap();
        assert_eq!(halves.data().len(), 6);
        assert_eq!(
            bytemuck::cast_slice::<u8, half::f16>(halves.data())[2],
            half::f16::ONE
        );
        let flags = Tensor::filled(DataType::Bool, vec![3], 1.0).unwrap();
        assert_eq!(flags.data().as_ref(), [1, 1, 1]);
        let text = Tensor::filled(DataType::Bytes, vec![2], 1.0).unwrap();
        assert_eq!(text.data().as_ref(), b"\x01\0\0\x001\x01\0\0\x001");
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
