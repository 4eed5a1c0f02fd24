//! A scan of a `ModelInferRequest` in its wire format, before prost decodes it. Prost turns a
//! 2-byte empty `inputs` entry into a struct of about 300 bytes, and a one-byte varint into an
//! 8-byte `i64`, so a small message can ask for a lot of memory. The scan walks the message
//! once without allocating, refuses counts past the limits, and says how much memory decoding
//! will take, so that the caller can charge it against the in-flight byte budget first.

use crate::core::request::{MAX_DIMS, MAX_PARAMETERS, MAX_TENSORS};
use crate::error::{ErrorKind, GatewayError};

/// How much a request may hold; past any of these it is refused before it is decoded.
#[derive(Debug, Clone, Copy)]
pub struct ScanLimits {
    /// Inputs, outputs and raw input contents, each.
    pub max_tensors: usize,
    /// Parameters of the request, and of each input and output.
    pub max_parameters: usize,
    /// Dimensions of one input's shape.
    pub max_dims: usize,
}

impl Default for ScanLimits {
    fn default() -> Self {
        ScanLimits {
            max_tensors: MAX_TENSORS,
            max_parameters: MAX_PARAMETERS,
            max_dims: MAX_DIMS,
        }
    }
}

/// What decoding the message will allocate, estimated from above.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    pub decoded_bytes: usize,
}

// What prost allocates per decoded element, rounded up: the structs, a map entry with its key
// and value, a `Bytes` handle.
const TENSOR_STRUCT: usize = 320;
const PARAMETER_ENTRY: usize = 128;
const BYTES_HANDLE: usize = 32;

/// Scans the gRPC frames of a request body: each a compressed flag, a 4-byte big-endian length
/// and a message. A compressed message is left to tonic, which refuses it unread.
pub fn scan_frames(body: &[u8], limits: &ScanLimits) -> Result<Scan, GatewayError> {
    let mut rest = body;
    let mut total = Scan::default();
    while !rest.is_empty() {
        let Some((header, tail)) = rest.split_first_chunk::<5>() else {
            return Err(malformed("truncated gRPC frame header"));
        };
        let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if length > tail.len() {
            return Err(malformed("the gRPC frame is longer than the body"));
        }
        let (message, tail) = tail.split_at(length);
        rest = tail;
        if header[0] == 0 {
            let scan = scan_model_infer(message, limits)?;
            total.decoded_bytes = total.decoded_bytes.saturating_add(scan.decoded_bytes);
        }
    }
    Ok(total)
}

/// Scans one `ModelInferRequest` message (without the gRPC frame header).
pub fn scan_model_infer(message: &[u8], limits: &ScanLimits) -> Result<Scan, GatewayError> {
    let mut scan = Scan::default();
    let (mut inputs, mut outputs, mut raw, mut parameters) = (0usize, 0usize, 0usize, 0usize);
    for field in Fields::new(message) {
        let field = field?;
        match (field.number, field.value) {
            (4, Value::Bytes(_)) => parameters += 1,
            (5, Value::Bytes(input)) => {
                inputs += 1;
                scan.decoded_bytes += TENSOR_STRUCT + scan_input(input, limits)?;
            }
            (6, Value::Bytes(output)) => {
                outputs += 1;
                scan.decoded_bytes += TENSOR_STRUCT + scan_output(output, limits)?;
            }
            (7, Value::Bytes(_)) => {
                raw += 1;
                scan.decoded_bytes += BYTES_HANDLE;
            }
            (_, Value::Bytes(bytes)) => scan.decoded_bytes += bytes.len(),
            _ => {}
        }
    }
    check_count("inputs", inputs, limits.max_tensors)?;
    check_count("outputs", outputs, limits.max_tensors)?;
    check_count("raw_input_contents", raw, limits.max_tensors)?;
    check_count("parameters", parameters, limits.max_parameters)?;
    scan.decoded_bytes += parameters * PARAMETER_ENTRY;
    Ok(scan)
}

fn scan_input(input: &[u8], limits: &ScanLimits) -> Result<usize, GatewayError> {
    let (mut decoded, mut dims, mut parameters) = (0usize, 0usize, 0usize);
    for field in Fields::new(input) {
        let field = field?;
        match (field.number, field.value) {
            // `shape`, packed or not.
            (3, Value::Bytes(packed)) => dims += count_varints(packed)?,
            (3, Value::Varint) => dims += 1,
            (4, Value::Bytes(_)) => parameters += 1,
            (5, Value::Bytes(contents)) => decoded += scan_contents(contents)?,
            (_, Value::Bytes(bytes)) => decoded += bytes.len(),
            _ => {}
        }
    }
    check_count("an input's shape dimensions", dims, limits.max_dims)?;
    check_count("an input's parameters", parameters, limits.max_parameters)?;
    Ok(decoded + dims * 8 + parameters * PARAMETER_ENTRY)
}

fn scan_output(output: &[u8], limits: &ScanLimits) -> Result<usize, GatewayError> {
    let (mut decoded, mut parameters) = (0usize, 0usize);
    for field in Fields::new(output) {
        let field = field?;
        match (field.number, field.value) {
            (2, Value::Bytes(_)) => parameters += 1,
            (_, Value::Bytes(bytes)) => decoded += bytes.len(),
            _ => {}
        }
    }
    check_count("an output's parameters", parameters, limits.max_parameters)?;
    Ok(decoded + parameters * PARAMETER_ENTRY)
}

/// `InferTensorContents`: the decoded width of each element of each typed field.
fn scan_contents(contents: &[u8]) -> Result<usize, GatewayError> {
    let mut decoded = 0usize;
    for field in Fields::new(contents) {
        let field = field?;
        let width = match field.number {
            1 => 1,         // bool
            2 | 4 | 6 => 4, // int32, uint32, fp32
            3 | 5 | 7 => 8, // int64, uint64, fp64
            8 => {
                if let Value::Bytes(element) = field.value {
                    decoded += BYTES_HANDLE + element.len();
                }
                continue;
            }
            _ => continue,
        };
        let elements = match field.value {
            Value::Bytes(packed) if matches!(field.number, 6 | 7) => packed.len() / width,
            Value::Bytes(packed) => count_varints(packed)?,
            Value::Varint | Value::Fixed32 | Value::Fixed64 => 1,
        };
        decoded = decoded.saturating_add(elements.saturating_mul(width));
    }
    Ok(decoded)
}

fn check_count(what: &str, count: usize, limit: usize) -> Result<(), GatewayError> {
    if count > limit {
        return Err(GatewayError::invalid(format!(
            "the request has {count} {what}; the limit is {limit}"
        )));
    }
    Ok(())
}

fn malformed(what: &str) -> GatewayError {
    GatewayError::new(
        ErrorKind::InvalidArgument,
        format!("malformed ModelInferRequest: {what}"),
    )
}

enum Value<'m> {
    Varint,
    Fixed64,
    Fixed32,
    Bytes(&'m [u8]),
}

struct Field<'m> {
    number: u64,
    value: Value<'m>,
}

/// The fields of one protobuf message, in wire order.
struct Fields<'m> {
    rest: &'m [u8],
}

impl<'m> Fields<'m> {
    fn new(message: &'m [u8]) -> Self {
        Fields { rest: message }
    }

    fn field(&mut self) -> Result<Field<'m>, GatewayError> {
        let tag = read_varint(&mut self.rest)?;
        let number = tag >> 3;
        let value = match tag & 7 {
            0 => {
                read_varint(&mut self.rest)?;
                Value::Varint
            }
            1 => {
                self.rest = self
                    .rest
                    .get(8..)
                    .ok_or_else(|| malformed("truncated fixed64"))?;
                Value::Fixed64
            }
            2 => {
                let length = usize::try_from(read_varint(&mut self.rest)?)
                    .map_err(|_| malformed("length out of range"))?;
                if length > self.rest.len() {
                    return Err(malformed("a field runs past the end of the message"));
                }
                let (bytes, rest) = self.rest.split_at(length);
                self.rest = rest;
                Value::Bytes(bytes)
            }
            5 => {
                self.rest = self
                    .rest
                    .get(4..)
                    .ok_or_else(|| malformed("truncated fixed32"))?;
                Value::Fixed32
            }
            other => return Err(malformed(&format!("unsupported wire type {other}"))),
        };
        Ok(Field { number, value })
    }
}

impl<'m> Iterator for Fields<'m> {
    type Item = Result<Field<'m>, GatewayError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let field = self.field();
        if field.is_err() {
            self.rest = &[];
        }
        Some(field)
    }
}

fn read_varint(bytes: &mut &[u8]) -> Result<u64, GatewayError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes
            .split_first()
            .ok_or_else(|| malformed("truncated varint"))?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(malformed("varint longer than 10 bytes"))
}

/// The varints in a packed field: the bytes without their continuation bit.
fn count_varints(packed: &[u8]) -> Result<usize, GatewayError> {
    if packed.last().is_some_and(|byte| byte & 0x80 != 0) {
        return Err(malformed("truncated packed varints"));
    }
    Ok(packed.iter().filter(|byte| *byte & 0x80 == 0).count())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::grpc::pb;
    use prost::Message;

    fn input(name: &str, shape: Vec<i64>) -> pb::model_infer_request::InferInputTensor {
        pb::model_infer_request::InferInputTensor {
            name: name.into(),
            datatype: "FP32".into(),
            shape,
            ..Default::default()
        }
    }

    #[test]
    fn a_well_formed_request_passes_with_its_decoded_size() {
        let request = pb::ModelInferRequest {
            model_name: "mlp".into(),
            inputs: vec![input("x", vec![1, 64])],
            raw_input_contents: vec![vec![0u8; 256].into()],
            ..Default::default()
        };
        let scan = scan_model_infer(&request.encode_to_vec(), &ScanLimits::default()).unwrap();
        assert!(scan.decoded_bytes >= TENSOR_STRUCT, "{scan:?}");
        assert!(scan.decoded_bytes < 2048, "{scan:?}");
    }

    #[test]
    fn a_million_empty_inputs_are_refused_before_decoding() {
        // Each entry is a tag and a zero length: 2 bytes on the wire.
        let message: Vec<u8> = std::iter::repeat_n([0x2a, 0x00], 1_000_000)
            .flatten()
            .collect();
        let refused = scan_model_infer(&message, &ScanLimits::default()).unwrap_err();
        assert_eq!(refused.kind, ErrorKind::InvalidArgument);
        assert!(
            refused.message.contains("1000000 inputs"),
            "{}",
            refused.message
        );
    }

    #[test]
    fn long_shapes_and_truncated_messages_are_refused() {
        let request = pb::ModelInferRequest {
            inputs: vec![input("x", vec![1; 1000])],
            ..Default::default()
        };
        let refused = scan_model_infer(&request.encode_to_vec(), &ScanLimits::default());
        assert!(
            refused
                .unwrap_err()
                .message
                .contains("1000 an input's shape")
        );
        let mut truncated = pb::ModelInferRequest {
            inputs: vec![input("x", vec![1, 64])],
            ..Default::default()
        }
        .encode_to_vec();
        truncated.pop();
        assert!(scan_model_infer(&truncated, &ScanLimits::default()).is_err());
    }

    #[test]
    fn typed_contents_count_at_their_decoded_width() {
        let mut tensor = input("x", vec![1000]);
        tensor.contents = Some(pb::InferTensorContents {
            int64_contents: vec![1; 1000],
            ..Default::default()
        });
        let request = pb::ModelInferRequest {
            inputs: vec![tensor],
            ..Default::default()
        };
        let encoded = request.encode_to_vec();
        let scan = scan_model_infer(&encoded, &ScanLimits::default()).unwrap();
        // 1000 one-byte varints on the wire, 8000 bytes decoded.
        assert!(encoded.len() < 1100);
        assert!(scan.decoded_bytes >= 8000, "{scan:?}");
    }
}
