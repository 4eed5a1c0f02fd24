//! Credentials, a leaf: keys and tokens kept as SHA-256 digests and compared in constant time,
//! the secret a request presents, the inference API's keys (`keys`: tenants with their
//! limits), the management tokens with the
//! rule for calls that come without one, and the credential a node of a cluster signs its
//! forwards with. The inference fronts (`protocol::auth`) and the
//! management API check requests with these.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{self, HeaderMap, header};
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::config::{AdminRole, AdminToken};
use crate::error::{ErrorKind, GatewayError, quoted};

pub mod keys;

pub use keys::{ApiKeys, Caller, Tenant};

pub type Sha256Digest = [u8; 32];

pub fn digest(secret: &str) -> Sha256Digest {
    Sha256::digest(secret.as_bytes()).into()
}

/// `N` bytes from the operating system's random source, for secrets (keys, MAC keys):
/// `fastrand`'s 64-bit state is no secret's source.
pub fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    use std::io::Read;
    let mut bytes = [0u8; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// Parses `N` bytes written as `2 * N` hex digits (a SHA-256 digest, a MAC's tag).
pub fn decode_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text.trim(), &mut out).ok()?;
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

/// The management API's tokens and its rule for calls without one, shared by the management
/// API and the inference ports' endpoints that change what is served (Triton's repository and
/// shared-memory extensions): a token of the role the call needs, or, when no token is
/// configured, a program on this machine.
#[derive(Clone, Default)]
pub struct ManagementTokens {
    tokens: Arc<Vec<(Sha256Digest, AdminRole)>>,
}

/// What a management call needs.
pub struct Call<'a> {
    pub method: &'a http::Method,
    pub uri: &'a http::Uri,
    pub headers: &'a HeaderMap,
    /// The peer, where the listener knows it.
    pub peer: Option<SocketAddr>,
    pub needs: AdminRole,
    /// Whether a write without a token must come as JSON (a web page can post a form or text
    /// across sites without asking, but not JSON). Clients of Triton's extensions send no
    /// content type; the origin checks stand for it there.
    pub json_writes: bool,
}

impl<'a> Call<'a> {
    /// A request as the rule sees it: its method, URI, headers and the peer the listener put in
    /// its extensions.
    pub fn of<B>(request: &'a http::Request<B>, needs: AdminRole, json_writes: bool) -> Call<'a> {
        Call {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
            peer: request
                .extensions()
                .get::<axum::extract::ConnectInfo<SocketAddr>>()
                .map(|axum::extract::ConnectInfo(peer)| *peer),
            needs,
            json_writes,
        }
    }
}

impl ManagementTokens {
    /// From configured digests (hex) and, if set, the plain token in `SWITCHYARD_ADMIN_TOKEN`
    /// (a writer).
    pub fn new(configured: &[AdminToken]) -> ManagementTokens {
        let mut tokens: Vec<(Sha256Digest, AdminRole)> = configured
            .iter()
            .filter_map(|token| match decode_hex(&token.sha256) {
                Some(digest) => Some((digest, token.role)),
                None => {
                    tracing::error!("ignoring an admin token whose sha256 is not 64 hex digits");
                    None
                }
            })
            .collect();
        if let Ok(token) = std::env::var("SWITCHYARD_ADMIN_TOKEN")
            && !token.is_empty()
        {
            tokens.push((digest(&token), AdminRole::Write));
        }
        ManagementTokens {
            tokens: Arc::new(tokens),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Who makes the call, for the audit log (`loopback`, or the token's digest prefix); or
    /// why it is refused. `local_fallback`: without tokens, calls from this machine are
    /// accepted (else refused).
    pub fn authorize(&self, call: &Call<'_>, local_fallback: bool) -> Result<String, GatewayError> {
        if self.tokens.is_empty() {
            if !local_fallback {
                return Err(GatewayError::new(
                    ErrorKind::Unauthenticated,
                    "a bearer token is required",
                ));
            }
            local_only(call)?;
            return Ok("loopback".into());
        }
        let Some(presented) = presented_secret(call.headers) else {
            return Err(GatewayError::new(
                ErrorKind::Unauthenticated,
                "a bearer token is required",
            ));
        };
        let digest = digest(presented);
        let Some((_, role)) = self
            .tokens
            .iter()
            .find(|(known, _)| same_digest(known, &digest))
        else {
            return Err(GatewayError::new(
                ErrorKind::Unauthenticated,
                "unknown token",
            ));
        };
        if call.needs == AdminRole::Write && *role == AdminRole::Read {
            return Err(GatewayError::new(
                ErrorKind::PermissionDenied,
                "this token may only read",
            ));
        }
        Ok(format!("token:{}", hex::encode(&digest[..4])))
    }
}

/// Without tokens a call is trusted only from a program on this machine, not from a web page
/// driving a browser here: the peer is on loopback, the Host names loopback (no DNS
/// rebinding), no other origin sent the request, and (where asked) writes come as JSON.
pub fn local_only(call: &Call<'_>) -> Result<(), GatewayError> {
    let refuse = |message: String| Err(GatewayError::new(ErrorKind::PermissionDenied, message));
    if let Some(peer) = call.peer
        && !peer.ip().is_loopback()
    {
        return refuse(format!(
            "without admin tokens this answers loopback clients only, not {}",
            peer.ip()
        ));
    }
    let headers = call.headers;
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .or_else(|| call.uri.authority().map(|a| a.as_str()));
    if let Some(host) = host
        && !is_loopback_host(host)
    {
        return refuse(format!(
            "Host '{}' is not a loopback name; without admin tokens this answers requests to \
             localhost only",
            quoted(host)
        ));
    }
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|value| value.to_str().ok());
    let cross_site = headers
        .get("sec-fetch-site")
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"cross-site"));
    let foreign_origin = origin.is_some_and(|origin| {
        let host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        !is_loopback_host(host)
    });
    if cross_site || foreign_origin {
        return refuse("cross-origin requests are refused without admin tokens".into());
    }
    let writes_a_body = matches!(
        *call.method,
        http::Method::POST | http::Method::PUT | http::Method::PATCH
    );
    if call.json_writes && call.needs == AdminRole::Write && writes_a_body && !is_json(headers) {
        return Err(GatewayError::new(
            ErrorKind::UnsupportedMediaType,
            "writes must be sent as Content-Type: application/json",
        ));
    }
    Ok(())
}

/// Whether a body is declared as JSON (`Content-Type: application/json`, any parameters).
pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// `localhost`, `127.x.x.x` or `[::1]`, with or without a port.
pub fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The header (HTTP) or metadata key (gRPC) with which a node of a cluster proves that it
/// forwarded a request: `<unix ms>.<hex HMAC-SHA-256 of "<node>\n<unix ms>">` under the
/// cluster's secret.
pub const NODE_CREDENTIAL: &str = "switchyard-node-credential";

/// How far a credential's time may be from the receiver's clock: it bounds how long a
/// credential seen on a plain-text network could be replayed, and tolerates clocks that
/// disagree between machines.
const NODE_CREDENTIAL_WINDOW_MS: u64 = 60_000;

/// The cluster's shared secret, as the key that signs and checks node credentials. Every node
/// reads it from the registry they share; clients never see it.
#[derive(Clone)]
pub struct NodeKey(Hmac<Sha256>);

impl NodeKey {
    pub fn new(secret: &[u8]) -> NodeKey {
        // HMAC takes keys of any length.
        NodeKey(
            <Hmac<Sha256> as Mac>::new_from_slice(secret)
                .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default())),
        )
    }

    fn tag(&self, node: &str, unix_ms: u64) -> [u8; 32] {
        let mut mac = self.0.clone();
        mac.update(node.as_bytes());
        mac.update(b"\n");
        mac.update(unix_ms.to_string().as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The credential of `node` at `unix_ms`.
    pub fn sign(&self, node: &str, unix_ms: u64) -> String {
        format!("{unix_ms}.{}", hex::encode(self.tag(node, unix_ms)))
    }

    /// Whether `credential` is `node`'s, made within the window around `now_ms`.
    pub fn verify(&self, node: &str, credential: &str, now_ms: u64) -> bool {
        let Some((time, tag)) = credential.split_once('.') else {
            return false;
        };
        let (Ok(unix_ms), Some(tag)) = (time.parse::<u64>(), decode_hex(tag)) else {
            return false;
        };
        now_ms.abs_diff(unix_ms) <= NODE_CREDENTIAL_WINDOW_MS
            && same_digest(&self.tag(node, unix_ms), &tag)
    }
}

/// Milliseconds since the Unix epoch, for node credentials.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

#[cfg(test)]
mod node_key_tests {
    use super::*;

    #[test]
    fn a_credential_holds_only_for_its_node_its_key_and_its_window() {
        let key = NodeKey::new(b"the cluster's secret");
        let now = 1_800_000_000_000;
        let credential = key.sign("node-1", now);
        assert!(key.verify("node-1", &credential, now));
        assert!(key.verify("node-1", &credential, now + 59_000));
        assert!(!key.verify("node-1", &credential, now + 61_000), "too old");
        assert!(
            !key.verify("node-1", &credential, now - 61_000),
            "from the future"
        );
        assert!(
            !key.verify("node-2", &credential, now),
            "another node's name"
        );
        let other = NodeKey::new(b"another cluster");
        assert!(!other.verify("node-1", &credential, now), "another secret");
        let later = credential.replacen(&now.to_string(), &(now + 1).to_string(), 1);
        assert!(
            !key.verify("node-1", &later, now),
            "a time moved under its tag"
        );
        for forged in [
            "",
            ".",
            "x.y",
            &format!("{now}."),
            &format!("{now}.{}", "0".repeat(64)),
        ] {
            assert!(!key.verify("node-1", forged, now), "{forged:?}");
        }
    }
}
