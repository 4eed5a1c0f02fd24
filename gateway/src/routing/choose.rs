//! Choosing among a model's candidate versions by its policy: pure functions over plain data.
//! Randomness comes from a caller-supplied `fastrand::Rng`, so the gateway can use a
//! per-request generator and tests can use fixed seeds; the bandit's Beta draws come from
//! `rand_distr`, seeded from it.

use rand::SeedableRng;
use rand_distr::Distribution;
use serde::{Deserialize, Serialize};

use crate::routing::objective;
use crate::routing::policy::{DEFAULT_SCORE_EXPONENT, PolicyMode, TrafficPolicy};

/// Enough for displayed shares to be stable to about one percentage point.
const BANDIT_DISPLAY_DRAWS: usize = 2000;
/// Fixed so that the displayed shares do not flicker between identical snapshots.
const BANDIT_DISPLAY_SEED: u64 = 0x5357_4954_4348_5944;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate<'a> {
    pub label: &'a str,
    /// Traffic weight from the registry (>= 0); 0 takes the version out of every mode.
    pub base_weight: f64,
    /// Ready and error rate under the policy's threshold (the caller decides).
    pub eligible: bool,
    /// Latest registry score of the policy's metric, for score mode.
    pub score: Option<f64>,
    /// Bandit statistics, for bandit mode.
    pub reward: BetaStats,
    /// The objective policy's latest share for it, once planned (objective mode).
    pub planned_share: Option<f64>,
}

impl Candidate<'_> {
    /// Registry data is not trusted to be finite, so anything odd counts as "no traffic".
    fn usable_weight(&self) -> f64 {
        if self.eligible && self.base_weight.is_finite() && self.base_weight > 0.0 {
            self.base_weight
        } else {
            0.0
        }
    }
}

/// Fractional rewards r in [0,1]: successes += r, failures += 1 - r.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BetaStats {
    pub successes: f64,
    pub failures: f64,
}

impl BetaStats {
    pub fn record(&mut self, reward: f64) {
        let reward = non_negative(reward).min(1.0);
        self.successes += reward;
        self.failures += 1.0 - reward;
    }
}

/// Bandit reward for one request: 0 on failure, 1 within the latency objective,
/// decaying as objective/latency beyond it so slow-but-correct still earns some credit.
pub fn latency_reward(succeeded: bool, latency_ms: u64, latency_objective_ms: u64) -> f64 {
    if !succeeded {
        0.0
    } else if latency_ms <= latency_objective_ms {
        1.0
    } else {
        latency_objective_ms as f64 / latency_ms as f64
    }
}

fn non_negative(value: f64) -> f64 {
    if value.is_finite() {
        value.max(0.0)
    } else {
        0.0
    }
}

/// The share of traffic the policy gives each candidate, normalised to sum 1
/// when any is positive (all zeros otherwise); ineligible candidates get 0.
///
/// * fixed, sticky: `base_weight`.
/// * score: `base_weight * s^exponent`, where `s` is the candidate's score clamped
///   to >= 0; a candidate with no score gets the mean score of the eligible
///   positive-weight candidates that have one. If none has a score, or every score
///   is 0, the base weights are used unchanged so the model keeps serving.
/// * bandit: among eligible candidates with `base_weight > 0` (n arms; beyond
///   deciding who takes part, base weights do not bias the bandit),
///   `f + (1 - n*f) * P(arm wins a Thompson draw)` with `f = min(floor, 1/n)`;
///   P is a Monte Carlo estimate over 2000 draws from a fixed seed, for display.
pub fn effective_weights(policy: &TrafficPolicy, candidates: &[Candidate]) -> Vec<f64> {
    let raw = match &policy.mode {
        PolicyMode::Fixed | PolicyMode::Sticky { .. } => {
            candidates.iter().map(Candidate::usable_weight).collect()
        }
        PolicyMode::Score { exponent, .. } => score_weights(candidates, *exponent),
        PolicyMode::Bandit { floor, .. } => bandit_shares(candidates, *floor),
        PolicyMode::Objective { floor, .. } => objective_shares(candidates, *floor),
    };
    normalised(raw)
}

fn normalised(mut weights: Vec<f64>) -> Vec<f64> {
    weights.iter_mut().for_each(|w| *w = non_negative(*w));
    let total: f64 = weights.iter().sum();
    if total > 0.0 && total.is_finite() {
        weights.iter_mut().for_each(|w| *w /= total);
    }
    weights
}

fn score_weights(candidates: &[Candidate], exponent: f64) -> Vec<f64> {
    let base: Vec<f64> = candidates.iter().map(Candidate::usable_weight).collect();
    let known: Vec<f64> = candidates
        .iter()
        .zip(&base)
        .filter(|(_, weight)| **weight > 0.0)
        .filter_map(|(candidate, _)| candidate.score.filter(|s| s.is_finite()))
        .map(|s| s.max(0.0))
        .collect();
    let best = known.iter().copied().fold(0.0, f64::max);
    if best <= 0.0 {
        return base;
    }
    let mean = known.iter().sum::<f64>() / known.len() as f64;
    let exponent = if exponent.is_finite() && exponent >= 0.0 {
        exponent
    } else {
        DEFAULT_SCORE_EXPONENT
    };
    // Dividing by the best score keeps powf in [0, 1] (no overflow for large
    // metrics) without changing the ratios, which are all that survive normalising.
    candidates
        .iter()
        .zip(&base)
        .map(|(candidate, weight)| {
            let score = candidate
                .score
                .filter(|s| s.is_finite())
                .map_or(mean, |s| s.max(0.0));
            weight * (score / best).powf(exponent)
        })
        .collect()
}

/// The planned shares of the usable candidates; before the first plan (or when every usable
/// candidate is new to it), the objective with nothing measured yet: no capacity binds.
fn objective_shares(candidates: &[Candidate], floor: f64) -> Vec<f64> {
    let usable: Vec<bool> = candidates.iter().map(|c| c.usable_weight() > 0.0).collect();
    // A plan whose usable shares are all 0 (the versions it planned for left the candidates
    // since) is no plan.
    let planned: f64 = candidates
        .iter()
        .zip(&usable)
        .filter(|(_, usable)| **usable)
        .filter_map(|(candidate, _)| candidate.planned_share)
        .filter(|share| share.is_finite())
        .sum();
    if planned > 0.0 {
        return candidates
            .iter()
            .zip(&usable)
            .map(|(candidate, usable)| {
                if *usable {
                    candidate.planned_share.unwrap_or(0.0)
                } else {
                    0.0
                }
            })
            .collect();
    }
    let arms: Vec<usize> = (0..candidates.len())
        .filter(|&index| usable[index])
        .collect();
    let qualities = objective::filled_qualities(arms.iter().map(|&index| candidates[index].score));
    let unmeasured: Vec<objective::Arm> = qualities
        .into_iter()
        .map(|quality| objective::Arm {
            quality,
            room: None,
        })
        .collect();
    let solution = objective::solve(&unmeasured, 0.0, floor);
    let mut shares = vec![0.0; candidates.len()];
    for (index, share) in arms.into_iter().zip(solution.shares) {
        shares[index] = share;
    }
    shares
}

fn bandit_arms(candidates: &[Candidate]) -> Vec<usize> {
    (0..candidates.len())
        .filter(|&index| candidates[index].usable_weight() > 0.0)
        .collect()
}

/// With `n * floor >= 1` the floor alone would exceed all traffic; capping it at
/// `1/n` degrades to a uniform split rather than failing the request.
fn capped_floor(floor: f64, arms: usize) -> f64 {
    non_negative(floor).min(1.0 / arms.max(1) as f64)
}

fn bandit_shares(candidates: &[Candidate], floor: f64) -> Vec<f64> {
    let arms = bandit_arms(candidates);
    let mut shares = vec![0.0; candidates.len()];
    if arms.is_empty() {
        return shares;
    }
    let floor = capped_floor(floor, arms.len());
    let mut wins = vec![0usize; candidates.len()];
    let mut rng = fastrand::Rng::with_seed(BANDIT_DISPLAY_SEED);
    for _ in 0..BANDIT_DISPLAY_DRAWS {
        if let Some(winner) = thompson_winner(candidates, &arms, &mut rng) {
            wins[winner] += 1;
        }
    }
    let explore_share = floor * arms.len() as f64;
    for &index in &arms {
        let win_rate = wins[index] as f64 / BANDIT_DISPLAY_DRAWS as f64;
        shares[index] = floor + (1.0 - explore_share) * win_rate;
    }
    shares
}

fn thompson_winner(
    candidates: &[Candidate],
    arms: &[usize],
    rng: &mut fastrand::Rng,
) -> Option<usize> {
    arms.iter()
        .map(|&index| {
            let stats = candidates[index].reward;
            let alpha = 1.0 + non_negative(stats.successes);
            let beta = 1.0 + non_negative(stats.failures);
            (index, sample_beta(alpha, beta, rng))
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(index, _)| index)
}

/// Index of the candidate that serves the request, or None when no eligible
/// candidate has positive weight.
///
/// Sticky with a key uses weighted rendezvous hashing, `-w / ln(h)` with `h` a
/// stable hash of (label, key) in (0, 1), highest wins: it ignores `rng`, and a
/// weight change only moves keys towards the versions that gained weight.
/// Sticky without a key behaves like fixed. Bandit explores uniformly among its
/// arms with probability `n * floor`, otherwise picks the best Thompson draw
/// from Beta(1 + successes, 1 + failures).
pub fn choose(
    policy: &TrafficPolicy,
    candidates: &[Candidate],
    key: Option<&[u8]>,
    rng: &mut fastrand::Rng,
) -> Option<usize> {
    match (&policy.mode, key) {
        (PolicyMode::Sticky { .. }, Some(key)) => rendezvous_pick(candidates, key),
        (PolicyMode::Bandit { floor, .. }, _) => {
            let arms = bandit_arms(candidates);
            let explore_share = capped_floor(*floor, arms.len()) * arms.len() as f64;
            if arms.is_empty() {
                None
            } else if rng.f64() < explore_share {
                Some(arms[rng.usize(..arms.len())])
            } else {
                thompson_winner(candidates, &arms, rng)
            }
        }
        _ => pick_weighted(&effective_weights(policy, candidates), rng),
    }
}

/// The shadow version to mirror this request to, if the policy asks for one;
/// never the version that already serves it.
pub fn shadow_target<'p>(
    policy: &'p TrafficPolicy,
    chosen_label: &str,
    rng: &mut fastrand::Rng,
) -> Option<&'p str> {
    let shadow = policy.shadow.as_ref()?;
    (shadow.version != chosen_label && rng.f64() < shadow.fraction)
        .then_some(shadow.version.as_str())
}

/// Weighted random index; non-finite and non-positive weights never win.
pub fn pick_weighted(weights: &[f64], rng: &mut fastrand::Rng) -> Option<usize> {
    let total: f64 = weights.iter().map(|w| non_negative(*w)).sum();
    if total <= 0.0 || !total.is_finite() {
        return None;
    }
    let mut remaining = rng.f64() * total;
    let mut last_positive = None;
    for (index, weight) in weights.iter().map(|w| non_negative(*w)).enumerate() {
        if weight <= 0.0 {
            continue;
        }
        if remaining < weight {
            return Some(index);
        }
        remaining -= weight;
        last_positive = Some(index);
    }
    // Rounding can leave `remaining` a hair above the last weight.
    last_positive
}

fn rendezvous_pick(candidates: &[Candidate], key: &[u8]) -> Option<usize> {
    candidates
        .iter()
        .enumerate()
        .filter(|(_, candidate)| candidate.usable_weight() > 0.0)
        .map(|(index, candidate)| {
            let unit = unit_open_interval(stable_hash(candidate.label, key));
            (index, -candidate.usable_weight() / unit.ln())
        })
        // Ties go to the lower index so the answer never depends on iteration quirks.
        .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
        .map(|(index, _)| index)
}

/// Stickiness must hold across restarts and between gateway processes, so this is a fixed
/// algorithm (FNV-1a 64 + splitmix64 finaliser), never std's seeded hasher.
/// 0xff never occurs in UTF-8, so label and key cannot blur into each other.
fn stable_hash(label: &str, key: &[u8]) -> u64 {
    const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let bytes = label.as_bytes().iter().chain(&[0xff]).chain(key);
    let fnv = bytes.fold(FNV_OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
    });
    splitmix64_finalise(fnv)
}

/// FNV alone mixes the last bytes poorly; the finaliser spreads them over all bits.
fn splitmix64_finalise(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The +0.5 keeps h strictly inside (0, 1), so ln(h) is finite and negative.
fn unit_open_interval(hash: u64) -> f64 {
    ((hash >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// A draw from Beta(alpha, beta); shapes come from `non_negative(..) + 1`, so they are valid.
fn sample_beta(alpha: f64, beta: f64, rng: &mut fastrand::Rng) -> f64 {
    let mut bridge = rand::rngs::SmallRng::seed_from_u64(rng.u64(..));
    // Shapes are at least 1 and finite (see `thompson_winner`), which `Beta::new` accepts.
    rand_distr::Beta::new(alpha, beta).map_or(0.5, |distribution| distribution.sample(&mut bridge))
}

/// (mean, low, high): the observed success rate and its 95% Wilson score
/// interval with n = successes + failures (fractional n allowed). Wilson rather
/// than the normal approximation because it stays inside [0, 1] and is sane for
/// small n and rates near 0 or 1. With no observations: (0.5, 0, 1).
pub fn reward_interval(stats: &BetaStats) -> (f64, f64, f64) {
    const Z: f64 = 1.959_963_984_540_054;
    let successes = non_negative(stats.successes);
    let n = successes + non_negative(stats.failures);
    if n <= 0.0 {
        return (0.5, 0.0, 1.0);
    }
    let p = successes / n;
    let z2 = Z * Z;
    let denominator = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denominator;
    let half_width = Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denominator;
    // min/max guard against rounding pushing a bound past p when p is 0 or 1.
    (
        p,
        (centre - half_width).max(0.0).min(p),
        (centre + half_width).min(1.0).max(p),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const DRAWS: usize = 100_000;

    fn versions(weights: &[f64]) -> Vec<Candidate<'static>> {
        let labels = ["1", "2", "3", "4"];
        let reward = BetaStats::default();
        let make = |(label, &base_weight)| Candidate {
            label,
            base_weight,
            eligible: true,
            score: None,
            reward,
            planned_share: None,
        };
        labels.into_iter().zip(weights).map(make).collect()
    }

    fn stats(successes: f64, failures: f64) -> BetaStats {
        BetaStats {
            successes,
            failures,
        }
    }

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

    fn shares(policy: &TrafficPolicy, versions: &[Candidate], seed: u64) -> Vec<f64> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut shares = vec![0.0; versions.len()];
        for _ in 0..DRAWS {
            shares[choose(policy, versions, None, &mut rng).unwrap()] += 1.0 / DRAWS as f64;
        }
        shares
    }

    fn sticky_pick(versions: &[Candidate], key: &str, seed: u64) -> usize {
        let mut rng = fastrand::Rng::with_seed(seed);
        choose(&sticky(), versions, Some(key.as_bytes()), &mut rng).unwrap()
    }

    fn sticky_picks(versions: &[Candidate]) -> Vec<usize> {
        (0..DRAWS)
            .map(|user| sticky_pick(versions, &format!("user-{user}"), 0))
            .collect()
    }

    fn assert_close(actual: &[f64], expected: &[f64], tolerance: f64) {
        let close = actual
            .iter()
            .zip(expected)
            .all(|(a, e)| (a - e).abs() <= tolerance);
        assert!(
            close && actual.len() == expected.len(),
            "{actual:?} vs {expected:?}"
        );
    }

    #[test]
    fn objective_follows_the_plan_and_falls_back_to_quality_without_one() {
        let policy = parse(r#"{"mode":"objective","metric":"accuracy","floor":0.05}"#).unwrap();
        let mut three = versions(&[1.0, 1.0, 1.0]);
        for (candidate, score) in three.iter_mut().zip([0.9, 0.95, 0.8]) {
            candidate.score = Some(score);
        }
        // No plan yet: the best takes all but the others' floors.
        assert_close(
            &effective_weights(&policy, &three),
            &[0.05, 0.9, 0.05],
            1e-9,
        );
        // The plan's shares, renormalised over the eligible versions.
        for (candidate, share) in three.iter_mut().zip([0.5, 0.3, 0.2]) {
            candidate.planned_share = Some(share);
        }
        assert_close(&effective_weights(&policy, &three), &[0.5, 0.3, 0.2], 1e-9);
        assert_close(&shares(&policy, &three, 7), &[0.5, 0.3, 0.2], 0.01);
        three[0].eligible = false;
        assert_close(&effective_weights(&policy, &three), &[0.0, 0.6, 0.4], 1e-9);
        // A plan that gives the eligible nothing is no plan: quality decides.
        for candidate in &mut three {
            candidate.planned_share = Some(0.0);
        }
        assert_close(
            &effective_weights(&policy, &three),
            &[0.0, 0.95, 0.05],
            1e-9,
        );
    }

    #[test]
    fn fixed_split_matches_weights_and_skips_ineligible() {
        assert_close(
            &shares(&fixed(), &versions(&[0.9, 0.1]), 1),
            &[0.9, 0.1],
            0.01,
        );
        let mut three = versions(&[50.0, 30.0, 20.0]);
        assert_close(&shares(&fixed(), &three, 2), &[0.5, 0.3, 0.2], 0.01);
        three[0].eligible = false;
        assert_close(&shares(&fixed(), &three, 3), &[0.0, 0.6, 0.4], 0.01);
        let mut rng = fastrand::Rng::with_seed(4);
        three
            .iter_mut()
            .for_each(|version| version.eligible = false);
        assert_eq!(choose(&fixed(), &three, None, &mut rng), None);
        let unusable = versions(&[0.0, f64::NAN, -1.0]);
        assert_eq!(choose(&fixed(), &unusable, None, &mut rng), None);
        assert_eq!(pick_weighted(&[], &mut rng), None);
    }

    #[test]
    fn sticky_key_always_maps_to_the_same_version_whatever_the_rng() {
        let two = versions(&[90.0, 10.0]);
        for user in 0..1000 {
            let key = format!("user-{user}");
            assert_eq!(sticky_pick(&two, &key, 1), sticky_pick(&two, &key, 99));
        }
        let picks = sticky_picks(&two);
        let second_share = picks.iter().filter(|&&i| i == 1).count() as f64 / DRAWS as f64;
        assert!((second_share - 0.1).abs() <= 0.01, "{second_share}");
        assert_close(&shares(&sticky(), &two, 5), &[0.9, 0.1], 0.01);
    }

    #[test]
    fn sticky_weight_change_moves_few_keys_and_only_to_the_gainer() {
        let before = sticky_picks(&versions(&[90.0, 10.0]));
        let after = sticky_picks(&versions(&[80.0, 20.0]));
        let moved: Vec<_> = before.iter().zip(&after).filter(|(b, a)| b != a).collect();
        let moved_share = moved.len() as f64 / DRAWS as f64;
        assert!((0.09..=0.11).contains(&moved_share), "{moved_share}");
        assert!(moved.iter().all(|(_, to)| **to == 1));
    }

    #[test]
    fn sticky_ineligible_version_moves_only_its_own_keys() {
        let mut three = versions(&[40.0, 30.0, 30.0]);
        let before = sticky_picks(&three);
        three[2].eligible = false;
        for (b, a) in before.iter().zip(&sticky_picks(&three)) {
            assert!(if *b == 2 { *a != 2 } else { a == b });
        }
    }

    #[test]
    fn sticky_golden_keys_survive_restarts() {
        // Cross-checked against an independent Python FNV-1a + splitmix64 implementation.
        assert_eq!(stable_hash("1", b"user-42"), 5_257_245_581_153_923_378);
        let two = versions(&[50.0, 50.0]);
        for (key, label) in [("alice", "1"), ("bob", "2"), ("carol", "2"), ("dave", "1")] {
            assert_eq!(two[sticky_pick(&two, key, 0)].label, label, "key {key}");
        }
    }

    #[test]
    fn score_weights_follow_formula_and_track_score_changes() {
        let mut two = versions(&[50.0, 50.0]);
        (two[0].score, two[1].score) = (Some(0.9), Some(0.6));
        let (a, b) = (0.9f64.powi(4), 0.6f64.powi(4));
        let expected = [a / (a + b), b / (a + b)];
        assert_close(&effective_weights(&score(), &two), &expected, 1e-12);
        assert_close(&shares(&score(), &two, 6), &expected, 0.01);
        two[1].score = Some(0.95);
        let split = shares(&score(), &two, 7);
        assert!(split[1] > split[0], "{split:?}");
    }

    #[test]
    fn score_missing_scores_use_mean_or_base_weights() {
        let mut four = versions(&[50.0, 30.0, 20.0, 0.0]);
        let base = [0.5, 0.3, 0.2, 0.0];
        assert_close(&effective_weights(&score(), &four), &base, 1e-12);
        // The zero-weight version is out of the experiment: its score must not skew the mean.
        (four[0].score, four[1].score, four[3].score) = (Some(0.9), Some(0.6), Some(0.0));
        let raw = [
            50.0 * 0.9f64.powi(4),
            30.0 * 0.6f64.powi(4),
            20.0 * 0.75f64.powi(4),
            0.,
        ];
        let expected: Vec<f64> = raw.iter().map(|w| w / raw.iter().sum::<f64>()).collect();
        assert_close(&effective_weights(&score(), &four), &expected, 1e-12);
        four.iter_mut().for_each(|v| v.score = Some(0.0));
        assert_close(&effective_weights(&score(), &four), &base, 1e-12);
    }

    #[test]
    fn bandit_learns_better_arm_but_keeps_floor() {
        let mut arms = versions(&[1.0, 1.0]);
        let true_reward = [0.9, 0.5];
        let (mut rng, mut world) = (fastrand::Rng::with_seed(7), fastrand::Rng::with_seed(8));
        let mut picks = Vec::new();
        for _ in 0..5000 {
            let arm = choose(&bandit(0.05), &arms, None, &mut rng).unwrap();
            let succeeded = world.f64() < true_reward[arm];
            arms[arm].reward.record(latency_reward(succeeded, 100, 500));
            picks.push(arm);
        }
        let good_late = picks[3000..].iter().filter(|&&a| a == 0).count() as f64 / 2000.0;
        let bad_overall = picks.iter().filter(|&&a| a == 1).count() as f64 / 5000.0;
        assert!(
            good_late >= 0.8 && bad_overall >= 0.04,
            "{good_late} {bad_overall}"
        );
    }

    #[test]
    fn bandit_effective_weights_sum_to_one_and_respect_floor() {
        let mut four = versions(&[1.0, 1.0, 1.0, 0.0]);
        (four[0].reward, four[1].reward) = (stats(90.0, 10.0), stats(5.0, 45.0));
        four[2].eligible = false;
        let weights = effective_weights(&bandit(0.05), &four);
        assert!((weights.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert!(weights[0] > 0.9 && weights[1] >= 0.05 - 1e-12 && weights[2..] == [0.0, 0.0]);
        // n * floor >= 1 degrades to a uniform split.
        let uniform = [0.5, 0.5, 0.0, 0.0];
        assert_close(&effective_weights(&bandit(0.6), &four), &uniform, 1e-12);
        four.iter_mut().for_each(|version| version.eligible = false);
        let mut rng = fastrand::Rng::with_seed(9);
        assert_eq!(choose(&bandit(0.05), &four, None, &mut rng), None);
    }

    #[test]
    fn beta_draws_have_the_right_mean() {
        let mut rng = fastrand::Rng::with_seed(10);
        let beta: f64 = (0..DRAWS).map(|_| sample_beta(3.0, 7.0, &mut rng)).sum();
        assert!((beta / DRAWS as f64 - 0.3).abs() < 0.005);
    }

    #[test]
    fn reward_interval_contains_mean_and_narrows_with_n() {
        assert_eq!(reward_interval(&BetaStats::default()), (0.5, 0.0, 1.0));
        let mut previous_width = f64::INFINITY;
        for n in [10.0, 100.0, 1000.0, 10000.0] {
            let (mean, low, high) = reward_interval(&stats(0.7 * n, 0.3 * n));
            assert!((mean - 0.7).abs() < 1e-12 && low < mean && mean < high);
            assert!(high - low < previous_width);
            previous_width = high - low;
        }
        for (successes, failures) in [(5.0, 0.0), (0.0, 5.0)] {
            let (mean, low, high) = reward_interval(&stats(successes, failures));
            assert!(0.0 <= low && low <= mean && mean <= high && high <= 1.0);
        }
    }

    #[test]
    fn shadow_mirrors_a_fraction_never_to_the_serving_version() {
        let json = r#"{"mode":"fixed","shadow":{"version":"2","fraction":0.1}}"#;
        let policy = parse(json).unwrap();
        let mut rng = fastrand::Rng::with_seed(11);
        let mirrored = (0..DRAWS).filter(|_| shadow_target(&policy, "1", &mut rng).is_some());
        assert!((mirrored.count() as f64 / DRAWS as f64 - 0.1).abs() < 0.01);
        assert!((0..100).all(|_| shadow_target(&policy, "2", &mut rng).is_none()));
        assert_eq!(shadow_target(&fixed(), "1", &mut rng), None);
    }
}
