//! App wiring, the top layer: [`server`] starts and stops the gateway, and [`gauges`] gathers
//! what `/metrics` shows from the layers that hold it.

pub mod eval;
mod guard;
pub mod listener;
pub mod server;

pub use server::{Running, start};

use crate::control::Handles;
use crate::core::VersionStatus;
use crate::protocol::Pipeline;
use crate::telemetry::{Gauges, SequenceGauges, VersionGauges};

/// The gauges' values now: every version's state and replicas from the model table, the
/// in-flight count from the pipeline, budgets and targets from the capacity.
pub fn gauges(
    handles: &Handles,
    pipeline: &Pipeline,
    keys: &crate::auth::ApiKeys,
    capture: &crate::core::capture::Capture,
) -> Gauges {
    let table = handles.tables.snapshot();
    let sequences = pipeline.gateway().sequences().figures();
    let versions = table
        .models
        .values()
        .flat_map(|model| {
            model.versions.iter().map(|version| {
                let ready = match &version.status {
                    VersionStatus::Ready(ready) => Some(ready),
                    _ => None,
                };
                VersionGauges {
                    model: model.name.clone(),
                    version: version.label.clone(),
                    state: version.status.name(),
                    replicas: ready.map_or(0, |r| r.replicas.replica_count()),
                    queue_depth: ready.map_or(0, |r| r.replicas.outstanding()),
                    device: ready.map(|r| r.device),
                    memory_per_replica: ready.and_then(|r| r.replicas.memory_per_replica()),
                    sequences: ready.and_then(|r| r.sequence.as_ref()).map(|settings| {
                        let open = sequences
                            .get(&(model.name.clone(), version.label.clone()))
                            .cloned()
                            .unwrap_or_default();
                        SequenceGauges {
                            open: open.open,
                            slots: settings.max_per_replica
                                * ready.map_or(0, |r| r.replicas.replica_count()),
                            state_bytes: open.state_bytes,
                        }
                    }),
                }
            })
        })
        .collect();
    Gauges {
        versions,
        in_flight: pipeline.in_flight(),
        revision: handles.tables.revision(),
        budgets: handles.capacity.device_figures(),
        targets: handles
            .capacity
            .targets()
            .into_iter()
            .map(|(key, target)| (key.model, key.version, target))
            .collect(),
        figures: handles
            .experiments
            .served_figures()
            .into_iter()
            .map(|(key, figures)| (key.model, key.version, figures))
            .collect(),
        keys: keys.figures(),
        capture: capture.model_figures(),
        capture_sinks: capture.sink_figures(),
    }
}
