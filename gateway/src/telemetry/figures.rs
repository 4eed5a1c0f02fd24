//! One record of what happened to each request, per version: [`VersionFigures`], written once
//! per request by [`VersionFigures::record`] (from `core::Gateway`'s one place for it, on every
//! path: local, in a sequence, forwarded) and read as views by everything that shows figures:
//!
//! - Prometheus: `switchyard_requests_total`, `switchyard_request_duration_seconds`,
//!   `switchyard_gateway_overhead_seconds` and `switchyard_routing_decisions_total` are drawn
//!   from it at scrape time ([`VersionFigures::write_prometheus`]);
//! - Triton's statistics: the success and failure counts and times ([`RequestTotals`]);
//! - the routing statistics (`routing::VersionStats`): the offered load, refusals, requests,
//!   errors, the latency histogram and the recent error rate;
//! - the dashboard's history, which samples the routing statistics.
//!
//! Relaxed atomic adds only, except the recent error window's short lock.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metrics_exporter_prometheus::formatting::sanitize_label_value;

use crate::error::{ERROR_TABLE, ErrorKind};
use crate::telemetry::metrics::Protocol;
use crate::telemetry::statistics::DurationFigure;

/// The span over which the recent error rate is judged (the current and the previous one).
const ERROR_WINDOW: Duration = Duration::from_secs(10);
/// Fewer requests than this in the window say nothing about a version's error rate.
const ERROR_RATE_MIN_REQUESTS: u64 = 20;

/// Success, then one per error kind ([`ErrorKind::index`]).
const OUTCOME_SLOTS: usize = 1 + ERROR_TABLE.len();

/// The bounds of Prometheus's latency histograms, in seconds.
pub const LATENCY_BOUNDS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// What one request came to, as the gateway saw it end.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// The protocol it came by, when this node served it; `None` when it was forwarded to a
    /// peer (which counts it as served there).
    pub served_by: Option<Protocol>,
    pub result: Result<(), ErrorKind>,
    /// Whether the caller's deadline, not the version's own timeout, was the one that could
    /// fire: missing it then says nothing about the version.
    pub caller_deadline: bool,
    /// From arrival to answer.
    pub elapsed: Duration,
    /// Of `elapsed`, the model's own time.
    pub compute: Duration,
}

impl Outcome {
    /// A request served here, received at `received`: its model's compute time, or the kind
    /// of error it ended in.
    pub fn served(
        protocol: Protocol,
        result: Result<Duration, ErrorKind>,
        caller_deadline: bool,
        received: std::time::Instant,
    ) -> Outcome {
        Outcome {
            served_by: Some(protocol),
            result: result.map(|_| ()),
            caller_deadline,
            elapsed: received.elapsed(),
            compute: result.unwrap_or_default(),
        }
    }

    /// A request this node forwarded to a peer, which ended as `result`.
    pub fn forwarded(
        result: Result<(), ErrorKind>,
        caller_deadline: bool,
        received: std::time::Instant,
    ) -> Outcome {
        Outcome {
            served_by: None,
            result,
            caller_deadline,
            elapsed: received.elapsed(),
            compute: Duration::ZERO,
        }
    }
}

/// Whether an outcome is the version's fault, for its error rate; `None` for outcomes that say
/// nothing about it (the caller's bad input, overload).
pub fn version_fault(result: Result<(), ErrorKind>, caller_deadline: bool) -> Option<bool> {
    match result {
        Err(ErrorKind::InvalidArgument | ErrorKind::Overloaded) => None,
        Err(ErrorKind::Internal | ErrorKind::Unavailable) => Some(true),
        Err(ErrorKind::DeadlineExceeded) => Some(!caller_deadline),
        _ => Some(false),
    }
}

/// The figures of one version.
pub struct VersionFigures {
    /// Per protocol, requests served here by outcome.
    outcomes: [[AtomicU64; OUTCOME_SLOTS]; 2],
    /// Triton's cumulative times of the requests served here (all protocols).
    success_ns: AtomicU64,
    fail_ns: AtomicU64,
    last_inference_ms: AtomicU64,
    /// Per protocol, the time of each request answered, and of the gateway's share of it.
    duration: [BucketHistogram; 2],
    overhead: [BucketHistogram; 2],
    /// Requests sent here before any queue could refuse them: the offered load.
    routed: AtomicU64,
    /// Of those, the routing policy's decisions for a version served on this node.
    routed_here: AtomicU64,
    /// Requests its queues refused (429): the sign that it carries less than it was given.
    refused: AtomicU64,
    /// Requests whose outcome says something of the version, and those that were its fault.
    judged: AtomicU64,
    faults: AtomicU64,
    /// The time of the judged requests that were not its fault.
    latency: LatencyHistogram,
    recent: Mutex<RecentWindow>,
    /// Requests that found the version holding no replica and waited for a load: the misses
    /// of the hit rate.
    cold_waits: AtomicU64,
    /// Whether this node has loaded the version once: Prometheus shows it from then on.
    exposed: AtomicBool,
}

impl Default for VersionFigures {
    fn default() -> Self {
        VersionFigures {
            outcomes: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            success_ns: AtomicU64::new(0),
            fail_ns: AtomicU64::new(0),
            last_inference_ms: AtomicU64::new(0),
            duration: std::array::from_fn(|_| BucketHistogram::default()),
            overhead: std::array::from_fn(|_| BucketHistogram::default()),
            routed: AtomicU64::new(0),
            routed_here: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            judged: AtomicU64::new(0),
            faults: AtomicU64::new(0),
            latency: LatencyHistogram::new(),
            cold_waits: AtomicU64::new(0),
            recent: Mutex::new(RecentWindow::default()),
            exposed: AtomicBool::new(false),
        }
    }
}

impl VersionFigures {
    /// Records a request's outcome, once, in every figure it belongs to. Returns whether it
    /// was the version's fault, when the outcome says something of the version.
    pub fn record(&self, outcome: &Outcome) -> Option<bool> {
        if let Some(protocol) = outcome.served_by {
            let protocol = protocol as usize;
            let slot = outcome.result.map_or_else(|kind| 1 + kind.index(), |()| 0);
            self.outcomes[protocol][slot].fetch_add(1, Ordering::Relaxed);
            let nanos = nanos(outcome.elapsed);
            if outcome.result.is_ok() {
                self.success_ns.fetch_add(nanos, Ordering::Relaxed);
                self.duration[protocol].record(outcome.elapsed);
                self.overhead[protocol].record(outcome.elapsed.saturating_sub(outcome.compute));
            } else {
                self.fail_ns.fetch_add(nanos, Ordering::Relaxed);
            }
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(0));
            self.last_inference_ms.store(now_ms, Ordering::Relaxed);
        }
        if outcome.result == Err(ErrorKind::Overloaded) {
            self.refused();
        }
        let fault = version_fault(outcome.result, outcome.caller_deadline)?;
        self.judged.fetch_add(1, Ordering::Relaxed);
        if fault {
            self.faults.fetch_add(1, Ordering::Relaxed);
        } else {
            self.latency.record(outcome.elapsed);
        }
        let mut recent = lock(&self.recent);
        recent.roll(Instant::now());
        recent.requests += 1;
        recent.errors += u64::from(fault);
        Some(fault)
    }

    /// Marks the version as one this node serves: Prometheus shows its series from now on,
    /// zeros included.
    pub fn expose(&self) {
        self.exposed.store(true, Ordering::Relaxed);
    }

    pub fn is_exposed(&self) -> bool {
        self.exposed.load(Ordering::Relaxed)
    }

    /// Counts a request sent here: by the routing policy to a version this node serves
    /// (`by_policy_here`), or otherwise (to a peer, or refused before it was decoded).
    pub fn routed(&self, by_policy_here: bool) {
        self.routed.fetch_add(1, Ordering::Relaxed);
        if by_policy_here {
            self.routed_here.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a request its queues had no room for before it reached them.
    pub fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// When a request served here last ended, in milliseconds since the epoch; 0 before any.
    pub fn last_served_ms(&self) -> u64 {
        self.last_inference_ms.load(Ordering::Relaxed)
    }

    /// Counts a request that found no replica and waited for one to load.
    pub fn cold_wait(&self) {
        self.cold_waits.fetch_add(1, Ordering::Relaxed);
    }

    pub fn cold_waits(&self) -> u64 {
        self.cold_waits.load(Ordering::Relaxed)
    }

    pub fn routed_total(&self) -> u64 {
        self.routed.load(Ordering::Relaxed)
    }

    pub fn refused_total(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Requests whose outcome says something of the version.
    pub fn requests(&self) -> u64 {
        self.judged.load(Ordering::Relaxed)
    }

    /// Of those, the version's faults.
    pub fn errors(&self) -> u64 {
        self.faults.load(Ordering::Relaxed)
    }

    pub fn latency(&self) -> &LatencyHistogram {
        &self.latency
    }

    /// Errors among recent requests, once there are enough of them to judge.
    pub fn recent_error_rate(&self) -> Option<f64> {
        lock(&self.recent).error_rate(Instant::now())
    }

    /// Triton's success and failure figures, over the requests served here.
    pub fn request_totals(&self) -> RequestTotals {
        // Success is slot 0 of each protocol; every other slot is a failure.
        let (mut success, mut fail) = (0, 0);
        for by_protocol in &self.outcomes {
            success += by_protocol[0].load(Ordering::Relaxed);
            fail += by_protocol[1..]
                .iter()
                .map(|count| count.load(Ordering::Relaxed))
                .sum::<u64>();
        }
        RequestTotals {
            success: DurationFigure {
                count: success,
                ns: self.success_ns.load(Ordering::Relaxed),
            },
            fail: DurationFigure {
                count: fail,
                ns: self.fail_ns.load(Ordering::Relaxed),
            },
            last_inference_ms: self.last_inference_ms.load(Ordering::Relaxed),
        }
    }

    /// This version's series of the per-request families, in the exporter's text format.
    pub fn write_prometheus(&self, model: &str, version: &str, out: &mut PrometheusFamilies) {
        let labels = format!(
            "model=\"{}\",version=\"{}\"",
            sanitize_label_value(model),
            sanitize_label_value(version)
        );
        for protocol in Protocol::ALL {
            let by_protocol = format!("{labels},protocol=\"{}\"", protocol.as_str());
            let counts = &self.outcomes[protocol as usize];
            let _ = writeln!(
                out.requests,
                "switchyard_requests_total{{{by_protocol},outcome=\"success\"}} {}",
                counts[0].load(Ordering::Relaxed)
            );
            // Kinds that share an outcome label (a full queue and an oversized request are
            // both `overloaded`) are one series; kinds that never reach a version have none.
            let mut by_label: Vec<(&str, u64)> = Vec::new();
            for row in ERROR_TABLE
                .iter()
                .filter(|row| ErrorKind::INFERENCE.contains(&row.kind))
            {
                let count = counts[1 + row.kind.index()].load(Ordering::Relaxed);
                match by_label.iter_mut().find(|(label, _)| *label == row.outcome) {
                    Some((_, total)) => *total += count,
                    None => by_label.push((row.outcome, count)),
                }
            }
            for (label, count) in by_label {
                let _ = writeln!(
                    out.requests,
                    "switchyard_requests_total{{{by_protocol},outcome=\"{label}\"}} {count}"
                );
            }
            self.duration[protocol as usize].write(
                "switchyard_request_duration_seconds",
                &by_protocol,
                &mut out.duration,
            );
            self.overhead[protocol as usize].write(
                "switchyard_gateway_overhead_seconds",
                &by_protocol,
                &mut out.overhead,
            );
        }
        let _ = writeln!(
            out.routed,
            "switchyard_routing_decisions_total{{{labels}}} {}",
            self.routed_here.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out.cold_waits,
            "switchyard_cold_waits_total{{{labels}}} {}",
            self.cold_waits()
        );
    }
}

/// The per-request families of every version, gathered series by series and written out
/// family by family.
#[derive(Default)]
pub struct PrometheusFamilies {
    requests: String,
    duration: String,
    overhead: String,
    routed: String,
    cold_waits: String,
}

impl PrometheusFamilies {
    /// The families, each under its help and type lines, as the exporter writes its own.
    pub fn finish(self, out: &mut String) {
        let families = [
            (
                "switchyard_requests_total",
                "Inference requests that reached a version, by protocol and outcome.",
                "counter",
                self.requests,
            ),
            (
                "switchyard_request_duration_seconds",
                "Time from receiving a request to its answer, for successful requests.",
                "histogram",
                self.duration,
            ),
            (
                "switchyard_gateway_overhead_seconds",
                "Request duration less the model's compute time: what the gateway adds.",
                "histogram",
                self.overhead,
            ),
            (
                "switchyard_routing_decisions_total",
                "Requests naming no version that the routing policy sent to each version.",
                "counter",
                self.routed,
            ),
            (
                "switchyard_cold_waits_total",
                "Requests that found their version holding no replica (scaled to zero or evicted) and waited for a load: the misses of the hit rate.",
                "counter",
                self.cold_waits,
            ),
        ];
        write_families(out, families);
    }
}

/// Families drawn at scrape time, each as (name, help, type, its series), written under their
/// help and type lines as the exporter writes its own; a family with no series is left out.
pub(crate) fn write_families(
    out: &mut String,
    families: impl IntoIterator<Item = (&'static str, &'static str, &'static str, String)>,
) {
    for (name, help, kind, series) in families {
        if series.is_empty() {
            continue;
        }
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        out.push_str(&series);
        out.push('\n');
    }
}

/// Triton's figures of the requests served here since some moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestTotals {
    pub success: DurationFigure,
    pub fail: DurationFigure,
    /// Milliseconds since the epoch of the last one; 0 before any.
    pub last_inference_ms: u64,
}

impl RequestTotals {
    /// What happened after `earlier`.
    pub fn since(&self, earlier: &RequestTotals) -> RequestTotals {
        let minus = |now: DurationFigure, then: DurationFigure| DurationFigure {
            count: now.count.saturating_sub(then.count),
            ns: now.ns.saturating_sub(then.ns),
        };
        let success = minus(self.success, earlier.success);
        let fail = minus(self.fail, earlier.fail);
        let any = success.count + fail.count > 0;
        RequestTotals {
            success,
            fail,
            last_inference_ms: if any { self.last_inference_ms } else { 0 },
        }
    }
}

/// A histogram over [`LATENCY_BOUNDS`], as Prometheus shows one: cumulative buckets, a count
/// and a sum in seconds.
#[derive(Default)]
pub(crate) struct BucketHistogram {
    /// Samples at or below each bound and above the one before.
    buckets: [AtomicU64; LATENCY_BOUNDS.len()],
    count: AtomicU64,
    /// The sum of the samples in seconds, as f64 bits.
    sum: AtomicU64,
}

impl BucketHistogram {
    pub(crate) fn record(&self, sample: Duration) {
        let seconds = sample.as_secs_f64();
        if let Some(bucket) = LATENCY_BOUNDS.iter().position(|bound| seconds <= *bound) {
            self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + seconds).to_bits())
            });
    }

    pub(crate) fn write(&self, name: &str, labels: &str, out: &mut String) {
        let mut cumulative = 0;
        for (bound, bucket) in LATENCY_BOUNDS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let sum = f64::from_bits(self.sum.load(Ordering::Relaxed));
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

fn nanos(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Debug, Default)]
struct RecentWindow {
    started: Option<Instant>,
    requests: u64,
    errors: u64,
    previous_requests: u64,
    previous_errors: u64,
}

impl RecentWindow {
    fn roll(&mut self, now: Instant) {
        let started = *self.started.get_or_insert(now);
        let elapsed = now.saturating_duration_since(started);
        if elapsed >= ERROR_WINDOW {
            let stale = elapsed >= 2 * ERROR_WINDOW;
            self.previous_requests = if stale { 0 } else { self.requests };
            self.previous_errors = if stale { 0 } else { self.errors };
            self.requests = 0;
            self.errors = 0;
            self.started = Some(now);
        }
    }

    fn error_rate(&mut self, now: Instant) -> Option<f64> {
        self.roll(now);
        let requests = self.requests + self.previous_requests;
        (requests >= ERROR_RATE_MIN_REQUESTS)
            .then(|| (self.errors + self.previous_errors) as f64 / requests as f64)
    }
}

/// Latency in logarithmic buckets (four per power of two of microseconds), lock-free.
pub struct LatencyHistogram {
    buckets: Vec<AtomicU64>,
}

const SUB_BUCKETS: u32 = 4;
const LATENCY_BUCKETS: usize = 40 * SUB_BUCKETS as usize;

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram::new()
    }
}

impl LatencyHistogram {
    pub fn new() -> LatencyHistogram {
        LatencyHistogram {
            buckets: (0..LATENCY_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn index(micros: u64) -> usize {
        let micros = micros.max(1);
        let exponent = 63 - micros.leading_zeros();
        let fraction = if exponent >= 2 {
            (micros >> (exponent - 2)) & 0b11
        } else {
            (micros << (2 - exponent)) & 0b11
        };
        ((exponent * SUB_BUCKETS) as usize + fraction as usize).min(LATENCY_BUCKETS - 1)
    }

    /// The upper bound of a bucket, in microseconds.
    fn upper_bound(index: usize) -> f64 {
        let exponent = (index / SUB_BUCKETS as usize) as i32;
        let fraction = (index % SUB_BUCKETS as usize) as f64;
        2f64.powi(exponent) * (1.0 + (fraction + 1.0) / f64::from(SUB_BUCKETS))
    }

    pub fn record(&self, latency: Duration) {
        let index = Self::index(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
    }

    /// The latency below which a fraction `q` of requests fell, in milliseconds (at most 19%
    /// above the true value: a bucket's width).
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        Self::quantile_ms_of(&self.counts(), q)
    }

    /// Every bucket's count as of now: two readings' difference is the histogram of what
    /// happened between them.
    pub fn counts(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }

    /// [`LatencyHistogram::quantile_ms`] of bucket counts taken with [`LatencyHistogram::counts`].
    pub fn quantile_ms_of(counts: &[u64], q: f64) -> Option<f64> {
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (index, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(Self::upper_bound(index) / 1000.0);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(protocol: Protocol, result: Result<(), ErrorKind>, ms: u64) -> Outcome {
        Outcome {
            served_by: Some(protocol),
            result,
            caller_deadline: false,
            elapsed: Duration::from_millis(ms),
            compute: Duration::from_millis(ms / 2),
        }
    }

    #[test]
    fn one_record_feeds_every_view() {
        let figures = VersionFigures::default();
        assert_eq!(
            figures.record(&outcome(Protocol::Http, Ok(()), 4)),
            Some(false)
        );
        assert_eq!(
            figures.record(&outcome(Protocol::Grpc, Err(ErrorKind::Internal), 2)),
            Some(true)
        );
        // The caller's fault and a full queue say nothing of the version.
        assert_eq!(
            figures.record(&outcome(Protocol::Http, Err(ErrorKind::InvalidArgument), 1)),
            None
        );
        assert_eq!(
            figures.record(&outcome(Protocol::Http, Err(ErrorKind::Overloaded), 1)),
            None
        );
        // Forwarded: judged here, served (and counted for Triton and Prometheus) there.
        let forwarded = Outcome {
            served_by: None,
            ..outcome(Protocol::Http, Ok(()), 8)
        };
        assert_eq!(figures.record(&forwarded), Some(false));

        assert_eq!((figures.requests(), figures.errors()), (3, 1));
        assert_eq!(figures.refused_total(), 1);
        let totals = figures.request_totals();
        assert_eq!((totals.success.count, totals.fail.count), (1, 3));
        assert_eq!(totals.success.ns, 4_000_000);
        assert!(totals.last_inference_ms > 0);
        let quiet = totals.since(&totals);
        assert_eq!((quiet.success.count, quiet.last_inference_ms), (0, 0));

        let mut families = PrometheusFamilies::default();
        figures.write_prometheus("m", "1", &mut families);
        let mut text = String::new();
        families.finish(&mut text);
        for line in [
            "switchyard_requests_total{model=\"m\",version=\"1\",protocol=\"http\",outcome=\"success\"} 1",
            "switchyard_requests_total{model=\"m\",version=\"1\",protocol=\"grpc\",outcome=\"internal\"} 1",
            "switchyard_requests_total{model=\"m\",version=\"1\",protocol=\"http\",outcome=\"overloaded\"} 1",
            "switchyard_request_duration_seconds_bucket{model=\"m\",version=\"1\",protocol=\"http\",le=\"0.0025\"} 0",
            "switchyard_request_duration_seconds_bucket{model=\"m\",version=\"1\",protocol=\"http\",le=\"0.005\"} 1",
            "switchyard_request_duration_seconds_bucket{model=\"m\",version=\"1\",protocol=\"http\",le=\"+Inf\"} 1",
            "switchyard_request_duration_seconds_sum{model=\"m\",version=\"1\",protocol=\"http\"} 0.004",
            "switchyard_gateway_overhead_seconds_count{model=\"m\",version=\"1\",protocol=\"http\"} 1",
            "switchyard_routing_decisions_total{model=\"m\",version=\"1\"} 0",
            "# TYPE switchyard_request_duration_seconds histogram",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }

    #[test]
    fn latency_quantiles_land_in_the_right_bucket() {
        let histogram = LatencyHistogram::new();
        for micros in 1..=1000u64 {
            histogram.record(Duration::from_micros(micros * 10));
        }
        let p50 = histogram.quantile_ms(0.5).unwrap();
        let p99 = histogram.quantile_ms(0.99).unwrap();
        assert!((5.0..=5.0 * 1.2).contains(&p50), "{p50}");
        assert!((9.9..=9.9 * 1.2).contains(&p99), "{p99}");
        for micros in [1u64, 3, 7, 1000, 123_456] {
            let index = LatencyHistogram::index(micros);
            assert!(
                LatencyHistogram::upper_bound(index) >= micros as f64,
                "{micros}"
            );
            assert!(index == 0 || LatencyHistogram::upper_bound(index - 1) <= micros as f64);
        }
    }

    #[test]
    fn the_error_rate_needs_enough_requests_and_forgets() {
        let mut window = RecentWindow::default();
        let start = Instant::now();
        window.roll(start);
        window.requests = 10;
        window.errors = 10;
        assert_eq!(window.error_rate(start), None, "too few to judge");
        window.requests = 40;
        assert_eq!(window.error_rate(start), Some(0.25));
        // One window later the old counts still weigh; two windows later they are gone.
        assert_eq!(window.error_rate(start + ERROR_WINDOW), Some(0.25));
        assert_eq!(window.error_rate(start + ERROR_WINDOW * 3), None);
    }

    #[test]
    fn buckets_hold_what_is_at_or_below_their_bound() {
        let histogram = BucketHistogram::default();
        histogram.record(Duration::from_micros(50));
        histogram.record(Duration::from_secs(11));
        let mut text = String::new();
        histogram.write("h", "a=\"b\"", &mut text);
        assert!(
            text.contains("h_bucket{a=\"b\",le=\"0.00005\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("h_bucket{a=\"b\",le=\"10\"} 1\n"), "{text}");
        assert!(text.contains("h_bucket{a=\"b\",le=\"+Inf\"} 2\n"), "{text}");
        assert!(text.contains("h_count{a=\"b\"} 2\n"), "{text}");
    }
}
