//! Triton's model repository extension as the protocol fronts see it: the index of the
//! repository's models and what each load and unload asks. The control plane does the work
//! (`control::model_control`, over the registry); the fronts are handed it as this trait, so
//! that neither names the other.

use std::future::Future;
use std::pin::Pin;

use crate::error::GatewayError;

/// One line of the repository index: a model, or one of its versions, with its state.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry {
    pub name: String,
    /// Empty for a model none of whose versions is known to the registry (not loaded).
    pub version: String,
    /// Triton's names: `READY`, `LOADING`, `UNAVAILABLE`; empty when never loaded.
    pub state: &'static str,
    pub reason: String,
}

pub type RepositoryFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, GatewayError>> + Send + 'a>>;

/// Loads, unloads and lists the models of the repository.
pub trait ModelRepository: Send + Sync {
    /// Every model of the repository folder and of the registry, a line per version; only the
    /// ready ones when `ready_only`.
    fn index(&self, ready_only: bool) -> RepositoryFuture<'_, Vec<IndexEntry>>;

    /// Loads (or reloads) a model from its folder, with `config` (Triton's `ModelConfig` in
    /// JSON) in place of its `config.pbtxt` when given, and answers once its versions are ready
    /// or have failed. `actor` goes to the audit log.
    fn load<'a>(
        &'a self,
        actor: &'a str,
        model: &'a str,
        config: Option<&'a str>,
    ) -> RepositoryFuture<'a, ()>;

    /// Unloads a model: its versions stop serving once their requests are done.
    fn unload<'a>(&'a self, actor: &'a str, model: &'a str) -> RepositoryFuture<'a, ()>;
}
