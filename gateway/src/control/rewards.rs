//! The reward flush: the bandit rewards this gateway added since the last flush go to the
//! registry, and the registry's totals (other gateways' rewards included) come back.

use switchyard_registry::{Rewards, Store};

use crate::routing::{BetaStats, Experiments};

pub async fn flush_rewards(experiments: &Experiments, store: &dyn Store) {
    for (key, stats, pending) in experiments.pending_rewards() {
        let added = Rewards {
            successes: pending.successes,
            failures: pending.failures,
        };
        match store.add_rewards(&key.model, &key.version, added).await {
            Ok(total) => stats.settle_rewards(
                pending,
                BetaStats {
                    successes: total.successes,
                    failures: total.failures,
                },
            ),
            Err(error) => {
                tracing::warn!(version = %key, %error, "cannot store the bandit's rewards; keeping them for the next try");
            }
        }
    }
}
