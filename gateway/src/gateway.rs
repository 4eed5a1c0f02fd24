//! The gateway's core, shared by every protocol front: the model table, loading versions off
//! the request path, and serving an inference request.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{ErrorKind, GatewayError};
use crate::inference::{InferRequest, InferResponse, select_outputs, validate};
use crate::models::{ModelState, ModelTable, ReadyVersion, VersionState, VersionStatus};
use crate::telemetry::Telemetry;
use crate::tracing_setup::TRACE_TARGET;

pub struct Gateway {
    table: ArcSwap<ModelTable>,
    /// Readiness as it changes, for those who must push it (the gRPC health service).
    ready: tokio::sync::watch::Sender<bool>,
    /// Inference requests being handled, bodies included; the bound that keeps memory flat
    /// when clients send faster than the models can serve.
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    telemetry: Arc<Telemetry>,
    /// The registry revision the current table was built from.
    revision: AtomicI64,
}

/// Held while an inference request is being handled.
pub struct Admission(#[allow(dead_code)] OwnedSemaphorePermit);

impl Gateway {
    pub fn new(max_in_flight: usize, metrics: bool) -> Gateway {
        Gateway {
            table: ArcSwap::from_pointee(ModelTable::default()),
            ready: tokio::sync::watch::Sender::new(false),
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            telemetry: Telemetry::new(metrics),
            revision: AtomicI64::new(0),
        }
    }

    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// Inference requests being handled now.
    pub fn in_flight(&self) -> usize {
        self.max_in_flight - self.in_flight.available_permits()
    }

    pub fn revision(&self) -> i64 {
        self.revision.load(Ordering::Relaxed)
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

impl Gateway {
    /// The current model table. Cheap; hold it only briefly, never across an await.
    pub fn snapshot(&self) -> Arc<ModelTable> {
        self.table.load_full()
    }

    /// Ready once the versions known at start have finished loading, successfully or not;
    /// versions registered later load without taking the server out of readiness.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Follows `is_ready`.
    pub fn watch_ready(&self) -> tokio::sync::watch::Receiver<bool> {
        self.ready.subscribe()
    }

    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.send_replace(ready);
    }

    /// Puts a new model table in place; requests already routed keep the version they hold.
    pub(crate) fn install(&self, table: ModelTable, revision: i64) {
        self.table.store(Arc::new(table));
        self.revision.store(revision, Ordering::Relaxed);
    }

    /// Refuses a request for a version whose queues are all full before its body is decoded;
    /// anything else (unknown model, not ready) is left to `infer` to report.
    pub fn check_capacity(&self, model: &str, version: Option<&str>) -> Result<(), GatewayError> {
        let table = self.table.load();
        let Ok(model) = table.model(model) else {
            return Ok(());
        };
        let chosen = match version {
            // An unknown version is for `infer` to report (404), not a reason to refuse.
            Some(label) => match model.version(label) {
                Ok(version) => Some(version),
                Err(_) => return Ok(()),
            },
            None => None,
        };
        let surely_full = |version: &Arc<VersionState>| match &version.status {
            VersionStatus::Ready(ready) => ready.replicas.surely_full(),
            _ => false,
        };
        let full = match chosen {
            Some(version) => surely_full(version),
            // Routing may pick any ready version: refuse only when all of them are full.
            None => {
                model.highest_ready().is_some()
                    && model
                        .versions
                        .iter()
                        .filter(|v| matches!(v.status, VersionStatus::Ready(_)))
                        .all(surely_full)
            }
        };
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
    pub async fn infer(&self, request: InferRequest) -> Result<InferResponse, GatewayError> {
        let route =
            crate::tracing_setup::child(|| tracing::debug_span!(target: TRACE_TARGET, "route"))
                .entered();
        let (model_name, version_label, ready) = {
            let table = self.table.load();
            let model = table.model(&request.model)?;
            let version = match &request.version {
                Some(label) => model.version(label)?,
                None => model.route().ok_or_else(|| {
                    GatewayError::unavailable(format!(
                        "model '{}' has no ready version{}",
                        model.name,
                        not_ready_reasons(model)
                    ))
                })?,
            };
            let ready = version.ready(&model.name)?.clone();
            if request.version.is_none() {
                ready.metrics.routed();
            }
            (model.name.clone(), version.label.clone(), ready)
        };
        drop(route);
        let span = tracing::Span::current();
        span.record("version", &*version_label);
        if let Some(id) = &request.id {
            span.record("request_id", id.as_str());
        }
        let received = request.received.unwrap_or_else(Instant::now);
        let protocol = request.protocol;
        let result = self
            .serve(&model_name, &version_label, &ready, request)
            .await;
        let compute = result
            .as_ref()
            .map(|(_, compute)| *compute)
            .unwrap_or_default();
        ready.metrics.record(
            protocol,
            result.as_ref().map(|_| ()).map_err(|e| e.kind),
            received.elapsed(),
            compute,
        );
        result.map(|(response, _)| response)
    }

    /// The part of `infer` after the version is chosen; also returns the model's compute time.
    async fn serve(
        &self,
        model_name: &Arc<str>,
        version_label: &Arc<str>,
        ready: &Arc<ReadyVersion>,
        mut request: InferRequest,
    ) -> Result<(InferResponse, std::time::Duration), GatewayError> {
        validate(
            model_name,
            ready.signature(),
            ready.max_batch_size,
            &request,
        )?;
        let now = Instant::now();
        let timeout_at = now.checked_add(ready.timeout).unwrap_or(now);
        let deadline = match request.deadline {
            Some(asked) => asked.min(timeout_at),
            None => timeout_at,
        };
        if deadline <= now {
            return Err(GatewayError::new(
                ErrorKind::DeadlineExceeded,
                "the request's deadline passed before it reached the model",
            ));
        }
        let inputs = std::mem::take(&mut request.inputs);
        let (outputs, compute) = ready.replicas.infer(inputs, Some(deadline)).await?;
        let response = InferResponse {
            model_name: model_name.clone(),
            model_version: version_label.clone(),
            id: request.id,
            outputs: select_outputs(outputs, &request.outputs),
        };
        Ok((response, compute))
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
