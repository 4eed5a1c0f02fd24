//! Choosing the version that serves a request, all in one place: a pinned version or alias
//! wins; otherwise the model's policy ([`crate::routing::choose`], a pure function) picks among
//! the eligible weighted versions, falling back to the highest eligible one; and the policy
//! may name a shadow to mirror the request to.

use std::sync::Arc;

use crate::core::forward::RemoteVersion;
use crate::core::request::{InferRequest, Parameter};
use crate::core::table::{
    ModelEntry, ModelTable, ReadyVersion, UNKNOWN_MODEL, VersionEntry, VersionStatus,
};
use crate::error::GatewayError;
use crate::routing::{self, PolicyMode, TrafficPolicy, VersionStats};
use crate::version_key::VersionKey;

/// The version a request goes to, and what its outcome feeds.
pub struct Route {
    /// The model and the version's label.
    pub key: VersionKey,
    pub ready: Arc<ReadyVersion>,
    pub stats: Arc<VersionStats>,
    /// Set when the policy is a bandit and chose this version: the outcome is a reward.
    pub bandit_objective_ms: Option<u64>,
    /// Whether the request is remembered for feedback: only models under a bandit learn from
    /// it, so only they pay for the log.
    pub takes_feedback: bool,
    pub shadow: Option<ShadowTarget>,
    /// Why this version: what a captured request records.
    pub chosen: Chosen,
}

/// Why a request went to its version.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Chosen {
    /// The request named the version, or an alias of it.
    Pin,
    /// The model's rule at this place (from 0) matched what the request holds.
    Rule { rule: usize },
    /// The model's policy chose it; `weight` is the version's traffic weight.
    Policy { policy: &'static str, weight: u64 },
    /// No weighted version could serve: the highest eligible one did.
    Highest,
    /// The version its sequence is open on.
    Sequence,
}

/// A version only peers host: the request is forwarded to one of them. Shadows and bandit
/// rewards are left to the node that serves it.
pub struct RemoteRoute {
    pub key: VersionKey,
    pub remote: Arc<RemoteVersion>,
    pub stats: Arc<VersionStats>,
    pub chosen: Chosen,
}

/// Where a request goes: a version served here, or one served by peers.
pub enum Routed {
    Local(Route),
    Remote(RemoteRoute),
}

/// A version that also receives a copy of a request, for comparison only.
pub struct ShadowTarget {
    pub label: Arc<str>,
    pub ready: Arc<ReadyVersion>,
    pub stats: Arc<VersionStats>,
}

/// Picks the version for a request, and the shadow to mirror it to.
pub fn route(table: &ModelTable, request: &InferRequest) -> Result<Routed, GatewayError> {
    let model = table.model(&request.model)?;
    let mut rng = fastrand::Rng::new();
    let (version, chosen) = match (&request.version, rule_target(model, request)) {
        (Some(label), _) => (model.version(label)?, Chosen::Pin),
        (None, Some((rule, target))) => (model.version(target)?, Chosen::Rule { rule }),
        (None, None) => policy_choice(model, sticky_key(&model.policy, request), &mut rng)?,
    };
    // A pin or a rule chose it: the policy's figures and its shadow are not the request's.
    let policy_routed = matches!(chosen, Chosen::Policy { .. } | Chosen::Highest);
    if let VersionStatus::Remote(remote) = &version.status {
        if policy_routed {
            version.stats.figures().routed(false);
        }
        return Ok(Routed::Remote(RemoteRoute {
            key: VersionKey {
                model: model.name.clone(),
                version: version.label.clone(),
            },
            remote: remote.clone(),
            stats: version.stats.clone(),
            chosen,
        }));
    }
    let ready = version.ready(&model.name)?.clone();
    if policy_routed {
        version.stats.figures().routed(true);
    }
    let shadow = policy_routed
        .then(|| routing::shadow_target(&model.policy, &version.label, &mut rng))
        .flatten()
        .and_then(|label| model.version(label).ok())
        .and_then(|shadow| match &shadow.status {
            VersionStatus::Ready(ready) => Some(ShadowTarget {
                label: shadow.label.clone(),
                ready: ready.clone(),
                stats: shadow.stats.clone(),
            }),
            _ => None,
        });
    let bandit_objective_ms = match &model.policy.mode {
        PolicyMode::Bandit {
            latency_objective_ms,
            ..
        } if policy_routed => Some(*latency_objective_ms),
        _ => None,
    };
    Ok(Routed::Local(Route {
        key: VersionKey {
            model: model.name.clone(),
            version: version.label.clone(),
        },
        ready,
        stats: version.stats.clone(),
        bandit_objective_ms,
        // A rule or a pin routes a segment the bandit did not draw: its rewards would skew it.
        takes_feedback: policy_routed && matches!(model.policy.mode, PolicyMode::Bandit { .. }),
        shadow,
        chosen,
    }))
}

/// The model's first rule that a request naming no version matches: its place, and the
/// version or alias it names.
pub fn rule_target<'m>(model: &'m ModelEntry, request: &InferRequest) -> Option<(usize, &'m str)> {
    let rules = &model.policy.rules;
    if rules.is_empty() || request.version.is_some() {
        return None;
    }
    // A rule whose version or alias is gone since it was set is passed over, not a 404 for
    // a request that named no version.
    rules.iter().enumerate().find_map(|(index, rule)| {
        (routing::rules::matches(rule, request) && model.version(&rule.to).is_ok())
            .then_some((index, rule.to.as_str()))
    })
}

impl routing::rules::Facts for InferRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    fn parameter(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        Some(match self.parameters.get(name)? {
            Parameter::String(text) => std::borrow::Cow::Borrowed(text.as_str()),
            Parameter::Bool(value) => value.to_string().into(),
            Parameter::Int(value) => value.to_string().into(),
            Parameter::Double(value) => value.to_string().into(),
        })
    }

    fn input(&self, name: Option<&str>) -> Option<(&'static str, &[usize])> {
        let input = match name {
            Some(name) => self.inputs.iter().find(|input| input.name == name)?,
            None => self.inputs.first()?,
        };
        Some((input.tensor.dtype().as_str(), input.tensor.shape()))
    }

    fn scalar(&self, name: &str) -> Option<(f64, &'static str)> {
        let input = self.inputs.iter().find(|input| input.name == name)?;
        if input.tensor.element_count() != 1 {
            return None;
        }
        let value = routing::stats::as_f64s(&input.tensor)?.first().copied()?;
        Some((value, input.tensor.dtype().as_str()))
    }
}

/// The version that serves a request naming none, by the model's policy (`key` is the sticky
/// key, if the request carries one), and why. Without traffic weights, or when no weighted
/// version is eligible, the highest eligible version serves, so that a shift towards a version
/// still loading costs no request; with none at all, 503 with the reason.
pub fn policy_choice<'m>(
    model: &'m ModelEntry,
    key: Option<&[u8]>,
    rng: &mut fastrand::Rng,
) -> Result<(&'m Arc<VersionEntry>, Chosen), GatewayError> {
    if !model.traffic.is_empty() {
        let candidates = model.candidates();
        let chosen = routing::choose(&model.policy, &candidates, key, rng).and_then(|index| {
            let candidate = &candidates[index];
            let version = model
                .versions
                .iter()
                .find(|v| *v.label == *candidate.label)?;
            Some((version, candidate.base_weight as u64))
        });
        if let Some((version, weight)) = chosen {
            let policy = model.policy.mode.name();
            return Ok((version, Chosen::Policy { policy, weight }));
        }
    }
    model
        .versions
        .iter()
        .rev()
        .find(|version| model.eligible(version))
        .map(|version| (version, Chosen::Highest))
        .ok_or_else(|| GatewayError::unavailable(why_no_version(model)))
}

fn why_no_version(model: &ModelEntry) -> String {
    let reasons: Vec<String> = model
        .versions
        .iter()
        .map(|version| match &version.status {
            VersionStatus::Failed(reason) => {
                format!("version '{}' failed: {reason}", version.label)
            }
            VersionStatus::Pending(reason) => {
                format!("version '{}' is pending: {reason}", version.label)
            }
            VersionStatus::Ready(_) | VersionStatus::Remote(_) => format!(
                "version '{}' has a recent error rate of {:.0}%, over the policy's limit of {:.0}%",
                version.label,
                version.stats.recent_error_rate().unwrap_or(0.0) * 100.0,
                model.policy.max_error_rate * 100.0
            ),
            other => format!(
                "version '{}' is {}",
                version.label,
                other.name().to_lowercase()
            ),
        })
        .collect();
    if reasons.is_empty() {
        format!("{UNKNOWN_MODEL}'{}' has no available versions", model.name)
    } else {
        format!(
            "{UNKNOWN_MODEL}'{}' has no available versions ({})",
            model.name,
            reasons.join("; ")
        )
    }
}

/// The sticky key of a request under a sticky policy: the configured header (gRPC metadata),
/// else a request parameter of that name.
fn sticky_key<'r>(policy: &TrafficPolicy, request: &'r InferRequest) -> Option<&'r [u8]> {
    let PolicyMode::Sticky { header } = &policy.mode else {
        return None;
    };
    request
        .headers
        .get(header.as_str())
        .map(|value| value.as_bytes())
        .or_else(|| match request.parameters.get(header) {
            Some(Parameter::String(value)) => Some(value.as_bytes()),
            _ => None,
        })
}
