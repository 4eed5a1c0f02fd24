//! Requests for versions this node does not host, in a cluster: the peers that host each one
//! (as the control plane last saw them), which one takes a request (the least loaded, among
//! those in rotation), and the [`Forwarder`] that carries it there (gRPC, implemented by the
//! protocol layer). A forwarded request carries [`FORWARDED_FROM`] and the node's credential,
//! and a node never forwards such a request again: at most one hop, so no request can loop
//! between nodes whose views disagree.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard_runtimes::{Device, Signature};

use crate::core::request::{InferRequest, InferResponse};
use crate::error::GatewayError;

/// The header (HTTP) or metadata key (gRPC) that marks a forwarded request, with the id of the
/// node that forwarded it. The receiver admits it only with that node's credential
/// (`auth::NODE_CREDENTIAL`).
pub const FORWARDED_FROM: &str = "switchyard-forwarded-from";

/// Marks a forwarded request that only asks whether a sequence is open on the peer: it carries
/// the sequence's id and no inputs, and runs nothing.
pub const SEQUENCE_PROBE: &str = "switchyard-sequence-probe";

/// Failures in a row after which a peer's breaker opens.
const BREAKER_FAILURES: u32 = 3;
/// How long an open breaker keeps a peer out of rotation; then one request tries it again.
const BREAKER_OPEN: Duration = Duration::from_secs(5);

/// How many forwards one peer may hold at once, and how long it may hold them without
/// answering any before it is taken out of rotation.
#[derive(Debug, Clone, Copy)]
pub struct PeerLimits {
    pub max_in_flight: u64,
    pub stall_after: Duration,
}

/// A live node of the cluster other than this one.
pub struct Peer {
    pub node: Arc<str>,
    /// host:port of its gRPC listener.
    pub address: Arc<str>,
    /// The requests it said it was handling at its last heartbeat.
    pub reported_load: AtomicU64,
    /// Requests this node forwarded to it that are not answered yet: a heartbeat is a second
    /// old, and without this every request of a burst would go to the same peer.
    pub in_flight: AtomicU64,
    health: Mutex<PeerHealth>,
}

/// What this node has seen of a peer's answers, for its breaker and its stall.
#[derive(Default)]
struct PeerHealth {
    failures: u32,
    open_until: Option<Instant>,
    /// Since when forwards have been in flight to it without a break.
    busy_since: Option<Instant>,
    last_answer: Option<Instant>,
}

/// Why a peer takes no forward now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutOfRotation {
    /// It holds its limit of forwards.
    Busy,
    /// Its breaker is open after failures in a row.
    Broken,
    /// It has answered none of the forwards it holds for the stall timeout.
    Stalled,
}

impl std::fmt::Display for OutOfRotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OutOfRotation::Busy => "it holds its limit of forwarded requests",
            OutOfRotation::Broken => "its last requests failed; it is out of rotation for now",
            OutOfRotation::Stalled => "it has answered nothing for a while; out of rotation",
        })
    }
}

impl Peer {
    pub fn new(node: &str, address: &str) -> Peer {
        Peer {
            node: node.into(),
            address: address.into(),
            reported_load: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            health: Mutex::new(PeerHealth::default()),
        }
    }

    fn load(&self) -> u64 {
        self.reported_load.load(Ordering::Relaxed) + self.in_flight.load(Ordering::Relaxed)
    }

    fn health(&self) -> std::sync::MutexGuard<'_, PeerHealth> {
        self.health
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a slot for one forward, or says why the peer is out of rotation.
    pub fn admit(&self, limits: &PeerLimits, now: Instant) -> Result<InFlight<'_>, OutOfRotation> {
        let mut health = self.health();
        if health.open_until.is_some_and(|until| until > now) {
            return Err(OutOfRotation::Broken);
        }
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        if in_flight > 0 {
            let quiet_since = match (health.busy_since, health.last_answer) {
                (Some(busy), Some(answer)) => Some(busy.max(answer)),
                (busy, answer) => busy.or(answer),
            };
            if quiet_since
                .is_some_and(|since| now.saturating_duration_since(since) > limits.stall_after)
            {
                return Err(OutOfRotation::Stalled);
            }
            if in_flight >= limits.max_in_flight {
                return Err(OutOfRotation::Busy);
            }
        } else {
            health.busy_since = Some(now);
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Ok(InFlight(self))
    }

    /// The peer answered (an error is an answer too): it is alive.
    pub fn answered(&self, now: Instant) {
        let mut health = self.health();
        health.failures = 0;
        health.open_until = None;
        health.last_answer = Some(now);
    }

    /// A forward failed for want of the peer (unreachable, or the connection broke): after
    /// [`BREAKER_FAILURES`] in a row its breaker opens for [`BREAKER_OPEN`].
    pub fn failed(&self, now: Instant) {
        let mut health = self.health();
        health.failures = health.failures.saturating_add(1);
        if health.failures >= BREAKER_FAILURES {
            health.open_until = Some(now + BREAKER_OPEN);
        }
    }
}

/// A version that only other nodes host: the live peers on which it is ready, and what the
/// node that loaded it recorded of it (for metadata and config requests answered here).
pub struct RemoteVersion {
    pub peers: Vec<Arc<Peer>>,
    /// As clients see it (implicit state left out); empty when no node recorded it yet.
    pub signature: Signature,
    pub max_batch_size: u32,
    pub device: Device,
}

impl RemoteVersion {
    /// The peers in the order to try them: the least loaded first; for a sequence, its owner
    /// first (see [`sequence_owner`]), whatever the loads, as its state lives there.
    pub fn order(&self, sequence: Option<u64>) -> Vec<&Arc<Peer>> {
        let mut peers: Vec<&Arc<Peer>> = self.peers.iter().collect();
        match sequence {
            Some(pin) => {
                peers.sort_by_key(|peer| std::cmp::Reverse(rendezvous(pin, &peer.node)));
            }
            None => peers.sort_by_key(|peer| peer.load()),
        }
        peers
    }
}

/// The node a sequence lives on, among the nodes that serve its version: rendezvous hashing
/// of its id with each node's id. Every node agrees without asking the others, and when a node
/// comes or goes only the sequences it owned change owner.
pub fn sequence_owner<'a>(pin: u64, nodes: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    nodes.max_by_key(|node| (rendezvous(pin, node), *node))
}

fn rendezvous(pin: u64, node: &str) -> u64 {
    // FNV-1a over the node's id, seeded with the pin, then splitmix64's finaliser: stable
    // across processes and machines, unlike the std hasher.
    let mut hash = node
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325 ^ pin, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// Why a forward failed.
#[derive(Debug)]
pub enum ForwardError {
    /// The peer did not run the request: it could not be reached, or it refused before running
    /// anything. Another peer may serve it.
    Unreachable(String),
    /// The connection failed after the request was sent: the peer may have run it, so it is
    /// not sent to another.
    Broken(String),
    /// The peer did not answer before the request's deadline, after waiting this long; it may
    /// have run the request.
    Silent(Duration),
    /// The peer answered with an error, which is the request's answer.
    Answered(GatewayError),
}

pub type ForwardFuture<'a, T = InferResponse> =
    Pin<Box<dyn Future<Output = Result<T, ForwardError>> + Send + 'a>>;

/// Carries a request to a peer and brings its answer back.
pub trait Forwarder: Send + Sync {
    /// Sends `request` to `peer`, marked as forwarded by `from`, with what is left of
    /// `deadline`.
    fn forward<'a>(
        &'a self,
        peer: &'a Peer,
        from: &'a str,
        request: InferRequest,
        deadline: Option<Instant>,
    ) -> ForwardFuture<'a>;

    /// Asks `peer` whether the sequence `request` continues is open there, sending its id and
    /// not its inputs.
    fn holds_sequence<'a>(
        &'a self,
        peer: &'a Peer,
        from: &'a str,
        request: &'a InferRequest,
        deadline: Option<Instant>,
    ) -> ForwardFuture<'a, bool>;
}

/// This node's side of forwarding: its id, the forwarder, what a peer may hold, and the
/// metrics that count what it forwards and receives.
pub struct Forwarding {
    pub node: Arc<str>,
    pub forwarder: Arc<dyn Forwarder>,
    pub limits: PeerLimits,
    pub metrics: Arc<crate::telemetry::Metrics>,
}

/// Counts a forward in flight to a peer while it lives (see [`Peer::admit`]).
pub struct InFlight<'a>(&'a Peer);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether a request was forwarded to this node by another.
pub fn forwarded_from(request: &InferRequest) -> Option<&str> {
    request
        .headers
        .get(FORWARDED_FROM)
        .and_then(|value| value.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(loads: &[(&str, u64)]) -> RemoteVersion {
        RemoteVersion {
            signature: Signature::default(),
            max_batch_size: 0,
            device: Device::Cpu,
            peers: loads
                .iter()
                .map(|(node, load)| {
                    let peer = Peer::new(node, "127.0.0.1:1");
                    peer.reported_load.store(*load, Ordering::Relaxed);
                    Arc::new(peer)
                })
                .collect(),
        }
    }

    const LIMITS: PeerLimits = PeerLimits {
        max_in_flight: 3,
        stall_after: Duration::from_secs(5),
    };

    #[test]
    fn a_peer_leaves_rotation_when_full_stalled_or_failing_and_comes_back() {
        let peer = Peer::new("a", "127.0.0.1:1");
        let start = Instant::now();
        let held: Vec<_> = (0..3)
            .map(|_| peer.admit(&LIMITS, start).unwrap())
            .collect();
        assert_eq!(peer.admit(&LIMITS, start).err(), Some(OutOfRotation::Busy));
        // Nothing answered for longer than the stall timeout, while forwards wait on it.
        let later = start + Duration::from_secs(6);
        assert_eq!(
            peer.admit(&LIMITS, later).err(),
            Some(OutOfRotation::Stalled)
        );
        // One answer puts it back.
        peer.answered(later);
        drop(held);
        let one = peer.admit(&LIMITS, later).unwrap();
        assert_eq!(
            peer.admit(&LIMITS, later + Duration::from_secs(4)).err(),
            None,
            "busy for 4 s of a 5 s stall timeout, and answering: in rotation"
        );
        drop(one);
        // Failures in a row open the breaker for a while; an answer closes it.
        for _ in 0..BREAKER_FAILURES {
            peer.failed(later);
        }
        assert_eq!(
            peer.admit(&LIMITS, later).err(),
            Some(OutOfRotation::Broken)
        );
        let reopened = later + BREAKER_OPEN + Duration::from_millis(1);
        let trial = peer.admit(&LIMITS, reopened).unwrap();
        drop(trial);
        peer.failed(reopened);
        assert_eq!(
            peer.admit(&LIMITS, reopened).err(),
            Some(OutOfRotation::Broken),
            "a failed trial opens it again at once"
        );
        peer.answered(reopened);
        assert!(peer.admit(&LIMITS, reopened).is_ok());
        assert_eq!(
            peer.in_flight.load(Ordering::Relaxed),
            0,
            "every slot given back"
        );
    }

    fn nodes(order: Vec<&Arc<Peer>>) -> Vec<&str> {
        order.into_iter().map(|peer| &*peer.node).collect()
    }

    #[test]
    fn the_least_loaded_peer_comes_first_counting_what_this_node_sent_it() {
        let version = remote(&[("a", 5), ("b", 2), ("c", 3)]);
        assert_eq!(nodes(version.order(None)), ["b", "c", "a"]);
        let now = Instant::now();
        let _held: Vec<_> = (0..2)
            .map(|_| version.peers[1].admit(&LIMITS, now).unwrap())
            .collect();
        assert_eq!(
            nodes(version.order(None)),
            ["c", "b", "a"],
            "two forwards in flight make b (2 + 2) busier than c (3)"
        );
        drop(_held);
        assert_eq!(version.peers[1].in_flight.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn every_node_agrees_on_a_sequences_owner_and_only_a_gone_nodes_sequences_move() {
        let all = ["a", "b", "c"];
        let owners: Vec<&str> = (0..300)
            .map(|pin| sequence_owner(pin, all.iter().copied()).unwrap())
            .collect();
        for node in all {
            let owned = owners.iter().filter(|owner| **owner == node).count();
            assert!(owned > 60, "{node} owns {owned} of 300: the ids spread");
        }
        for (pin, owner) in owners.iter().enumerate() {
            let reversed = sequence_owner(pin as u64, all.iter().rev().copied()).unwrap();
            assert_eq!(
                reversed, *owner,
                "the order the nodes are listed in does not matter"
            );
            let without_c = sequence_owner(pin as u64, ["a", "b"].into_iter()).unwrap();
            if *owner != "c" {
                assert_eq!(
                    without_c, *owner,
                    "sequence {pin} moved though its owner stayed"
                );
            }
        }
    }

    #[test]
    fn a_sequence_always_starts_on_the_same_peer_whatever_the_loads() {
        let version = remote(&[("b", 9), ("a", 0), ("c", 1)]);
        let first = nodes(version.order(Some(7)))[0].to_owned();
        version.peers[0].reported_load.store(0, Ordering::Relaxed);
        version.peers[1].reported_load.store(50, Ordering::Relaxed);
        assert_eq!(nodes(version.order(Some(7)))[0], first);
        assert_eq!(nodes(version.order(Some(7))).len(), 3, "the others follow");
        let firsts: std::collections::BTreeSet<String> = (0..30)
            .map(|pin| nodes(version.order(Some(pin)))[0].to_owned())
            .collect();
        assert_eq!(firsts.len(), 3, "other sequences go to the other peers");
    }
}
