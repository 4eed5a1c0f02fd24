//! Telemetry, a leaf that anything may use and that uses no other layer: Prometheus metrics
//! ([`metrics`]), Triton's per-version statistics ([`statistics`]), and logs and traces
//! ([`tracing`]).

pub mod capture;
pub mod figures;
pub mod keys;
pub mod metrics;
pub mod statistics;
pub mod tracing;

pub use metrics::{Gauges, Metrics, Protocol, SequenceGauges, VersionGauges, VersionMetrics};
