//! The rollout task, in every gateway: it writes this gateway's counters to the registry, and
//! where this gateway leads it judges each active rollout every [`LOOK_INTERVAL_MS`] and writes
//! each transition (with its traffic) as one registry write. A write made from a stale read is
//! refused by the registry (the rollout's generation), so a verdict is never applied twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use switchyard_registry::{RegistryError, RolloutRecord, Store, VersionState};

use super::analysis::{self, Decision, LOOK_INTERVAL_MS};
use super::control::{finish_write, stage_write, totals};
use super::{Counters, Rollout, RolloutState, ShadowCounts};
use crate::core::TableHandle;

/// Who this gateway is to the others, and whether it drives rollouts now.
pub struct RolloutStatus {
    pub gateway: String,
    leading: AtomicBool,
}

impl RolloutStatus {
    pub fn new() -> Arc<RolloutStatus> {
        Arc::new(RolloutStatus {
            gateway: format!("gw-{}-{:08x}", std::process::id(), fastrand::u32(..)),
            leading: AtomicBool::new(false),
        })
    }

    pub fn leading(&self) -> bool {
        self.leading.load(Ordering::Relaxed)
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub struct RolloutDriver {
    store: Arc<dyn Store>,
    tables: Arc<TableHandle>,
    status: Arc<RolloutStatus>,
    /// What this gateway last wrote, and when, per (model, version): unchanged rows are
    /// rewritten only every [`REFRESH_COUNTERS`], so that the registry keeps the rows of live
    /// gateways.
    written: BTreeMap<(String, String), (Counters, Instant)>,
    /// Per rollout, the last look tested: each look is tested once.
    looks: BTreeMap<i64, u64>,
}

const REFRESH_COUNTERS: Duration = Duration::from_secs(60);

impl RolloutDriver {
    pub fn new(
        store: Arc<dyn Store>,
        tables: Arc<TableHandle>,
        status: Arc<RolloutStatus>,
    ) -> RolloutDriver {
        RolloutDriver {
            store,
            tables,
            status,
            written: BTreeMap::new(),
            looks: BTreeMap::new(),
        }
    }

    pub async fn run(mut self) {
        let mut every = tokio::time::interval(Duration::from_millis(LOOK_INTERVAL_MS as u64));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for tick in 0u64.. {
            every.tick().await;
            if let Err(error) = self.tick(tick).await {
                tracing::warn!(%error, "rollout upkeep failed; trying again");
            }
        }
    }

    async fn tick(&mut self, tick: u64) -> Result<(), RegistryError> {
        let active = self.store.active_rollouts().await?;
        // Every second at least; at every look while a rollout runs, so that the leader judges
        // fresh figures.
        if !active.is_empty() || tick.is_multiple_of(2) {
            self.write_counters().await?;
        }
        if active.is_empty() {
            return Ok(());
        }
        let leading = self.store.try_lead().await?;
        if leading != self.status.leading.swap(leading, Ordering::Relaxed) {
            tracing::info!(gateway = %self.status.gateway, leading, "rollout leadership changed");
        }
        if !leading {
            return Ok(());
        }
        self.looks
            .retain(|id, _| active.iter().any(|record| record.id == *id));
        for record in active {
            if let Err(error) = self.drive(&record).await {
                tracing::warn!(model = %record.model, rollout = record.id, %error, "rollout step not applied");
            }
        }
        Ok(())
    }

    /// This gateway's running totals per version, the rows that changed.
    async fn write_counters(&mut self) -> Result<(), RegistryError> {
        let table = self.tables.snapshot();
        let mut rows = Vec::new();
        for (name, model) in &table.models {
            for version in &model.versions {
                let stats = &version.stats;
                let counters = Counters {
                    requests: stats.requests(),
                    errors: stats.errors(),
                    buckets: stats.latency().counts(),
                    shadow: stats
                        .shadow()
                        .into_iter()
                        .map(|(primary, tally)| {
                            (
                                primary.to_string(),
                                ShadowCounts {
                                    pairs: tally.pairs,
                                    errors: tally.errors,
                                    argmax_compared: tally.argmax_compared,
                                    argmax_agreed: tally.argmax_agreed,
                                    max_abs_diff: tally.max_abs_diff,
                                },
                            )
                        })
                        .collect(),
                };
                let key = (name.to_string(), version.label.to_string());
                let fresh = self
                    .written
                    .get(&key)
                    .is_some_and(|(last, at)| *last == counters && at.elapsed() < REFRESH_COUNTERS);
                if fresh {
                    continue;
                }
                let body = serde_json::to_value(&counters).unwrap_or(Value::Null);
                rows.push((key, counters, body));
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        let writes = rows
            .iter()
            .map(|((model, version), _, body)| (model.clone(), version.clone(), body.clone()))
            .collect();
        self.store
            .put_counters(&self.status.gateway, writes)
            .await?;
        let now = Instant::now();
        for (key, counters, _) in rows {
            self.written.insert(key, (counters, now));
        }
        Ok(())
    }

    async fn drive(&mut self, record: &RolloutRecord) -> Result<(), RegistryError> {
        let mut rollout = Rollout::from_record(record).map_err(RegistryError::Invalid)?;
        let model = self.store.model(&rollout.model).await?;
        let now = totals(self.store.as_ref(), &rollout, &model).await?;
        let now_ms = now_ms();
        let actor = format!("rollout:{}", self.status.gateway);
        let write = match rollout.state {
            RolloutState::Pending => {
                rollout.state = RolloutState::Running;
                rollout.started_ms = now_ms;
                rollout.stage_started_ms = now_ms;
                rollout.at_start = now.clone();
                rollout.at_stage_start = now;
                rollout.policy_before = model.policy.clone();
                stage_write(record, &rollout, "rollout.started").map_err(RegistryError::Invalid)?
            }
            RolloutState::Running => {
                let figures = analysis::stage_figures(&rollout, &now, now_ms);
                let look = self
                    .looks
                    .get(&record.id)
                    .map_or(figures.look, |last| figures.look.max(last + 1));
                self.looks.insert(record.id, look);
                let figures = analysis::at_look(figures, &rollout.gates, look);
                let not_live = |label: &str| {
                    model.versions.iter().find(|v| v.label == label).map_or(
                        Some("removed".to_string()),
                        |v| {
                            matches!(
                                v.state,
                                VersionState::Failed
                                    | VersionState::Draining
                                    | VersionState::Retired
                            )
                            .then(|| v.state.as_str().to_string())
                        },
                    )
                };
                if let Some(state) = not_live(&rollout.baseline) {
                    // Nothing to go back to: the rollout ends where it stands.
                    let reason = format!("the baseline, version {}, is {state}", rollout.baseline);
                    let mut write = finish_write(
                        record,
                        rollout,
                        RolloutState::Aborted,
                        "aborted",
                        reason,
                        figures,
                        now_ms,
                    );
                    write.weights = None;
                    return self.apply(record, &actor, write).await;
                }
                let scores = model
                    .latest_scores
                    .get(&rollout.target)
                    .cloned()
                    .unwrap_or_default();
                let decision = match not_live(&rollout.target) {
                    Some(state) => Decision::RollBack(format!(
                        "the target, version {}, is {state}",
                        rollout.target
                    )),
                    None => analysis::decide(&rollout, &figures, &scores, now_ms),
                };
                match decision {
                    Decision::Hold(_) => return Ok(()),
                    Decision::Advance => {
                        rollout.close_stage(figures, "passed", "", now_ms);
                        rollout.current += 1;
                        rollout.stage_started_ms = now_ms;
                        rollout.at_stage_start = now;
                        stage_write(record, &rollout, "rollout.step")
                            .map_err(RegistryError::Invalid)?
                    }
                    Decision::Promote => finish_write(
                        record,
                        rollout,
                        RolloutState::Promoted,
                        "passed",
                        "every stage passed".into(),
                        figures,
                        now_ms,
                    ),
                    Decision::RollBack(reason) => {
                        tracing::warn!(model = %model.model.name, rollout = record.id, %reason, "rolling back");
                        finish_write(
                            record,
                            rollout,
                            RolloutState::RolledBack,
                            "failed",
                            reason,
                            figures,
                            now_ms,
                        )
                    }
                }
            }
            _ => return Ok(()),
        };
        self.apply(record, &actor, write).await
    }

    async fn apply(
        &self,
        record: &RolloutRecord,
        actor: &str,
        write: switchyard_registry::RolloutWrite,
    ) -> Result<(), RegistryError> {
        match self.store.write_rollout(actor, &record.model, write).await {
            Ok((written, revision)) => {
                tracing::info!(model = %record.model, rollout = record.id, state = %written.state, revision, "rollout moved");
                Ok(())
            }
            // Someone (a hand control, another leader's last write) got there first: judge
            // the newer state at the next look.
            Err(RegistryError::Conflict(message)) => {
                tracing::debug!(%message, "rollout changed meanwhile");
                Ok(())
            }
            Err(error) => Err(error),
        }
    }
}
