//! Serving: the replicas of each version ([`ReplicaSet`]), their worker threads and bounded
//! queues, dynamic batching, and the warm-up run. This is the lowest layer of the gateway: it
//! knows runtimes and tensors, not models, policies or protocols.

mod batching;
mod joining;
mod replicas;
mod threads;
mod warmup;
mod worker;

#[cfg(test)]
mod tests;

pub use batching::{Batching, DEFAULT_MAX_BATCH_SIZE};
pub use joining::JoinAxes;
pub use replicas::{RemovedReplica, ReplicaInfo, ReplicaLoad, ReplicaSet, cold_waiter_arrived};
pub use threads::Threads;
pub use warmup::{Warmup, WarmupOutcome};
