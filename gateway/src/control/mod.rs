//! The control plane, beside the request path: the reconciler that turns registry changes into
//! a published model table ([`reconcile`]), the model repository and its import
//! ([`repository`], Triton's `config.pbtxt` in [`triton`], [`import`]), Triton's explicit
//! model control ([`model_control`]), the runtime factories ([`runtimes`]), memory
//! accounting, placement and autoscaling ([`capacity`]), the cluster's membership and
//! placement ([`cluster`]), rollouts and their gates ([`rollout`]), evaluation on labelled
//! data ([`evaluation`]), the objective policy's loop ([`objective`]), and the reward flush
//! ([`rewards`]). Only this layer and the management API reach the registry.

pub mod capacity;
pub mod cluster;
pub mod evaluation;
pub mod import;
pub mod keys;
pub mod model_control;
pub mod objective;
pub mod reconcile;
pub mod repository;
pub mod rewards;
pub mod rollout;
pub mod runtimes;
pub mod triton;

use std::sync::Arc;

use crate::core::TableHandle;
use crate::routing::Experiments;
use crate::telemetry::Metrics;
use capacity::Capacity;

/// What the control plane changes or reads, handed in by the app: never the whole gateway.
#[derive(Clone)]
pub struct Handles {
    pub tables: Arc<TableHandle>,
    pub experiments: Arc<Experiments>,
    pub capacity: Arc<Capacity>,
    pub metrics: Arc<Metrics>,
}
