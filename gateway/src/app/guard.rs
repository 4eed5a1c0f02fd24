//! The guard between a connection's bytes and hyper. It times the connection out when it is
//! idle, and on HTTP/1 it also times each request's head and speaks the refusals hyper would
//! otherwise make with an empty body: a head that is overdue gets 408, and hyper's own 400,
//! 414 and 431 for a head it cannot parse are rewritten into the protocol's `{"error": ...}`
//! form.
//!
//! The guard knows where a request is from two things only: the bytes that pass through it,
//! and the count of requests hyper handed the service and of responses it finished sending.
//! A head starts with the first byte read while no request is in service and ends when the
//! service is called; a write while a head is open, before anything else was written, can
//! only be hyper refusing that head. One case it cannot see: the start of a pipelined head
//! that arrived in the same read as the request before it. A head that stalls there is closed
//! by the idle timeout, without a 408.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::error::ErrorKind;
use crate::telemetry::Metrics;

/// The start of HTTP/2's connection preface; a connection that opens with it is not HTTP/1.
const H2_PREFACE: &[u8; 4] = b"PRI ";

/// hyper's bounds on a request head, named in the refusals (hyper 1.x defaults).
const MAX_URI_BYTES: usize = u16::MAX as usize - 1;
const MAX_HEADERS: usize = 100;
const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;

/// The requests hyper has handed the service on one connection, and those whose response
/// body is done, and when the last one finished. The guard reads them to tell a request in
/// service from the next head, and a connection in use from an idle one.
pub struct RequestCounts {
    started: AtomicU32,
    finished: AtomicU32,
    opened: Instant,
    /// When the last request finished, in microseconds since `opened`.
    last_finished_us: AtomicU64,
}

impl Default for RequestCounts {
    fn default() -> Self {
        RequestCounts {
            started: AtomicU32::new(0),
            finished: AtomicU32::new(0),
            opened: Instant::now(),
            last_finished_us: AtomicU64::new(0),
        }
    }
}

impl RequestCounts {
    /// Whether a request is in service (on HTTP/2, any of its streams).
    fn serving(&self) -> bool {
        self.started.load(Ordering::Relaxed) != self.finished.load(Ordering::Relaxed)
    }

    /// Since when no request has been in service: the connection's opening, or the end of its
    /// last request.
    fn quiet_since(&self) -> Instant {
        self.opened + Duration::from_micros(self.last_finished_us.load(Ordering::Relaxed))
    }

    /// Counts a request handed to the service; the returned token counts it finished when it
    /// is dropped, with the response body (or with the service's future, if that is dropped).
    pub fn start(self: &Arc<Self>) -> RequestToken {
        self.started.fetch_add(1, Ordering::Relaxed);
        RequestToken(self.clone())
    }
}

pub struct RequestToken(Arc<RequestCounts>);

impl Drop for RequestToken {
    fn drop(&mut self) {
        let since_open = Instant::now().saturating_duration_since(self.0.opened);
        let micros = u64::try_from(since_open.as_micros()).unwrap_or(u64::MAX);
        self.0.last_finished_us.fetch_max(micros, Ordering::Relaxed);
        self.0.finished.fetch_add(1, Ordering::Relaxed);
    }
}

/// A response body that holds its request's token until hyper has sent it all.
pub struct Finishing<B> {
    body: B,
    _token: RequestToken,
}

impl<B> Finishing<B> {
    pub fn new(body: B, token: RequestToken) -> Self {
        Finishing {
            body,
            _token: token,
        }
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Finishing<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[derive(Clone, Copy)]
pub struct GuardLimits {
    /// No request in service for this long closes the connection. Bytes alone are not use:
    /// an HTTP/2 client that only answers pings is idle.
    pub idle: Duration,
    /// HTTP/1: from a head's first byte to the service being called.
    pub head: Duration,
}

enum Phase {
    /// Between requests: nothing of the next one has arrived.
    Idle,
    /// Part of a request head has arrived; `quiet` while nothing was written since.
    Head {
        since: Instant,
        quiet: bool,
    },
    /// The service has a request whose response body hyper has not finished sending.
    Serving,
    /// HTTP/2, framed by h2 itself: only idleness is timed.
    Multiplexed,
    /// Writing a refusal of the guard's own; the connection ends after it.
    Refusing {
        answer: Vec<u8>,
        written: usize,
    },
    Refused,
}

enum Expiry {
    Idle,
    Head,
}

pub struct ConnectionGuard<S> {
    stream: S,
    limits: GuardLimits,
    requests: Arc<RequestCounts>,
    /// `requests.started` when the guard last looked.
    seen_started: u32,
    metrics: Arc<Metrics>,
    phase: Phase,
    /// How many bytes of the HTTP/2 preface the connection opened with; `None` once decided.
    preface_matched: Option<usize>,
    /// Moved only when it fires, so reads and writes never touch the timer wheel.
    deadline: Pin<Box<Sleep>>,
}

impl<S> ConnectionGuard<S> {
    pub fn new(
        stream: S,
        limits: GuardLimits,
        requests: Arc<RequestCounts>,
        metrics: Arc<Metrics>,
    ) -> Self {
        ConnectionGuard {
            stream,
            limits,
            requests,
            seen_started: 0,
            metrics,
            phase: Phase::Idle,
            preface_matched: Some(0),
            deadline: Box::pin(tokio::time::sleep(limits.idle.min(limits.head))),
        }
    }

    /// Follows the requests the service was handed since the guard last looked.
    fn note_requests(&mut self) {
        if matches!(
            self.phase,
            Phase::Multiplexed | Phase::Refusing { .. } | Phase::Refused
        ) {
            return;
        }
        let started = self.requests.started.load(Ordering::Relaxed);
        let finished = self.requests.finished.load(Ordering::Relaxed);
        if started != finished {
            self.phase = Phase::Serving;
        } else if started != self.seen_started || matches!(self.phase, Phase::Serving) {
            // Whatever was read belonged to requests that are answered now.
            self.phase = Phase::Idle;
        }
        self.seen_started = started;
    }

    fn arrived(&mut self, bytes: &[u8]) {
        let now = Instant::now();
        if let Some(matched) = self.preface_matched {
            let compared = bytes.len().min(H2_PREFACE.len() - matched);
            if bytes[..compared] != H2_PREFACE[matched..matched + compared] {
                self.preface_matched = None;
            } else if matched + compared == H2_PREFACE.len() {
                self.preface_matched = None;
                self.phase = Phase::Multiplexed;
                return;
            } else {
                self.preface_matched = Some(matched + compared);
            }
        }
        if matches!(self.phase, Phase::Idle) {
            self.phase = Phase::Head {
                since: now,
                quiet: true,
            };
        }
    }

    fn wrote(&mut self) {
        // The tail of an earlier response, written while the next head arrives: the head's
        // time starts once the connection is free to read it.
        if let Phase::Head { since, quiet } = &mut self.phase {
            *since = Instant::now();
            *quiet = false;
        }
    }

    /// Whether a deadline has passed, and which; re-arms the timer when none has. The timer
    /// fires at least once per head limit, so a head that starts between firings is still
    /// refused on time. A connection with a request in service is never idle, however long the
    /// request takes; one whose HTTP/1 head is arriving is timed by the head limit alone.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<Expiry> {
        loop {
            if self.deadline.as_mut().poll(cx).is_pending() {
                return None;
            }
            let now = Instant::now();
            let head_due = match self.phase {
                Phase::Head { since, .. } => Some(since + self.limits.head),
                _ => None,
            };
            if head_due.is_some_and(|due| due <= now) {
                return Some(Expiry::Head);
            }
            let idle_due = (head_due.is_none() && !self.requests.serving())
                .then(|| self.requests.quiet_since() + self.limits.idle);
            if idle_due.is_some_and(|due| due <= now) {
                return Some(Expiry::Idle);
            }
            let next = head_due.unwrap_or(now + self.limits.head);
            self.deadline
                .as_mut()
                .reset(idle_due.map_or(next, |due| next.min(due)));
        }
    }

    fn refuse(&mut self, status: u16, message: &str, kind: ErrorKind) {
        self.metrics.reject(kind);
        self.phase = Phase::Refusing {
            answer: refusal(status, message),
            written: 0,
        };
    }
}

impl<S: AsyncWrite + Unpin> ConnectionGuard<S> {
    /// Writes the pending refusal; ready once it is all written, or the peer is gone.
    fn poll_refusal(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Phase::Refusing { answer, written } = &mut self.phase else {
            return Poll::Ready(());
        };
        while *written < answer.len() {
            match ready!(Pin::new(&mut self.stream).poll_write(cx, &answer[*written..])) {
                Ok(0) | Err(_) => break,
                Ok(n) => *written += n,
            }
        }
        let _ = Pin::new(&mut self.stream).poll_flush(cx);
        self.phase = Phase::Refused;
        Poll::Ready(())
    }

    /// hyper writing while a head is open and nothing else was written: its own refusal of a
    /// head it cannot parse, which goes out in the protocol's form instead.
    fn replaces_hyper_refusal(&mut self, first: &[u8]) -> bool {
        if !matches!(self.phase, Phase::Head { quiet: true, .. }) || !first.starts_with(b"HTTP/1.")
        {
            return false;
        }
        match first.get(9..12) {
            Some(b"414") => self.refuse(
                414,
                &format!("the request target is longer than {MAX_URI_BYTES} bytes"),
                ErrorKind::InvalidArgument,
            ),
            Some(b"431") => self.refuse(
                431,
                &format!(
                    "the request head is too large: at most {MAX_HEADERS} headers and {} KiB",
                    MAX_HEAD_BYTES / 1024
                ),
                ErrorKind::InvalidArgument,
            ),
            _ => self.refuse(
                400,
                "malformed HTTP/1.1 request: its request line or a header cannot be parsed",
                ErrorKind::InvalidArgument,
            ),
        }
        true
    }
}

/// A complete HTTP/1.1 response that closes the connection, with the protocol's error body.
fn refusal(status: u16, message: &str) -> Vec<u8> {
    let reason = match status {
        408 => "Request Timeout",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        _ => "Bad Request",
    };
    let body = serde_json::json!({ "error": message }).to_string();
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn idle_error() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the connection was idle too long")
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ConnectionGuard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.phase {
            // The connection ends after a refusal: hyper reads its end.
            Phase::Refusing { .. } => {
                ready!(this.poll_refusal(cx));
                return Poll::Ready(Ok(()));
            }
            Phase::Refused => return Poll::Ready(Ok(())),
            _ => {}
        }
        this.note_requests();
        let filled = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > filled {
                    let end = buf.filled().len();
                    this.arrived(&buf.filled()[filled..end]);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => match this.expired(cx) {
                None => Poll::Pending,
                Some(Expiry::Idle) => Poll::Ready(Err(idle_error())),
                Some(Expiry::Head) => {
                    let message = format!(
                        "the request head did not arrive within connections.header_read_timeout ({:?})",
                        this.limits.head
                    );
                    this.refuse(408, &message, ErrorKind::RequestTimeout);
                    ready!(this.poll_refusal(cx));
                    Poll::Ready(Ok(()))
                }
            },
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ConnectionGuard<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.note_requests();
        if matches!(this.phase, Phase::Refusing { .. } | Phase::Refused)
            || this.replaces_hyper_refusal(data)
        {
            // hyper's bytes are swallowed: the refusal goes out in their place.
            ready!(this.poll_refusal(cx));
            return Poll::Ready(Ok(data.len()));
        }
        let written = ready!(Pin::new(&mut this.stream).poll_write(cx, data))?;
        if written > 0 {
            this.wrote();
        }
        Poll::Ready(Ok(written))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.note_requests();
        let first = bufs.iter().find(|buf| !buf.is_empty());
        if matches!(this.phase, Phase::Refusing { .. } | Phase::Refused)
            || first.is_some_and(|first| this.replaces_hyper_refusal(first))
        {
            ready!(this.poll_refusal(cx));
            return Poll::Ready(Ok(bufs.iter().map(|buf| buf.len()).sum()));
        }
        let written = ready!(Pin::new(&mut this.stream).poll_write_vectored(cx, bufs))?;
        if written > 0 {
            this.wrote();
        }
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
