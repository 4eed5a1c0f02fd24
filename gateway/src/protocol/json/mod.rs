//! The Open Inference Protocol's JSON body, with the binary tensor data extension.
//!
//! Tensor `data` is read straight into little-endian bytes of the declared datatype: the JSON
//! arrays (flat or nested) are walked once by a seeded visitor, with no intermediate values.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use half::{bf16, f16};
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchyard_runtimes::{DataType, NamedTensor, Tensor, element_count, push_bytes_element};

use crate::core::request::MAX_PARAMETER_BYTES;
use crate::core::tensor_json::TensorData;
use crate::core::{InferRequest, InferResponse, Parameter};
use crate::error::{GatewayError, quoted};
use crate::protocol::shared_memory::{Access, Placement, Reference, place_output, read_input};

mod bounds;

#[derive(Deserialize)]
struct RequestBody<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default, deserialize_with = "bounds::parameters")]
    parameters: Option<BTreeMap<String, JsonParameter>>,
    #[serde(borrow, deserialize_with = "bounds::tensors")]
    inputs: Vec<InputBody<'a>>,
    #[serde(default, deserialize_with = "bounds::optional_tensors")]
    outputs: Option<Vec<OutputBody>>,
}

/// One input of a request. Its `data` is read straight into the tensor's bytes as the body is
/// parsed when `datatype` and `shape` come before it, as every client we know sends them;
/// otherwise it is kept as text and read once they are known. Either way the numbers are
/// parsed once.
struct InputBody<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    parameters: Option<BTreeMap<String, JsonParameter>>,
    data: Option<InputData<'a>>,
}

enum InputData<'a> {
    /// Read as it arrived: the elements' bytes, their count checked against the shape.
    Read(Vec<u8>),
    /// Arrived before the datatype or the shape: read by `decode_input`.
    Text(&'a RawValue),
}

/// What reading data in place needs beyond serde's own state, which has no room for it. Set
/// and taken on the same thread, within one `decode_request`.
struct Decoding {
    /// The length of the JSON being decoded: the bound on what a claimed shape may reserve.
    body_bytes: Cell<usize>,
    /// Why the data of an input read in place was refused (an element of the wrong kind or out
    /// of range, a count that does not match the shape), in the words the caller gets; serde's
    /// own error would call the body malformed.
    refusal: std::cell::RefCell<Option<String>>,
    /// Inputs read in place, for the tests to tell the two paths apart.
    #[cfg(test)]
    read_in_place: Cell<usize>,
}

thread_local! {
    static DECODING: Decoding = const {
        Decoding {
            body_bytes: Cell::new(0),
            refusal: std::cell::RefCell::new(None),
            #[cfg(test)]
            read_in_place: Cell::new(0),
        }
    };
}

/// `shape`, bounded.
#[derive(Deserialize)]
struct Dims(#[serde(deserialize_with = "bounds::dims")] Vec<i64>);

/// `parameters`, bounded.
#[derive(Deserialize)]
struct Parameters(
    #[serde(deserialize_with = "bounds::parameters")] Option<BTreeMap<String, JsonParameter>>,
);

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum InputField {
    Name,
    Shape,
    Datatype,
    Parameters,
    Data,
    #[serde(other)]
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for InputBody<'a> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(InputVisitor(std::marker::PhantomData))
    }
}

struct InputVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for InputVisitor<'a> {
    type Value = InputBody<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an input tensor: name, shape, datatype and data")
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<InputBody<'a>, A::Error> {
        let mut name: Option<String> = None;
        let mut shape: Option<Vec<i64>> = None;
        let mut datatype: Option<String> = None;
        let mut parameters: Option<Option<BTreeMap<String, JsonParameter>>> = None;
        let mut data: Option<InputData<'a>> = None;
        // `data: null` counts as no data, as it did when it was an `Option`.
        let mut data_seen = false;
        fn once<T, E: de::Error>(slot: &Option<T>, field: &'static str) -> Result<(), E> {
            match slot {
                Some(_) => Err(E::duplicate_field(field)),
                None => Ok(()),
            }
        }
        while let Some(field) = map.next_key::<InputField>()? {
            match field {
                InputField::Name => {
                    once(&name, "name")?;
                    name = Some(map.next_value()?);
                }
                InputField::Shape => {
                    once(&shape, "shape")?;
                    shape = Some(map.next_value::<Dims>()?.0);
                }
                InputField::Datatype => {
                    once(&datatype, "datatype")?;
                    datatype = Some(map.next_value()?);
                }
                InputField::Parameters => {
                    once(&parameters, "parameters")?;
                    parameters = Some(map.next_value::<Parameters>()?.0);
                }
                InputField::Data => {
                    if data_seen {
                        return Err(de::Error::duplicate_field("data"));
                    }
                    data_seen = true;
                    // In place only when a refusal can name its input, and the datatype and
                    // shape tell what to read.
                    let known = name
                        .as_deref()
                        .zip(datatype.as_deref())
                        .and_then(|(name, text)| Some((name, text.parse::<DataType>().ok()?)))
                        .zip(shape.as_deref().and_then(shape_count));
                    data = match known {
                        Some(((name, dtype), count)) => {
                            let refused = Cell::new(false);
                            match map.next_value_seed(DataSeed {
                                dtype,
                                count,
                                refused: &refused,
                            }) {
                                Ok(bytes) => bytes.map(InputData::Read),
                                Err(error) => {
                                    if refused.get() {
                                        let reason = format!("input '{}': {error}", quoted(name));
                                        DECODING.with(|decoding| {
                                            *decoding.refusal.borrow_mut() = Some(reason)
                                        });
                                    }
                                    return Err(error);
                                }
                            }
                        }
                        None => map.next_value::<Option<&RawValue>>()?.map(InputData::Text),
                    };
                }
                InputField::Other => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok(InputBody {
            name: name.ok_or_else(|| de::Error::missing_field("name"))?,
            shape: shape.ok_or_else(|| de::Error::missing_field("shape"))?,
            datatype: datatype.ok_or_else(|| de::Error::missing_field("datatype"))?,
            parameters: parameters.flatten(),
            data,
        })
    }
}

/// The element count of a shape from the body, if every dimension is a size and their product
/// fits.
fn shape_count(shape: &[i64]) -> Option<usize> {
    let mut count = 1usize;
    for &dim in shape {
        count = count.checked_mul(usize::try_from(dim).ok()?)?;
    }
    Some(count)
}

/// Reads `data` where it stands in the body.
struct DataSeed<'r> {
    dtype: DataType,
    count: usize,
    /// Set when the data itself was refused (an element of the wrong kind, too many, too
    /// few), as opposed to a body that is not JSON.
    refused: &'r Cell<bool>,
}

/// Bytes reserved up front for data whose shape claims more than its text can hold.
const DATA_RESERVE_BYTES: usize = 64 << 10;

impl<'de> DeserializeSeed<'de> for DataSeed<'_> {
    /// `None` for `null`.
    type Value = Option<Vec<u8>>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for DataSeed<'_> {
    type Value = Option<Vec<u8>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} elements, as a flat or nested array", self.dtype)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        let body_bytes = DECODING.with(|decoding| decoding.body_bytes.get());
        let out = read_elements(
            deserializer,
            self.dtype,
            self.count,
            body_bytes,
            self.refused,
        )?;
        #[cfg(test)]
        DECODING.with(|decoding| decoding.read_in_place.set(decoding.read_in_place.get() + 1));
        Ok(Some(out))
    }
}

#[derive(Deserialize)]
struct OutputBody {
    name: String,
    #[serde(default, deserialize_with = "bounds::parameters")]
    parameters: Option<BTreeMap<String, JsonParameter>>,
}

enum JsonParameter {
    Bool(bool),
    Int(i64),
    Double(f64),
    String(String),
}

/// By the JSON value's own kind, without the buffering and failed attempts of an untagged enum.
impl<'de> Deserialize<'de> for JsonParameter {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ParameterVisitor;
        impl<'de> Visitor<'de> for ParameterVisitor {
            type Value = JsonParameter;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a parameter: true or false, a number or a string")
            }

            fn visit_bool<E: de::Error>(self, value: bool) -> Result<JsonParameter, E> {
                Ok(JsonParameter::Bool(value))
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<JsonParameter, E> {
                Ok(JsonParameter::Int(value))
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<JsonParameter, E> {
                Ok(i64::try_from(value)
                    .map_or(JsonParameter::Double(value as f64), JsonParameter::Int))
            }

            fn visit_f64<E: de::Error>(self, value: f64) -> Result<JsonParameter, E> {
                Ok(JsonParameter::Double(value))
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<JsonParameter, E> {
                Ok(JsonParameter::String(value.to_owned()))
            }

            fn visit_string<E: de::Error>(self, value: String) -> Result<JsonParameter, E> {
                Ok(JsonParameter::String(value))
            }
        }
        deserializer.deserialize_any(ParameterVisitor)
    }
}

impl From<JsonParameter> for Parameter {
    fn from(value: JsonParameter) -> Self {
        match value {
            JsonParameter::Bool(b) => Parameter::Bool(b),
            JsonParameter::Int(i) => Parameter::Int(i),
            JsonParameter::Double(d) => Parameter::Double(d),
            JsonParameter::String(s) => Parameter::String(s),
        }
    }
}

fn bool_parameter(
    parameters: &Option<BTreeMap<String, JsonParameter>>,
    key: &str,
) -> Result<bool, GatewayError> {
    match parameters.as_ref().and_then(|p| p.get(key)) {
        None => Ok(false),
        Some(JsonParameter::Bool(value)) => Ok(*value),
        Some(_) => Err(GatewayError::invalid(format!(
            "parameter '{key}' must be true or false"
        ))),
    }
}

/// How the caller wants each output encoded: `true` for the binary extension; or written into
/// a shared-memory region.
#[derive(Debug, Default)]
pub struct OutputEncoding {
    /// Per requested output, in request order.
    pub requested_binary: Vec<bool>,
    /// For outputs not named in the request.
    pub default_binary: bool,
    /// Per requested output, in request order: where it goes in shared memory, if it does.
    pub placements: Vec<Option<Placement>>,
}

impl OutputEncoding {
    fn binary(&self, position: usize) -> bool {
        self.requested_binary
            .get(position)
            .copied()
            .unwrap_or(self.default_binary)
    }

    fn placement(&self, position: usize) -> Option<&Placement> {
        self.placements.get(position).and_then(Option::as_ref)
    }
}

/// A tensor's shared-memory parameters in a JSON request.
fn shared_memory_reference(
    parameters: &Option<BTreeMap<String, JsonParameter>>,
    tensor: &str,
) -> Result<Reference, GatewayError> {
    let Some(parameters) = parameters else {
        return Ok(Reference::default());
    };
    let number = |key: &str| match parameters.get(key) {
        None => Ok(None),
        Some(JsonParameter::Int(value)) => Ok(Some(*value)),
        Some(_) => Err(GatewayError::invalid(format!(
            "'{}': {key} must be an integer",
            quoted(tensor)
        ))),
    };
    let region = match parameters.get("shared_memory_region") {
        None => None,
        Some(JsonParameter::String(name)) => Some(name.clone()),
        Some(_) => {
            return Err(GatewayError::invalid(format!(
                "'{}': shared_memory_region must be a string",
                quoted(tensor)
            )));
        }
    };
    Ok(Reference {
        region,
        offset: number("shared_memory_offset")?,
        byte_size: number("shared_memory_byte_size")?,
    })
}

/// An output's `classification` parameter: how many classes to answer.
fn classification(
    parameters: &Option<BTreeMap<String, JsonParameter>>,
    output: &str,
) -> Result<Option<usize>, GatewayError> {
    match parameters.as_ref().and_then(|p| p.get("classification")) {
        None => Ok(None),
        Some(JsonParameter::Int(count)) if *count > 0 => Ok(Some(*count as usize)),
        Some(_) => Err(GatewayError::invalid(format!(
            "output '{}': classification must be a positive integer",
            quoted(output)
        ))),
    }
}

/// Decodes a request: `json` is the JSON part, `binary` the bytes after it (empty without the
/// binary extension). Tensor data in `binary` is sliced, not copied.
pub fn decode_request(
    model: &str,
    version: Option<&str>,
    json: &[u8],
    mut binary: Bytes,
    memory: Option<&Access<'_>>,
) -> Result<(InferRequest, OutputEncoding), GatewayError> {
    DECODING.with(|decoding| {
        decoding.body_bytes.set(json.len());
        decoding.refusal.borrow_mut().take();
    });
    let body: RequestBody<'_> = serde_json::from_slice(json).map_err(|e| {
        GatewayError::invalid(
            DECODING
                .with(|decoding| decoding.refusal.borrow_mut().take())
                .unwrap_or_else(|| format!("malformed inference request: {e}")),
        )
    })?;
    let default_binary = bool_parameter(&body.parameters, "binary_data_output")?;
    let mut inputs = Vec::with_capacity(body.inputs.len());
    for input in body.inputs {
        inputs.push(decode_input(input, &mut binary, memory)?);
    }
    if !binary.is_empty() {
        return Err(GatewayError::invalid(format!(
            "{} bytes of binary data follow the JSON header but no input claims them \
             (set binary_data_size on the inputs they belong to)",
            binary.len()
        )));
    }
    let mut outputs = Vec::new();
    let mut requested_binary = Vec::new();
    let mut placements = Vec::new();
    let mut classified = Vec::new();
    for output in body.outputs.unwrap_or_default() {
        if let Some(count) = classification(&output.parameters, &output.name)? {
            classified.push((output.name.clone(), count));
        }
        let reference = shared_memory_reference(&output.parameters, &output.name)?;
        placements.push(if reference.names_a_region(&output.name)? {
            Some(place_output(memory, &output.name, &reference)?)
        } else {
            None
        });
        let explicit = output
            .parameters
            .as_ref()
            .is_some_and(|p| p.contains_key("binary_data"));
        requested_binary.push(if explicit {
            bool_parameter(&output.parameters, "binary_data")?
        } else {
            default_binary
        });
        outputs.push(output.name);
    }
    let parameters = body
        .parameters
        .unwrap_or_default()
        .into_iter()
        .map(|(key, value)| (key, value.into()))
        .collect();
    Ok((
        InferRequest {
            model: model.to_owned(),
            version: version.map(str::to_owned),
            id: body.id,
            inputs,
            outputs,
            classification: classified,
            parameters,
            deadline: None,
            received: None,
            protocol: Default::default(),
            headers: Default::default(),
            capture: None,
        },
        OutputEncoding {
            requested_binary,
            default_binary,
            placements,
        },
    ))
}

fn decode_input(
    input: InputBody<'_>,
    binary: &mut Bytes,
    memory: Option<&Access<'_>>,
) -> Result<NamedTensor, GatewayError> {
    if input.name.len() > MAX_PARAMETER_BYTES {
        return Err(GatewayError::invalid(format!(
            "input name '{}' is longer than {MAX_PARAMETER_BYTES} bytes",
            quoted(&input.name)
        )));
    }
    let name = input.name;
    let dtype: DataType = input
        .datatype
        .parse()
        .map_err(|e| GatewayError::invalid(format!("input '{name}': {e}")))?;
    let shape = input
        .shape
        .iter()
        .map(|&dim| usize::try_from(dim))
        .collect::<Result<Vec<usize>, _>>()
        .map_err(|_| {
            GatewayError::invalid(format!(
                "input '{name}': shape {:?} has a negative dimension",
                input.shape
            ))
        })?;
    let count = element_count(&shape).ok_or_else(|| {
        GatewayError::invalid(format!("input '{name}': shape {shape:?} is too large"))
    })?;
    let binary_size = match input
        .parameters
        .as_ref()
        .and_then(|p| p.get("binary_data_size"))
    {
        None => None,
        Some(JsonParameter::Int(size)) if *size >= 0 => Some(*size as usize),
        Some(_) => {
            return Err(GatewayError::invalid(format!(
                "input '{name}': binary_data_size must be a non-negative integer"
            )));
        }
    };
    let reference = shared_memory_reference(&input.parameters, &name)?;
    if reference.names_a_region(&name)? {
        if binary_size.is_some() || input.data.is_some() {
            return Err(GatewayError::invalid(format!(
                "input '{name}' names a shared memory region and carries data too"
            )));
        }
        let data = read_input(memory, &name, &reference)?;
        let tensor = Tensor::new(dtype, shape, data)
            .map_err(|e| GatewayError::invalid(format!("input '{name}': {e}")))?;
        return Ok(NamedTensor { name, tensor });
    }
    let data = match (binary_size, input.data) {
        (Some(_), Some(_)) => {
            return Err(GatewayError::invalid(format!(
                "input '{name}' has both JSON data and binary_data_size"
            )));
        }
        (None, None) => {
            return Err(GatewayError::invalid(format!("input '{name}' has no data")));
        }
        (Some(size), None) => {
            if size > binary.len() {
                return Err(GatewayError::invalid(format!(
                    "input '{name}': binary_data_size is {size} but only {} bytes of binary data remain",
                    binary.len()
                )));
            }
            binary.split_to(size)
        }
        (None, Some(InputData::Read(bytes))) => Bytes::from(bytes),
        (None, Some(InputData::Text(raw))) => {
            Bytes::from(read_json_data(&name, dtype, count, raw)?)
        }
    };
    let tensor = Tensor::new(dtype, shape, data)
        .map_err(|e| GatewayError::invalid(format!("input '{name}': {e}")))?;
    Ok(NamedTensor { name, tensor })
}

fn read_json_data(
    name: &str,
    dtype: DataType,
    count: usize,
    raw: &RawValue,
) -> Result<Vec<u8>, GatewayError> {
    let text = raw.get();
    let mut deserializer = serde_json::Deserializer::from_str(text);
    read_elements(
        &mut deserializer,
        dtype,
        count,
        text.len(),
        &Cell::new(false),
    )
    .map_err(|e| GatewayError::invalid(format!("input '{name}': {e}")))
}

/// Reads a tensor's `data`, a flat or nested array, as little-endian `dtype` bytes, and checks
/// that it holds the shape's `count` elements. `text_bytes` is the length of the JSON it is read
/// from, in place (the whole body) or as text (the data alone).
fn read_elements<'de, D: de::Deserializer<'de>>(
    deserializer: D,
    dtype: DataType,
    count: usize,
    text_bytes: usize,
    refused: &Cell<bool>,
) -> Result<Vec<u8>, D::Error> {
    let wanted = dtype
        .element_size()
        .map_or(0, |size| count.saturating_mul(size));
    // Data that fills its shape takes at most four times its text (a one-digit element of
    // eight bytes and its comma), so such a reservation is charged already (`http.rs::infer`
    // charges a JSON body four times its length); a shape claiming more cannot be filled, and
    // the buffer then grows only with what arrives.
    let reserve = if wanted <= text_bytes.saturating_mul(4) {
        wanted
    } else {
        wanted.min(DATA_RESERVE_BYTES)
    };
    let mut out = Vec::with_capacity(reserve);
    let mut seen = 0usize;
    ElementWriter {
        dtype,
        out: &mut out,
        seen: &mut seen,
        limit: count,
        refused,
    }
    .deserialize(deserializer)?;
    if seen != count {
        return Err(refuse(
            refused,
            format_args!("shape needs {count} elements but data holds {seen}"),
        ));
    }
    Ok(out)
}

/// Writes every element of a (possibly nested) JSON array as little-endian `dtype` bytes.
struct ElementWriter<'o> {
    dtype: DataType,
    out: &'o mut Vec<u8>,
    seen: &'o mut usize,
    limit: usize,
    /// Set when an element is refused (of the wrong kind, out of range, one too many), as
    /// opposed to text that is not JSON.
    refused: &'o Cell<bool>,
}

/// The error for data that was refused, noted as such in `refused`.
fn refuse<E: de::Error>(refused: &Cell<bool>, reason: impl fmt::Display) -> E {
    refused.set(true);
    E::custom(reason)
}

impl ElementWriter<'_> {
    fn count<E: de::Error>(&mut self) -> Result<(), E> {
        *self.seen += 1;
        if *self.seen > self.limit {
            return Err(refuse(
                self.refused,
                format_args!("data holds more elements than the shape's {}", self.limit),
            ));
        }
        Ok(())
    }

    fn integer<E: de::Error>(&mut self, value: i128) -> Result<(), E> {
        self.count()?;
        let out_of_range = || {
            refuse(
                self.refused,
                format_args!("{value} is out of range for {}", self.dtype),
            )
        };
        macro_rules! put {
            ($t:ty) => {
                self.out.extend_from_slice(
                    &<$t>::try_from(value)
                        .map_err(|_| out_of_range())?
                        .to_le_bytes(),
                )
            };
        }
        match self.dtype {
            DataType::Uint8 => put!(u8),
            DataType::Uint16 => put!(u16),
            DataType::Uint32 => put!(u32),
            DataType::Uint64 => put!(u64),
            DataType::Int8 => put!(i8),
            DataType::Int16 => put!(i16),
            DataType::Int32 => put!(i32),
            DataType::Int64 => put!(i64),
            DataType::Fp16 => self
                .out
                .extend_from_slice(&f16::from_f64(value as f64).to_le_bytes()),
            DataType::Bf16 => self
                .out
                .extend_from_slice(&bf16::from_f64(value as f64).to_le_bytes()),
            DataType::Fp32 => self.out.extend_from_slice(&(value as f32).to_le_bytes()),
            DataType::Fp64 => self.out.extend_from_slice(&(value as f64).to_le_bytes()),
            DataType::Bool => match value {
                0 | 1 => self.out.push(value as u8),
                _ => {
                    return Err(refuse(
                        self.refused,
                        format_args!("{value} is not a BOOL (use true or false)"),
                    ));
                }
            },
            DataType::Bytes => {
                return Err(refuse(self.refused, "BYTES elements must be strings"));
            }
        }
        Ok(())
    }

    fn float<E: de::Error>(&mut self, value: f64) -> Result<(), E> {
        match self.dtype {
            DataType::Fp16 => self
                .out
                .extend_from_slice(&f16::from_f64(value).to_le_bytes()),
            DataType::Bf16 => self
                .out
                .extend_from_slice(&bf16::from_f64(value).to_le_bytes()),
            DataType::Fp32 => self.out.extend_from_slice(&(value as f32).to_le_bytes()),
            DataType::Fp64 => self.out.extend_from_slice(&value.to_le_bytes()),
            _ if value.fract() == 0.0 && value.abs() < 2f64.powi(63) => {
                return self.integer(value as i128);
            }
            _ => {
                return Err(refuse(
                    self.refused,
                    format_args!("{value} is not a whole number, as {} needs", self.dtype),
                ));
            }
        }
        self.count()
    }
}

impl<'de> DeserializeSeed<'de> for ElementWriter<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ElementWriter<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} elements, as a flat or nested array", self.dtype)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let ElementWriter {
            dtype,
            out,
            seen,
            limit,
            refused,
        } = self;
        while seq
            .next_element_seed(ElementWriter {
                dtype,
                out: &mut *out,
                seen: &mut *seen,
                limit,
                refused,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_bool<E: de::Error>(mut self, value: bool) -> Result<(), E> {
        if self.dtype != DataType::Bool {
            return Err(refuse(
                self.refused,
                format_args!("true/false is not a {}", self.dtype),
            ));
        }
        self.count()?;
        self.out.push(u8::from(value));
        Ok(())
    }

    fn visit_i64<E: de::Error>(mut self, value: i64) -> Result<(), E> {
        self.integer(i128::from(value))
    }

    fn visit_u64<E: de::Error>(mut self, value: u64) -> Result<(), E> {
        self.integer(i128::from(value))
    }

    fn visit_f64<E: de::Error>(mut self, value: f64) -> Result<(), E> {
        self.float(value)
    }

    fn visit_str<E: de::Error>(mut self, value: &str) -> Result<(), E> {
        if self.dtype != DataType::Bytes {
            return Err(refuse(
                self.refused,
                format_args!("a string is not a {} element", self.dtype),
            ));
        }
        self.count()?;
        push_bytes_element(self.out, value.as_bytes()).map_err(|e| refuse(self.refused, e))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.refused.set(true);
        Err(E::invalid_type(de::Unexpected::Unit, &self))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, _map: A) -> Result<(), A::Error> {
        self.refused.set(true);
        Err(de::Error::invalid_type(de::Unexpected::Map, &self))
    }
}

#[derive(Serialize)]
struct ResponseBody<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<OutputJson<'a>>,
}

#[derive(Serialize)]
struct OutputJson<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<OutputParameters>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<TensorData<'a>>,
}

/// Where an output's bytes are when they follow the JSON.
#[derive(Serialize)]
struct OutputParameters {
    binary_data_size: usize,
}

/// An encoded response: the JSON part, and the binary outputs that follow it (empty when
/// every output is in the JSON).
pub struct EncodedResponse {
    pub json: Vec<u8>,
    pub binary: Vec<Bytes>,
}

pub fn encode_response(
    response: &InferResponse,
    encoding: &OutputEncoding,
) -> Result<EncodedResponse, GatewayError> {
    let mut binary = Vec::new();
    let outputs = response
        .outputs
        .iter()
        .enumerate()
        .map(|(position, output)| {
            let tensor = &output.tensor;
            if let Some(placement) = encoding.placement(position) {
                // As Triton answers it: the output's name, datatype and shape; its bytes are in
                // the region.
                placement.write(tensor.data())?;
                return Ok(OutputJson {
                    name: &output.name,
                    datatype: tensor.dtype().as_str(),
                    shape: tensor.shape(),
                    parameters: None,
                    data: None,
                });
            }
            let as_binary = encoding.binary(position);
            if as_binary {
                binary.push(tensor.data().clone());
            }
            Ok(OutputJson {
                name: &output.name,
                datatype: tensor.dtype().as_str(),
                shape: tensor.shape(),
                parameters: as_binary.then(|| OutputParameters {
                    binary_data_size: tensor.data().len(),
                }),
                data: (!as_binary).then_some(TensorData(tensor)),
            })
        })
        .collect::<Result<Vec<_>, GatewayError>>()?;
    let body = ResponseBody {
        model_name: &response.model_name,
        model_version: &response.model_version,
        id: response.id.as_deref(),
        outputs,
    };
    let json = serde_json::to_vec(&body)
        .map_err(|e| GatewayError::internal(format!("cannot encode the response: {e}")))?;
    Ok(EncodedResponse { json, binary })
}

#[cfg(test)]
mod tests;
