//! Switchyard: a model-serving gateway speaking the Open Inference Protocol.
//!
//! The request path: a protocol front (`protocol`) decodes a request into an
//! [`inference::InferRequest`]; the [`gateway::Gateway`] picks the version from its model table
//! snapshot, checks the request against the version's signature and queues it on a replica
//! (`serving`), whose worker thread runs the model.

pub mod api;
pub mod auth;
pub mod capacity;
pub mod cli;
pub mod config;
pub mod error;
pub mod experiment;
pub mod gateway;
pub mod inference;
pub mod metadata;
pub mod models;
pub mod protocol;
pub mod reconcile;
pub mod repository;
pub mod resources;
pub mod routing;
pub mod server;
pub mod serving;
pub mod telemetry;
pub mod tracing_setup;

pub use config::Config;
pub use server::{Running, start};
