//! The one inference pipeline that both fronts call. A front converts its wire format to an
//! [`InferRequest`] and the [`InferResponse`] back, and nothing else; everything a request goes
//! through on its way is here, once:
//!
//! 1. admission ([`Pipeline::admit`]): an in-flight slot, taken before the body is read (by
//!    the HTTP handler, and by [`admit_grpc`] before tonic reads the message), refused at once
//!    with 429 / RESOURCE_EXHAUSTED past `serving.max_in_flight`;
//! 2. the request span, continuing the caller's `traceparent`;
//! 3. the cheap refusal of a request whose version's queues are all full, before decoding;
//! 4. `decode` (in its span), the deadline (the transport's and the `timeout` parameter);
//! 5. `infer` in the core;
//! 6. `encode` (in its span);
//! 7. counting every refusal or failure by its reason.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::HeaderMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use crate::core::{Gateway, InferRequest, InferResponse};
use crate::error::{ErrorKind, GatewayError};
use crate::telemetry::tracing::{TRACE_TARGET, child, request_span};
use crate::telemetry::{Metrics, Protocol};

/// The gRPC method that carries inference, the only one admission applies to there.
pub const GRPC_MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

pub struct Pipeline {
    gateway: Arc<Gateway>,
    metrics: Arc<Metrics>,
    /// Inference requests being handled, bodies included: the bound that keeps memory flat
    /// when clients send faster than the models can serve.
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
}

/// Held while an inference request is being handled.
pub struct Admission(#[allow(dead_code)] OwnedSemaphorePermit);

/// What a front knows of a request before decoding its body.
pub struct Call<'a> {
    pub protocol: Protocol,
    pub model: &'a str,
    /// The version or alias the request names, if any.
    pub version: Option<&'a str>,
    pub received: Instant,
    /// The transport's own deadline (gRPC's `grpc-timeout`).
    pub deadline: Option<Instant>,
    /// HTTP headers or gRPC metadata: the trace parent and the sticky key live there.
    pub headers: HeaderMap,
}

impl Pipeline {
    pub fn new(gateway: Arc<Gateway>, metrics: Arc<Metrics>, max_in_flight: usize) -> Pipeline {
        let max_in_flight = max_in_flight.max(1);
        Pipeline {
            gateway,
            metrics,
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
        }
    }

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// Inference requests being handled now.
    pub fn in_flight(&self) -> usize {
        self.max_in_flight - self.in_flight.available_permits()
    }

    /// Admits one more inference request, or refuses it (and counts the refusal) when
    /// `max_in_flight` are already being handled.
    pub fn admit(&self) -> Result<Admission, GatewayError> {
        self.in_flight
            .clone()
            .try_acquire_owned()
            .map(Admission)
            .map_err(|_| {
                self.refused(GatewayError::new(
                    ErrorKind::Overloaded,
                    format!(
                        "the gateway is handling its limit of {} requests; retry shortly",
                        self.max_in_flight
                    ),
                ))
            })
    }

    /// Runs an admitted request whose bytes have arrived: `decode` turns them into the request
    /// (and whatever the front needs to answer in kind), `encode` turns the response into the
    /// front's answer.
    pub async fn infer<Wire, Answer>(
        &self,
        call: Call<'_>,
        decode: impl FnOnce() -> Result<(InferRequest, Wire), GatewayError>,
        encode: impl FnOnce(InferResponse, Wire) -> Result<Answer, GatewayError>,
    ) -> Result<Answer, GatewayError> {
        let span = request_span(call.protocol.as_str(), call.model, &call.headers);
        self.run(call, decode, encode)
            .instrument(span)
            .await
            .map_err(|error| self.refused(error))
    }

    async fn run<Wire, Answer>(
        &self,
        call: Call<'_>,
        decode: impl FnOnce() -> Result<(InferRequest, Wire), GatewayError>,
        encode: impl FnOnce(InferResponse, Wire) -> Result<Answer, GatewayError>,
    ) -> Result<Answer, GatewayError> {
        // Under overload, refuse before decoding: the cheapest 429.
        self.gateway
            .refuse_if_queues_full(call.model, call.version)?;
        let (mut request, wire) =
            child(|| tracing::debug_span!(target: TRACE_TARGET, "decode")).in_scope(decode)?;
        request.deadline = call.deadline;
        request.apply_timeout_parameter(call.received)?;
        request.received = Some(call.received);
        request.protocol = call.protocol;
        request.headers = call.headers;
        let response = self.gateway.infer(request).await?;
        child(|| tracing::debug_span!(target: TRACE_TARGET, "encode"))
            .in_scope(|| encode(response, wire))
    }

    fn refused(&self, error: GatewayError) -> GatewayError {
        self.metrics.reject(error.kind);
        error
    }
}

/// Admission for gRPC's `ModelInfer`, taken before tonic reads the message, so that at most
/// `max_in_flight` messages are held in memory at once.
pub async fn admit_grpc(
    State(pipeline): State<Arc<Pipeline>>,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path() != GRPC_MODEL_INFER {
        return next.run(request).await;
    }
    match pipeline.admit() {
        Ok(_admission) => next.run(request).await,
        Err(error) => tonic::Status::from(error).into_http::<axum::body::Body>(),
    }
}
