//! The command-line client of the management API: `switchyard models ...`, `switchyard traffic
//! ...`, and so on. Each command is one HTTP call; the answer is printed as JSON.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

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
}

#[derive(Subcommand, Debug)]
pub enum ModelsCommand {
    /// List models with their versions, traffic and aliases.
    List,
    /// Show one model.
    Show { model: String },
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
        #[arg(long, default_value = "onnx")]
        runtime: String,
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
    Experiment { model: String },
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

fn json_arg(text: Option<String>, name: &str) -> anyhow::Result<Option<Value>> {
    text.map(|t| serde_json::from_str(&t).with_context(|| format!("--{name} is not JSON")))
        .transpose()
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    pub fn new(args: &ClientArgs) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: args.admin_url.trim_end_matches('/').to_owned(),
            token: args.token.clone().filter(|t| !t.is_empty()),
        }
    }

    async fn call(
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
            let message = body["error"].as_str().unwrap_or("no message");
            bail!("{status}: {message}");
        }
        Ok(body)
    }

    pub async fn models(&self, command: ModelsCommand) -> anyhow::Result<Value> {
        match command {
            ModelsCommand::List => self.call(reqwest::Method::GET, "/v1/models", None).await,
            ModelsCommand::Show { model } => {
                self.call(reqwest::Method::GET, &format!("/v1/models/{model}"), None)
                    .await
            }
            ModelsCommand::Create { model, description } => {
                self.call(
                    reqwest::Method::POST,
                    "/v1/models",
                    Some(json!({"name": model, "description": description})),
                )
                .await
            }
        }
    }

    pub async fn versions(&self, command: VersionsCommand) -> anyhow::Result<Value> {
        match command {
            VersionsCommand::List { model } => {
                self.call(
                    reqwest::Method::GET,
                    &format!("/v1/models/{model}/versions"),
                    None,
                )
                .await
            }
            VersionsCommand::Register {
                model,
                artifact,
                version,
                runtime,
                config,
                metadata,
            } => {
                let artifact = std::path::absolute(&artifact).unwrap_or(artifact);
                let body = json!({
                    "version": version,
                    "runtime": runtime,
                    "artifact": artifact.display().to_string(),
                    "config": json_arg(config, "config")?,
                    "metadata": json_arg(metadata, "metadata")?,
                });
                self.call(
                    reqwest::Method::POST,
                    &format!("/v1/models/{model}/versions"),
                    Some(body),
                )
                .await
            }
            VersionsCommand::Show { model, version } => {
                self.call(
                    reqwest::Method::GET,
                    &format!("/v1/models/{model}/versions/{version}"),
                    None,
                )
                .await
            }
            VersionsCommand::Remove { model, version } => {
                self.call(
                    reqwest::Method::DELETE,
                    &format!("/v1/models/{model}/versions/{version}"),
                    None,
                )
                .await
            }
        }
    }

    pub async fn traffic(&self, command: TrafficCommand) -> anyhow::Result<Value> {
        match command {
            TrafficCommand::Get { model } => {
                self.call(
                    reqwest::Method::GET,
                    &format!("/v1/models/{model}/traffic"),
                    None,
                )
                .await
            }
            TrafficCommand::Set { model, weights } => {
                let mut parsed = BTreeMap::new();
                for (version, weight) in pairs(&weights, "VERSION=WEIGHT")? {
                    let weight: u64 = weight.parse().with_context(|| {
                        format!(
                            "weight '{weight}' of version '{version}' is not a whole number >= 0"
                        )
                    })?;
                    parsed.insert(version, weight);
                }
                self.call(
                    reqwest::Method::PUT,
                    &format!("/v1/models/{model}/traffic"),
                    Some(json!({"weights": parsed})),
                )
                .await
            }
        }
    }

    pub async fn policy(&self, command: PolicyCommand) -> anyhow::Result<Value> {
        match command {
            PolicyCommand::Get { model } => {
                self.call(
                    reqwest::Method::GET,
                    &format!("/v1/models/{model}/policy"),
                    None,
                )
                .await
            }
            PolicyCommand::Set { model, policy } => {
                let policy: Value =
                    serde_json::from_str(&policy).context("the policy is not valid JSON")?;
                self.call(
                    reqwest::Method::PUT,
                    &format!("/v1/models/{model}/policy"),
                    Some(policy),
                )
                .await
            }
            PolicyCommand::Experiment { model } => {
                self.call(
                    reqwest::Method::GET,
                    &format!("/v1/models/{model}/experiment"),
                    None,
                )
                .await
            }
        }
    }

    pub async fn scores(&self, command: ScoresCommand) -> anyhow::Result<Value> {
        match command {
            ScoresCommand::Add {
                model,
                version,
                metrics,
                source,
                dataset,
            } => {
                let mut parsed = BTreeMap::new();
                for (metric, value) in pairs(&metrics, "METRIC=VALUE")? {
                    let value: f64 = value
                        .parse()
                        .with_context(|| format!("'{value}' is not a number"))?;
                    parsed.insert(metric, value);
                }
                let body = json!({"metrics": parsed, "source": source, "dataset": dataset});
                self.call(
                    reqwest::Method::POST,
                    &format!("/v1/models/{model}/versions/{version}/scores"),
                    Some(body),
                )
                .await
            }
            ScoresCommand::List { model, version } => {
                self.call(
                    reqwest::Method::GET,
                    &format!("/v1/models/{model}/versions/{version}/scores"),
                    None,
                )
                .await
            }
        }
    }

    pub async fn aliases(&self, command: AliasesCommand) -> anyhow::Result<Value> {
        match command {
            AliasesCommand::Set {
                model,
                alias,
                version,
            } => {
                self.call(
                    reqwest::Method::PUT,
                    &format!("/v1/models/{model}/aliases/{alias}"),
                    Some(json!({"version": version})),
                )
                .await
            }
            AliasesCommand::Remove { model, alias } => {
                self.call(
                    reqwest::Method::DELETE,
                    &format!("/v1/models/{model}/aliases/{alias}"),
                    None,
                )
                .await
            }
        }
    }

    pub async fn events(&self, after: i64, limit: i64) -> anyhow::Result<Value> {
        self.call(
            reqwest::Method::GET,
            &format!("/v1/events?after={after}&limit={limit}"),
            None,
        )
        .await
    }

    pub async fn import(&self) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, "/v1/repository/import", None)
            .await
    }
}
