//! Logs and traces: human-readable or JSON log lines, and, when an OTLP endpoint is
//! configured, request spans exported over OTLP/gRPC with W3C `traceparent` continued.
//!
//! Request spans use the target [`TRACE_TARGET`] at debug level. Only the OTLP layer enables
//! them, so with export off they are never created and cost the request path nothing.

use std::sync::OnceLock;
use std::time::Duration;

use axum::http::HeaderMap;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::{Config, LogFormat};

/// The target of request spans (receive, decode, route, queue, infer, encode).
pub const TRACE_TARGET: &str = "switchyard::trace";

/// Keeps the trace exporter running; shutting it down flushes the spans still buffered.
pub struct TraceExport {
    provider: Option<SdkTracerProvider>,
}

impl TraceExport {
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the process's logging and, if configured, trace export. Must run inside the Tokio
/// runtime (the OTLP client lives on it).
pub fn init(config: &Config) -> anyhow::Result<TraceExport> {
    // ONNX Runtime reports every graph transformation at info; keep its warnings only.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{},ort=warn", config.log.level)));
    let logs: Box<dyn Layer<Registry> + Send + Sync> = match config.log.format {
        // Colours only on a terminal: a log file or a service's journal gets plain text.
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_filter(filter)
            .boxed(),
    };
    let endpoint = config.tracing.otlp_endpoint.trim();
    if endpoint.is_empty() {
        tracing_subscriber::registry().with(logs).try_init()?;
        return Ok(TraceExport { provider: None });
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(5))
        .build()?;
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(Duration::from_millis(500))
                .build(),
        )
        .build();
    let ratio = config.tracing.sampling_ratio.clamp(0.0, 1.0);
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        // Sampling is decided per request before its spans exist (`request_span`).
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("switchyard")
                .build(),
        )
        .build();
    let traces = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("switchyard"))
        .with_filter(Targets::new().with_target(TRACE_TARGET, LevelFilter::DEBUG));
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()?;
    let _ = SAMPLING.set(ratio);
    // The collector's host and port only: a user part may carry a password.
    let collector = endpoint
        .parse::<http::Uri>()
        .ok()
        .and_then(|uri| {
            let host = uri.host()?.to_owned();
            Some(match uri.port_u16() {
                Some(port) => format!("{host}:{port}"),
                None => host,
            })
        })
        .unwrap_or_else(|| "(unparsed)".into());
    tracing::info!(%collector, ratio, "exporting traces over OTLP");
    Ok(TraceExport {
        provider: Some(provider),
    })
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|key| key.as_str()).collect()
    }
}

/// The sampling ratio of new traces, set when export is on.
static SAMPLING: OnceLock<f64> = OnceLock::new();

/// Whether a request is traced: a caller's `traceparent` decides by its sampled flag, other
/// requests by the configured ratio. Deciding before any span exists keeps unsampled requests
/// free of tracing work.
fn sampled(headers: &HeaderMap) -> bool {
    let Some(ratio) = SAMPLING.get() else {
        return false;
    };
    match headers
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
    {
        Some(parent) => parent
            .rsplit('-')
            .next()
            .and_then(|flags| u8::from_str_radix(flags, 16).ok())
            .is_some_and(|flags| flags & 1 == 1),
        None => fastrand::f64() < *ratio,
    }
}

/// The span of one inference request, continuing the caller's trace when the headers (HTTP) or
/// metadata (gRPC) carry a W3C `traceparent`; `Span::none()` when the request is not traced.
pub fn request_span(protocol: &'static str, model: &str, headers: &HeaderMap) -> tracing::Span {
    if !sampled(headers) {
        return tracing::Span::none();
    }
    let span = tracing::debug_span!(
        target: TRACE_TARGET,
        "request",
        otel.kind = "server",
        protocol,
        model,
        version = tracing::field::Empty,
        request_id = tracing::field::Empty,
        forwarded_to = tracing::field::Empty,
        forwarded_from = tracing::field::Empty,
    );
    if !span.is_disabled() && headers.contains_key("traceparent") {
        let parent = TraceContextPropagator::new().extract(&Headers(headers));
        let _ = span.set_parent(parent);
    }
    span
}

/// Writes the trace context a forwarded request carries: the current span's when the request
/// is traced here (the peer's spans become its children), else the caller's `traceparent` as
/// it came, so that a trace sampled elsewhere still joins up.
pub fn inject_context(from: &HeaderMap, into: &mut tonic::metadata::MetadataMap) {
    let span = tracing::Span::current();
    if !span.is_none() {
        let context = span.context();
        let mut carrier = std::collections::HashMap::new();
        TraceContextPropagator::new().inject_context(&context, &mut carrier);
        for (key, value) in carrier {
            if let (Ok(key), Ok(value)) = (
                tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
                value.parse(),
            ) {
                into.insert(key, value);
            }
        }
        if into.contains_key("traceparent") {
            return;
        }
    }
    for name in ["traceparent", "tracestate"] {
        if let Some(value) = from.get(name).and_then(|v| v.to_str().ok())
            && let Ok(value) = value.parse()
        {
            into.insert(name, value);
        }
    }
}

/// A child of the current request span, or no span when the request is not traced (so that an
/// untraced request never starts spans of its own).
pub fn child(make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    if tracing::Span::current().is_none() {
        tracing::Span::none()
    } else {
        make()
    }
}
