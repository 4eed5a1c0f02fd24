//! The gateway's one error type: an [`ErrorKind`] and a message for the caller.
//!
//! This is a leaf: every layer may use it, it uses no other module of the crate. The kind alone
//! decides how each transport reports the error, through one table ([`ErrorKind::row`]): the
//! HTTP status, the gRPC code, the `outcome` label of `switchyard_requests_total` and the
//! `reason` label of `switchyard_rejections_total`. The fronts and the management API read that
//! table and nothing else.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use switchyard_runtimes::RuntimeError;
use tonic::Code;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request is malformed or does not suit the model.
    InvalidArgument,
    /// No such model, version or endpoint.
    NotFound,
    /// The request is larger than the configured limit.
    PayloadTooLarge,
    /// The gateway or the model's queues are full; try again shortly.
    Overloaded,
    /// The model or version exists but cannot serve now.
    Unavailable,
    /// The request's deadline passed before it was served.
    DeadlineExceeded,
    /// The gateway or the runtime failed.
    Internal,
    /// No credentials, or unknown ones.
    Unauthenticated,
    /// Credentials that may not do this.
    PermissionDenied,
    /// The change conflicts with the registry's state.
    Conflict,
    /// The endpoint exists but not with this method.
    MethodNotAllowed,
    /// The body is not in the content type the endpoint takes.
    UnsupportedMediaType,
    /// The change conflicts with what was already done (feedback given twice).
    AlreadyDone,
    /// The request did not arrive in time (a stalled or slow client).
    RequestTimeout,
    /// The caller's key (or the model) is over its rate or in-flight limit; try again after
    /// the time its answer says.
    RateLimited,
}

/// How one kind is reported everywhere.
pub struct ErrorRow {
    pub kind: ErrorKind,
    pub http: StatusCode,
    pub grpc: Code,
    /// `outcome` of `switchyard_requests_total`.
    pub outcome: &'static str,
    /// `reason` of `switchyard_rejections_total`.
    pub reason: &'static str,
}

const fn row(
    kind: ErrorKind,
    http: StatusCode,
    grpc: Code,
    outcome: &'static str,
    reason: &'static str,
) -> ErrorRow {
    ErrorRow {
        kind,
        http,
        grpc,
        outcome,
        reason,
    }
}

/// The table, in the order of [`ErrorKind::index`].
pub const ERROR_TABLE: [ErrorRow; 15] = [
    row(
        ErrorKind::InvalidArgument,
        StatusCode::BAD_REQUEST,
        Code::InvalidArgument,
        "invalid_argument",
        "invalid_argument",
    ),
    row(
        ErrorKind::NotFound,
        StatusCode::NOT_FOUND,
        Code::NotFound,
        "not_found",
        "not_found",
    ),
    // gRPC's own implementations answer an oversized message with RESOURCE_EXHAUSTED; the
    // outcome counts it with the overloads, the rejection reason apart.
    row(
        ErrorKind::PayloadTooLarge,
        StatusCode::PAYLOAD_TOO_LARGE,
        Code::ResourceExhausted,
        "overloaded",
        "too_large",
    ),
    row(
        ErrorKind::Overloaded,
        StatusCode::TOO_MANY_REQUESTS,
        Code::ResourceExhausted,
        "overloaded",
        "overloaded",
    ),
    row(
        ErrorKind::Unavailable,
        StatusCode::SERVICE_UNAVAILABLE,
        Code::Unavailable,
        "unavailable",
        "unavailable",
    ),
    row(
        ErrorKind::DeadlineExceeded,
        StatusCode::GATEWAY_TIMEOUT,
        Code::DeadlineExceeded,
        "deadline_exceeded",
        "deadline_exceeded",
    ),
    row(
        ErrorKind::Internal,
        StatusCode::INTERNAL_SERVER_ERROR,
        Code::Internal,
        "internal",
        "internal",
    ),
    row(
        ErrorKind::Unauthenticated,
        StatusCode::UNAUTHORIZED,
        Code::Unauthenticated,
        "unauthenticated",
        "unauthenticated",
    ),
    row(
        ErrorKind::PermissionDenied,
        StatusCode::FORBIDDEN,
        Code::PermissionDenied,
        "permission_denied",
        "permission_denied",
    ),
    row(
        ErrorKind::Conflict,
        StatusCode::CONFLICT,
        Code::AlreadyExists,
        "conflict",
        "conflict",
    ),
    row(
        ErrorKind::MethodNotAllowed,
        StatusCode::METHOD_NOT_ALLOWED,
        Code::Unimplemented,
        "method_not_allowed",
        "method_not_allowed",
    ),
    row(
        ErrorKind::UnsupportedMediaType,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        Code::InvalidArgument,
        "unsupported_media_type",
        "unsupported_media_type",
    ),
    row(
        ErrorKind::AlreadyDone,
        StatusCode::CONFLICT,
        Code::AlreadyExists,
        "already_done",
        "already_done",
    ),
    row(
        ErrorKind::RequestTimeout,
        StatusCode::REQUEST_TIMEOUT,
        Code::DeadlineExceeded,
        "request_timeout",
        "request_timeout",
    ),
    row(
        ErrorKind::RateLimited,
        StatusCode::TOO_MANY_REQUESTS,
        Code::ResourceExhausted,
        "rate_limited",
        "rate_limited",
    ),
];

impl ErrorKind {
    /// The kinds an inference request can end in once it reached a version; the metrics
    /// register one `outcome` counter for each (and one for success).
    pub const INFERENCE: [ErrorKind; 7] = [
        ErrorKind::InvalidArgument,
        ErrorKind::NotFound,
        ErrorKind::PayloadTooLarge,
        ErrorKind::Overloaded,
        ErrorKind::Unavailable,
        ErrorKind::DeadlineExceeded,
        ErrorKind::Internal,
    ];

    /// The kind's position in [`ERROR_TABLE`].
    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn row(self) -> &'static ErrorRow {
        &ERROR_TABLE[self.index()]
    }

    pub fn http_status(self) -> StatusCode {
        self.row().http
    }

    pub fn grpc_code(self) -> Code {
        self.row().grpc
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct GatewayError {
    pub kind: ErrorKind,
    pub message: String,
    /// What a peer gateway acts on, where the kind alone does not say enough. It travels in
    /// the gRPC status's details, so no node matches another's message text.
    pub reason: Option<Reason>,
    /// Whole seconds after which a refused request may succeed (`Retry-After`); an overload
    /// without one says 1.
    pub retry_after_s: Option<u32>,
}

/// A machine-readable reason beside an error's kind. On gRPC it is the `reason` of a
/// `google.rpc.ErrorInfo` (domain [`REASON_DOMAIN`]) in the status details, as Google's
/// rich error model carries it, so any gRPC client can read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A sequence's request reached a node that holds no such open sequence.
    SequenceNotOpen,
}

/// The `domain` of the gateway's `ErrorInfo`.
pub const REASON_DOMAIN: &str = "switchyard";

impl Reason {
    pub fn code(self) -> &'static str {
        match self {
            Reason::SequenceNotOpen => "SEQUENCE_NOT_OPEN",
        }
    }

    pub fn from_code(code: &str) -> Option<Reason> {
        match code {
            "SEQUENCE_NOT_OPEN" => Some(Reason::SequenceNotOpen),
            _ => None,
        }
    }
}

/// `google.rpc.Status`, the message of a gRPC status's details (`grpc-status-details-bin`).
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<ProtobufAny>,
}

/// `google.rpc.ErrorInfo`.
#[derive(Clone, PartialEq, prost::Message)]
struct ErrorInfo {
    #[prost(string, tag = "1")]
    reason: String,
    #[prost(string, tag = "2")]
    domain: String,
}

const ERROR_INFO_TYPE: &str = "type.googleapis.com/google.rpc.ErrorInfo";

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
struct ProtobufAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// The status details that carry `reason`.
fn reason_details(code: Code, message: &str, reason: Reason) -> Vec<u8> {
    use prost::Message as _;
    let info = ErrorInfo {
        reason: reason.code().to_owned(),
        domain: REASON_DOMAIN.to_owned(),
    };
    RpcStatus {
        code: code as i32,
        message: message.to_owned(),
        details: vec![ProtobufAny {
            type_url: ERROR_INFO_TYPE.to_owned(),
            value: info.encode_to_vec(),
        }],
    }
    .encode_to_vec()
}

/// The gateway's reason in a status's details, if a gateway put one there.
pub fn reason_of(status: &tonic::Status) -> Option<Reason> {
    use prost::Message as _;
    let details = RpcStatus::decode(status.details()).ok()?;
    details
        .details
        .iter()
        .filter(|any| any.type_url == ERROR_INFO_TYPE)
        .filter_map(|any| ErrorInfo::decode(any.value.as_slice()).ok())
        .find(|info| info.domain == REASON_DOMAIN)
        .and_then(|info| Reason::from_code(&info.reason))
}

/// The longest message an error carries: messages quote what the client sent (a model name,
/// a shape), and a client must not get its own megabytes back, nor break its metadata limits.
pub const MAX_MESSAGE_CHARS: usize = 512;

/// What a message quotes of the client's own words (a name): at most 64 characters.
pub fn quoted(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(64) {
        Some((cut, _)) => format!("{}...", &text[..cut]).into(),
        None => text.into(),
    }
}

impl GatewayError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if let Some((cut, _)) = message.char_indices().nth(MAX_MESSAGE_CHARS) {
            message.truncate(cut);
            message.push_str("... (truncated)");
        }
        GatewayError {
            kind,
            message,
            reason: None,
            retry_after_s: None,
        }
    }

    /// A refusal that says when to come back.
    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after_s = Some(seconds.max(1));
        self
    }

    pub fn with_reason(mut self, reason: Reason) -> Self {
        self.reason = Some(reason);
        self
    }

    /// The same kind, its message rewritten (a context put in front, say).
    pub fn with_prefix(self, rewrite: impl FnOnce(String) -> String) -> Self {
        GatewayError {
            reason: self.reason,
            retry_after_s: self.retry_after_s,
            ..GatewayError::new(self.kind, rewrite(self.message))
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        GatewayError::new(ErrorKind::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        GatewayError::new(ErrorKind::NotFound, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        GatewayError::new(ErrorKind::Unavailable, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        GatewayError::new(ErrorKind::Internal, message)
    }
}

impl From<RuntimeError> for GatewayError {
    fn from(error: RuntimeError) -> Self {
        let kind = match &error {
            RuntimeError::InvalidInput(_) => ErrorKind::InvalidArgument,
            RuntimeError::DeviceUnavailable { .. } | RuntimeError::LibraryNotFound(_) => {
                ErrorKind::Unavailable
            }
            RuntimeError::Init { .. }
            | RuntimeError::Load { .. }
            | RuntimeError::Execution(_)
            | RuntimeError::Unsupported(_) => ErrorKind::Internal,
        };
        GatewayError::new(kind, error.to_string())
    }
}

/// The protocol's error body, `{"error": "..."}`, with the status from the table; a refusal
/// for overload says when to retry, and one for missing credentials what they are.
impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let body = axum::Json(serde_json::json!({ "error": self.message }));
        let mut response = (self.kind.http_status(), body).into_response();
        let headers = response.headers_mut();
        match self.kind {
            ErrorKind::Overloaded | ErrorKind::RateLimited => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(self.retry_after_s.unwrap_or(1)),
                );
            }
            ErrorKind::Unauthenticated => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // The rest of a late body was never read: the connection cannot carry another
            // request.
            ErrorKind::RequestTimeout => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

/// Metadata on every error status the gateway writes: a node of a cluster that forwarded the
/// request tells the gateway's answer from a failure of the connection, which may have come
/// after the peer ran it.
pub const ANSWERED_BY_GATEWAY: &str = "switchyard-answer";

/// Metadata on an `UNAVAILABLE` the gateway writes: nothing ran (the version is not hosted,
/// loading or unloading here), so the node that forwarded the request may try another peer.
pub const NOT_RUN: &str = "switchyard-not-run";

impl From<GatewayError> for tonic::Status {
    fn from(error: GatewayError) -> Self {
        let code = error.kind.grpc_code();
        let mut status = match error.reason {
            Some(reason) => {
                let details = reason_details(code, &error.message, reason);
                tonic::Status::with_details(code, error.message, details.into())
            }
            None => tonic::Status::new(code, error.message),
        };
        let metadata = status.metadata_mut();
        metadata.insert(
            ANSWERED_BY_GATEWAY,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        if error.kind == ErrorKind::Unavailable {
            metadata.insert(NOT_RUN, tonic::metadata::MetadataValue::from_static("1"));
        }
        if let Some(seconds) = error.retry_after_s {
            // As HTTP says it: gRPC clients that honour a server's pushback read it here.
            metadata.insert("retry-after", tonic::metadata::MetadataValue::from(seconds));
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_travels_in_the_status_details() {
        let error =
            GatewayError::invalid("sequence 7 is not open").with_reason(Reason::SequenceNotOpen);
        let status = tonic::Status::from(error.clone());
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(reason_of(&status), Some(Reason::SequenceNotOpen));
        // The same text without the reason is only text.
        let plain = tonic::Status::from(GatewayError::invalid(error.message));
        assert_eq!(reason_of(&plain), None);
        // Details that are not google.rpc.Status, or another domain's ErrorInfo, carry none.
        let garbage = tonic::Status::with_details(Code::InvalidArgument, "x", vec![0xff; 9].into());
        assert_eq!(reason_of(&garbage), None);
        let mut foreign = <RpcStatus as prost::Message>::decode(status.details()).expect("details");
        foreign.details[0].value = prost::Message::encode_to_vec(&ErrorInfo {
            reason: "SEQUENCE_NOT_OPEN".into(),
            domain: "example.com".into(),
        });
        let foreign = tonic::Status::with_details(
            Code::InvalidArgument,
            "x",
            prost::Message::encode_to_vec(&foreign).into(),
        );
        assert_eq!(reason_of(&foreign), None);
    }

    #[test]
    fn messages_are_bounded() {
        let echoed = GatewayError::not_found(format!("unknown model '{}'", "m".repeat(100_000)));
        assert!(echoed.message.len() < MAX_MESSAGE_CHARS + 20);
        assert!(echoed.message.ends_with("(truncated)"));
        assert_eq!(GatewayError::invalid("short").message, "short");
    }

    #[test]
    fn the_table_is_indexed_by_kind() {
        for (index, row) in ERROR_TABLE.iter().enumerate() {
            assert_eq!(row.kind.index(), index, "{:?}", row.kind);
        }
    }
}
