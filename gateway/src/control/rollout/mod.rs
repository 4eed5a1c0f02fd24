//! Rollouts: a target version takes traffic from a baseline in steps (after an optional shadow
//! phase), judged by gates on the figures of every gateway, and is promoted or rolled back on
//! its own.
//!
//! - [`Rollout`] is the document the registry keeps (`rollouts.body`): the stages, the gates,
//!   where it stands, and each finished stage's analysis.
//! - [`analysis`] is pure: the figures of a stage, the gates and their statistics, and the
//!   decision, all as functions of the document, the figures and the clock.
//! - [`driver`] is the task: every gateway writes its counters; the leader decides and writes
//!   each transition with its traffic in one registry write.
//! - [`control`] is what the API starts and does to a rollout (pause, resume, promote, abort).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use switchyard_registry::Rewards;

pub mod analysis;
pub mod control;
pub mod driver;

pub use analysis::{Decision, StageFigures, VersionFigures};
pub use driver::{RolloutDriver, RolloutStatus};

/// The rollout's state, as the registry's `rollouts.state` holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Written by the API; the leader starts it on its next tick.
    Pending,
    Running,
    Paused,
    Promoted,
    RolledBack,
    Aborted,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Pending => "pending",
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Promoted => "promoted",
            RolloutState::RolledBack => "rolled_back",
            RolloutState::Aborted => "aborted",
        }
    }

    pub fn is_active(self) -> bool {
        matches!(
            self,
            RolloutState::Pending | RolloutState::Running | RolloutState::Paused
        )
    }
}

/// One stage: mirrored traffic only, or a live split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StageKind {
    /// The baseline serves everything; `percent` of its requests are mirrored to the target.
    Shadow { percent: f64 },
    /// These weights, the target's share being its weight over their sum.
    Live { weights: BTreeMap<String, u64> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Stage {
    #[serde(flatten)]
    pub kind: StageKind,
    /// How long the stage runs, at least, before it passes.
    pub hold_ms: u64,
}

/// The gates, each optional; every one is judged throughout a stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Gates {
    /// No verdict on a stage before the target has answered this many requests in it (or, in
    /// the shadow phase, this many mirrored ones).
    #[schema(minimum = 1, maximum = 1000000000)]
    pub min_requests: u64,
    /// The target's error rate may not be above this (a one-sided sequential test).
    #[schema(minimum = 0, maximum = 1)]
    pub max_error_rate: Option<f64>,
    /// The target's error rate may not be more than this above the baseline's (a sequential
    /// two-proportion test).
    #[schema(minimum = 0, maximum = 1)]
    pub max_error_rate_increase: Option<f64>,
    /// The target's p99 over the baseline's may not be above this.
    #[schema(minimum = 1)]
    pub max_p99_ratio: Option<f64>,
    /// In the shadow phase: the share of mirrored requests whose argmax agrees with the
    /// baseline's may not be below this.
    #[schema(minimum = 0, maximum = 1)]
    pub min_argmax_agreement: Option<f64>,
    /// In the shadow phase: no output element may differ from the baseline's by more.
    #[schema(minimum = 0)]
    pub max_abs_diff: Option<f64>,
    /// With feedback: the target's mean reward may not be more than this below the
    /// baseline's (a sequential test on both means).
    #[schema(minimum = 0, maximum = 1)]
    pub max_reward_drop: Option<f64>,
    /// The target's latest offline score of `metric` may not be below `min`.
    pub min_score: Option<MinScore>,
    /// The false-rollback rate the sequential tests allow, over the whole rollout.
    #[schema(exclusive_minimum = 0, maximum = 0.5)]
    pub alpha: f64,
}

impl Default for Gates {
    fn default() -> Self {
        Gates {
            min_requests: 100,
            max_error_rate: Some(0.05),
            max_error_rate_increase: Some(0.01),
            max_p99_ratio: Some(2.0),
            min_argmax_agreement: Some(0.99),
            max_abs_diff: None,
            max_reward_drop: Some(0.05),
            min_score: None,
            alpha: 0.05,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MinScore {
    #[schema(min_length = 1, max_length = 128)]
    pub metric: String,
    pub min: f64,
}

/// Sums of every gateway's running totals of one version, as written to `version_counters`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    pub requests: u64,
    pub errors: u64,
    /// The latency histogram's buckets ([`crate::routing::LatencyHistogram::counts`]).
    #[serde(default)]
    pub buckets: Vec<u64>,
    /// Primary version -> how this version's mirrored outputs compared with its.
    #[serde(default)]
    pub shadow: BTreeMap<String, ShadowCounts>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ShadowCounts {
    pub pairs: u64,
    pub errors: u64,
    pub argmax_compared: u64,
    pub argmax_agreed: u64,
    /// Not a sum: the largest over the gateways.
    pub max_abs_diff: f64,
}

impl Counters {
    /// Adds another gateway's totals.
    pub fn add(&mut self, other: &Counters) {
        self.requests += other.requests;
        self.errors += other.errors;
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
        for (primary, theirs) in &other.shadow {
            let mine = self.shadow.entry(primary.clone()).or_default();
            mine.pairs += theirs.pairs;
            mine.errors += theirs.errors;
            mine.argmax_compared += theirs.argmax_compared;
            mine.argmax_agreed += theirs.argmax_agreed;
            mine.max_abs_diff = mine.max_abs_diff.max(theirs.max_abs_diff);
        }
    }

    /// What happened since `earlier` (counts never go back; a count that did, after a
    /// version's stats were replaced, starts again from zero).
    pub fn since(&self, earlier: &Counters) -> Counters {
        let buckets = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, now)| now.saturating_sub(earlier.buckets.get(i).copied().unwrap_or(0)))
            .collect();
        let shadow = self
            .shadow
            .iter()
            .map(|(primary, now)| {
                let before = earlier.shadow.get(primary).copied().unwrap_or_default();
                let counts = ShadowCounts {
                    pairs: now.pairs.saturating_sub(before.pairs),
                    errors: now.errors.saturating_sub(before.errors),
                    argmax_compared: now.argmax_compared.saturating_sub(before.argmax_compared),
                    argmax_agreed: now.argmax_agreed.saturating_sub(before.argmax_agreed),
                    max_abs_diff: now.max_abs_diff,
                };
                (primary.clone(), counts)
            })
            .collect();
        Counters {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            buckets,
            shadow,
        }
    }
}

/// One version's counters per gateway. What happened between two readings is summed gateway
/// by gateway, so that a gateway that restarts (new counters, a new row) or whose row is gone
/// can only make the figures smaller, never larger.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PerGateway(pub BTreeMap<String, Counters>);

impl PerGateway {
    /// One gateway's counters, as tests and simulations have it.
    #[cfg(test)]
    pub fn one(counters: Counters) -> PerGateway {
        PerGateway(BTreeMap::from([("gateway".to_string(), counters)]))
    }

    #[cfg(test)]
    pub fn single(&mut self) -> &mut Counters {
        self.0.entry("gateway".into()).or_default()
    }

    pub fn since(&self, earlier: &PerGateway) -> Counters {
        let mut total = Counters::default();
        for (gateway, now) in &self.0 {
            let difference = match earlier.0.get(gateway) {
                Some(before) if now.requests >= before.requests => now.since(before),
                // Counters that went back started again: all of them are new.
                Some(_) | None => now.clone(),
            };
            total.add(&difference);
        }
        total
    }
}

/// The totals of the two versions a rollout compares, at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub target: PerGateway,
    pub baseline: PerGateway,
    pub target_rewards: Rewards,
    pub baseline_rewards: Rewards,
}

/// A finished stage: its figures and verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Analysis {
    pub stage: usize,
    pub stage_kind: StageKind,
    pub started_ms: i64,
    pub ended_ms: i64,
    pub figures: StageFigures,
    /// `passed`, `failed` (a gate breached), `promoted` or `aborted` (by hand).
    pub verdict: String,
    pub reason: String,
}

/// The rollout document (`rollouts.body`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
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
    /// Totals when the rollout started: the baseline is judged on everything since.
    pub at_start: Totals,
    /// Totals when the current stage started: the target is judged on its stage alone.
    pub at_stage_start: Totals,
    pub history: Vec<Analysis>,
    /// Why it ended, when it did.
    pub reason: String,
    /// The model's routing policy before the rollout, restored when it ends.
    pub policy_before: serde_json::Value,
    pub created_by: String,
}

impl Rollout {
    /// A rollout not started yet: `pending`, at its first stage, with no history.
    pub fn new(
        model: String,
        target: String,
        baseline: String,
        stages: Vec<Stage>,
        gates: Gates,
        policy_before: serde_json::Value,
        created_by: String,
    ) -> Rollout {
        Rollout {
            id: 0,
            model,
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
            policy_before,
            created_by,
        }
    }

    /// A running rollout of version 2 from 1 of model `m`, for tests.
    #[cfg(test)]
    pub fn running(stages: Vec<Stage>, policy_before: serde_json::Value) -> Rollout {
        let mut rollout = Rollout::new(
            "m".into(),
            "2".into(),
            "1".into(),
            stages,
            Gates::default(),
            policy_before,
            "test".into(),
        );
        rollout.state = RolloutState::Running;
        rollout
    }

    /// Records the verdict on the current stage.
    pub fn close_stage(
        &mut self,
        figures: analysis::StageFigures,
        verdict: &str,
        reason: &str,
        now_ms: i64,
    ) {
        self.history.push(Analysis {
            stage: self.current,
            stage_kind: self.stage().kind.clone(),
            started_ms: self.stage_started_ms,
            ended_ms: now_ms,
            figures,
            verdict: verdict.into(),
            reason: reason.into(),
        });
    }

    /// The document of a registry row, checked: a row this build cannot read is an error,
    /// never a panic.
    pub fn from_record(record: &switchyard_registry::RolloutRecord) -> Result<Rollout, String> {
        let mut rollout: Rollout = serde_json::from_value(record.body.clone())
            .map_err(|e| format!("rollout {} cannot be read: {e}", record.id))?;
        if rollout.stages.is_empty() {
            return Err(format!("rollout {} has no stages", record.id));
        }
        rollout.id = record.id;
        Ok(rollout)
    }

    pub fn stage(&self) -> &Stage {
        &self.stages[self.current.min(self.stages.len() - 1)]
    }

    /// The target's share of live traffic in a stage, in percent.
    pub fn target_percent(&self, stage: &Stage) -> f64 {
        match &stage.kind {
            StageKind::Shadow { .. } => 0.0,
            StageKind::Live { weights } => {
                let total: u128 = weights.values().map(|w| u128::from(*w)).sum();
                let target = weights.get(&self.target).copied().unwrap_or(0);
                if total == 0 {
                    0.0
                } else {
                    target as f64 * 100.0 / total as f64
                }
            }
        }
    }
}
