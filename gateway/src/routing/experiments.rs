//! Every version's experiment figures, kept per version for the life of the process (across
//! table swaps and reloads), and the log of served request ids that feedback can refer to.
//! The control plane writes the rewards to the registry (`control::rewards`); nothing here
//! does I/O.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::routing::BetaStats;
use crate::routing::objective::ObjectivePlan;
use crate::routing::stats::VersionStats;
use crate::telemetry::figures::VersionFigures;
use crate::version_key::VersionKey;

/// Request ids remembered for feedback; the oldest are forgotten first.
const FEEDBACK_LOG_CAPACITY: usize = 100_000;

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The figures stay usable even if a holder panicked; they are counters, not invariants.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Every version's figures, and the request ids that feedback can refer to.
#[derive(Default)]
pub struct Experiments {
    versions: Mutex<HashMap<VersionKey, Arc<VersionStats>>>,
    /// Every version's one record of its requests, from its first sight for the life of the
    /// process: a version retired and served again, or moved away and back in a cluster, keeps
    /// counting where it was, as Prometheus counters must.
    figures: Mutex<HashMap<VersionKey, Arc<VersionFigures>>>,
    /// Models that have received feedback: their bandit learns from it alone, not from
    /// request outcomes.
    with_feedback: Mutex<HashSet<Arc<str>>>,
    requests: Mutex<RequestLog>,
    /// The objective policy's latest plan of each model under it.
    objective_plans: Mutex<HashMap<Arc<str>, ObjectivePlan>>,
}

/// Request ids are kept as 64-bit hashes: no allocation per request, and a client's id costs
/// the log the same whatever its length. The hash is keyed (SipHash with the process's random
/// keys), so that a client cannot choose ids that collide with another's request.
#[derive(Default)]
struct RequestLog {
    /// The model, the version's figures, and whether the request was rewarded already.
    by_id: HashMap<u64, (Arc<str>, Arc<VersionStats>, bool)>,
    order: VecDeque<u64>,
    keys: std::hash::RandomState,
}

impl RequestLog {
    fn id_hash(&self, id: &str) -> u64 {
        std::hash::BuildHasher::hash_one(&self.keys, id)
    }
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum FeedbackError {
    #[error("reward must be a number in [0, 1], got {0}")]
    InvalidReward(f64),
    #[error(
        "unknown request id '{0}': feedback must refer to one of the last {FEEDBACK_LOG_CAPACITY} requests served under a bandit policy"
    )]
    UnknownRequest(String),
    #[error("request '{0}' was rewarded already; a request is rewarded once")]
    AlreadyRewarded(String),
}

impl Experiments {
    /// The figures of a version, created on first use. `stored` is what the registry holds of
    /// its rewards, other gateways' included: taken whenever it is newer than what this
    /// gateway last read.
    pub fn version(&self, key: &VersionKey, stored: Option<BetaStats>) -> Arc<VersionStats> {
        let mut versions = lock(&self.versions);
        let stats = versions
            .entry(key.clone())
            .or_insert_with(|| {
                let figures = lock(&self.figures).entry(key.clone()).or_default().clone();
                Arc::new(VersionStats::new(stored.unwrap_or_default(), figures))
            })
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

    /// The records of the versions this node served, for Prometheus: those it has held since
    /// the process started, retired or not.
    pub fn served_figures(&self) -> Vec<(VersionKey, Arc<VersionFigures>)> {
        let mut served: Vec<_> = lock(&self.figures)
            .iter()
            .filter(|(_, figures)| figures.is_exposed())
            .map(|(key, figures)| (key.clone(), figures.clone()))
            .collect();
        served.sort_by(|a, b| a.0.cmp(&b.0));
        served
    }

    /// Keeps a model's latest objective plan; `None` once the model leaves the policy.
    pub fn set_objective_plan(&self, model: &Arc<str>, plan: Option<ObjectivePlan>) {
        let mut plans = lock(&self.objective_plans);
        match plan {
            Some(plan) => plans.insert(model.clone(), plan),
            None => plans.remove(model),
        };
    }

    pub fn objective_plan(&self, model: &str) -> Option<ObjectivePlan> {
        lock(&self.objective_plans).get(model).cloned()
    }

    /// Drops a retired version's figures.
    pub fn forget(&self, key: &VersionKey) {
        lock(&self.versions).remove(key);
    }

    /// Remembers which version answered a request, for feedback that names its id.
    /// A request that arrives again with an id the log holds changes nothing: a replay never
    /// re-arms a reward.
    pub fn remember(&self, id: &str, model: &Arc<str>, stats: &Arc<VersionStats>) {
        let mut log = lock(&self.requests);
        let key = log.id_hash(id);
        if log.by_id.contains_key(&key) {
            return;
        }
        if log.by_id.len() >= FEEDBACK_LOG_CAPACITY
            && let Some(oldest) = log.order.pop_front()
        {
            log.by_id.remove(&oldest);
        }
        log.by_id.insert(key, (model.clone(), stats.clone(), false));
        log.order.push_back(key);
    }

    /// Credits the version that served `request_id` with `reward`; returns the model's name.
    pub fn feedback(&self, request_id: &str, reward: f64) -> Result<Arc<str>, FeedbackError> {
        if !(0.0..=1.0).contains(&reward) {
            return Err(FeedbackError::InvalidReward(reward));
        }
        let mut log = lock(&self.requests);
        let key = log.id_hash(request_id);
        let (model, stats, rewarded) = log
            .by_id
            .get_mut(&key)
            .ok_or_else(|| FeedbackError::UnknownRequest(request_id.to_owned()))?;
        if *rewarded {
            return Err(FeedbackError::AlreadyRewarded(request_id.to_owned()));
        }
        *rewarded = true;
        let (model, stats) = (model.clone(), stats.clone());
        drop(log);
        stats.record_reward(reward);
        lock(&self.with_feedback).insert(model.clone());
        Ok(model)
    }

    pub fn has_feedback(&self, model: &str) -> bool {
        lock(&self.with_feedback).contains(model)
    }

    /// The versions with rewards not yet written to the registry, and how much.
    pub fn pending_rewards(&self) -> Vec<(VersionKey, Arc<VersionStats>, BetaStats)> {
        let versions: Vec<(VersionKey, Arc<VersionStats>)> = lock(&self.versions)
            .iter()
            .map(|(key, stats)| (key.clone(), stats.clone()))
            .collect();
        versions
            .into_iter()
            .filter_map(|(key, stats)| {
                let pending = lock(&stats.rewards).pending;
                let any = pending.successes != 0.0 || pending.failures != 0.0;
                any.then_some((key, stats, pending))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feedback_reaches_the_version_that_answered() {
        let experiments = Experiments::default();
        let stored = BetaStats {
            successes: 3.0,
            failures: 1.0,
        };
        let key = VersionKey::new("mlp", "2");
        let stats = experiments.version(&key, Some(stored));
        let model: Arc<str> = "mlp".into();
        experiments.remember("req-1", &model, &stats);
        assert!(!experiments.has_feedback("mlp"));
        assert_eq!(experiments.feedback("req-1", 1.0), Ok(model.clone()));
        assert_eq!(
            experiments.feedback("req-1", 1.0),
            Err(FeedbackError::AlreadyRewarded("req-1".into()))
        );
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
        let again = experiments.version(&key, None);
        assert!(Arc::ptr_eq(&stats, &again));
        let shared = BetaStats {
            successes: 10.0,
            failures: 2.0,
        };
        experiments.version(&key, Some(shared));
        experiments.version(&key, Some(stored));
        assert_eq!(
            stats.rewards(),
            BetaStats {
                successes: 11.0,
                failures: 2.0
            }
        );
    }

    #[test]
    fn a_replayed_request_id_never_re_arms_its_reward() {
        let experiments = Experiments::default();
        let model: Arc<str> = "mlp".into();
        let first = experiments.version(&VersionKey::new("mlp", "1"), None);
        let second = experiments.version(&VersionKey::new("mlp", "2"), None);
        experiments.remember("req-1", &model, &first);
        assert_eq!(experiments.feedback("req-1", 1.0), Ok(model.clone()));
        // The same id again, answered by another version: the log keeps the first entry, so
        // the reward can neither be given twice nor be moved to the second version.
        experiments.remember("req-1", &model, &second);
        assert_eq!(
            experiments.feedback("req-1", 1.0),
            Err(FeedbackError::AlreadyRewarded("req-1".into()))
        );
        assert_eq!(first.rewards().successes, 1.0);
        assert_eq!(second.rewards().successes, 0.0);
    }
}
