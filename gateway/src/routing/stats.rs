//! The live figures of one version in a routing experiment: its request figures (a view of
//! its one record, [`VersionFigures`]: requests, errors and the recent error rate, which takes
//! a failing version out of the policy, latency quantiles, offered load and refusals), the
//! bandit's rewards, and how a shadow version's outputs compare with the primary's.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use switchyard_runtimes::{NamedTensor, Tensor, TensorView};

use crate::routing::BetaStats;
use crate::routing::experiments::lock;
use crate::telemetry::figures::VersionFigures;

pub use crate::telemetry::figures::LatencyHistogram;

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RewardTally {
    /// The registry's totals as last read.
    pub(crate) stored: BetaStats,
    /// Added here and not yet written to the registry.
    pub(crate) pending: BetaStats,
}

/// How a shadow version's outputs compared with the primary's, for one primary version.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct ShadowTally {
    /// Requests mirrored and answered by both.
    pub pairs: u64,
    /// Mirrored requests the shadow failed (or had no room for).
    pub errors: u64,
    /// Largest absolute difference over every compared element of every pair.
    pub max_abs_diff: f64,
    sum_max_abs_diff: f64,
    /// Pairs whose argmax (over the last axis of the first compared output) agreed.
    pub argmax_agreed: u64,
    pub argmax_compared: u64,
}

impl ShadowTally {
    pub fn mean_max_abs_diff(&self) -> Option<f64> {
        (self.pairs > 0).then(|| self.sum_max_abs_diff / self.pairs as f64)
    }
}

/// The figures of one version.
pub struct VersionStats {
    /// What happened to its requests: the one record, which Prometheus and Triton's
    /// statistics read too.
    figures: Arc<VersionFigures>,
    /// The objective policy's share for this version, as f64 bits; NaN until planned.
    planned_share: AtomicU64,
    pub(crate) rewards: Mutex<RewardTally>,
    /// Primary version label -> comparison, when this version is a shadow.
    shadow: Mutex<BTreeMap<Arc<str>, ShadowTally>>,
}

impl VersionStats {
    pub(crate) fn new(stored: BetaStats, figures: Arc<VersionFigures>) -> VersionStats {
        VersionStats {
            figures,
            planned_share: AtomicU64::new(f64::NAN.to_bits()),
            rewards: Mutex::new(RewardTally {
                stored,
                pending: BetaStats::default(),
            }),
            shadow: Mutex::new(BTreeMap::new()),
        }
    }

    /// The version's one record of its requests, to write each outcome to.
    pub fn figures(&self) -> &Arc<VersionFigures> {
        &self.figures
    }

    /// Requests sent here before any queue could refuse them: the offered load.
    pub fn routed_total(&self) -> u64 {
        self.figures.routed_total()
    }

    /// Requests its queues refused (429): the sign that it carries less than it was given.
    pub fn refused_total(&self) -> u64 {
        self.figures.refused_total()
    }

    /// The objective policy's share, once it has planned one.
    pub fn planned_share(&self) -> Option<f64> {
        Some(f64::from_bits(self.planned_share.load(Ordering::Relaxed))).filter(|s| s.is_finite())
    }

    pub fn set_planned_share(&self, share: Option<f64>) {
        let bits = share.unwrap_or(f64::NAN).to_bits();
        self.planned_share.store(bits, Ordering::Relaxed);
    }

    /// Errors among recent requests, once there are enough of them to judge.
    pub fn recent_error_rate(&self) -> Option<f64> {
        self.figures.recent_error_rate()
    }

    pub fn record_reward(&self, reward: f64) {
        lock(&self.rewards).pending.record(reward);
    }

    /// Everything learned: the registry's totals and what is still to be written.
    pub fn rewards(&self) -> BetaStats {
        let tally = *lock(&self.rewards);
        BetaStats {
            successes: tally.stored.successes + tally.pending.successes,
            failures: tally.stored.failures + tally.pending.failures,
        }
    }

    /// Takes a written flush into account: `added` is no longer pending, and `total` (the
    /// registry's totals after the write, other gateways' rewards included) is kept if newer.
    pub fn settle_rewards(&self, added: BetaStats, total: BetaStats) {
        let mut tally = lock(&self.rewards);
        // Rewards recorded during the write stay pending for the next flush.
        tally.pending.successes -= added.successes;
        tally.pending.failures -= added.failures;
        // A snapshot read meanwhile may have brought a larger total already.
        if total.successes + total.failures > tally.stored.successes + tally.stored.failures {
            tally.stored = total;
        }
    }

    /// Requests whose outcome says something of the version (not the caller's bad input, not
    /// a full queue).
    pub fn requests(&self) -> u64 {
        self.figures.requests()
    }

    /// Of those, the version's faults.
    pub fn errors(&self) -> u64 {
        self.figures.errors()
    }

    pub fn latency_ms(&self, q: f64) -> Option<f64> {
        self.figures.latency().quantile_ms(q)
    }

    pub fn latency(&self) -> &LatencyHistogram {
        self.figures.latency()
    }

    pub fn shadow(&self) -> BTreeMap<Arc<str>, ShadowTally> {
        lock(&self.shadow).clone()
    }

    /// Records one mirrored request: the shadow's outputs against the primary's, or its error;
    /// the comparison (largest absolute difference, whether the argmax agreed) if any.
    pub fn record_shadow(
        &self,
        primary: &Arc<str>,
        primary_outputs: &[NamedTensor],
        shadow_outputs: Option<&[NamedTensor]>,
    ) -> Option<(f64, Option<bool>)> {
        let comparison = shadow_outputs.and_then(|outputs| compare(primary_outputs, outputs));
        let mut shadow = lock(&self.shadow);
        let tally = shadow.entry(primary.clone()).or_default();
        let Some((max_abs_diff, argmax_agreed)) = comparison else {
            tally.errors += 1;
            return None;
        };
        tally.pairs += 1;
        tally.max_abs_diff = tally.max_abs_diff.max(max_abs_diff);
        tally.sum_max_abs_diff += max_abs_diff;
        if let Some(agreed) = argmax_agreed {
            tally.argmax_compared += 1;
            tally.argmax_agreed += u64::from(agreed);
        }
        comparison
    }
}

/// Largest absolute difference over the outputs both hold (by name, numeric, same shape), and
/// whether the rows' argmax of the first such output agree; `None` when nothing compares.
fn compare(primary: &[NamedTensor], shadow: &[NamedTensor]) -> Option<(f64, Option<bool>)> {
    let mut max_abs_diff: Option<f64> = None;
    let mut argmax_agreed = None;
    for expected in primary {
        let Some(actual) = shadow.iter().find(|o| o.name == expected.name) else {
            continue;
        };
        if actual.tensor.shape() != expected.tensor.shape() {
            return None;
        }
        let (Some(a), Some(b)) = (as_f64s(&expected.tensor), as_f64s(&actual.tensor)) else {
            continue;
        };
        let difference = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        max_abs_diff = Some(max_abs_diff.map_or(difference, |d: f64| d.max(difference)));
        if argmax_agreed.is_none() {
            let width = expected.tensor.shape().last().copied().unwrap_or(1).max(1);
            argmax_agreed = Some(
                a.chunks(width)
                    .zip(b.chunks(width))
                    .all(|(x, y)| argmax(x) == argmax(y)),
            );
        }
    }
    max_abs_diff.map(|d| (d, argmax_agreed))
}

fn argmax(values: &[f64]) -> Option<usize> {
    values
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(index, _)| index)
}

/// The elements of a numeric or boolean tensor, as `f64`.
pub(crate) fn as_f64s(tensor: &Tensor) -> Option<Vec<f64>> {
    fn widen<T: Copy>(values: &[T], to_f64: impl Fn(T) -> f64) -> Option<Vec<f64>> {
        Some(values.iter().map(|&v| to_f64(v)).collect())
    }
    match tensor.view() {
        TensorView::Fp32(v) => widen(&v, f64::from),
        TensorView::Fp64(v) => widen(&v, |x| x),
        TensorView::Fp16(v) => widen(&v, |x| x.to_f64()),
        TensorView::Bf16(v) => widen(&v, |x| x.to_f64()),
        TensorView::Int32(v) => widen(&v, f64::from),
        TensorView::Int64(v) => widen(&v, |x| x as f64),
        TensorView::Int16(v) => widen(&v, f64::from),
        TensorView::Int8(v) => widen(&v, f64::from),
        TensorView::Uint64(v) => widen(&v, |x| x as f64),
        TensorView::Uint32(v) => widen(&v, f64::from),
        TensorView::Uint16(v) => widen(&v, f64::from),
        TensorView::Uint8(v) => widen(v, f64::from),
        TensorView::Bool(v) => widen(v, |x| f64::from(u8::from(x != 0))),
        TensorView::Bytes(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_runtimes::DataType;

    #[test]
    fn shadow_comparisons_record_difference_and_argmax() {
        let stats = VersionStats::new(BetaStats::default(), Arc::default());
        let output = |values: &[f32]| {
            vec![NamedTensor {
                name: "y".into(),
                tensor: Tensor::from_slice(DataType::Fp32, vec![2, 2], values).unwrap(),
            }]
        };
        let primary: Arc<str> = "1".into();
        let expected = output(&[0.1, 0.9, 0.8, 0.2]);
        stats.record_shadow(&primary, &expected, Some(&output(&[0.1, 0.8, 0.8, 0.25])));
        stats.record_shadow(&primary, &expected, Some(&output(&[0.9, 0.1, 0.8, 0.2])));
        stats.record_shadow(&primary, &expected, None);
        let tally = stats.shadow()[&primary];
        assert_eq!((tally.pairs, tally.errors), (2, 1));
        assert_eq!((tally.argmax_agreed, tally.argmax_compared), (1, 2));
        assert!((tally.max_abs_diff - 0.8).abs() < 1e-6, "{tally:?}");
    }
}
