//! The judgement of a rollout, pure: figures in, a decision out, the clock passed in.
//!
//! ## The statistics
//!
//! The leader looks at the figures every [`LOOK_INTERVAL_MS`], so a bad version is caught as
//! soon as the evidence is there, not at the end of a step. Testing at a fixed level at every
//! look would roll back good versions far more often than that level says (the more looks, the
//! more chances for noise to cross the line). So each look `k` (counted from the rollout's
//! start, by the clock, which survives a restart of the leader) spends only
//! `alpha_k = alpha * 6 / (pi^2 * k^2)` of the budget: these sum to `alpha` over infinitely many
//! looks, so by the union bound the chance that any look of the whole rollout rolls back a
//! version that is as good as the baseline is at most `alpha`, however long it runs. The budget
//! is shared equally by the statistical gates (error rate, error rate against the baseline,
//! reward). This is alpha spending with a conservative spending sequence: simple, valid at any
//! stopping time, and it costs little power, because a bad version's z statistic grows with
//! the square root of its requests while the threshold grows only with the square root of the
//! logarithm of the looks (at k = 1,000 the one-sided threshold is z = 4.9 for alpha = 0.05).
//!
//! Each test is one-sided (is the target worse?) on normal approximations:
//! - error rate above `max_error_rate`: `z = (p - max) / sqrt(max (1 - max) / n)`;
//! - error rate above the baseline's plus `max_error_rate_increase`:
//!   `z = (p_t - p_b - d) / sqrt(p (1 - p) (1/n_t + 1/n_b))`, with `p` the pooled rate;
//! - reward mean below the baseline's minus `max_reward_drop`: a z test on both means.
//!
//! The p99 ratio, the shadow agreement and the largest difference are thresholds, judged once
//! `min_requests` are in (the p99 once both versions have at least [`P99_MIN_REQUESTS`]); the offline score is a threshold on the registry's latest score.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Counters, Gates, Rollout, RolloutState, StageKind, Totals};
use crate::routing::LatencyHistogram;

/// How often the leader judges running rollouts.
pub const LOOK_INTERVAL_MS: i64 = 500;

/// The p99 ratio is judged once both versions have this many requests (or `min_requests`).
pub const P99_MIN_REQUESTS: u64 = 500;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionFigures {
    pub requests: u64,
    pub errors: u64,
    pub error_rate: Option<f64>,
    pub p99_ms: Option<f64>,
    pub reward_observations: f64,
    pub reward_mean: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ShadowFigures {
    /// Mirrored requests, answered or failed by the target.
    pub mirrored: u64,
    pub errors: u64,
    pub argmax_agreement: Option<f64>,
    pub max_abs_diff: Option<f64>,
}

/// What a stage is judged on: the target over this stage, the baseline over the whole rollout
/// (at 100% the baseline serves nothing, and more of its history only sharpens the comparison).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StageFigures {
    pub target: VersionFigures,
    pub baseline: VersionFigures,
    /// The baseline during this stage alone: its p99 is compared with the target's when it has
    /// enough requests, so that a hiccup of the whole machine weighs on both alike.
    #[serde(default)]
    pub baseline_in_stage: VersionFigures,
    pub shadow: ShadowFigures,
    /// The look this is (from the rollout's start) and the one-sided level each test had.
    pub look: u64,
    pub alpha_per_test: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing to do yet; says what the stage waits for.
    Hold(String),
    /// The stage passed; on to the next.
    Advance,
    /// The last stage passed.
    Promote,
    /// A gate breached.
    RollBack(String),
}

fn version_figures(counters: &Counters, rewards: switchyard_registry::Rewards) -> VersionFigures {
    let observations = rewards.successes + rewards.failures;
    VersionFigures {
        requests: counters.requests,
        errors: counters.errors,
        error_rate: (counters.requests > 0)
            .then(|| counters.errors as f64 / counters.requests as f64),
        p99_ms: LatencyHistogram::quantile_ms_of(&counters.buckets, 0.99),
        reward_observations: observations,
        reward_mean: (observations > 0.0).then(|| rewards.successes / observations),
    }
}

fn rewards_since(
    now: switchyard_registry::Rewards,
    earlier: switchyard_registry::Rewards,
) -> switchyard_registry::Rewards {
    switchyard_registry::Rewards {
        successes: (now.successes - earlier.successes).max(0.0),
        failures: (now.failures - earlier.failures).max(0.0),
    }
}

/// The look at `now_ms`: 1 at the start, one more every [`LOOK_INTERVAL_MS`].
pub fn look(started_ms: i64, now_ms: i64) -> u64 {
    ((now_ms - started_ms).max(0) / LOOK_INTERVAL_MS) as u64 + 1
}

/// The level one statistical test gets at look `k`.
pub fn alpha_per_test(gates: &Gates, k: u64) -> f64 {
    let tests = [
        gates.max_error_rate.is_some(),
        gates.max_error_rate_increase.is_some(),
        gates.max_reward_drop.is_some(),
    ]
    .iter()
    .filter(|enabled| **enabled)
    .count()
    .max(1);
    let k = k as f64;
    gates.alpha * 6.0 / (std::f64::consts::PI.powi(2) * k * k) / tests as f64
}

/// The figures of the current stage, from the totals now.
pub fn stage_figures(rollout: &Rollout, now: &Totals, now_ms: i64) -> StageFigures {
    let target = now.target.since(&rollout.at_stage_start.target);
    let baseline = now.baseline.since(&rollout.at_start.baseline);
    let baseline_in_stage = now.baseline.since(&rollout.at_stage_start.baseline);
    let shadow = target
        .shadow
        .get(&rollout.baseline)
        .copied()
        .unwrap_or_default();
    let look = look(rollout.started_ms, now_ms);
    StageFigures {
        target: version_figures(
            &target,
            rewards_since(now.target_rewards, rollout.at_stage_start.target_rewards),
        ),
        baseline: version_figures(
            &baseline,
            rewards_since(now.baseline_rewards, rollout.at_start.baseline_rewards),
        ),
        baseline_in_stage: version_figures(&baseline_in_stage, Default::default()),
        shadow: ShadowFigures {
            mirrored: shadow.pairs + shadow.errors,
            errors: shadow.errors,
            argmax_agreement: (shadow.argmax_compared > 0)
                .then(|| shadow.argmax_agreed as f64 / shadow.argmax_compared as f64),
            max_abs_diff: (shadow.pairs > 0).then_some(shadow.max_abs_diff),
        },
        look,
        alpha_per_test: alpha_per_test(&rollout.gates, look),
    }
}

/// The figures as of look `look` instead of the clock's: the leader never tests twice at one
/// look, whatever its ticks and the clock do.
pub fn at_look(mut figures: StageFigures, gates: &Gates, look: u64) -> StageFigures {
    figures.look = look;
    figures.alpha_per_test = alpha_per_test(gates, look);
    figures
}

/// Decides what a running rollout does now. `scores` are the target's latest offline scores.
pub fn decide(
    rollout: &Rollout,
    figures: &StageFigures,
    scores: &BTreeMap<String, f64>,
    now_ms: i64,
) -> Decision {
    if rollout.state != RolloutState::Running {
        return Decision::Hold(format!("the rollout is {}", rollout.state.as_str()));
    }
    let gates = &rollout.gates;
    if let Some(min) = &gates.min_score {
        match scores.get(&min.metric) {
            None => {
                return Decision::RollBack(format!(
                    "version {} has no offline score of '{}' (the gate asks for {} or more)",
                    rollout.target, min.metric, min.min
                ));
            }
            Some(score) if *score < min.min => {
                return Decision::RollBack(format!(
                    "offline score {} = {score} is below {}",
                    min.metric, min.min
                ));
            }
            Some(_) => {}
        }
    }
    let critical = z_critical(figures.alpha_per_test);
    let stage = rollout.stage();
    let held = now_ms - rollout.stage_started_ms >= stage.hold_ms as i64;
    let last = rollout.current + 1 >= rollout.stages.len();
    let verdict = match &stage.kind {
        StageKind::Shadow { .. } => judge_shadow(gates, &figures.shadow, critical),
        StageKind::Live { .. } => judge_live(gates, figures, critical),
    };
    match verdict {
        Err(reason) => Decision::RollBack(reason),
        Ok(Some(waiting)) => Decision::Hold(waiting),
        Ok(None) if !held => Decision::Hold(format!(
            "holding the stage for {} s more",
            ((stage.hold_ms as i64 - (now_ms - rollout.stage_started_ms)) as f64 / 1000.0).ceil()
        )),
        Ok(None) if last => Decision::Promote,
        Ok(None) => Decision::Advance,
    }
}

/// `Err(breach)`, `Ok(Some(what it waits for))` or `Ok(None)`: every gate passes.
fn judge_shadow(
    gates: &Gates,
    shadow: &ShadowFigures,
    critical: f64,
) -> Result<Option<String>, String> {
    if shadow.mirrored < gates.min_requests {
        return Ok(Some(format!(
            "{} of {} mirrored requests",
            shadow.mirrored, gates.min_requests
        )));
    }
    if let Some(max) = gates.max_error_rate
        && rate_above(shadow.errors, shadow.mirrored, max, critical)
    {
        return Err(format!(
            "the target failed {} of {} mirrored requests, above the {}% gate",
            shadow.errors,
            shadow.mirrored,
            max * 100.0
        ));
    }
    if let (Some(min), Some(agreement)) = (gates.min_argmax_agreement, shadow.argmax_agreement)
        && agreement < min
    {
        return Err(format!(
            "argmax agreement with the baseline {:.4} is below {min}",
            agreement
        ));
    }
    if let (Some(max), Some(diff)) = (gates.max_abs_diff, shadow.max_abs_diff)
        && diff > max
    {
        return Err(format!(
            "an output differs from the baseline's by {diff:.3e}, above {max:e}"
        ));
    }
    Ok(None)
}

fn judge_live(
    gates: &Gates,
    figures: &StageFigures,
    critical: f64,
) -> Result<Option<String>, String> {
    let target = &figures.target;
    let baseline = &figures.baseline;
    if target.requests < gates.min_requests {
        return Ok(Some(format!(
            "{} of {} requests",
            target.requests, gates.min_requests
        )));
    }
    if let Some(max) = gates.max_error_rate
        && rate_above(target.errors, target.requests, max, critical)
    {
        return Err(format!(
            "error rate {:.2}% ({} of {}) is above the {}% gate",
            target.errors as f64 * 100.0 / target.requests as f64,
            target.errors,
            target.requests,
            max * 100.0
        ));
    }
    let baseline_known = baseline.requests >= gates.min_requests;
    if let Some(increase) = gates.max_error_rate_increase
        && baseline_known
        && rates_apart(
            (target.errors, target.requests),
            (baseline.errors, baseline.requests),
            increase,
            critical,
        )
    {
        return Err(format!(
            "error rate {:.2}% is more than {} points above the baseline's {:.2}%",
            target.errors as f64 * 100.0 / target.requests as f64,
            increase * 100.0,
            baseline.errors as f64 * 100.0 / baseline.requests as f64,
        ));
    }
    // A p99 of fewer requests is little more than their slowest one.
    let latency_known = |requests: u64| requests >= gates.min_requests.max(P99_MIN_REQUESTS);
    let compared = if latency_known(figures.baseline_in_stage.requests) {
        &figures.baseline_in_stage
    } else {
        baseline
    };
    if let (Some(max), Some(t), Some(b)) = (gates.max_p99_ratio, target.p99_ms, compared.p99_ms)
        && latency_known(target.requests)
        && latency_known(compared.requests)
        && b > 0.0
        && t / b > max
    {
        return Err(format!(
            "p99 {t:.2} ms is {:.1} times the baseline's {b:.2} ms, above {max}",
            t / b
        ));
    }
    if let (Some(drop), Some(t), Some(b)) = (
        gates.max_reward_drop,
        target.reward_mean,
        baseline.reward_mean,
    ) && target.reward_observations >= gates.min_requests as f64
        && baseline.reward_observations >= gates.min_requests as f64
    {
        let spread = (t * (1.0 - t) / target.reward_observations
            + b * (1.0 - b) / baseline.reward_observations)
            .sqrt()
            .max(1e-9);
        if (b - drop - t) / spread > critical {
            return Err(format!(
                "mean reward {t:.3} is more than {drop} below the baseline's {b:.3}"
            ));
        }
    }
    Ok(None)
}

/// Whether `errors` of `n` says the true rate is above `max`, at the z threshold `critical`.
pub fn rate_above(errors: u64, n: u64, max: f64, critical: f64) -> bool {
    if n == 0 {
        return false;
    }
    if max <= 0.0 {
        return errors > 0;
    }
    if max >= 1.0 {
        return false;
    }
    let rate = errors as f64 / n as f64;
    (rate - max) / (max * (1.0 - max) / n as f64).sqrt() > critical
}

/// Whether the first rate is above the second plus `increase`, at the z threshold `critical`.
pub fn rates_apart(first: (u64, u64), second: (u64, u64), increase: f64, critical: f64) -> bool {
    let (e1, n1) = first;
    let (e2, n2) = second;
    if n1 == 0 || n2 == 0 {
        return false;
    }
    let (n1, n2) = (n1 as f64, n2 as f64);
    let difference = e1 as f64 / n1 - e2 as f64 / n2 - increase;
    // Pooled, and never below one error's worth, so that two error-free runs stay apart from
    // a run with errors only by what the data can show.
    let pooled = ((e1 + e2) as f64 / (n1 + n2)).max(1.0 / (n1 + n2));
    let spread = (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
    spread > 0.0 && difference / spread > critical
}

/// The standard normal's `1 - alpha` quantile (Acklam's rational approximation, relative
/// error below 1.2e-9).
pub fn z_critical(alpha: f64) -> f64 {
    let p = (1.0 - alpha).clamp(1e-300, 1.0 - 1e-16);
    const A: [f64; 6] = [
        -3.969683028665376e+01,
        2.209460984245205e+02,
        -2.759285104469687e+02,
        1.383_577_518_672_69e2,
        -3.066479806614716e+01,
        2.506628277459239e+00,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e+01,
        1.615858368580409e+02,
        -1.556989798598866e+02,
        6.680131188771972e+01,
        -1.328068155288572e+01,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-03,
        -3.223964580411365e-01,
        -2.400758277161838e+00,
        -2.549732539343734e+00,
        4.374664141464968e+00,
        2.938163982698783e+00,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-03,
        3.224671290700398e-01,
        2.445134137142996e+00,
        3.754408661907416e+00,
    ];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::rollout::{PerGateway, Stage, StageKind};
    use rand::{Rng, SeedableRng};

    fn live(target_percent: u64, hold_ms: u64) -> Stage {
        let mut weights = BTreeMap::new();
        weights.insert("1".to_string(), 100 - target_percent);
        weights.insert("2".to_string(), target_percent);
        Stage {
            kind: StageKind::Live { weights },
            hold_ms,
        }
    }

    fn rollout(stages: Vec<Stage>) -> Rollout {
        Rollout::running(stages, serde_json::json!({"mode": "fixed"}))
    }

    /// Latency buckets with `n` requests all in the bucket of `micros`.
    fn buckets(n: u64, micros: u64) -> Vec<u64> {
        let histogram = LatencyHistogram::new();
        for _ in 0..n.min(1) {
            histogram.record(std::time::Duration::from_micros(micros));
        }
        histogram.counts().iter().map(|c| c * n).collect()
    }

    fn totals(target: (u64, u64, u64), baseline: (u64, u64, u64)) -> Totals {
        let counters = |(requests, errors, micros): (u64, u64, u64)| Counters {
            requests,
            errors,
            buckets: buckets(requests - errors, micros),
            shadow: BTreeMap::new(),
        };
        Totals {
            target: PerGateway::one(counters(target)),
            baseline: PerGateway::one(counters(baseline)),
            ..Totals::default()
        }
    }

    #[test]
    fn the_normal_quantiles_are_right() {
        for (alpha, z) in [
            (0.05, 1.644854),
            (0.025, 1.959964),
            (0.01, 2.326348),
            (1e-6, 4.753424),
        ] {
            assert!((z_critical(alpha) - z).abs() < 1e-5, "{alpha}");
        }
    }

    #[test]
    fn the_spending_sums_to_alpha_at_most() {
        let gates = Gates::default();
        let spent: f64 = (1..200_000).map(|k| alpha_per_test(&gates, k) * 3.0).sum();
        assert!(
            spent <= gates.alpha && spent > gates.alpha * 0.999,
            "{spent}"
        );
    }

    /// (what the clock and the figures say, what the rollout does), one stage of 10 s.
    #[test]
    fn the_state_machine_by_table() {
        // target (requests, errors, latency us), baseline (requests, errors, latency us)
        let cases: Vec<(&str, i64, Totals, Decision)> = vec![
            (
                "too few requests: no verdict, even with errors",
                20_000,
                totals((50, 50, 300), (5000, 0, 300)),
                Decision::Hold("50 of 100 requests".into()),
            ),
            (
                "a good stage waits out its hold",
                5_000,
                totals((500, 0, 300), (5000, 0, 300)),
                Decision::Hold("holding the stage for 5 s more".into()),
            ),
            (
                "a good stage passes after its hold",
                10_000,
                totals((500, 0, 300), (5000, 0, 300)),
                Decision::Advance,
            ),
            (
                "a breach is judged at once, before the hold ends",
                1_000,
                totals((500, 150, 300), (5000, 0, 300)),
                Decision::RollBack("error rate 30.00% (150 of 500) is above the 5% gate".into()),
            ),
            (
                "ten times slower",
                1_000,
                totals((500, 0, 3000), (5000, 0, 300)),
                Decision::RollBack(
                    "p99 3.07 ms is 9.6 times the baseline's 0.32 ms, above 2".into(),
                ),
            ),
        ];
        for (what, now_ms, now, expected) in cases {
            let rollout = rollout(vec![live(5, 10_000), live(100, 10_000)]);
            let figures = stage_figures(&rollout, &now, now_ms);
            let decision = decide(&rollout, &figures, &BTreeMap::new(), now_ms);
            assert_eq!(decision, expected, "{what}: {figures:?}");
        }
        // The last stage passing promotes; a paused rollout holds whatever the figures.
        let mut last = rollout(vec![live(5, 10_000), live(100, 10_000)]);
        last.current = 1;
        let good = totals((500, 0, 300), (5000, 0, 300));
        let figures = stage_figures(&last, &good, 20_000);
        assert_eq!(
            decide(&last, &figures, &BTreeMap::new(), 20_000),
            Decision::Promote
        );
        last.state = RolloutState::Paused;
        let bad = totals((500, 400, 300), (5000, 0, 300));
        let figures = stage_figures(&last, &bad, 20_000);
        assert!(matches!(
            decide(&last, &figures, &BTreeMap::new(), 20_000),
            Decision::Hold(_)
        ));
    }

    #[test]
    fn an_error_rate_a_little_above_the_baselines_is_caught_by_the_relative_gate() {
        let rollout = rollout(vec![live(50, 60_000)]);
        // 3% against 0.5%: under the 5% absolute gate, but more than 1 point above.
        let now = totals((4000, 120, 300), (8000, 40, 300));
        let figures = stage_figures(&rollout, &now, 2_000);
        let decision = decide(&rollout, &figures, &BTreeMap::new(), 2_000);
        assert!(
            matches!(&decision, Decision::RollBack(reason) if reason.contains("points above")),
            "{decision:?}"
        );
    }

    #[test]
    fn the_shadow_phase_judges_agreement_and_the_offline_score() {
        let mut rollout = rollout(vec![
            Stage {
                kind: StageKind::Shadow { percent: 50.0 },
                hold_ms: 5_000,
            },
            live(100, 5_000),
        ]);
        let mut now = Totals::default();
        let shadow = |pairs, agreed| {
            let mut counters = Counters::default();
            counters.shadow.insert(
                "1".into(),
                crate::control::rollout::ShadowCounts {
                    pairs,
                    errors: 0,
                    argmax_compared: pairs,
                    argmax_agreed: agreed,
                    max_abs_diff: 0.5,
                },
            );
            counters
        };
        now.target = PerGateway::one(shadow(200, 150));
        let figures = stage_figures(&rollout, &now, 1_000);
        assert_eq!(
            decide(&rollout, &figures, &BTreeMap::new(), 1_000),
            Decision::RollBack("argmax agreement with the baseline 0.7500 is below 0.99".into())
        );
        now.target = PerGateway::one(shadow(200, 200));
        let figures = stage_figures(&rollout, &now, 6_000);
        assert_eq!(
            decide(&rollout, &figures, &BTreeMap::new(), 6_000),
            Decision::Advance
        );
        rollout.gates.min_score = Some(crate::control::rollout::MinScore {
            metric: "accuracy".into(),
            min: 0.9,
        });
        let mut scores = BTreeMap::new();
        scores.insert("accuracy".to_string(), 0.85);
        assert!(matches!(
            decide(&rollout, &figures, &scores, 6_000),
            Decision::RollBack(reason) if reason.contains("below 0.9")
        ));
    }

    /// Simulated rollouts, [5, 25, 50, 100] at 10 s each, 400 requests a second, looks every
    /// 500 ms, both versions failing 2% of requests: how many are rolled back (falsely), and
    /// how many of a version failing 6% are caught.
    fn simulate(target_error: f64, runs: usize, seed: u64) -> usize {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        let mut rolled_back = 0;
        for _ in 0..runs {
            let mut rollout = rollout(vec![
                live(5, 10_000),
                live(25, 10_000),
                live(50, 10_000),
                live(100, 10_000),
            ]);
            rollout.gates.max_p99_ratio = None;
            rollout.gates.min_requests = 50;
            let mut now = Totals::default();
            let mut clock = 0;
            'run: loop {
                clock += LOOK_INTERVAL_MS;
                let share = rollout.target_percent(rollout.stage()) / 100.0;
                for _ in 0..200 {
                    let (counters, rate) = if rng.random::<f64>() < share {
                        (now.target.single(), target_error)
                    } else {
                        (now.baseline.single(), 0.02)
                    };
                    counters.requests += 1;
                    counters.errors += u64::from(rng.random::<f64>() < rate);
                }
                let figures = stage_figures(&rollout, &now, clock);
                match decide(&rollout, &figures, &BTreeMap::new(), clock) {
                    Decision::Hold(_) => {}
                    Decision::Advance => {
                        rollout.current += 1;
                        rollout.stage_started_ms = clock;
                        rollout.at_stage_start = now.clone();
                    }
                    Decision::Promote => break 'run,
                    Decision::RollBack(_) => {
                        rolled_back += 1;
                        break 'run;
                    }
                }
            }
        }
        rolled_back
    }

    #[test]
    fn equal_versions_are_rolled_back_at_most_alpha_of_the_time() {
        let runs = 1000;
        let falsely = simulate(0.02, runs, 7);
        assert!(
            falsely as f64 <= Gates::default().alpha * runs as f64,
            "{falsely} of {runs} equal versions rolled back"
        );
        let caught = simulate(0.06, 200, 11);
        println!(
            "{falsely} of {runs} equal versions rolled back; {caught} of 200 failing 6% caught"
        );
        assert!(
            caught >= 190,
            "only {caught} of 200 versions failing 6% caught"
        );
    }
}
