//! `switchyard eval`: every example of a labelled dataset through the gateway's inference API
//! (HTTP or gRPC), pinned to each version, with bounded concurrency; per version the
//! classification metrics, latency and throughput, side by side; with `--post`, the metrics
//! recorded as registry scores whose source names the dataset and its SHA-256.
//!
//! It is a client of the inference API like any other, so it lives beside the server that
//! serves it, not in the management layer.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Args;
use serde_json::{Value, json};

use crate::control::evaluation::{self, Dataset, VersionReport};
use crate::protocol::grpc::pb;
use switchyard_runtimes::DataType;

const MAX_CONCURRENCY: usize = 64;
const MAX_BATCH: usize = 1024;

#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    /// The model.
    pub model: String,
    /// Labelled examples: `.npz` (an array per model input, named after it, examples on the
    /// first axis, plus `labels`) or `.jsonl` (`{"<input>": [...], "label": 3}` per line).
    #[arg(long)]
    pub dataset: PathBuf,
    /// `all`, or labels: `1,3`.
    #[arg(long, default_value = "all")]
    pub versions: String,
    /// The metric the table leads with and the versions are ranked by.
    #[arg(long, default_value = "accuracy")]
    pub metric: String,
    /// Record every metric as a registry score of each version (needs a write token).
    #[arg(long)]
    pub post: bool,
    /// The inference API over HTTP.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// Use gRPC at this host:port instead of HTTP.
    #[arg(long)]
    pub grpc: Option<String>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Examples per request.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// The output tensor to read predictions from (default: the model's first).
    #[arg(long = "output-tensor")]
    pub output_tensor: Option<String>,
    /// For a single score per example: class 1 at or above this.
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f64,
    /// table, json or markdown (default: from -o).
    #[arg(long)]
    pub format: Option<EvalFormat>,
    /// No progress on stderr.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EvalFormat {
    Table,
    Json,
    Markdown,
}

struct TensorInfo {
    name: String,
    datatype: String,
}

struct Model {
    versions: Vec<String>,
    inputs: Vec<TensorInfo>,
    outputs: Vec<String>,
}

#[derive(Clone)]
enum Transport {
    Http {
        client: reqwest::Client,
        url: String,
    },
    Grpc(pb::grpc_inference_service_client::GrpcInferenceServiceClient<tonic::transport::Channel>),
}

impl Transport {
    async fn connect(args: &EvalArgs) -> anyhow::Result<Transport> {
        match &args.grpc {
            Some(address) => {
                let endpoint = if address.contains("://") {
                    address.clone()
                } else {
                    format!("http://{address}")
                };
                let client =
                    pb::grpc_inference_service_client::GrpcInferenceServiceClient::connect(
                        endpoint,
                    )
                    .await
                    .with_context(|| format!("cannot reach the gRPC API at {address}"))?;
                Ok(Transport::Grpc(client))
            }
            None => Ok(Transport::Http {
                client: reqwest::Client::new(),
                url: args.url.trim_end_matches('/').to_owned(),
            }),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Transport::Http { .. } => "http",
            Transport::Grpc(_) => "grpc",
        }
    }

    async fn model(&self, model: &str) -> anyhow::Result<Model> {
        match self {
            Transport::Http { client, url } => {
                let response = client
                    .get(format!("{url}/v2/models/{model}"))
                    .send()
                    .await
                    .with_context(|| format!("cannot reach the inference API at {url}"))?;
                let status = response.status();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                ensure!(
                    status.is_success(),
                    "model '{model}': {status} {}",
                    body["error"]
                );
                let tensors = |key: &str| -> Vec<TensorInfo> {
                    body[key]
                        .as_array()
                        .map(|list| {
                            list.iter()
                                .map(|t| TensorInfo {
                                    name: t["name"].as_str().unwrap_or_default().to_owned(),
                                    datatype: t["datatype"].as_str().unwrap_or_default().to_owned(),
                                })
                                .collect()
                        })
                        .unwrap_or_default()
                };
                Ok(Model {
                    versions: body["versions"]
                        .as_array()
                        .map(|v| {
                            v.iter()
                                .filter_map(|v| v.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default(),
                    inputs: tensors("inputs"),
                    outputs: tensors("outputs").into_iter().map(|t| t.name).collect(),
                })
            }
            Transport::Grpc(client) => {
                let answer = client
                    .clone()
                    .model_metadata(pb::ModelMetadataRequest {
                        name: model.to_owned(),
                        version: String::new(),
                    })
                    .await
                    .with_context(|| format!("model '{model}'"))?
                    .into_inner();
                Ok(Model {
                    versions: answer.versions,
                    inputs: answer
                        .inputs
                        .into_iter()
                        .map(|t| TensorInfo {
                            name: t.name,
                            datatype: t.datatype,
                        })
                        .collect(),
                    outputs: answer.outputs.into_iter().map(|t| t.name).collect(),
                })
            }
        }
    }

    /// One request of `rows` examples (or one step of a sequence); the output's values, row
    /// after row.
    async fn infer(
        &self,
        model: &str,
        version: &str,
        inputs: &[(String, String, Vec<i64>, Vec<f64>)],
        output: &str,
        sequence: Option<SequenceStep>,
    ) -> anyhow::Result<(Vec<f64>, usize)> {
        match self {
            Transport::Http { client, url } => {
                let tensors: Vec<Value> = inputs
                    .iter()
                    .map(|(name, datatype, shape, values)| {
                        json!({"name": name, "datatype": datatype, "shape": shape, "data": values})
                    })
                    .collect();
                let mut body = json!({"inputs": tensors, "outputs": [{"name": output}]});
                if let Some(step) = sequence {
                    body["parameters"] = json!({
                        "sequence_id": step.id,
                        "sequence_start": step.start,
                        "sequence_end": step.end,
                    });
                }
                let response = client
                    .post(format!("{url}/v2/models/{model}/versions/{version}/infer"))
                    .json(&body)
                    .send()
                    .await?;
                let status = response.status();
                let answer: Value = response.json().await.unwrap_or(Value::Null);
                ensure!(status.is_success(), "{status}: {}", answer["error"]);
                let tensor = answer["outputs"]
                    .as_array()
                    .and_then(|outputs| outputs.iter().find(|o| o["name"] == output))
                    .context("the answer has no such output")?;
                let width = row_width(
                    tensor["shape"]
                        .as_array()
                        .map(|s| s.iter().filter_map(Value::as_i64).collect::<Vec<_>>()),
                );
                let values = tensor["data"]
                    .as_array()
                    .context("the output has no data")?
                    .iter()
                    .map(|v| v.as_f64().unwrap_or(f64::NAN))
                    .collect();
                Ok((values, width))
            }
            Transport::Grpc(client) => {
                // Raw contents, as tritonclient sends them, made by the same conversion the
                // in-gateway job uses.
                let mut tensors = Vec::with_capacity(inputs.len());
                let mut raw = Vec::with_capacity(inputs.len());
                for (name, datatype, shape, values) in inputs {
                    let dtype: DataType = datatype.parse()?;
                    let dims = shape.iter().map(|d| *d as usize).collect();
                    raw.push(evaluation::tensor_of(dtype, dims, values)?.data().clone());
                    tensors.push(pb::model_infer_request::InferInputTensor {
                        name: name.clone(),
                        datatype: datatype.clone(),
                        shape: shape.clone(),
                        ..Default::default()
                    });
                }
                let parameter = |choice| pb::InferParameter {
                    parameter_choice: Some(choice),
                };
                use pb::infer_parameter::ParameterChoice;
                let parameters = sequence
                    .map(|step| {
                        [
                            (
                                "sequence_id".to_owned(),
                                parameter(ParameterChoice::Int64Param(step.id as i64)),
                            ),
                            (
                                "sequence_start".to_owned(),
                                parameter(ParameterChoice::BoolParam(step.start)),
                            ),
                            (
                                "sequence_end".to_owned(),
                                parameter(ParameterChoice::BoolParam(step.end)),
                            ),
                        ]
                        .into()
                    })
                    .unwrap_or_default();
                let request = pb::ModelInferRequest {
                    model_name: model.to_owned(),
                    model_version: version.to_owned(),
                    parameters,
                    inputs: tensors,
                    raw_input_contents: raw,
                    outputs: vec![pb::model_infer_request::InferRequestedOutputTensor {
                        name: output.to_owned(),
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                let answer = client
                    .clone()
                    .model_infer(request)
                    .await
                    .map_err(|status| anyhow::anyhow!("{}: {}", status.code(), status.message()))?
                    .into_inner();
                let index = answer
                    .outputs
                    .iter()
                    .position(|o| o.name == output)
                    .context("the answer has no such output")?;
                let tensor = &answer.outputs[index];
                let width = row_width(Some(tensor.shape.clone()));
                let raw = answer
                    .raw_output_contents
                    .get(index)
                    .context("the answer has no raw contents for the output")?;
                let dims = tensor.shape.iter().map(|d| (*d).max(0) as usize).collect();
                let output =
                    switchyard_runtimes::Tensor::new(tensor.datatype.parse()?, dims, raw.clone())?;
                let values = evaluation::values_of(&output)?;
                Ok((values, width))
            }
        }
    }
}

/// The answers to a version's requests as they come back, in the order of the chunks.
struct Collected {
    answers: Vec<evaluation::Answer>,
    latencies: Vec<f64>,
    first_error: Option<String>,
}

impl Collected {
    fn new(chunks: usize) -> Collected {
        Collected {
            answers: vec![None; chunks],
            latencies: Vec::with_capacity(chunks),
            first_error: None,
        }
    }

    fn add(&mut self, index: usize, result: anyhow::Result<(Vec<f64>, usize)>, latency: Duration) {
        self.latencies.push(latency.as_secs_f64() * 1000.0);
        match result {
            Ok(answer) => self.answers[index] = Some(answer),
            Err(error) => {
                self.first_error.get_or_insert_with(|| format!("{error:#}"));
            }
        }
    }

    fn report(
        self,
        dataset: &Dataset,
        chunks: &[(usize, usize)],
        elapsed: Duration,
        threshold: f64,
    ) -> VersionReport {
        VersionReport::new(
            dataset,
            chunks,
            &self.answers,
            self.latencies,
            elapsed,
            threshold,
            self.first_error,
        )
    }
}

/// A request's inputs: (name, datatype, shape, values) of examples `[start, end)` of each of
/// the model's inputs, with the examples along a leading batch axis, or (a sequence's one
/// example) with exactly the example's shape.
fn request_inputs(
    dataset: &Dataset,
    datatypes: &[(String, String)],
    start: usize,
    end: usize,
    batch_axis: bool,
) -> Vec<(String, String, Vec<i64>, Vec<f64>)> {
    datatypes
        .iter()
        .map(|(name, datatype)| {
            let column = &dataset.inputs[name];
            let width = column.example_len();
            let batch = batch_axis.then_some((end - start) as i64);
            let shape = batch
                .into_iter()
                .chain(column.example_shape.iter().map(|d| *d as i64))
                .collect();
            let values = column.values[start * width..end * width].to_vec();
            (name.clone(), datatype.clone(), shape, values)
        })
        .collect()
}

/// Where a request stands in its sequence (Triton's sequence parameters).
#[derive(Clone, Copy, Debug)]
struct SequenceStep {
    id: u64,
    start: bool,
    end: bool,
}

/// The values per example of an output shaped [rows, ...].
fn row_width(shape: Option<Vec<i64>>) -> usize {
    shape
        .map(|s| s.iter().skip(1).map(|d| (*d).max(1) as usize).product())
        .unwrap_or(1)
}

/// Runs the evaluation and returns the report as JSON.
pub async fn evaluate(args: &EvalArgs) -> anyhow::Result<Value> {
    ensure!(
        (1..=MAX_CONCURRENCY).contains(&args.concurrency),
        "--concurrency must be 1 to {MAX_CONCURRENCY}"
    );
    ensure!(
        (1..=MAX_BATCH).contains(&args.batch),
        "--batch must be 1 to {MAX_BATCH}"
    );
    let dataset = Arc::new(Dataset::read(
        &args.dataset,
        evaluation::dataset::MAX_FILE_BYTES,
    )?);
    let transport = Transport::connect(args).await?;
    let model = transport.model(&args.model).await?;
    for input in &model.inputs {
        ensure!(
            dataset.inputs.contains_key(&input.name),
            "the dataset has no array '{}' for the model's input of that name (it has: {})",
            input.name,
            dataset
                .inputs
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let output = match &args.output_tensor {
        Some(output) => {
            ensure!(
                model.outputs.contains(output),
                "the model has no output '{output}'"
            );
            output.clone()
        }
        None => model
            .outputs
            .first()
            .cloned()
            .context("the model has no outputs")?,
    };
    let versions: Vec<String> = if args.versions == "all" {
        let mut versions = model.versions.clone();
        versions.sort_by(|a, b| switchyard_registry::compare_labels(a, b));
        versions
    } else {
        args.versions
            .split(',')
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .collect()
    };
    ensure!(!versions.is_empty(), "no versions to evaluate");
    let mut reports = BTreeMap::new();
    for version in &versions {
        let report = match &dataset.streams {
            Some(_) => {
                evaluate_streams(args, &transport, &model, &dataset, version, &output).await?
            }
            None => evaluate_version(args, &transport, &model, &dataset, version, &output).await?,
        };
        reports.insert(version.clone(), report);
    }
    let mut report = json!({
        "model": args.model,
        "dataset": {"name": dataset.name, "sha256": dataset.sha256, "examples": dataset.len()},
        "protocol": transport.name(),
        "output": output,
        "metric": args.metric,
        "versions": reports,
    });
    if args.post {
        report["posted"] = json!(true);
    }
    Ok(report)
}

async fn evaluate_version(
    args: &EvalArgs,
    transport: &Transport,
    model: &Model,
    dataset: &Arc<Dataset>,
    version: &str,
    output: &str,
) -> anyhow::Result<VersionReport> {
    let examples = dataset.len();
    let chunks = evaluation::chunks(examples, args.batch);
    let started = Instant::now();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    let datatypes = input_datatypes(model);
    for (index, (start, end)) in chunks.iter().copied().enumerate() {
        let permit = semaphore.clone().acquire_owned().await?;
        let (transport, dataset, datatypes) =
            (transport.clone(), dataset.clone(), datatypes.clone());
        let (model_name, pinned, output) =
            (args.model.clone(), version.to_owned(), output.to_owned());
        tasks.spawn(async move {
            let inputs = request_inputs(&dataset, &datatypes, start, end, true);
            let sent = Instant::now();
            let result = transport
                .infer(&model_name, &pinned, &inputs, &output, None)
                .await;
            drop(permit);
            (index, result, sent.elapsed())
        });
        if !args.quiet && (index + 1) % (chunks.len() / 10).max(1) == 0 {
            eprint!(
                "\r{} version {version}: {:>3}% sent",
                args.model,
                (index + 1) * 100 / chunks.len()
            );
        }
    }
    let mut collected = Collected::new(chunks.len());
    while let Some(joined) = tasks.join_next().await {
        let (index, result, latency) = joined?;
        collected.add(index, result, latency);
    }
    let elapsed = started.elapsed().max(Duration::from_micros(1));
    if !args.quiet {
        eprintln!(
            "\r{} version {version}: done in {:.2} s      ",
            args.model,
            elapsed.as_secs_f64()
        );
    }
    Ok(collected.report(dataset, &chunks, elapsed, args.threshold))
}

/// Each input's name and datatype, as the model's metadata gives them.
fn input_datatypes(model: &Model) -> Vec<(String, String)> {
    model
        .inputs
        .iter()
        .map(|t| (t.name.clone(), t.datatype.clone()))
        .collect()
}

/// A dataset of streams: each stream is one sequence of one-example requests, sent in order;
/// up to `--concurrency` streams at once. A stream whose request fails stops there (its
/// remaining examples count as failed); the gateway releases its sequence after the model's
/// idle timeout.
async fn evaluate_streams(
    args: &EvalArgs,
    transport: &Transport,
    model: &Model,
    dataset: &Arc<Dataset>,
    version: &str,
    output: &str,
) -> anyhow::Result<VersionReport> {
    let streams = dataset.streams.clone().unwrap_or_default();
    let chunks = evaluation::chunks(dataset.len(), 1);
    let started = Instant::now();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    let datatypes = input_datatypes(model);
    // Sequence ids of this run: random high bits, so that they meet no live stream's; below
    // 2^62, so that they stay positive as gRPC's int64 parameter.
    let base = (fastrand::u64(..) >> 2 & !0xffff_ffff) | 1 << 61;
    for (number, (first, last)) in streams.iter().copied().enumerate() {
        let permit = semaphore.clone().acquire_owned().await?;
        let (transport, dataset, datatypes) =
            (transport.clone(), dataset.clone(), datatypes.clone());
        let (model_name, pinned, output) =
            (args.model.clone(), version.to_owned(), output.to_owned());
        let id = base + number as u64;
        tasks.spawn(async move {
            let mut results = Vec::with_capacity(last - first);
            for index in first..last {
                let inputs = request_inputs(&dataset, &datatypes, index, index + 1, false);
                let step = SequenceStep {
                    id,
                    start: index == first,
                    end: index + 1 == last,
                };
                let sent = Instant::now();
                let result = transport
                    .infer(&model_name, &pinned, &inputs, &output, Some(step))
                    .await;
                let failed = result.is_err();
                results.push((index, result, sent.elapsed()));
                if failed {
                    break;
                }
            }
            drop(permit);
            results
        });
    }
    let mut collected = Collected::new(chunks.len());
    while let Some(joined) = tasks.join_next().await {
        for (index, result, latency) in joined? {
            collected.add(index, result, latency);
        }
    }
    let elapsed = started.elapsed().max(Duration::from_micros(1));
    if !args.quiet {
        eprintln!(
            "{} version {version}: {} streams in {:.2} s",
            args.model,
            streams.len(),
            elapsed.as_secs_f64()
        );
    }
    Ok(collected.report(dataset, &chunks, elapsed, args.threshold))
}

const ROWS: &[(&str, &str)] = &[
    ("accuracy", "accuracy"),
    ("precision_macro", "precision (macro)"),
    ("recall_macro", "recall (macro)"),
    ("f1_macro", "F1 (macro)"),
    ("precision", "precision (class 1)"),
    ("recall", "recall (class 1)"),
    ("f1", "F1 (class 1)"),
    ("roc_auc", "ROC AUC"),
];

/// The versions side by side: a table, or Markdown.
pub fn render(report: &Value, format: EvalFormat) -> String {
    if format == EvalFormat::Json {
        return serde_json::to_string_pretty(report).unwrap_or_default() + "\n";
    }
    let versions = report["versions"].as_object().cloned().unwrap_or_default();
    let mut labels: Vec<&String> = versions.keys().collect();
    let metric = report["metric"].as_str().unwrap_or("accuracy");
    labels.sort_by(|a, b| {
        let score = |l: &String| versions[l.as_str()][metric].as_f64().unwrap_or(f64::MIN);
        score(b).total_cmp(&score(a))
    });
    let number = |v: &Value, digits: usize| {
        v.as_f64()
            .map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
    };
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut ordered: Vec<&(&str, &str)> = ROWS.iter().filter(|(key, _)| *key == metric).collect();
    ordered.extend(ROWS.iter().filter(|(key, _)| *key != metric));
    for (key, title) in ordered {
        let mut row = vec![(*title).to_owned()];
        row.extend(labels.iter().map(|l| number(&versions[l.as_str()][key], 4)));
        rows.push(row);
    }
    let mut extra = |title: &str, value: &dyn Fn(&Value) -> String| {
        let mut row = vec![title.to_owned()];
        row.extend(labels.iter().map(|l| value(&versions[l.as_str()])));
        rows.push(row);
    };
    extra("p50 ms", &|v| number(&v["latency_ms"]["p50"], 2));
    extra("p99 ms", &|v| number(&v["latency_ms"]["p99"], 2));
    extra("examples/s", &|v| number(&v["examples_per_s"], 0));
    extra("failed requests", &|v| v["failed_requests"].to_string());
    let mut headers = vec![format!(
        "{} (version)",
        report["model"].as_str().unwrap_or("")
    )];
    headers.extend(labels.iter().map(|l| (*l).clone()));
    let sha256 = report["dataset"]["sha256"].as_str().unwrap_or("");
    let mut out = format!(
        "{} examples of {} (sha256 {}), over {}\n\n",
        report["dataset"]["examples"],
        report["dataset"]["name"].as_str().unwrap_or(""),
        sha256.get(..12).unwrap_or(sha256),
        report["protocol"].as_str().unwrap_or("")
    );
    match format {
        EvalFormat::Markdown => {
            let _ = writeln!(out, "| {} |", headers.join(" | "));
            let _ = writeln!(out, "|{}", "---|".repeat(headers.len()));
            for row in &rows {
                let _ = writeln!(out, "| {} |", row.join(" | "));
            }
        }
        _ => {
            let widths: Vec<usize> = (0..headers.len())
                .map(|i| {
                    rows.iter()
                        .map(|r| r[i].len())
                        .chain([headers[i].len()])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let line = |cells: &[String]| {
                cells
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_owned()
            };
            let upper: Vec<String> = headers.iter().map(|h| h.to_uppercase()).collect();
            let _ = writeln!(out, "{}", line(&upper));
            for row in &rows {
                let _ = writeln!(out, "{}", line(row));
            }
        }
    }
    for label in &labels {
        let confusion = &versions[label.as_str()]["confusion"];
        let classes = &versions[label.as_str()]["classes"];
        if let Some(matrix) = confusion
            .as_array()
            .filter(|m| !m.is_empty() && m.len() <= 20)
        {
            let _ = writeln!(
                out,
                "\nconfusion of version {label} (rows: true class, columns: predicted):"
            );
            let names: Vec<String> = classes
                .as_array()
                .map(|c| c.iter().map(|c| format!("{:>5}", c.to_string())).collect())
                .unwrap_or_default();
            let _ = writeln!(out, "     {}", names.join(""));
            for (row, name) in matrix.iter().zip(&names) {
                let cells: Vec<String> = row
                    .as_array()
                    .map(|r| r.iter().map(|c| format!("{:>5}", c.to_string())).collect())
                    .unwrap_or_default();
                let _ = writeln!(out, "{name}{}", cells.join(""));
            }
        }
    }
    out
}
