//! The serving core, below the fronts and the control plane: the protocol-neutral request and
//! response and their validation ([`request`]), the model table ([`table`]), choosing a version
//! ([`route`]) and `infer` ([`gateway`]).

pub mod capture;
pub mod classification;
pub mod feedback;
pub mod forward;
pub mod gateway;
pub mod repository;
pub mod request;
pub mod request_id;
pub mod route;
pub mod sequence;
pub mod table;
pub mod tensor_json;

pub use gateway::{ASK_AGAIN, Gateway};
pub use request::{InferRequest, InferResponse, Parameter};
pub use table::{
    ControlKind, ControlSpec, Interface, ModelEntry, ModelTable, NO_ROOM_ANYWHERE, ReadyVersion,
    Reshape, Scaling, SequenceSettings, StateSpec, TableHandle, VersionEntry, VersionStatus,
};
