#![deny(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use switchyard_gateway::admin::cli;
use switchyard_gateway::app::eval as app_eval;
use switchyard_gateway::config::{ByteSize, Config, ControlMode, LogFormat};
use switchyard_gateway::control::evaluation;
use switchyard_gateway::tasks::{self, TaskKind};
use switchyard_gateway::telemetry::tracing as tracing_setup;

static SECOND_SIGNAL: TaskKind = TaskKind::new("second_signal");

/// Switchyard: serve ONNX and TorchScript models over the Open Inference Protocol.
#[derive(Parser)]
#[command(name = "switchyard", version)]
struct Cli {
    #[command(flatten)]
    client: cli::ClientArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the gateway.
    Serve(ServeArgs),
    /// Models in the registry.
    #[command(subcommand)]
    Models(cli::ModelsCommand),
    /// Versions of a model.
    #[command(subcommand)]
    Versions(cli::VersionsCommand),
    /// Traffic weights of a model.
    #[command(subcommand)]
    Traffic(cli::TrafficCommand),
    /// Routing policy of a model, and its experiment's figures.
    #[command(subcommand)]
    Policy(cli::PolicyCommand),
    /// Scores of a version.
    #[command(subcommand)]
    Scores(cli::ScoresCommand),
    /// Aliases of a model.
    #[command(subcommand)]
    Aliases(cli::AliasesCommand),
    /// Rollouts of a model: start, status, watch, pause, resume, promote, abort.
    #[command(subcommand)]
    Rollout(cli::RolloutCommand),
    /// Inference API keys: create, list, set, rotate, revoke.
    #[command(subcommand)]
    Keys(cli::KeysCommand),
    /// Payload capture of each model's requests: list, set, off.
    #[command(subcommand)]
    Capture(cli::CaptureCommand),
    /// Score versions on a labelled dataset through the inference API:
    /// `switchyard eval digits --dataset data/digits/test.npz --versions all --post`.
    Eval(switchyard_gateway::app::eval::EvalArgs),
    /// The registry's audit log.
    Events {
        /// Only events after this revision.
        #[arg(long, default_value_t = 0)]
        after: i64,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Register the model repository's folders the registry does not know yet.
    Import,
    /// Devices (budget, reserved and measured memory) and each version's replicas.
    Resources,
    /// The cluster's nodes (alive, address, load, free memory, the versions each holds) and
    /// where the leader placed each version.
    Cluster,
    /// A reward in [0, 1] for a request the gateway served (bandit policies learn from it).
    Feedback { request_id: String, reward: f64 },
    /// Shell completions, printed: `switchyard completions bash > /etc/bash_completion.d/switchyard`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Configuration file; without it the embedded config/switchyard.toml is used.
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    /// Address of the HTTP listener (host:port).
    #[arg(long, env = "SWITCHYARD_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    /// OTLP/gRPC endpoint to export traces to, e.g. http://127.0.0.1:4317.
    #[arg(long, env = "SWITCHYARD_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Address of the Prometheus metrics listener (host:port).
    #[arg(long, env = "SWITCHYARD_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Address of the management API (host:port).
    #[arg(long, env = "SWITCHYARD_ADMIN_ADDR")]
    admin_addr: Option<SocketAddr>,
    /// The registry: sqlite://PATH or postgres://USER@HOST:PORT/DB.
    #[arg(long, env = "SWITCHYARD_REGISTRY")]
    registry: Option<String>,
    /// Register model folders the registry does not know yet.
    #[arg(long)]
    import_models: bool,
    /// How the repository folder and the served models follow each other, as Triton's flag:
    /// none, poll (read the folder again every models.poll_interval) or explicit (only what
    /// --load-model and the repository extension's load ask).
    #[arg(long, env = "SWITCHYARD_MODEL_CONTROL_MODE")]
    model_control_mode: Option<ControlMode>,
    /// With --model-control-mode explicit: a model to load at start (repeat it; `*` loads all).
    #[arg(long = "load-model")]
    load_model: Vec<String>,
    /// Address of the gRPC listener (host:port).
    #[arg(long, env = "SWITCHYARD_GRPC_ADDR")]
    grpc_addr: Option<SocketAddr>,
    /// Largest gRPC message, e.g. 64MiB.
    #[arg(long, env = "SWITCHYARD_GRPC_MAX_MESSAGE_SIZE", value_parser = ByteSize::parse)]
    grpc_max_message_size: Option<ByteSize>,
    /// The model repository folder.
    #[arg(long, env = "SWITCHYARD_MODELS")]
    models: Option<PathBuf>,
    /// Largest request body, e.g. 64MiB.
    #[arg(long, env = "SWITCHYARD_MAX_REQUEST_SIZE", value_parser = ByteSize::parse)]
    max_request_size: Option<ByteSize>,
    /// Path of libonnxruntime.so.1.31.1.
    #[arg(long, env = "SWITCHYARD_ONNXRUNTIME_LIBRARY")]
    onnxruntime_library: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "SWITCHYARD_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    /// Join the cluster of gateways sharing the (PostgreSQL) registry.
    #[arg(long, env = "SWITCHYARD_CLUSTER")]
    cluster: bool,
    /// This node's id in the cluster (default: the host name).
    #[arg(long, env = "SWITCHYARD_NODE_ID")]
    node_id: Option<String>,
    /// host:port at which peers reach this node's gRPC listener.
    #[arg(long, env = "SWITCHYARD_ADVERTISE")]
    advertise: Option<String>,
}

impl ServeArgs {
    fn apply(self, config: &mut Config) {
        if let Some(addr) = self.http_addr {
            config.http.addr = addr;
        }
        if let Some(endpoint) = self.otlp_endpoint {
            config.tracing.otlp_endpoint = endpoint;
        }
        if let Some(addr) = self.metrics_addr {
            config.metrics.addr = addr;
        }
        if let Some(addr) = self.admin_addr {
            config.admin.addr = addr;
        }
        if let Some(url) = self.registry {
            config.registry.url = url;
        }
        if self.import_models {
            config.models.import_on_start = true;
        }
        if let Some(mode) = self.model_control_mode {
            config.models.control_mode = mode;
        }
        if !self.load_model.is_empty() {
            config.models.load = self.load_model;
        }
        if let Some(addr) = self.grpc_addr {
            config.grpc.addr = addr;
        }
        if let Some(size) = self.grpc_max_message_size {
            config.grpc.max_message_size = size;
        }
        if let Some(dir) = self.models {
            config.models.dir = dir;
        }
        if let Some(size) = self.max_request_size {
            config.http.max_request_size = size;
        }
        if let Some(library) = self.onnxruntime_library {
            config.onnxruntime.library = library;
        }
        if let Some(format) = self.log_format {
            config.log.format = format;
        }
        if self.cluster {
            config.cluster.enabled = true;
        }
        if let Some(id) = self.node_id {
            config.cluster.node_id = id;
        }
        if let Some(address) = self.advertise {
            config.cluster.advertise = address;
        }
    }
}

/// The management API's client flags are global, so that they may come before or after a
/// client command; `serve` and `completions` read none of them, so their help must not list
/// them. clap does not copy a global flag into a subcommand that has a flag of that id, so
/// these two get hidden ones that nothing reads.
fn parse_command_line() -> Cli {
    use clap::FromArgMatches;
    let matches = command_line().get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
}

/// The command line as parsed and as shell completions describe it.
fn command_line() -> clap::Command {
    use clap::CommandFactory;
    let mut command = Cli::command();
    for name in ["serve", "completions"] {
        command = command.mut_subcommand(name, |subcommand| {
            subcommand.args(cli::ClientArgs::hidden_placeholders())
        });
    }
    command
}

#[tokio::main]
async fn main() -> ExitCode {
    let parsed = parse_command_line();
    let args = match parsed.command {
        Command::Serve(args) => args,
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut command_line(),
                "switchyard",
                &mut std::io::stdout(),
            );
            return ExitCode::SUCCESS;
        }
        Command::Eval(eval) => return evaluate(&parsed.client, &eval).await,
        command => return client(&parsed.client, command).await,
    };
    let mut config = match Config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("switchyard: {error}");
            return ExitCode::FAILURE;
        }
    };
    args.apply(&mut config);
    let telemetry = match tracing_setup::init(&config) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("switchyard: cannot set up logging and tracing: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let served = serve(&config).await;
    telemetry.shutdown();
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("switchyard: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `switchyard eval`: the report, printed; with `--post`, each version's metrics recorded as
/// registry scores. Fails when a request failed, and then posts nothing.
async fn evaluate(args: &cli::ClientArgs, eval: &app_eval::EvalArgs) -> ExitCode {
    let report = match app_eval::evaluate(eval).await {
        Ok(report) => report,
        Err(error) => {
            eprintln!("switchyard: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let format = eval.format.unwrap_or(match args.output {
        switchyard_gateway::admin::output::Format::Json => app_eval::EvalFormat::Json,
        _ => app_eval::EvalFormat::Table,
    });
    print!("{}", app_eval::render(&report, format));
    let versions = report["versions"].as_object().cloned().unwrap_or_default();
    if let Some((label, failed)) = versions
        .iter()
        .find(|(_, v)| v["failed_requests"].as_u64().unwrap_or(0) > 0)
    {
        eprintln!(
            "switchyard: {} requests to version {label} failed ({}); nothing posted",
            failed["failed_requests"], failed["first_error"]
        );
        return ExitCode::FAILURE;
    }
    if eval.post {
        let client = cli::Client::new(args);
        let dataset = &report["dataset"];
        let name = dataset["name"].as_str().unwrap_or("");
        let source = evaluation::score_source(name, dataset["sha256"].as_str().unwrap_or(""));
        for (label, version) in &versions {
            let body = serde_json::json!({
                "metrics": evaluation::scores_of(version),
                "source": source,
                "dataset": name,
            });
            let path = format!("/v1/models/{}/versions/{label}/scores", eval.model);
            if let Err(error) = client.call(reqwest::Method::POST, &path, Some(body)).await {
                eprintln!("switchyard: cannot post the scores of version {label}: {error:#}");
                return ExitCode::FAILURE;
            }
        }
        eprintln!("posted the scores of {} versions", versions.len());
    }
    ExitCode::SUCCESS
}

/// Runs one management API call and prints its answer; with `--watch`, again every two
/// seconds, redrawn in place, until interrupted.
async fn client(args: &cli::ClientArgs, command: Command) -> ExitCode {
    let client = cli::Client::new(args);
    let watch = matches!(
        command,
        Command::Models(cli::ModelsCommand::Show { watch: true, .. })
            | Command::Policy(cli::PolicyCommand::Experiment { watch: true, .. })
            | Command::Rollout(cli::RolloutCommand::Watch { .. })
    );
    loop {
        let answer = match &command {
            Command::Serve(_) | Command::Completions { .. } | Command::Eval(_) => {
                return ExitCode::FAILURE;
            }
            Command::Models(command) => client.models(command).await,
            Command::Versions(command) => client.versions(command).await,
            Command::Traffic(command) => client.traffic(command).await,
            Command::Policy(command) => client.policy(command).await,
            Command::Scores(command) => client.scores(command).await,
            Command::Aliases(command) => client.aliases(command).await,
            Command::Rollout(command) => client.rollout(command).await,
            Command::Keys(command) => client.keys(command).await,
            Command::Capture(command) => client.capture(command).await,
            Command::Events { after, limit } => client.events(*after, *limit).await,
            Command::Import => client.import().await,
            Command::Resources => client.resources().await,
            Command::Cluster => client.cluster().await,
            Command::Feedback { request_id, reward } => client.feedback(request_id, *reward).await,
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(error) => {
                eprintln!("switchyard: {error:#}");
                return ExitCode::FAILURE;
            }
        };
        let text = answer.render(args.output);
        if !watch {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        // Home and clear, then the figures: the terminal shows the latest only.
        print!("\x1b[H\x1b[2J{text}");
        let _ = std::io::Write::flush(&mut std::io::stdout());
        // A rollout that has ended has nothing more to show.
        let state = answer.value["state"].as_str().unwrap_or("");
        if matches!(command, Command::Rollout(_))
            && matches!(state, "promoted" | "rolled_back" | "aborted")
        {
            return ExitCode::SUCCESS;
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        }
    }
}

async fn serve(config: &Config) -> anyhow::Result<()> {
    let running = switchyard_gateway::start(config).await?;
    shutdown_signal().await;
    tracing::info!("shutting down: finishing requests in flight (a second signal exits at once)");
    tasks::spawn(&SECOND_SIGNAL, async {
        shutdown_signal().await;
        std::process::exit(130);
    });
    running.stop().await
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
