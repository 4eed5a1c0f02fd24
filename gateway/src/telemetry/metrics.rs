//! Prometheus metrics: one recorder per gateway, with the handles of each version's per-model-
//! call figures registered once when it loads, so that the worker only bumps atomics. The
//! per-request families are a view of each version's one record
//! ([`crate::telemetry::figures::VersionFigures`]), written out when `/metrics` is scraped;
//! so are the gauges, from a [`Gauges`] snapshot the caller gathers: this module reads no
//! other part of the gateway.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

use switchyard_runtimes::{Device, memory};

use crate::error::{ERROR_TABLE, ErrorKind};
use crate::telemetry::figures::{
    LATENCY_BOUNDS, PrometheusFamilies, RequestTotals, VersionFigures,
};
use crate::telemetry::statistics::{Statistics, StatisticsSnapshot};

/// The protocol a request came by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Http,
    Grpc,
}

impl Protocol {
    pub const ALL: [Protocol; 2] = [Protocol::Http, Protocol::Grpc];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        }
    }
}

const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
/// A load takes tens of milliseconds to seconds.
const COLD_START_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
];

/// The metrics of one version, registered when it loads.
pub struct VersionMetrics {
    pub queue_time: Histogram,
    pub compute_time: Histogram,
    pub batch_size: Histogram,
    /// Triton's statistics extension, of model executions; kept even when metrics are off.
    pub statistics: Statistics,
    /// The version's record of its requests, and what it held when this load began: Triton's
    /// figures count from the load.
    figures: Arc<VersionFigures>,
    at_load: RequestTotals,
}

impl VersionMetrics {
    /// Triton's statistics of this load: its executions, and the requests served since it
    /// began.
    pub fn statistics(&self) -> StatisticsSnapshot {
        self.statistics.snapshot(self.requests())
    }

    /// Counts a request that found no replica and waited for one to load: what the hit rate
    /// (requests served without a load) misses.
    pub fn cold_wait(&self) {
        self.figures.cold_wait();
    }

    /// The requests served since this load began.
    pub fn requests(&self) -> RequestTotals {
        self.figures.request_totals().since(&self.at_load)
    }
}

pub struct Metrics {
    recorder: PrometheusRecorder,
    rejections: Vec<Counter>,
    /// Off: every handle is a no-op and /metrics is empty (for measuring what metrics cost).
    enabled: bool,
}

impl Metrics {
    pub fn new(enabled: bool) -> Arc<Metrics> {
        let builder = PrometheusBuilder::new();
        let builder = [
            "switchyard_queue_time_seconds",
            "switchyard_compute_time_seconds",
        ]
        .into_iter()
        .fold(builder, |builder, name| {
            builder
                .set_buckets_for_metric(Matcher::Full(name.into()), &LATENCY_BOUNDS)
                .unwrap_or_else(|_| PrometheusBuilder::new())
        });
        let builder = builder
            .set_buckets_for_metric(Matcher::Full("switchyard_batch_size".into()), BATCH_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let builder = builder
            .set_buckets_for_metric(
                Matcher::Full("switchyard_cold_start_seconds".into()),
                COLD_START_BUCKETS,
            )
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        describe(&recorder);
        // Every kind: refusals before a request reaches a version (a stalled body, a full byte
        // budget) count here too.
        let rejections = ERROR_TABLE
            .iter()
            .map(|row| {
                if !enabled {
                    return Counter::noop();
                }
                counter(
                    &recorder,
                    "switchyard_rejections_total",
                    vec![Label::new("reason", row.reason)],
                )
            })
            .collect();
        gauge(
            &recorder,
            "switchyard_build_info",
            vec![Label::new("version", env!("CARGO_PKG_VERSION"))],
        )
        .set(1.0);
        Arc::new(Metrics {
            recorder,
            rejections,
            enabled,
        })
    }

    /// A version's handles for this load, beside its one record of requests.
    pub fn version(
        &self,
        model: &str,
        version: &str,
        figures: Arc<VersionFigures>,
    ) -> VersionMetrics {
        let at_load = figures.request_totals();
        figures.expose();
        if !self.enabled {
            return VersionMetrics {
                queue_time: Histogram::noop(),
                compute_time: Histogram::noop(),
                batch_size: Histogram::noop(),
                statistics: Statistics::default(),
                figures,
                at_load,
            };
        }
        let labels = || {
            vec![
                Label::new("model", model.to_owned()),
                Label::new("version", version.to_owned()),
            ]
        };
        let r = &self.recorder;
        VersionMetrics {
            queue_time: histogram(r, "switchyard_queue_time_seconds", labels()),
            compute_time: histogram(r, "switchyard_compute_time_seconds", labels()),
            batch_size: histogram(r, "switchyard_batch_size", labels()),
            statistics: Statistics::default(),
            figures,
            at_load,
        }
    }

    /// Folds the histogram samples recorded since the last scrape into their buckets; without
    /// it, samples would pile up in memory for as long as nobody scrapes.
    pub fn run_upkeep(&self) {
        if self.enabled {
            self.recorder.handle().run_upkeep();
        }
    }

    /// Counts a registry write of the gateway's that failed (it is retried).
    pub fn registry_write_failed(&self) {
        if self.enabled {
            counter(
                &self.recorder,
                "switchyard_registry_write_failures_total",
                Vec::new(),
            )
            .increment(1);
        }
    }

    /// Counts a replica load made to serve a version that held none (a cold start, or a
    /// version loaded on demand), by outcome (`success` or `failed`), and how long it took.
    pub fn replica_loaded(
        &self,
        model: &str,
        version: &str,
        outcome: &'static str,
        took: Duration,
    ) {
        if self.enabled {
            let labels = || {
                vec![
                    Label::new("model", model.to_owned()),
                    Label::new("version", version.to_owned()),
                ]
            };
            let mut with_outcome = labels();
            with_outcome.push(Label::new("outcome", outcome));
            counter(&self.recorder, "switchyard_cold_starts_total", with_outcome).increment(1);
            if outcome == "success" {
                histogram(&self.recorder, "switchyard_cold_start_seconds", labels())
                    .record(took.as_secs_f64());
            }
        }
    }

    /// Counts a replica evicted to make room for another version, or because its device went
    /// over its budget on measured memory.
    pub fn evicted(&self, model: &str, version: &str, device: &str) {
        if self.enabled {
            counter(
                &self.recorder,
                "switchyard_evictions_total",
                vec![
                    Label::new("model", model.to_owned()),
                    Label::new("version", version.to_owned()),
                    Label::new("device", device.to_owned()),
                ],
            )
            .increment(1);
        }
    }

    /// Counts a connection closed at once because its listener holds its limit.
    pub fn refuse_connection(&self, listener: &'static str) {
        if self.enabled {
            counter(
                &self.recorder,
                "switchyard_connections_refused_total",
                vec![Label::new("listener", listener)],
            )
            .increment(1);
        }
    }

    /// Counts a request this node forwarded to a peer that hosts its version, by how it ended
    /// (`success`, an error outcome, `unreachable` when the peer did not run it and the next
    /// peer was tried, or `broken` when the connection failed after it was sent).
    pub fn forwarded(&self, model: &str, version: &str, peer: &str, outcome: &'static str) {
        if self.enabled {
            counter(
                &self.recorder,
                "switchyard_forwarded_requests_total",
                vec![
                    Label::new("model", model.to_owned()),
                    Label::new("version", version.to_owned()),
                    Label::new("peer", peer.to_owned()),
                    Label::new("outcome", outcome),
                ],
            )
            .increment(1);
        }
    }

    /// Counts a request another node forwarded to this one. No label says which: the mark is
    /// the caller's header, and a label from it would let any client add series without end.
    pub fn received_forwarded(&self) {
        if self.enabled {
            counter(
                &self.recorder,
                "switchyard_forwarded_received_total",
                Vec::new(),
            )
            .increment(1);
        }
    }

    /// Counts a refused or failed request by its reason.
    pub fn reject(&self, kind: ErrorKind) {
        self.rejections[kind.index()].increment(1);
    }

    /// The Prometheus text exposition, with the gauges set from `gauges`.
    pub fn render(&self, gauges: &Gauges) -> String {
        if !self.enabled {
            return "# metrics are disabled (metrics.enabled = false)\n".into();
        }
        let r = &self.recorder;
        let mut gpus = std::collections::BTreeSet::new();
        for version in &gauges.versions {
            let labels = || {
                vec![
                    Label::new("model", version.model.to_string()),
                    Label::new("version", version.version.to_string()),
                ]
            };
            gauge(r, "switchyard_ready_replicas", labels()).set(version.replicas as f64);
            if let Some(device) = version.device {
                if let Device::Cuda(index) = device {
                    gpus.insert(index);
                }
                if let Some(bytes) = version.memory_per_replica {
                    let mut labels = labels();
                    labels.push(Label::new("device", device.to_string()));
                    gauge(r, "switchyard_model_memory_bytes", labels)
                        .set(bytes as f64 * version.replicas as f64);
                }
            }
            gauge(r, "switchyard_queue_depth", labels()).set(version.queue_depth as f64);
            if let Some(sequences) = &version.sequences {
                gauge(r, "switchyard_sequences_open", labels()).set(sequences.open as f64);
                gauge(r, "switchyard_sequence_slots", labels()).set(sequences.slots as f64);
                gauge(r, "switchyard_sequence_state_bytes", labels())
                    .set(sequences.state_bytes as f64);
            }
            for state in VERSION_STATES {
                let mut labels = labels();
                labels.push(Label::new("state", state));
                let value = f64::from(u8::from(version.state == state));
                gauge(r, "switchyard_model_state", labels).set(value);
            }
        }
        gauge(r, "switchyard_in_flight_requests", Vec::new()).set(gauges.in_flight as f64);
        self.render_devices(gauges, gpus);
        for (model, version, target) in &gauges.targets {
            let labels = vec![
                Label::new("model", model.to_string()),
                Label::new("version", version.to_string()),
            ];
            gauge(r, "switchyard_target_replicas", labels).set(f64::from(*target));
        }
        gauge(r, "switchyard_registry_revision", Vec::new()).set(gauges.revision as f64);
        for (task, live) in crate::tasks::live() {
            gauge(r, "switchyard_tasks", vec![Label::new("task", task)]).set(live as f64);
        }
        let mut text = self.recorder.handle().render();
        let mut families = PrometheusFamilies::default();
        for (model, version, figures) in &gauges.figures {
            figures.write_prometheus(model, version, &mut families);
        }
        families.finish(&mut text);
        let mut key_families = crate::telemetry::keys::KeyFamilies::default();
        for (name, figures) in &gauges.keys {
            figures.write_prometheus(name, &mut key_families);
        }
        key_families.finish(&mut text);
        crate::telemetry::capture::write_capture_families(
            &gauges.capture,
            &gauges.capture_sinks,
            &mut text,
        );
        text
    }

    /// The devices' memory: the host's and this process's share of it, every GPU a version runs
    /// on (NVML), and each accounted device's budget and reservations.
    fn render_devices(&self, gauges: &Gauges, gpus: std::collections::BTreeSet<u32>) {
        let r = &self.recorder;
        let set = |device: String, kind: &'static str, bytes: u64| {
            let labels = vec![Label::new("device", device), Label::new("kind", kind)];
            gauge(r, "switchyard_device_memory_bytes", labels).set(bytes as f64);
        };
        for (kind, bytes) in [
            ("total", memory::host_memory_bytes()),
            ("measured", memory::resident_set_bytes()),
        ] {
            if let Some(bytes) = bytes {
                set("cpu".into(), kind, bytes);
            }
        }
        for index in gpus {
            let device = Device::Cuda(index).to_string();
            let figures = memory::gpu_totals(index)
                .map(|(total, used)| [("total", total), ("used", used)])
                .into_iter()
                .flatten()
                .chain(memory::gpu_process_bytes(index).map(|bytes| ("measured", bytes)));
            for (kind, bytes) in figures {
                set(device.clone(), kind, bytes);
            }
        }
        for (device, budget, reserved) in &gauges.budgets {
            set(device.clone(), "budget", *budget);
            set(device.clone(), "reserved", *reserved);
        }
    }
}

/// The states a version's `switchyard_model_state` gauge can show.
pub const VERSION_STATES: [&str; 4] = ["LOADING", "READY", "FAILED", "PENDING"];

/// What the gauges show, gathered by the caller when `/metrics` is scraped.
#[derive(Default)]
pub struct Gauges {
    pub versions: Vec<VersionGauges>,
    /// Inference requests being handled.
    pub in_flight: usize,
    pub revision: i64,
    /// Accounted devices: id, budget and reserved bytes.
    pub budgets: Vec<(String, u64, u64)>,
    /// The autoscaler's target per scaled version.
    pub targets: Vec<(Arc<str>, Arc<str>, u32)>,
    /// The record of requests of every version this node has served (loaded once).
    pub figures: Vec<(Arc<str>, Arc<str>, Arc<VersionFigures>)>,
    /// Each inference API key name's record.
    pub keys: Vec<(Arc<str>, Arc<crate::telemetry::keys::KeyFigures>)>,
    /// Each captured model's events, and each capture sink's.
    pub capture: Vec<(String, crate::telemetry::capture::CaptureFiguresView)>,
    pub capture_sinks: Vec<(String, crate::telemetry::capture::SinkFiguresView)>,
}

/// One version's gauges.
pub struct VersionGauges {
    pub model: Arc<str>,
    pub version: Arc<str>,
    /// One of [`VERSION_STATES`].
    pub state: &'static str,
    pub replicas: usize,
    pub queue_depth: usize,
    /// Where a ready version runs.
    pub device: Option<Device>,
    pub memory_per_replica: Option<u64>,
    /// For a version that serves sequences.
    pub sequences: Option<SequenceGauges>,
}

/// A sequence model's gauges.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SequenceGauges {
    pub open: usize,
    /// Sequence slots across its replicas.
    pub slots: usize,
    /// Bytes of implicit state its open sequences hold.
    pub state_bytes: usize,
}

fn key(name: &'static str, labels: Vec<Label>) -> Key {
    Key::from_parts(name, labels)
}

static METADATA: Metadata<'static> = Metadata::new(module_path!(), metrics::Level::INFO, None);

fn counter(recorder: &PrometheusRecorder, name: &'static str, labels: Vec<Label>) -> Counter {
    recorder.register_counter(&key(name, labels), &METADATA)
}

fn gauge(recorder: &PrometheusRecorder, name: &'static str, labels: Vec<Label>) -> Gauge {
    recorder.register_gauge(&key(name, labels), &METADATA)
}

fn histogram(recorder: &PrometheusRecorder, name: &'static str, labels: Vec<Label>) -> Histogram {
    recorder.register_histogram(&key(name, labels), &METADATA)
}

/// The help lines of the families the exporter holds; the per-request families' are beside
/// them in [`PrometheusFamilies`].
fn describe(recorder: &PrometheusRecorder) {
    let counters = [
        (
            "switchyard_rejections_total",
            "Inference requests refused or failed, by reason.",
        ),
        (
            "switchyard_registry_write_failures_total",
            "Writes of version states to the registry that failed; each is retried with backoff.",
        ),
        (
            "switchyard_connections_refused_total",
            "Connections closed at once because their listener held connections.max.",
        ),
        (
            "switchyard_forwarded_requests_total",
            "Requests this node forwarded to a peer hosting their version, by outcome.",
        ),
        (
            "switchyard_cold_starts_total",
            "Replica loads of a version that held none (a cold start or a load on demand), by outcome.",
        ),
        (
            "switchyard_evictions_total",
            "Idle replicas unloaded to make room for another version, or because their device went over its budget.",
        ),
        (
            "switchyard_forwarded_received_total",
            "Requests that came marked as forwarded by another node of the cluster.",
        ),
    ];
    for (name, help) in counters {
        recorder.describe_counter(name.into(), Some(Unit::Count), help.into());
    }
    let histograms = [
        (
            "switchyard_cold_start_seconds",
            Unit::Seconds,
            "Time a cold start took, from its decision to the replica serving.",
        ),
        (
            "switchyard_queue_time_seconds",
            Unit::Seconds,
            "Time a request waited in its replica's queue (and for its batch to form).",
        ),
        (
            "switchyard_compute_time_seconds",
            Unit::Seconds,
            "Time of one model call (one batch).",
        ),
        (
            "switchyard_batch_size",
            Unit::Count,
            "Rows per model call along the batch axis (1 for models without one).",
        ),
    ];
    for (name, unit, help) in histograms {
        recorder.describe_histogram(name.into(), Some(unit), help.into());
    }
    let gauges = [
        (
            "switchyard_ready_replicas",
            "Replicas of a version that can serve.",
        ),
        (
            "switchyard_queue_depth",
            "Requests a version holds: queued or running.",
        ),
        (
            "switchyard_sequences_open",
            "Open sequences of a version that serves sequences (requests with a sequence_id).",
        ),
        (
            "switchyard_sequence_slots",
            "Sequences a version can hold open: [sequence] max_sequences times its ready replicas.",
        ),
        (
            "switchyard_sequence_state_bytes",
            "Bytes of implicit state ([[state]]) the gateway holds for a version's open sequences.",
        ),
        (
            "switchyard_model_state",
            "1 for the state a version is in (LOADING, READY, FAILED), else 0.",
        ),
        (
            "switchyard_model_memory_bytes",
            "Memory a ready version's replicas take on their device, as measured when they loaded and warmed up.",
        ),
        (
            "switchyard_target_replicas",
            "The replicas the autoscaler wants for a version (versions with max_replicas).",
        ),
        (
            "switchyard_in_flight_requests",
            "Inference requests being handled by the gateway.",
        ),
        (
            "switchyard_registry_revision",
            "The registry revision the gateway serves.",
        ),
        (
            "switchyard_build_info",
            "Always 1; the version label names the build.",
        ),
        (
            "switchyard_tasks",
            "Tasks of each kind the gateway started that have not finished (connections, streams, background loops).",
        ),
    ];
    for (name, help) in gauges {
        recorder.describe_gauge(name.into(), Some(Unit::Count), help.into());
    }
}
