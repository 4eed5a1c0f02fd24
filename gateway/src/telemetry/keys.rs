//! What each inference API key's requests came to, by the key's name (its tenant): requests
//! by outcome, refusals by the limit that refused them, and latency.
//! Written by the pipeline once per request, read by `/metrics`, the management API's key
//! list, the CLI and the dashboard. Relaxed atomic adds only.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::formatting::sanitize_label_value;
use serde::{Deserialize, Serialize};

use crate::telemetry::capture::{CaptureFigures, CaptureFiguresView};
use crate::telemetry::figures::{BucketHistogram, LatencyHistogram, write_families};

/// Why a key's request was refused before it reached a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over its requests per second.
    Rate,
    /// Over its rows per second.
    Rows,
    /// Over its requests in flight.
    InFlight,
    /// A model the key may not call.
    Model,
    /// Over a model's own limit, which holds for every caller.
    ModelLimit,
}

impl Refusal {
    pub const ALL: [Refusal; 5] = [
        Refusal::Rate,
        Refusal::Rows,
        Refusal::InFlight,
        Refusal::Model,
        Refusal::ModelLimit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Rate => "rate",
            Refusal::Rows => "rows",
            Refusal::InFlight => "in_flight",
            Refusal::Model => "model",
            Refusal::ModelLimit => "model_limit",
        }
    }
}

/// One key name's record.
#[derive(Default)]
pub struct KeyFigures {
    succeeded: AtomicU64,
    failed: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
    duration: BucketHistogram,
    latency: LatencyHistogram,
    /// Its requests' captured events.
    pub capture: CaptureFigures,
}

/// A key name's figures as the management API shows them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyFiguresView {
    /// Requests that reached a model and succeeded.
    pub succeeded: u64,
    /// Requests that reached a model and failed.
    pub failed: u64,
    /// Requests refused by the key's or the model's limits, by reason (`rate`, `rows`,
    /// `in_flight`, `model`, `model_limit`).
    pub refused: std::collections::BTreeMap<String, u64>,
    /// Median and 99th percentile of the latency of its successful requests, in ms.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Its requests' events taken by the payload capture, and dropped by it.
    pub capture: CaptureFiguresView,
}

impl KeyFigures {
    /// A request that reached a model: whether it succeeded, and its time from arrival.
    pub fn record(&self, succeeded: bool, elapsed: Duration) {
        if succeeded {
            self.succeeded.fetch_add(1, Ordering::Relaxed);
            self.duration.record(elapsed);
            self.latency.record(elapsed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn refused(&self, why: Refusal) {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn refusals(&self, why: Refusal) -> u64 {
        self.refused[why as usize].load(Ordering::Relaxed)
    }

    pub fn view(&self) -> KeyFiguresView {
        KeyFiguresView {
            succeeded: self.succeeded.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            refused: Refusal::ALL
                .iter()
                .map(|why| (why.as_str().to_owned(), self.refusals(*why)))
                .collect(),
            p50_ms: self.latency.quantile_ms(0.5),
            p99_ms: self.latency.quantile_ms(0.99),
            capture: self.capture.view(),
        }
    }

    /// Appends this key name's series to `out`'s families.
    pub fn write_prometheus(&self, name: &str, out: &mut KeyFamilies) {
        let labels = format!("key=\"{}\"", sanitize_label_value(name));
        for (outcome, count) in [("success", &self.succeeded), ("failure", &self.failed)] {
            let _ = writeln!(
                out.requests,
                "switchyard_key_requests_total{{{labels},outcome=\"{outcome}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        for why in Refusal::ALL {
            let _ = writeln!(
                out.refusals,
                "switchyard_key_refusals_total{{{labels},reason=\"{}\"}} {}",
                why.as_str(),
                self.refusals(why)
            );
        }
        self.duration.write(
            "switchyard_key_request_duration_seconds",
            &labels,
            &mut out.duration,
        );
        let capture = self.capture.view();
        for (outcome, count) in [("captured", capture.captured), ("dropped", capture.dropped)] {
            let _ = writeln!(
                out.capture,
                "switchyard_key_capture_events_total{{{labels},outcome=\"{outcome}\"}} {count}"
            );
        }
    }
}

/// Every key name's series, gathered and written family by family.
#[derive(Default)]
pub struct KeyFamilies {
    requests: String,
    refusals: String,
    duration: String,
    capture: String,
}

impl KeyFamilies {
    pub fn finish(self, out: &mut String) {
        let families = [
            (
                "switchyard_key_requests_total",
                "Inference requests of each API key's name that reached a model, by outcome.",
                "counter",
                self.requests,
            ),
            (
                "switchyard_key_refusals_total",
                "Requests of each API key's name refused by a limit, by the limit (rate, rows, in_flight, model, model_limit).",
                "counter",
                self.refusals,
            ),
            (
                "switchyard_key_request_duration_seconds",
                "Time from receiving a request to its answer, for each API key's name's successful requests.",
                "histogram",
                self.duration,
            ),
            (
                "switchyard_key_capture_events_total",
                "Captured events of each API key's name's requests, by whether they were queued (captured) or dropped with the queue full.",
                "counter",
                self.capture,
            ),
        ];
        write_families(out, families);
    }
}
