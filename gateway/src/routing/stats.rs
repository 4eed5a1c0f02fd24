//! The live figures of one version in a routing experiment: requests, errors and the recent
//! error rate (which takes a failing version out of the policy), latency quantiles, the
//! bandit's rewards, and how a shadow version's outputs compare with the primary's.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard_runtimes::{NamedTensor, Tensor, TensorView};

use crate::routing::BetaStats;
use crate::routing::experiments::lock;

/// The span over which the recent error rate is judged (the current and the previous one).
const ERROR_WINDOW: Duration = Duration::from_secs(10);
/// Fewer requests than this in the window say nothing about a version's error rate.
const ERROR_RATE_MIN_REQUESTS: u64 = 20;

#[derive(Debug, Default)]
struct RecentWindow {
    started: Option<Instant>,
    requests: u64,
    errors: u64,
    previous_requests: u64,
    previous_errors: u64,
}

impl RecentWindow {
    fn roll(&mut self, now: Instant) {
        let started = *self.started.get_or_insert(now);
        let elapsed = now.saturating_duration_since(started);
        if elapsed >= ERROR_WINDOW {
            let stale = elapsed >= 2 * ERROR_WINDOW;
            self.previous_requests = if stale { 0 } else { self.requests };
            self.previous_errors = if stale { 0 } else { self.errors };
            self.requests = 0;
            self.errors = 0;
            self.started = Some(now);
        }
    }

    fn error_rate(&mut self, now: Instant) -> Option<f64> {
        self.roll(now);
        let requests = self.requests + self.previous_requests;
        (requests >= ERROR_RATE_MIN_REQUESTS)
            .then(|| (self.errors + self.previous_errors) as f64 / requests as f64)
    }
}

/// Latency in logarithmic buckets (four per power of two of microseconds), lock-free.
pub struct LatencyHistogram {
    buckets: Vec<AtomicU64>,
}

const SUB_BUCKETS: u32 = 4;
const LATENCY_BUCKETS: usize = 40 * SUB_BUCKETS as usize;

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram::new()
    }
}

impl LatencyHistogram {
    pub fn new() -> LatencyHistogram {
        LatencyHistogram {
            buckets: (0..LATENCY_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn index(micros: u64) -> usize {
        let micros = micros.max(1);
        let exponent = 63 - micros.leading_zeros();
        let fraction = if exponent >= 2 {
            (micros >> (exponent - 2)) & 0b11
        } else {
            (micros << (2 - exponent)) & 0b11
        };
        ((exponent * SUB_BUCKETS) as usize + fraction as usize).min(LATENCY_BUCKETS - 1)
    }

    /// The upper bound of a bucket, in microseconds.
    fn upper_bound(index: usize) -> f64 {
        let exponent = (index / SUB_BUCKETS as usize) as i32;
        let fraction = (index % SUB_BUCKETS as usize) as f64;
        2f64.powi(exponent) * (1.0 + (fraction + 1.0) / f64::from(SUB_BUCKETS))
    }

    pub fn record(&self, latency: Duration) {
        let index = Self::index(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
    }

    /// The latency below which a fraction `q` of requests fell, in milliseconds (at most 19%
    /// above the true value: a bucket's width).
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        Self::quantile_ms_of(&self.counts(), q)
    }

    /// Every bucket's count as of now: two readings' difference is the histogram of what
    /// happened between them.
    pub fn counts(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }

    /// [`LatencyHistogram::quantile_ms`] of bucket counts taken with [`LatencyHistogram::counts`].
    pub fn quantile_ms_of(counts: &[u64], q: f64) -> Option<f64> {
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (index, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(Self::upper_bound(index) / 1000.0);
            }
        }
        None
    }
}

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
    /// Requests the policy sent here (before any queue could refuse them): the offered load.
    routed: AtomicU64,
    /// Requests its queues refused (429): the sign that it carries less than it was given.
    refused: AtomicU64,
    /// The objective policy's share for this version, as f64 bits; NaN until planned.
    planned_share: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    recent: Mutex<RecentWindow>,
    latency: LatencyHistogram,
    pub(crate) rewards: Mutex<RewardTally>,
    /// Primary version label -> comparison, when this version is a shadow.
    shadow: Mutex<BTreeMap<Arc<str>, ShadowTally>>,
}

impl VersionStats {
    pub(crate) fn new(stored: BetaStats) -> VersionStats {
        VersionStats {
            routed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            planned_share: AtomicU64::new(f64::NAN.to_bits()),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            recent: Mutex::new(RecentWindow::default()),
            latency: LatencyHistogram::new(),
            rewards: Mutex::new(RewardTally {
                stored,
                pending: BetaStats::default(),
            }),
            shadow: Mutex::new(BTreeMap::new()),
        }
    }

    /// Counts an answered request. `failed` is a fault of the version (not of the caller's
    /// input, and not a full queue).
    pub fn record(&self, failed: bool, latency: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        } else {
            self.latency.record(latency);
        }
        let mut recent = lock(&self.recent);
        recent.roll(Instant::now());
        recent.requests += 1;
        recent.errors += u64::from(failed);
    }

    /// Counts a request the policy sent here.
    pub fn routed(&self) {
        self.routed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn routed_total(&self) -> u64 {
        self.routed.load(Ordering::Relaxed)
    }

    /// Counts a request its queues had no room for.
    pub fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused_total(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
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
        lock(&self.recent).error_rate(Instant::now())
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

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    pub fn latency_ms(&self, q: f64) -> Option<f64> {
        self.latency.quantile_ms(q)
    }

    pub fn latency(&self) -> &LatencyHistogram {
        &self.latency
    }

    pub fn shadow(&self) -> BTreeMap<Arc<str>, ShadowTally> {
        lock(&self.shadow).clone()
    }

    /// Records one mirrored request: the shadow's outputs against the primary's, or its error.
    pub fn record_shadow(
        &self,
        primary: &Arc<str>,
        primary_outputs: &[NamedTensor],
        shadow_outputs: Option<&[NamedTensor]>,
    ) {
        let comparison = shadow_outputs.and_then(|outputs| compare(primary_outputs, outputs));
        let mut shadow = lock(&self.shadow);
        let tally = shadow.entry(primary.clone()).or_default();
        let Some((max_abs_diff, argmax_agreed)) = comparison else {
            tally.errors += 1;
            return;
        };
        tally.pairs += 1;
        tally.max_abs_diff = tally.max_abs_diff.max(max_abs_diff);
        tally.sum_max_abs_diff += max_abs_diff;
        if let Some(agreed) = argmax_agreed {
            tally.argmax_compared += 1;
            tally.argmax_agreed += u64::from(agreed);
        }
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

/// The elements of a floating-point or 32/64-bit integer tensor, as `f64`.
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
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_runtimes::DataType;

    #[test]
    fn latency_quantiles_land_in_the_right_bucket() {
        let histogram = LatencyHistogram::new();
        for micros in 1..=1000u64 {
            histogram.record(Duration::from_micros(micros * 10));
        }
        let p50 = histogram.quantile_ms(0.5).unwrap();
        let p99 = histogram.quantile_ms(0.99).unwrap();
        assert!((5.0..=5.0 * 1.2).contains(&p50), "{p50}");
        assert!((9.9..=9.9 * 1.2).contains(&p99), "{p99}");
        for micros in [1u64, 3, 7, 1000, 123_456] {
            let index = LatencyHistogram::index(micros);
            assert!(
                LatencyHistogram::upper_bound(index) >= micros as f64,
                "{micros}"
            );
            assert!(index == 0 || LatencyHistogram::upper_bound(index - 1) <= micros as f64);
        }
    }

    #[test]
    fn the_error_rate_needs_enough_requests_and_forgets() {
        let mut window = RecentWindow::default();
        let start = Instant::now();
        window.roll(start);
        window.requests = 10;
        window.errors = 10;
        assert_eq!(window.error_rate(start), None, "too few to judge");
        window.requests = 40;
        assert_eq!(window.error_rate(start), Some(0.25));
        // One window later the old counts still weigh; two windows later they are gone.
        assert_eq!(window.error_rate(start + ERROR_WINDOW), Some(0.25));
        assert_eq!(window.error_rate(start + ERROR_WINDOW * 3), None);
    }

    #[test]
    fn shadow_comparisons_record_difference_and_argmax() {
        let stats = VersionStats::new(BetaStats::default());
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
