//! The command-line client of the management API: `switchyard models ...`, `switchyard traffic
//! ...`, and so on. Each command is one HTTP call; the answer is printed as a table
//! ([`super::output`]), or as the API's JSON or YAML with `-o json|yaml`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde::Deserialize as _;
use serde_json::{Value, json};

use super::output::{Format, View};
use crate::control::runtimes::RUNTIME_KINDS;

#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Base URL of the management API.
    #[arg(
        long,
        env = "SWITCHYARD_ADMIN_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub admin_url: String,
    /// Bearer token.
    #[arg(
        long,
        env = "SWITCHYARD_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// How answers are printed.
    #[arg(
        short = 'o',
        long = "output",
        value_enum,
        default_value = "table",
        global = true
    )]
    pub output: Format,
}

impl ClientArgs {
    /// Hidden copies of these flags, for the commands that do not call the API: they keep
    /// the global ones out of those commands' help (see `main.rs`). Copies, so that a value
    /// given there parses as the global flag's would (clap hands it up to the global).
    pub fn hidden_placeholders() -> Vec<clap::Arg> {
        use clap::Args as _;
        ClientArgs::augment_args(clap::Command::new("client"))
            .get_arguments()
            .map(|arg| arg.clone().global(false).hide(true))
            .collect()
    }
}

/// An answer of the API, and how to draw it as a table.
pub struct Answer {
    pub value: Value,
    pub view: View,
}

impl Answer {
    fn raw(value: Value) -> Answer {
        Answer {
            value,
            view: View::Raw,
        }
    }

    pub fn render(&self, format: Format) -> String {
        super::output::render(format, self.view, &self.value)
    }
}

#[derive(Subcommand, Debug)]
pub enum ModelsCommand {
    /// List models with their versions, traffic and aliases.
    List,
    /// Show one model.
    Show {
        model: String,
        /// Redraw every two seconds until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// Create a model.
    Create {
        model: String,
        #[arg(long, default_value = "")]
        description: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum VersionsCommand {
    /// List a model's versions.
    List { model: String },
    /// Register a version; it loads in the background.
    Register {
        model: String,
        /// Path of the model file (as the gateway sees it).
        #[arg(long)]
        artifact: PathBuf,
        /// Label; the next integer when left out.
        #[arg(long)]
        version: Option<String>,
        /// `onnx` or `libtorch`; unset: from the artifact's extension (`.onnx`, `.pt`).
        #[arg(long)]
        runtime: Option<String>,
        /// Serving settings as JSON (the keys of model.toml).
        #[arg(long)]
        config: Option<String>,
        /// Free-form metadata as JSON.
        #[arg(long)]
        metadata: Option<String>,
    },
    /// Show one version.
    Show { model: String, version: String },
    /// Remove a version (it drains, then retires).
    Remove { model: String, version: String },
}

#[derive(Subcommand, Debug)]
pub enum TrafficCommand {
    /// Show a model's traffic weights.
    Get { model: String },
    /// Set a model's traffic weights: `switchyard traffic set mlp 1=90 2=10`.
    Set {
        model: String,
        #[arg(required = true, value_name = "VERSION=WEIGHT")]
        weights: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Show a model's routing policy.
    Get { model: String },
    /// Set a model's routing policy from JSON:
    /// `switchyard policy set mlp '{"mode": "sticky", "header": "x-user-id"}'`.
    Set {
        model: String,
        #[arg(value_name = "JSON")]
        policy: String,
    },
    /// The live figures of a model's routing experiment.
    Experiment {
        model: String,
        /// Redraw every two seconds until interrupted.
        #[arg(long)]
        watch: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ScoresCommand {
    /// Record scores: `switchyard scores add mlp 2 accuracy=0.93 f1=0.9 --source nightly-eval`.
    Add {
        model: String,
        version: String,
        #[arg(required = true, value_name = "METRIC=VALUE")]
        metrics: Vec<String>,
        #[arg(long, default_value = "cli")]
        source: String,
        #[arg(long, default_value = "")]
        dataset: String,
    },
    /// A version's score history.
    List { model: String, version: String },
}

#[derive(Subcommand, Debug)]
pub enum AliasesCommand {
    /// Point an alias at a version: `switchyard aliases set mlp stable 1`.
    Set {
        model: String,
        alias: String,
        version: String,
    },
    /// Remove an alias.
    Remove { model: String, alias: String },
}

#[derive(Subcommand, Debug)]
pub enum RolloutCommand {
    /// Start a rollout: `switchyard rollout start mlp --target 3 --steps 5,25,50,100 --hold 30s`.
    Start {
        model: String,
        /// The version to roll out.
        #[arg(long)]
        target: String,
        /// The version it replaces; unset: the `stable` alias, else the most weighted one.
        #[arg(long)]
        baseline: Option<String>,
        /// Percentages of live traffic, one step each.
        #[arg(long, value_delimiter = ',', default_value = "5,25,50,100")]
        steps: Vec<f64>,
        /// How long each step holds, at least.
        #[arg(long, default_value = "30s")]
        hold: String,
        /// A first phase mirroring this percentage of requests to the target, with no live
        /// traffic.
        #[arg(long)]
        shadow: Option<f64>,
        /// How long the shadow phase holds (default: --hold).
        #[arg(long)]
        shadow_hold: Option<String>,
        /// The gates as JSON: `{"min_requests": 200, "max_p99_ratio": 1.5}` (others keep their
        /// defaults).
        #[arg(long)]
        gates: Option<String>,
    },
    /// A rollout's stage, weights and figures against its gates (the latest unless --id).
    Status {
        model: String,
        #[arg(long, default_value = "latest")]
        id: String,
    },
    /// Redraw the status every second until the rollout ends or Ctrl-C.
    Watch {
        model: String,
        #[arg(long, default_value = "latest")]
        id: String,
    },
    /// Hold the current step.
    Pause {
        model: String,
        #[arg(long, default_value = "latest")]
        id: String,
    },
    /// Go on from a pause (the step's hold starts again).
    Resume {
        model: String,
        #[arg(long, default_value = "latest")]
        id: String,
    },
    /// Give the target all the traffic and the `stable` alias now.
    Promote {
        model: String,
        #[arg(long, default_value = "latest")]
        id: String,
    },
    /// Give the baseline all the traffic back now.
    Abort {
        model: String,
        #[arg(long, default_value = "latest")]
        id: String,
    },
    /// A model's rollouts, newest first.
    List { model: String },
}

/// A key's models, limits and priority, as `keys create` and `keys set` take them.
#[derive(Args, Debug, Clone)]
pub struct KeySpecArgs {
    /// Models it may call, by name or glob (`*`, `?`), comma-separated; none: every model.
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    /// Requests per second, sustained.
    #[arg(long)]
    pub rps: Option<f64>,
    /// Requests that may come at once above the rate.
    #[arg(long)]
    pub burst: Option<u32>,
    /// Rows per second (the first dimension of each request's first input).
    #[arg(long)]
    pub rows_per_s: Option<f64>,
    /// Rows that may come at once above that rate.
    #[arg(long)]
    pub rows_burst: Option<u32>,
    /// Requests in flight at once.
    #[arg(long)]
    pub in_flight: Option<u32>,
    /// Its requests' priority when they name none: 1 (the highest) to 10.
    #[arg(long)]
    pub priority: Option<u32>,
}

impl KeySpecArgs {
    /// `current` with what these flags give laid over it: a flag not given keeps its value.
    fn over(&self, current: &Value) -> Value {
        let mut spec = current.clone();
        if !spec.is_object() {
            spec = json!({});
        }
        let given = self.spec();
        if !self.models.is_empty() {
            spec["models"] = given["models"].clone();
        }
        if !spec["limits"].is_object() {
            spec["limits"] = json!({});
        }
        if let Some(limits) = given["limits"].as_object() {
            for (name, value) in limits {
                spec["limits"][name] = value.clone();
            }
        }
        if let Some(priority) = self.priority {
            spec["priority"] = priority.into();
        }
        spec
    }

    fn spec(&self) -> Value {
        let mut limits = serde_json::Map::new();
        for (name, value) in [
            ("requests_per_s", self.rps.map(Value::from)),
            ("requests_burst", self.burst.map(Value::from)),
            ("rows_per_s", self.rows_per_s.map(Value::from)),
            ("rows_burst", self.rows_burst.map(Value::from)),
            ("in_flight", self.in_flight.map(Value::from)),
        ] {
            if let Some(value) = value {
                limits.insert(name.into(), value);
            }
        }
        let mut spec = json!({"models": self.models, "limits": limits});
        if let Some(priority) = self.priority {
            spec["priority"] = priority.into();
        }
        spec
    }
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Make a key for a tenant; its secret is printed this once:
    /// `switchyard keys create team-a --models 'mlp*' --rps 50 --burst 100 --in-flight 8`.
    Create {
        name: String,
        #[command(flatten)]
        spec: KeySpecArgs,
    },
    /// Every key with what its name's requests came to on this gateway.
    List,
    /// Change a key's models, limits or priority; what is not given keeps its value
    /// (`--models '*'` for every model).
    Set {
        id: String,
        #[command(flatten)]
        spec: KeySpecArgs,
    },
    /// Give a key a new secret, printed this once; the old one stops working.
    Rotate { id: String },
    /// Revoke a key: every gateway refuses it within a second.
    Revoke { id: String },
}

#[derive(Subcommand, Debug)]
pub enum CaptureCommand {
    /// Every captured model's sinks, with what they wrote, dropped or failed on this gateway.
    List,
    /// Capture a sample of a model's requests:
    /// `switchyard capture set mlp --sample 0.1 --file mlp --http http://127.0.0.1:9000/events --redact x`.
    Set {
        model: String,
        /// The fraction of requests captured, from 0.000001 to 1.
        #[arg(long)]
        sample: f64,
        /// A folder under capture.roots for a JSON-lines file (repeatable).
        #[arg(long)]
        file: Vec<String>,
        /// An http(s) URL taking CloudEvents (repeatable).
        #[arg(long)]
        http: Vec<String>,
        /// The only inputs whose data is kept (comma-separated); default: all.
        #[arg(long, value_delimiter = ',')]
        inputs: Option<Vec<String>>,
        /// The only outputs whose data is kept (comma-separated); default: all.
        #[arg(long, value_delimiter = ',')]
        outputs: Option<Vec<String>>,
        /// Inputs and outputs kept without their data (comma-separated).
        #[arg(long, value_delimiter = ',')]
        redact: Vec<String>,
    },
    /// Stop capturing a model's requests.
    Off { model: String },
}

fn pairs(items: &[String], what: &str) -> anyhow::Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|item| {
            item.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .with_context(|| format!("'{item}' is not {what}"))
        })
        .collect()
}

/// The runtime whose artifact file has the extension of `artifact`.
fn runtime_of(artifact: &std::path::Path) -> anyhow::Result<String> {
    let extension = artifact.extension().and_then(|e| e.to_str()).unwrap_or("");
    RUNTIME_KINDS
        .iter()
        .find(|kind| {
            std::path::Path::new(kind.artifact_file)
                .extension()
                .is_some_and(|own| own == extension)
        })
        .map(|kind| kind.name.to_owned())
        .with_context(|| {
            let known: Vec<String> = RUNTIME_KINDS
                .iter()
                .map(|kind| format!("{}: {}", kind.artifact_file, kind.name))
                .collect();
            format!(
                "cannot tell the runtime of '{}' from its extension ({}); pass --runtime",
                artifact.display(),
                known.join(", ")
            )
        })
}

fn json_arg(text: Option<String>, name: &str) -> anyhow::Result<Option<Value>> {
    text.map(|t| serde_json::from_str(&t).with_context(|| format!("--{name} is not JSON")))
        .transpose()
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    output: Format,
}

impl Client {
    pub fn new(args: &ClientArgs) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: args.admin_url.trim_end_matches('/').to_owned(),
            token: args.token.clone().filter(|t| !t.is_empty()),
            output: args.output,
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        match body {
            Some(body) => request = request.json(&body),
            // The API takes writes as JSON only, bodiless ones included.
            None if method != reqwest::Method::GET && method != reqwest::Method::DELETE => {
                request = request.header(reqwest::header::CONTENT_TYPE, "application/json");
            }
            None => {}
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the management API at {}", self.base))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let refusal = super::openapi::ErrorResponse::deserialize(&body);
            let message = refusal.map_or_else(|_| "no message".into(), |refusal| refusal.error);
            bail!("{status}: {message}");
        }
        Ok(body)
    }

    async fn get(&self, path: &str, view: View) -> anyhow::Result<Answer> {
        let value = self.call(reqwest::Method::GET, path, None).await?;
        Ok(Answer { value, view })
    }

    async fn write(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Answer> {
        self.call(method, path, body).await.map(Answer::raw)
    }

    pub async fn models(&self, command: &ModelsCommand) -> anyhow::Result<Answer> {
        match command {
            ModelsCommand::List => self.get("/v1/models", View::Models).await,
            ModelsCommand::Show { model, .. } => {
                self.get(&format!("/v1/models/{model}"), View::Model).await
            }
            ModelsCommand::Create { model, description } => {
                self.write(
                    reqwest::Method::POST,
                    "/v1/models",
                    Some(json!({"name": model, "description": description})),
                )
                .await
            }
        }
    }

    pub async fn versions(&self, command: &VersionsCommand) -> anyhow::Result<Answer> {
        match command {
            // The model's own record holds what the table needs beside each version: its
            // weight, aliases and scores.
            VersionsCommand::List { model } => match self.output_is_table() {
                true => {
                    self.get(&format!("/v1/models/{model}"), View::Versions)
                        .await
                }
                false => {
                    self.get(&format!("/v1/models/{model}/versions"), View::Raw)
                        .await
                }
            },
            VersionsCommand::Register {
                model,
                artifact,
                version,
                runtime,
                config,
                metadata,
            } => {
                let runtime = match runtime {
                    Some(runtime) => runtime.clone(),
                    None => runtime_of(artifact)?,
                };
                let artifact = std::path::absolute(artifact).unwrap_or(artifact.clone());
                let body = json!({
                    "version": version,
                    "runtime": runtime,
                    "artifact": artifact.display().to_string(),
                    "config": json_arg(config.clone(), "config")?,
                    "metadata": json_arg(metadata.clone(), "metadata")?,
                });
                self.write(
                    reqwest::Method::POST,
                    &format!("/v1/models/{model}/versions"),
                    Some(body),
                )
                .await
            }
            VersionsCommand::Show { model, version } => {
                self.get(&format!("/v1/models/{model}/versions/{version}"), View::Raw)
                    .await
            }
            VersionsCommand::Remove { model, version } => {
                self.write(
                    reqwest::Method::DELETE,
                    &format!("/v1/models/{model}/versions/{version}"),
                    None,
                )
                .await
            }
        }
    }

    pub async fn traffic(&self, command: &TrafficCommand) -> anyhow::Result<Answer> {
        match command {
            TrafficCommand::Get { model } => {
                self.get(&format!("/v1/models/{model}/traffic"), View::Traffic)
                    .await
            }
            TrafficCommand::Set { model, weights } => {
                let mut parsed = BTreeMap::new();
                for (version, weight) in pairs(weights, "VERSION=WEIGHT")? {
                    let weight: u64 = weight.parse().with_context(|| {
                        format!(
                            "weight '{weight}' of version '{version}' is not a whole number >= 0"
                        )
                    })?;
                    parsed.insert(version, weight);
                }
                self.write(
                    reqwest::Method::PUT,
                    &format!("/v1/models/{model}/traffic"),
                    Some(json!({"weights": parsed})),
                )
                .await
            }
        }
    }

    pub async fn keys(&self, command: &KeysCommand) -> anyhow::Result<Answer> {
        match command {
            KeysCommand::List => self.get("/v1/keys", View::Keys).await,
            KeysCommand::Create { name, spec } => {
                let mut body = spec.spec();
                body["name"] = name.as_str().into();
                self.write(reqwest::Method::POST, "/v1/keys", Some(body))
                    .await
            }
            KeysCommand::Set { id, spec } => {
                let list = self.call(reqwest::Method::GET, "/v1/keys", None).await?;
                let current = list["keys"]
                    .as_array()
                    .and_then(|keys| keys.iter().find(|key| key["id"] == id.as_str()))
                    .with_context(|| format!("404 Not Found: no key '{id}'"))?;
                self.write(
                    reqwest::Method::PUT,
                    &format!("/v1/keys/{id}"),
                    Some(spec.over(&current["spec"])),
                )
                .await
            }
            KeysCommand::Rotate { id } => {
                self.write(
                    reqwest::Method::POST,
                    &format!("/v1/keys/{id}/rotate"),
                    None,
                )
                .await
            }
            KeysCommand::Revoke { id } => {
                self.write(reqwest::Method::DELETE, &format!("/v1/keys/{id}"), None)
                    .await
            }
        }
    }

    pub async fn capture(&self, command: &CaptureCommand) -> anyhow::Result<Answer> {
        match command {
            CaptureCommand::List => self.get("/v1/capture", View::Captures).await,
            CaptureCommand::Set {
                model,
                sample,
                file,
                http,
                inputs,
                outputs,
                redact,
            } => {
                let sinks: Vec<Value> = file
                    .iter()
                    .map(|folder| json!({"file": folder}))
                    .chain(http.iter().map(|url| json!({"http": url})))
                    .collect();
                let mut spec = json!({"sample": sample, "sinks": sinks, "redact": redact});
                if let Some(inputs) = inputs {
                    spec["inputs"] = json!(inputs);
                }
                if let Some(outputs) = outputs {
                    spec["outputs"] = json!(outputs);
                }
                self.write(
                    reqwest::Method::PUT,
                    &format!("/v1/models/{model}/capture"),
                    Some(spec),
                )
                .await
            }
            CaptureCommand::Off { model } => {
                self.write(
                    reqwest::Method::DELETE,
                    &format!("/v1/models/{model}/capture"),
                    None,
                )
                .await
            }
        }
    }

    pub async fn policy(&self, command: &PolicyCommand) -> anyhow::Result<Answer> {
        match command {
            PolicyCommand::Get { model } => {
                self.get(&format!("/v1/models/{model}/policy"), View::Raw)
                    .await
            }
            PolicyCommand::Set { model, policy } => {
                let policy: Value =
                    serde_json::from_str(policy).context("the policy is not valid JSON")?;
                self.write(
                    reqwest::Method::PUT,
                    &format!("/v1/models/{model}/policy"),
                    Some(policy),
                )
                .await
            }
            PolicyCommand::Experiment { model, .. } => {
                self.get(&format!("/v1/models/{model}/experiment"), View::Experiment)
                    .await
            }
        }
    }

    pub async fn scores(&self, command: &ScoresCommand) -> anyhow::Result<Answer> {
        match command {
            ScoresCommand::Add {
                model,
                version,
                metrics,
                source,
                dataset,
            } => {
                let mut parsed = BTreeMap::new();
                for (metric, value) in pairs(metrics, "METRIC=VALUE")? {
                    let value: f64 = value
                        .parse()
                        .with_context(|| format!("'{value}' is not a number"))?;
                    parsed.insert(metric, value);
                }
                let body = json!({"metrics": parsed, "source": source, "dataset": dataset});
                self.write(
                    reqwest::Method::POST,
                    &format!("/v1/models/{model}/versions/{version}/scores"),
                    Some(body),
                )
                .await
            }
            ScoresCommand::List { model, version } => {
                self.get(
                    &format!("/v1/models/{model}/versions/{version}/scores"),
                    View::Scores,
                )
                .await
            }
        }
    }

    pub async fn aliases(&self, command: &AliasesCommand) -> anyhow::Result<Answer> {
        match command {
            AliasesCommand::Set {
                model,
                alias,
                version,
            } => {
                self.write(
                    reqwest::Method::PUT,
                    &format!("/v1/models/{model}/aliases/{alias}"),
                    Some(json!({"version": version})),
                )
                .await
            }
            AliasesCommand::Remove { model, alias } => {
                self.write(
                    reqwest::Method::DELETE,
                    &format!("/v1/models/{model}/aliases/{alias}"),
                    None,
                )
                .await
            }
        }
    }

    pub async fn rollout(&self, command: &RolloutCommand) -> anyhow::Result<Answer> {
        let control = |model: &str, id: &str, action: &str| {
            format!("/v1/models/{model}/rollouts/{id}/{action}")
        };
        let path = match command {
            RolloutCommand::Start {
                model,
                target,
                baseline,
                steps,
                hold,
                shadow,
                shadow_hold,
                gates,
            } => {
                let body = json!({
                    "target": target,
                    "baseline": baseline,
                    "steps": steps,
                    "hold": hold,
                    "shadow": shadow.map(|percent| json!({"percent": percent, "hold": shadow_hold})),
                    "gates": json_arg(gates.clone(), "gates")?,
                });
                let value = self
                    .call(
                        reqwest::Method::POST,
                        &format!("/v1/models/{model}/rollouts"),
                        Some(body),
                    )
                    .await?;
                return Ok(Answer {
                    value,
                    view: View::Rollout,
                });
            }
            RolloutCommand::Status { model, id } | RolloutCommand::Watch { model, id } => {
                return self
                    .get(&format!("/v1/models/{model}/rollouts/{id}"), View::Rollout)
                    .await;
            }
            RolloutCommand::List { model } => {
                return self
                    .get(&format!("/v1/models/{model}/rollouts"), View::Rollouts)
                    .await;
            }
            RolloutCommand::Pause { model, id } => control(model, id, "pause"),
            RolloutCommand::Resume { model, id } => control(model, id, "resume"),
            RolloutCommand::Promote { model, id } => control(model, id, "promote"),
            RolloutCommand::Abort { model, id } => control(model, id, "abort"),
        };
        let value = self.call(reqwest::Method::POST, &path, None).await?;
        Ok(Answer {
            value,
            view: View::Rollout,
        })
    }

    pub async fn events(&self, after: i64, limit: i64) -> anyhow::Result<Answer> {
        self.get(
            &format!("/v1/events?after={after}&limit={limit}"),
            View::Events,
        )
        .await
    }

    pub async fn resources(&self) -> anyhow::Result<Answer> {
        self.get("/v1/resources", View::Resources).await
    }

    pub async fn cluster(&self) -> anyhow::Result<Answer> {
        self.get("/v1/cluster", View::Cluster).await
    }

    /// A reward in [0, 1] for a request the gateway served.
    pub async fn feedback(&self, request_id: &str, reward: f64) -> anyhow::Result<Answer> {
        self.write(
            reqwest::Method::POST,
            "/v1/feedback",
            Some(json!({"request_id": request_id, "reward": reward})),
        )
        .await
    }

    pub async fn import(&self) -> anyhow::Result<Answer> {
        self.write(reqwest::Method::POST, "/v1/repository/import", None)
            .await
    }

    fn output_is_table(&self) -> bool {
        self.output == Format::Table
    }
}
