//! Evaluation: labelled datasets, the metrics of a version's answers on them, and the
//! evaluation job the gateway runs for `POST /v1/models/{m}/evaluations`. The command-line
//! `switchyard eval` (`app::eval`) reads the same datasets and scores the same way, over the
//! wire.

pub mod dataset;
pub mod job;
pub mod metrics;

use std::collections::BTreeMap;

use serde_json::Value;
use switchyard_runtimes::{DataType, Tensor};

pub use dataset::Dataset;

/// One request's answer: the chosen output's values row after row, and how many values make
/// one example; `None` for a request that failed.
pub type Answer = Option<(Vec<f64>, usize)>;

/// The examples `[start, end)` of each request, `batch` at a time.
pub fn chunks(examples: usize, batch: usize) -> Vec<(usize, usize)> {
    (0..examples)
        .step_by(batch.max(1))
        .map(|start| (start, (start + batch).min(examples)))
        .collect()
}

/// The classification metrics of the answers to `chunks` of the dataset. A failed request's
/// examples count as wrong answers, in no class's column. One score per example is class 1 at
/// `threshold` or above; two are class 0's and class 1's logits; more, the argmax.
pub fn classify(
    labels: &[i64],
    chunks: &[(usize, usize)],
    answers: &[Answer],
    threshold: f64,
) -> metrics::Classification {
    let examples = labels.len();
    let mut predicted = vec![-1i64; examples];
    let mut scores = vec![f64::NAN; examples];
    let mut widest = 0;
    for ((start, end), answer) in chunks.iter().zip(answers) {
        let Some((values, width)) = answer else {
            continue;
        };
        if values.len() != (end - start) * width || *width == 0 {
            continue;
        }
        widest = widest.max(*width);
        for (offset, row) in values.chunks(*width).enumerate() {
            let (class, score) = match row {
                [score] => (i64::from(*score >= threshold), *score),
                // Their difference orders the examples as class 1's probability does.
                [zero, one] => (i64::from(one > zero), one - zero),
                _ => {
                    let best = row
                        .iter()
                        .enumerate()
                        .max_by(|a, b| a.1.total_cmp(b.1))
                        .map_or(0, |(i, _)| i);
                    (best as i64, 0.0)
                }
            };
            predicted[start + offset] = class;
            scores[start + offset] = score;
        }
    }
    let answered: Vec<usize> = (0..examples).filter(|&i| predicted[i] >= 0).collect();
    let kept_labels: Vec<i64> = answered.iter().map(|&i| labels[i]).collect();
    let kept_predicted: Vec<i64> = answered.iter().map(|&i| predicted[i]).collect();
    let kept_scores: Vec<f64> = answered.iter().map(|&i| scores[i]).collect();
    let mut classification = metrics::classification(
        &kept_labels,
        &kept_predicted,
        (widest <= 2).then_some(kept_scores.as_slice()),
    );
    classification.examples = examples;
    if examples > 0 {
        classification.accuracy =
            classification.accuracy * kept_labels.len() as f64 / examples as f64;
    }
    classification
}

/// One version's report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VersionReport {
    #[serde(flatten)]
    pub classification: metrics::Classification,
    pub latency_ms: BTreeMap<&'static str, Option<f64>>,
    pub examples_per_s: f64,
    pub requests: usize,
    pub failed_requests: usize,
    pub first_error: Option<String>,
}

impl VersionReport {
    /// From the answers to every chunk, their latencies (ms) and the time it all took.
    pub fn new(
        dataset: &Dataset,
        chunks: &[(usize, usize)],
        answers: &[Answer],
        mut latencies: Vec<f64>,
        elapsed: std::time::Duration,
        threshold: f64,
        first_error: Option<String>,
    ) -> VersionReport {
        let mut latency_ms = BTreeMap::new();
        latency_ms.insert("p50", metrics::quantile(&mut latencies, 0.5));
        latency_ms.insert("p99", metrics::quantile(&mut latencies, 0.99));
        VersionReport {
            classification: classify(&dataset.labels, chunks, answers, threshold),
            latency_ms,
            examples_per_s: dataset.len() as f64 / elapsed.as_secs_f64().max(1e-9),
            requests: chunks.len(),
            failed_requests: answers.iter().filter(|a| a.is_none()).count(),
            first_error,
        }
    }
}

/// A dataset's values as a tensor of the model's input datatype.
pub fn tensor_of(datatype: DataType, shape: Vec<usize>, values: &[f64]) -> anyhow::Result<Tensor> {
    let made = match datatype {
        DataType::Fp32 => {
            let values: Vec<f32> = values.iter().map(|v| *v as f32).collect();
            Tensor::from_slice(datatype, shape, &values)
        }
        DataType::Fp64 => Tensor::from_slice(datatype, shape, values),
        DataType::Int64 => {
            let values: Vec<i64> = values.iter().map(|v| *v as i64).collect();
            Tensor::from_slice(datatype, shape, &values)
        }
        DataType::Int32 => {
            let values: Vec<i32> = values.iter().map(|v| *v as i32).collect();
            Tensor::from_slice(datatype, shape, &values)
        }
        DataType::Uint8 | DataType::Bool => {
            let values: Vec<u8> = values.iter().map(|v| *v as u8).collect();
            Tensor::from_slice(datatype, shape, &values)
        }
        other => anyhow::bail!("an evaluation sends numbers; input datatype {other} is not one"),
    };
    anyhow::Context::context(made, "a dataset tensor")
}

/// A numeric output's values.
pub fn values_of(tensor: &Tensor) -> anyhow::Result<Vec<f64>> {
    crate::routing::stats::as_f64s(tensor)
        .ok_or_else(|| anyhow::anyhow!("the output ({}) is not numeric", tensor.dtype()))
}

/// The registry scores of a version's report.
pub fn scores_of(report: &Value) -> BTreeMap<String, f64> {
    let mut scores = BTreeMap::new();
    for metric in [
        "accuracy",
        "precision_macro",
        "recall_macro",
        "f1_macro",
        "precision",
        "recall",
        "f1",
        "roc_auc",
    ] {
        if let Some(value) = report[metric].as_f64() {
            scores.insert(metric.to_owned(), value);
        }
    }
    scores
}

/// What a posted score says of where it came from.
pub fn score_source(dataset: &str, sha256: &str) -> String {
    format!("switchyard eval of {dataset} sha256:{sha256}")
}
