//! The wire types generated from `proto/`: the Open Inference Protocol's gRPC service and
//! messages, and Triton's model configuration (`ModelConfig`). Plain data, and a leaf: the
//! protocol fronts speak these types, and the control plane reads `config.pbtxt` into them.
//!
//! Triton's configuration also comes as text (`config.pbtxt`) and as JSON (`/config`, a load's
//! override); both are read and written through the descriptors of the same files, with
//! prost-reflect, so that one definition serves the three forms.

use std::sync::OnceLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};

pub mod pb {
    #![allow(
        clippy::all,
        clippy::pedantic,
        clippy::unwrap_used,
        clippy::expect_used
    )]
    tonic::include_proto!("inference");
}

/// A protocol datatype as Triton's configuration names it.
pub fn config_data_type(dtype: switchyard_runtimes::DataType) -> pb::DataType {
    use switchyard_runtimes::DataType;
    match dtype {
        DataType::Bool => pb::DataType::TypeBool,
        DataType::Uint8 => pb::DataType::TypeUint8,
        DataType::Uint16 => pb::DataType::TypeUint16,
        DataType::Uint32 => pb::DataType::TypeUint32,
        DataType::Uint64 => pb::DataType::TypeUint64,
        DataType::Int8 => pb::DataType::TypeInt8,
        DataType::Int16 => pb::DataType::TypeInt16,
        DataType::Int32 => pb::DataType::TypeInt32,
        DataType::Int64 => pb::DataType::TypeInt64,
        DataType::Fp16 => pb::DataType::TypeFp16,
        DataType::Bf16 => pb::DataType::TypeBf16,
        DataType::Fp32 => pb::DataType::TypeFp32,
        DataType::Fp64 => pb::DataType::TypeFp64,
        DataType::Bytes => pb::DataType::TypeString,
    }
}

/// The protocol datatype of a configuration's `data_type` (a raw enum value, as prost keeps
/// it); `None` for `TYPE_INVALID` and values the enum does not know.
pub fn protocol_data_type(value: i32) -> Option<switchyard_runtimes::DataType> {
    switchyard_runtimes::DataType::ALL
        .into_iter()
        .find(|dtype| config_data_type(*dtype) as i32 == value)
}

const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/inference_descriptors.bin"));

fn model_config_descriptor() -> Result<MessageDescriptor, String> {
    static DESCRIPTOR: OnceLock<Result<MessageDescriptor, String>> = OnceLock::new();
    DESCRIPTOR
        .get_or_init(|| {
            let pool = DescriptorPool::decode(DESCRIPTORS).map_err(|e| e.to_string())?;
            pool.get_message_by_name("inference.ModelConfig")
                .ok_or_else(|| "the build's descriptors lack inference.ModelConfig".to_owned())
        })
        .clone()
}

/// Where a text could not be read: line and column (both from 1) and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct TextError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Lists of messages without the optional colon that one text may hold (`input [ {...} ]`):
/// more is not a model configuration.
const MAX_COLONLESS_LISTS: usize = 1024;

/// Reads Triton's model configuration in protobuf text format (`config.pbtxt`).
///
/// prost-reflect reads the text format as its specification writes it, but for one point: it
/// wants the colon before a list of messages, which the specification makes optional and
/// Triton's configs leave out (`input [ { ... } ]`). Where it asks for that colon, in front of
/// a `[`, the colon is added at the place it names and the text read again.
pub fn model_config_from_text(text: &str) -> Result<pb::ModelConfig, TextError> {
    let at_start = |message: String| TextError {
        line: 1,
        column: 1,
        message,
    };
    let descriptor = model_config_descriptor().map_err(at_start)?;
    let mut text = std::borrow::Cow::Borrowed(text);
    let mut colons_added = 0;
    let message = loop {
        let error = match DynamicMessage::parse_text_format(descriptor.clone(), &text) {
            Ok(message) => break message,
            Err(error) => error,
        };
        let offset = miette::Diagnostic::labels(&error)
            .and_then(|mut labels| labels.next())
            .map_or(0, |label| label.offset());
        let wants_colon = error
            .to_string()
            .starts_with("expected ':' or a message value")
            && text.as_bytes().get(offset) == Some(&b'[');
        if wants_colon && colons_added < MAX_COLONLESS_LISTS {
            text.to_mut().insert(offset, ':');
            colons_added += 1;
            continue;
        }
        // Where the original text has it: every colon added so far came before it.
        let (line, column) = line_and_column(&text, offset);
        let column = column.saturating_sub(colons_on_line(&text, offset));
        return Err(TextError {
            line,
            column: column.max(1),
            message: error.to_string(),
        });
    };
    pb::ModelConfig::decode(message.encode_to_vec().as_slice()).map_err(|e| at_start(e.to_string()))
}

/// How many added colons (a `:` right before a `[`, which the original lacked) precede
/// `offset` on its line; added colons only ever sit there.
fn colons_on_line(text: &str, offset: usize) -> usize {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = &before[before.rfind('\n').map_or(0, |at| at + 1)..];
    line.matches(":[").count()
}

/// Reads Triton's model configuration in its JSON form (protobuf's JSON mapping, as Triton's
/// `/config` answers and its repository `load` takes): field names as in the .proto or in
/// lowerCamelCase, 64-bit integers as numbers or strings. Unknown fields are refused.
pub fn model_config_from_json(json: &serde_json::Value) -> Result<pb::ModelConfig, String> {
    let descriptor = model_config_descriptor()?;
    let message = DynamicMessage::deserialize(descriptor, json).map_err(|e| e.to_string())?;
    pb::ModelConfig::decode(message.encode_to_vec().as_slice()).map_err(|e| e.to_string())
}

/// Triton's JSON form of a model configuration: the .proto's field names, every field present
/// (defaults included) and 64-bit integers as numbers, as Triton's `/config` writes them.
pub fn model_config_to_json(config: &pb::ModelConfig) -> Result<serde_json::Value, String> {
    let descriptor = model_config_descriptor()?;
    let message = DynamicMessage::decode(descriptor, config.encode_to_vec().as_slice())
        .map_err(|e| e.to_string())?;
    let options = prost_reflect::SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(false)
        .skip_default_fields(false);
    message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| e.to_string())
}

/// The line and column (from 1, counting characters) of a byte offset into `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |at| at + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_reads_a_triton_config() {
        let config = model_config_from_text(
            "name: \"simple\"\nplatform: \"onnxruntime_onnx\"\nmax_batch_size : 8\n\
             input [ { name: \"INPUT0\" data_type: TYPE_INT32 dims: [ 16 ] } ]\n\
             # a comment\n\
             parameters [ { key: \"execute_delay_ms\" value: { string_value: \"3\" } } ]\n",
        )
        .expect("parses");
        assert_eq!(config.name, "simple");
        assert_eq!(config.max_batch_size, 8);
        assert_eq!(config.input[0].dims, [16]);
        assert_eq!(config.input[0].data_type, pb::DataType::TypeInt32 as i32);
        assert_eq!(config.parameters["execute_delay_ms"].string_value, "3");
    }

    #[test]
    fn lists_of_messages_need_no_colon() {
        let config = model_config_from_text(
            "input [\n  {\n    name: \"a\"\n    dims: [ 16 ]\n  },\n  { name: \"b\" }\n]\n\
             instance_group [ { count: 2 } ]\noutput: [ { name: \"c\" } ]\n",
        )
        .expect("parses");
        let names: Vec<&str> = config.input.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(config.instance_group[0].count, 2);
        assert_eq!(config.output[0].name, "c");
        let error = model_config_from_text("input [ { name: \"a\" } ]\ndims [ 1 ]\n")
            .expect_err("dims is not a field of ModelConfig");
        assert_eq!(error.line, 2, "{error}");
    }

    #[test]
    fn text_errors_name_line_and_column() {
        let error = model_config_from_text("name: \"x\"\nmax_batch_size: 8\n  dimz: [1]\n")
            .expect_err("unknown field");
        assert_eq!((error.line, error.column), (3, 3), "{error}");
        assert!(error.message.contains("dimz"), "{error}");
        let error = model_config_from_text("name: \"x\"\nmax_batch_size: \"eight\"\n")
            .expect_err("wrong type");
        assert_eq!(error.line, 2, "{error}");
    }

    #[test]
    fn json_round_trip_keeps_field_names_and_numbers() {
        let config = model_config_from_text(
            "name: \"m\" max_batch_size: 4 input [ { name: \"x\" data_type: TYPE_FP32 dims: [ -1, 3 ] } ]",
        )
        .expect("parses");
        let json = model_config_to_json(&config).expect("json");
        assert_eq!(json["max_batch_size"], 4);
        assert_eq!(json["input"][0]["dims"], serde_json::json!([-1, 3]));
        assert_eq!(json["input"][0]["data_type"], "TYPE_FP32");
        assert_eq!(model_config_from_json(&json).expect("reads back"), config);
        assert!(model_config_from_json(&serde_json::json!({"max_batch_size": "x"})).is_err());
    }
}
