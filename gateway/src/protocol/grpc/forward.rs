//! Forwarding over gRPC: the core's [`Forwarder`] for a node of a cluster. A request goes to
//! the peer as `ModelInfer` with raw tensor contents, the caller's remaining deadline
//! (`grpc-timeout`), its trace context and credentials, and the mark of the node that
//! forwarded it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};

use super::convert::{decode_response, encode_request};
use super::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use crate::core::InferRequest;
use crate::core::forward::{FORWARDED_FROM, ForwardError, ForwardFuture, Forwarder, Peer};
use crate::error::{ErrorKind, GatewayError};
use crate::telemetry::tracing::inject_context;

/// How long a connection to a peer may take to open: a dead peer must fail fast, so that the
/// request still has time for the next one.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// HTTP/2 pings on a peer's connection, and how long an answer may take: a peer that vanished
/// without closing its connection (a lost machine) is noticed within seconds.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest a forwarded request waits for its peer when the caller set no deadline; the
/// peer applies the version's own timeout as well.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(120);

/// Headers of the caller's that go with the request: its credentials, for a peer that checks
/// API keys as this node does.
const CARRIED_HEADERS: [&str; 2] = ["authorization", "x-api-key"];

pub struct GrpcForwarder {
    /// One HTTP/2 connection per peer address, made on first use; tonic reconnects it.
    channels: Mutex<HashMap<Arc<str>, Channel>>,
    max_message_bytes: usize,
}

impl GrpcForwarder {
    pub fn new(max_message_bytes: usize) -> GrpcForwarder {
        GrpcForwarder {
            channels: Mutex::new(HashMap::new()),
            max_message_bytes,
        }
    }

    fn channel(&self, address: &Arc<str>) -> Result<Channel, ForwardError> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|error| {
                ForwardError::Unreachable(format!("bad peer address '{address}': {error}"))
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        let channel = endpoint.connect_lazy();
        channels.insert(address.clone(), channel.clone());
        Ok(channel)
    }
}

impl Forwarder for GrpcForwarder {
    fn forward<'a>(
        &'a self,
        peer: &'a Peer,
        from: &'a str,
        request: InferRequest,
        deadline: Option<Instant>,
    ) -> ForwardFuture<'a> {
        Box::pin(async move {
            let channel = self.channel(&peer.address)?;
            let mut client = GrpcInferenceServiceClient::new(channel)
                .max_decoding_message_size(self.max_message_bytes)
                .max_encoding_message_size(self.max_message_bytes);
            let mut metadata = tonic::metadata::MetadataMap::new();
            inject_context(&request.headers, &mut metadata);
            for name in CARRIED_HEADERS {
                if let Some(value) = request.headers.get(name)
                    && let Ok(value) = value.to_str().unwrap_or_default().parse()
                {
                    metadata.insert(name, value);
                }
            }
            if let Ok(value) = from.parse() {
                metadata.insert(FORWARDED_FROM, value);
            }
            let message = encode_request(request);
            let mut call =
                tonic::Request::from_parts(metadata, tonic::Extensions::default(), message);
            call.set_timeout(deadline.map_or(FORWARD_TIMEOUT, |deadline| {
                deadline.saturating_duration_since(Instant::now())
            }));
            match client.model_infer(call).await {
                Ok(response) => {
                    decode_response(response.into_inner()).map_err(ForwardError::Answered)
                }
                Err(status) => Err(from_status(&status)),
            }
        })
    }
}

/// A peer's error as this node's: `UNAVAILABLE` (the peer is gone, or cannot serve the version
/// now) lets the next peer try; anything else is the request's answer.
fn from_status(status: &tonic::Status) -> ForwardError {
    use tonic::Code;
    let kind = match status.code() {
        Code::Unavailable => return ForwardError::Unreachable(status.message().to_owned()),
        // A connection that broke mid-call, before the peer answered.
        Code::Unknown | Code::Cancelled if std::error::Error::source(status).is_some() => {
            return ForwardError::Unreachable(status.message().to_owned());
        }
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            ErrorKind::InvalidArgument
        }
        Code::NotFound => ErrorKind::NotFound,
        Code::ResourceExhausted => ErrorKind::Overloaded,
        Code::DeadlineExceeded => ErrorKind::DeadlineExceeded,
        Code::Unauthenticated => ErrorKind::Unauthenticated,
        Code::PermissionDenied => ErrorKind::PermissionDenied,
        Code::AlreadyExists => ErrorKind::AlreadyDone,
        Code::Aborted => ErrorKind::Conflict,
        _ => ErrorKind::Internal,
    };
    ForwardError::Answered(GatewayError::new(kind, status.message()))
}
