//! Routing: the traffic policy of a model ([`policy`]), choosing among its candidate versions
//! by that policy ([`choose`], pure functions), and the live figures that feed the choice and
//! the experiment report ([`stats`], [`experiments`]). No registry I/O happens here.

pub mod choose;
pub mod experiments;
pub mod objective;
pub mod policy;
pub mod rules;
pub mod stats;

pub use choose::{
    BetaStats, Candidate, choose, effective_weights, latency_reward, pick_weighted,
    reward_interval, shadow_target,
};
pub use experiments::{Experiments, FeedbackError};
pub use policy::{PolicyMode, ShadowPolicy, TrafficPolicy};
pub use rules::Rule;
pub use stats::{LatencyHistogram, ShadowTally, VersionStats};
