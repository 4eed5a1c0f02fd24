//! The inference API's keys, the models' limits and their payload capture, from the registry
//! to the request path: [`load`] reads them all into [`ApiKeys`], [`ModelLimits`] and
//! [`Capture`], and [`follow`] does it again whenever the change feed carries a `key.*`,
//! `model.limits` or `model.capture` event. On PostgreSQL the feed is a notification, so a key revoked through any gateway is
//! refused by every gateway within the notification's delivery (milliseconds), or within the
//! listener's 5 s safety read if a notification was lost while it reconnected.

use std::sync::Arc;
use std::time::Duration;

use switchyard_registry::{KeyRecord, RegistryError, Store};

use crate::auth::ApiKeys;
use crate::auth::keys::{KeyEntry, KeySpec, Limits, ModelLimits};
use crate::core::capture::{Capture, CaptureSpec};

/// Events read per look at the feed; a longer run of changes reloads the keys anyway.
const EVENTS_PER_LOOK: i64 = 512;

/// The registry's record as the request path holds it. A spec this gateway cannot read (a
/// newer gateway's, say) leaves the key admitting nothing rather than everything.
pub fn entry(record: &KeyRecord) -> KeyEntry {
    let (spec, readable) = match serde_json::from_value::<KeySpec>(record.spec.clone()) {
        Ok(spec) => match spec.check() {
            Ok(()) => (spec, true),
            Err(_) => (spec, false),
        },
        Err(_) => (KeySpec::default(), false),
    };
    if !readable {
        tracing::error!(key = %record.id, "a key's spec is not one this gateway reads; the key admits nothing");
    }
    KeyEntry {
        id: record.id.clone(),
        name: record.name.clone(),
        digest: record.digest.clone(),
        spec,
        revoked: record.revoked_ms.is_some() || !readable,
    }
}

/// What the registry's keys and models' documents are put in force in.
#[derive(Clone)]
pub struct InForce {
    pub keys: ApiKeys,
    pub limits: ModelLimits,
    pub capture: Capture,
}

/// Reads every key, every model's limits and every model's capture into `into`.
pub async fn load(store: &dyn Store, into: &InForce) -> Result<(), RegistryError> {
    let InForce {
        keys,
        limits: models,
        capture,
    } = into;
    let records = store.keys().await?;
    let entries: Vec<KeyEntry> = records.iter().map(entry).collect();
    keys.replace(&entries);
    let limits = store
        .model_limits()
        .await?
        .into_iter()
        .filter_map(|(model, spec)| {
            match serde_json::from_value::<Limits>(spec).map_err(|e| e.to_string()).and_then(
                |limits| limits.check().map(|()| limits),
            ) {
                Ok(limits) => Some((model, limits)),
                Err(error) => {
                    tracing::error!(%model, %error, "ignoring a model's limits this gateway cannot read");
                    None
                }
            }
        })
        .collect();
    models.replace(limits);
    let captures = store
        .model_captures()
        .await?
        .into_iter()
        .filter_map(|(model, spec)| {
            match serde_json::from_value::<CaptureSpec>(spec)
                .map_err(|e| e.to_string())
                .and_then(|spec| spec.check_bounds().map(|()| spec))
            {
                Ok(spec) => Some((model, spec)),
                Err(error) => {
                    tracing::error!(%model, %error, "ignoring a model's capture this gateway cannot read");
                    None
                }
            }
        })
        .collect();
    // Folders are made and files opened: off the executor's threads.
    let capture = capture.clone();
    if let Err(error) = tokio::task::spawn_blocking(move || capture.replace(captures)).await {
        tracing::error!(%error, "the capture's reload failed");
    }
    Ok(())
}

/// Follows the change feed for as long as the gateway runs, reloading the keys, the limits
/// and the capture when they change.
pub async fn follow(store: Arc<dyn Store>, into: InForce) {
    let mut revisions = store.subscribe();
    let mut seen = *revisions.borrow_and_update();
    // A reload that failed is tried again without waiting for another change.
    let mut reload_owed = false;
    loop {
        if !reload_owed && revisions.changed().await.is_err() {
            return;
        }
        let latest = *revisions.borrow_and_update();
        let changed = reload_owed
            || match store.events_after(seen, EVENTS_PER_LOOK).await {
                Ok(events) => {
                    events.len() as i64 >= EVENTS_PER_LOOK
                        || events.iter().any(|event| {
                            event.action.starts_with("key.")
                                || event.action == "model.limits"
                                || event.action == "model.capture"
                        })
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot read the registry's events; reloading the keys");
                    true
                }
            };
        reload_owed = false;
        if changed && let Err(error) = load(store.as_ref(), &into).await {
            tracing::warn!(%error, "cannot reload the API keys; retrying");
            tokio::time::sleep(Duration::from_millis(200)).await;
            reload_owed = true;
        }
        seen = latest;
    }
}
