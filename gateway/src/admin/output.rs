//! How the CLI prints the management API's answers: tables for people (in the manner of
//! kubectl: upper-case headers, columns padded, `-` for nothing), or the API's JSON, or the
//! same as YAML, for scripts.

use std::fmt::Write as _;

use serde_json::Value;

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
    /// One rollout (or a write's answer holding one): its stages, figures and gates.
    Rollout,
    /// `GET /v1/models/{m}/rollouts`.
    Rollouts,
    /// Everything else (writes, single versions): the JSON, as the API gave it.
    Raw,
}

pub fn render(format: Format, view: View, value: &Value) -> String {
    match (format, view) {
        (Format::Json, _) | (Format::Table, View::Raw) => {
            serde_json::to_string_pretty(value).unwrap_or_default() + "\n"
        }
        (Format::Yaml, _) => {
            let mut out = String::new();
            yaml(value, 0, &mut out);
            if !out.ends_with('\n') {
                out.push('\n');
            }
            out
        }
        (Format::Table, View::Models) => models(value),
        (Format::Table, View::Model) => model(value),
        (Format::Table, View::Versions) => {
            table(&VERSION_COLUMNS[1..], &version_rows(value, false))
        }
        (Format::Table, View::Traffic) => traffic(value),
        (Format::Table, View::Experiment) => experiment(value),
        (Format::Table, View::Resources) => resources(value),
        (Format::Table, View::Cluster) => cluster(value),
        (Format::Table, View::Events) => events(value),
        (Format::Table, View::Scores) => scores(value),
        (Format::Table, View::Rollout) => rollout(value.get("rollout").unwrap_or(value)),
        (Format::Table, View::Rollouts) => rollouts(value),
    }
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

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
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

fn bytes(value: &Value) -> String {
    let Some(bytes) = value.as_f64() else {
        return "-".into();
    };
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut size = bytes;
    let mut unit = 0;
    while size >= 1024.0 && unit + 1 < UNITS.len() {
        size /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes:.0} B")
    } else {
        format!("{size:.1} {}", UNITS[unit])
    }
}

const VERSION_COLUMNS: [&str; 9] = [
    "MODEL", "VERSION", "STATE", "RUNTIME", "DEVICE", "REPLICAS", "WEIGHT", "ALIASES", "SCORES",
];

/// A row per version of one model (`GET /v1/models/{m}` or one entry of the list).
fn version_rows(model: &Value, with_model: bool) -> Vec<Vec<String>> {
    let name = text(&model["model"]["name"]);
    let traffic = model["traffic"].as_object();
    let total: f64 = traffic
        .map(|weights| weights.values().filter_map(Value::as_f64).sum())
        .unwrap_or(0.0);
    let empty = Vec::new();
    model["versions"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|version| {
            let label = text(&version["label"]);
            let mut state = text(&version["state"]);
            if let Some(reason) = version["state_reason"].as_str().filter(|r| !r.is_empty()) {
                state = format!("{state} ({reason})");
            }
            let measured = &version["metadata"]["measured_memory"];
            let weight = match traffic.and_then(|weights| weights.get(&label)) {
                Some(weight) if total > 0.0 => {
                    format!(
                        "{}%",
                        trim_float(weight.as_f64().unwrap_or(0.0) * 100.0 / total)
                    )
                }
                _ => "-".into(),
            };
            let aliases: Vec<&str> = model["aliases"]
                .as_object()
                .map(|aliases| {
                    aliases
                        .iter()
                        .filter(|(_, target)| target.as_str() == Some(label.as_str()))
                        .map(|(alias, _)| alias.as_str())
                        .collect()
                })
                .unwrap_or_default();
            let scores: Vec<String> = model["latest_scores"][label.as_str()]
                .as_object()
                .map(|scores| {
                    scores
                        .iter()
                        .map(|(metric, value)| format!("{metric}={}", text(value)))
                        .collect()
                })
                .unwrap_or_default();
            let mut row = vec![
                label,
                state,
                text(&version["runtime"]),
                text(&measured["device"]),
                text(&measured["replicas"]),
                weight,
                if aliases.is_empty() {
                    "-".into()
                } else {
                    aliases.join(",")
                },
                if scores.is_empty() {
                    "-".into()
                } else {
                    scores.join(" ")
                },
            ];
            if with_model {
                row.insert(0, name.clone());
            }
            row
        })
        .collect()
}

fn models(value: &Value) -> String {
    let empty = Vec::new();
    let rows: Vec<Vec<String>> = value["models"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .flat_map(|model| version_rows(model, true))
        .collect();
    table(&VERSION_COLUMNS, &rows)
}

fn model(value: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Name:         {}", text(&value["model"]["name"]));
    let _ = writeln!(
        out,
        "Description:  {}",
        text(&value["model"]["description"])
    );
    let _ = writeln!(out, "Policy:       {}", text(&value["policy"]["mode"]));
    out.push('\n');
    let mut rows = version_rows(value, false);
    let empty = Vec::new();
    let versions = value["versions"].as_array().unwrap_or(&empty);
    for (row, version) in rows.iter_mut().zip(versions) {
        row.insert(2, text(&version["serving"]));
    }
    let mut headers: Vec<&str> = VERSION_COLUMNS[1..].to_vec();
    headers.insert(2, "SERVING");
    out.push_str(&table(&headers, &rows));
    out
}

fn traffic(value: &Value) -> String {
    let weights = value["weights"].as_object().cloned().unwrap_or_default();
    if weights.is_empty() {
        return "No traffic weights: requests that name no version go to the highest ready version.\n".into();
    }
    let total: f64 = weights.values().filter_map(Value::as_f64).sum();
    let rows: Vec<Vec<String>> = weights
        .iter()
        .map(|(version, weight)| {
            let share = weight.as_f64().unwrap_or(0.0) * 100.0 / total.max(1.0);
            vec![
                version.clone(),
                text(weight),
                format!("{}%", trim_float(share)),
            ]
        })
        .collect();
    table(&["VERSION", "WEIGHT", "SHARE"], &rows)
}

fn experiment(value: &Value) -> String {
    let empty = Vec::new();
    let rows: Vec<Vec<String>> = value["versions"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|v| {
            let share = |key: &str| {
                v[key]
                    .as_f64()
                    .map_or("-".into(), |s| format!("{}%", trim_float(s * 100.0)))
            };
            vec![
                text(&v["version"]),
                text(&v["state"]),
                text(&v["requests"]),
                text(&v["errors"]),
                share("recent_error_rate"),
                text(&v["latency_ms"]["p50"]),
                text(&v["latency_ms"]["p99"]),
                text(&v["traffic_weight"]),
                share("effective_weight"),
                text(&v["reward"]["mean"]),
                text(&v["score"]),
            ]
        })
        .collect();
    let mut out = format!("Policy: {}\n\n", text(&value["policy"]["mode"]));
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
    if let Some(plan) = value["objective"].as_object() {
        out.push_str(&objective(plan));
    }
    out
}

/// The objective policy's plan under the experiment's table.
fn objective(plan: &serde_json::Map<String, Value>) -> String {
    let number = |value: &Value, digits: usize| {
        value
            .as_f64()
            .map_or("-".into(), |n| format!("{n:.digits$}"))
    };
    let mut out = format!(
        "\nObjective: offered {} req/s, value {} ({}), utilisation {}, floor {}\n\n",
        number(&plan["offered_load"], 1),
        number(&plan["value"], 4),
        if plan["fits"].as_bool() == Some(false) {
            "more than the versions can carry"
        } else {
            "within capacity"
        },
        number(&plan["utilisation"], 2),
        number(&plan["floor"], 3),
    );
    let empty = Vec::new();
    let rows: Vec<Vec<String>> = plan["versions"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|v| {
            vec![
                text(&v["version"]),
                number(&v["quality"], 4),
                number(&v["capacity_per_replica"], 1),
                text(&v["replicas"]),
                number(&v["capacity"], 1),
                number(&v["pinned_load"], 1),
                number(&v["room"], 1),
                v["share"]
                    .as_f64()
                    .map_or("-".into(), |s| format!("{}%", trim_float(s * 100.0))),
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

fn cluster(value: &Value) -> String {
    if value["enabled"] != true && value["nodes"].as_array().is_none_or(Vec::is_empty) {
        return "not a cluster: this gateway runs without [cluster] enabled = true\n".into();
    }
    let empty = Vec::new();
    let nodes: Vec<Vec<String>> = value["nodes"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|node| {
            let devices = node["devices"].as_array().unwrap_or(&empty);
            let free = devices
                .iter()
                .map(|d| {
                    format!(
                        "{} {}/{}",
                        text(&d["id"]),
                        bytes(&d["free"]),
                        bytes(&d["budget"])
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            let versions = node["versions"].as_array().unwrap_or(&empty);
            let held = versions
                .iter()
                .map(|v| {
                    format!(
                        "{}/{} {}",
                        text(&v["model"]),
                        text(&v["version"]),
                        text(&v["state"])
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            let alive = if node["alive"] == true { "yes" } else { "no" };
            vec![
                text(&node["id"]),
                alive.into(),
                text(&node["address"]),
                text(&node["load"]),
                if free.is_empty() { "-".into() } else { free },
                if held.is_empty() { "-".into() } else { held },
            ]
        })
        .collect();
    let mut placed: Vec<(String, String, Vec<String>)> = Vec::new();
    for row in value["placements"].as_array().unwrap_or(&empty) {
        let (model, version) = (text(&row["model"]), text(&row["version"]));
        let on = format!(
            "{} ({} x{})",
            text(&row["node"]),
            text(&row["device"]),
            text(&row["replicas"])
        );
        match placed.last_mut() {
            Some((m, v, nodes)) if *m == model && *v == version => nodes.push(on),
            _ => placed.push((model, version, vec![on])),
        }
    }
    let placed: Vec<Vec<String>> = placed
        .into_iter()
        .map(|(model, version, nodes)| vec![model, version, nodes.join(", ")])
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

fn resources(value: &Value) -> String {
    let empty = Vec::new();
    let devices: Vec<Vec<String>> = value["devices"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|d| {
            vec![
                text(&d["id"]),
                bytes(&d["total"]),
                bytes(&d["budget"]),
                bytes(&d["reserved"]),
                bytes(&d["measured"]),
                bytes(&d["free"]),
            ]
        })
        .collect();
    let versions: Vec<Vec<String>> = value["versions"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|v| {
            let replicas = v["replicas"].as_array().unwrap_or(&empty);
            let mut devices: Vec<String> = replicas.iter().map(|r| text(&r["device"])).collect();
            devices.dedup();
            let autoscaler = &v["autoscaler"];
            vec![
                text(&v["model"]),
                text(&v["version"]),
                text(&v["state"]),
                replicas.len().to_string(),
                if devices.is_empty() {
                    "-".into()
                } else {
                    devices.join(",")
                },
                bytes(&v["reserved_bytes"]),
                text(&autoscaler["target"]),
                text(&autoscaler["reason"]),
            ]
        })
        .collect();
    let mut out = table(
        &["DEVICE", "TOTAL", "BUDGET", "RESERVED", "MEASURED", "FREE"],
        &devices,
    );
    out.push('\n');
    out.push_str(&table(
        &[
            "MODEL", "VERSION", "STATE", "REPLICAS", "DEVICES", "RESERVED", "TARGET", "REASON",
        ],
        &versions,
    ));
    out
}

fn events(value: &Value) -> String {
    let empty = Vec::new();
    let rows: Vec<Vec<String>> = value["events"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|e| {
            let mut detail = e["payload"].to_string();
            if detail.chars().count() > 80 {
                detail = detail.chars().take(77).collect::<String>() + "...";
            }
            vec![
                text(&e["revision"]),
                text(&e["action"]),
                text(&e["model"]),
                text(&e["actor"]),
                detail,
            ]
        })
        .collect();
    table(&["REVISION", "ACTION", "MODEL", "ACTOR", "PAYLOAD"], &rows)
}

fn scores(value: &Value) -> String {
    let empty = Vec::new();
    let rows: Vec<Vec<String>> = value["scores"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|score| {
            vec![
                text(&score["metric"]),
                text(&score["value"]),
                text(&score["source"]),
                text(&score["dataset"]),
                text(&score["revision"]),
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

fn percent(value: &Value) -> String {
    value
        .as_f64()
        .map_or_else(|| "-".into(), |v| format!("{}%", trim_float(v * 100.0)))
}

fn milliseconds(value: &Value) -> String {
    value
        .as_f64()
        .map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

fn stage_name(stage: &Value) -> (String, String) {
    match stage["kind"].as_str() {
        Some("shadow") => (
            "shadow".into(),
            format!(
                "0% (mirror {}%)",
                trim_float(stage["percent"].as_f64().unwrap_or(0.0))
            ),
        ),
        _ => {
            let weights = stage["weights"].as_object();
            let total: f64 = weights
                .map(|w| w.values().filter_map(Value::as_f64).sum())
                .unwrap_or(0.0);
            let text = weights
                .map(|w| {
                    w.iter()
                        .map(|(label, weight)| {
                            let share = weight.as_f64().unwrap_or(0.0) * 100.0 / total.max(1.0);
                            format!("{label}={}%", trim_float(share))
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            ("live".into(), text)
        }
    }
}

/// `rollout status` and `watch`: where it stands, each stage with its figures and verdict,
/// and the gates.
fn rollout(value: &Value) -> String {
    let mut out = String::new();
    let stages = value["stages"].as_array().cloned().unwrap_or_default();
    let current = value["current"].as_u64().unwrap_or(0) as usize;
    let state = text(&value["state"]);
    let _ = writeln!(
        out,
        "Rollout {} of {}: version {} replacing {}",
        text(&value["id"]),
        text(&value["model"]),
        text(&value["target"]),
        text(&value["baseline"])
    );
    let _ = writeln!(
        out,
        "State:   {state}, stage {} of {} (target {}% of live traffic){}",
        current + 1,
        stages.len(),
        trim_float(value["target_percent"].as_f64().unwrap_or(0.0)),
        if value["driven_by_this_gateway"] == true {
            ", driven by this gateway"
        } else {
            ""
        }
    );
    let status = value["live"]["status"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| text(&value["reason"]));
    let _ = writeln!(out, "Status:  {status}\n");
    let history = value["history"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = stages
        .iter()
        .enumerate()
        .map(|(index, stage)| {
            let analysis = history.iter().find(|a| a["stage"] == index);
            let (figures, verdict) = match analysis {
                Some(a) => (&a["figures"], text(&a["verdict"])),
                None if index == current && state == "running" => {
                    (&value["live"]["figures"], "(now)".to_string())
                }
                None if index == current && state == "paused" => {
                    (&value["live"]["figures"], "(paused)".to_string())
                }
                None => (&Value::Null, "-".to_string()),
            };
            let (kind, split) = stage_name(stage);
            let hold = stage["hold_ms"].as_u64().unwrap_or(0);
            let shadow = &figures["shadow"];
            vec![
                index.to_string(),
                kind,
                split,
                format!("{}s", trim_float(hold as f64 / 1000.0)),
                text(&figures["target"]["requests"]),
                percent(&figures["target"]["error_rate"]),
                milliseconds(&figures["target"]["p99_ms"]),
                percent(&figures["baseline"]["error_rate"]),
                milliseconds(&figures["baseline"]["p99_ms"]),
                if stage["kind"] == "shadow" {
                    format!(
                        "{} mirrored, agree {}",
                        text(&shadow["mirrored"]),
                        percent(&shadow["argmax_agreement"])
                    )
                } else {
                    "-".into()
                },
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
    let gates = value["gates"].as_object().cloned().unwrap_or_default();
    let listed: Vec<String> = gates
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| format!("{k}={}", text(v)))
        .collect();
    let _ = writeln!(out, "\nGates:   {}", listed.join(" "));
    if let Some(reason) = value["reason"].as_str().filter(|r| !r.is_empty()) {
        let _ = writeln!(out, "Reason:  {reason}");
    }
    out
}

fn rollouts(value: &Value) -> String {
    let empty = Vec::new();
    let rows: Vec<Vec<String>> = value["rollouts"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|r| {
            vec![
                text(&r["id"]),
                text(&r["target"]),
                text(&r["baseline"]),
                text(&r["state"]),
                format!(
                    "{}/{}",
                    r["current"].as_u64().unwrap_or(0) + 1,
                    r["stages"].as_array().map_or(0, Vec::len)
                ),
                text(&r["reason"]),
            ]
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
            "nodes": [
                {"id": "a", "alive": true, "address": "a:8001", "load": 2,
                 "devices": [{"id": "cpu", "budget": 1024, "free": 512}],
                 "versions": [{"model": "mlp", "version": "1", "state": "ready"}]},
                {"id": "b", "alive": false, "address": "b:8001", "load": 0,
                 "devices": [], "versions": []},
            ],
            "placements": [
                {"model": "mlp", "version": "1", "node": "a", "device": "cpu", "replicas": 1},
                {"model": "mlp", "version": "1", "node": "b", "device": "cpu", "replicas": 2},
            ],
        });
        let text = cluster(&value);
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
        assert!(cluster(&json!({"enabled": false, "nodes": []})).starts_with("not a cluster"));
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
        let value = json!({"models": [{
            "model": {"name": "mlp"},
            "traffic": {"1": 90, "2": 10},
            "aliases": {"stable": "1"},
            "latest_scores": {"1": {"accuracy": 0.93}},
            "versions": [
                {"label": "1", "state": "ready", "state_reason": "", "runtime": "onnx",
                 "metadata": {"measured_memory": {"device": "cpu", "replicas": 1}}},
                {"label": "2", "state": "failed", "state_reason": "corrupt", "runtime": "libtorch",
                 "metadata": {}},
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
}
