//! The Open Inference Protocol fronts, HTTP ([`http`], with its JSON codec [`json`]) and gRPC
//! ([`grpc`]), and the one [`pipeline`] both call. A front converts its wire format to the
//! core's request and the response back, and nothing else. [`metadata`] answers the metadata,
//! readiness and configuration calls of both; [`auth`] checks the inference API key and, for the
//! calls that change what is served, the management tokens. [`shared_memory`] holds Triton's
//! registered shared-memory regions, and [`extensions`] what Triton's extensions beside
//! inference need. [`chunks`] is the answer body both fronts send tensors in without joining them.

pub mod auth;
pub mod chunks;
pub mod extensions;
pub mod grpc;
pub mod http;
pub mod json;
pub mod metadata;
pub mod pipeline;
pub mod shared_memory;

pub use pipeline::Pipeline;
