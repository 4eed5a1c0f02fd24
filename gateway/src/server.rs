//! Starting and stopping the gateway: the model repository, the runtime and the listeners.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::serve::ListenerExt;
use switchyard_runtimes::Runtime;
use switchyard_runtimes::onnx::{OnnxRuntime, locate_library};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{ByteSize, Config};
use crate::gateway::Gateway;
use crate::protocol::{grpc, http};
use crate::repository;

/// A started gateway.
pub struct Running {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    shutdown: watch::Sender<bool>,
    servers: Vec<(&'static str, JoinHandle<std::io::Result<()>>)>,
}

/// Reads the model repository, binds the listeners and starts serving. Versions load in the
/// background; `/v2/health/ready` turns ready once all of them have loaded or failed.
pub async fn start(config: &Config) -> anyhow::Result<Running> {
    let models_dir = &config.models.dir;
    let entries = repository::scan(models_dir, "model.onnx", &config.serving)?;
    if entries.is_empty() {
        tracing::warn!(dir = %models_dir.display(), "the model repository holds no model");
    }

    let gateway = Arc::new(Gateway::new(config.serving.max_in_flight.max(1)));
    if !entries.is_empty() {
        let configured =
            Some(config.onnxruntime.library.as_path()).filter(|path| !path.as_os_str().is_empty());
        let library = locate_library(configured)?;
        let runtime = OnnxRuntime::initialize(&library)?;
        tracing::info!(library = %runtime.library().display(), "ONNX Runtime loaded");
        let runtime: Arc<dyn Runtime> = runtime;
        gateway.load_repository(entries, runtime);
    }

    let http_listener = TcpListener::bind(config.http.addr)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", config.http.addr))?;
    let grpc_listener = TcpListener::bind(config.grpc.addr)
        .await
        .with_context(|| format!("cannot listen for gRPC on {}", config.grpc.addr))?;
    let http_addr = http_listener.local_addr()?;
    let grpc_addr = grpc_listener.local_addr()?;

    let (shutdown, stop) = watch::channel(false);
    let http_app = http::router(gateway.clone(), byte_limit(config.http.max_request_size));
    let grpc_app = grpc::router(gateway.clone(), byte_limit(config.grpc.max_message_size));
    let servers = vec![
        ("HTTP", serve(http_listener, http_app, stop.clone())),
        ("gRPC", serve(grpc_listener, grpc_app, stop)),
    ];
    tracing::info!(%http_addr, %grpc_addr, "serving the Open Inference Protocol over HTTP and gRPC");
    Ok(Running {
        http_addr,
        grpc_addr,
        gateway,
        shutdown,
        servers,
    })
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
        for (name, server) in self.servers {
            server
                .await
                .with_context(|| format!("the {name} server task failed"))?
                .with_context(|| format!("the {name} server failed"))?;
        }
        Ok(())
    }
}
