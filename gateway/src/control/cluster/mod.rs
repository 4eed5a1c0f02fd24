//! The cluster: gateways sharing a PostgreSQL registry as nodes (docs/cluster.md).
//!
//! Every node runs [`run`]: each heartbeat it writes its record (address, device budgets, free
//! memory, load) and its state for each version, reads everyone's, and publishes the
//! [`ClusterView`] the reconciler turns into remote versions (forwarded to peers). The node
//! holding the leader's advisory lock also places every version's replicas on the live nodes
//! ([`placer`]), writes the placement as a revision (every node then loads what it must host),
//! and derives each version's registry state from the nodes' states.

pub mod on_demand;
pub mod placer;
pub mod shares;
pub mod simulate;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use switchyard_registry::{
    Heartbeat, NodeRecord, NodeVersion, PlacementRow, Snapshot, Store, Version, VersionState,
};
use tokio::sync::watch;

use crate::auth::ApiKeys;
use crate::config::{ClusterConfig, ServingConfig};
use crate::control::Handles;
use crate::control::capacity;
use crate::control::capacity::autoscaler::Autoscaler;
use crate::control::import::registered_settings;
use crate::control::repository::ModelSettings;
use crate::core::forward::Peer;
use crate::core::{ModelTable, NO_ROOM_ANYWHERE, VersionStatus};
use crate::version_key::VersionKey;
use on_demand::{IdleReplicas, OnDemand, VersionName};
use placer::{Assignment, Bin, Demand, NodeCapacity, Placer};

const ACTOR: &str = "cluster";

/// Nodes whose heartbeat stopped this long ago are forgotten (their rows removed).
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// How long a request's ask for a version placed nowhere stays in the heartbeat, at least:
/// a waiting request asks again every [`crate::core::ASK_AGAIN`], and at every table published.
const WANT_KEPT: Duration = Duration::from_secs(10);

/// The most asks and idle versions one heartbeat carries.
const MAX_REPORTED: usize = 1024;

/// What this node knows of the others, as of its last heartbeat.
#[derive(Default)]
pub struct ClusterView {
    /// Live peers (this node excluded), by id; the same `Arc` from one view to the next, so
    /// that the forwards in flight to a peer keep counting.
    pub peers: BTreeMap<String, Arc<Peer>>,
    /// The live peers on which each version is ready.
    pub ready_on: BTreeMap<VersionKey, Vec<String>>,
}

impl ClusterView {
    /// The same peers at the same addresses, hosting the same versions (loads aside).
    fn same_as(&self, other: &ClusterView) -> bool {
        self.ready_on == other.ready_on
            && self.peers.len() == other.peers.len()
            && self
                .peers
                .iter()
                .zip(&other.peers)
                .all(|((a, pa), (b, pb))| a == b && pa.address == pb.address)
    }

    /// The peers that serve a version, if any does.
    pub fn peers_for(&self, key: &VersionKey) -> Vec<Arc<Peer>> {
        self.ready_on.get(key).map_or_else(Vec::new, |nodes| {
            nodes
                .iter()
                .filter_map(|node| self.peers.get(node).cloned())
                .collect()
        })
    }
}

/// What this node's reconciler holds: the versions it hosts (loading, serving, pending or
/// failed here) and those still draining. The table also lists the versions it forwards or
/// waits for, so the heartbeat reads this instead.
#[derive(Debug, Default)]
pub struct Hosted {
    pub local: HashSet<VersionKey>,
    pub draining: Vec<VersionKey>,
}

/// This node's settings, resolved at start.
#[derive(Clone)]
pub struct NodeSettings {
    pub node: String,
    pub address: String,
    pub heartbeat: Duration,
    pub dead_after: Duration,
    pub placer: String,
    pub defaults: ServingConfig,
}

impl NodeSettings {
    /// Fills in the id (the host name) and the address peers use (the gRPC listener's, with
    /// the id as host when it binds every address).
    pub fn resolve(
        config: &ClusterConfig,
        grpc_addr: std::net::SocketAddr,
        defaults: &ServingConfig,
    ) -> Result<NodeSettings, String> {
        let node = node_id(config)?;
        let address = if !config.advertise.is_empty() {
            config.advertise.clone()
        } else if grpc_addr.ip().is_unspecified() {
            format!("{node}:{}", grpc_addr.port())
        } else {
            grpc_addr.to_string()
        };
        if placer::by_name(&config.placer).is_none() {
            return Err(format!(
                "cluster.placer '{}' is neither 'best_fit' nor 'auction'",
                config.placer
            ));
        }
        if config.dead_after.0 < config.heartbeat.0 * 2 {
            return Err("cluster.dead_after must be at least two heartbeats".into());
        }
        Ok(NodeSettings {
            node,
            address,
            heartbeat: config.heartbeat.0,
            dead_after: config.dead_after.0,
            placer: config.placer.clone(),
            defaults: defaults.clone(),
        })
    }
}

/// This node's id: `cluster.node_id`, else the host name.
pub fn node_id(config: &ClusterConfig) -> Result<String, String> {
    let node = if config.node_id.is_empty() {
        host_name().ok_or("cluster.node_id is empty and the host name is unknown")?
    } else {
        config.node_id.clone()
    };
    if !switchyard_registry::valid_name(&node) {
        return Err(format!(
            "cluster node id '{node}' must be 1-128 letters, digits, '_', '-' or '.'"
        ));
    }
    Ok(node)
}

fn host_name() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|name| !name.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|name| name.trim().to_owned())
                .filter(|name| !name.is_empty())
        })
}

/// Which nodes are alive, judged by this node's own clock: a node is alive while its beat
/// keeps moving, so clocks that disagree between machines do not matter.
#[derive(Default)]
struct Liveness {
    /// Node -> (its last beat seen, when this node saw it move).
    seen: HashMap<String, (i64, Instant)>,
}

impl Liveness {
    fn observe(&mut self, nodes: &[NodeRecord], dead_after: Duration) -> BTreeSet<String> {
        let now = Instant::now();
        self.seen.retain(|id, _| nodes.iter().any(|n| &n.id == id));
        let mut live = BTreeSet::new();
        for node in nodes {
            let moved_at = match self.seen.get(&node.id) {
                Some((beat, at)) if *beat == node.beat => *at,
                Some(_) => now,
                // First sight: its age by the database's clock, so that a node dead before
                // this one started is not taken for alive for `dead_after`.
                None => now
                    .checked_sub(Duration::from_millis(node.age_ms.max(0) as u64))
                    .unwrap_or(now),
            };
            self.seen.insert(node.id.clone(), (node.beat, moved_at));
            if now.duration_since(moved_at) < dead_after {
                live.insert(node.id.clone());
            }
        }
        live
    }
}

/// Runs this node's part of the cluster until the registry closes: the heartbeat, the view,
/// and, while it leads, the placement and the versions' states.
pub async fn run(
    settings: NodeSettings,
    handles: Handles,
    store: Arc<dyn Store>,
    view: watch::Sender<Arc<ClusterView>>,
    hosted: watch::Receiver<Arc<Hosted>>,
    keys: ApiKeys,
) {
    let mut demand = shares::DemandMeter::default();
    let mut every = tokio::time::interval(settings.heartbeat);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut liveness = Liveness::default();
    let mut peers: BTreeMap<String, Arc<Peer>> = BTreeMap::new();
    let mut leader = Leader {
        placer: placer::by_name(&settings.placer).unwrap_or_else(|| Box::new(placer::BestFit)),
        scalers: ClusterScalers::default(),
    };
    tracing::info!(node = %settings.node, address = %settings.address, placer = leader.placer.name(), "joining the cluster");
    loop {
        every.tick().await;
        let table = handles.tables.snapshot();
        let tenants = keys.tenants();
        let key_demand = demand.measure(&tenants, Instant::now());
        let mut beat = heartbeat(&settings, &handles, &table, &hosted.borrow());
        if let Some(body) = beat.body.as_object_mut() {
            body.insert(
                "keys".into(),
                serde_json::to_value(&key_demand).unwrap_or_default(),
            );
        }
        if let Err(error) = store.heartbeat(beat).await {
            tracing::warn!(%error, "cannot write the heartbeat; retrying");
            continue;
        }
        let (nodes, states) = match tokio::try_join!(store.nodes(), store.node_versions()) {
            Ok(read) => read,
            Err(error) => {
                tracing::warn!(%error, "cannot read the cluster");
                continue;
            }
        };
        let live = liveness.observe(&nodes, settings.dead_after);
        let reports: Vec<Vec<shares::KeyDemand>> = nodes
            .iter()
            .filter(|node| node.id != settings.node && live.contains(&node.id))
            .map(|node| NodeBody::of(node).keys)
            .collect();
        keys.set_nodes(reports.len() + 1);
        shares::apply(&tenants, &key_demand, &reports);
        let next = build_view(&settings.node, &nodes, &states, &live, &mut peers);
        view.send_if_modified(|current| {
            if current.same_as(&next) {
                false
            } else {
                *current = Arc::new(next);
                true
            }
        });
        match store.try_lead().await {
            Ok(true) => {
                if let Err(error) = lead(
                    &settings,
                    &mut leader,
                    &store,
                    &table,
                    &nodes,
                    &states,
                    &live,
                )
                .await
                {
                    tracing::warn!(%error, "cannot place the cluster's versions this round");
                }
            }
            // Another node leads: what this one's scalers saw goes stale.
            Ok(false) => leader.scalers = ClusterScalers::default(),
            Err(error) => tracing::warn!(%error, "cannot tell whether this node leads"),
        }
    }
}

/// Removes this node from the registry, for a clean stop: its peers stop forwarding to it at
/// once instead of after `dead_after`.
pub async fn leave(store: &dyn Store, node: &str) {
    if let Err(error) = store.remove_node(node).await {
        tracing::warn!(%error, "cannot remove this node from the cluster");
    }
}

/// What a node's heartbeat says of it beside its versions (`nodes.body`), as its peers and
/// `GET /v1/cluster` read it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct NodeBody {
    /// Its devices with a budget.
    pub devices: Vec<NodeDevice>,
    /// Requests in flight on it.
    pub load: u64,
    /// Versions placed nowhere that requests on it wait for: the leader places them.
    pub wanted: Vec<WantedVersion>,
    /// Its idle replicas that may be evicted to make room for those.
    pub evictable: Vec<NodeEvictable>,
    /// The load its autoscaled versions carry: the leader scales them across the nodes.
    pub concurrency: Vec<VersionConcurrency>,
    /// The demand on it of each rate-limited key: the nodes split each key's rates by it.
    pub keys: Vec<shares::KeyDemand>,
}

/// An autoscaled version's replicas on a node, and the mean concurrency (requests queued or
/// running) they carried over its scaling window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct VersionConcurrency {
    pub model: String,
    pub version: String,
    pub replicas: u32,
    pub concurrency: f64,
}

/// A version a request asked for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct WantedVersion {
    pub model: String,
    pub version: String,
}

/// A version's idle replicas on one device of a node, which it may evict.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct NodeEvictable {
    pub model: String,
    pub version: String,
    pub device: String,
    pub replicas: u32,
    pub bytes: u64,
    /// Since the version last had work on the node.
    pub idle_ms: u64,
}

/// A device of a node, in bytes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct NodeDevice {
    pub id: String,
    pub budget: u64,
    /// Its budget less what is reserved on it.
    pub free: u64,
}

impl NodeBody {
    /// A node's body as its heartbeat wrote it; what a node of another build wrote that this
    /// one cannot read counts as no devices and no load.
    pub fn of(node: &NodeRecord) -> NodeBody {
        NodeBody::deserialize(&node.body).unwrap_or_default()
    }
}

/// This node's record: its devices' budgets and what is free on them, its load, and what it
/// does with each version it holds.
fn heartbeat(
    settings: &NodeSettings,
    handles: &Handles,
    table: &ModelTable,
    hosted: &Hosted,
) -> Heartbeat {
    let devices: Vec<NodeDevice> = handles
        .capacity
        .device_figures()
        .into_iter()
        .map(|(id, budget, reserved)| NodeDevice {
            id,
            budget,
            free: budget.saturating_sub(reserved),
        })
        .collect();
    let mut load = 0usize;
    let mut versions = Vec::new();
    for model in table.models.values() {
        for version in &model.versions {
            if !hosted
                .local
                .contains(&VersionKey::new(&model.name, &version.label))
            {
                continue;
            }
            let (state, reason, replicas) = match &version.status {
                VersionStatus::Ready(ready) => {
                    load += ready.replicas.outstanding();
                    ("ready", String::new(), ready.replicas.replica_count())
                }
                VersionStatus::Loading => ("loading", String::new(), 0),
                VersionStatus::Failed(reason) => ("failed", reason.clone(), 0),
                VersionStatus::Pending(reason) => ("pending", reason.clone(), 0),
                VersionStatus::Remote(_) => continue,
            };
            versions.push((
                model.name.to_string(),
                version.label.to_string(),
                state.to_owned(),
                reason,
                replicas as i64,
            ));
        }
    }
    // Until no request holds them: the leader retires a removed version only when no node
    // reports it any more.
    for key in &hosted.draining {
        versions.push((
            key.model.to_string(),
            key.version.to_string(),
            "draining".to_owned(),
            String::new(),
            0,
        ));
    }
    let wanted = handles
        .tables
        .wanted_within(WANT_KEPT.max(settings.heartbeat * 3))
        .into_iter()
        .take(MAX_REPORTED)
        .map(|key| WantedVersion {
            model: key.model.to_string(),
            version: key.version.to_string(),
        })
        .collect();
    let evictable = handles
        .capacity
        .evictable(table)
        .into_iter()
        .take(MAX_REPORTED)
        .map(|idle| NodeEvictable {
            model: idle.key.model.to_string(),
            version: idle.key.version.to_string(),
            device: idle.device.to_string(),
            replicas: idle.replicas,
            bytes: idle.bytes,
            idle_ms: u64::try_from(idle.idle.as_millis()).unwrap_or(u64::MAX),
        })
        .collect();
    let concurrency = handles
        .capacity
        .concurrency(table)
        .into_iter()
        .filter(|(key, _, _)| hosted.local.contains(key))
        .take(MAX_REPORTED)
        .map(|(key, replicas, concurrency)| VersionConcurrency {
            model: key.model.to_string(),
            version: key.version.to_string(),
            replicas,
            concurrency,
        })
        .collect();
    Heartbeat {
        node: settings.node.clone(),
        address: settings.address.clone(),
        body: serde_json::to_value(NodeBody {
            devices,
            load: load as u64,
            wanted,
            evictable,
            concurrency,
            keys: Vec::new(),
        })
        .unwrap_or_default(),
        versions,
    }
}

fn build_view(
    this: &str,
    nodes: &[NodeRecord],
    states: &[NodeVersion],
    live: &BTreeSet<String>,
    peers: &mut BTreeMap<String, Arc<Peer>>,
) -> ClusterView {
    peers.retain(|id, _| live.contains(id));
    for node in nodes {
        if node.id == this || !live.contains(&node.id) {
            continue;
        }
        let peer = peers
            .entry(node.id.clone())
            .or_insert_with(|| Arc::new(Peer::new(&node.id, &node.address)));
        if *peer.address != *node.address {
            *peer = Arc::new(Peer::new(&node.id, &node.address));
        }
        peer.reported_load
            .store(NodeBody::of(node).load, Ordering::Relaxed);
    }
    let mut ready_on: BTreeMap<VersionKey, Vec<String>> = BTreeMap::new();
    for state in states {
        if state.state == "ready" && peers.contains_key(&state.node) {
            ready_on
                .entry(VersionKey::new(&state.model, &state.version))
                .or_default()
                .push(state.node.clone());
        }
    }
    ClusterView {
        peers: peers.clone(),
        ready_on,
    }
}

/// One round of the leader: place, then bring each version's registry state in line with
/// what the nodes say, and forget nodes long gone.
async fn lead(
    settings: &NodeSettings,
    leader: &mut Leader,
    store: &Arc<dyn Store>,
    table: &ModelTable,
    nodes: &[NodeRecord],
    states: &[NodeVersion],
    live: &BTreeSet<String>,
) -> Result<(), switchyard_registry::RegistryError> {
    let snapshot = store.snapshot().await?;
    // Sorted here, as `rows` are: the database's collation may order names otherwise, and the
    // comparison below would then rewrite an unchanged placement every round.
    let mut current = store.placements().await?;
    current.sort();
    let reports = Reports::of(nodes, live);
    let capacities = &reports.capacities;
    let current_assignments = assignments(&current);
    let load = ClusterLoad::of(reports.concurrency, &current_assignments);
    let (demands, invalid) = demands(
        &snapshot,
        table,
        &settings.defaults,
        &mut leader.scalers,
        &load,
    );
    let placer = &*leader.placer;
    let started = Instant::now();
    let mut placement = placer.place(capacities, &demands, &current_assignments);
    let on_demand = on_demand::place(
        capacities,
        &demands,
        &mut placement,
        &reports.wanted,
        &reports.idle,
    );
    let decided_us = started.elapsed().as_micros() as u64;
    let rows = rows(&placement.assignments);
    if rows != current {
        let moved = moves(&current_assignments, &placement.assignments, live);
        let payload = json!({
            "placer": placer.name(),
            "nodes": capacities.len(),
            "versions": demands.len(),
            "replicas": placement.assignments.len(),
            "moved": moved,
            "refused": placement.refused.iter().map(|r| json!({
                "model": r.model, "version": r.version, "wanted": r.wanted, "placed": r.placed,
            })).collect::<Vec<_>>(),
            "decided_us": decided_us,
        });
        tracing::info!(
            placer = placer.name(),
            replicas = placement.assignments.len(),
            moved,
            decided_us,
            "placing the cluster's versions"
        );
        store.write_placements(ACTOR, rows.clone(), payload).await?;
        // The placement is written: a record that fails must not stop the states below.
        if let Err(error) = log_on_demand(store, &on_demand).await {
            tracing::warn!(%error, "cannot record the loads on demand and their evictions");
        }
    }
    let refused: BTreeMap<VersionKey, &placer::Refused> = placement
        .refused
        .iter()
        .map(|r| (VersionKey::new(&r.model, &r.version), r))
        .collect();
    for version in snapshot.models.iter().flat_map(|m| &m.versions) {
        let key = VersionKey::new(&version.model, &version.label);
        let on_live: Vec<&NodeVersion> = states
            .iter()
            .filter(|s| {
                live.contains(&s.node) && s.model == version.model && s.version == version.label
            })
            .collect();
        let placed_on: Vec<&str> = rows
            .iter()
            .filter(|r| r.model == version.model && r.version == version.label)
            .map(|r| r.node.as_str())
            .collect();
        let derived = match invalid.get(&key) {
            Some(reason) if version.state.is_live() => Some((VersionState::Failed, reason.clone())),
            _ => version_state(
                version,
                &on_live,
                &placed_on,
                refused.get(&key).copied(),
                on_demand
                    .hopeless
                    .contains(&(version.model.clone(), version.label.clone())),
            ),
        };
        if let Some((state, reason)) = derived
            && (state != version.state || reason != version.state_reason)
        {
            store
                .set_version_state(ACTOR, &version.model, &version.label, state, &reason)
                .await?;
        }
    }
    for node in nodes {
        if !live.contains(&node.id) && node.age_ms > FORGET_AFTER.as_millis() as i64 {
            store.remove_node(&node.id).await?;
        }
    }
    Ok(())
}

/// What the live nodes' heartbeats say, each read once: their devices' budgets, the versions
/// requests on them wait for, the idle replicas they may evict, and the load of their
/// autoscaled versions, summed over the nodes.
struct Reports {
    capacities: Vec<NodeCapacity>,
    wanted: BTreeSet<VersionName>,
    idle: Vec<IdleReplicas>,
    concurrency: BTreeMap<VersionKey, f64>,
}

impl Reports {
    fn of(nodes: &[NodeRecord], live: &BTreeSet<String>) -> Reports {
        let mut reports = Reports {
            capacities: Vec::new(),
            wanted: BTreeSet::new(),
            idle: Vec::new(),
            concurrency: BTreeMap::new(),
        };
        for node in nodes.iter().filter(|node| live.contains(&node.id)) {
            let body = NodeBody::of(node);
            reports.capacities.push(NodeCapacity {
                node: node.id.clone(),
                bins: body
                    .devices
                    .into_iter()
                    .map(|device| Bin {
                        device: device.id,
                        budget_bytes: device.budget,
                    })
                    .collect(),
            });
            reports
                .wanted
                .extend(body.wanted.into_iter().map(|w| (w.model, w.version)));
            reports
                .idle
                .extend(body.evictable.into_iter().map(|e| IdleReplicas {
                    node: node.id.clone(),
                    device: e.device,
                    model: e.model,
                    version: e.version,
                    replicas: e.replicas,
                    idle: Duration::from_millis(e.idle_ms),
                }));
            for reported in body.concurrency {
                if reported.concurrency.is_finite() && reported.concurrency >= 0.0 {
                    *reports
                        .concurrency
                        .entry(VersionKey::new(&reported.model, &reported.version))
                        .or_default() += reported.concurrency;
                }
            }
        }
        reports
    }
}

/// Records each load on demand and each eviction it took, with why.
async fn log_on_demand(
    store: &Arc<dyn Store>,
    on_demand: &OnDemand,
) -> Result<(), switchyard_registry::RegistryError> {
    for loaded in &on_demand.loaded {
        let placed = &loaded.assignment;
        let reason = format!(
            "room for version {} of {} on node {}",
            placed.version, placed.model, placed.node
        );
        for victim in &loaded.evicted {
            store
                .log_event(
                    ACTOR,
                    &victim.model,
                    capacity::EVICT_ACTION,
                    json!({"version": victim.version, "node": victim.node,
                           "device": victim.device, "reason": reason}),
                )
                .await?;
        }
        store
            .log_event(
                ACTOR,
                &placed.model,
                capacity::SCALE_ACTION,
                json!({"version": placed.version, "node": placed.node, "device": placed.device,
                       "from": 0, "to": 1, "evicted": loaded.evicted.len(),
                       "reason": "on demand: requests wait for it and no node held it"}),
            )
            .await?;
    }
    Ok(())
}

/// A version's registry state from its nodes': ready where any live node serves it, else
/// loading; failed (or pending) when every node it is placed on says so; pending when no node
/// has room (`hopeless` when requests want it and no node can make room even by evicting);
/// retired once it drained everywhere. `None`: leave it as it is.
fn version_state(
    version: &Version,
    on_live: &[&NodeVersion],
    placed_on: &[&str],
    refused: Option<&placer::Refused>,
    hopeless: bool,
) -> Option<(VersionState, String)> {
    match version.state {
        VersionState::Retired => return None,
        VersionState::Draining => {
            return on_live
                .is_empty()
                .then(|| (VersionState::Retired, String::new()));
        }
        _ => {}
    }
    let has = |state: &str| on_live.iter().any(|s| s.state == state);
    if has("ready") {
        return Some((VersionState::Ready, String::new()));
    }
    if has("loading") {
        return Some((VersionState::Loading, String::new()));
    }
    // Only when every node it is placed on has said so: one node's word, while another has
    // not reported yet, would take the version out of the placement for good.
    let everywhere = |state: &str| {
        !placed_on.is_empty()
            && placed_on
                .iter()
                .all(|node| on_live.iter().any(|s| s.node == *node && s.state == state))
    };
    for (state, as_version) in [
        ("failed", VersionState::Failed),
        ("pending", VersionState::Pending),
    ] {
        if everywhere(state)
            && let Some(first) = on_live.iter().find(|s| s.state == state)
        {
            return Some((
                as_version,
                format!("on node {}: {}", first.node, first.reason),
            ));
        }
    }
    if placed_on.is_empty() && hopeless {
        return Some((
            VersionState::Pending,
            format!(
                "{NO_ROOM_ANYWHERE}: on no live node's devices that it may use do free memory and \
                 idle replicas of its priority or lower add up to a replica of it; requests are \
                 refused until that changes"
            ),
        ));
    }
    if placed_on.is_empty()
        && let Some(refused) = refused
    {
        return Some((
            VersionState::Pending,
            format!(
                "not resident: no live node has room for its {} replica(s) now; a request \
                 loads it, evicting idle replicas",
                refused.wanted
            ),
        ));
    }
    None
}

/// What the leader scales autoscaled versions from: the concurrency the live nodes report for
/// each, summed, and the replicas the placement gives each now.
#[derive(Default)]
struct ClusterLoad {
    concurrency: BTreeMap<VersionKey, f64>,
    placed: BTreeMap<VersionKey, u32>,
}

impl ClusterLoad {
    fn of(concurrency: BTreeMap<VersionKey, f64>, current: &[Assignment]) -> ClusterLoad {
        let mut load = ClusterLoad {
            concurrency,
            placed: BTreeMap::new(),
        };
        for assignment in current {
            *load
                .placed
                .entry(VersionKey::new(&assignment.model, &assignment.version))
                .or_default() += 1;
        }
        load
    }
}

/// What the node that leads keeps from one round to the next.
struct Leader {
    placer: Box<dyn Placer>,
    scalers: ClusterScalers,
}

/// The leader's autoscaler of each autoscaled version, fed the concurrency summed over the
/// nodes: the same window, dead band and delays as a single node's, over the whole cluster.
/// Kept while this node leads; a new leader starts from the placement as it finds it.
#[derive(Default)]
pub struct ClusterScalers {
    scalers: HashMap<VersionKey, Autoscaler>,
}

impl ClusterScalers {
    /// An autoscaled version's replicas across the cluster: what its autoscaler decides from
    /// the load across the nodes, else what the placement gives it now (its starting count
    /// before it is placed), within its minimum (at least one) and maximum.
    fn replicas(
        &mut self,
        key: &VersionKey,
        settings: &ModelSettings,
        load: &ClusterLoad,
        now: Instant,
    ) -> u32 {
        let starting = settings.starting_replicas().max(1);
        let Some(scaling) = &settings.scaling else {
            self.scalers.remove(key);
            return starting;
        };
        let held = load.placed.get(key).copied().unwrap_or(starting);
        let Some(&concurrency) = load.concurrency.get(key) else {
            return held;
        };
        let scaler = self
            .scalers
            .entry(key.clone())
            .or_insert_with(|| Autoscaler::new(capacity::policy(scaling)));
        scaler.observe(now, concurrency);
        let to = scaler
            .decide(now, held, u32::MAX)
            .map_or(held, |decision| decision.to);
        to.clamp(
            scaling.min_replicas.max(1),
            scaling.max_replicas.max(scaling.min_replicas).max(1),
        )
    }
}

/// What each version the cluster should serve asks for: its replicas (the model.toml's count,
/// at least the autoscaler's minimum, or what its load across the cluster calls for), what one
/// takes (measured where a node measured it, else declared, else its artifact's size), the
/// devices it may use, and its priority.
///
/// Also returns the versions whose settings do not parse, with why: they are failed, not
/// placed.
fn demands(
    snapshot: &Snapshot,
    table: &ModelTable,
    defaults: &ServingConfig,
    scalers: &mut ClusterScalers,
    load: &ClusterLoad,
) -> (Vec<Demand>, BTreeMap<VersionKey, String>) {
    let now = Instant::now();
    // Versions removed or no longer autoscaled drop their scalers below; removed ones here.
    scalers.scalers.retain(|key, _| {
        snapshot.models.iter().any(|record| {
            record
                .versions
                .iter()
                .any(|v| v.state.is_live() && *key.model == *v.model && *key.version == *v.label)
        })
    });
    let mut demands = Vec::new();
    let mut invalid = BTreeMap::new();
    for record in &snapshot.models {
        for version in &record.versions {
            if !version.state.is_live() {
                continue;
            }
            let settings = match registered_settings(version, defaults) {
                Ok(settings) => settings,
                Err(reason) => {
                    invalid.insert(VersionKey::new(&version.model, &version.label), reason);
                    continue;
                }
            };
            let artifact_bytes = std::fs::metadata(&version.artifact).map_or(0, |m| m.len());
            let measured = capacity::MeasuredMemory::of(&version.metadata)
                .map_or(0, |measured| measured.bytes_per_replica);
            // As the node reserves it, or what a replica measured (never below its weights)
            // if that is more, plus the sequences' state either way.
            let bytes = settings
                .reserve_bytes(artifact_bytes)
                .max(measured.max(artifact_bytes) + settings.slot_bytes());
            // At least one: a version scaled to zero is still placed somewhere.
            let key = VersionKey::new(&version.model, &version.label);
            let replicas = scalers.replicas(&key, &settings, load, now);
            let priority = table
                .models
                .get(record.model.name.as_str())
                .map_or(0, |model| capacity::priority(model, &version.label));
            demands.push(Demand {
                model: version.model.clone(),
                version: version.label.clone(),
                priority,
                replicas,
                bytes_per_replica: bytes,
                allowed: settings.devices.iter().map(ToString::to_string).collect(),
            });
        }
    }
    (demands, invalid)
}

fn assignments(rows: &[PlacementRow]) -> Vec<Assignment> {
    rows.iter()
        .flat_map(|row| {
            (0..row.replicas.max(0)).map(|_| Assignment {
                model: row.model.clone(),
                version: row.version.clone(),
                node: row.node.clone(),
                device: row.device.clone(),
            })
        })
        .collect()
}

fn rows(assignments: &[Assignment]) -> Vec<PlacementRow> {
    let mut counts: BTreeMap<(&str, &str, &str, &str), i64> = BTreeMap::new();
    for a in assignments {
        *counts
            .entry((&a.model, &a.version, &a.node, &a.device))
            .or_default() += 1;
    }
    counts
        .into_iter()
        .map(|((model, version, node, device), replicas)| PlacementRow {
            model: model.to_owned(),
            version: version.to_owned(),
            node: node.to_owned(),
            device: device.to_owned(),
            replicas,
        })
        .collect()
}

/// Replicas that were on a live node and are no longer there: the reloads a change cost.
fn moves(before: &[Assignment], after: &[Assignment], live: &BTreeSet<String>) -> usize {
    let mut remaining: BTreeMap<(&str, &str, &str), usize> = BTreeMap::new();
    for a in after {
        *remaining
            .entry((&a.model, &a.version, &a.node))
            .or_default() += 1;
    }
    before
        .iter()
        .filter(|a| live.contains(&a.node))
        .filter(|a| {
            match remaining.get_mut(&(a.model.as_str(), a.version.as_str(), a.node.as_str())) {
                Some(count) if *count > 0 => {
                    *count -= 1;
                    false
                }
                _ => true,
            }
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, beat: i64, age_ms: i64) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            address: format!("{id}:8001"),
            body: json!({"devices": [{"id": "cpu", "budget": 1000, "free": 400}], "load": 3}),
            beat,
            started_ms: 0,
            heartbeat_ms: 0,
            age_ms,
        }
    }

    #[test]
    fn a_node_is_alive_while_its_beat_moves_and_dead_once_it_stops() {
        let mut liveness = Liveness::default();
        let dead_after = Duration::from_millis(200);
        let live = liveness.observe(&[record("a", 1, 0), record("b", 7, 60_000)], dead_after);
        assert_eq!(
            live.into_iter().collect::<Vec<_>>(),
            ["a"],
            "a node first seen with an old heartbeat is already dead"
        );
        std::thread::sleep(Duration::from_millis(120));
        let live = liveness.observe(&[record("a", 2, 0), record("b", 7, 0)], dead_after);
        assert!(
            live.contains("a"),
            "its beat moved, however old the row says it is"
        );
        std::thread::sleep(Duration::from_millis(250));
        let live = liveness.observe(&[record("a", 2, 0), record("b", 8, 60_000)], dead_after);
        assert!(!live.contains("a"), "its beat stood still past dead_after");
        assert!(live.contains("b"), "b's beat moved");
    }

    #[test]
    fn the_view_keeps_peers_across_heartbeats_and_lists_where_versions_are_ready() {
        let nodes = [record("a", 1, 0), record("b", 1, 0), record("c", 1, 0)];
        let state = |node: &str, version: &str, state: &str| NodeVersion {
            node: node.into(),
            model: "mlp".into(),
            version: version.into(),
            state: state.into(),
            reason: String::new(),
            replicas: 1,
            updated_ms: 0,
        };
        let states = [
            state("a", "1", "ready"),
            state("b", "1", "ready"),
            state("b", "2", "loading"),
            state("c", "2", "ready"),
        ];
        let live: BTreeSet<String> = ["a", "b"].into_iter().map(String::from).collect();
        let mut peers = BTreeMap::new();
        let view = build_view("a", &nodes, &states, &live, &mut peers);
        assert_eq!(
            view.peers.keys().collect::<Vec<_>>(),
            ["b"],
            "itself and the dead are no peers"
        );
        assert_eq!(view.peers["b"].reported_load.load(Ordering::Relaxed), 3);
        assert_eq!(
            view.ready_on.get(&VersionKey::new("mlp", "1")).unwrap(),
            &["b"]
        );
        assert!(
            !view.ready_on.contains_key(&VersionKey::new("mlp", "2")),
            "loading on b and ready only on dead c"
        );
        let again = build_view("a", &nodes, &states, &live, &mut peers);
        assert!(Arc::ptr_eq(&view.peers["b"], &again.peers["b"]));
        assert!(view.same_as(&again));
    }

    fn version(state: VersionState) -> Version {
        Version {
            model: "m".into(),
            label: "1".into(),
            runtime: "onnx".into(),
            artifact: String::new(),
            config: json!({}),
            metadata: json!({}),
            state,
            state_reason: String::new(),
            created_ms: 0,
        }
    }

    fn on(node: &str, state: &str) -> NodeVersion {
        NodeVersion {
            node: node.into(),
            model: "m".into(),
            version: "1".into(),
            state: state.into(),
            reason: format!("{state} there"),
            replicas: 1,
            updated_ms: 0,
        }
    }

    #[test]
    fn a_version_fails_only_once_every_node_it_is_placed_on_says_so() {
        let loading = version(VersionState::Loading);
        let (a_failed, b_loading, b_failed) =
            (on("a", "failed"), on("b", "loading"), on("b", "failed"));
        assert_eq!(
            version_state(&loading, &[&a_failed, &b_loading], &["a", "b"], None, false),
            Some((VersionState::Loading, String::new()))
        );
        assert_eq!(
            version_state(&loading, &[&a_failed], &["a", "b"], None, false),
            None,
            "b has not reported yet"
        );
        assert_eq!(
            version_state(&loading, &[&a_failed, &b_failed], &["a", "b"], None, false),
            Some((VersionState::Failed, "on node a: failed there".into()))
        );
        let a_ready = on("a", "ready");
        assert_eq!(
            version_state(&loading, &[&a_ready, &b_failed], &["a", "b"], None, false),
            Some((VersionState::Ready, String::new())),
            "one node serving it is enough"
        );
    }

    #[test]
    fn a_removed_version_retires_once_no_node_reports_it() {
        let draining = version(VersionState::Draining);
        let still = on("a", "draining");
        assert_eq!(version_state(&draining, &[&still], &[], None, false), None);
        assert_eq!(
            version_state(&draining, &[], &[], None, false),
            Some((VersionState::Retired, String::new()))
        );
        assert_eq!(
            version_state(&version(VersionState::Retired), &[], &[], None, false),
            None
        );
    }

    #[test]
    fn moves_count_replicas_that_left_a_live_node() {
        let a = |version: &str, node: &str| Assignment {
            model: "m".into(),
            version: version.into(),
            node: node.into(),
            device: "cpu".into(),
        };
        let live: BTreeSet<String> = ["x", "y"].into_iter().map(String::from).collect();
        let before = [a("1", "x"), a("2", "y"), a("3", "dead")];
        let after = [a("1", "x"), a("2", "x"), a("3", "y")];
        assert_eq!(
            moves(&before, &after, &live),
            1,
            "only version 2 moved; 3 was on a dead node"
        );
        assert_eq!(rows(&after).len(), 3);
        assert_eq!(assignments(&rows(&after)), after);
    }
}
