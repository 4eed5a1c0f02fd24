//! A response body sent as the buffers it is made of, one frame each, in order: binary outputs
//! go out from where the runtime wrote them, not joined into one buffer first.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};

/// The buffers of one answer, then its trailers if it has any (gRPC's status does).
pub struct Chunks {
    chunks: VecDeque<Bytes>,
    remaining: u64,
    trailers: Option<HeaderMap>,
}

impl Chunks {
    /// A body of known length: HTTP/1 sends it with a Content-Length.
    pub fn new(chunks: VecDeque<Bytes>) -> Chunks {
        let remaining = chunks.iter().map(|chunk| chunk.len() as u64).sum();
        Chunks {
            chunks,
            remaining,
            trailers: None,
        }
    }

    /// A body followed by trailers; its length is not announced, as gRPC's bodies are not.
    pub fn with_trailers(chunks: VecDeque<Bytes>, trailers: HeaderMap) -> Chunks {
        Chunks {
            trailers: Some(trailers),
            ..Chunks::new(chunks)
        }
    }
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(chunk) = self.chunks.pop_front() {
            self.remaining -= chunk.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        Poll::Ready(
            self.trailers
                .take()
                .map(|trailers| Ok(Frame::trailers(trailers))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.trailers {
            None => SizeHint::with_exact(self.remaining),
            Some(_) => SizeHint::default(),
        }
    }
}
