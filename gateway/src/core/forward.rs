//! Requests for versions this node does not host, in a cluster: the peers that host each one
//! (as the control plane last saw them), which one takes a request (the least loaded), and the
//! [`Forwarder`] that carries it there (gRPC, implemented by the protocol layer). A forwarded
//! request carries [`FORWARDED_FROM`], and a node never forwards such a request again: at
//! most one hop, so no request can loop between nodes whose views disagree.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use switchyard_runtimes::{Device, Signature};

use crate::core::request::{InferRequest, InferResponse};
use crate::error::GatewayError;

/// The header (HTTP) or metadata key (gRPC) that marks a forwarded request, with the id of the
/// node that forwarded it.
pub const FORWARDED_FROM: &str = "switchyard-forwarded-from";

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
}

impl Peer {
    pub fn new(node: &str, address: &str) -> Peer {
        Peer {
            node: node.into(),
            address: address.into(),
            reported_load: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
        }
    }

    fn load(&self) -> u64 {
        self.reported_load.load(Ordering::Relaxed) + self.in_flight.load(Ordering::Relaxed)
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
    /// The peer could not be reached, or the connection broke: another peer may serve it.
    Unreachable(String),
    /// The peer answered with an error, which is the request's answer.
    Answered(GatewayError),
}

pub type ForwardFuture<'a> =
    Pin<Box<dyn Future<Output = Result<InferResponse, ForwardError>> + Send + 'a>>;

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
}

/// This node's side of forwarding: its id, the forwarder, and the metrics that count what it
/// forwards and receives.
pub struct Forwarding {
    pub node: Arc<str>,
    pub forwarder: Arc<dyn Forwarder>,
    pub metrics: Arc<crate::telemetry::Metrics>,
}

/// Counts a forward in flight to a peer while it lives.
pub struct InFlight<'a>(&'a Peer);

impl<'a> InFlight<'a> {
    pub fn start(peer: &'a Peer) -> Self {
        peer.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(peer)
    }
}

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

    fn nodes(order: Vec<&Arc<Peer>>) -> Vec<&str> {
        order.into_iter().map(|peer| &*peer.node).collect()
    }

    #[test]
    fn the_least_loaded_peer_comes_first_counting_what_this_node_sent_it() {
        let version = remote(&[("a", 5), ("b", 2), ("c", 3)]);
        assert_eq!(nodes(version.order(None)), ["b", "c", "a"]);
        let _held: Vec<_> = (0..2).map(|_| InFlight::start(&version.peers[1])).collect();
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
