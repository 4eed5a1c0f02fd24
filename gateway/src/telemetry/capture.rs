//! What payload capture came to: per model, the requests sampled and whether their events were
//! queued or dropped; per sink, the events it wrote, dropped (its queue full) or failed to
//! deliver. Written by the capture's threads and the request path with relaxed atomic adds,
//! read by `/metrics` and the management API.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics_exporter_prometheus::formatting::sanitize_label_value;
use serde::{Deserialize, Serialize};

use crate::telemetry::figures::write_families;

/// A captured model's events.
#[derive(Default)]
pub struct CaptureFigures {
    captured: AtomicU64,
    dropped: AtomicU64,
}

/// A sink's events.
#[derive(Default)]
pub struct SinkFigures {
    written: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

/// A model's or a key's capture as the management API shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CaptureFiguresView {
    /// Events taken into the capture's queue.
    pub captured: u64,
    /// Events dropped because the queue or its bytes were full.
    pub dropped: u64,
}

/// A sink's events as the management API shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SinkFiguresView {
    /// Events written to the file, or delivered with a 2xx answer.
    pub written: u64,
    /// Events dropped because the sink's queue was full.
    pub dropped: u64,
    /// Events the sink could not write or deliver.
    pub failed: u64,
}

impl CaptureFigures {
    pub fn captured(&self) {
        self.captured.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    pub fn view(&self) -> CaptureFiguresView {
        CaptureFiguresView {
            captured: self.captured.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

impl SinkFigures {
    pub fn written(&self) {
        self.written.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    pub fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn view(&self) -> SinkFiguresView {
        SinkFiguresView {
            written: self.written.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// Writes the capture's families: each model's events by outcome, each sink's.
pub fn write_capture_families(
    models: &[(String, CaptureFiguresView)],
    sinks: &[(String, SinkFiguresView)],
    out: &mut String,
) {
    let mut events = String::new();
    for (model, figures) in models {
        let model = sanitize_label_value(model);
        for (outcome, count) in [("captured", figures.captured), ("dropped", figures.dropped)] {
            let _ = writeln!(
                events,
                "switchyard_capture_events_total{{model=\"{model}\",outcome=\"{outcome}\"}} {count}"
            );
        }
    }
    let mut delivered = String::new();
    for (sink, figures) in sinks {
        let sink = sanitize_label_value(sink);
        for (outcome, count) in [
            ("written", figures.written),
            ("dropped", figures.dropped),
            ("failed", figures.failed),
        ] {
            let _ = writeln!(
                delivered,
                "switchyard_capture_sink_events_total{{sink=\"{sink}\",outcome=\"{outcome}\"}} {count}"
            );
        }
    }
    write_families(
        out,
        [
            (
                "switchyard_capture_events_total",
                "Sampled requests of each captured model, by whether their event was queued (captured) or dropped with the queue full.",
                "counter",
                events,
            ),
            (
                "switchyard_capture_sink_events_total",
                "Captured events each sink wrote or delivered, dropped with its queue full, or failed to deliver.",
                "counter",
                delivered,
            ),
        ],
    );
}
