//! The protocol fronts: each decodes its wire format into an `InferRequest` and encodes the
//! `InferResponse`, and nothing else.

pub mod grpc;
pub mod http;
pub mod json;
