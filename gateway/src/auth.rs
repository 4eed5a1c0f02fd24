//! Credentials, a leaf: keys and tokens kept as SHA-256 digests and compared in constant time,
//! the secret a request presents, and the inference API's keys. The inference fronts
//! (`protocol::auth`) and the management API check requests with these.

use std::sync::Arc;

use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};

pub type Sha256Digest = [u8; 32];

pub fn digest(secret: &str) -> Sha256Digest {
    Sha256::digest(secret.as_bytes()).into()
}

/// Parses a SHA-256 digest written as 64 hex digits.
pub fn decode_hex(text: &str) -> Option<Sha256Digest> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (index, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(index * 2..index * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Compares digests in time that does not depend on where they differ.
pub fn same_digest(a: &Sha256Digest, b: &Sha256Digest) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The secret a request presents: `Authorization: Bearer ...` or `X-API-Key: ...` (as HTTP
/// headers or gRPC metadata).
pub fn presented_secret(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .or_else(|| {
            headers
                .get("x-api-key")
                .and_then(|value| value.to_str().ok())
        })
        .map(str::trim)
}

/// The inference API's keys; none means the API is open.
#[derive(Clone, Default)]
pub struct ApiKeys(Arc<Vec<Sha256Digest>>);

impl ApiKeys {
    /// From configured digests (hex) and, if set, the plain key in `SWITCHYARD_API_KEY`.
    pub fn new(configured: &[String]) -> ApiKeys {
        let mut keys: Vec<Sha256Digest> = configured
            .iter()
            .filter_map(|hex| {
                let parsed = decode_hex(hex);
                if parsed.is_none() {
                    tracing::error!("ignoring an API key whose sha256 is not 64 hex digits");
                }
                parsed
            })
            .collect();
        if let Ok(key) = std::env::var("SWITCHYARD_API_KEY")
            && !key.is_empty()
        {
            keys.push(digest(&key));
        }
        ApiKeys(Arc::new(keys))
    }

    pub fn admits(&self, headers: &HeaderMap) -> bool {
        if self.0.is_empty() {
            return true;
        }
        presented_secret(headers)
            .map(digest)
            .is_some_and(|presented| self.0.iter().any(|key| same_digest(key, &presented)))
    }
}
