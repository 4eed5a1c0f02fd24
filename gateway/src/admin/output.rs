//! How the CLI prints the management API's answers: tables for people (in the manner of
//! kubectl: upper-case headers, columns padded, `-` for nothing), or the API's JSON, or the
//! same as YAML, for scripts.
//!
//! A table reads the answer as its type from [`super::api`], the one the handler built: JSON
//! and YAML print the answer as it came, field for field.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use switchyard_registry::Version;

use super::api::{
    CaptureList, Cluster, Events, Experiment, KeyList, ModelList, ObjectivePlan, ResourceReport,
    RolloutAnswer, RolloutEntry, RolloutList, RolloutView, ScoreList, ServedModel, Traffic,
};
use crate::control::capacity::MeasuredMemory;
use crate::control::rollout::{StageKind, VersionFigures};
use crate::core::capture::SinkSpec;
use crate::routing::TrafficPolicy;

/// `-o table|json|yaml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// What an answer is, so that its table can be drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// `GET /v1/models`: a row per version of every model.
    Models,
    /// `GET /v1/models/{m}`: the model, then a row per version.
    Model,
    /// `GET /v1/models/{m}` too, drawn as `versions list` draws it.
    Versions,
    Traffic,
    Experiment,
    Resources,
    /// `GET /v1/cluster`: a row per node, then a row per placed version.
    Cluster,
    Events,
    Scores,
    /// One rollout, or a write's answer holding one: its stages, figures and gates.
    Rollout,
    /// `GET /v1/models/{m}/rollouts`.
    Rollouts,
    /// `GET /v1/keys`: a row per key, with its name's figures on this gateway.
    Keys,
    /// `GET /v1/capture`: a row per captured model's sink, with the figures on this gateway.
    Captures,
    /// Everything else (writes, single versions): the JSON, as the API gave it.
    Raw,
}

pub fn render(format: Format, view: View, value: &Value) -> String {
    match (format, view) {
        (Format::Json, _) | (Format::Table, View::Raw) => pretty(value),
        (Format::Yaml, _) => {
            let mut out = String::new();
            yaml(value, 0, &mut out);
            if !out.ends_with('\n') {
                out.push('\n');
            }
            out
        }
        (Format::Table, view) => match draw(view, value) {
            Ok(Some(table)) => table,
            Ok(None) => pretty(value),
            // A gateway of another build may answer in a shape this client does not know:
            // what it said is still shown.
            Err(error) => format!(
                "# this client cannot draw the answer as a table ({error}); as it came:\n{}",
                pretty(value)
            ),
        },
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default() + "\n"
}

fn read<T: DeserializeOwned>(value: &Value) -> Result<T, serde_json::Error> {
    T::deserialize(value)
}

/// The table of a view, from the answer read as its type; `None` where a table shows nothing
/// more than the JSON would (a rollout row this build cannot read).
fn draw(view: View, value: &Value) -> Result<Option<String>, serde_json::Error> {
    Ok(Some(match view {
        View::Models => models(&read(value)?),
        View::Model => model(&read(value)?),
        View::Versions => {
            let served: ServedModel = read(value)?;
            let versions: Vec<&Version> = served.versions.iter().map(|v| &v.version).collect();
            table(
                &VERSION_COLUMNS[1..],
                &version_rows(&Rows::of_served(&served, &versions)),
            )
        }
        View::Traffic => traffic(&read(value)?),
        View::Experiment => experiment(&read(value)?),
        View::Resources => resources(&read(value)?),
        View::Cluster => cluster(&read(value)?),
        View::Events => events(&read(value)?),
        View::Scores => scores(&read(value)?),
        View::Rollout => {
            // A write answers with the rollout inside; a read with the rollout alone.
            let shown = match read::<RolloutAnswer>(value) {
                Ok(answer) => answer.rollout,
                Err(_) => RolloutEntry::Shown(Box::new(read::<RolloutView>(value)?)),
            };
            match shown {
                RolloutEntry::Shown(view) => rollout(&view),
                RolloutEntry::Unreadable(_) => return Ok(None),
            }
        }
        View::Rollouts => rollouts(&read(value)?),
        View::Keys => keys(&read(value)?),
        View::Captures => captures(&read(value)?),
        View::Raw => return Ok(None),
    }))
}

/// Columns padded to their widest cell, two spaces apart.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (index, (cell, width)) in cells.zip(&widths).enumerate() {
            if index + 1 == widths.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// A cell: `-` for nothing.
fn cell(text: impl ToString) -> String {
    let text = text.to_string();
    if text.is_empty() { "-".into() } else { text }
}

fn optional(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "-".into(), cell)
}

/// A number as a cell: at most four decimals, trailing zeros dropped.
fn number(value: f64) -> String {
    trim_float(value)
}

/// A JSON scalar (a score's metadata, a gate) as a cell.
fn scalar(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => cell(s),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => trim_float(f),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

fn trim_float(value: f64) -> String {
    let text = format!("{value:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    text.to_owned()
}

fn share(value: f64) -> String {
    format!("{}%", trim_float(value * 100.0))
}

fn bytes(value: Option<u64>) -> String {
    let Some(bytes) = value else {
        return "-".into();
    };
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 1024.0 && unit + 1 < UNITS.len() {
        size /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{size:.1} {}", UNITS[unit])
    }
}

fn joined(items: Vec<String>, separator: &str) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(separator)
    }
}

/// A policy's mode as stored; `-` for one this build cannot read.
fn policy_mode(policy: &Value) -> String {
    TrafficPolicy::deserialize(policy).map_or_else(|_| "-".into(), |p| p.mode.name().into())
}

const VERSION_COLUMNS: [&str; 9] = [
    "MODEL", "VERSION", "STATE", "RUNTIME", "DEVICE", "REPLICAS", "WEIGHT", "ALIASES", "SCORES",
];

/// What a row per version of one model is drawn from, in a list or a model's answer.
struct Rows<'a> {
    name: &'a str,
    versions: &'a [&'a Version],
    traffic: &'a BTreeMap<String, u64>,
    aliases: &'a BTreeMap<String, String>,
    latest_scores: &'a BTreeMap<String, BTreeMap<String, f64>>,
}

impl<'a> Rows<'a> {
    fn of_served(model: &'a ServedModel, versions: &'a [&'a Version]) -> Rows<'a> {
        Rows {
            name: &model.model.name,
            versions,
            traffic: &model.traffic,
            aliases: &model.aliases,
            latest_scores: &model.latest_scores,
        }
    }
}

/// A row per version of one model, without the model's name.
fn version_rows(rows: &Rows<'_>) -> Vec<Vec<String>> {
    let total: u64 = rows.traffic.values().sum();
    rows.versions
        .iter()
        .map(|version| {
            let label = &version.label;
            let mut state = version.state.to_string();
            if !version.state_reason.is_empty() {
                state = format!("{state} ({})", version.state_reason);
            }
            let measured = MeasuredMemory::of(&version.metadata);
            let weight = match rows.traffic.get(label) {
                Some(weight) if total > 0 => {
                    format!("{}%", trim_float(*weight as f64 * 100.0 / total as f64))
                }
                _ => "-".into(),
            };
            let aliases: Vec<String> = rows
                .aliases
                .iter()
                .filter(|(_, target)| *target == label)
                .map(|(alias, _)| alias.clone())
                .collect();
            let scores: Vec<String> = rows
                .latest_scores
                .get(label)
                .map(|scores| {
                    scores
                        .iter()
                        .map(|(metric, value)| format!("{metric}={}", number(*value)))
                        .collect()
                })
                .unwrap_or_default();
            vec![
                cell(label),
                state,
                cell(&version.runtime),
                optional(measured.as_ref().map(|m| &m.device)),
                optional(measured.as_ref().map(|m| m.replicas)),
                weight,
                joined(aliases, ","),
                joined(scores, " "),
            ]
        })
        .collect()
}

fn models(list: &ModelList) -> String {
    let mut rows = Vec::new();
    for record in &list.models {
        let versions: Vec<&Version> = record.versions.iter().collect();
        let of_model = Rows {
            name: &record.model.name,
            versions: &versions,
            traffic: &record.traffic,
            aliases: &record.aliases,
            latest_scores: &record.latest_scores,
        };
        for mut row in version_rows(&of_model) {
            row.insert(0, cell(of_model.name));
            rows.push(row);
        }
    }
    table(&VERSION_COLUMNS, &rows)
}

fn model(served: &ServedModel) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Name:         {}", cell(&served.model.name));
    let _ = writeln!(out, "Description:  {}", cell(&served.model.description));
    let _ = writeln!(out, "Policy:       {}", policy_mode(&served.policy));
    out.push('\n');
    let versions: Vec<&Version> = served.versions.iter().map(|v| &v.version).collect();
    let mut rows = version_rows(&Rows::of_served(served, &versions));
    for (row, version) in rows.iter_mut().zip(&served.versions) {
        row.insert(2, optional(version.serving.as_ref()));
    }
    let mut headers: Vec<&str> = VERSION_COLUMNS[1..].to_vec();
    headers.insert(2, "SERVING");
    out.push_str(&table(&headers, &rows));
    out
}

fn traffic(traffic: &Traffic) -> String {
    if traffic.weights.is_empty() {
        return "No traffic weights: requests that name no version go to the highest ready version.\n".into();
    }
    let total: u64 = traffic.weights.values().sum();
    let rows: Vec<Vec<String>> = traffic
        .weights
        .iter()
        .map(|(version, weight)| {
            let share = *weight as f64 * 100.0 / total.max(1) as f64;
            vec![
                version.clone(),
                weight.to_string(),
                format!("{}%", trim_float(share)),
            ]
        })
        .collect();
    table(&["VERSION", "WEIGHT", "SHARE"], &rows)
}

fn experiment(experiment: &Experiment) -> String {
    let rows: Vec<Vec<String>> = experiment
        .versions
        .iter()
        .map(|v| {
            vec![
                cell(&v.version),
                cell(&v.state),
                v.requests.to_string(),
                v.errors.to_string(),
                optional(v.recent_error_rate.map(share)),
                optional(v.latency_ms.p50.map(number)),
                optional(v.latency_ms.p99.map(number)),
                v.traffic_weight.to_string(),
                share(v.effective_weight),
                number(v.reward.mean),
                optional(v.score.map(number)),
            ]
        })
        .collect();
    let mut out = format!("Policy: {}\n\n", experiment.policy.mode.name());
    out.push_str(&table(
        &[
            "VERSION",
            "STATE",
            "REQUESTS",
            "ERRORS",
            "ERROR-RATE",
            "P50-MS",
            "P99-MS",
            "WEIGHT",
            "EFFECTIVE",
            "REWARD",
            "SCORE",
        ],
        &rows,
    ));
    if let Some(plan) = &experiment.objective {
        out.push_str(&objective(plan));
    }
    out
}

/// The objective policy's plan under the experiment's table.
fn objective(plan: &ObjectivePlan) -> String {
    let fixed = |value: f64, digits: usize| format!("{value:.digits$}");
    let mut out = format!(
        "\nObjective: offered {} req/s, value {} ({}), utilisation {}, floor {}\n\n",
        fixed(plan.offered_load, 1),
        fixed(plan.value, 4),
        if plan.fits {
            "within capacity"
        } else {
            "more than the versions can carry"
        },
        fixed(plan.utilisation, 2),
        fixed(plan.floor, 3),
    );
    let rows: Vec<Vec<String>> = plan
        .versions
        .iter()
        .map(|v| {
            vec![
                cell(&v.version),
                fixed(v.quality, 4),
                optional(v.capacity_per_replica.map(|c| fixed(c, 1))),
                v.replicas.to_string(),
                optional(v.capacity.map(|c| fixed(c, 1))),
                fixed(v.pinned_load, 1),
                optional(v.room.map(|r| fixed(r, 1))),
                share(v.share),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "VERSION",
            "QUALITY",
            "PER-REPLICA",
            "REPLICAS",
            "CAPACITY",
            "PINNED",
            "ROOM",
            "SHARE",
        ],
        &rows,
    ));
    out
}

fn cluster(cluster: &Cluster) -> String {
    if !cluster.enabled && cluster.nodes.is_empty() {
        return "not a cluster: this gateway runs without [cluster] enabled = true\n".into();
    }
    let nodes: Vec<Vec<String>> = cluster
        .nodes
        .iter()
        .map(|node| {
            let free = node
                .body
                .devices
                .iter()
                .map(|d| format!("{} {}/{}", d.id, bytes(Some(d.free)), bytes(Some(d.budget))))
                .collect();
            let held = node
                .versions
                .iter()
                .map(|v| format!("{}/{} {}", v.model, v.version, v.state))
                .collect();
            vec![
                cell(&node.id),
                if node.alive { "yes" } else { "no" }.into(),
                cell(&node.address),
                node.body.load.to_string(),
                joined(free, ", "),
                joined(held, ", "),
            ]
        })
        .collect();
    let mut placed: Vec<(&str, &str, Vec<String>)> = Vec::new();
    for row in &cluster.placements {
        let on = format!("{} ({} x{})", row.node, row.device, row.replicas);
        match placed.last_mut() {
            Some((model, version, nodes)) if *model == row.model && *version == row.version => {
                nodes.push(on)
            }
            _ => placed.push((&row.model, &row.version, vec![on])),
        }
    }
    let placed: Vec<Vec<String>> = placed
        .into_iter()
        .map(|(model, version, nodes)| vec![cell(model), cell(version), nodes.join(", ")])
        .collect();
    let mut out = table(
        &[
            "NODE",
            "ALIVE",
            "ADDRESS",
            "LOAD",
            "FREE/BUDGET",
            "VERSIONS",
        ],
        &nodes,
    );
    out.push('\n');
    out.push_str(&table(&["MODEL", "VERSION", "PLACED ON"], &placed));
    out
}

fn keys(list: &KeyList) -> String {
    let rows: Vec<Vec<String>> = list
        .keys
        .iter()
        .map(|key| {
            let limits = &key.spec.limits;
            let rate = |rate: Option<f64>, burst: Option<u32>| match (rate, burst) {
                (Some(rate), Some(burst)) => format!("{rate}/s+{burst}"),
                (Some(rate), None) => format!("{rate}/s"),
                _ => "-".into(),
            };
            let figures = &key.figures;
            let refused: u64 = figures.refused.values().sum();
            vec![
                cell(&key.id),
                cell(&key.name),
                cell(&key.prefix),
                if key.revoked_ms.is_some() {
                    "revoked"
                } else {
                    "live"
                }
                .into(),
                if key.spec.models.is_empty() {
                    "*".into()
                } else {
                    cell(key.spec.models.join(","))
                },
                rate(limits.requests_per_s, limits.requests_burst),
                rate(limits.rows_per_s, limits.rows_burst),
                optional(limits.in_flight),
                optional(key.spec.priority),
                figures.succeeded.to_string(),
                figures.failed.to_string(),
                refused.to_string(),
                figures
                    .p99_ms
                    .map_or_else(|| "-".into(), |ms| format!("{ms:.1}")),
                figures.capture.captured.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "PREFIX",
            "STATE",
            "MODELS",
            "RATE",
            "ROWS",
            "IN_FLIGHT",
            "PRIORITY",
            "OK",
            "FAILED",
            "REFUSED",
            "P99_MS",
            "CAPTURED",
        ],
        &rows,
    )
}

fn captures(list: &CaptureList) -> String {
    let rows: Vec<Vec<String>> = list
        .captures
        .iter()
        .flat_map(|capture| {
            capture.sinks.iter().map(move |sink| {
                let place = match &sink.sink {
                    SinkSpec::File(folder) => format!("file:{folder}"),
                    SinkSpec::Http(url) => url.clone(),
                };
                vec![
                    cell(&capture.model),
                    capture.spec.sample.to_string(),
                    capture.figures.captured.to_string(),
                    capture.figures.dropped.to_string(),
                    cell(place),
                    sink.figures.written.to_string(),
                    sink.figures.dropped.to_string(),
                    sink.figures.failed.to_string(),
                    sink.error.as_deref().map_or_else(|| "-".into(), cell),
                ]
            })
        })
        .collect();
    table(
        &[
            "MODEL",
            "SAMPLE",
            "CAPTURED",
            "DROPPED",
            "SINK",
            "WRITTEN",
            "SINK_DROPPED",
            "FAILED",
            "ERROR",
        ],
        &rows,
    )
}

fn resources(report: &ResourceReport) -> String {
    let devices: Vec<Vec<String>> = report
        .devices
        .iter()
        .map(|d| {
            vec![
                cell(&d.id),
                bytes(d.total),
                bytes(d.budget),
                bytes(Some(d.reserved)),
                bytes(Some(d.measured)),
                bytes(d.free),
                bytes(Some(d.evictable)),
                d.resident_versions.to_string(),
                d.loads.to_string(),
                d.evictions.to_string(),
                d.hit_rate
                    .map_or_else(|| "-".into(), |rate| format!("{:.1}%", rate * 100.0)),
            ]
        })
        .collect();
    let versions: Vec<Vec<String>> = report
        .versions
        .iter()
        .map(|v| {
            let mut devices: Vec<String> = v.replicas.iter().map(|r| r.device.clone()).collect();
            devices.dedup();
            let resident = match (v.resident, v.pinned) {
                (true, true) => "pinned",
                (true, false) => "yes",
                (false, _) => "no",
            };
            vec![
                cell(&v.model),
                cell(&v.version),
                cell(&v.state),
                resident.into(),
                v.replicas.len().to_string(),
                joined(devices, ","),
                bytes(Some(v.reserved_bytes)),
                optional(v.autoscaler.as_ref().map(|a| a.target)),
                optional(v.autoscaler.as_ref().map(|a| cell(&a.reason))),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "DEVICE",
            "TOTAL",
            "BUDGET",
            "RESERVED",
            "MEASURED",
            "FREE",
            "EVICTABLE",
            "RESIDENT",
            "LOADS",
            "EVICTIONS",
            "HIT RATE",
        ],
        &devices,
    );
    out.push('\n');
    out.push_str(&table(
        &[
            "MODEL", "VERSION", "STATE", "RESIDENT", "REPLICAS", "DEVICES", "RESERVED", "TARGET",
            "REASON",
        ],
        &versions,
    ));
    let recent: Vec<Vec<String>> = report
        .recent
        .iter()
        .map(|r| {
            vec![
                cell(&r.action),
                cell(&r.model),
                cell(&r.version),
                cell(&r.device),
                bytes(Some(r.bytes)),
                cell(&r.reason),
            ]
        })
        .collect();
    if !recent.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &["RECENT", "MODEL", "VERSION", "DEVICE", "BYTES", "REASON"],
            &recent,
        ));
    }
    out
}

fn events(events: &Events) -> String {
    let rows: Vec<Vec<String>> = events
        .events
        .iter()
        .map(|e| {
            let mut detail = e.payload.to_string();
            if detail.chars().count() > 80 {
                detail = detail.chars().take(77).collect::<String>() + "...";
            }
            vec![
                e.revision.to_string(),
                cell(&e.action),
                cell(&e.model),
                cell(&e.actor),
                detail,
            ]
        })
        .collect();
    table(&["REVISION", "ACTION", "MODEL", "ACTOR", "PAYLOAD"], &rows)
}

fn scores(list: &ScoreList) -> String {
    let rows: Vec<Vec<String>> = list
        .scores
        .iter()
        .map(|score| {
            vec![
                cell(&score.metric),
                number(score.value),
                cell(&score.source),
                cell(&score.dataset),
                score.revision.to_string(),
            ]
        })
        .collect();
    table(&["METRIC", "VALUE", "SOURCE", "DATASET", "REVISION"], &rows)
}

/// YAML for a JSON value: block style, strings in double quotes (JSON's escapes are YAML's).
fn yaml(value: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, item) in map {
                let _ = write!(out, "{pad}{}:", yaml_key(key));
                yaml_item(item, indent, out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                let _ = write!(out, "{pad}-");
                yaml_item(item, indent, out);
            }
        }
        other => {
            let _ = writeln!(out, "{pad}{}", yaml_scalar(other));
        }
    }
}

fn yaml_item(item: &Value, indent: usize, out: &mut String) {
    match item {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            yaml(item, indent + 2, out);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            yaml(item, indent + 2, out);
        }
        scalar => {
            let _ = writeln!(out, " {}", yaml_scalar(scalar));
        }
    }
}

fn yaml_scalar(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
        Value::String(s) => Value::String(s.clone()).to_string(),
        other => other.to_string(),
    }
}

fn yaml_key(key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
        && !key.starts_with(['-', '.'])
        && !matches!(key, "true" | "false" | "null" | "yes" | "no" | "on" | "off");
    if plain && key.parse::<f64>().is_err() {
        key.to_owned()
    } else {
        Value::String(key.to_owned()).to_string()
    }
}

fn percent(value: Option<f64>) -> String {
    optional(value.map(share))
}

fn milliseconds(value: Option<f64>) -> String {
    optional(value.map(|v| format!("{v:.2}")))
}

fn stage_name(kind: &StageKind) -> (String, String) {
    match kind {
        StageKind::Shadow { percent } => (
            "shadow".into(),
            format!("0% (mirror {}%)", trim_float(*percent)),
        ),
        StageKind::Live { weights } => {
            let total: u64 = weights.values().sum();
            let text = weights
                .iter()
                .map(|(label, weight)| {
                    let share = *weight as f64 * 100.0 / total.max(1) as f64;
                    format!("{label}={}%", trim_float(share))
                })
                .collect::<Vec<_>>()
                .join(" ");
            ("live".into(), text)
        }
    }
}

/// `rollout status` and `watch`: where it stands, each stage with its figures and verdict,
/// and the gates.
fn rollout(view: &RolloutView) -> String {
    let mut out = String::new();
    let state = view.state.as_str();
    let _ = writeln!(
        out,
        "Rollout {} of {}: version {} replacing {}",
        view.id,
        cell(&view.model),
        cell(&view.target),
        cell(&view.baseline)
    );
    let _ = writeln!(
        out,
        "State:   {state}, stage {} of {} (target {}% of live traffic){}",
        view.current + 1,
        view.stages.len(),
        trim_float(view.target_percent),
        if view.driven_by_this_gateway {
            ", driven by this gateway"
        } else {
            ""
        }
    );
    let status = view
        .live
        .as_ref()
        .map_or_else(|| cell(&view.reason), |live| live.status.clone());
    let _ = writeln!(out, "Status:  {status}\n");
    let live_figures = view.live.as_ref().and_then(|live| live.figures.as_ref());
    let nothing = VersionFigures::default();
    let rows: Vec<Vec<String>> = view
        .stages
        .iter()
        .enumerate()
        .map(|(index, stage)| {
            let analysis = view.history.iter().find(|a| a.stage == index);
            let (figures, verdict) = match analysis {
                Some(a) => (Some(&a.figures), cell(&a.verdict)),
                None if index == view.current && state == "running" => {
                    (live_figures, "(now)".to_string())
                }
                None if index == view.current && state == "paused" => {
                    (live_figures, "(paused)".to_string())
                }
                None => (None, "-".to_string()),
            };
            let (kind, split) = stage_name(&stage.kind);
            let target = figures.map_or(&nothing, |f| &f.target);
            let baseline = figures.map_or(&nothing, |f| &f.baseline);
            let shadow = match (&stage.kind, figures) {
                (StageKind::Shadow { .. }, Some(f)) => format!(
                    "{} mirrored, agree {}",
                    f.shadow.mirrored,
                    percent(f.shadow.argmax_agreement)
                ),
                (StageKind::Shadow { .. }, None) => "- mirrored, agree -".into(),
                _ => "-".into(),
            };
            vec![
                index.to_string(),
                kind,
                split,
                format!("{}s", trim_float(stage.hold_ms as f64 / 1000.0)),
                if figures.is_some() {
                    target.requests.to_string()
                } else {
                    "-".into()
                },
                percent(target.error_rate),
                milliseconds(target.p99_ms),
                percent(baseline.error_rate),
                milliseconds(baseline.p99_ms),
                shadow,
                verdict,
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "STAGE",
            "KIND",
            "WEIGHTS",
            "HOLD",
            "REQUESTS",
            "ERRORS",
            "P99_MS",
            "BASE_ERRORS",
            "BASE_P99_MS",
            "SHADOW",
            "VERDICT",
        ],
        &rows,
    ));
    // The gates as the API writes them, those set, in the document's order.
    let gates = serde_json::to_value(&view.gates).unwrap_or_default();
    let listed: Vec<String> = gates
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| format!("{k}={}", scalar(v)))
        .collect();
    let _ = writeln!(out, "\nGates:   {}", listed.join(" "));
    if !view.reason.is_empty() {
        let _ = writeln!(out, "Reason:  {}", view.reason);
    }
    out
}

fn rollouts(list: &RolloutList) -> String {
    let rows: Vec<Vec<String>> = list
        .rollouts
        .iter()
        .map(|entry| match entry {
            RolloutEntry::Shown(r) => vec![
                r.id.to_string(),
                cell(&r.target),
                cell(&r.baseline),
                r.state.as_str().into(),
                format!("{}/{}", r.current + 1, r.stages.len()),
                cell(&r.reason),
            ],
            RolloutEntry::Unreadable(r) => vec![
                r.id.to_string(),
                "-".into(),
                "-".into(),
                cell(&r.state),
                "-".into(),
                optional(r.error.as_ref()),
            ],
        })
        .collect();
    table(
        &["ID", "TARGET", "BASELINE", "STATE", "STAGE", "REASON"],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_pad_columns_and_show_dashes() {
        let text = table(
            &["A", "LONGER"],
            &[
                vec!["x".into(), "-".into()],
                vec!["wide cell".into(), "1".into()],
            ],
        );
        assert_eq!(text, "A          LONGER\nx          -\nwide cell  1\n");
    }

    #[test]
    fn the_cluster_is_a_row_per_node_then_per_placed_version() {
        let value = json!({
            "enabled": true,
            "node": "a",
            "nodes": [
                {"id": "a", "alive": true, "address": "a:8001", "load": 2,
                 "heartbeat_age_ms": 10, "started_ms": 1,
                 "devices": [{"id": "cpu", "budget": 1024, "free": 512}],
                 "versions": [{"node": "a", "model": "mlp", "version": "1",
                               "state": "ready", "reason": "", "replicas": 1,
                               "updated_ms": 1}]},
                {"id": "b", "alive": false, "address": "b:8001", "load": 0,
                 "heartbeat_age_ms": 9000, "started_ms": 1,
                 "devices": [], "versions": []},
            ],
            "placements": [
                {"model": "mlp", "version": "1", "node": "a", "device": "cpu", "replicas": 1},
                {"model": "mlp", "version": "1", "node": "b", "device": "cpu", "replicas": 2},
            ],
        });
        let text = render(Format::Table, View::Cluster, &value);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].starts_with("a     yes"), "{text}");
        assert!(
            lines[1].contains("cpu 512 B/1.0 KiB") && lines[1].ends_with("mlp/1 ready"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("b     no") && lines[2].ends_with("-"),
            "{text}"
        );
        assert!(
            text.contains("mlp    1        a (cpu x1), b (cpu x2)"),
            "{text}"
        );
        let alone = json!({"enabled": false, "node": null, "nodes": [], "placements": []});
        assert!(render(Format::Table, View::Cluster, &alone).starts_with("not a cluster"));
    }

    #[test]
    fn yaml_is_block_style_with_quoted_strings() {
        let value =
            json!({"name": "mlp", "weights": {"1": 90}, "tags": ["a", {"b": null}], "empty": {}});
        let mut out = String::new();
        yaml(&value, 0, &mut out);
        assert_eq!(
            out,
            "empty: {}\nname: \"mlp\"\ntags:\n  - \"a\"\n  -\n    b: null\nweights:\n  \"1\": 90\n"
        );
    }

    #[test]
    fn a_models_list_is_a_row_per_version() {
        let version = |label: &str, state: &str, reason: &str, runtime: &str, metadata| {
            json!({"model": "mlp", "label": label, "runtime": runtime, "artifact": "/m",
                   "config": {}, "metadata": metadata, "state": state,
                   "state_reason": reason, "created_ms": 1})
        };
        let value = json!({"revision": 7, "models": [{
            "model": {"name": "mlp", "description": "", "created_ms": 1},
            "traffic": {"1": 90, "2": 10},
            "aliases": {"stable": "1"},
            "policy": {"mode": "fixed"},
            "latest_scores": {"1": {"accuracy": 0.93}},
            "rewards": {},
            "versions": [
                version("1", "ready", "", "onnx",
                        json!({"measured_memory": {"device": "cpu", "replicas": 1}})),
                version("2", "failed", "corrupt", "libtorch", json!({})),
            ],
        }]});
        let text = render(Format::Table, View::Models, &value);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("MODEL  VERSION  STATE"));
        assert!(
            lines[1].contains("ready") && lines[1].contains("90%") && lines[1].contains("stable")
        );
        assert!(lines[1].contains("accuracy=0.93"));
        assert!(lines[2].contains("failed (corrupt)") && lines[2].contains("10%"));
    }

    #[test]
    fn an_answer_of_another_shape_is_shown_as_it_came() {
        let value = json!({"models": "not a list"});
        let text = render(Format::Table, View::Models, &value);
        assert!(text.starts_with("# this client cannot draw"), "{text}");
        assert!(text.contains("\"not a list\""), "{text}");
    }
}
