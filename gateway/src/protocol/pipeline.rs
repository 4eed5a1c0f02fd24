//! The one inference pipeline that both fronts call. A front converts its wire format to an
//! [`InferRequest`] and the [`InferResponse`] back, and nothing else; everything a request goes
//! through on its way is here, once:
//!
//! 1. arrival ([`Pipeline::arrive`], which both unary fronts call): the whole body or message
//!    within `http.request_read_timeout` (408 / DEADLINE_EXCEEDED past it), each byte charged
//!    to `serving.max_in_flight_bytes` as it arrives (429 / RESOURCE_EXHAUSTED at once past
//!    it), a client that stalls holding no slot while it does; the front's measure of the
//!    bytes (gRPC's frame and scan before anything is decoded), and what decoding will take
//!    charged too; then admission ([`Pipeline::admit`]): an in-flight slot, refused at once
//!    with 429 / RESOURCE_EXHAUSTED past `serving.max_in_flight`. A `ModelStreamInfer`
//!    stream takes the same steps per message (`grpc/stream.rs`, then the stream's handler);
//! 2. the request span, continuing the caller's `traceparent`;
//! 3. the cheap refusal of a request whose version's queues are all full, before decoding;
//! 4. `decode` (in its span), the deadline (the transport's and the `timeout` parameter);
//! 5. `infer` in the core;
//! 6. `encode` (in its span);
//! 7. counting every refusal or failure by its reason.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::{BufMut, Bytes, BytesMut};
use http::HeaderMap;
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use crate::auth::Caller;
use crate::auth::keys::{ModelLimits, ModelPass, Slot};
use crate::core::capture::{Capture, Ticket};
use crate::core::{Gateway, InferRequest, InferResponse};
use crate::error::{ErrorKind, GatewayError};
use crate::priority::Priority;
use crate::telemetry::keys::Refusal;
use crate::telemetry::tracing::{TRACE_TARGET, child, request_span};
use crate::telemetry::{Metrics, Protocol};

pub struct Pipeline {
    gateway: Arc<Gateway>,
    metrics: Arc<Metrics>,
    /// Inference requests being handled, bodies included: the bound that keeps memory flat
    /// when clients send faster than the models can serve.
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    /// Bytes of request bodies and messages being read or handled, and of what decoding them
    /// takes: the bound on the memory clients can make the gateway hold.
    body_bytes: Arc<Semaphore>,
    max_in_flight_bytes: usize,
    read_timeout: Duration,
    /// Each model's limits for every caller, from the registry.
    model_limits: ModelLimits,
    /// The payload capture, when this gateway runs one.
    capture: Option<Capture>,
}

/// Where [`Pipeline::new`] takes its bounds from.
#[derive(Debug, Clone, Copy)]
pub struct PipelineLimits {
    pub max_in_flight: usize,
    pub max_in_flight_bytes: usize,
    /// From the first byte of a request's body to its last.
    pub read_timeout: Duration,
}

/// Bytes of the in-flight budget held for one request, given back when it is dropped.
#[derive(Default)]
pub struct BodyBudget(Option<OwnedSemaphorePermit>);

impl BodyBudget {
    fn grow(&mut self, more: OwnedSemaphorePermit) {
        match &mut self.0 {
            Some(held) => held.merge(more),
            None => self.0 = Some(more),
        }
    }
}

/// Held while an inference request is being handled.
pub struct Admission(#[allow(dead_code)] OwnedSemaphorePermit);

/// How a request's body is expected to arrive.
pub struct Expected {
    /// The declared length (a Content-Length), charged before a byte is read.
    pub declared: Option<u64>,
    /// An offset in the body placed at an aligned address (where binary tensor data starts).
    pub aligned_at: Option<usize>,
    /// The largest body taken.
    pub limit: usize,
}

/// A request that has arrived and been admitted: what the front measured of its bytes, their
/// share of the in-flight byte budget and its admission, both held until it is answered.
pub struct Arrival<T> {
    pub measured: T,
    pub budget: BodyBudget,
    pub admission: Admission,
}

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
    /// The bytes `decode` parses (0 when the transport decoded the message already): past
    /// [`DECODE_OFF_WORKER_BYTES`] the decoding gives up its executor thread while it runs.
    pub decode_bytes: usize,
    /// Who the key says is calling: a tenant's limits and figures apply to the request.
    pub caller: Caller,
}

/// A request's places under its key's and its model's limits (in-flight counts), given back
/// when dropped.
struct Admitted {
    _tenant: Option<Slot>,
    model: Option<ModelPass>,
}

fn too_large(limit: usize) -> GatewayError {
    GatewayError::new(
        ErrorKind::PayloadTooLarge,
        format!("request too large: over the limit of {limit} bytes"),
    )
}

/// A refusal by a model's own limits, counted against the tenant that met it.
fn model_refused(caller: &Caller, error: GatewayError) -> GatewayError {
    if let Some(tenant) = caller.tenant() {
        tenant.figures.refused(Refusal::ModelLimit);
    }
    error
}

/// A JSON body this large takes milliseconds to parse: long enough to stall every task queued
/// on the same executor thread, and long enough that handing the thread's other tasks to
/// another thread costs little beside it.
pub const DECODE_OFF_WORKER_BYTES: usize = 256 << 10;

/// Where a joined body's bytes go: its expected length, and the offset to align.
#[derive(Clone, Copy)]
struct Layout {
    expected: usize,
    aligned_at: usize,
}

impl Layout {
    /// An empty buffer for `bytes` of body, and the padding written in it first so that the
    /// body's byte at `aligned_at` lands on an aligned address.
    fn buffer(&self, bytes: usize) -> (BytesMut, usize) {
        let mut buffer = BytesMut::with_capacity(bytes + ALIGNMENT);
        // Only the offset's remainder matters; the client chose the offset.
        let start = buffer.as_ptr() as usize + self.aligned_at % ALIGNMENT;
        let padding = start.next_multiple_of(ALIGNMENT) - start;
        buffer.put_bytes(0, padding);
        (buffer, padding)
    }
}

/// The alignment of tensor data in a joined body: any element type's, and a cache line.
const ALIGNMENT: usize = 64;

impl Pipeline {
    pub fn new(gateway: Arc<Gateway>, metrics: Arc<Metrics>, limits: PipelineLimits) -> Pipeline {
        let max_in_flight = limits.max_in_flight.max(1);
        // A semaphore holds at most this many permits.
        let max_in_flight_bytes = limits.max_in_flight_bytes.clamp(1, usize::MAX >> 4);
        Pipeline {
            gateway,
            metrics,
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            body_bytes: Arc::new(Semaphore::new(max_in_flight_bytes)),
            max_in_flight_bytes,
            read_timeout: limits.read_timeout,
            model_limits: ModelLimits::default(),
            capture: None,
        }
    }

    /// Captures the requests of the models `capture` names.
    pub fn with_capture(mut self, capture: Capture) -> Pipeline {
        self.capture = Some(capture);
        self
    }

    /// The models' limits this pipeline holds requests to; the control plane fills them.
    pub fn model_limits(&self) -> &ModelLimits {
        &self.model_limits
    }

    /// Charges `bytes` more to a request's share of the in-flight byte budget, or refuses it
    /// (and counts the refusal) at once.
    pub fn charge(&self, budget: &mut BodyBudget, bytes: usize) -> Result<(), GatewayError> {
        self.charge_uncounted(budget, bytes)
            .map_err(|error| self.refused(error))
    }

    /// [`Pipeline::charge`], leaving the count of a refusal to the caller (`read_body`
    /// counts every error of the body's reading once).
    fn charge_uncounted(&self, budget: &mut BodyBudget, bytes: usize) -> Result<(), GatewayError> {
        let permits = u32::try_from(bytes).unwrap_or(u32::MAX);
        match self.body_bytes.clone().try_acquire_many_owned(permits) {
            Ok(more) => {
                budget.grow(more);
                Ok(())
            }
            Err(_) => Err(GatewayError::new(
                ErrorKind::Overloaded,
                format!(
                    "the gateway holds its limit of {} bytes of requests (serving.max_in_flight_bytes); retry shortly",
                    self.max_in_flight_bytes
                ),
            )),
        }
    }

    /// The arrival of a unary request, the same steps in the same order for every front: read
    /// the body within the read deadline, its limit and the in-flight byte budget; `measure`
    /// it (the front checks its framing and says how many bytes decoding it will take);
    /// charge those; admit it. Every refusal on the way is counted.
    pub async fn arrive<T>(
        &self,
        body: Body,
        expected: Expected,
        received: Instant,
        measure: impl FnOnce(Bytes) -> Result<(T, usize), GatewayError>,
    ) -> Result<Arrival<T>, GatewayError> {
        let (bytes, mut budget) = self
            .read_body(
                body,
                expected.declared,
                expected.aligned_at,
                expected.limit,
                received,
            )
            .await?;
        let (measured, decode_bytes) = measure(bytes).map_err(|error| self.refused(error))?;
        self.charge(&mut budget, decode_bytes)?;
        let admission = self.admit()?;
        Ok(Arrival {
            measured,
            budget,
            admission,
        })
    }

    /// Reads a whole body within the read deadline, `limit` and the in-flight byte budget.
    /// `declared` (a Content-Length) is charged up front, so that a body that cannot fit is
    /// refused before a byte of it is read, and sizes the buffer a body of several frames is
    /// joined in. `aligned_at`, an offset in the body (where binary tensor data starts), is
    /// placed at an address aligned for any element type, so that the runtime can read the
    /// tensors where they are.
    pub async fn read_body(
        &self,
        body: Body,
        declared: Option<u64>,
        aligned_at: Option<usize>,
        limit: usize,
        received: Instant,
    ) -> Result<(Bytes, BodyBudget), GatewayError> {
        let mut budget = BodyBudget(None);
        let charged = declared.map_or(0, |d| usize::try_from(d).unwrap_or(usize::MAX));
        if charged > limit {
            return Err(self.refused(too_large(limit)));
        }
        if charged > 0 {
            self.charge(&mut budget, charged)?;
        }
        let deadline = tokio::time::Instant::from_std(received + self.read_timeout);
        let layout = Layout {
            expected: charged,
            aligned_at: aligned_at.unwrap_or(0),
        };
        let read = tokio::time::timeout_at(
            deadline,
            self.collect(body, limit, charged, layout, &mut budget),
        );
        match read.await {
            Ok(Ok(bytes)) => Ok((bytes, budget)),
            Ok(Err(error)) => Err(self.refused(error)),
            Err(_) => Err(self.refused(GatewayError::new(
                ErrorKind::RequestTimeout,
                format!(
                    "the request did not arrive within {:?} (http.request_read_timeout)",
                    self.read_timeout
                ),
            ))),
        }
    }

    async fn collect(
        &self,
        mut body: Body,
        limit: usize,
        mut charged: usize,
        layout: Layout,
        budget: &mut BodyBudget,
    ) -> Result<Bytes, GatewayError> {
        let mut first: Option<Bytes> = None;
        // The joined frames, after `padding` bytes that put `layout.aligned_at` on an aligned
        // address.
        let mut joined: Option<(BytesMut, usize)> = None;
        let mut length = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|error| {
                GatewayError::invalid(format!("cannot read the request body: {error}"))
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            length = length.saturating_add(data.len());
            if length > limit {
                return Err(too_large(limit));
            }
            if length > charged {
                self.charge_uncounted(budget, length - charged)?;
                charged = length;
            }
            // One frame, the usual case, is kept as it is: no copy.
            match (&mut first, &mut joined) {
                (None, None) => first = Some(data),
                (Some(only), None) => {
                    // Sized once for the whole body when its length was declared: growing
                    // by doubling would copy it again.
                    let (mut buffer, padding) = layout.buffer(layout.expected.max(length));
                    buffer.extend_from_slice(only);
                    buffer.extend_from_slice(&data);
                    joined = Some((buffer, padding));
                    first = None;
                }
                (_, Some((buffer, padding))) => {
                    if buffer.capacity() - buffer.len() < data.len() {
                        // An undeclared length: grown by doubling, keeping the alignment a
                        // reallocation would lose.
                        let (mut grown, aligned) =
                            layout.buffer((length - data.len()) * 2 + data.len());
                        grown.extend_from_slice(&buffer[*padding..]);
                        (*buffer, *padding) = (grown, aligned);
                    }
                    buffer.extend_from_slice(&data);
                }
            }
        }
        Ok(match joined {
            Some((buffer, padding)) => buffer.freeze().slice(padding..),
            None => first.unwrap_or_default(),
        })
    }

    /// How long a request's body, or one message of a stream, may take to arrive.
    pub fn read_timeout(&self) -> Duration {
        self.read_timeout
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
        // A tenant over its limits, or calling a model it may not, and a model over its own,
        // are refused first: the cheapest refusals, and ones that say whose limit it was.
        let admitted = self.limits_of(&call.caller, call.model)?;
        let tenant = call.caller.tenant();
        // Under overload, refuse before decoding: the cheapest 429.
        self.gateway
            .refuse_if_queues_full(call.model, call.version)?;
        let span = child(|| tracing::debug_span!(target: TRACE_TARGET, "decode"));
        let (mut request, wire) = if call.decode_bytes >= DECODE_OFF_WORKER_BYTES
            && tokio::runtime::Handle::current().runtime_flavor()
                == tokio::runtime::RuntimeFlavor::MultiThread
        {
            // The executor moves this thread's other tasks to another thread meanwhile.
            tokio::task::block_in_place(|| span.in_scope(decode))?
        } else {
            span.in_scope(decode)?
        };
        let rows = request.rows();
        if let Some(tenant) = tenant {
            tenant.charge_rows(rows)?;
        }
        if let Some(limit) = admitted.model.as_ref().map(ModelPass::limit) {
            limit
                .charge_rows(call.model, rows)
                .map_err(|error| model_refused(&call.caller, error))?;
        }
        request.apply_priority_parameter(
            tenant.map_or(Priority::DEFAULT, |t| t.priority()),
            tenant.map_or(Priority::HIGHEST, |t| t.highest_priority()),
        )?;
        request.deadline = call.deadline;
        request.apply_timeout_parameter(call.received)?;
        request.received = Some(call.received);
        request.protocol = call.protocol;
        request.headers = call.headers;
        let ticket = self.ticket(&call.caller, &request);
        request.capture = ticket.clone();
        let response = self.gateway.infer(request).await;
        let elapsed = call.received.elapsed();
        if let Some(tenant) = tenant {
            tenant.figures.record(response.is_ok(), elapsed);
        }
        if let Some(ticket) = ticket {
            ticket.answered(&response, elapsed);
        }
        let response = response?;
        child(|| tracing::debug_span!(target: TRACE_TARGET, "encode"))
            .in_scope(|| encode(response, wire))
    }

    /// Draws whether the request is captured, and if so records it as decoded. A peer's
    /// forward was drawn where it arrived.
    fn ticket(&self, caller: &Caller, request: &InferRequest) -> Option<Ticket> {
        if matches!(caller, Caller::Peer) {
            return None;
        }
        let ticket = self.capture.as_ref()?.ticket(&request.model)?;
        ticket.request(request, caller.tenant().map(|t| (&t.name, &t.figures)));
        Some(ticket)
    }

    /// A request's places under its key's limits and its model's: a model the key may not
    /// call is 403, a limit passed 429 with when to retry.
    fn limits_of(&self, caller: &Caller, model: &str) -> Result<Admitted, GatewayError> {
        let tenant = caller
            .tenant()
            .map(|tenant| tenant.admit(model))
            .transpose()?;
        // A peer's forward was held to the model's limits where it arrived.
        let limit = match caller {
            Caller::Peer => None,
            _ => self.model_limits.of(model),
        };
        let model = limit
            .map(|limit| limit.admit(model))
            .transpose()
            .map_err(|error| model_refused(caller, error))?;
        Ok(Admitted {
            _tenant: tenant,
            model,
        })
    }

    /// Counts a refusal by its reason, and passes it on.
    pub fn refused(&self, error: GatewayError) -> GatewayError {
        self.metrics.reject(error.kind);
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline() -> Pipeline {
        let gateway = Gateway::new(
            Arc::default(),
            Arc::default(),
            crate::core::request_id::RequestIds::new(&[7; 64]),
        );
        Pipeline::new(
            Arc::new(gateway),
            crate::telemetry::Metrics::new(false),
            PipelineLimits {
                max_in_flight: 4,
                max_in_flight_bytes: 1 << 30,
                read_timeout: Duration::from_secs(5),
            },
        )
    }

    /// A body of these frames, as hyper hands a large one over.
    fn framed(frames: Vec<Vec<u8>>) -> Body {
        let frames = frames.into_iter().map(|frame| {
            Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(frame)))
        });
        Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )))
    }

    #[tokio::test]
    async fn a_body_of_many_frames_is_joined_once_with_its_tensors_aligned() {
        let pipeline = pipeline();
        let header = b"{\"inputs\": []}".to_vec();
        let tensors: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i as f32).to_le_bytes())
            .collect();
        let mut whole = header.clone();
        whole.extend(&tensors);
        for declared in [Some(whole.len() as u64), None] {
            let frames: Vec<Vec<u8>> = whole.chunks(16_384).map(<[u8]>::to_vec).collect();
            let (body, _budget) = pipeline
                .read_body(
                    framed(frames),
                    declared,
                    Some(header.len()),
                    1 << 24,
                    Instant::now(),
                )
                .await
                .unwrap_or_else(|_| panic!("read"));
            assert_eq!(body[..], whole[..], "the bytes, in order");
            let binary = body.slice(header.len()..);
            assert_eq!(binary.as_ptr() as usize % ALIGNMENT, 0, "{declared:?}");
            assert!(bytemuck::try_cast_slice::<u8, f32>(&binary).is_ok());
        }
    }
}
