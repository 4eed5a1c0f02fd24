//! Routing by what a request holds: a model's rules, evaluated in order before its policy; the
//! first whose conditions all hold sends the request to its version or alias. Pure functions
//! over plain data: the request is seen through [`Facts`], which the core implements.
//!
//! JSON: `"rules": [{"when": [{"rows": {"above": 16}}], "to": "2"},
//! {"when": [{"header": {"name": "x-tier", "equals": "gold"}}], "to": "gold"}]`.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// The most rules a model has, and conditions a rule has.
pub const MAX_RULES: usize = 64;
pub const MAX_CONDITIONS: usize = 16;
/// The most values an `in` lists.
pub const MAX_VALUES: usize = 256;
/// The longest name or value a rule names.
pub const MAX_RULE_TEXT: usize = 256;

/// Sends the requests it matches to a version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Every condition must hold; none: every request (then no rule after it can match).
    #[serde(default)]
    pub when: Vec<Condition>,
    /// A version label or an alias of the model.
    pub to: String,
}

/// One thing a request holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Condition {
    /// An HTTP header or gRPC metadata entry (names are case-insensitive).
    Header(TextMatch),
    /// A request parameter, as text (`true`, `3`, `0.5`, or the string).
    Parameter(TextMatch),
    /// The rows of an input (its first dimension; the first input when none is named).
    Rows(Rows),
    /// An input's datatype, or its rank.
    Input(InputMatch),
    /// The value of a one-element input.
    Value(ValueMatch),
}

/// A text compared one way: exactly one of `equals`, `in` and `prefix`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TextMatch {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<String>,
    #[serde(default, rename = "in", skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// Rows strictly above and/or strictly below a bound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rows {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InputMatch {
    pub name: String,
    /// The protocol's name of a datatype: `FP32`, `INT64`, `BYTES`...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datatype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<u32>,
}

/// A one-element input's value against a bound: `equals`, or `above` and/or `below`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValueMatch {
    pub input: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<f64>,
}

/// What a rule can see of a request.
pub trait Facts {
    fn header(&self, name: &str) -> Option<&str>;
    fn parameter(&self, name: &str) -> Option<Cow<'_, str>>;
    /// An input's datatype (the protocol's name) and shape; the first input for `None`.
    fn input(&self, name: Option<&str>) -> Option<(&'static str, &[usize])>;
    /// A one-element input's value as a number, and its datatype.
    fn scalar(&self, name: &str) -> Option<(f64, &'static str)>;
}

/// The first rule that `facts` match, by its place.
pub fn first_match(rules: &[Rule], facts: &impl Facts) -> Option<usize> {
    rules.iter().position(|rule| matches(rule, facts))
}

/// Whether every condition of `rule` holds.
pub fn matches(rule: &Rule, facts: &impl Facts) -> bool {
    rule.when.iter().all(|condition| holds(condition, facts))
}

/// A bound as the input's datatype holds it: `0.1` against an FP32 input is the FP32 nearest
/// 0.1, which is what a client sending 0.1 sends.
fn as_datatype(bound: f64, datatype: &str) -> f64 {
    match datatype {
        "FP32" => f64::from(bound as f32),
        "FP16" => half::f16::from_f64(bound).to_f64(),
        "BF16" => half::bf16::from_f64(bound).to_f64(),
        _ => bound,
    }
}

fn holds(condition: &Condition, facts: &impl Facts) -> bool {
    match condition {
        Condition::Header(text) => facts.header(&text.name).is_some_and(|v| text.matches(v)),
        Condition::Parameter(text) => facts
            .parameter(&text.name)
            .is_some_and(|value| text.matches(&value)),
        Condition::Rows(rows) => facts
            .input(rows.input.as_deref())
            .and_then(|(_, shape)| shape.first())
            .is_some_and(|&count| {
                let count = count as u64;
                rows.above.is_none_or(|above| count > above)
                    && rows.below.is_none_or(|below| count < below)
            }),
        Condition::Input(input) => {
            facts
                .input(Some(&input.name))
                .is_some_and(|(datatype, shape)| {
                    input.datatype.as_deref().is_none_or(|d| d == datatype)
                        && input.rank.is_none_or(|rank| rank as usize == shape.len())
                })
        }
        Condition::Value(bound) => facts.scalar(&bound.input).is_some_and(|(value, datatype)| {
            let typed = |bound: f64| as_datatype(bound, datatype);
            bound.equals.is_none_or(|equals| value == typed(equals))
                && bound.above.is_none_or(|above| value > typed(above))
                && bound.below.is_none_or(|below| value < typed(below))
        }),
    }
}

impl TextMatch {
    fn matches(&self, value: &str) -> bool {
        if let Some(equals) = &self.equals {
            return value == equals;
        }
        if let Some(one_of) = &self.one_of {
            return one_of.iter().any(|candidate| candidate == value);
        }
        self.prefix
            .as_deref()
            .is_some_and(|prefix| value.starts_with(prefix))
    }

    fn check(&self, what: &str) -> Result<(), String> {
        let ways = [
            self.equals.is_some(),
            self.one_of.is_some(),
            self.prefix.is_some(),
        ];
        if ways.iter().filter(|&&way| way).count() != 1 {
            return Err(format!(
                "a {what} condition on '{}' takes exactly one of equals, in and prefix",
                crate::error::quoted(&self.name)
            ));
        }
        if let Some(values) = &self.one_of
            && (values.is_empty() || values.len() > MAX_VALUES)
        {
            return Err(format!("`in` lists 1 to {MAX_VALUES} values"));
        }
        let texts = std::iter::once(&self.name)
            .chain(&self.equals)
            .chain(&self.prefix)
            .chain(self.one_of.iter().flatten());
        check_texts(texts)
    }
}

fn check_texts<'a>(mut texts: impl Iterator<Item = &'a String>) -> Result<(), String> {
    match texts.find(|text| text.is_empty() || text.len() > MAX_RULE_TEXT) {
        Some(text) => Err(format!(
            "'{}': a rule's names and values are 1 to {MAX_RULE_TEXT} bytes",
            crate::error::quoted(text)
        )),
        None => Ok(()),
    }
}

/// One input of the model, as a rule is checked against it.
pub struct ModelInput {
    pub name: String,
    /// The protocol's name of its datatype.
    pub datatype: String,
    /// Its dims without the batch dimension.
    pub dims: Vec<i64>,
}

/// What the model offers a rule to be checked against: its live versions and the aliases of
/// live versions, and, by each of those names, the inputs of that version where this gateway
/// serves it.
pub struct Checked<'a> {
    pub targets: &'a [String],
    pub inputs: &'a std::collections::BTreeMap<String, Vec<ModelInput>>,
}

/// Checks a model's rules when they are set: their bounds, what they name (versions and
/// aliases, inputs the model has), conditions that can never hold, and rules that no request
/// can reach because an earlier one takes every request they would. Each error names its rule
/// (from 1).
pub fn check(rules: &[Rule], model: &Checked<'_>) -> Result<(), String> {
    if rules.len() > MAX_RULES {
        return Err(format!("a model has at most {MAX_RULES} rules"));
    }
    for (index, rule) in rules.iter().enumerate() {
        let at = |message: String| format!("rule {}: {message}", index + 1);
        if rule.when.len() > MAX_CONDITIONS {
            return Err(at(format!("at most {MAX_CONDITIONS} conditions")));
        }
        if !model.targets.contains(&rule.to) {
            return Err(at(format!(
                "'{}' is not a version or an alias of the model",
                crate::error::quoted(&rule.to)
            )));
        }
        for condition in &rule.when {
            let inputs = model.inputs.get(&rule.to).map(Vec::as_slice);
            check_condition(condition, inputs).map_err(at)?;
        }
        if let Some(earlier) = rules[..index]
            .iter()
            .position(|earlier| covers(earlier, rule))
        {
            return Err(at(format!(
                "never reached: rule {} takes every request it would",
                earlier + 1
            )));
        }
    }
    Ok(())
}

/// One condition, against the inputs of the version its rule sends to (`None`: not served
/// here, so not checked).
fn check_condition(condition: &Condition, inputs: Option<&[ModelInput]>) -> Result<(), String> {
    let input = |name: &str| -> Result<Option<&ModelInput>, String> {
        let Some(inputs) = inputs else {
            return Ok(None);
        };
        inputs
            .iter()
            .find(|input| input.name == name)
            .map(Some)
            .ok_or_else(|| {
                let known: Vec<&str> = inputs.iter().map(|input| input.name.as_str()).collect();
                format!(
                    "the model has no input '{}' (it has {})",
                    crate::error::quoted(name),
                    known.join(", ")
                )
            })
    };
    match condition {
        Condition::Header(text) => {
            text.check("header")?;
            if !text
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
            {
                return Err(format!(
                    "'{}' is not a header name",
                    crate::error::quoted(&text.name)
                ));
            }
            Ok(())
        }
        Condition::Parameter(text) => text.check("parameter"),
        Condition::Rows(rows) => {
            if let Some(name) = &rows.input {
                check_texts(std::iter::once(name))?;
                input(name)?;
            }
            match (rows.above, rows.below) {
                (None, None) => Err("a rows condition takes above and/or below".into()),
                (Some(above), Some(below)) if below <= above.saturating_add(1) => Err(format!(
                    "no count of rows is above {above} and below {below}: it never holds"
                )),
                (_, Some(0)) => Err("no count of rows is below 0: it never holds".into()),
                _ => Ok(()),
            }
        }
        Condition::Input(matched) => {
            check_texts(std::iter::once(&matched.name))?;
            if matched.datatype.is_none() && matched.rank.is_none() {
                return Err("an input condition takes a datatype and/or a rank".into());
            }
            if let Some(datatype) = &matched.datatype
                && datatype.parse::<switchyard_runtimes::DataType>().is_err()
            {
                return Err(format!(
                    "'{}' is not a datatype",
                    crate::error::quoted(datatype)
                ));
            }
            if let (Some(declared), Some(datatype)) = (input(&matched.name)?, &matched.datatype)
                && declared.datatype != *datatype
            {
                return Err(format!(
                    "input '{}' of the version it sends to is {}: a request of {datatype} would be refused there",
                    matched.name, declared.datatype
                ));
            }
            Ok(())
        }
        Condition::Value(bound) => {
            check_texts(std::iter::once(&bound.input))?;
            let values = [bound.equals, bound.above, bound.below];
            if values.iter().all(Option::is_none) {
                return Err("a value condition takes equals, above and/or below".into());
            }
            if values.iter().flatten().any(|value| !value.is_finite()) {
                return Err("a value condition's bounds are finite numbers".into());
            }
            if let (Some(above), Some(below)) = (bound.above, bound.below)
                && below <= above
            {
                return Err(format!(
                    "no value is above {above} and below {below}: it never holds"
                ));
            }
            if let Some(declared) = input(&bound.input)?
                && declared.dims.iter().any(|&dim| dim != 1)
            {
                return Err(format!(
                    "input '{}' has dims {:?}: a value condition needs a one-element input",
                    bound.input, declared.dims
                ));
            }
            Ok(())
        }
    }
}

/// Whether every request that `later` matches is matched by `earlier` first: `earlier` has no
/// condition, or only conditions that `later` has too.
fn covers(earlier: &Rule, later: &Rule) -> bool {
    earlier
        .when
        .iter()
        .all(|condition| later.when.contains(condition))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Request {
        headers: Vec<(&'static str, &'static str)>,
        rows: usize,
        flag: f64,
    }

    impl Facts for Request {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| *value)
        }
        fn parameter(&self, _: &str) -> Option<Cow<'_, str>> {
            None
        }
        fn input(&self, name: Option<&str>) -> Option<(&'static str, &[usize])> {
            match name {
                None | Some("x") => Some(("FP32", std::slice::from_ref(&self.rows))),
                _ => None,
            }
        }
        fn scalar(&self, name: &str) -> Option<(f64, &'static str)> {
            (name == "flag").then_some((f64::from(self.flag as f32), "FP32"))
        }
    }

    fn rules(json: serde_json::Value) -> Vec<Rule> {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn the_first_rule_whose_conditions_all_hold_wins() {
        let ordered = rules(serde_json::json!([
            {"when": [{"rows": {"above": 16}}], "to": "2"},
            {"when": [{"header": {"name": "x-tier", "equals": "gold"}}], "to": "gold"},
            {"when": [{"value": {"input": "flag", "above": 0.5}}, {"header": {"name": "x-tier", "prefix": "si"}}], "to": "3"},
        ]));
        let request = |headers, rows, flag| Request {
            headers,
            rows,
            flag,
        };
        assert_eq!(first_match(&ordered, &request(vec![], 17, 0.0)), Some(0));
        assert_eq!(
            first_match(&ordered, &request(vec![("X-Tier", "gold")], 17, 0.0)),
            Some(0)
        );
        assert_eq!(
            first_match(&ordered, &request(vec![("x-tier", "gold")], 16, 0.0)),
            Some(1)
        );
        assert_eq!(
            first_match(&ordered, &request(vec![("x-tier", "silver")], 1, 1.0)),
            Some(2)
        );
        assert_eq!(
            first_match(&ordered, &request(vec![("x-tier", "silver")], 1, 0.5)),
            None,
            "every condition"
        );
        assert_eq!(first_match(&ordered, &request(vec![], 1, 0.0)), None);
        // An FP32 0.1 is not above a bound of 0.1, and equals it.
        let tenth = rules(serde_json::json!([
            {"when": [{"value": {"input": "flag", "above": 0.1}}], "to": "1"},
            {"when": [{"value": {"input": "flag", "equals": 0.1}}], "to": "2"}
        ]));
        assert_eq!(first_match(&tenth, &request(vec![], 1, 0.1)), Some(1));
    }

    #[test]
    fn rules_are_checked_when_set() {
        let targets = ["1".to_owned(), "2".to_owned(), "gold".to_owned()];
        let input = |name: &str, dims| ModelInput {
            name: name.into(),
            datatype: "FP32".into(),
            dims,
        };
        let inputs = [input("x", vec![64]), input("flag", vec![1])];
        let by_target = targets
            .iter()
            .map(|target| {
                let copy = inputs
                    .iter()
                    .map(|i| input(&i.name, i.dims.clone()))
                    .collect();
                (target.clone(), copy)
            })
            .collect();
        let model = Checked {
            targets: &targets,
            inputs: &by_target,
        };
        let refused = |json: serde_json::Value, reason: &str| {
            let error = check(&rules(json.clone()), &model).unwrap_err();
            assert!(error.contains(reason), "{json}: {error}");
        };
        refused(
            serde_json::json!([{"to": "9"}]),
            "not a version or an alias",
        );
        refused(
            serde_json::json!([{"when": [{"rows": {"input": "nope", "above": 1}}], "to": "1"}]),
            "no input 'nope'",
        );
        refused(
            serde_json::json!([{"when": [{"value": {"input": "x", "above": 1}}], "to": "1"}]),
            "one-element",
        );
        refused(
            serde_json::json!([{"when": [{"rows": {"above": 4, "below": 5}}], "to": "1"}]),
            "never holds",
        );
        refused(
            serde_json::json!([{"when": [{"input": {"name": "x", "datatype": "INT8"}}], "to": "1"}]),
            "would be refused there",
        );
        refused(
            serde_json::json!([{"when": [{"header": {"name": "a b", "equals": "1"}}], "to": "1"}]),
            "not a header name",
        );
        refused(
            serde_json::json!([{"when": [{"header": {"name": "a", "equals": "1", "prefix": "1"}}], "to": "1"}]),
            "exactly one",
        );
        refused(
            serde_json::json!([{"to": "1"}, {"when": [{"rows": {"above": 1}}], "to": "2"}]),
            "rule 2: never reached: rule 1",
        );
        refused(
            serde_json::json!([
                {"when": [{"rows": {"above": 1}}], "to": "1"},
                {"when": [{"rows": {"above": 1}}, {"header": {"name": "a", "equals": "b"}}], "to": "2"}
            ]),
            "never reached",
        );
        check(
            &rules(serde_json::json!([
                {"when": [{"rows": {"above": 16}}], "to": "2"},
                {"when": [{"header": {"name": "x-tier", "in": ["gold", "platinum"]}}], "to": "gold"},
                {"when": [{"value": {"input": "flag", "equals": 1}}], "to": "1"},
                {"to": "1"}
            ])),
            &model,
        )
        .unwrap();
    }
}
