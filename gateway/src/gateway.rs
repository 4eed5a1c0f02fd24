//! The gateway's core, shared by every protocol front: the model table, loading versions off
//! the request path, and serving an inference request.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use switchyard_runtimes::{LoadOptions, Runtime};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{ErrorKind, GatewayError};
use crate::inference::{InferRequest, InferResponse, select_outputs, validate};
use crate::models::{ModelState, ModelTable, ReadyVersion, VersionState, VersionStatus};
use crate::repository::ModelEntry;
use crate::serving::{Batching, ReplicaSet};

pub struct Gateway {
    table: ArcSwap<ModelTable>,
    /// Readiness as it changes, for those who must push it (the gRPC health service).
    ready: tokio::sync::watch::Sender<bool>,
    /// Inference requests being handled, bodies included; the bound that keeps memory flat
    /// when clients send faster than the models can serve.
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
}

/// Held while an inference request is being handled.
pub struct Admission(#[allow(dead_code)] OwnedSemaphorePermit);

impl Gateway {
    pub fn new(max_in_flight: usize) -> Gateway {
        Gateway {
            table: ArcSwap::from_pointee(ModelTable::default()),
            ready: tokio::sync::watch::Sender::new(true),
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
        }
    }

    /// Admits one more inference request, or refuses it at once when `max_in_flight` are
    /// already being handled.
    pub fn admit(&self) -> Result<Admission, GatewayError> {
        self.in_flight
            .clone()
            .try_acquire_owned()
            .map(Admission)
            .map_err(|_| {
                GatewayError::new(
                    ErrorKind::Overloaded,
                    format!(
                        "the gateway is handling its limit of {} requests; retry shortly",
                        self.max_in_flight
                    ),
                )
            })
    }
}

impl Default for Gateway {
    fn default() -> Self {
        Gateway::new(crate::config::ServingConfig::default().max_in_flight)
    }
}

impl Gateway {
    /// The current model table. Cheap; hold it only briefly, never across an await.
    pub fn snapshot(&self) -> Arc<ModelTable> {
        self.table.load_full()
    }

    /// Ready once every version found at start has finished loading, successfully or not.
    pub fn is_ready(&self) -> bool {
        self.table.load().settled()
    }

    /// Follows `is_ready`.
    pub fn watch_ready(&self) -> tokio::sync::watch::Receiver<bool> {
        self.ready.subscribe()
    }

    fn store(&self, table: ModelTable) {
        self.table.store(Arc::new(table));
        self.ready.send_replace(self.is_ready());
    }

    fn set_status(&self, model: &str, label: &str, status: VersionStatus) {
        self.table
            .rcu(|table| table.with_status(model, label, &status));
        self.ready.send_replace(self.is_ready());
    }

    /// Registers the repository's versions as loading and loads each on its own worker thread.
    /// Returns at once; a version serves as soon as its own load has finished.
    pub fn load_repository(self: &Arc<Self>, entries: Vec<ModelEntry>, runtime: Arc<dyn Runtime>) {
        let mut models = BTreeMap::new();
        let mut loads = Vec::new();
        for entry in entries {
            let name: Arc<str> = entry.name.as_str().into();
            let versions = entry
                .versions
                .iter()
                .map(|version| {
                    let status = match &entry.settings {
                        Ok(_) => VersionStatus::Loading,
                        Err(reason) => VersionStatus::Failed(reason.clone()),
                    };
                    Arc::new(VersionState {
                        label: version.label.as_str().into(),
                        platform: runtime.platform(),
                        status,
                    })
                })
                .collect();
            if let Ok(settings) = &entry.settings {
                for version in &entry.versions {
                    loads.push((entry.name.clone(), version.clone(), settings.clone()));
                }
            } else if let Err(reason) = &entry.settings {
                tracing::error!(model = %entry.name, %reason, "model not loaded");
            }
            models.insert(
                name.clone(),
                Arc::new(ModelState {
                    name,
                    settings: entry.settings.ok(),
                    versions,
                }),
            );
        }
        self.store(ModelTable { models });

        for (model, version, settings) in loads {
            let gateway = self.clone();
            let runtime = runtime.clone();
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let options = LoadOptions {
                    device: settings.device,
                    intra_op_threads: settings.intra_op_threads,
                };
                let batching = Batching {
                    max_batch_size: 0,
                    configured_max_batch_size: settings.max_batch_size.map(|size| size as usize),
                    max_queue_delay: settings.max_queue_delay,
                    preferred_batch_sizes: settings.preferred_batch_sizes.clone(),
                };
                let loaded = ReplicaSet::start(
                    runtime,
                    version.artifact.clone(),
                    options,
                    batching,
                    settings.replicas,
                    settings.queue_capacity,
                    &format!("sy-{model}-{}", version.label),
                )
                .await;
                let status = match loaded {
                    Ok(replicas) => {
                        let ready = ReadyVersion::new(replicas, settings.timeout);
                        tracing::info!(
                            %model,
                            version = %version.label,
                            replicas = ready.replicas.replica_count(),
                            max_batch_size = ready.max_batch_size,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "version ready"
                        );
                        VersionStatus::Ready(Arc::new(ready))
                    }
                    Err(error) => {
                        tracing::error!(%model, version = %version.label, %error, "version failed to load");
                        VersionStatus::Failed(error.to_string())
                    }
                };
                gateway.set_status(&model, &version.label, status);
            });
        }
    }

    /// Refuses a request for a version whose queues are all full before its body is decoded;
    /// anything else (unknown model, not ready) is left to `infer` to report.
    pub fn check_capacity(&self, model: &str, version: Option<&str>) -> Result<(), GatewayError> {
        let table = self.table.load();
        let Ok(model) = table.model(model) else {
            return Ok(());
        };
        let chosen = match version {
            Some(label) => model.version(label).ok(),
            None => model.default_version(),
        };
        let full = chosen.is_some_and(|version| match &version.status {
            VersionStatus::Ready(ready) => ready.replicas.surely_full(),
            _ => false,
        });
        if full {
            return Err(GatewayError::new(
                ErrorKind::Overloaded,
                "the model's queue is full; retry shortly",
            ));
        }
        Ok(())
    }

    /// Serves one request: picks the version, checks the inputs, queues them on a replica and
    /// returns the outputs the caller asked for.
    pub async fn infer(&self, mut request: InferRequest) -> Result<InferResponse, GatewayError> {
        let (model_name, version_label, ready) = {
            let table = self.table.load();
            let model = table.model(&request.model)?;
            let version = match &request.version {
                Some(label) => model.version(label)?,
                None => model.default_version().ok_or_else(|| {
                    GatewayError::unavailable(format!(
                        "model '{}' has no ready version{}",
                        model.name,
                        not_ready_reasons(model)
                    ))
                })?,
            };
            let ready = version.ready(&model.name)?.clone();
            (model.name.clone(), version.label.clone(), ready)
        };
        validate(
            &model_name,
            ready.signature(),
            ready.max_batch_size,
            &request,
        )?;
        let now = Instant::now();
        let deadline = match request.deadline {
            Some(asked) => asked.min(now + ready.timeout),
            None => now + ready.timeout,
        };
        if deadline <= now {
            return Err(GatewayError::new(
                ErrorKind::DeadlineExceeded,
                "the request's deadline passed before it reached the model",
            ));
        }
        let inputs = std::mem::take(&mut request.inputs);
        let outputs = ready.replicas.infer(inputs, Some(deadline)).await?;
        Ok(InferResponse {
            model_name,
            model_version: version_label,
            id: request.id,
            outputs: select_outputs(outputs, &request.outputs),
        })
    }
}

fn not_ready_reasons(model: &ModelState) -> String {
    let reasons: Vec<String> = model
        .versions
        .iter()
        .map(|version| match &version.status {
            VersionStatus::Failed(reason) => {
                format!("version '{}' failed: {reason}", version.label)
            }
            other => format!(
                "version '{}' is {}",
                version.label,
                other.name().to_lowercase()
            ),
        })
        .collect();
    if reasons.is_empty() {
        String::new()
    } else {
        format!(" ({})", reasons.join("; "))
    }
}
