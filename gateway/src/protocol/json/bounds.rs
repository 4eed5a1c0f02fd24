//! Bounded deserialisation of the request body's lists and maps: a count past its limit is
//! refused as soon as it is reached, so a small body cannot make serde build a huge structure.
//! The limits are the core's, the same as gRPC's scan applies.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::JsonParameter;
use crate::core::request::{MAX_DIMS, MAX_PARAMETER_BYTES, MAX_PARAMETERS, MAX_TENSORS};

struct BoundedSeq<T> {
    limit: usize,
    what: &'static str,
    element: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for BoundedSeq<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a list of at most {} {}", self.limit, self.what)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(16));
        while let Some(element) = seq.next_element()? {
            if out.len() == self.limit {
                return Err(de::Error::custom(format!(
                    "more than {} {}: the limit",
                    self.limit, self.what
                )));
            }
            out.push(element);
        }
        Ok(out)
    }
}

fn bounded<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
    limit: usize,
    what: &'static str,
) -> Result<Vec<T>, D::Error> {
    deserializer.deserialize_seq(BoundedSeq {
        limit,
        what,
        element: PhantomData,
    })
}

pub(super) fn tensors<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Vec<T>, D::Error> {
    bounded(deserializer, MAX_TENSORS, "tensors")
}

pub(super) fn optional_tensors<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Vec<T>>, D::Error> {
    tensors(deserializer).map(Some)
}

pub(super) fn dims<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<i64>, D::Error> {
    bounded(deserializer, MAX_DIMS, "dimensions")
}

struct BoundedParameters;

impl<'de> Visitor<'de> for BoundedParameters {
    type Value = BTreeMap<String, JsonParameter>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an object of at most {MAX_PARAMETERS} parameters")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = BTreeMap::new();
        while let Some((key, value)) = map.next_entry::<String, JsonParameter>()? {
            if out.len() == MAX_PARAMETERS {
                return Err(de::Error::custom(format!(
                    "more than {MAX_PARAMETERS} parameters: the limit"
                )));
            }
            let value_bytes = match &value {
                JsonParameter::String(text) => text.len(),
                _ => 0,
            };
            if key.len() > MAX_PARAMETER_BYTES || value_bytes > MAX_PARAMETER_BYTES {
                return Err(de::Error::custom(format!(
                    "a parameter's name or value is longer than {MAX_PARAMETER_BYTES} bytes"
                )));
            }
            out.insert(key, value);
        }
        Ok(out)
    }
}

pub(super) fn parameters<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<BTreeMap<String, JsonParameter>>, D::Error> {
    deserializer.deserialize_map(BoundedParameters).map(Some)
}
