//! Starting and stopping the gateway: the model repository, the runtime and the listeners.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use switchyard_runtimes::Runtime;
use switchyard_runtimes::onnx::{OnnxRuntime, locate_library};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::gateway::Gateway;
use crate::protocol::http;
use crate::repository;

/// A started gateway.
pub struct Running {
    pub http_addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    shutdown: oneshot::Sender<()>,
    http_server: JoinHandle<std::io::Result<()>>,
}

/// Reads the model repository, binds the listeners and starts serving. Versions load in the
/// background; `/v2/health/ready` turns ready once all of them have loaded or failed.
pub async fn start(config: &Config) -> anyhow::Result<Running> {
    let models_dir = &config.models.dir;
    let entries = repository::scan(models_dir, "model.onnx", &config.serving)?;
    if entries.is_empty() {
        tracing::warn!(dir = %models_dir.display(), "the model repository holds no model");
    }

    let gateway = Arc::new(Gateway::default());
    if !entries.is_empty() {
        let configured =
            Some(config.onnxruntime.library.as_path()).filter(|path| !path.as_os_str().is_empty());
        let library = locate_library(configured)?;
        let runtime = OnnxRuntime::initialize(&library)?;
        tracing::info!(library = %runtime.library().display(), "ONNX Runtime loaded");
        let runtime: Arc<dyn Runtime> = runtime;
        gateway.load_repository(entries, runtime);
    }

    let listener = TcpListener::bind(config.http.addr)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", config.http.addr))?;
    let http_addr = listener.local_addr()?;
    let max_request_bytes = usize::try_from(config.http.max_request_size.0).unwrap_or(usize::MAX);
    let app = http::router(gateway.clone(), max_request_bytes);
    let (shutdown, shutdown_signal) = oneshot::channel::<()>();
    let http_server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = shutdown_signal.await;
            })
            .await
    });
    tracing::info!(%http_addr, "serving the Open Inference Protocol over HTTP");
    Ok(Running {
        http_addr,
        gateway,
        shutdown,
        http_server,
    })
}

impl Running {
    /// Stops accepting connections, lets requests in flight finish, and returns.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(());
        self.http_server
            .await
            .context("the HTTP server task failed")?
            .context("the HTTP server failed")
    }
}
