//! gRPC messages to the core's request and back: typed and raw tensor contents, parameters,
//! and Triton's datatype enum.

use std::collections::HashMap;

use bytes::Bytes;
use switchyard_runtimes::{DataType, NamedTensor, Tensor, push_bytes_element};

use super::pb;
use crate::core::request::MAX_PARAMETER_BYTES;
use crate::core::{InferRequest, InferResponse, Parameter};
use crate::error::GatewayError;
use crate::protocol::shared_memory::{Access, Placement, Reference, place_output, read_input};
use pb::model_infer_request::InferInputTensor;
use pb::model_infer_response::InferOutputTensor;
use pb::{InferParameter, InferTensorContents, infer_parameter::ParameterChoice};

fn parameter(name: &str, value: InferParameter) -> Result<Parameter, GatewayError> {
    let value_bytes = match &value.parameter_choice {
        Some(ParameterChoice::StringParam(text)) => text.len(),
        _ => 0,
    };
    if name.len() > MAX_PARAMETER_BYTES || value_bytes > MAX_PARAMETER_BYTES {
        return Err(GatewayError::invalid(format!(
            "a parameter's name or value is longer than {MAX_PARAMETER_BYTES} bytes"
        )));
    }
    Ok(match value.parameter_choice {
        Some(ParameterChoice::BoolParam(b)) => Parameter::Bool(b),
        Some(ParameterChoice::Int64Param(i)) => Parameter::Int(i),
        Some(ParameterChoice::StringParam(s)) => Parameter::String(s),
        Some(ParameterChoice::DoubleParam(d)) => Parameter::Double(d),
        Some(ParameterChoice::Uint64Param(u)) => {
            Parameter::Int(i64::try_from(u).map_err(|_| {
                GatewayError::invalid(format!("parameter '{name}': {u} is out of range"))
            })?)
        }
        None => {
            return Err(GatewayError::invalid(format!(
                "parameter '{name}' has no value"
            )));
        }
    })
}

/// Where the outputs a request asked to have written into shared memory go, in request order.
#[derive(Default)]
pub(super) struct OutputPlacements(Vec<(String, Placement)>);

/// A tensor's shared-memory parameters in a gRPC request.
fn shared_memory_reference(
    parameters: &HashMap<String, InferParameter>,
    tensor: &str,
) -> Result<Reference, GatewayError> {
    let number = |key: &str| match parameters
        .get(key)
        .and_then(|p| p.parameter_choice.as_ref())
    {
        None => Ok(None),
        Some(ParameterChoice::Int64Param(value)) => Ok(Some(*value)),
        Some(ParameterChoice::Uint64Param(value)) => i64::try_from(*value)
            .map(Some)
            .map_err(|_| GatewayError::invalid(format!("'{tensor}': {key} is out of range"))),
        Some(_) => Err(GatewayError::invalid(format!(
            "'{tensor}': {key} must be an integer"
        ))),
    };
    let region = match parameters
        .get("shared_memory_region")
        .and_then(|p| p.parameter_choice.as_ref())
    {
        None => None,
        Some(ParameterChoice::StringParam(name)) => Some(name.clone()),
        Some(_) => {
            return Err(GatewayError::invalid(format!(
                "'{tensor}': shared_memory_region must be a string"
            )));
        }
    };
    Ok(Reference {
        region,
        offset: number("shared_memory_offset")?,
        byte_size: number("shared_memory_byte_size")?,
    })
}

/// Decodes a request, its inputs in typed or raw contents or in shared memory. As in Triton,
/// `raw_input_contents`, when sent, holds one entry per input that does not name a region, in
/// order (and no input has typed contents then).
pub(super) fn decode_request(
    request: pb::ModelInferRequest,
    memory: Option<&Access<'_>>,
) -> Result<(InferRequest, OutputPlacements), GatewayError> {
    let mut raw_contents = request.raw_input_contents.into_iter();
    let raw_count = raw_contents.len();
    let mut raw_used = 0;
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        let reference = shared_memory_reference(&input.parameters, &input.name)?;
        if reference.names_a_region(&input.name)? {
            if input.contents.is_some() {
                return Err(GatewayError::invalid(format!(
                    "input '{}' names a shared memory region and carries contents too",
                    input.name
                )));
            }
            let data = read_input(memory, &input.name, &reference)?;
            inputs.push(tensor(input, data)?);
            continue;
        }
        let data = if raw_count > 0 {
            raw_used += 1;
            raw_contents.next()
        } else {
            None
        };
        inputs.push(decode_input(input, data, raw_count > 0)?);
    }
    if raw_count > 0 && raw_used != raw_count {
        return Err(GatewayError::invalid(format!(
            "raw_input_contents has {raw_count} entries for {raw_used} inputs; it needs one per \
             input that does not name a shared memory region"
        )));
    }
    let parameters = request
        .parameters
        .into_iter()
        .map(|(name, value)| {
            let value = parameter(&name, value)?;
            Ok((name, value))
        })
        .collect::<Result<_, GatewayError>>()?;
    let mut outputs = Vec::with_capacity(request.outputs.len());
    let mut classification = Vec::new();
    let mut placements = Vec::new();
    for output in request.outputs {
        match output
            .parameters
            .get("classification")
            .and_then(|p| p.parameter_choice.as_ref())
        {
            None => {}
            Some(ParameterChoice::Int64Param(count)) if *count > 0 => {
                classification.push((output.name.clone(), *count as usize));
            }
            Some(_) => {
                return Err(GatewayError::invalid(format!(
                    "output '{}': classification must be a positive integer",
                    output.name
                )));
            }
        }
        let reference = shared_memory_reference(&output.parameters, &output.name)?;
        if reference.names_a_region(&output.name)? {
            let placement = place_output(memory, &output.name, &reference)?;
            placements.push((output.name.clone(), placement));
        }
        outputs.push(output.name);
    }
    Ok((
        InferRequest {
            model: request.model_name,
            version: (!request.model_version.is_empty()).then_some(request.model_version),
            id: (!request.id.is_empty()).then_some(request.id),
            inputs,
            outputs,
            classification,
            parameters,
            deadline: None,
            received: None,
            protocol: Default::default(),
            headers: Default::default(),
            capture: None,
        },
        OutputPlacements(placements),
    ))
}

/// An input's datatype and shape, checked.
fn datatype_and_shape(input: &InferInputTensor) -> Result<(DataType, Vec<usize>), GatewayError> {
    let invalid =
        |message: String| GatewayError::invalid(format!("input '{}': {message}", input.name));
    let dtype: DataType = input
        .datatype
        .parse()
        .map_err(|e| invalid(format!("{e}")))?;
    let shape = input
        .shape
        .iter()
        .map(|&dim| usize::try_from(dim))
        .collect::<Result<Vec<usize>, _>>()
        .map_err(|_| invalid(format!("shape {:?} has a negative dimension", input.shape)))?;
    Ok((dtype, shape))
}

/// An input whose bytes came from elsewhere (shared memory).
fn tensor(input: InferInputTensor, data: Bytes) -> Result<NamedTensor, GatewayError> {
    let (dtype, shape) = datatype_and_shape(&input)?;
    let tensor = Tensor::new(dtype, shape, data)
        .map_err(|e| GatewayError::invalid(format!("input '{}': {e}", input.name)))?;
    Ok(NamedTensor {
        name: input.name,
        tensor,
    })
}

/// An input from its typed contents or its raw entry; `raw_sent`: the request has raw contents.
fn decode_input(
    input: InferInputTensor,
    raw: Option<Bytes>,
    raw_sent: bool,
) -> Result<NamedTensor, GatewayError> {
    let (dtype, shape) = datatype_and_shape(&input)?;
    let name = input.name;
    let invalid = |message: String| GatewayError::invalid(format!("input '{name}': {message}"));
    let data = match (raw, input.contents) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "typed contents and raw_input_contents are both set; use one or the other".into(),
            ));
        }
        (Some(raw), None) => raw,
        (None, Some(contents)) => typed_to_bytes(dtype, &shape, contents).map_err(invalid)?,
        (None, None) if raw_sent => {
            return Err(invalid(
                "no contents, and raw_input_contents has no entry left for it".into(),
            ));
        }
        (None, None) => return Err(invalid("no contents and no raw_input_contents".into())),
    };
    let tensor = Tensor::new(dtype, shape, data).map_err(|e| invalid(e.to_string()))?;
    Ok(NamedTensor { name, tensor })
}

/// Typed contents to little-endian bytes of `dtype`, checking the element count and range.
fn typed_to_bytes(
    dtype: DataType,
    shape: &[usize],
    contents: InferTensorContents,
) -> Result<Bytes, String> {
    let expected = switchyard_runtimes::element_count(shape)
        .ok_or_else(|| format!("shape {shape:?} is too large"))?;
    fn check(field: &str, actual: usize, expected: usize) -> Result<(), String> {
        if actual == expected {
            Ok(())
        } else {
            Err(format!(
                "contents.{field} holds {actual} elements but the shape needs {expected}"
            ))
        }
    }
    macro_rules! narrow {
        ($field:ident, $t:ty) => {{
            check(stringify!($field), contents.$field.len(), expected)?;
            let mut out = Vec::with_capacity(expected * size_of::<$t>());
            for value in &contents.$field {
                let value = <$t>::try_from(*value)
                    .map_err(|_| format!("{value} is out of range for {dtype}"))?;
                out.extend_from_slice(&value.to_le_bytes());
            }
            Bytes::from(out)
        }};
    }
    macro_rules! same {
        ($field:ident) => {{
            check(stringify!($field), contents.$field.len(), expected)?;
            // The protocol's bytes are little-endian, as is every target this builds for.
            Bytes::copy_from_slice(bytemuck::cast_slice(&contents.$field))
        }};
    }
    Ok(match dtype {
        DataType::Bool => {
            check("bool_contents", contents.bool_contents.len(), expected)?;
            contents
                .bool_contents
                .iter()
                .map(|&b| u8::from(b))
                .collect::<Vec<u8>>()
                .into()
        }
        DataType::Int8 => narrow!(int_contents, i8),
        DataType::Int16 => narrow!(int_contents, i16),
        DataType::Int32 => narrow!(int_contents, i32),
        DataType::Uint8 => narrow!(uint_contents, u8),
        DataType::Uint16 => narrow!(uint_contents, u16),
        DataType::Uint32 => narrow!(uint_contents, u32),
        DataType::Int64 => same!(int64_contents),
        DataType::Uint64 => same!(uint64_contents),
        DataType::Fp32 => same!(fp32_contents),
        DataType::Fp64 => same!(fp64_contents),
        DataType::Fp16 | DataType::Bf16 => {
            return Err(format!(
                "{dtype} has no typed contents field; send it in raw_input_contents"
            ));
        }
        DataType::Bytes => {
            check("bytes_contents", contents.bytes_contents.len(), expected)?;
            let total: usize = contents.bytes_contents.iter().map(|b| 4 + b.len()).sum();
            let mut out = Vec::with_capacity(total);
            for element in &contents.bytes_contents {
                push_bytes_element(&mut out, element).map_err(|e| e.to_string())?;
            }
            out.into()
        }
    })
}

/// Answers in `raw_output_contents` whatever form the request used, as Triton does: clients
/// read raw contents, and the tensors' bytes go out without a copy.
/// An output written into shared memory is answered with its name, datatype and shape, and an
/// empty raw entry, so that the others' entries stay in step with the outputs.
pub(super) fn encode_response(
    response: InferResponse,
    placements: &OutputPlacements,
) -> Result<pb::ModelInferResponse, GatewayError> {
    let mut outputs = Vec::with_capacity(response.outputs.len());
    let mut raw_output_contents = Vec::with_capacity(response.outputs.len());
    for output in response.outputs {
        let tensor = output.tensor;
        match placements.0.iter().find(|(name, _)| *name == output.name) {
            Some((_, placement)) => {
                placement.write(tensor.data())?;
                raw_output_contents.push(Bytes::new());
            }
            None => raw_output_contents.push(tensor.data().clone()),
        }
        outputs.push(InferOutputTensor {
            name: output.name,
            datatype: tensor.dtype().as_str().into(),
            shape: tensor.shape().iter().map(|&d| d as i64).collect(),
            parameters: HashMap::new(),
            contents: None,
        });
    }
    Ok(pb::ModelInferResponse {
        model_name: response.model_name.to_string(),
        model_version: response.model_version.to_string(),
        id: response.id.unwrap_or_default(),
        parameters: HashMap::new(),
        outputs,
        raw_output_contents,
    })
}

/// A core request as the gRPC request a peer decodes: raw contents (the tensors' bytes are
/// shared, not copied), its parameters, and the outputs it asks for.
pub(super) fn encode_request(request: InferRequest) -> pb::ModelInferRequest {
    let mut inputs = Vec::with_capacity(request.inputs.len());
    let mut raw_input_contents = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        inputs.push(InferInputTensor {
            name: input.name,
            datatype: input.tensor.dtype().as_str().into(),
            shape: input.tensor.shape().iter().map(|&d| d as i64).collect(),
            parameters: HashMap::new(),
            contents: None,
        });
        raw_input_contents.push(input.tensor.data().clone());
    }
    let parameters = request
        .parameters
        .into_iter()
        .map(|(name, value)| {
            let choice = match value {
                Parameter::Bool(b) => ParameterChoice::BoolParam(b),
                Parameter::Int(i) => ParameterChoice::Int64Param(i),
                Parameter::Double(d) => ParameterChoice::DoubleParam(d),
                Parameter::String(s) => ParameterChoice::StringParam(s),
            };
            (
                name,
                InferParameter {
                    parameter_choice: Some(choice),
                },
            )
        })
        .collect();
    pb::ModelInferRequest {
        model_name: request.model,
        model_version: request.version.unwrap_or_default(),
        id: request.id.unwrap_or_default(),
        parameters,
        inputs,
        outputs: request
            .outputs
            .into_iter()
            .map(|name| {
                let mut parameters = HashMap::new();
                if let Some((_, count)) = request.classification.iter().find(|(n, _)| *n == name) {
                    parameters.insert(
                        "classification".to_owned(),
                        InferParameter {
                            parameter_choice: Some(ParameterChoice::Int64Param(*count as i64)),
                        },
                    );
                }
                pb::model_infer_request::InferRequestedOutputTensor { name, parameters }
            })
            .collect(),
        raw_input_contents,
    }
}

/// A peer's gRPC response as the core's, checked as a request's inputs are: a peer is another
/// process, and what it sends is not trusted to be well formed.
pub(super) fn decode_response(
    response: pb::ModelInferResponse,
) -> Result<InferResponse, GatewayError> {
    let raw = !response.raw_output_contents.is_empty();
    if raw && response.raw_output_contents.len() != response.outputs.len() {
        return Err(GatewayError::internal(format!(
            "the peer's response has {} raw contents for {} outputs",
            response.raw_output_contents.len(),
            response.outputs.len()
        )));
    }
    let mut raw_contents = response.raw_output_contents.into_iter();
    let outputs = response
        .outputs
        .into_iter()
        .map(|output| {
            let input = InferInputTensor {
                name: output.name,
                datatype: output.datatype,
                shape: output.shape,
                parameters: HashMap::new(),
                contents: output.contents,
            };
            decode_input(input, raw_contents.next(), raw).map_err(|error| {
                GatewayError::internal(format!("the peer's response: {}", error.message))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(InferResponse {
        model_name: response.model_name.into(),
        model_version: response.model_version.into(),
        id: (!response.id.is_empty()).then_some(response.id),
        outputs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_runtimes::TensorView;

    /// The typed form of a tensor: the inverse of `typed_to_bytes`, for its round trip.
    fn typed_contents(tensor: &Tensor) -> InferTensorContents {
        let mut contents = InferTensorContents::default();
        match tensor.view() {
            TensorView::Bool(v) => contents.bool_contents = v.iter().map(|&b| b != 0).collect(),
            TensorView::Int8(v) => {
                contents.int_contents = v.iter().map(|&x| i32::from(x)).collect()
            }
            TensorView::Int16(v) => {
                contents.int_contents = v.iter().map(|&x| i32::from(x)).collect()
            }
            TensorView::Int32(v) => contents.int_contents = v.into_owned(),
            TensorView::Uint8(v) => {
                contents.uint_contents = v.iter().map(|&x| u32::from(x)).collect()
            }
            TensorView::Uint16(v) => {
                contents.uint_contents = v.iter().map(|&x| u32::from(x)).collect();
            }
            TensorView::Uint32(v) => contents.uint_contents = v.into_owned(),
            TensorView::Int64(v) => contents.int64_contents = v.into_owned(),
            TensorView::Uint64(v) => contents.uint64_contents = v.into_owned(),
            TensorView::Fp32(v) => contents.fp32_contents = v.into_owned(),
            TensorView::Fp64(v) => contents.fp64_contents = v.into_owned(),
            TensorView::Bytes(v) => {
                contents.bytes_contents = v.into_iter().map(Bytes::copy_from_slice).collect();
            }
            // Callers send these raw.
            TensorView::Fp16(_) | TensorView::Bf16(_) => {}
        }
        contents
    }

    #[test]
    fn typed_contents_round_trip_every_typed_datatype() {
        let cases: Vec<(DataType, InferTensorContents)> = vec![
            (
                DataType::Bool,
                InferTensorContents {
                    bool_contents: vec![true, false],
                    ..Default::default()
                },
            ),
            (
                DataType::Int8,
                InferTensorContents {
                    int_contents: vec![-128, 127],
                    ..Default::default()
                },
            ),
            (
                DataType::Int16,
                InferTensorContents {
                    int_contents: vec![-300, 300],
                    ..Default::default()
                },
            ),
            (
                DataType::Int32,
                InferTensorContents {
                    int_contents: vec![i32::MIN, 7],
                    ..Default::default()
                },
            ),
            (
                DataType::Uint8,
                InferTensorContents {
                    uint_contents: vec![0, 255],
                    ..Default::default()
                },
            ),
            (
                DataType::Uint16,
                InferTensorContents {
                    uint_contents: vec![1, 65535],
                    ..Default::default()
                },
            ),
            (
                DataType::Uint32,
                InferTensorContents {
                    uint_contents: vec![u32::MAX, 3],
                    ..Default::default()
                },
            ),
            (
                DataType::Int64,
                InferTensorContents {
                    int64_contents: vec![i64::MIN, 1],
                    ..Default::default()
                },
            ),
            (
                DataType::Uint64,
                InferTensorContents {
                    uint64_contents: vec![u64::MAX, 2],
                    ..Default::default()
                },
            ),
            (
                DataType::Fp32,
                InferTensorContents {
                    fp32_contents: vec![0.5, -2.0],
                    ..Default::default()
                },
            ),
            (
                DataType::Fp64,
                InferTensorContents {
                    fp64_contents: vec![0.1, 1e300],
                    ..Default::default()
                },
            ),
            (
                DataType::Bytes,
                InferTensorContents {
                    bytes_contents: vec![Bytes::from_static(b"ab"), Bytes::new()],
                    ..Default::default()
                },
            ),
        ];
        for (dtype, contents) in cases {
            let bytes = typed_to_bytes(dtype, &[2], contents.clone()).expect("valid contents");
            let tensor = Tensor::new(dtype, vec![2], bytes).expect("valid tensor");
            assert_eq!(typed_contents(&tensor), contents, "{dtype}");
        }
    }

    #[test]
    fn typed_contents_are_checked() {
        let short = InferTensorContents {
            fp32_contents: vec![1.0],
            ..Default::default()
        };
        assert!(
            typed_to_bytes(DataType::Fp32, &[2], short)
                .unwrap_err()
                .contains("fp32_contents holds 1")
        );
        let wide = InferTensorContents {
            int_contents: vec![200],
            ..Default::default()
        };
        assert!(
            typed_to_bytes(DataType::Int8, &[1], wide)
                .unwrap_err()
                .contains("out of range")
        );
        let half = InferTensorContents::default();
        assert!(
            typed_to_bytes(DataType::Fp16, &[0], half)
                .unwrap_err()
                .contains("raw_input_contents")
        );
    }
}
