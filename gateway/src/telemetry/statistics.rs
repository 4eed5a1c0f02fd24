//! Triton's statistics extension: per version, the counts and cumulative durations that
//! `perf_analyzer` and `tritonclient` read (`GET /v2/models/{m}/stats`, gRPC
//! `ModelStatistics`). Relaxed atomic adds on the request path, a short lock per model
//! execution for the per-batch-size figures; kept whether or not Prometheus metrics are on.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::telemetry::figures::RequestTotals;

/// A count and a cumulative duration, as Triton reports them.
#[derive(Default)]
pub struct DurationStat {
    count: AtomicU64,
    ns: AtomicU64,
}

impl DurationStat {
    pub fn add(&self, times: u64, elapsed: Duration) {
        self.count.fetch_add(times, Ordering::Relaxed);
        self.ns.fetch_add(nanos(elapsed), Ordering::Relaxed);
    }

    pub fn read(&self) -> DurationFigure {
        DurationFigure {
            count: self.count.load(Ordering::Relaxed),
            ns: self.ns.load(Ordering::Relaxed),
        }
    }
}

fn nanos(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DurationFigure {
    pub count: u64,
    pub ns: u64,
}

impl DurationFigure {
    fn add(&mut self, elapsed: Duration) {
        self.count += 1;
        self.ns = self.ns.saturating_add(nanos(elapsed));
    }
}

/// The figures of one batch size: executions, and their input, model and output times.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct BatchFigures {
    pub batch_size: u64,
    pub compute_input: DurationFigure,
    pub compute_infer: DurationFigure,
    pub compute_output: DurationFigure,
}

/// The times of one model execution: preparing the batch's inputs, running the model, and
/// splitting its outputs among the requests.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExecutionTimes {
    pub input: Duration,
    pub infer: Duration,
    pub output: Duration,
}

/// One version's statistics of model executions since it loaded. The requests' success and
/// failure figures are a view of the version's one record
/// ([`crate::telemetry::figures::VersionFigures`]), handed to [`Statistics::snapshot`].
#[derive(Default)]
pub struct Statistics {
    /// Time each request waited in its replica's queue.
    pub queue: DurationStat,
    pub compute_input: DurationStat,
    pub compute_infer: DurationStat,
    pub compute_output: DurationStat,
    /// Executions, and the time the replicas were busy with them (input, model and output),
    /// each execution counted once: the compute figures above count it once per request.
    pub busy: DurationStat,
    /// Rows inferred (a request of batch 8 counts 8).
    inference_count: AtomicU64,
    /// Model executions (a batch of several requests counts 1).
    execution_count: AtomicU64,
    /// By batch size; sizes are bounded by the version's maximum batch size.
    batches: Mutex<BTreeMap<u64, BatchFigures>>,
}

impl Statistics {
    /// A model execution that served `requests` requests of `rows` rows in all (0 for a
    /// model without a batch axis).
    pub fn execution(&self, requests: usize, rows: usize, times: ExecutionTimes) {
        let requests = requests as u64;
        let batch_size = (rows as u64).max(1);
        self.inference_count
            .fetch_add((rows as u64).max(requests), Ordering::Relaxed);
        self.execution_count.fetch_add(1, Ordering::Relaxed);
        // Triton counts the compute figures per request, each with its execution's whole time
        // (a backend reports the batch's timestamps on every request in it), so that a
        // request's success time is its queue time, plus the compute, plus what is left:
        // perf_analyzer's server-side breakdown subtracts them in that way.
        self.busy.add(
            1,
            times
                .input
                .saturating_add(times.infer)
                .saturating_add(times.output),
        );
        let each = u32::try_from(requests).unwrap_or(u32::MAX);
        self.compute_input
            .add(requests, times.input.saturating_mul(each));
        self.compute_infer
            .add(requests, times.infer.saturating_mul(each));
        self.compute_output
            .add(requests, times.output.saturating_mul(each));
        let mut batches = self
            .batches
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let figures = batches.entry(batch_size).or_insert(BatchFigures {
            batch_size,
            ..BatchFigures::default()
        });
        figures.compute_input.add(times.input);
        figures.compute_infer.add(times.infer);
        figures.compute_output.add(times.output);
    }

    /// The statistics, with `requests`: the requests served since the load.
    pub fn snapshot(&self, requests: RequestTotals) -> StatisticsSnapshot {
        StatisticsSnapshot {
            last_inference: requests.last_inference_ms,
            inference_count: self.inference_count.load(Ordering::Relaxed),
            execution_count: self.execution_count.load(Ordering::Relaxed),
            success: requests.success,
            fail: requests.fail,
            queue: self.queue.read(),
            compute_input: self.compute_input.read(),
            compute_infer: self.compute_infer.read(),
            compute_output: self.compute_output.read(),
            batches: self
                .batches
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .values()
                .copied()
                .collect(),
        }
    }
}

/// What a statistics request shows of one version.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatisticsSnapshot {
    /// Milliseconds since the epoch; 0 before the first request.
    pub last_inference: u64,
    pub inference_count: u64,
    pub execution_count: u64,
    pub success: DurationFigure,
    pub fail: DurationFigure,
    pub queue: DurationFigure,
    pub compute_input: DurationFigure,
    pub compute_infer: DurationFigure,
    pub compute_output: DurationFigure,
    pub batches: Vec<BatchFigures>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executions_are_counted_per_request_and_per_batch_size() {
        let statistics = Statistics::default();
        let ms = Duration::from_millis;
        let times = ExecutionTimes {
            input: ms(1),
            infer: ms(4),
            output: ms(2),
        };
        statistics.execution(3, 5, times);
        statistics.execution(1, 0, times);
        let requests = RequestTotals {
            success: DurationFigure {
                count: 1,
                ns: 10_000_000,
            },
            fail: DurationFigure { count: 1, ns: 0 },
            last_inference_ms: 1_700_000_000_001,
        };
        let snapshot = statistics.snapshot(requests);
        assert_eq!(snapshot.inference_count, 6);
        assert_eq!(snapshot.execution_count, 2);
        // Every request of an execution is counted with the execution's whole time; the busy
        // time counts each execution once.
        assert_eq!(
            snapshot.compute_infer,
            DurationFigure {
                count: 4,
                ns: 16_000_000
            }
        );
        assert_eq!(
            statistics.busy.read(),
            DurationFigure {
                count: 2,
                ns: 14_000_000
            }
        );
        assert_eq!(
            snapshot.success,
            DurationFigure {
                count: 1,
                ns: 10_000_000
            }
        );
        assert_eq!(snapshot.fail.count, 1);
        assert!(snapshot.last_inference > 1_700_000_000_000);
        let sizes: Vec<u64> = snapshot.batches.iter().map(|b| b.batch_size).collect();
        assert_eq!(sizes, [1, 5]);
        assert_eq!(
            snapshot.batches[1].compute_output,
            DurationFigure {
                count: 1,
                ns: 2_000_000
            }
        );
    }
}
