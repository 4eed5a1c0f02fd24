//! The live figures of a routing experiment, per version: requests, errors and the recent
//! error rate (which takes a failing version out of the policy), latency quantiles, the
//! bandit's rewards, and how a shadow version's outputs compare with the primary's.
//!
//! They are kept per (model, version) for the life of the process, across table swaps and
//! reloads; the rewards also go to the registry so that a restart keeps what was learned.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use switchyard_registry::{Rewards, Store};
use switchyard_runtimes::{DataType, NamedTensor, Tensor};

use crate::routing::BetaStats;

/// The span over which the recent error rate is judged (the current and the previous one).
const ERROR_WINDOW: Duration = Duration::from_secs(10);
/// Fewer requests than this in the window say nothing about a version's error rate.
const ERROR_RATE_MIN_REQUESTS: u64 = 20;
/// Request ids remembered for feedback; the oldest are forgotten first.
const FEEDBACK_LOG_CAPACITY: usize = 100_000;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The figures stay usable even if a holder panicked; they are counters, not invariants.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

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
struct LatencyHistogram {
    buckets: Vec<AtomicU64>,
}

const SUB_BUCKETS: u32 = 4;
const LATENCY_BUCKETS: usize = 40 * SUB_BUCKETS as usize;

impl LatencyHistogram {
    fn new() -> LatencyHistogram {
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

    fn record(&self, latency: Duration) {
        let index = Self::index(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
    }

    /// The latency below which a fraction `q` of requests fell, in milliseconds (at most 19%
    /// above the true value: a bucket's width).
    fn quantile_ms(&self, q: f64) -> Option<f64> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
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
struct RewardTally {
    /// The registry's totals as last read.
    stored: BetaStats,
    /// Added here and not yet written to the registry.
    pending: BetaStats,
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
    requests: AtomicU64,
    errors: AtomicU64,
    recent: Mutex<RecentWindow>,
    latency: LatencyHistogram,
    rewards: Mutex<RewardTally>,
    /// Primary version label -> comparison, when this version is a shadow.
    shadow: Mutex<BTreeMap<Arc<str>, ShadowTally>>,
}

impl VersionStats {
    fn new(stored: BetaStats) -> VersionStats {
        VersionStats {
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

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    pub fn latency_ms(&self, q: f64) -> Option<f64> {
        self.latency.quantile_ms(q)
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

fn as_f64s(tensor: &Tensor) -> Option<Vec<f64>> {
    let data = tensor.data().as_ref();
    let read = |size: usize, convert: &dyn Fn(&[u8]) -> f64| {
        Some(data.chunks_exact(size).map(convert).collect())
    };
    let bytes = |chunk: &[u8]| -> [u8; 8] {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        word
    };
    match tensor.dtype() {
        DataType::Fp32 => read(4, &|c| {
            let w = bytes(c);
            f64::from(f32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        }),
        DataType::Fp64 => read(8, &|c| f64::from_le_bytes(bytes(c))),
        DataType::Fp16 => read(2, &|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64()),
        DataType::Bf16 => read(2, &|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64()),
        DataType::Int32 => read(4, &|c| {
            let w = bytes(c);
            f64::from(i32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        }),
        DataType::Int64 => read(8, &|c| i64::from_le_bytes(bytes(c)) as f64),
        _ => None,
    }
}

type VersionKey = (Arc<str>, Arc<str>);

/// Every version's figures, and the request ids that feedback can refer to.
#[derive(Default)]
pub struct Experiments {
    versions: Mutex<HashMap<VersionKey, Arc<VersionStats>>>,
    /// Models that have received feedback: their bandit learns from it alone, not from
    /// request outcomes.
    with_feedback: Mutex<HashSet<Arc<str>>>,
    requests: Mutex<RequestLog>,
}

/// Request ids are kept as 64-bit hashes: no allocation per request, and a client's id costs
/// the log the same whatever its length.
#[derive(Default)]
struct RequestLog {
    by_id: HashMap<u64, (Arc<str>, Arc<VersionStats>)>,
    order: VecDeque<u64>,
}

/// FNV-1a: fast on short ids, and an accidental collision (1 in 2^64) would only misroute one
/// reward.
fn id_hash(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum FeedbackError {
    #[error("reward must be a number in [0, 1], got {0}")]
    InvalidReward(f64),
    #[error(
        "unknown request id '{0}': feedback must refer to one of the last {FEEDBACK_LOG_CAPACITY} requests"
    )]
    UnknownRequest(String),
}

impl Experiments {
    /// The figures of a version, created on first use. `stored` is what the registry holds of
    /// its rewards, other gateways' included: taken whenever it is newer than what this
    /// gateway last read.
    pub fn version(&self, model: &str, label: &str, stored: Option<Rewards>) -> Arc<VersionStats> {
        let stored = stored.map(|r| BetaStats {
            successes: r.successes,
            failures: r.failures,
        });
        let mut versions = lock(&self.versions);
        let stats = versions
            .entry((model.into(), label.into()))
            .or_insert_with(|| Arc::new(VersionStats::new(stored.unwrap_or_default())))
            .clone();
        drop(versions);
        if let Some(stored) = stored {
            let mut tally = lock(&stats.rewards);
            // Totals only grow; an older snapshot must not undo a fresher flush.
            if stored.successes + stored.failures > tally.stored.successes + tally.stored.failures {
                tally.stored = stored;
            }
        }
        stats
    }

    /// Drops a retired version's figures.
    pub fn forget(&self, model: &str, label: &str) {
        lock(&self.versions).remove(&(Arc::<str>::from(model), Arc::<str>::from(label)));
    }

    /// Remembers which version answered a request, for feedback that names its id.
    pub fn remember(&self, id: &str, model: &Arc<str>, stats: &Arc<VersionStats>) {
        let key = id_hash(id);
        let mut log = lock(&self.requests);
        if log.by_id.len() >= FEEDBACK_LOG_CAPACITY
            && let Some(oldest) = log.order.pop_front()
        {
            log.by_id.remove(&oldest);
        }
        if log
            .by_id
            .insert(key, (model.clone(), stats.clone()))
            .is_none()
        {
            log.order.push_back(key);
        }
    }

    /// Credits the version that served `request_id` with `reward`; returns the model's name.
    pub fn feedback(&self, request_id: &str, reward: f64) -> Result<Arc<str>, FeedbackError> {
        if !(0.0..=1.0).contains(&reward) {
            return Err(FeedbackError::InvalidReward(reward));
        }
        let (model, stats) = lock(&self.requests)
            .by_id
            .get(&id_hash(request_id))
            .cloned()
            .ok_or_else(|| FeedbackError::UnknownRequest(request_id.to_owned()))?;
        stats.record_reward(reward);
        lock(&self.with_feedback).insert(model.clone());
        Ok(model)
    }

    pub fn has_feedback(&self, model: &str) -> bool {
        lock(&self.with_feedback).contains(model)
    }

    /// Writes the rewards added since the last flush to the registry and takes its totals,
    /// which include other gateways' rewards.
    pub async fn flush_rewards(&self, store: &dyn Store) {
        let versions: Vec<(VersionKey, Arc<VersionStats>)> = lock(&self.versions)
            .iter()
            .map(|(key, stats)| (key.clone(), stats.clone()))
            .collect();
        for ((model, label), stats) in versions {
            let pending = lock(&stats.rewards).pending;
            if pending.successes == 0.0 && pending.failures == 0.0 {
                continue;
            }
            let added = Rewards {
                successes: pending.successes,
                failures: pending.failures,
            };
            match store.add_rewards(&model, &label, added).await {
                Ok(total) => {
                    let mut tally = lock(&stats.rewards);
                    // Rewards recorded during the write stay pending for the next flush.
                    tally.pending.successes -= added.successes;
                    tally.pending.failures -= added.failures;
                    // A snapshot read meanwhile may have brought a larger total already.
                    if total.successes + total.failures
                        > tally.stored.successes + tally.stored.failures
                    {
                        tally.stored = BetaStats {
                            successes: total.successes,
                            failures: total.failures,
                        };
                    }
                }
                Err(error) => {
                    tracing::warn!(%model, version = %label, %error, "cannot store the bandit's rewards; keeping them for the next try");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn feedback_reaches_the_version_that_answered() {
        let experiments = Experiments::default();
        let stored = Rewards {
            successes: 3.0,
            failures: 1.0,
        };
        let stats = experiments.version("mlp", "2", Some(stored));
        let model: Arc<str> = "mlp".into();
        experiments.remember("req-1", &model, &stats);
        assert!(!experiments.has_feedback("mlp"));
        assert_eq!(experiments.feedback("req-1", 1.0), Ok(model.clone()));
        assert!(experiments.has_feedback("mlp"));
        assert_eq!(
            stats.rewards(),
            BetaStats {
                successes: 4.0,
                failures: 1.0
            }
        );
        assert_eq!(
            experiments.feedback("req-1", 1.5),
            Err(FeedbackError::InvalidReward(1.5))
        );
        assert!(matches!(
            experiments.feedback("nope", 0.5),
            Err(FeedbackError::UnknownRequest(_))
        ));
        // The same version's figures come back; newer registry totals (other gateways'
        // rewards) replace the stored part, older ones do not.
        let again = experiments.version("mlp", "2", None);
        assert!(Arc::ptr_eq(&stats, &again));
        let shared = Rewards {
            successes: 10.0,
            failures: 2.0,
        };
        experiments.version("mlp", "2", Some(shared));
        experiments.version("mlp", "2", Some(stored));
        assert_eq!(
            stats.rewards(),
            BetaStats {
                successes: 11.0,
                failures: 2.0
            }
        );
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
