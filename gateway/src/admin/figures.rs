//! A few minutes of each version's live figures (request rate, error rate, p50 and p99), kept
//! by the gateway so that the dashboard's charts have history the moment the page opens.
//!
//! The upkeep loop calls [`FigureHistory::sample`] every [`SAMPLE_EVERY`]. Each sample is the
//! difference between two readings of a version's counters and latency buckets, so the
//! quantiles are of that interval alone, not of the version's whole life.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::api::{FigureSeries, VersionSeries as SeriesView};
use super::{AdminState, ApiResult, ok};
use crate::core::table::ModelTable;
use crate::routing::{LatencyHistogram, VersionStats};

pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Five minutes of samples.
const SAMPLES_KEPT: usize = 150;

/// One version's series, aligned with its model's `times` (None where it did not exist or
/// served nothing).
#[derive(Default)]
struct VersionSeries {
    /// The counters as last read, to take the next difference from.
    last: Option<Reading>,
    requests_per_s: VecDeque<Option<f64>>,
    error_rate: VecDeque<Option<f64>>,
    p50_ms: VecDeque<Option<f64>>,
    p99_ms: VecDeque<Option<f64>>,
}

struct Reading {
    /// The stats object read: a reloaded version starts new counters.
    stats: Arc<VersionStats>,
    requests: u64,
    errors: u64,
    buckets: Vec<u64>,
}

#[derive(Default)]
struct ModelSeries {
    /// Unix time of each sample, in seconds.
    times: VecDeque<f64>,
    versions: BTreeMap<Arc<str>, VersionSeries>,
}

#[derive(Default)]
pub struct FigureHistory {
    models: Mutex<BTreeMap<Arc<str>, ModelSeries>>,
}

impl FigureHistory {
    pub fn new() -> Arc<FigureHistory> {
        Arc::new(FigureHistory::default())
    }

    /// Takes one sample of every version in the table. Models that left the table are
    /// forgotten, and so are versions with nothing left in the window.
    pub fn sample(&self, table: &ModelTable) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let mut models = self.models.lock().unwrap_or_else(PoisonError::into_inner);
        models.retain(|name, _| table.models.contains_key(name));
        for (name, model) in &table.models {
            let series = models.entry(name.clone()).or_default();
            let elapsed = series.times.back().map(|last| now - last);
            series.times.push_back(now);
            let filled = series.times.len() - 1;
            for version in &model.versions {
                let entry = series
                    .versions
                    .entry(version.label.clone())
                    .or_insert_with(|| VersionSeries::padded(filled));
                entry.push(Reading::of(&version.stats), elapsed);
            }
            for (label, entry) in series.versions.iter_mut() {
                if !model.versions.iter().any(|v| v.label == *label) {
                    entry.last = None;
                    entry.push_gap();
                }
            }
            if series.times.len() > SAMPLES_KEPT {
                series.times.pop_front();
                for entry in series.versions.values_mut() {
                    entry.pop_front();
                }
            }
            series.versions.retain(|_, entry| entry.has_any());
        }
    }

    /// A model's series (`None` for a model never sampled).
    fn model_series(&self, model: &str) -> Option<FigureSeries> {
        let models = self.models.lock().unwrap_or_else(PoisonError::into_inner);
        let series = models.get(model)?;
        let versions = series
            .versions
            .iter()
            .map(|(label, entry)| {
                let view = SeriesView {
                    requests_per_s: entry.requests_per_s.iter().copied().collect(),
                    error_rate: entry.error_rate.iter().copied().collect(),
                    p50_ms: entry.p50_ms.iter().copied().collect(),
                    p99_ms: entry.p99_ms.iter().copied().collect(),
                };
                (label.to_string(), view)
            })
            .collect();
        Some(FigureSeries {
            model: model.to_owned(),
            interval_s: SAMPLE_EVERY.as_secs_f64(),
            times: series.times.iter().copied().collect(),
            versions,
        })
    }
}

impl Reading {
    fn of(stats: &Arc<VersionStats>) -> Reading {
        Reading {
            stats: stats.clone(),
            requests: stats.requests(),
            errors: stats.errors(),
            buckets: stats.latency().counts(),
        }
    }
}

impl VersionSeries {
    fn padded(gaps: usize) -> VersionSeries {
        let mut series = VersionSeries::default();
        for _ in 0..gaps {
            series.push_gap();
        }
        series
    }

    /// The figures between the last reading and `now`, `elapsed` seconds apart.
    fn push(&mut self, now: Reading, elapsed: Option<f64>) {
        let last = self
            .last
            .take()
            .filter(|last| Arc::ptr_eq(&last.stats, &now.stats));
        match (last, elapsed) {
            (Some(last), Some(elapsed)) if elapsed > 0.0 => {
                let requests = now.requests.saturating_sub(last.requests);
                let errors = now.errors.saturating_sub(last.errors);
                let buckets: Vec<u64> = now
                    .buckets
                    .iter()
                    .zip(&last.buckets)
                    .map(|(now, last)| now.saturating_sub(*last))
                    .collect();
                self.requests_per_s
                    .push_back(Some(requests as f64 / elapsed));
                self.error_rate
                    .push_back((requests > 0).then(|| errors as f64 / requests as f64));
                self.p50_ms
                    .push_back(LatencyHistogram::quantile_ms_of(&buckets, 0.5));
                self.p99_ms
                    .push_back(LatencyHistogram::quantile_ms_of(&buckets, 0.99));
            }
            // The first reading of a version: nothing to take a difference from yet.
            _ => self.push_gap(),
        }
        self.last = Some(now);
    }

    fn push_gap(&mut self) {
        self.requests_per_s.push_back(None);
        self.error_rate.push_back(None);
        self.p50_ms.push_back(None);
        self.p99_ms.push_back(None);
    }

    fn pop_front(&mut self) {
        self.requests_per_s.pop_front();
        self.error_rate.pop_front();
        self.p50_ms.pop_front();
        self.p99_ms.pop_front();
    }

    /// Whether the window still holds anything of this version (or it is still being read).
    fn has_any(&self) -> bool {
        self.last.is_some() || self.requests_per_s.iter().any(Option::is_some)
    }
}

/// The last five minutes of a model's figures per version, one point every two seconds, from this gateway: requests per second, error rate, and p50/p99 latency in milliseconds (of that interval's requests; null where none).
#[utoipa::path(
    get,
    path = "/v1/models/{m}/figures",
    params(("m" = String, Path, description = "the model", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")),
    responses((status = 200, description = "success", body = super::api::FigureSeries), (status = 404, response = super::openapi::ErrorResponse))
)]
pub(super) async fn figures(
    State(state): State<AdminState>,
    Path(model): Path<String>,
) -> ApiResult {
    // A model this gateway serves but has not sampled yet has no points.
    let table = state.gateway.snapshot();
    table.model(&model)?;
    let body = state
        .figures
        .model_series(&model)
        .unwrap_or_else(|| FigureSeries {
            model,
            interval_s: SAMPLE_EVERY.as_secs_f64(),
            times: Vec::new(),
            versions: BTreeMap::new(),
        });
    ok(StatusCode::OK, body)
}
