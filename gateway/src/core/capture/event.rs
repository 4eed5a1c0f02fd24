//! One captured request: what the request path wrote into its ticket, and the JSON it is
//! written as, the same in a file's line and in a CloudEvent's body.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use switchyard_runtimes::{NamedTensor, Tensor};

use super::{Keep, Selection};
use crate::core::Parameter;
use crate::core::route::Chosen;
use crate::core::tensor_json::TensorData;
use crate::telemetry::keys::KeyFigures;

/// A captured request, filled in as it goes.
#[derive(Default)]
pub(super) struct Event {
    /// Unique per event: the CloudEvent's id.
    pub event_id: String,
    pub time: Option<SystemTime>,
    pub model: String,
    /// The version or alias the request named.
    pub asked: Option<String>,
    pub version: Option<Arc<str>>,
    pub chosen: Option<Chosen>,
    /// The request's id, which feedback names it by.
    pub id: Option<String>,
    pub key: Option<Arc<str>>,
    pub key_figures: Option<Arc<KeyFigures>>,
    pub protocol: &'static str,
    pub priority: u8,
    pub parameters: BTreeMap<String, Parameter>,
    pub inputs: Vec<Captured>,
    pub outcome: Option<Outcome>,
    pub latency: Option<Duration>,
    pub shadow: Option<ShadowNote>,
}

/// A tensor as the event keeps it.
pub(super) enum Captured {
    Data(NamedTensor),
    /// Redacted by the capture's spec.
    Redacted(Described),
    /// Past the event's byte budget.
    Omitted(Described),
}

/// A tensor's name, datatype and shape, without its data.
pub(super) struct Described {
    name: String,
    datatype: &'static str,
    shape: Vec<usize>,
}

pub(super) enum Outcome {
    Response(Vec<Captured>),
    Error {
        status: u16,
        code: &'static str,
        message: String,
    },
}

pub(super) struct ShadowNote {
    pub version: Arc<str>,
    pub comparison: Option<(f64, Option<bool>)>,
}

impl Event {
    pub fn new(model: &str) -> Event {
        Event {
            event_id: hex::encode(fastrand::u128(..).to_be_bytes()),
            time: Some(SystemTime::now()),
            model: model.to_owned(),
            ..Event::default()
        }
    }

    /// The tensor bytes it holds.
    pub fn bytes(&self) -> u64 {
        let outputs = match &self.outcome {
            Some(Outcome::Response(outputs)) => outputs.iter().map(Captured::bytes).sum(),
            _ => 0,
        };
        self.inputs.iter().map(Captured::bytes).sum::<u64>() + outputs
    }

    /// Its JSON, then a newline.
    pub fn encode(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(&EventJson(self)).unwrap_or_else(|error| {
            // Every part serialises; this is a JSON error all the same, not a lost event.
            format!(
                "{{\"event_id\":\"{}\",\"encoding_error\":\"{error}\"}}",
                self.event_id
            )
            .into_bytes()
        });
        line.push(b'\n');
        line
    }

    /// RFC 3339, to the millisecond.
    pub fn time_text(&self) -> String {
        humantime::format_rfc3339_millis(self.time.unwrap_or(SystemTime::UNIX_EPOCH)).to_string()
    }
}

impl Captured {
    pub fn bytes(&self) -> u64 {
        match self {
            Captured::Data(tensor) => tensor.tensor.data().len() as u64,
            Captured::Redacted(_) | Captured::Omitted(_) => 0,
        }
    }
}

/// The tensors of one side that the selection keeps, their data within `budget` bytes. The
/// data is copied: a tensor may be a slice of a whole request body, which the event would
/// otherwise hold, unaccounted, until it is written.
pub(super) fn captured(
    tensors: &[NamedTensor],
    selection: &Selection,
    budget: u64,
) -> Vec<Captured> {
    let mut left = budget;
    tensors
        .iter()
        .filter_map(|tensor| match selection.keep(&tensor.name) {
            Keep::Left => None,
            Keep::Redacted => Some(Captured::Redacted(shape_only(tensor))),
            Keep::Data => {
                let bytes = tensor.tensor.data().len() as u64;
                let copied = (bytes <= left)
                    .then(|| {
                        let data = bytes::Bytes::copy_from_slice(tensor.tensor.data());
                        let shape = tensor.tensor.shape().to_vec();
                        Tensor::new(tensor.tensor.dtype(), shape, data).ok()
                    })
                    .flatten();
                match copied {
                    Some(copy) => {
                        left -= bytes;
                        Some(Captured::Data(NamedTensor {
                            name: tensor.name.clone(),
                            tensor: copy,
                        }))
                    }
                    None => Some(Captured::Omitted(shape_only(tensor))),
                }
            }
        })
        .collect()
}

fn shape_only(tensor: &NamedTensor) -> Described {
    Described {
        name: tensor.name.clone(),
        datatype: tensor.tensor.dtype().as_str(),
        shape: tensor.tensor.shape().to_vec(),
    }
}

struct EventJson<'a>(&'a Event);

impl Serialize for EventJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let event = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("event_id", &event.event_id)?;
        map.serialize_entry("time", &event.time_text())?;
        map.serialize_entry("model", &event.model)?;
        map.serialize_entry("version", &event.version.as_deref())?;
        if let Some(asked) = &event.asked {
            map.serialize_entry("asked", asked)?;
        }
        map.serialize_entry("chosen", &event.chosen)?;
        map.serialize_entry("feedback_id", &event.id)?;
        map.serialize_entry("key", &event.key.as_deref())?;
        map.serialize_entry("protocol", event.protocol)?;
        map.serialize_entry("priority", &event.priority)?;
        map.serialize_entry(
            "latency_ms",
            &event.latency.map(|latency| latency.as_secs_f64() * 1e3),
        )?;
        map.serialize_entry(
            "request",
            &RequestJson {
                parameters: ParametersJson(&event.parameters),
                inputs: TensorsJson(&event.inputs),
            },
        )?;
        match &event.outcome {
            Some(Outcome::Response(outputs)) => map.serialize_entry(
                "response",
                &ResponseJson {
                    outputs: TensorsJson(outputs),
                },
            )?,
            Some(Outcome::Error {
                status,
                code,
                message,
            }) => map.serialize_entry(
                "error",
                &serde_json::json!({"status": status, "code": code, "message": message}),
            )?,
            None => {}
        }
        if let Some(shadow) = &event.shadow {
            let compared = shadow.comparison.map(|(max_abs_diff, argmax_agreed)| {
                serde_json::json!({"max_abs_diff": max_abs_diff, "argmax_agreed": argmax_agreed})
            });
            map.serialize_entry(
                "shadow",
                &serde_json::json!({
                    "version": &*shadow.version,
                    "compared": compared.is_some(),
                    "comparison": compared,
                }),
            )?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct RequestJson<'a> {
    parameters: ParametersJson<'a>,
    inputs: TensorsJson<'a>,
}

#[derive(Serialize)]
struct ResponseJson<'a> {
    outputs: TensorsJson<'a>,
}

struct ParametersJson<'a>(&'a BTreeMap<String, Parameter>);

impl Serialize for ParametersJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            match value {
                Parameter::Bool(b) => map.serialize_entry(name, b)?,
                Parameter::Int(i) => map.serialize_entry(name, i)?,
                Parameter::Double(d) => map.serialize_entry(name, d)?,
                Parameter::String(s) => map.serialize_entry(name, s)?,
            }
        }
        map.end()
    }
}

struct TensorsJson<'a>(&'a [Captured]);

impl Serialize for TensorsJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(TensorJson))
    }
}

struct TensorJson<'a>(&'a Captured);

impl Serialize for TensorJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        let (described, why) = match self.0 {
            Captured::Data(named) => {
                map.serialize_entry("name", &named.name)?;
                map.serialize_entry("datatype", named.tensor.dtype().as_str())?;
                map.serialize_entry("shape", named.tensor.shape())?;
                map.serialize_entry("data", &TensorData(&named.tensor))?;
                return map.end();
            }
            Captured::Redacted(described) => (described, "redacted"),
            Captured::Omitted(described) => (described, "omitted"),
        };
        map.serialize_entry("name", &described.name)?;
        map.serialize_entry("datatype", described.datatype)?;
        map.serialize_entry("shape", &described.shape)?;
        map.serialize_entry(why, &true)?;
        map.end()
    }
}
