//! What the API and the driver write: a new rollout from its request, each stage's traffic,
//! the end of a rollout, and the hand controls (pause, resume, promote, abort).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchyard_registry::{ModelRecord, RegistryError, RolloutRecord, RolloutWrite, Store};

use super::analysis::{self, StageFigures};
use super::{Counters, Gates, Rollout, RolloutState, Stage, StageKind, Totals};
use crate::config::HumanDuration;
use crate::routing::TrafficPolicy;

const MAX_STAGES: usize = 20;
const MAX_HOLD: Duration = Duration::from_secs(7 * 24 * 3600);
const DEFAULT_STEPS: [f64; 4] = [5.0, 25.0, 50.0, 100.0];
const DEFAULT_HOLD: &str = "30s";
/// Weights are in thousandths, so that a step can be 0.5%.
const WEIGHT_SCALE: f64 = 10.0;

/// `POST /v1/models/{m}/rollouts`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutRequest {
    /// The version rolled out.
    #[schema(pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")]
    pub target: String,
    /// Default: the `stable` alias's version, else the version with the most weight, else
    /// the highest other live version.
    #[serde(default)]
    #[schema(pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")]
    pub baseline: Option<String>,
    /// Percentages of live traffic (`[5, 25, 50, 100]` by default), or objects with
    /// `percent` or explicit `weights`, and their own `hold`.
    #[serde(default)]
    #[schema(min_items = 1, max_items = 20)]
    pub steps: Option<Vec<StepRequest>>,
    /// Each step's hold unless it names its own ("30s" by default; at most 7 days).
    #[serde(default)]
    #[schema(pattern = r"^([0-9]{1,6}ms|[0-9]{1,5}s|[0-9]{1,4}m|(1[0-6][0-9]|[1-9]?[0-9])h)$")]
    pub hold: Option<String>,
    /// A first phase with no live traffic: `percent` of requests mirrored to the target.
    #[serde(default)]
    pub shadow: Option<ShadowRequest>,
    #[serde(default)]
    pub gates: Option<Gates>,
}

/// A step: a percent of live traffic (0.1 to 100), or `percent` or `weights` (version ->
/// weight, up to 64 versions) with the step's own `hold`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum StepRequest {
    Percent(f64),
    Detailed {
        #[serde(default)]
        #[schema(minimum = 0.1, maximum = 100)]
        percent: Option<f64>,
        #[serde(default)]
        weights: Option<BTreeMap<String, u64>>,
        #[serde(default)]
        #[schema(pattern = r"^([0-9]{1,6}ms|[0-9]{1,5}s|[0-9]{1,4}m|(1[0-6][0-9]|[1-9]?[0-9])h)$")]
        hold: Option<String>,
    },
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShadowRequest {
    /// The share of requests mirrored to the target, 0.1 to 100.
    #[schema(minimum = 0.1, maximum = 100)]
    pub percent: f64,
    #[serde(default)]
    #[schema(pattern = r"^([0-9]{1,6}ms|[0-9]{1,5}s|[0-9]{1,4}m|(1[0-6][0-9]|[1-9]?[0-9])h)$")]
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
    // Weights are in thousandths of the traffic: 0.1% is the smallest share a step can give.
    if !(percent.is_finite() && (0.1..=100.0).contains(&percent)) {
        return Err(format!("{what} must be from 0.1 to 100, not {percent}"));
    }
    Ok(percent)
}

/// The most one version may weigh in a step's explicit weights.
const MAX_STEP_WEIGHT: u64 = 1_000_000_000;

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
    let live = |label: &str| {
        model
            .versions
            .iter()
            .any(|v| v.label == label && v.state.is_live())
    };
    if let Some(stable) = model
        .aliases
        .get("stable")
        .filter(|v| *v != target && live(v))
    {
        return Some(stable.clone());
    }
    if let Some((label, _)) = model
        .traffic
        .iter()
        .filter(|(label, weight)| *label != target && **weight > 0 && live(label))
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
                if weights.len() > 64 || weights.values().any(|w| *w > MAX_STEP_WEIGHT) {
                    return Err(format!(
                        "a step's weights name 1 to 64 versions, each at most {MAX_STEP_WEIGHT}"
                    ));
                }
                if weights.get(&target).is_none_or(|w| *w == 0) {
                    return Err(format!(
                        "a step's weights must give the target, version {target}, some traffic"
                    ));
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
    let rollout = Rollout::new(
        name.clone(),
        target,
        baseline,
        stages,
        gates,
        model.policy.clone(),
        actor.to_owned(),
    );
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
/// A bandit, score or objective policy would move the weights itself, so the stages route by fixed
/// weights (keeping the error shedding); sticky routing keeps to the weights and stays. Rules
/// on what requests hold are suspended until the rollout ends: every request follows the
/// stage's weights, so the gates compare the baseline and the target on the same traffic.
fn stage_policy(rollout: &Rollout, stage: &Stage) -> Result<Value, String> {
    let mut policy = rollout.policy_before.clone();
    if let Some(object) = policy.as_object_mut() {
        object.remove("rules");
    }
    if matches!(
        policy["mode"].as_str(),
        Some("bandit" | "score" | "objective")
    ) {
        let mut fixed = json!({"mode": "fixed"});
        if let Some(shed) = policy.get("max_error_rate") {
            fixed["max_error_rate"] = shed.clone();
        }
        policy = fixed;
    }
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
    rollout.close_stage(figures, verdict, &reason, now_ms);
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
    let mut totals = Totals::default();
    for row in store.counters(&rollout.model).await? {
        let Ok(counters) = serde_json::from_value::<Counters>(row.body) else {
            continue;
        };
        if row.version == rollout.target {
            totals.target.0.insert(row.gateway, counters);
        } else if row.version == rollout.baseline {
            totals.baseline.0.insert(row.gateway, counters);
        }
    }
    let rewards = |label: &str| model.rewards.get(label).copied().unwrap_or_default();
    totals.target_rewards = rewards(&rollout.target);
    totals.baseline_rewards = rewards(&rollout.baseline);
    Ok(totals)
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

/// A rollout as `GET /v1/models/{m}/rollouts/{id}` shows it: the document without its
/// baseline totals, with the record's generation and times, the target's share of live
/// traffic now, and (while active) the current stage's live figures.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RolloutView {
    pub id: i64,
    pub model: String,
    pub target: String,
    pub baseline: String,
    pub stages: Vec<Stage>,
    pub gates: Gates,
    pub state: RolloutState,
    /// Index into `stages`.
    pub current: usize,
    pub started_ms: i64,
    pub stage_started_ms: i64,
    /// Each finished stage's figures and verdict.
    pub history: Vec<super::Analysis>,
    /// Why it ended, when it did.
    pub reason: String,
    /// The model's routing policy before the rollout, restored when it ends.
    #[schema(value_type = Object)]
    pub policy_before: Value,
    pub created_by: String,
    /// Grows by one with every write.
    pub generation: i64,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// The target's share of live traffic in the current stage, in percent.
    pub target_percent: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveStage>,
    /// Whether this gateway is the leader that moves it on.
    pub driven_by_this_gateway: bool,
}

/// The current stage as it stands: its figures so far (once started) and what the leader
/// would decide on them now.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LiveStage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub figures: Option<StageFigures>,
    pub status: String,
}

impl RolloutView {
    pub fn new(
        record: &RolloutRecord,
        rollout: Rollout,
        live: Option<LiveStage>,
        leader_here: bool,
    ) -> RolloutView {
        RolloutView {
            target_percent: rollout.target_percent(rollout.stage()),
            id: rollout.id,
            model: rollout.model,
            target: rollout.target,
            baseline: rollout.baseline,
            stages: rollout.stages,
            gates: rollout.gates,
            state: rollout.state,
            current: rollout.current,
            started_ms: rollout.started_ms,
            stage_started_ms: rollout.stage_started_ms,
            history: rollout.history,
            reason: rollout.reason,
            policy_before: rollout.policy_before,
            created_by: rollout.created_by,
            generation: record.generation,
            created_ms: record.created_ms,
            updated_ms: record.updated_ms,
            live,
            driven_by_this_gateway: leader_here,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::rollout::{PerGateway, ShadowCounts};

    fn record() -> RolloutRecord {
        RolloutRecord {
            id: 1,
            model: "m".into(),
            state: "running".into(),
            generation: 3,
            body: Value::Null,
            created_ms: 0,
            updated_ms: 0,
        }
    }

    fn rollout(policy: Value, stages: Vec<Stage>) -> Rollout {
        let mut rollout = Rollout::running(stages, policy);
        rollout.started_ms = 1;
        rollout
    }

    #[test]
    fn stages_route_by_fixed_weights_and_the_policy_comes_back_at_the_end() {
        let bandit = json!({"mode": "bandit", "floor": 0.05, "latency_objective_ms": 50,
                            "max_error_rate": 0.3, "rules": [{"to": "1"}]});
        let stages = vec![
            Stage {
                kind: StageKind::Shadow { percent: 20.0 },
                hold_ms: 1000,
            },
            Stage {
                kind: StageKind::Live {
                    weights: live_weights("1", "2", 5.0),
                },
                hold_ms: 1000,
            },
        ];
        let mut rollout = rollout(bandit.clone(), stages);
        let shadow = stage_write(&record(), &rollout, "rollout.started").unwrap();
        assert_eq!(
            shadow.policy.unwrap(),
            json!({"mode": "fixed", "max_error_rate": 0.3,
                   "shadow": {"version": "2", "fraction": 0.2}})
        );
        assert_eq!(shadow.weights.unwrap(), BTreeMap::from([("1".into(), 100)]));
        rollout.current = 1;
        let live = stage_write(&record(), &rollout, "rollout.step").unwrap();
        assert_eq!(
            live.policy.unwrap(),
            json!({"mode": "fixed", "max_error_rate": 0.3})
        );
        assert_eq!(
            live.weights.unwrap(),
            BTreeMap::from([("1".into(), 950), ("2".into(), 50)])
        );
        let ended = finish_write(
            &record(),
            rollout,
            RolloutState::RolledBack,
            "failed",
            "a reason".into(),
            StageFigures::default(),
            5,
        );
        assert_eq!(ended.policy.unwrap(), bandit);
        assert_eq!(ended.weights.unwrap(), BTreeMap::from([("1".into(), 100)]));
        assert_eq!(
            ended.existing,
            Some((1, 3)),
            "written against the generation read"
        );
    }

    #[test]
    fn a_gateway_that_restarts_or_goes_away_never_adds_to_the_figures() {
        let counters = |requests, errors| Counters {
            requests,
            errors,
            buckets: Vec::new(),
            shadow: BTreeMap::<String, ShadowCounts>::new(),
        };
        let earlier = PerGateway(BTreeMap::from([
            ("a".to_string(), counters(100, 10)),
            ("b".to_string(), counters(50, 0)),
            ("c".to_string(), counters(70, 7)),
        ]));
        let now = PerGateway(BTreeMap::from([
            // 20 more requests, 1 more error.
            ("a".to_string(), counters(120, 11)),
            // Restarted in place: counts from zero again, all of them new.
            ("b".to_string(), counters(5, 1)),
            // A new gateway: everything is new. Gateway c's row is gone: nothing.
            ("d".to_string(), counters(8, 0)),
        ]));
        let since = now.since(&earlier);
        assert_eq!((since.requests, since.errors), (33, 2));
    }
}
