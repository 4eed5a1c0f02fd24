//! Starting and stopping the gateway: the model repository, the runtime and the listeners.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::serve::ListenerExt;
use switchyard_registry::{SqlStore, Store};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api;
use crate::auth::{self, ApiKeys};
use crate::config::{ByteSize, Config};
use crate::gateway::Gateway;
use crate::protocol::{grpc, http};
use crate::reconcile::{self, Reconciler, Runtimes};

/// A started gateway.
pub struct Running {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    pub store: Arc<dyn Store>,
    reconciler: JoinHandle<()>,
    upkeep: JoinHandle<()>,
    autoscaler: JoinHandle<()>,
    shutdown: watch::Sender<bool>,
    servers: Vec<(&'static str, JoinHandle<std::io::Result<()>>)>,
}

/// Opens the registry (importing the model repository on first start), binds the listeners and
/// starts serving. Versions load in the background; `/v2/health/ready` turns ready once the
/// versions known at start have loaded or failed.
pub async fn start(config: &Config) -> anyhow::Result<Running> {
    let store: Arc<dyn Store> = Arc::new(
        SqlStore::open(&config.registry.url)
            .await
            .with_context(|| format!("cannot open the registry {}", config.registry.url))?,
    );
    let models_dir = &config.models.dir;
    let first_start = store.list_models().await?.is_empty();
    if first_start || config.models.import_on_start {
        if models_dir.is_dir() {
            let imported =
                reconcile::import_repository(store.as_ref(), models_dir, &config.serving).await?;
            tracing::info!(dir = %models_dir.display(), count = imported.len(), "imported the model repository");
        } else {
            tracing::warn!(dir = %models_dir.display(), "no model repository to import");
        }
    }

    let library =
        Some(config.onnxruntime.library.clone()).filter(|path| !path.as_os_str().is_empty());
    let mut runtimes = Runtimes::new(library);
    // Fail fast, with the instructions, when the versions to serve need a runtime this machine
    // lacks.
    let snapshot = store.snapshot().await?;
    for version in snapshot.models.iter().flat_map(|m| &m.versions) {
        let to_load =
            version.state.is_live() || version.state == switchyard_registry::VersionState::Failed;
        if to_load && reconcile::RUNTIMES.contains(&version.runtime.as_str()) {
            runtimes.get(&version.runtime).map_err(anyhow::Error::msg)?;
        }
    }

    for device in &config.devices {
        device
            .id
            .parse::<switchyard_runtimes::Device>()
            .map_err(|e| anyhow::anyhow!("invalid [[devices]] entry: {e}"))?;
    }
    let gateway = Arc::new(Gateway::new(
        config.serving.max_in_flight.max(1),
        config.metrics.enabled,
        config.devices.clone(),
    ));
    let reconciler = Reconciler::new(
        gateway.clone(),
        store.clone(),
        config.serving.clone(),
        runtimes,
    );
    let reconciler = tokio::spawn(reconciler.run());
    let autoscaler = tokio::spawn(crate::capacity::run(gateway.clone(), store.clone()));
    let upkeep = {
        let gateway = gateway.clone();
        let store = store.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
            for tick in 0u64.. {
                every.tick().await;
                // Rewards go to the registry often, so that gateways share what their bandits
                // learn and a restart loses little.
                gateway.experiments().flush_rewards(&*store).await;
                if tick % 5 == 0 {
                    gateway.telemetry().run_upkeep();
                }
            }
        })
    };

    let http_listener = TcpListener::bind(config.http.addr)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", config.http.addr))?;
    let grpc_listener = TcpListener::bind(config.grpc.addr)
        .await
        .with_context(|| format!("cannot listen for gRPC on {}", config.grpc.addr))?;
    let metrics_listener = TcpListener::bind(config.metrics.addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {}", config.metrics.addr))?;
    let admin_listener = TcpListener::bind(config.admin.addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen for the management API on {}",
                config.admin.addr
            )
        })?;
    let http_addr = http_listener.local_addr()?;
    let grpc_addr = grpc_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let metrics_addr = metrics_listener.local_addr()?;

    let (shutdown, stop) = watch::channel(false);
    let keys = ApiKeys::new(&config.inference.api_keys);
    let http_app = http::router(gateway.clone(), byte_limit(config.http.max_request_size)).layer(
        axum::middleware::from_fn_with_state(keys.clone(), auth::require_http_key),
    );
    let grpc_app = grpc::router(gateway.clone(), byte_limit(config.grpc.max_message_size)).layer(
        axum::middleware::from_fn_with_state(keys, auth::require_grpc_key),
    );
    let admin_app = api::router(api::AdminState::new(
        store.clone(),
        gateway.clone(),
        &config.admin,
        config.models.dir.clone(),
        config.serving.clone(),
    ));
    let servers = vec![
        ("HTTP", serve(http_listener, http_app, stop.clone())),
        ("gRPC", serve(grpc_listener, grpc_app, stop.clone())),
        (
            "management API",
            serve(admin_listener, admin_app, stop.clone()),
        ),
        (
            "metrics",
            serve(metrics_listener, metrics_router(gateway.clone()), stop),
        ),
    ];
    tracing::info!(%http_addr, %grpc_addr, %admin_addr, registry = store.backend(), "serving");
    Ok(Running {
        http_addr,
        grpc_addr,
        admin_addr,
        metrics_addr,
        gateway,
        store,
        shutdown,
        servers,
        reconciler,
        upkeep,
        autoscaler,
    })
}

fn metrics_router(gateway: Arc<Gateway>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let gateway = gateway.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    gateway.telemetry().render(&gateway),
                )
            }
        }),
    )
}

fn byte_limit(size: ByteSize) -> usize {
    usize::try_from(size.0).unwrap_or(usize::MAX)
}

fn serve(
    listener: TcpListener,
    app: axum::Router,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<std::io::Result<()>> {
    // Small answers must leave at once: without TCP_NODELAY, a response written in more than
    // one segment (HTTP/2 headers, data and trailers) waits for the peer's delayed ACK.
    let listener = listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            })
            .await
    })
}

impl Running {
    /// Stops accepting connections, lets requests in flight finish, and returns.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.send_replace(true);
        self.reconciler.abort();
        self.upkeep.abort();
        self.autoscaler.abort();
        for (name, server) in self.servers {
            server
                .await
                .with_context(|| format!("the {name} server task failed"))?
                .with_context(|| format!("the {name} server failed"))?;
        }
        self.gateway.experiments().flush_rewards(&*self.store).await;
        Ok(())
    }
}
