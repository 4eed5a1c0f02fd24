//! Forwarding over gRPC: the core's [`Forwarder`] for a node of a cluster. A request goes to
//! the peer as `ModelInfer` with raw tensor contents, over TLS when the listeners use TLS, with
//! the caller's remaining deadline (`grpc-timeout`, and this node stops waiting then too), its
//! trace context, the mark of the node that forwarded it and that node's credential. The
//! caller's own credentials stay here: this node checked them, and the peer trusts the node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::convert::{decode_response, encode_request};
use super::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use crate::auth::{NODE_CREDENTIAL, NodeKey, unix_ms};
use crate::core::forward::{
    FORWARDED_FROM, ForwardError, ForwardFuture, Forwarder, Peer, SEQUENCE_PROBE,
};
use crate::core::{InferRequest, InferResponse};
use crate::error::{ErrorKind, GatewayError, NOT_RUN, Reason};
use crate::telemetry::tracing::inject_context;

/// How long a connection to a peer may take to open: a dead peer must fail fast, so that the
/// request still has time for the next one.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// HTTP/2 pings on a peer's connection, and how long an answer may take: a peer that vanished
/// without closing its connection (a lost machine, a stopped process) is noticed within
/// seconds, and the forwards it holds end.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest a forwarded request waits for its peer when the caller set no deadline; the
/// peer applies the version's own timeout as well.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(120);

pub struct GrpcForwarder {
    /// One HTTP/2 connection per peer address, made on first use; tonic reconnects it.
    channels: Mutex<HashMap<Arc<str>, Channel>>,
    max_message_bytes: usize,
    key: NodeKey,
    /// Set when the listeners use TLS: peers are then reached over TLS too, and their
    /// certificates must chain to this configuration's CA.
    tls: Option<ClientTlsConfig>,
}

impl GrpcForwarder {
    pub fn new(max_message_bytes: usize, key: NodeKey, tls: Option<ClientTlsConfig>) -> Self {
        GrpcForwarder {
            channels: Mutex::new(HashMap::new()),
            max_message_bytes,
            key,
            tls,
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
        let bad = |error: &dyn std::fmt::Display| {
            ForwardError::Unreachable(format!("bad peer address '{address}': {error}"))
        };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(|error| bad(&error))?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|error| bad(&error))?;
        }
        let channel = endpoint.connect_lazy();
        channels.insert(address.clone(), channel.clone());
        Ok(channel)
    }

    /// The metadata every call to a peer carries: the trace context, and who forwards it,
    /// signed.
    fn metadata(&self, request: &InferRequest, from: &str) -> tonic::metadata::MetadataMap {
        let mut metadata = tonic::metadata::MetadataMap::new();
        inject_context(&request.headers, &mut metadata);
        if let Ok(value) = from.parse() {
            metadata.insert(FORWARDED_FROM, value);
        }
        if let Ok(value) = self.key.sign(from, unix_ms()).parse() {
            metadata.insert(NODE_CREDENTIAL, value);
        }
        metadata
    }

    async fn call(
        &self,
        peer: &Peer,
        metadata: tonic::metadata::MetadataMap,
        request: InferRequest,
        deadline: Option<Instant>,
    ) -> Result<InferResponse, ForwardError> {
        let channel = self.channel(&peer.address)?;
        let mut client = GrpcInferenceServiceClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes);
        let message = encode_request(request);
        let mut call = tonic::Request::from_parts(metadata, tonic::Extensions::default(), message);
        let wait = deadline.map_or(FORWARD_TIMEOUT, |deadline| {
            deadline.saturating_duration_since(Instant::now())
        });
        call.set_timeout(wait);
        // The peer ends the call at its deadline; a peer that stalled would not, so this node
        // stops waiting then as well.
        match tokio::time::timeout(wait, client.model_infer(call)).await {
            Ok(Ok(response)) => {
                decode_response(response.into_inner()).map_err(ForwardError::Answered)
            }
            Ok(Err(status)) => Err(from_status(&status)),
            Err(_) => Err(ForwardError::Silent(wait)),
        }
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
            let metadata = self.metadata(&request, from);
            self.call(peer, metadata, request, deadline).await
        })
    }

    fn holds_sequence<'a>(
        &'a self,
        peer: &'a Peer,
        from: &'a str,
        request: &'a InferRequest,
        deadline: Option<Instant>,
    ) -> ForwardFuture<'a, bool> {
        Box::pin(async move {
            let mut metadata = self.metadata(request, from);
            metadata.insert(
                SEQUENCE_PROBE,
                tonic::metadata::MetadataValue::from_static("1"),
            );
            // The sequence's id and the version, nothing else: no input travels.
            let probe = InferRequest {
                model: request.model.clone(),
                version: request.version.clone(),
                parameters: request
                    .parameters
                    .iter()
                    .filter(|(name, _)| *name == "sequence_id")
                    .map(|(name, value)| (name.clone(), value.clone()))
                    .collect(),
                ..InferRequest::default()
            };
            match self.call(peer, metadata, probe, deadline).await {
                Ok(_) => Ok(true),
                Err(ForwardError::Answered(error))
                    if error.reason == Some(Reason::SequenceNotOpen) =>
                {
                    Ok(false)
                }
                Err(error) => Err(error),
            }
        })
    }
}

/// A peer's error as this node's. The peer did not run the request when the connection never
/// opened, when HTTP/2 refused the stream, or when the peer's gateway said so (`UNAVAILABLE`
/// marked [`NOT_RUN`]): the next peer may try. Any other failure of the transport may have
/// come after the peer ran it. Everything else is the request's answer.
fn from_status(status: &tonic::Status) -> ForwardError {
    use tonic::Code;
    if never_sent(status) || status.metadata().contains_key(NOT_RUN) {
        return ForwardError::Unreachable(status.message().to_owned());
    }
    let kind = match status.code() {
        // Failures of the transport (a status the peer's gateway did not write).
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal
            if !status
                .metadata()
                .contains_key(crate::error::ANSWERED_BY_GATEWAY) =>
        {
            return ForwardError::Broken(status.message().to_owned());
        }
        Code::Unavailable => ErrorKind::Unavailable,
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
    let mut error = GatewayError::new(kind, status.message());
    error.reason = crate::error::reason_of(status);
    ForwardError::Answered(error)
}

/// Whether the status's cause says the request never reached the peer's service: the
/// connection could not be opened, or HTTP/2 refused the stream (a peer going away).
fn never_sent(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.downcast_ref::<tonic::ConnectError>().is_some() {
            return true;
        }
        if let Some(h2) = error.downcast_ref::<h2::Error>()
            && h2.reason() == Some(h2::Reason::REFUSED_STREAM)
        {
            return true;
        }
        source = error.source();
    }
    false
}
