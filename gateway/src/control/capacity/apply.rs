//! The autoscaler's task: every round's decisions, applied outside the capacity's lock (a
//! replica can take seconds to load), and recorded as registry events with the loads and
//! evictions the reconciler decided.

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use switchyard_registry::Store;

use super::{
    ACTOR, COLD_RETRY_FIRST, COLD_RETRY_MOST, Capacity, Change, FailedStart, LOAD_ACTION, Noted,
    SCALE_INTERVAL, lock, unload,
};
use crate::core::TableHandle;
use crate::tasks::{self, TaskKind};
use crate::telemetry::Metrics;

static CAPACITY_CHANGE: TaskKind = TaskKind::new("capacity_change");

/// Samples, decides and applies, every [`SCALE_INTERVAL`], until the task is dropped.
pub async fn run(
    tables: Arc<TableHandle>,
    capacity: Arc<Capacity>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
) {
    let mut every = tokio::time::interval(SCALE_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Every tick, and at once when a request waits for a version holding no replica.
        tokio::select! {
            _ = every.tick() => {}
            () = crate::serving::cold_waiter_arrived() => {}
        }
        let table = tables.snapshot();
        let (changes, events) = capacity.decide(&table, Instant::now());
        drop(table);
        for change in changes {
            // A replica can take seconds to load: the next rounds go on meanwhile.
            let (capacity, metrics) = (capacity.clone(), metrics.clone());
            tasks::spawn(&CAPACITY_CHANGE, async move {
                apply(&capacity, &metrics, change).await
            });
        }
        for (key, action, payload) in events.into_iter().chain(capacity.take_outbox()) {
            if let Err(error) = store.log_event(ACTOR, &key.model, action, payload).await {
                tracing::warn!(model = %key.model, %error, "cannot record a capacity decision");
            }
        }
    }
}

async fn apply(capacity: &Capacity, metrics: &Metrics, change: Change) {
    match change {
        Change::Add {
            key,
            ready,
            index,
            device,
            evict_first,
            cold,
        } => {
            for victim in evict_first {
                unload(victim, metrics).await;
            }
            let added = ready.replicas.add_replica(index, device).await;
            let mut state = lock(&capacity.state);
            if let Some(adding) = state.adding.get_mut(&key) {
                *adding = adding.saturating_sub(1);
            }
            match added {
                Ok(added) => {
                    let bytes = added.memory_bytes.map(|bytes| ready.replica_bytes(bytes));
                    drop(state);
                    if let Some(bytes) = bytes {
                        capacity.record_measured(&key, index, bytes);
                    }
                    tracing::info!(model = %key.model, version = %key.version, replica = index, %device, "replica added");
                    if let Some(decided) = cold {
                        let took = decided.elapsed();
                        metrics.replica_loaded(&key.model, &key.version, "success", took);
                        let mut state = lock(&capacity.state);
                        state.failed_starts.remove(&key);
                        state.note(
                            &key,
                            Noted::Loaded,
                            device,
                            bytes.unwrap_or(0),
                            format!("cold start in {} ms", took.as_millis()),
                        );
                    }
                }
                Err(error) => {
                    state.ledger.release(&key.model, &key.version, index);
                    tracing::error!(model = %key.model, version = %key.version, %error, "a new replica failed to load");
                    if let Some(decided) = cold {
                        let attempts = state
                            .failed_starts
                            .get(&key)
                            .map_or(1, |failed| failed.attempts.saturating_add(1));
                        let backoff = COLD_RETRY_FIRST
                            .saturating_mul(1 << attempts.saturating_sub(1).min(16))
                            .min(COLD_RETRY_MOST);
                        let reason = format!(
                            "{error} (attempt {attempts}; the next in {:.0} s)",
                            backoff.as_secs_f64()
                        );
                        let retry_at = Instant::now() + backoff;
                        state.failed_starts.insert(
                            key.clone(),
                            FailedStart {
                                attempts,
                                retry_at,
                                reason: reason.clone(),
                            },
                        );
                        state.note(&key, Noted::LoadFailed, device, 0, reason.clone());
                        state.outbox.push((
                            key.clone(),
                            LOAD_ACTION,
                            json!({"version": key.version, "outcome": "failed",
                                   "reason": reason, "attempts": attempts}),
                        ));
                        drop(state);
                        ready.replicas.fail_cold_start(&reason, retry_at);
                        metrics.replica_loaded(
                            &key.model,
                            &key.version,
                            "failed",
                            decided.elapsed(),
                        );
                    }
                }
            }
        }
        Change::Evict(victim) => unload(victim, metrics).await,
        Change::RemoveAll { key, ready } => {
            let mut state = lock(&capacity.state);
            for removed in ready.replicas.remove_all() {
                state
                    .ledger
                    .release(&key.model, &key.version, removed.index);
            }
            tracing::info!(model = %key.model, version = %key.version, "scaled to zero");
        }
        Change::Remove { key, ready } => {
            if let Some(removed) = ready.replicas.remove_replica() {
                lock(&capacity.state)
                    .ledger
                    .release(&key.model, &key.version, removed.index);
                tracing::info!(model = %key.model, version = %key.version, replica = removed.index, "replica removed");
            }
        }
    }
}
