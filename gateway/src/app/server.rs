//! Starting and stopping the gateway: opens the registry, builds the layers and hands each
//! the handles it needs, binds the listeners and starts the background tasks.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use switchyard_registry::{SqlStore, Store};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin;
use crate::admin::figures::{self, FigureHistory};
use crate::app::listener;
use crate::auth::{ApiKeys, ManagementTokens, NodeKey, decode_hex};
use crate::config::{ByteSize, Config, ControlMode};
use crate::control::Handles;
use crate::control::capacity::{self, Capacity};
use crate::control::cluster::{self, ClusterView, NodeSettings};
use crate::control::evaluation;
use crate::control::import::import_models;
use crate::control::keys as registry_keys;
use crate::control::model_control::{self, ModelControl};
use crate::control::objective::ObjectiveLoop;
use crate::control::reconcile::{ClusterLink, Reconciler};
use crate::control::repository::{ModelSettings, ModelToml};
use crate::control::rewards::flush_rewards;
use crate::control::rollout::{RolloutDriver, RolloutStatus};
use crate::control::runtimes::{self, RuntimeSettings, Runtimes};
use crate::core::capture::Capture;
use crate::core::forward::{Forwarding, PeerLimits};
use crate::core::request_id::{IdKey, RequestIds, random_key};
use crate::core::{Gateway, TableHandle};
use crate::protocol::auth::InferenceAuth;
use crate::protocol::extensions::{self, Extensions};
use crate::protocol::grpc::forward::GrpcForwarder;
use crate::protocol::pipeline::PipelineLimits;
use crate::protocol::shared_memory::{self, SharedMemory};
use crate::protocol::{Pipeline, auth, grpc, http};
use crate::routing::Experiments;
use crate::tasks::{self, TaskKind};
use crate::telemetry::Metrics;
use tokio_rustls::TlsAcceptor;
use tonic::transport::ClientTlsConfig;

static RECONCILER: TaskKind = TaskKind::new("reconciler");
static AUTOSCALER: TaskKind = TaskKind::new("autoscaler");
static ROLLOUTS: TaskKind = TaskKind::new("rollouts");
static OBJECTIVE: TaskKind = TaskKind::new("objective");
static UPKEEP: TaskKind = TaskKind::new("upkeep");
static CLUSTER: TaskKind = TaskKind::new("cluster");
static REPOSITORY_POLL: TaskKind = TaskKind::new("repository_poll");
static KEYS: TaskKind = TaskKind::new("keys");

/// A started gateway.
pub struct Running {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    pub store: Arc<dyn Store>,
    experiments: Arc<Experiments>,
    reconciler: JoinHandle<()>,
    upkeep: JoinHandle<()>,
    keys_follower: JoinHandle<()>,
    capture: Capture,
    objective: JoinHandle<()>,
    autoscaler: JoinHandle<()>,
    rollouts: JoinHandle<()>,
    /// On a node of a cluster: its membership task, and its id.
    cluster: Option<(JoinHandle<()>, String)>,
    /// With `models.control_mode = "poll"`: the task that reads the repository again.
    poller: Option<JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
    servers: Vec<(&'static str, JoinHandle<std::io::Result<()>>)>,
}

/// Opens the registry (importing the model repository on first start), binds the listeners and
/// starts serving. Versions load in the background; `/v2/health/ready` turns ready once the
/// versions known at start have loaded or failed.
pub async fn start(config: &Config) -> anyhow::Result<Running> {
    // The defaults every model takes: refused here, once, rather than by each model's load.
    ModelSettings::resolve(ModelToml::default(), &config.serving)
        .map_err(|reason| anyhow::anyhow!("invalid [serving] settings: {reason}"))?;
    listener::raise_open_file_limit();
    let store = open_registry(config).await?;
    let runtimes = runtimes_for(config, store.as_ref()).await?;
    let handles = Handles {
        tables: Arc::new(TableHandle::default()),
        experiments: Arc::new(Experiments::default()),
        capacity: Arc::new(
            Capacity::new(&config.devices, !config.cluster.enabled).map_err(anyhow::Error::msg)?,
        ),
        metrics: Metrics::new(config.metrics.enabled),
    };
    let ids = RequestIds::new(&request_id_key(config, store.as_ref()).await?);
    let mut gateway = Gateway::new(handles.tables.clone(), handles.experiments.clone(), ids);
    let (view, view_rx) = watch::channel(Arc::new(ClusterView::default()));
    let (hosted, hosted_rx) = watch::channel(Arc::default());
    let node_key = match config.cluster.enabled {
        true => Some(cluster_key(store.as_ref()).await?),
        false => None,
    };
    let node = if config.cluster.enabled {
        if store.backend() != "postgres" {
            anyhow::bail!(
                "cluster.enabled needs a PostgreSQL registry that the nodes share (--registry \
                 postgres://...); the registry is {}",
                store.backend()
            );
        }
        let node = cluster::node_id(&config.cluster).map_err(anyhow::Error::msg)?;
        let forwarder = GrpcForwarder::new(
            byte_limit(config.grpc.max_message_size),
            node_key.clone().context("a cluster has a key")?,
            peer_tls(config)?,
        );
        gateway = gateway.with_forwarding(Forwarding {
            node: node.as_str().into(),
            forwarder: Arc::new(forwarder),
            limits: PeerLimits {
                max_in_flight: config.cluster.max_forwards_per_peer.max(1),
                stall_after: config.cluster.peer_stall_timeout.0,
            },
            metrics: handles.metrics.clone(),
        });
        Some(node)
    } else {
        None
    };
    let gateway = Arc::new(gateway);
    let unfinished =
        evaluation::job::fail_unfinished(store.as_ref(), node.as_deref().unwrap_or(""))
            .await
            .context("cannot end the evaluations this gateway left running")?;
    if unfinished > 0 {
        tracing::warn!(
            evaluations = unfinished,
            "evaluations left running when this gateway stopped are marked failed"
        );
    }
    let limits = PipelineLimits {
        max_in_flight: config.serving.max_in_flight,
        max_in_flight_bytes: byte_limit(config.serving.max_in_flight_bytes),
        read_timeout: config.http.request_read_timeout.0,
    };
    // The CloudEvents' source names this gateway: its node id, else its host name.
    let capture = Capture::new(
        &config.capture,
        &node.clone().unwrap_or_else(|| {
            cluster::node_id(&config.cluster).unwrap_or_else(|_| "switchyard".into())
        }),
    );
    let pipeline = Arc::new(
        Pipeline::new(gateway.clone(), handles.metrics.clone(), limits)
            .with_capture(capture.clone()),
    );
    let mut reconciler = Reconciler::new(
        handles.clone(),
        store.clone(),
        config.serving.clone(),
        runtimes,
    );
    if let Some(node) = &node {
        reconciler = reconciler.in_cluster(ClusterLink {
            node: node.clone(),
            view: view_rx,
            hosted,
        });
    }
    let reconciler = tasks::spawn(&RECONCILER, reconciler.run());
    let autoscaler = tasks::spawn(
        &AUTOSCALER,
        capacity::run(
            handles.tables.clone(),
            handles.capacity.clone(),
            store.clone(),
            handles.metrics.clone(),
        ),
    );
    let rollout_status = RolloutStatus::new();
    let rollouts = tasks::spawn(
        &ROLLOUTS,
        RolloutDriver::new(
            store.clone(),
            handles.tables.clone(),
            rollout_status.clone(),
        )
        .run(),
    );
    let figures = FigureHistory::new();
    let objective = tasks::spawn(&OBJECTIVE, objective_loop(handles.clone(), gateway.clone()));
    let upkeep = tasks::spawn(
        &UPKEEP,
        upkeep(
            handles.clone(),
            store.clone(),
            gateway.clone(),
            figures.clone(),
        ),
    );

    let api_keys = ApiKeys::new(&config.inference.api_keys);
    let in_force = registry_keys::InForce {
        keys: api_keys.clone(),
        limits: pipeline.model_limits().clone(),
        capture: capture.clone(),
    };
    // The registry's keys are in force before the first request is accepted.
    registry_keys::load(store.as_ref(), &in_force)
        .await
        .context("cannot read the API keys from the registry")?;
    let keys_follower = tasks::spawn(
        &KEYS,
        registry_keys::follow(store.clone(), in_force.clone()),
    );
    let http_listener = bind(config.http.addr, "HTTP").await?;
    let grpc_listener = bind(config.grpc.addr, "gRPC").await?;
    let metrics_listener = bind(config.metrics.addr, "metrics").await?;
    let admin_listener = bind(config.admin.addr, "the management API").await?;
    let http_addr = http_listener.local_addr()?;
    let grpc_addr = grpc_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let metrics_addr = metrics_listener.local_addr()?;

    let cluster = match node {
        Some(_) => {
            let settings = NodeSettings::resolve(&config.cluster, grpc_addr, &config.serving)
                .map_err(anyhow::Error::msg)?;
            let node = settings.node.clone();
            let task = tasks::spawn(
                &CLUSTER,
                cluster::run(
                    settings,
                    handles.clone(),
                    store.clone(),
                    view,
                    hosted_rx,
                    api_keys.clone(),
                ),
            );
            Some((task, node))
        }
        None => None,
    };

    let (shutdown, stop) = watch::channel(false);
    let model_control = Arc::new(ModelControl::new(
        store.clone(),
        handles.tables.clone(),
        config.models.dir.clone(),
        config.serving.clone(),
        config.models.control_mode,
        config.models.load_timeout.0,
    ));
    let poller = (config.models.control_mode == ControlMode::Poll).then(|| {
        tasks::spawn(
            &REPOSITORY_POLL,
            model_control::poll(model_control.clone(), config.models.poll_interval.0),
        )
    });
    let tokens = ManagementTokens::new(&config.admin.tokens);
    let extensions = Arc::new(Extensions {
        repository: model_control,
        shared_memory: Arc::new(SharedMemory::new(shared_memory::Limits {
            max_regions: config.shared_memory.max_regions,
            max_total_bytes: config.shared_memory.max_total_size.0,
        })),
        tokens: tokens.clone(),
    });
    let keys = InferenceAuth {
        keys: api_keys.clone(),
        nodes: node_key,
    };
    // The inference key first, then the management rule for the extensions that change what
    // is served.
    let http_app = http::router(
        pipeline.clone(),
        extensions.clone(),
        byte_limit(config.http.max_request_size),
    )
    .layer(axum::middleware::from_fn_with_state(
        tokens.clone(),
        extensions::require_management,
    ))
    .layer(axum::middleware::from_fn_with_state(
        keys.clone(),
        auth::require_http_key,
    ));
    let grpc_app = grpc::router(
        pipeline.clone(),
        extensions,
        byte_limit(config.grpc.max_message_size),
        keys,
        tokens,
    );
    let admin_app = admin::router(admin::AdminState::new(
        store.clone(),
        gateway.clone(),
        handles.capacity.clone(),
        figures,
        rollout_status,
        &in_force,
        config,
    ));
    let metrics_app = metrics_router(handles.clone(), pipeline, api_keys.clone(), capture.clone());
    let (inference_tls, admin_tls) = tls_acceptors(config)?;
    let serve = |name, listener, app, tls| {
        let limits = config.connections.clone();
        let metrics = handles.metrics.clone();
        (
            name,
            listener::serve(name, listener, app, limits, metrics, tls, stop.clone()),
        )
    };
    let servers = vec![
        serve("HTTP", http_listener, http_app, inference_tls.clone()),
        serve("gRPC", grpc_listener, grpc_app, inference_tls),
        serve("management API", admin_listener, admin_app, admin_tls),
        // Prometheus scrapes in plain text; keep it on a private network.
        serve("metrics", metrics_listener, metrics_app, None),
    ];
    tracing::info!(%http_addr, %grpc_addr, %admin_addr, registry = store.backend(), "serving");
    Ok(Running {
        http_addr,
        grpc_addr,
        admin_addr,
        metrics_addr,
        gateway,
        store,
        experiments: handles.experiments,
        shutdown,
        servers,
        reconciler,
        upkeep,
        keys_follower,
        capture,
        objective,
        autoscaler,
        rollouts,
        cluster,
        poller,
    })
}

/// Opens the registry, importing the model repository on first start (or always, with
/// `models.import_on_start` or `models.control_mode = "poll"`); in `explicit` mode, only the
/// models `models.load` names.
async fn open_registry(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let store: Arc<dyn Store> = Arc::new(SqlStore::open(&config.registry.url).await.with_context(
        || {
            format!(
                "cannot open the registry {}",
                switchyard_registry::redacted(&config.registry.url)
            )
        },
    )?);
    let models_dir = &config.models.dir;
    let first_start = store.list_models().await?.is_empty();
    let only = match config.models.control_mode {
        ControlMode::Explicit => Some(config.models.load.as_slice()),
        ControlMode::None | ControlMode::Poll => None,
    };
    let import = match config.models.control_mode {
        ControlMode::None => first_start || config.models.import_on_start,
        ControlMode::Poll => true,
        ControlMode::Explicit => !config.models.load.is_empty(),
    };
    if import {
        if models_dir.is_dir() {
            let imported = import_models(store.as_ref(), models_dir, &config.serving, only).await?;
            tracing::info!(dir = %models_dir.display(), count = imported.len(), "imported the model repository");
        } else {
            tracing::warn!(dir = %models_dir.display(), "no model repository to import");
        }
    }
    Ok(store)
}

/// The runtime factories, with every runtime the registry's versions need already made, so
/// that a machine lacking one fails at start with the instructions.
async fn runtimes_for(config: &Config, store: &dyn Store) -> anyhow::Result<Runtimes> {
    let library =
        Some(config.onnxruntime.library.clone()).filter(|path| !path.as_os_str().is_empty());
    let mut runtimes = Runtimes::new(RuntimeSettings {
        onnxruntime_library: library,
    });
    let snapshot = store.snapshot().await?;
    for version in snapshot.models.iter().flat_map(|m| &m.versions) {
        let to_load =
            version.state.is_live() || version.state == switchyard_registry::VersionState::Failed;
        if to_load && runtimes::is_available(&version.runtime) {
            runtimes.get(&version.runtime).map_err(anyhow::Error::msg)?;
        }
    }
    Ok(runtimes)
}

/// Every second, on its own so that nothing it waits for delays the plan (and a late tick is
/// not made up with a burst): the objective policy re-plans its shares.
async fn objective_loop(handles: Handles, gateway: Arc<Gateway>) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut objective = ObjectiveLoop::default();
    loop {
        every.tick().await;
        objective.tick(&gateway.snapshot(), &handles.experiments, &handles.capacity);
    }
}

/// Every second: the bandit's rewards go to the registry, so that gateways share what they
/// learn and a restart loses little, and sequences idle past their timeout are released (their
/// next request finds out at once either way); every two, the dashboard's figures are sampled;
/// every five, the histograms are folded.
async fn upkeep(
    handles: Handles,
    store: Arc<dyn Store>,
    gateway: Arc<Gateway>,
    figures: Arc<FigureHistory>,
) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    let sample_every = figures::SAMPLE_EVERY.as_secs().max(1);
    for tick in 0u64.. {
        every.tick().await;
        if tick % sample_every == 0 {
            figures.sample(&gateway.snapshot());
        }
        flush_rewards(&handles.experiments, &*store).await;
        let released = gateway.sequences().sweep();
        if released > 0 {
            tracing::info!(released, "idle sequences released");
        }
        if tick % 5 == 0 {
            handles.metrics.run_upkeep();
        }
    }
}

/// The TLS acceptors of the inference listeners and of the management API, when `[tls]` has a
/// certificate.
fn tls_acceptors(config: &Config) -> anyhow::Result<(Option<TlsAcceptor>, Option<TlsAcceptor>)> {
    let tls = &config.tls;
    if !tls.enabled() {
        return Ok((None, None));
    }
    let inference = listener::tls_acceptor(&tls.cert, &tls.key, None)?;
    let client_ca = Some(tls.admin_client_ca.as_path()).filter(|ca| !ca.as_os_str().is_empty());
    let admin = listener::tls_acceptor(&tls.cert, &tls.key, client_ca)?;
    Ok((Some(inference), Some(admin)))
}

/// The request-id MAC key: configured, else shared through the registry.
/// The key the nodes of a cluster sign their forwards with: a secret the first node writes
/// into the registry they share, and every node reads.
async fn cluster_key(store: &dyn Store) -> anyhow::Result<NodeKey> {
    let proposed = hex::encode(random_key());
    let secret = store.shared_secret("cluster_node_key", &proposed).await?;
    Ok(NodeKey::new(secret.as_bytes()))
}

/// When the listeners use TLS, forwards to peers do too: their certificates must chain to
/// `cluster.peer_ca`, or to `tls.cert` itself.
fn peer_tls(config: &Config) -> anyhow::Result<Option<ClientTlsConfig>> {
    if !config.tls.enabled() {
        return Ok(None);
    }
    let ca = match config.cluster.peer_ca.as_os_str().is_empty() {
        true => &config.tls.cert,
        false => &config.cluster.peer_ca,
    };
    let pem = std::fs::read(ca).with_context(|| {
        format!(
            "cannot read the peers' CA {} (cluster.peer_ca)",
            ca.display()
        )
    })?;
    Ok(Some(ClientTlsConfig::new().ca_certificate(
        tonic::transport::Certificate::from_pem(pem),
    )))
}

async fn request_id_key(config: &Config, store: &dyn Store) -> anyhow::Result<IdKey> {
    let configured = config.inference.request_id_key.trim();
    let key_hex = if configured.is_empty() {
        let proposed = hex::encode(random_key());
        store.shared_secret("request_id_key", &proposed).await?
    } else {
        configured.to_owned()
    };
    decode_hex::<64>(&key_hex).ok_or_else(|| {
        anyhow::anyhow!("inference.request_id_key must be 128 hex digits (64 bytes)")
    })
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    let listen = || -> std::io::Result<TcpListener> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        // Room for bursts of new connections while the accept loop catches up (the kernel caps
        // it at net.core.somaxconn).
        socket.listen(LISTEN_BACKLOG)
    };
    listen().with_context(|| format!("cannot listen for {what} on {addr}"))
}

const LISTEN_BACKLOG: u32 = 4096;

/// How long a stopping gateway waits for its captured events to be written and delivered.
const CAPTURE_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

fn metrics_router(
    handles: Handles,
    pipeline: Arc<Pipeline>,
    keys: ApiKeys,
    capture: Capture,
) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let gauges = super::gauges(&handles, &pipeline, &keys, &capture);
            let text = handles.metrics.render(&gauges);
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    text,
                )
            }
        }),
    )
}

fn byte_limit(size: ByteSize) -> usize {
    usize::try_from(size.0).unwrap_or(usize::MAX)
}

impl Running {
    /// Stops accepting connections, lets requests in flight finish, and returns.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.send_replace(true);
        self.reconciler.abort();
        self.upkeep.abort();
        self.keys_follower.abort();
        self.objective.abort();
        self.autoscaler.abort();
        self.rollouts.abort();
        if let Some(poller) = &self.poller {
            poller.abort();
        }
        if let Some((task, node)) = self.cluster {
            task.abort();
            // Awaited first: a heartbeat still being written would bring the node back.
            let _ = task.await;
            cluster::leave(&*self.store, &node).await;
        }
        let mut stopped = Ok(());
        for (name, server) in self.servers {
            let result = server
                .await
                .with_context(|| format!("the {name} server task failed"))
                .and_then(|served| served.with_context(|| format!("the {name} server failed")));
            if stopped.is_ok() {
                stopped = result;
            }
        }
        // The requests have finished: what they captured is written before the process ends,
        // whatever became of the servers.
        self.capture.close(CAPTURE_DRAIN).await;
        stopped?;
        flush_rewards(&self.experiments, &*self.store).await;
        Ok(())
    }
}
