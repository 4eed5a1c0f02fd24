//! Routing policy: which model version serves a request that names none.
//!
//! Everything here is a pure function over plain data. Randomness comes from a
//! caller-supplied `fastrand::Rng`, so the gateway can use a per-thread generator
//! and tests can use fixed seeds.
//!
//! JSON shape of [`TrafficPolicy`]: one flat object whose `mode` tag selects which
//! other mode fields are allowed, e.g.
//! `{"mode":"sticky","header":"x-user-id","shadow":{"version":"2","fraction":0.1}}`.
//! `max_error_rate` defaults to 0.5, score `exponent` to 4, bandit `floor` to 0.05, objective
//! `utilisation` to 0.8 and `floor` to 0.02.
//! serde cannot combine `#[serde(flatten)]` with `deny_unknown_fields` (it then
//! rejects every field), so `TrafficPolicy` has small hand-written serde impls
//! that keep this flat shape and still reject unknown fields, including fields
//! that belong to another mode.

use serde::de::Error as _;
use serde::ser::{Error as _, SerializeMap};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

use crate::routing::rules::{MAX_RULES, Rule};

pub const DEFAULT_MAX_ERROR_RATE: f64 = 0.5;
/// Scores such as accuracy sit close together (0.9 vs 0.6); the fourth power
/// turns that 1.5x gap into a 5x traffic gap, which is what "prefer the better
/// model" usually means in practice.
pub const DEFAULT_SCORE_EXPONENT: f64 = 4.0;
pub const DEFAULT_BANDIT_FLOOR: f64 = 0.05;
/// Below 1 so that a version's queue has slack for bursts: at 0.8 a replica is busy four
/// fifths of the time and queueing stays short.
pub const DEFAULT_OBJECTIVE_UTILISATION: f64 = 0.8;
/// Enough traffic for every version's latency and capacity to stay measured.
pub const DEFAULT_OBJECTIVE_FLOOR: f64 = 0.02;

#[derive(Debug, Clone, PartialEq)]
pub struct TrafficPolicy {
    pub mode: PolicyMode,
    /// Optional shadow traffic, combinable with any mode.
    pub shadow: Option<ShadowPolicy>,
    /// Rules on what a request holds, tried in order before the mode; the first that matches
    /// names the version ([`crate::routing::rules`]).
    pub rules: Vec<Rule>,
    /// Versions whose recent error rate is above this get no traffic from the policy.
    pub max_error_rate: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum PolicyMode {
    Fixed,
    /// The same value of `header` always reaches the same version.
    Sticky {
        header: String,
    },
    /// Weight = base_weight * score^exponent; `exponent` defaults to [`DEFAULT_SCORE_EXPONENT`].
    Score {
        metric: String,
        #[serde(default = "default_score_exponent")]
        exponent: f64,
    },
    /// `floor` (default [`DEFAULT_BANDIT_FLOOR`]) is the minimum traffic share per arm.
    Bandit {
        #[serde(default = "default_bandit_floor")]
        floor: f64,
        latency_objective_ms: u64,
    },
    /// Shares that maximise Σ w_i·P_i within each version's measured capacity
    /// (`routing::objective`); P_i is the latest score of `metric`, or Σ weight·score over
    /// `metrics`. Exactly one of the two is given.
    Objective {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        metric: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        metrics: Option<BTreeMap<String, f64>>,
        #[serde(default = "default_objective_utilisation")]
        utilisation: f64,
        #[serde(default = "default_objective_floor")]
        floor: f64,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowPolicy {
    pub version: String,
    pub fraction: f64,
}

impl PolicyMode {
    /// The `mode` it is written with.
    pub fn name(&self) -> &'static str {
        match self {
            PolicyMode::Fixed => "fixed",
            PolicyMode::Sticky { .. } => "sticky",
            PolicyMode::Score { .. } => "score",
            PolicyMode::Bandit { .. } => "bandit",
            PolicyMode::Objective { .. } => "objective",
        }
    }
}

impl Default for TrafficPolicy {
    fn default() -> Self {
        Self {
            mode: PolicyMode::Fixed,
            shadow: None,
            rules: Vec::new(),
            max_error_rate: DEFAULT_MAX_ERROR_RATE,
        }
    }
}

impl TrafficPolicy {
    /// Checks what can be checked without the candidate list; `floor * arms < 1`
    /// depends on how many arms are live, so [`choose`] clamps the floor instead.
    pub fn validate(&self) -> Result<(), String> {
        let named = match &self.mode {
            PolicyMode::Sticky { header: name } | PolicyMode::Score { metric: name, .. } => {
                vec![name.as_str()]
            }
            PolicyMode::Objective {
                metric, metrics, ..
            } => metric
                .iter()
                .map(String::as_str)
                .chain(metrics.iter().flat_map(|m| m.keys().map(String::as_str)))
                .collect(),
            _ => Vec::new(),
        };
        let shadowed = self.shadow.iter().map(|shadow| shadow.version.as_str());
        if let Some(long) = named
            .into_iter()
            .chain(shadowed)
            .find(|name| name.len() > MAX_POLICY_NAME_BYTES)
        {
            return Err(format!(
                "'{}' is longer than {MAX_POLICY_NAME_BYTES} bytes",
                crate::error::quoted(long)
            ));
        }
        if self.rules.len() > MAX_RULES {
            return Err(format!("a model has at most {MAX_RULES} rules"));
        }
        if !(0.0..=1.0).contains(&self.max_error_rate) {
            return Err(format!(
                "max_error_rate {} is not in [0, 1]",
                self.max_error_rate
            ));
        }
        match &self.mode {
            PolicyMode::Fixed => {}
            PolicyMode::Sticky { header } if !is_http_token(header) => {
                return Err(format!(
                    "sticky header {header:?} is not an HTTP header name"
                ));
            }
            PolicyMode::Sticky { .. } => {}
            PolicyMode::Score { metric, exponent } => {
                if metric.trim().is_empty() {
                    return Err("score metric is empty".into());
                }
                if !exponent.is_finite() || *exponent < 0.0 {
                    return Err(format!("score exponent {exponent} must be finite and >= 0"));
                }
            }
            PolicyMode::Bandit {
                floor,
                latency_objective_ms,
            } => {
                if !(0.0..1.0).contains(floor) {
                    return Err(format!("bandit floor {floor} is not in [0, 1)"));
                }
                if *latency_objective_ms == 0 {
                    return Err("bandit latency_objective_ms must be > 0".into());
                }
            }
            // Checked below, where it reads more easily on its own.
            PolicyMode::Objective { .. } => {}
        }
        if let PolicyMode::Objective {
            metric,
            metrics,
            utilisation,
            floor,
        } = &self.mode
        {
            match (metric, metrics) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(
                        "objective takes either `metric` or `metrics`, not both or neither".into(),
                    );
                }
                (Some(metric), None) if metric.trim().is_empty() => {
                    return Err("objective metric is empty".into());
                }
                (None, Some(metrics))
                    if metrics.is_empty() || metrics.len() > MAX_OBJECTIVE_METRICS =>
                {
                    return Err(format!(
                        "objective metrics must name 1 to {MAX_OBJECTIVE_METRICS} metrics"
                    ));
                }
                (None, Some(metrics)) => {
                    if let Some((name, weight)) = metrics
                        .iter()
                        .find(|(name, weight)| name.trim().is_empty() || !weight.is_finite())
                    {
                        return Err(format!(
                            "objective metric {name:?} with weight {weight} needs a name and a finite weight"
                        ));
                    }
                }
                _ => {}
            }
            if !(*utilisation > 0.0 && *utilisation <= 1.0) {
                return Err(format!(
                    "objective utilisation {utilisation} is not in (0, 1]"
                ));
            }
            if !(0.0..1.0).contains(floor) {
                return Err(format!("objective floor {floor} is not in [0, 1)"));
            }
        }
        if let Some(shadow) = &self.shadow {
            if shadow.version.trim().is_empty() {
                return Err("shadow version is empty".into());
            }
            if !(0.0..=1.0).contains(&shadow.fraction) {
                return Err(format!(
                    "shadow fraction {} is not in [0, 1]",
                    shadow.fraction
                ));
            }
        }
        Ok(())
    }
}

/// The metrics whose scores make a version's quality P, and their weights: the score policy's
/// metric, or the objective's. Empty for modes that do not look at scores.
impl TrafficPolicy {
    pub fn quality_metrics(&self) -> Vec<(&str, f64)> {
        match &self.mode {
            PolicyMode::Score { metric, .. }
            | PolicyMode::Objective {
                metric: Some(metric),
                ..
            } => vec![(metric.as_str(), 1.0)],
            PolicyMode::Objective {
                metrics: Some(metrics),
                ..
            } => metrics
                .iter()
                .map(|(name, weight)| (name.as_str(), *weight))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// P of a version from its latest scores: the weighted sum of the policy's metrics, or
    /// None when the policy follows no score or one of them is missing.
    pub fn quality(&self, latest: &BTreeMap<String, f64>) -> Option<f64> {
        let metrics = self.quality_metrics();
        if metrics.is_empty() {
            return None;
        }
        metrics
            .iter()
            .map(|(name, weight)| latest.get(*name).map(|score| score * weight))
            .sum()
    }
}

/// A weighted objective is a handful of metrics; the bound keeps a stored policy small.
pub const MAX_OBJECTIVE_METRICS: usize = 16;

/// The longest metric name, sticky header or shadow version a policy names.
const MAX_POLICY_NAME_BYTES: usize = 128;

/// RFC 9110 `token`, the grammar of header field names.
fn is_http_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Reads the JSON object once, lifts out the fields shared by every mode, and hands
/// the rest to `PolicyMode`, whose `deny_unknown_fields` then rejects both unknown
/// fields and fields that belong to another mode.
impl<'de> Deserialize<'de> for TrafficPolicy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut object = Map::deserialize(deserializer)?;
        let mut take = |field: &str| object.remove(field).filter(|value| !value.is_null());
        let shadow = take("shadow").map(serde_json::from_value).transpose();
        let rules = take("rules").map(serde_json::from_value).transpose();
        let max_error_rate = take("max_error_rate")
            .map(serde_json::from_value)
            .transpose();
        // serde lets unit variants ignore extra fields, so `fixed` is checked here.
        if object.get("mode").and_then(Value::as_str) == Some("fixed")
            && let Some(field) = object.keys().find(|field| *field != "mode")
        {
            let message = format!("unknown field `{field}` for mode `fixed`");
            return Err(D::Error::custom(message));
        }
        let mode = serde_json::from_value(Value::Object(object));
        Ok(Self {
            mode: mode.map_err(D::Error::custom)?,
            shadow: shadow.map_err(D::Error::custom)?,
            rules: rules.map_err(D::Error::custom)?.unwrap_or_default(),
            max_error_rate: max_error_rate
                .map_err(D::Error::custom)?
                .unwrap_or(DEFAULT_MAX_ERROR_RATE),
        })
    }
}

impl Serialize for TrafficPolicy {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Value::Object(mode_fields) =
            serde_json::to_value(&self.mode).map_err(S::Error::custom)?
        else {
            return Err(S::Error::custom(
                "policy mode did not serialise to an object",
            ));
        };
        // `mode` goes first so stored policies read naturally; `Map` sorts its keys.
        let (tag, fields): (Vec<_>, Vec<_>) =
            mode_fields.iter().partition(|(key, _)| *key == "mode");
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in tag.into_iter().chain(fields) {
            map.serialize_entry(key, value)?;
        }
        if let Some(shadow) = &self.shadow {
            map.serialize_entry("shadow", shadow)?;
        }
        if !self.rules.is_empty() {
            map.serialize_entry("rules", &self.rules)?;
        }
        map.serialize_entry("max_error_rate", &self.max_error_rate)?;
        map.end()
    }
}

fn default_score_exponent() -> f64 {
    DEFAULT_SCORE_EXPONENT
}

fn default_bandit_floor() -> f64 {
    DEFAULT_BANDIT_FLOOR
}

fn default_objective_utilisation() -> f64 {
    DEFAULT_OBJECTIVE_UTILISATION
}

fn default_objective_floor() -> f64 {
    DEFAULT_OBJECTIVE_FLOOR
}

/// The JSON shape for the management API's OpenAPI document, written next to the hand-written
/// serde impls that it describes.
impl utoipa::PartialSchema for TrafficPolicy {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        let field = |kind: Type, description: &str| {
            ObjectBuilder::new()
                .schema_type(kind)
                .description(Some(description))
        };
        let name = |description: &str| {
            field(Type::String, description)
                .min_length(Some(1))
                .max_length(Some(MAX_POLICY_NAME_BYTES))
        };
        let share = |description: &str, high: f64| {
            field(Type::Number, description)
                .minimum(Some(0.0))
                .exclusive_maximum(Some(high))
        };
        // Every mode's object: its own fields, the shared ones, nothing else.
        let mode = |mode: &str, fields: Vec<(&str, ObjectBuilder)>, required: &[&str]| {
            let shadow = ObjectBuilder::new()
                .property("version", name("the version or alias mirrored to"))
                .property(
                    "fraction",
                    field(Type::Number, "the share of requests mirrored")
                        .minimum(Some(0.0))
                        .maximum(Some(1.0)),
                )
                .required("version")
                .required("fraction")
                .additional_properties(Some(
                    utoipa::openapi::schema::AdditionalProperties::FreeForm(false),
                ));
            let mut object = ObjectBuilder::new()
                .property(
                    "mode",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .enum_values(Some([mode])),
                )
                .required("mode")
                .property("shadow", shadow)
                .property(
                    "rules",
                    utoipa::openapi::schema::ArrayBuilder::new()
                        .items(ObjectBuilder::new().schema_type(Type::Object).description(Some(
                            "{\"when\": [conditions], \"to\": version or alias}; a condition is one of header, parameter, rows, input, value (docs/reference.md#rules-routing-by-what-a-request-holds)",
                        )))
                        .max_items(Some(MAX_RULES))
                        .description(Some(
                            "tried in order before the mode: the first whose conditions all hold names the version",
                        )),
                )
                .property(
                    "max_error_rate",
                    field(
                        Type::Number,
                        "versions with a higher recent error rate get no traffic from the policy",
                    )
                    .minimum(Some(0.0))
                    .maximum(Some(1.0))
                    .default(Some(DEFAULT_MAX_ERROR_RATE.into())),
                )
                .additional_properties(Some(
                    utoipa::openapi::schema::AdditionalProperties::FreeForm(false),
                ));
            for (key, schema) in fields {
                object = object.property(key, schema);
            }
            for key in required {
                object = object.required(*key);
            }
            object
        };
        let metrics = ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "metric -> weight; a version's quality is the weighted sum of its latest scores",
            ))
            .additional_properties(Some(ObjectBuilder::new().schema_type(Type::Number)))
            .min_properties(Some(1))
            .max_properties(Some(MAX_OBJECTIVE_METRICS));
        let fixed = mode("fixed", Vec::new(), &[]);
        let sticky = mode(
            "sticky",
            vec![(
                "header",
                name("the header (gRPC metadata key or request parameter) whose value is the key")
                    .pattern(Some(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")),
            )],
            &["header"],
        );
        let score = mode(
            "score",
            vec![
                (
                    "metric",
                    name("the registry metric whose latest score is a version's quality"),
                ),
                (
                    "exponent",
                    field(Type::Number, "weight = base weight x score^exponent")
                        .minimum(Some(0.0))
                        .default(Some(DEFAULT_SCORE_EXPONENT.into())),
                ),
            ],
            &["metric"],
        );
        let bandit = mode(
            "bandit",
            vec![
                (
                    "floor",
                    share("least share of traffic per version", 1.0)
                        .default(Some(DEFAULT_BANDIT_FLOOR.into())),
                ),
                (
                    "latency_objective_ms",
                    field(
                        Type::Integer,
                        "a success within this is a reward of 1 when the model has no feedback",
                    )
                    .minimum(Some(1.0)),
                ),
            ],
            &["latency_objective_ms"],
        );
        let objective = |quality: (&'static str, ObjectBuilder)| {
            let required = [quality.0];
            mode(
                "objective",
                vec![
                    quality,
                    (
                        "utilisation",
                        field(
                            Type::Number,
                            "the share of its measured capacity a version is given at most",
                        )
                        .exclusive_minimum(Some(0.0))
                        .maximum(Some(1.0))
                        .default(Some(DEFAULT_OBJECTIVE_UTILISATION.into())),
                    ),
                    (
                        "floor",
                        share("least share of traffic per version", 1.0)
                            .default(Some(DEFAULT_OBJECTIVE_FLOOR.into())),
                    ),
                ],
                &required,
            )
        };
        OneOfBuilder::new()
            .item(fixed)
            .item(sticky)
            .item(score)
            .item(bandit)
            .item(objective((
                "metric",
                name("the registry metric whose latest score is a version's quality"),
            )))
            .item(objective(("metrics", metrics)))
            .into()
    }
}

impl utoipa::ToSchema for TrafficPolicy {
    fn name() -> std::borrow::Cow<'static, str> {
        "Policy".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<TrafficPolicy, String> {
        serde_json::from_str(json).map_err(|error| error.to_string())
    }

    fn fixed() -> TrafficPolicy {
        TrafficPolicy::default()
    }

    fn sticky() -> TrafficPolicy {
        parse(r#"{"mode":"sticky","header":"x-user-id"}"#).unwrap()
    }

    fn score() -> TrafficPolicy {
        parse(r#"{"mode":"score","metric":"accuracy"}"#).unwrap()
    }

    fn bandit(floor: f64) -> TrafficPolicy {
        let mode = PolicyMode::Bandit {
            floor,
            latency_objective_ms: 500,
        };
        TrafficPolicy { mode, ..fixed() }
    }

    #[test]
    fn policy_json_round_trips() {
        let example =
            r#"{"mode":"sticky","header":"x-user-id","shadow":{"version":"2","fraction":0.1}}"#;
        let mut expected = sticky();
        expected.shadow = Some(ShadowPolicy {
            version: "2".into(),
            fraction: 0.1,
        });
        assert_eq!(parse(example), Ok(expected));
        assert!(matches!(&sticky().mode, PolicyMode::Sticky { header } if header == "x-user-id"));
        assert_eq!(parse(r#"{"mode":"fixed","shadow":null}"#), Ok(fixed()));
        assert!(matches!(score().mode, PolicyMode::Score { exponent, .. } if exponent == 4.0));
        let bandit_json = r#"{"mode":"bandit","latency_objective_ms":500,"max_error_rate":0.2}"#;
        let mut expected = bandit(DEFAULT_BANDIT_FLOOR);
        expected.max_error_rate = 0.2;
        assert_eq!(parse(bandit_json), Ok(expected));
        for json in [example, r#"{"mode":"fixed"}"#, bandit_json] {
            let policy = parse(json).unwrap();
            assert_eq!(parse(&serde_json::to_string(&policy).unwrap()), Ok(policy));
        }
        let stored = r#"{"mode":"sticky","header":"x-user-id","max_error_rate":0.5}"#;
        assert_eq!(serde_json::to_string(&sticky()).unwrap(), stored);
    }

    #[test]
    fn policy_json_rejects_bad_shapes() {
        let table = [
            (
                r#"{"mode":"fixed","colour":"red"}"#,
                "unknown field `colour`",
            ),
            (
                r#"{"mode":"fixed","header":"x-user-id"}"#,
                "unknown field `header`",
            ),
            (
                r#"{"mode":"score","metric":"a","floor":0.1}"#,
                "unknown field `floor`",
            ),
            (r#"{"mode":"sticky"}"#, "missing field `header`"),
            (
                r#"{"mode":"bandit"}"#,
                "missing field `latency_objective_ms`",
            ),
            (r#"{"mode":"random"}"#, "unknown variant `random`"),
            (r#"{"header":"x"}"#, "missing field `mode`"),
            (
                r#"{"mode":"fixed","shadow":{"version":"2","fraction":0,"x":1}}"#,
                "field `x`",
            ),
            (
                r#"{"mode":"fixed","max_error_rate":"high"}"#,
                "invalid type",
            ),
        ];
        for (json, message) in table {
            let error = parse(json).unwrap_err();
            assert!(error.contains(message), "{json}: {error}");
        }
    }

    #[test]
    fn objective_policies_parse_validate_and_weigh_metrics() {
        let single = parse(r#"{"mode":"objective","metric":"accuracy"}"#).unwrap();
        assert_eq!(
            single.mode,
            PolicyMode::Objective {
                metric: Some("accuracy".into()),
                metrics: None,
                utilisation: DEFAULT_OBJECTIVE_UTILISATION,
                floor: DEFAULT_OBJECTIVE_FLOOR,
            }
        );
        assert!(single.validate().is_ok());
        let weighted =
            parse(r#"{"mode":"objective","metrics":{"accuracy":1,"f1_macro":0.5},"utilisation":0.7,"floor":0}"#)
                .unwrap();
        assert!(weighted.validate().is_ok());
        let round_trip = serde_json::to_string(&weighted).unwrap();
        assert_eq!(parse(&round_trip), Ok(weighted.clone()));
        assert!(!round_trip.contains("\"metric\""), "{round_trip}");
        let scores: BTreeMap<String, f64> =
            [("accuracy".to_owned(), 0.9), ("f1_macro".to_owned(), 0.8)].into();
        assert_eq!(weighted.quality(&scores), Some(0.9 + 0.4));
        assert_eq!(single.quality(&scores), Some(0.9));
        let partial: BTreeMap<String, f64> = [("accuracy".to_owned(), 0.9)].into();
        assert_eq!(
            weighted.quality(&partial),
            None,
            "a missing metric leaves P unknown"
        );
        assert_eq!(fixed().quality(&scores), None);
        let invalid = [
            (r#"{"mode":"objective"}"#, "either `metric` or `metrics`"),
            (
                r#"{"mode":"objective","metric":"a","metrics":{"b":1}}"#,
                "either `metric` or `metrics`",
            ),
            (
                r#"{"mode":"objective","metric":" "}"#,
                "objective metric is empty",
            ),
            (r#"{"mode":"objective","metrics":{}}"#, "1 to 16 metrics"),
            (r#"{"mode":"objective","metrics":{"":1}}"#, "needs a name"),
            (
                r#"{"mode":"objective","metric":"a","utilisation":0}"#,
                "utilisation 0 is not in (0, 1]",
            ),
            (
                r#"{"mode":"objective","metric":"a","utilisation":1.5}"#,
                "utilisation",
            ),
            (
                r#"{"mode":"objective","metric":"a","floor":1}"#,
                "objective floor",
            ),
        ];
        for (json, message) in invalid {
            let error = parse(json).unwrap().validate().unwrap_err();
            assert!(error.contains(message), "{json}: {error}");
        }
        let error = parse(r#"{"mode":"objective","metric":"a","exponent":2}"#).unwrap_err();
        assert!(error.contains("unknown field `exponent`"), "{error}");
    }

    #[test]
    fn policy_validation_rejects_out_of_range_values() {
        let valid = [fixed(), sticky(), score(), bandit(0.05)];
        assert!(valid.iter().all(|policy| policy.validate().is_ok()));
        let invalid = [
            (r#"{"mode":"fixed","max_error_rate":1.5}"#, "max_error_rate"),
            (
                r#"{"mode":"fixed","shadow":{"version":"2","fraction":1.1}}"#,
                "shadow fraction",
            ),
            (
                r#"{"mode":"fixed","shadow":{"version":" ","fraction":0.1}}"#,
                "shadow version",
            ),
            (r#"{"mode":"sticky","header":""}"#, "sticky header"),
            (r#"{"mode":"sticky","header":"x user"}"#, "sticky header"),
            (r#"{"mode":"sticky","header":"x-üser"}"#, "sticky header"),
            (r#"{"mode":"score","metric":""}"#, "score metric"),
            (
                r#"{"mode":"score","metric":"accuracy","exponent":-1}"#,
                "score exponent",
            ),
            (
                r#"{"mode":"bandit","floor":1.0,"latency_objective_ms":500}"#,
                "bandit floor",
            ),
            (
                r#"{"mode":"bandit","floor":-0.1,"latency_objective_ms":500}"#,
                "bandit floor",
            ),
            (
                r#"{"mode":"bandit","latency_objective_ms":0}"#,
                "latency_objective_ms",
            ),
        ];
        for (json, message) in invalid {
            let error = parse(json).unwrap().validate().unwrap_err();
            assert!(error.contains(message), "{json}: {error}");
        }
        // JSON cannot carry these, but code-built policies can.
        let (mut infinite_exponent, mut nan_error_rate) = (score(), fixed());
        if let PolicyMode::Score { exponent, .. } = &mut infinite_exponent.mode {
            *exponent = f64::INFINITY;
        }
        nan_error_rate.max_error_rate = f64::NAN;
        assert!(infinite_exponent.validate().is_err() && nan_error_rate.validate().is_err());
    }
}
