//! What the API and the driver write: a new rollout from its request, each stage's traffic,
//! the end of a rollout, and the hand controls (pause, resume, promote, abort).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use switchyard_registry::{ModelRecord, RegistryError, RolloutRecord, RolloutWrite, Store};

use super::analysis::{self, StageFigures};
use super::{Analysis, Counters, Gates, Rollout, RolloutState, Stage, StageKind, Totals};
use crate::config::HumanDuration;
use crate::routing::TrafficPolicy;

const MAX_STAGES: usize = 20;
const MAX_HOLD: Duration = Duration::from_secs(7 * 24 * 3600);
const DEFAULT_STEPS: [f64; 4] = [5.0, 25.0, 50.0, 100.0];
const DEFAULT_HOLD: &str = "30s";
/// Weights are in thousandths, so that a step can be 0.5%.
const WEIGHT_SCALE: f64 = 10.0;

/// `POST /v1/models/{m}/rollouts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutRequest {
    pub target: String,
    /// Default: the `stable` alias's version, else the version with the most weight, else
    /// the highest other live version.
    #[serde(default)]
    pub baseline: Option<String>,
    /// Percentages of live traffic (`[5, 25, 50, 100]` by default), or objects with
    /// `percent` or explicit `weights`, and their own `hold`.
    #[serde(default)]
    pub steps: Option<Vec<StepRequest>>,
    /// Each step's hold unless it names its own ("30s" by default).
    #[serde(default)]
    pub hold: Option<String>,
    /// A first phase with no live traffic: `percent` of requests mirrored to the target.
    #[serde(default)]
    pub shadow: Option<ShadowRequest>,
    #[serde(default)]
    pub gates: Option<Gates>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StepRequest {
    Percent(f64),
    Detailed {
        #[serde(default)]
        percent: Option<f64>,
        #[serde(default)]
        weights: Option<BTreeMap<String, u64>>,
        #[serde(default)]
        hold: Option<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowRequest {
    pub percent: f64,
    #[serde(default)]
    pub hold: Option<String>,
}

fn hold_ms(text: Option<&str>, default: &str) -> Result<u64, String> {
    let hold = HumanDuration::parse(text.unwrap_or(default))?.0;
    if hold > MAX_HOLD {
        return Err(format!(
            "a hold may be at most {}",
            humantime::format_duration(MAX_HOLD)
        ));
    }
    Ok(hold.as_millis() as u64)
}

fn check_percent(percent: f64, what: &str) -> Result<f64, String> {
    if !(percent.is_finite() && percent > 0.0 && percent <= 100.0) {
        return Err(format!(
            "{what} must be more than 0 and at most 100, not {percent}"
        ));
    }
    Ok(percent)
}

fn live_weights(baseline: &str, target: &str, percent: f64) -> BTreeMap<String, u64> {
    let target_weight = (percent * WEIGHT_SCALE).round() as u64;
    let mut weights = BTreeMap::new();
    weights.insert(target.to_owned(), target_weight);
    weights.insert(
        baseline.to_owned(),
        (100.0 * WEIGHT_SCALE) as u64 - target_weight,
    );
    weights
}

fn check_gates(gates: &Gates) -> Result<(), String> {
    let fraction = |value: Option<f64>, name: &str| match value {
        Some(v) if !(v.is_finite() && (0.0..=1.0).contains(&v)) => {
            Err(format!("gates.{name} must be from 0 to 1"))
        }
        _ => Ok(()),
    };
    fraction(gates.max_error_rate, "max_error_rate")?;
    fraction(gates.max_error_rate_increase, "max_error_rate_increase")?;
    fraction(gates.min_argmax_agreement, "min_argmax_agreement")?;
    fraction(gates.max_reward_drop, "max_reward_drop")?;
    if !(gates.alpha.is_finite() && gates.alpha > 0.0 && gates.alpha <= 0.5) {
        return Err("gates.alpha must be more than 0 and at most 0.5".into());
    }
    if !(1..=1_000_000_000).contains(&gates.min_requests) {
        return Err("gates.min_requests must be 1 to 1,000,000,000".into());
    }
    if gates
        .max_p99_ratio
        .is_some_and(|ratio| !(ratio.is_finite() && ratio >= 1.0))
    {
        return Err("gates.max_p99_ratio must be 1 or more".into());
    }
    if gates
        .max_abs_diff
        .is_some_and(|diff| !(diff.is_finite() && diff >= 0.0))
    {
        return Err("gates.max_abs_diff must be 0 or more".into());
    }
    if let Some(min) = &gates.min_score
        && (min.metric.is_empty() || min.metric.len() > 128 || !min.min.is_finite())
    {
        return Err("gates.min_score needs a metric name and a finite min".into());
    }
    Ok(())
}

/// The version a rollout starts from when the request names none.
fn default_baseline(model: &ModelRecord, target: &str) -> Option<String> {
    if let Some(stable) = model.aliases.get("stable").filter(|v| *v != target) {
        return Some(stable.clone());
    }
    if let Some((label, _)) = model
        .traffic
        .iter()
        .filter(|(label, weight)| *label != target && **weight > 0)
        .max_by_key(|(_, weight)| **weight)
    {
        return Some(label.clone());
    }
    model
        .versions
        .iter()
        .filter(|v| v.label != target && v.state.is_live())
        .map(|v| v.label.clone())
        .max_by(|a, b| switchyard_registry::compare_labels(a, b))
}

/// A new rollout, `pending` until the leader starts it, from its request.
pub fn new_rollout(
    model: &ModelRecord,
    request: RolloutRequest,
    actor: &str,
) -> Result<(Rollout, RolloutWrite), String> {
    let name = &model.model.name;
    let live = |label: &str| {
        model
            .versions
            .iter()
            .any(|v| v.label == label && v.state.is_live())
    };
    let target = request.target;
    if !live(&target) {
        return Err(format!(
            "model '{name}' has no live version '{target}' to roll out"
        ));
    }
    let baseline = match request.baseline {
        Some(baseline) => baseline,
        None => default_baseline(model, &target)
            .ok_or_else(|| format!("model '{name}' has no other live version to start from"))?,
    };
    if baseline == target {
        return Err("the baseline and the target must be different versions".into());
    }
    if !live(&baseline) {
        return Err(format!(
            "model '{name}' has no live version '{baseline}' as baseline"
        ));
    }
    let default_hold = request.hold.as_deref().unwrap_or(DEFAULT_HOLD);
    hold_ms(Some(default_hold), DEFAULT_HOLD)?;
    let mut stages = Vec::new();
    if let Some(shadow) = request.shadow {
        stages.push(Stage {
            kind: StageKind::Shadow {
                percent: check_percent(shadow.percent, "shadow.percent")?,
            },
            hold_ms: hold_ms(shadow.hold.as_deref(), default_hold)?,
        });
    }
    let steps = request.steps.unwrap_or_else(|| {
        DEFAULT_STEPS
            .iter()
            .map(|p| StepRequest::Percent(*p))
            .collect()
    });
    if steps.is_empty() || steps.len() > MAX_STAGES {
        return Err(format!("a rollout has 1 to {MAX_STAGES} steps"));
    }
    for step in steps {
        let (kind, hold) = match step {
            StepRequest::Percent(percent) => (
                StageKind::Live {
                    weights: live_weights(&baseline, &target, check_percent(percent, "a step")?),
                },
                None,
            ),
            StepRequest::Detailed {
                percent: Some(percent),
                weights: None,
                hold,
            } => (
                StageKind::Live {
                    weights: live_weights(&baseline, &target, check_percent(percent, "a step")?),
                },
                hold,
            ),
            StepRequest::Detailed {
                percent: None,
                weights: Some(weights),
                hold,
            } => {
                if weights.len() > 64 || weights.values().all(|w| *w == 0) {
                    return Err(
                        "a step's weights name 1 to 64 versions, one of them positive".into(),
                    );
                }
                if let Some(unknown) = weights.keys().find(|label| !live(label)) {
                    return Err(format!(
                        "a step weighs '{unknown}', which is no live version"
                    ));
                }
                (StageKind::Live { weights }, hold)
            }
            StepRequest::Detailed { .. } => {
                return Err("a step has either a percent or weights".into());
            }
        };
        stages.push(Stage {
            kind,
            hold_ms: hold_ms(hold.as_deref(), default_hold)?,
        });
    }
    let gates = request.gates.unwrap_or_default();
    check_gates(&gates)?;
    let rollout = Rollout {
        id: 0,
        model: name.clone(),
        target,
        baseline,
        stages,
        gates,
        state: RolloutState::Pending,
        current: 0,
        started_ms: 0,
        stage_started_ms: 0,
        at_start: Totals::default(),
        at_stage_start: Totals::default(),
        history: Vec::new(),
        reason: String::new(),
        policy_before: model.policy.clone(),
        created_by: actor.to_owned(),
    };
    let write = RolloutWrite {
        existing: None,
        state: rollout.state.as_str().into(),
        body: to_value(&rollout),
        action: "rollout.created".into(),
        payload: json!({"target": rollout.target, "baseline": rollout.baseline,
                        "stages": rollout.stages.len()}),
        ..RolloutWrite::default()
    };
    Ok((rollout, write))
}

fn to_value(rollout: &Rollout) -> Value {
    serde_json::to_value(rollout).unwrap_or(Value::Null)
}

/// The policy during a stage: the one before the rollout, plus the shadow of a shadow stage.
fn stage_policy(rollout: &Rollout, stage: &Stage) -> Result<Value, String> {
    let mut policy = rollout.policy_before.clone();
    if let StageKind::Shadow { percent } = stage.kind
        && let Some(object) = policy.as_object_mut()
    {
        object.insert(
            "shadow".into(),
            json!({"version": rollout.target, "fraction": percent / 100.0}),
        );
    }
    // The routing module must accept it, as it would from the API.
    let parsed: TrafficPolicy =
        serde_json::from_value(policy.clone()).map_err(|e| format!("stage policy: {e}"))?;
    parsed.validate()?;
    Ok(policy)
}

/// The write that puts `rollout` (already moved to its current stage) in force.
pub fn stage_write(
    record: &RolloutRecord,
    rollout: &Rollout,
    action: &str,
) -> Result<RolloutWrite, String> {
    let stage = rollout.stage();
    let weights = match &stage.kind {
        StageKind::Shadow { .. } => BTreeMap::from([(rollout.baseline.clone(), 100)]),
        StageKind::Live { weights } => weights.clone(),
    };
    Ok(RolloutWrite {
        existing: Some((record.id, record.generation)),
        state: rollout.state.as_str().into(),
        body: to_value(rollout),
        action: action.into(),
        payload: json!({
            "rollout": record.id,
            "stage": rollout.current,
            "target_percent": rollout.target_percent(stage),
            "shadow_percent": match stage.kind { StageKind::Shadow { percent } => percent, _ => 0.0 },
            "weights": weights,
        }),
        weights: Some(weights),
        policy: Some(stage_policy(rollout, stage)?),
        alias: None,
    })
}

/// Ends a rollout: promoted (the target gets all the weight and the `stable` alias), or rolled
/// back or aborted (the baseline gets all the weight). The policy goes back to what it was.
pub fn finish_write(
    record: &RolloutRecord,
    mut rollout: Rollout,
    state: RolloutState,
    verdict: &str,
    reason: String,
    figures: StageFigures,
    now_ms: i64,
) -> RolloutWrite {
    let started = rollout.started_ms > 0;
    rollout.history.push(Analysis {
        stage: rollout.current,
        stage_kind: rollout.stage().kind.clone(),
        started_ms: rollout.stage_started_ms,
        ended_ms: now_ms,
        figures,
        verdict: verdict.into(),
        reason: reason.clone(),
    });
    rollout.state = state;
    rollout.reason = reason.clone();
    let (weights, alias) = match state {
        RolloutState::Promoted => (
            Some(BTreeMap::from([(rollout.target.clone(), 100)])),
            Some(("stable".to_string(), rollout.target.clone())),
        ),
        // A rollout that never started changed no traffic.
        _ if !started => (None, None),
        _ => (
            Some(BTreeMap::from([(rollout.baseline.clone(), 100)])),
            None,
        ),
    };
    RolloutWrite {
        existing: Some((record.id, record.generation)),
        state: state.as_str().into(),
        body: to_value(&rollout),
        action: format!("rollout.{}", state.as_str()),
        payload: json!({"rollout": record.id, "target": rollout.target,
                        "baseline": rollout.baseline, "stage": rollout.current,
                        "reason": reason, "weights": weights}),
        weights,
        policy: started.then(|| rollout.policy_before.clone()),
        alias,
    }
}

/// The sums of every gateway's counters of the rollout's two versions, and their rewards.
pub async fn totals(
    store: &dyn Store,
    rollout: &Rollout,
    model: &ModelRecord,
) -> Result<Totals, RegistryError> {
    let mut target = Counters::default();
    let mut baseline = Counters::default();
    for row in store.counters(&rollout.model).await? {
        let Ok(counters) = serde_json::from_value::<Counters>(row.body) else {
            continue;
        };
        if row.version == rollout.target {
            target.add(&counters);
        } else if row.version == rollout.baseline {
            baseline.add(&counters);
        }
    }
    let rewards = |label: &str| model.rewards.get(label).copied().unwrap_or_default();
    Ok(Totals {
        target,
        baseline,
        target_rewards: rewards(&rollout.target),
        baseline_rewards: rewards(&rollout.baseline),
    })
}

/// A hand control: `pause`, `resume`, `promote` or `abort`.
pub fn hand_control(
    record: &RolloutRecord,
    mut rollout: Rollout,
    action: &str,
    actor: &str,
    figures: StageFigures,
    now_ms: i64,
) -> Result<RolloutWrite, String> {
    if !rollout.state.is_active() {
        return Err(format!(
            "rollout {} is {} already",
            record.id,
            rollout.state.as_str()
        ));
    }
    let simple = |rollout: &Rollout, action: &str| RolloutWrite {
        existing: Some((record.id, record.generation)),
        state: rollout.state.as_str().into(),
        body: to_value(rollout),
        action: format!("rollout.{action}"),
        payload: json!({"rollout": record.id, "stage": rollout.current, "by": actor}),
        ..RolloutWrite::default()
    };
    match action {
        "pause" => {
            if rollout.state == RolloutState::Paused {
                return Err(format!("rollout {} is paused already", record.id));
            }
            rollout.state = RolloutState::Paused;
            Ok(simple(&rollout, "paused"))
        }
        "resume" => {
            if rollout.state != RolloutState::Paused {
                return Err(format!("rollout {} is not paused", record.id));
            }
            // The hold starts again: the stage is judged on time running, not time paused.
            if rollout.started_ms > 0 {
                rollout.state = RolloutState::Running;
                rollout.stage_started_ms = now_ms;
            } else {
                rollout.state = RolloutState::Pending;
            }
            Ok(simple(&rollout, "resumed"))
        }
        "promote" => Ok(finish_write(
            record,
            rollout,
            RolloutState::Promoted,
            "promoted",
            format!("promoted by {actor}"),
            figures,
            now_ms,
        )),
        "abort" => Ok(finish_write(
            record,
            rollout,
            RolloutState::Aborted,
            "aborted",
            format!("aborted by {actor}"),
            figures,
            now_ms,
        )),
        other => Err(format!(
            "unknown rollout action '{other}': pause, resume, promote or abort"
        )),
    }
}

/// A rollout as the API shows it: the record, the document, and the current stage's figures
/// and what it waits for, computed now from every gateway's counters.
pub fn status_json(
    record: &RolloutRecord,
    rollout: &Rollout,
    live: Option<(&StageFigures, String)>,
    leader_here: bool,
) -> Value {
    let mut body = serde_json::to_value(rollout).unwrap_or(Value::Null);
    if let Some(object) = body.as_object_mut() {
        object.remove("at_start");
        object.remove("at_stage_start");
        object.insert("generation".into(), json!(record.generation));
        object.insert("created_ms".into(), json!(record.created_ms));
        object.insert("updated_ms".into(), json!(record.updated_ms));
        object.insert(
            "target_percent".into(),
            json!(rollout.target_percent(rollout.stage())),
        );
        if let Some((figures, decision)) = live {
            object.insert(
                "live".into(),
                json!({"figures": figures, "status": decision}),
            );
        }
        object.insert("driven_by_this_gateway".into(), json!(leader_here));
    }
    body
}

/// What the decision at this moment would be, in words, for the status.
pub fn describe(decision: &analysis::Decision) -> String {
    match decision {
        analysis::Decision::Hold(waiting) => format!("waiting: {waiting}"),
        analysis::Decision::Advance => "the stage has passed; advancing".into(),
        analysis::Decision::Promote => "the last stage has passed; promoting".into(),
        analysis::Decision::RollBack(reason) => format!("breached: {reason}"),
    }
}
