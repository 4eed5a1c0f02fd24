//! One loaded replica of a model version: a worker thread that owns the runtime session and a
//! bounded queue in front of it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{self, SyncSender, TrySendError};

use switchyard_runtimes::{LoadOptions, NamedTensor, Runtime, RuntimeError, Signature};
use tokio::sync::oneshot;

use crate::error::{ErrorKind, GatewayError};

type Reply = oneshot::Sender<Result<Vec<NamedTensor>, RuntimeError>>;

struct Job {
    inputs: Vec<NamedTensor>,
    reply: Reply,
}

/// A replica's handle. Dropping it closes the queue; the worker finishes the queued requests,
/// then unloads the model and exits.
pub struct Replica {
    jobs: SyncSender<Job>,
    signature: Signature,
}

impl Replica {
    /// Starts a worker thread, loads the model on it and waits (without blocking the executor)
    /// until the model is loaded or has failed to load.
    pub async fn start(
        runtime: Arc<dyn Runtime>,
        artifact: PathBuf,
        options: LoadOptions,
        queue_capacity: usize,
        thread_name: String,
    ) -> Result<Replica, RuntimeError> {
        let (jobs, queue) = mpsc::sync_channel::<Job>(queue_capacity);
        let (loaded_tx, loaded_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                let mut model = match runtime.load(&artifact, &options) {
                    Ok(model) => {
                        let _ = loaded_tx.send(Ok(model.signature().clone()));
                        model
                    }
                    Err(error) => {
                        let _ = loaded_tx.send(Err(error));
                        return;
                    }
                };
                while let Ok(job) = queue.recv() {
                    // The caller gave up (disconnected or timed out): skip the work.
                    if job.reply.is_closed() {
                        continue;
                    }
                    let _ = job.reply.send(model.run(&job.inputs));
                }
            })
            .map_err(|e| RuntimeError::Execution(format!("cannot start a worker thread: {e}")))?;
        let signature = loaded_rx.await.map_err(|_| {
            RuntimeError::Execution("the worker thread stopped while loading".into())
        })??;
        Ok(Replica { jobs, signature })
    }

    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Queues a request and waits for its outputs. A full queue is refused at once.
    pub async fn infer(&self, inputs: Vec<NamedTensor>) -> Result<Vec<NamedTensor>, GatewayError> {
        let (reply, outputs) = oneshot::channel();
        match self.jobs.try_send(Job { inputs, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(GatewayError::new(
                    ErrorKind::Overloaded,
                    "the model's queue is full; retry shortly",
                ));
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(GatewayError::unavailable("the model is being unloaded"));
            }
        }
        outputs
            .await
            .map_err(|_| GatewayError::internal("the model's worker stopped before answering"))?
            .map_err(GatewayError::from)
    }
}
