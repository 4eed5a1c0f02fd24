//! Serving one listener: accepting connections within a cap, each on hyper with the limits a
//! hostile client must not get around: keep-alive pings with a timeout and a bound on
//! concurrent streams on HTTP/2, and, through the [`guard`](super::guard), a header read
//! timeout on HTTP/1 and an idle timeout on every connection; TLS (rustls) when the listener
//! has a certificate. A stop lets the connections finish what they hold, then ends.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::guard::{ConnectionGuard, Finishing, GuardLimits, RequestCounts};
use crate::config::ConnectionsConfig;
use crate::telemetry::Metrics;

/// How long connections may take to finish after a stop before they are dropped.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// Serves `app` on `listener` until `stop` turns true.
pub fn serve(
    name: &'static str,
    listener: TcpListener,
    app: axum::Router,
    limits: ConnectionsConfig,
    metrics: Arc<Metrics>,
    tls: Option<TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<io::Result<()>> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The guard times heads itself, to answer an overdue one with 408 and a body.
        .header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.keepalive_interval.0))
        .keep_alive_timeout(limits.keepalive_timeout.0)
        .max_concurrent_streams(limits.max_concurrent_streams);
    let builder = Arc::new(builder);
    let open = Arc::new(Semaphore::new(limits.max.max(1)));
    let per_client = Arc::new(PerClient::new(limits.max_per_client));
    let max_age = limits.max_age.0;
    tasks::spawn(&ACCEPT_LOOP, async move {
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors, typically: wait rather than spin.
                        tracing::warn!(listener = name, %error, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = async { drop(stop.wait_for(|stopped| *stopped).await) } => break,
            };
            let Ok(permit) = open.clone().try_acquire_owned() else {
                // Closing at once is the cheapest refusal, and frees the descriptor.
                metrics.refuse_connection(name);
                drop(stream);
                continue;
            };
            // One address may not hold every slot: past its share, the same refusal.
            let Some(client_slot) = per_client.take(peer.ip()) else {
                metrics.refuse_connection(name);
                drop(stream);
                continue;
            };
            // Small answers must leave at once: without TCP_NODELAY, a response written in
            // more than one segment waits for the peer's delayed ACK.
            let _ = stream.set_nodelay(true);
            let app = app.clone();
            let requests = Arc::new(RequestCounts::default());
            let counts = requests.clone();
            let service =
                hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    let app = app.clone();
                    let token = counts.start();
                    async move {
                        let response = app
                            .oneshot(request)
                            .await
                            .unwrap_or_else(|never| match never {});
                        Ok::<_, Infallible>(response.map(|body| Finishing::new(body, token)))
                    }
                });
            let guard_limits = GuardLimits {
                idle: limits.idle_timeout.0,
                head: limits.header_read_timeout.0,
            };
            let metrics = metrics.clone();
            let (builder, tls, stop) = (builder.clone(), tls.clone(), stop.clone());
            let handshake_limit = limits.header_read_timeout.0;
            tasks::spawn(&CONNECTION, async move {
                match tls {
                    None => {
                        let io = ConnectionGuard::new(stream, guard_limits, requests, metrics);
                        let connection =
                            builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                        drive!(connection, stop, max_age);
                    }
                    // The handshake is bounded like a request's headers: a client that opens
                    // TLS and stalls is closed.
                    Some(acceptor) => {
                        let accepted =
                            tokio::time::timeout(handshake_limit, acceptor.accept(stream)).await;
                        if let Ok(Ok(stream)) = accepted {
                            let io = ConnectionGuard::new(stream, guard_limits, requests, metrics);
                            let connection =
                                builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                            drive!(connection, stop, max_age);
                        }
                    }
                }
                drop(client_slot);
                drop(permit);
            });
        }
        drop(listener);
        // Every connection holds a slot until it ends: the drain is over when all are back.
        let slots = u32::try_from(limits.max.max(1)).unwrap_or(u32::MAX);
        if tokio::time::timeout(DRAIN_LIMIT, open.acquire_many(slots))
            .await
            .is_err()
        {
            tracing::warn!(
                listener = name,
                "connections still open after the drain limit"
            );
        }
        Ok(())
    })
}

/// Serves a connection until it ends, shutting it down gracefully (HTTP/2's GOAWAY; HTTP/1
/// closes after the request in hand) when the server stops or the connection reaches its
/// maximum age (zero: none). A macro, not a function: the connection's type names its whole
/// stack of IO and service types.
macro_rules! drive {
    ($connection:expr, $stop:expr, $max_age:expr) => {{
        let connection = $connection.into_owned();
        tokio::pin!(connection);
        let mut stop = $stop;
        let aged = tokio::time::sleep(if $max_age.is_zero() {
            Duration::from_secs(100 * 365 * 24 * 3600)
        } else {
            $max_age
        });
        tokio::pin!(aged);
        let mut closing = false;
        loop {
            tokio::select! {
                _ = connection.as_mut() => break,
                () = &mut aged, if !closing => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                _ = stop.wait_for(|stopped| *stopped), if !closing => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }};
}
use crate::tasks::{self, TaskKind};
use drive;

static ACCEPT_LOOP: TaskKind = TaskKind::new("accept_loop");
static CONNECTION: TaskKind = TaskKind::new("connection");

/// The connections each client address holds on one listener, within a cap.
struct PerClient {
    max: usize,
    open: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One connection's place in its address's count, given back when dropped.
struct ClientSlot {
    clients: Arc<PerClient>,
    address: std::net::IpAddr,
}

impl PerClient {
    fn new(max: usize) -> PerClient {
        PerClient {
            max: max.max(1),
            open: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<std::net::IpAddr, usize>> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn take(self: &Arc<Self>, address: std::net::IpAddr) -> Option<ClientSlot> {
        let mut open = self.lock();
        let count = open.entry(address).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            clients: self.clone(),
            address,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.clients.lock();
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}

/// The peer of a connection, as handlers see it.
pub type Peer = ConnectInfo<SocketAddr>;

/// Raises the process's open-file soft limit to its hard limit, so that the connection caps,
/// not the descriptor table, decide how many clients are held.
pub fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open-file limit"),
    }
}

/// A TLS acceptor for a listener: the certificate chain and key (PEM), HTTP/2 and HTTP/1.1 by
/// ALPN, and, with `client_ca`, client certificates required and checked against that CA.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
    client_ca: Option<&std::path::Path>,
) -> anyhow::Result<TlsAcceptor> {
    use anyhow::Context;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read the certificate {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("invalid certificate {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read the private key {}", key.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("cannot read the client CA {}", ca.display()))?
            {
                roots.add(certificate?)?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .context("the certificate and the key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
