//! `ModelInfer`, the call nearly all gRPC traffic is, served beside tonic rather than through it.
//!
//! Going through tonic cost a third more time per call than HTTP on a small model: the body
//! was read whole (to bound it and scan it before decoding), handed back to tonic as a new body,
//! copied again into tonic's decode buffer, and passed through four layers (the key, the
//! management check, the admission, the status mapping), each boxing its future. Here one
//! handler does what those did, in the same order: the key, the body within its limits, the
//! scan, the admission, prost's decode straight from the received bytes (tensors stay slices of
//! them), the pipeline, and the answer framed as gRPC frames it, its outputs sent from where
//! the runtime left them. Errors are the same statuses, in gRPC's trailers-only form.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::Response;
use bytes::{BufMut, BytesMut};
use http::HeaderValue;
use http::header::CONTENT_TYPE;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use tonic::Status;

use super::scan::{ScanLimits, scan_model_infer};
use super::{GrpcFront, pb};
use crate::error::{ErrorKind, GatewayError};
use crate::protocol::auth::{GRPC_KEY_REQUIRED, InferenceAuth};
use crate::protocol::chunks::Chunks;
use crate::protocol::pipeline::{Arrival, Expected};

/// What the `ModelInfer` handler needs: the front that runs the call (and knows the largest
/// message) and the key check.
pub(super) struct UnaryInfer {
    pub(super) front: GrpcFront,
    pub(super) auth: InferenceAuth,
}

/// `raw_output_contents` in `ModelInferResponse`.
const RAW_OUTPUT_CONTENTS: u32 = 6;

/// Outputs smaller than this are copied into the message's buffer: a frame of their own costs
/// more than the copy.
const SEPARATE_OUTPUT_BYTES: usize = 4096;

pub(super) async fn model_infer(
    State(unary): State<Arc<UnaryInfer>>,
    request: axum::extract::Request,
) -> Response {
    let received = Instant::now();
    match unary.call(request, received).await {
        Ok(response) => response,
        Err(status) => status.into_http::<Body>(),
    }
}

impl UnaryInfer {
    async fn call(
        &self,
        request: axum::extract::Request,
        received: Instant,
    ) -> Result<Response, Status> {
        let (parts, body) = request.into_parts();
        let caller = self.auth.admits(&parts.headers, GRPC_KEY_REQUIRED)?;
        let pipeline = &self.front.pipeline;
        let limit = self.front.max_message_bytes;
        let expected = Expected {
            declared: None,
            aligned_at: None,
            // One message and its 5-byte frame header.
            limit: limit.saturating_add(5),
        };
        // The budget and the admission are held until the answer is ready.
        let Arrival {
            measured: message,
            budget: _budget,
            admission: _admission,
        } = pipeline
            .arrive(body, expected, received, |bytes| {
                let message = single_message(bytes, limit)?;
                let scanned = scan_model_infer(&message, &ScanLimits::default())?;
                Ok((message, scanned.decoded_bytes))
            })
            .await?;
        let decoded = pb::ModelInferRequest::decode(message).map_err(|error| {
            GatewayError::invalid(format!("malformed ModelInferRequest: {error}"))
        })?;
        let response = self
            .front
            .infer_message(parts.headers, caller, decoded, received)
            .await?;
        Ok(answer(response))
    }
}

/// The one message of a unary call's body, as a slice of it.
fn single_message(mut body: Bytes, limit: usize) -> Result<Bytes, GatewayError> {
    let Some(header) = body.first_chunk::<5>().copied() else {
        return Err(GatewayError::invalid(
            "the body holds no complete gRPC message (a 5-byte frame header and the message)",
        ));
    };
    let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if length > limit {
        return Err(GatewayError::new(
            ErrorKind::PayloadTooLarge,
            format!(
                "request message too large (grpc.max_message_size): {length} bytes, the limit is \
             {limit}"
            ),
        ));
    }
    if header[0] != 0 {
        // As tonic answers a compressed message when no compression is enabled.
        return Err(GatewayError::new(
            ErrorKind::MethodNotAllowed,
            "compressed messages are not accepted; send ModelInfer uncompressed",
        ));
    }
    if body.len() - 5 != length {
        return Err(GatewayError::invalid(format!(
            "a unary call carries one message: the frame says {length} bytes and the body \
             holds {} after the frame header",
            body.len() - 5
        )));
    }
    Ok(body.split_off(5))
}

/// The answer as gRPC frames it: the message in one frame, then the OK status as trailers.
/// Large outputs are not copied into the message: the frame is the message without them,
/// followed by each one's field key and length, then its bytes as they came from the runtime
/// (protobuf allows a repeated field's entries anywhere in a message).
fn answer(mut response: pb::ModelInferResponse) -> Response {
    let raw = std::mem::take(&mut response.raw_output_contents);
    let raw_length: usize = raw
        .iter()
        .map(|bytes| {
            key_len(RAW_OUTPUT_CONTENTS) + encoded_len_varint(bytes.len() as u64) + bytes.len()
        })
        .sum();
    let message_length = response.encoded_len() + raw_length;
    let inline: usize = raw
        .iter()
        .filter(|bytes| bytes.len() < SEPARATE_OUTPUT_BYTES)
        .map(Bytes::len)
        .sum();
    let mut head =
        BytesMut::with_capacity(5 + message_length - raw_length + inline + raw.len() * 16);
    head.put_u8(0);
    head.put_u32(u32::try_from(message_length).unwrap_or(u32::MAX));
    response
        .encode(&mut head)
        .unwrap_or_else(|_| unreachable!("the buffer was sized to the message"));
    let mut chunks = VecDeque::with_capacity(1 + 2 * raw.len());
    for bytes in raw {
        encode_key(RAW_OUTPUT_CONTENTS, WireType::LengthDelimited, &mut head);
        encode_varint(bytes.len() as u64, &mut head);
        if bytes.len() < SEPARATE_OUTPUT_BYTES {
            head.put_slice(&bytes);
        } else {
            chunks.push_back(head.split().freeze());
            chunks.push_back(bytes);
        }
    }
    if !head.is_empty() {
        chunks.push_back(head.freeze());
    }
    let mut trailers = http::HeaderMap::with_capacity(1);
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let mut response = Response::new(Body::new(Chunks::with_trailers(chunks, trailers)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(message: &[u8], compressed: bool) -> Bytes {
        let mut body = vec![u8::from(compressed)];
        body.extend_from_slice(&(message.len() as u32).to_be_bytes());
        body.extend_from_slice(message);
        body.into()
    }

    #[test]
    fn a_unary_body_is_one_uncompressed_message_within_the_limit() {
        assert_eq!(single_message(frame(b"abc", false), 10).unwrap(), "abc");
        assert_eq!(single_message(frame(b"", false), 10).unwrap(), "");
        let code = |body: Bytes, limit| single_message(body, limit).unwrap_err().kind.grpc_code();
        assert_eq!(
            code(Bytes::from_static(b"\0\0\0"), 10),
            tonic::Code::InvalidArgument
        );
        assert_eq!(code(frame(b"abc", true), 10), tonic::Code::Unimplemented);
        assert_eq!(
            code(frame(b"abcdef", false), 5),
            tonic::Code::ResourceExhausted
        );
        let mut two = frame(b"abc", false).to_vec();
        two.extend_from_slice(&frame(b"de", false));
        assert_eq!(code(two.into(), 10), tonic::Code::InvalidArgument);
        let mut short = frame(b"abc", false).to_vec();
        short.pop();
        assert_eq!(code(short.into(), 10), tonic::Code::InvalidArgument);
    }

    #[test]
    fn an_answer_decodes_as_the_message_it_was_made_from() {
        let response = pb::ModelInferResponse {
            model_name: "m".into(),
            model_version: "1".into(),
            id: "request".into(),
            raw_output_contents: vec![
                Bytes::from(vec![7u8; 10]),
                Bytes::from(vec![9u8; SEPARATE_OUTPUT_BYTES * 3]),
                Bytes::new(),
                Bytes::from(vec![1u8; 300]),
            ],
            ..Default::default()
        };
        let answered = answer(response.clone());
        assert_eq!(answered.headers()[CONTENT_TYPE], "application/grpc");
        let body = answered.into_body();
        let collected = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(http_body_util::BodyExt::collect(body))
            .unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(trailers["grpc-status"], "0");
        let bytes = collected.to_bytes();
        let message = single_message(bytes, usize::MAX).unwrap();
        assert_eq!(pb::ModelInferResponse::decode(message).unwrap(), response);
    }
}
