//! A tensor's elements as the Open Inference Protocol's JSON `data`: a flat array of numbers,
//! booleans or strings. The JSON front answers with it, and the payload capture records with it.

use serde::ser::{Serialize, SerializeSeq, Serializer};
use switchyard_runtimes::{Tensor, TensorView};

/// A tensor's elements as a flat JSON array (`BYTES` elements as text, lossily).
pub struct TensorData<'a>(pub &'a Tensor);

impl Serialize for TensorData<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let tensor = self.0;
        let mut seq = serializer.serialize_seq(Some(tensor.element_count()))?;
        macro_rules! each {
            ($values:expr, |$v:ident| $value:expr) => {
                for $v in $values.iter() {
                    seq.serialize_element(&$value)?;
                }
            };
        }
        match tensor.view() {
            TensorView::Bool(v) => each!(v, |b| *b != 0),
            TensorView::Uint8(v) => each!(v, |x| x),
            TensorView::Int8(v) => each!(v, |x| x),
            TensorView::Uint16(v) => each!(v, |x| x),
            TensorView::Int16(v) => each!(v, |x| x),
            TensorView::Fp16(v) => each!(v, |x| x.to_f32()),
            TensorView::Bf16(v) => each!(v, |x| x.to_f32()),
            TensorView::Uint32(v) => each!(v, |x| x),
            TensorView::Int32(v) => each!(v, |x| x),
            TensorView::Fp32(v) => each!(v, |x| x),
            TensorView::Uint64(v) => each!(v, |x| x),
            TensorView::Int64(v) => each!(v, |x| x),
            TensorView::Fp64(v) => each!(v, |x| x),
            TensorView::Bytes(v) => each!(v, |e| String::from_utf8_lossy(e)),
        }
        seq.end()
    }
}
