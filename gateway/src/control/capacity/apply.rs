//! The autoscaler's task: every round's decisions, applied outside the capacity's lock (a
//! replica can take seconds to load), and recorded as registry events.

use std::sync::Arc;
use std::time::Instant;

use switchyard_registry::Store;

use super::{ACTOR, Capacity, Change, SCALE_INTERVAL, lock};
use crate::core::TableHandle;
use crate::tasks::{self, TaskKind};

static CAPACITY_CHANGE: TaskKind = TaskKind::new("capacity_change");

/// Samples, decides and applies, every [`SCALE_INTERVAL`], until the task is dropped.
pub async fn run(tables: Arc<TableHandle>, capacity: Arc<Capacity>, store: Arc<dyn Store>) {
    let mut every = tokio::time::interval(SCALE_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let table = tables.snapshot();
        let (changes, events) = capacity.decide(&table, Instant::now());
        drop(table);
        for change in changes {
            // A replica can take seconds to load: the next rounds go on meanwhile.
            let capacity = capacity.clone();
            tasks::spawn(
                &CAPACITY_CHANGE,
                async move { apply(&capacity, change).await },
            );
        }
        for (key, payload) in events {
            if let Err(error) = store
                .log_event(ACTOR, &key.model, "replicas.scale", payload)
                .await
            {
                tracing::warn!(model = %key.model, %error, "cannot record a scaling decision");
            }
        }
    }
}

async fn apply(capacity: &Capacity, change: Change) {
    match change {
        Change::Add {
            key,
            ready,
            index,
            device,
        } => {
            let added = ready.replicas.add_replica(index, device).await;
            if let Some(adding) = lock(&capacity.state).adding.get_mut(&key) {
                *adding = adding.saturating_sub(1);
            }
            match added {
                Ok(added) => {
                    if let Some(bytes) = added.memory_bytes {
                        capacity.record_measured(&key, index, ready.replica_bytes(bytes));
                    }
                    tracing::info!(model = %key.model, version = %key.version, replica = index, %device, "replica added");
                }
                Err(error) => {
                    lock(&capacity.state)
                        .ledger
                        .release(&key.model, &key.version, index);
                    tracing::error!(model = %key.model, version = %key.version, %error, "a new replica failed to load");
                }
            }
        }
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
