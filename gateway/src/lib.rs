//! Switchyard: a model-serving gateway speaking the Open Inference Protocol.
//!
//! The crate is in layers; `docs/architecture.md` draws them and walks the request path file
//! by file. A layer uses only the layers below it:
//!
//! - [`app`]: wiring. Starts the listeners, the control plane and the background tasks.
//! - [`protocol`] (the inference fronts and the one pipeline both call) and [`admin`] (the
//!   management API and the CLI).
//! - [`control`]: the control plane beside the request path: reconciler, repository import,
//!   runtime factories, capacity and placement, the cluster, rollouts, evaluation, the
//!   objective policy's loop, the reward flush.
//! - [`core`]: requests and responses, the model table, `infer`.
//! - [`routing`] (policies, experiment figures) and [`serving`] (replicas, batching).
//!
//! [`error`], [`config`], [`auth`], [`telemetry`], [`tasks`] (every task the gateway starts,
//! named and counted), [`version_key`] and [`wire`] (the types generated from `proto/`) are
//! leaves that anything may use.
//!
//! The hot path's rules are lints (`clippy.toml`): no await while the model table's guard
//! (`arc_swap::Guard`) or a lock's guard is held, and no bare `tokio::spawn` in this crate.

// A bare tokio::spawn is denied here, the crate's own unit tests included (clippy.toml names
// it); integration tests and examples may use it. Tasks in a JoinSet belong to their set.
#![deny(clippy::disallowed_methods)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod config;
pub mod control;
pub mod core;
pub mod error;
pub mod priority;
pub mod protocol;
pub mod routing;
pub mod serving;
pub mod tasks;
pub mod telemetry;
pub mod version_key;
pub mod wire;

pub use app::{Running, start};
pub use config::Config;
