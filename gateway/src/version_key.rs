//! The name of a model version as every part of the gateway keys it, a leaf.

use std::fmt;
use std::sync::Arc;

/// A model version as every part of the gateway names it: the key of its figures, its
/// reservations and its replicas.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VersionKey {
    pub model: Arc<str>,
    pub version: Arc<str>,
}

impl VersionKey {
    pub fn new(model: &str, version: &str) -> VersionKey {
        VersionKey {
            model: model.into(),
            version: version.into(),
        }
    }
}

impl fmt::Display for VersionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.model, self.version)
    }
}
