//! The gateway's core, shared by every protocol front: the model table, loading versions off
//! the request path, and serving an inference request.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use switchyard_runtimes::NamedTensor;

use crate::capacity::Capacity;
use crate::config::DeviceConfig;
use crate::error::{ErrorKind, GatewayError};
use crate::experiment::{Experiments, VersionStats};
use crate::inference::{InferRequest, InferResponse, Parameter, select_outputs, validate};
use crate::models::{ModelTable, NoVersion, ReadyVersion, VersionState, VersionStatus};
use crate::routing::{self, PolicyMode, TrafficPolicy};
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
    experiments: Experiments,
    capacity: Capacity,
}

/// Held while an inference request is being handled.
pub struct Admission(#[allow(dead_code)] OwnedSemaphorePermit);

impl Gateway {
    pub fn new(max_in_flight: usize, metrics: bool, devices: Vec<DeviceConfig>) -> Gateway {
        Gateway {
            table: ArcSwap::from_pointee(ModelTable::default()),
            ready: tokio::sync::watch::Sender::new(false),
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            telemetry: Telemetry::new(metrics),
            revision: AtomicI64::new(0),
            experiments: Experiments::default(),
            capacity: Capacity::new(devices),
        }
    }

    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    pub fn experiments(&self) -> &Experiments {
        &self.experiments
    }

    pub fn capacity(&self) -> &Capacity {
        &self.capacity
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

    /// Serves one request: picks the version (the named one, or the policy's choice), checks
    /// the inputs, queues them on a replica and returns the outputs the caller asked for. A
    /// request without an id gets one, so that feedback can refer to it.
    pub async fn infer(&self, mut request: InferRequest) -> Result<InferResponse, GatewayError> {
        let route =
            crate::tracing_setup::child(|| tracing::debug_span!(target: TRACE_TARGET, "route"))
                .entered();
        let routed = self.route(&request)?;
        drop(route);
        let span = tracing::Span::current();
        span.record("version", &*routed.label);
        let id = request.id.get_or_insert_with(new_request_id);
        span.record("request_id", id.as_str());
        // A deadline the caller set is the caller's business: missing it says nothing about the
        // version.
        let shadow_inputs = routed.shadow.as_ref().map(|_| request.inputs.clone());
        let received = request.received.unwrap_or_else(Instant::now);
        // The caller's deadline, when it comes before the version's own timeout, is the one
        // that fires; missing it says nothing about the version.
        let caller_deadline = request
            .deadline
            .is_some_and(|deadline| deadline < received + routed.ready.timeout);
        let protocol = request.protocol;
        let result = self
            .serve(&routed.model_name, &routed.label, &routed.ready, request)
            .await;
        let elapsed = received.elapsed();
        let compute = result
            .as_ref()
            .map(|(_, compute)| *compute)
            .unwrap_or_default();
        let outcome = result.as_ref().map(|_| ()).map_err(|e| e.kind);
        routed
            .ready
            .metrics
            .record(protocol, outcome, elapsed, compute);
        let version_fault = match outcome {
            Err(ErrorKind::Internal | ErrorKind::Unavailable) => true,
            Err(ErrorKind::DeadlineExceeded) => !caller_deadline,
            _ => false,
        };
        if !matches!(
            outcome,
            Err(ErrorKind::InvalidArgument | ErrorKind::Overloaded)
        ) {
            routed.stats.record(version_fault, elapsed);
            if let Some(objective_ms) = routed.bandit_objective_ms
                && !self.experiments.has_feedback(&routed.model_name)
            {
                let elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
                routed.stats.record_reward(routing::latency_reward(
                    !version_fault,
                    elapsed_ms,
                    objective_ms,
                ));
            }
        }
        let (response, _) = result?;
        if let Some(id) = &response.id {
            self.experiments
                .remember(id, &routed.model_name, &routed.stats);
        }
        if let (Some(shadow), Some(inputs)) = (routed.shadow, shadow_inputs) {
            // Off the request path: the caller never waits for the shadow or sees its errors.
            let primary_outputs = response.outputs.clone();
            tokio::spawn(shadow.run(routed.model_name, routed.label, inputs, primary_outputs));
        }
        Ok(response)
    }

    /// Picks the version for a request, and the shadow to mirror it to.
    fn route(&self, request: &InferRequest) -> Result<Routed, GatewayError> {
        let table = self.table.load();
        let model = table.model(&request.model)?;
        let mut rng = fastrand::Rng::new();
        let version = match &request.version {
            Some(label) => model.version(label)?,
            None => model
                .route(sticky_key(&model.policy, request), &mut rng)
                .map_err(|NoVersion(reason)| GatewayError::unavailable(reason))?,
        };
        let ready = version.ready(&model.name)?.clone();
        let policy_routed = request.version.is_none();
        if policy_routed {
            ready.metrics.routed();
        }
        let shadow = policy_routed
            .then(|| routing::shadow_target(&model.policy, &version.label, &mut rng))
            .flatten()
            .and_then(|label| model.version(label).ok())
            .and_then(|shadow| match &shadow.status {
                VersionStatus::Ready(ready) => Some(Shadow {
                    label: shadow.label.clone(),
                    ready: ready.clone(),
                    stats: shadow.stats.clone(),
                }),
                _ => None,
            });
        let bandit_objective_ms = match (&model.policy.mode, policy_routed) {
            (
                PolicyMode::Bandit {
                    latency_objective_ms,
                    ..
                },
                true,
            ) => Some(*latency_objective_ms),
            _ => None,
        };
        Ok(Routed {
            model_name: model.name.clone(),
            label: version.label.clone(),
            ready,
            stats: version.stats.clone(),
            bandit_objective_ms,
            shadow,
        })
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

/// The version a request goes to, and what its outcome feeds.
struct Routed {
    model_name: Arc<str>,
    label: Arc<str>,
    ready: Arc<ReadyVersion>,
    stats: Arc<VersionStats>,
    /// Set when the policy is a bandit and chose this version: the outcome is a reward.
    bandit_objective_ms: Option<u64>,
    shadow: Option<Shadow>,
}

/// A version that also receives a copy of a request, for comparison only.
struct Shadow {
    label: Arc<str>,
    ready: Arc<ReadyVersion>,
    stats: Arc<VersionStats>,
}

impl Shadow {
    async fn run(
        self,
        model: Arc<str>,
        primary: Arc<str>,
        inputs: Vec<NamedTensor>,
        primary_outputs: Vec<NamedTensor>,
    ) {
        let probe = InferRequest {
            model: model.to_string(),
            inputs,
            ..InferRequest::default()
        };
        let outputs = match validate(
            &model,
            self.ready.signature(),
            self.ready.max_batch_size,
            &probe,
        ) {
            Ok(()) => {
                let deadline = Instant::now() + self.ready.timeout;
                let result = self
                    .ready
                    .replicas
                    .infer(probe.inputs, Some(deadline))
                    .await;
                if let Err(error) = &result {
                    tracing::debug!(%model, shadow = %self.label, %error, "the shadow failed");
                }
                result.ok().map(|(outputs, _)| outputs)
            }
            Err(error) => {
                tracing::debug!(%model, shadow = %self.label, %error, "the shadow cannot take the primary's inputs");
                None
            }
        };
        self.stats
            .record_shadow(&primary, &primary_outputs, outputs.as_deref());
    }
}

/// The sticky key of a request under a sticky policy: the configured header (gRPC metadata),
/// else a request parameter of that name.
fn sticky_key<'r>(policy: &TrafficPolicy, request: &'r InferRequest) -> Option<&'r [u8]> {
    let PolicyMode::Sticky { header } = &policy.mode else {
        return None;
    };
    request
        .headers
        .get(header.as_str())
        .map(|value| value.as_bytes())
        .or_else(|| match request.parameters.get(header) {
            Some(Parameter::String(value)) => Some(value.as_bytes()),
            _ => None,
        })
}

/// A request id for requests that bring none: unique within the process and unlikely to
/// collide across processes.
fn new_request_id() -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::AtomicU64;
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| fastrand::u32(..));
    format!(
        "sy-{prefix:08x}-{:x}",
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
