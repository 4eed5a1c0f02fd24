//! The evaluation job the gateway runs itself (`POST /v1/models/{m}/evaluations`): the dataset's
//! examples through [`Gateway::infer`], pinned to each version, at low priority, so that live
//! traffic is never starved:
//! - two requests in flight at most, of [`BATCH`] examples;
//! - one job at a time per gateway;
//! - a request the gateway refuses for overload waits and is sent again, so that the job
//!   takes only capacity that live traffic leaves over.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use switchyard_registry::{NewScores, Store};
use switchyard_runtimes::{DataType, NamedTensor};

use super::{
    Answer, Dataset, VersionReport, chunks, score_source, scores_of, tensor_of, values_of,
};
use crate::core::Gateway;
use crate::core::request::{InferRequest, Parameter};
use crate::error::ErrorKind;
use crate::priority::Priority;

pub const BATCH: usize = 16;
const IN_FLIGHT: usize = 2;
/// How long an overloaded request waits before it is sent again, and how often.
const OVERLOAD_BACKOFF: Duration = Duration::from_millis(20);
const OVERLOAD_RETRIES: usize = 500;

/// How often a running job asks the registry whether it was cancelled (perhaps through
/// another gateway of the cluster).
const CANCEL_POLL: Duration = Duration::from_secs(1);

/// What the job runs.
#[derive(Debug, Clone)]
pub struct Job {
    pub model: String,
    pub versions: Vec<String>,
    /// (name, datatype) of each model input.
    pub inputs: Vec<(String, DataType)>,
    pub output: String,
    pub threshold: f64,
}

/// One request of examples `[start, end)`, sent again while the gateway is overloaded.
async fn ask(
    gateway: &Gateway,
    job: &Job,
    dataset: &Dataset,
    version: &str,
    (start, end): (usize, usize),
) -> anyhow::Result<(Vec<f64>, usize)> {
    let mut inputs = Vec::with_capacity(job.inputs.len());
    for (name, datatype) in &job.inputs {
        let column = &dataset.inputs[name];
        let width = column.example_len();
        let mut shape = vec![end - start];
        shape.extend(&column.example_shape);
        inputs.push(NamedTensor {
            name: name.clone(),
            tensor: tensor_of(*datatype, shape, &column.values[start * width..end * width])?,
        });
    }
    for _ in 0..OVERLOAD_RETRIES {
        let request = InferRequest {
            model: job.model.clone(),
            version: Some(version.to_owned()),
            inputs: inputs.clone(),
            outputs: vec![job.output.clone()],
            received: Some(Instant::now()),
            // Live requests go first.
            parameters: [(
                "priority".to_owned(),
                Parameter::Int(i64::from(Priority::LOWEST.level())),
            )]
            .into(),
            ..InferRequest::default()
        };
        match gateway.infer(request).await {
            Ok(response) => {
                let output = response
                    .outputs
                    .iter()
                    .find(|o| o.name == job.output)
                    .context("the answer lacks the output")?;
                let width = output
                    .tensor
                    .shape()
                    .iter()
                    .skip(1)
                    .product::<usize>()
                    .max(1);
                let values = values_of(&output.tensor)?;
                return Ok((values, width));
            }
            Err(error) if error.kind == ErrorKind::Overloaded => {
                tokio::time::sleep(OVERLOAD_BACKOFF).await;
            }
            Err(error) => bail!("{}", error.message),
        }
    }
    bail!("the gateway stayed overloaded")
}

async fn evaluate_version(
    gateway: &Arc<Gateway>,
    job: &Arc<Job>,
    dataset: &Arc<Dataset>,
    version: &str,
) -> VersionReport {
    let chunks = chunks(dataset.len(), BATCH);
    let started = Instant::now();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, chunk) in chunks.iter().copied().enumerate() {
        let Ok(permit) = semaphore.clone().acquire_owned().await else {
            break;
        };
        let (gateway, job, dataset) = (gateway.clone(), job.clone(), dataset.clone());
        let version = version.to_owned();
        tasks.spawn(async move {
            let sent = Instant::now();
            let answer = ask(&gateway, &job, &dataset, &version, chunk).await;
            drop(permit);
            (index, answer, sent.elapsed())
        });
    }
    let mut answers: Vec<Answer> = vec![None; chunks.len()];
    let mut latencies = Vec::with_capacity(chunks.len());
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let Ok((index, answer, latency)) = joined else {
            continue;
        };
        latencies.push(latency.as_secs_f64() * 1000.0);
        match answer {
            Ok(answer) => answers[index] = Some(answer),
            Err(error) => {
                first_error.get_or_insert_with(|| format!("{error:#}"));
            }
        }
    }
    // Scoring sorts and counts every example: off the executor.
    let (threshold, elapsed) = (job.threshold, started.elapsed());
    let scored_dataset = dataset.clone();
    let scored = tokio::task::spawn_blocking(move || {
        VersionReport::new(
            &scored_dataset,
            &chunks,
            &answers,
            latencies,
            elapsed,
            threshold,
            first_error,
        )
    })
    .await;
    scored.unwrap_or_else(|_| {
        let failed = Some("scoring the answers failed".to_owned());
        VersionReport::new(dataset, &[], &[], Vec::new(), elapsed, threshold, failed)
    })
}

/// Runs the job and returns its report.
pub async fn run(gateway: Arc<Gateway>, job: Arc<Job>, dataset: Arc<Dataset>) -> Value {
    let mut versions = serde_json::Map::new();
    for version in &job.versions {
        let report = evaluate_version(&gateway, &job, &dataset, version).await;
        versions.insert(version.clone(), json!(report));
    }
    json!({
        "model": job.model,
        "dataset": {"name": dataset.name, "sha256": dataset.sha256, "examples": dataset.len()},
        "protocol": "in-process",
        "output": job.output,
        "versions": versions,
    })
}

/// Runs the job, records its report, and posts the versions' scores when every request was
/// answered.
pub async fn run_and_record(
    gateway: Arc<Gateway>,
    store: Arc<dyn Store>,
    actor: String,
    id: i64,
    job: Arc<Job>,
    dataset: Arc<Dataset>,
    post: bool,
) {
    let report = run(gateway, job.clone(), dataset.clone()).await;
    let versions = report["versions"].as_object().cloned().unwrap_or_default();
    let failed = versions
        .iter()
        .find(|(_, v)| v["failed_requests"].as_u64().unwrap_or(0) > 0);
    let (state, mut report) = match failed {
        Some((label, v)) => {
            let mut report = report.clone();
            report["error"] = json!(format!(
                "{} requests to version {label} failed: {}",
                v["failed_requests"], v["first_error"]
            ));
            ("failed", report)
        }
        None => ("done", report),
    };
    if post && state == "done" {
        let mut posted = Vec::new();
        for (label, version) in &versions {
            let scores = NewScores {
                metrics: scores_of(version),
                source: score_source(&dataset.name, &dataset.sha256),
                dataset: dataset.name.clone(),
            };
            match store.add_scores(&actor, &job.model, label, scores).await {
                Ok(_) => posted.push(label.clone()),
                Err(error) => {
                    tracing::warn!(model = %job.model, version = %label, %error, "evaluation scores not posted");
                }
            }
        }
        report["posted"] = json!(posted);
    }
    match store.finish_evaluation(&actor, id, state, report).await {
        Ok(_) => {}
        Err(switchyard_registry::RegistryError::Conflict(reason)) => {
            tracing::info!(evaluation = id, %reason, "the evaluation ended before its report");
        }
        Err(error) => {
            tracing::error!(evaluation = id, %error, "the evaluation's report was not recorded");
        }
    }
}

/// Returns once evaluation `id` is no longer `running` in the registry: cancelled, perhaps
/// through another gateway. A registry that cannot be read leaves the job running.
pub async fn ended_in_registry(store: &dyn Store, id: i64) {
    loop {
        tokio::time::sleep(CANCEL_POLL).await;
        if let Ok(running) = store.running_evaluations().await
            && !running.iter().any(|evaluation| evaluation.id == id)
        {
            return;
        }
    }
}

/// The gateway an evaluation's request names as the one that runs it: a cluster node's id, or
/// "" for a gateway alone (and for records written before the field existed).
pub fn runner_of(request: &Value) -> &str {
    request["gateway"].as_str().unwrap_or("")
}

/// At start: the evaluations this gateway was running when it stopped can no longer finish;
/// they are marked failed with the reason. Returns how many.
pub async fn fail_unfinished(store: &dyn Store, gateway: &str) -> anyhow::Result<usize> {
    let mut failed = 0;
    for evaluation in store.running_evaluations().await? {
        if runner_of(&evaluation.request) != gateway {
            continue;
        }
        let report =
            json!({"error": "the gateway running this evaluation stopped before it finished"});
        match store
            .finish_evaluation("system", evaluation.id, "failed", report)
            .await
        {
            Ok(_) => failed += 1,
            // Cancelled meanwhile: ended either way.
            Err(switchyard_registry::RegistryError::Conflict(_)) => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(failed)
}
