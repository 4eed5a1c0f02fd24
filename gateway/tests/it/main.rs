//! The gateway's integration tests, one module per area, in one test binary: each file used to
//! be its own binary linking the whole gateway (27 links per build, about 1.9 GB of test
//! executables in a debug build).
//!
//! Run one area with nextest's filter, e.g. `cargo nextest run -p switchyard-gateway -E
//! 'test(/^http_api::/)'`, or with cargo test's: `cargo test -p switchyard-gateway --test it
//! http_api::`.

mod common;

mod admin_open;
mod bounds;
mod cancellation;
mod capture;
mod cluster;
mod cluster_tls;
mod connections;
mod core_fake;
mod cuda;
mod dashboard;
mod eval;
mod fuzz_decoders;
mod grpc_api;
mod hostile;
mod hostile_crowd;
mod http_api;
mod keys;
mod layers;
mod memory_pool;
mod metrics;
mod objective;
mod openapi;
mod priorities;
mod registry_api;
mod resources_api;
mod rollouts;
mod routing_api;
mod rules;
mod sequences;
mod tls;
mod tracing;
mod triton_config;
mod triton_extensions;
