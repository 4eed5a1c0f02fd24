//! `ModelStreamInfer`'s request side. tonic decodes a stream's messages itself, one by one, so
//! what unary `ModelInfer` gets before decoding happens here, in the body: each message must
//! arrive whole within `http.request_read_timeout` of its first byte, every byte is charged to
//! the in-flight byte budget as it arrives, and a whole message is scanned (counts past the
//! limits refused, what decoding will take charged too) before it is handed to tonic. A stream
//! holds the budget of the message it last passed on until tonic asks for the next one (the
//! stream is answered one message at a time, so by then that message has been served), and of
//! the one arriving.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use bytes::{Bytes, BytesMut};
use http_body::Frame;
use tonic::Status;

use crate::error::{ErrorKind, GatewayError};
use crate::protocol::grpc::scan::{self, ScanLimits};
use crate::protocol::pipeline::{BodyBudget, Pipeline};

/// The gRPC method of the bidirectional stream.
pub const MODEL_STREAM_INFER: &str = "/inference.GRPCInferenceService/ModelStreamInfer";

/// A stream's request body, passed on to tonic one scanned message at a time.
pub struct ScannedMessages {
    inner: Body,
    pipeline: Arc<Pipeline>,
    /// The most bytes one message may have.
    limit: usize,
    /// Bytes of messages not yet passed on, and their share of the byte budget.
    pending: BytesMut,
    arriving: BodyBudget,
    /// What the message last passed on holds of the budget.
    held: BodyBudget,
    /// When the message now arriving must be whole.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    done: bool,
    /// Set once an error has been reported: nothing follows it.
    failed: bool,
}

impl ScannedMessages {
    pub fn new(inner: Body, pipeline: Arc<Pipeline>, limit: usize) -> ScannedMessages {
        ScannedMessages {
            inner,
            pipeline,
            limit,
            pending: BytesMut::new(),
            arriving: BodyBudget::default(),
            held: BodyBudget::default(),
            deadline: None,
            done: false,
            failed: false,
        }
    }

    /// The next whole frame in `pending`, scanned and charged; `None` until one has arrived.
    fn next_frame(&mut self) -> Result<Option<Bytes>, GatewayError> {
        let Some(header) = self.pending.first_chunk::<5>() else {
            return Ok(None);
        };
        let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if length > self.limit {
            return Err(self.pipeline.refused(GatewayError::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "a stream message of {length} bytes is over the limit of {} bytes (grpc.max_message_size)",
                    self.limit
                ),
            )));
        }
        if self.pending.len() < 5 + length {
            return Ok(None);
        }
        let frame = self.pending.split_to(5 + length).freeze();
        let scanned = scan::scan_frames(&frame, &ScanLimits::default())
            .map_err(|error| self.pipeline.refused(error))?;
        // The previous message's share goes back; this one keeps what its bytes took, and
        // takes what decoding it will.
        self.held = std::mem::take(&mut self.arriving);
        self.pipeline
            .charge(&mut self.held, scanned.decoded_bytes)?;
        self.deadline = None;
        Ok(Some(frame))
    }

    /// Reports `status` and ends the body; what was held goes back to the budget.
    fn fail(&mut self, status: Status) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.failed = true;
        self.pending = BytesMut::new();
        self.arriving = BodyBudget::default();
        self.held = BodyBudget::default();
        Poll::Ready(Some(Err(status)))
    }

    fn start_deadline(&mut self) {
        if self.deadline.is_none() && !self.pending.is_empty() {
            let timeout = self.pipeline.read_timeout();
            self.deadline = Some(Box::pin(tokio::time::sleep(timeout)));
        }
    }

    fn overdue(&self, timeout: Duration) -> GatewayError {
        self.pipeline.refused(GatewayError::new(
            ErrorKind::RequestTimeout,
            format!(
                "a stream message did not arrive within {timeout:?} of its first byte (http.request_read_timeout)"
            ),
        ))
    }
}

impl HttpBody for ScannedMessages {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        // Asked for more: the message passed on last has been answered.
        this.held = BodyBudget::default();
        loop {
            match this.next_frame() {
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(Frame::data(frame)))),
                Ok(None) => {}
                Err(error) => return this.fail(Status::from(error)),
            }
            if this.done {
                if this.pending.is_empty() {
                    return Poll::Ready(None);
                }
                // What is left is not a whole message: tonic reports the truncation.
                let rest = this.pending.split().freeze();
                return Poll::Ready(Some(Ok(Frame::data(rest))));
            }
            this.start_deadline();
            if let Some(deadline) = &mut this.deadline
                && deadline.as_mut().poll(cx).is_ready()
            {
                let error = this.overdue(this.pipeline.read_timeout());
                return this.fail(Status::from(error));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => this.done = true,
                Poll::Ready(Some(Err(error))) => {
                    return this.fail(Status::cancelled(format!(
                        "the request stream broke: {error}"
                    )));
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if let Err(error) = this.pipeline.charge(&mut this.arriving, data.len()) {
                            return this.fail(Status::from(error));
                        }
                        this.pending.extend_from_slice(&data);
                    }
                    // Trailers pass as they are, after every message.
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
            }
        }
    }
}
