//! Memory accounting and autoscaling applied to what the gateway serves: every replica holds a
//! reservation on its device (its declared memory, then its measured memory once warm), a load
//! that does not fit is refused with the reason, and each version with `max_replicas` scales
//! with its concurrency within its bounds and the budget. The decisions themselves are the pure
//! functions of [`ledger`] and [`autoscaler`]; this module keeps their state and applies them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchyard_runtimes::{Device, memory};

use crate::config::DeviceConfig;
use crate::control::rollout::driver::now_ms;
use crate::core::{ModelEntry, ModelTable, ReadyVersion, Scaling, VersionStatus};
use crate::routing::objective::ObjectivePlan;
use crate::serving::RemovedReplica;
use crate::telemetry::Metrics;
use crate::version_key::VersionKey as Key;

mod apply;
pub mod autoscaler;
pub mod ledger;
pub mod quality;

pub use apply::run;

use autoscaler::{Autoscaler, ScalingPolicy};
use ledger::{Demand, DeviceBudget, Ledger, Refusal, Reservation, plan};

const ACTOR: &str = "autoscaler";
/// How often the autoscaler samples each version's concurrency.
pub const SCALE_INTERVAL: Duration = Duration::from_millis(250);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct VersionScaler {
    autoscaler: Autoscaler,
    /// The count last decided, and why.
    target: u32,
    reason: String,
    /// When concurrency was last sampled: a round woken early by a waiting request does not
    /// sample again, so that the mean stays one of evenly spaced samples.
    sampled_at: Option<Instant>,
}

struct State {
    ledger: Ledger,
    /// Replicas being added (loading) per version: counted as present, so that a round does
    /// not decide again what an earlier one is still carrying out.
    adding: HashMap<Key, u32>,
    /// Physical size of each device, where known.
    physical: BTreeMap<Device, Option<u64>>,
    /// `[[devices]]`: the declared memory and the reserve of each configured device.
    configured: Vec<(Device, Option<u64>, u64)>,
    scalers: HashMap<Key, VersionScaler>,
    /// Models under the objective policy: the replicas their objective would give each
    /// version within the memory left to them.
    quality_plans: BTreeMap<Arc<str>, ModelQualityPlan>,
    /// When each ready version last had work: eviction takes the least recently used first.
    activity: HashMap<Key, Activity>,
    /// Loads of a version that held no replica which failed: not tried again before
    /// `retry_at`, and the requests meanwhile are told why.
    failed_starts: HashMap<Key, FailedStart>,
    /// What one replica of each version measured last, kept while it holds none: a cold start
    /// reserves what it will measure, not only what it declared.
    measured: HashMap<Key, u64>,
    /// Evictions and loads decided outside a round (by the reconciler), to be recorded as
    /// registry events by the autoscaler's task.
    outbox: Vec<CapacityEvent>,
    /// The last loads and evictions, newest last, for `/v1/resources`.
    recent: VecDeque<RecentChange>,
    /// Every load and eviction since start, per device.
    changes_by_device: HashMap<Device, DeviceChanges>,
    /// On a node of a cluster: the replicas the leader placed here for each version. The
    /// leader scales autoscaled versions across the nodes; here their count follows it.
    placed_here: Option<HashMap<Key, u32>>,
    /// Whether idle replicas may be evicted to make room: not on a node of a cluster, where
    /// the leader places versions.
    may_evict: bool,
}

/// A version's last work, as the rounds see it: what eviction and scale to zero go by.
struct Activity {
    seen_requests: u64,
    last_active: Instant,
}

struct FailedStart {
    attempts: u32,
    retry_at: Instant,
    reason: String,
}

/// A version idle for less than this is not evicted (a round's interval), so that two versions
/// taking turns do not evict each other on every request.
const EVICT_IDLE_AFTER: Duration = SCALE_INTERVAL;
/// The first wait before a failed cold start is tried again; it doubles up to the most.
const COLD_RETRY_FIRST: Duration = Duration::from_secs(1);
const COLD_RETRY_MOST: Duration = Duration::from_secs(60);
/// How long an evicted replica may take to answer what it holds and unload before the load
/// that waits for its memory goes ahead anyway.
const UNLOAD_WAIT: Duration = Duration::from_secs(60);
/// How many loads and evictions `/v1/resources` shows.
const RECENT_KEPT: usize = 32;

/// A registry event the capacity decided: its version, action and payload.
pub type CapacityEvent = (Key, &'static str, Value);

/// A replica chosen to make room: taken out of service, its memory is free once its model is
/// unloaded.
#[derive(Clone)]
pub struct Victim {
    key: Key,
    ready: Arc<ReadyVersion>,
    index: u32,
    device: Device,
    bytes: u64,
    /// Once chosen: out of service, to wait for until it has unloaded.
    removed: Option<RemovedReplica>,
}

/// A load or an eviction, as `/v1/resources` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecentChange {
    pub model: String,
    pub version: String,
    /// `evicted`, `loaded` or `load_failed`.
    pub action: String,
    pub device: String,
    pub bytes: u64,
    pub reason: String,
    /// Milliseconds since the epoch.
    pub at_ms: i64,
}

/// What [`State::note`] records.
#[derive(Clone, Copy)]
enum Noted {
    Loaded,
    LoadFailed,
    Evicted,
}

impl Noted {
    /// As `RecentChange::action` names it.
    fn as_str(self) -> &'static str {
        match self {
            Noted::Loaded => "loaded",
            Noted::LoadFailed => "load_failed",
            Noted::Evicted => "evicted",
        }
    }
}

/// What one replica of a version measured once warm, kept in the version's registry metadata
/// (`measured_memory`) so that accounting survives restarts and other nodes can place it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct MeasuredMemory {
    pub device: String,
    pub bytes_per_replica: u64,
    pub replicas: usize,
    /// How it was measured.
    pub source: String,
}

impl MeasuredMemory {
    /// The key it has in a version's metadata.
    pub const KEY: &str = "measured_memory";

    /// What a version's metadata holds, if it holds one this build can read.
    pub fn of(metadata: &Value) -> Option<MeasuredMemory> {
        MeasuredMemory::deserialize(metadata.get(Self::KEY)?).ok()
    }
}

/// `GET /v1/resources`: the devices, each version's replicas and reservations as this gateway
/// accounts for them, the objective policy's replica plans, and the last loads and evictions.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResourceReport {
    pub devices: Vec<DeviceReport>,
    pub versions: Vec<VersionResources>,
    pub objective: Vec<QualityPlanReport>,
    /// Newest first.
    pub recent: Vec<RecentChange>,
}

/// A device, in bytes.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeviceReport {
    pub id: String,
    /// Its physical memory, where it can be read.
    pub total: Option<u64>,
    /// Null when unbounded.
    pub budget: Option<u64>,
    pub reserved: u64,
    /// What of `reserved` was measured, not declared.
    pub measured: u64,
    /// What the process holds on it now, where it can be read.
    pub process_in_use: Option<u64>,
    /// Null when unbounded.
    pub free: Option<u64>,
    /// What idle replicas hold on it that eviction could free for a version of the lowest
    /// priority.
    pub evictable: u64,
    /// Versions holding a replica on it.
    pub resident_versions: u32,
    /// Since start: replicas loaded on it for requests that waited (cold starts), those loads
    /// that failed, and replicas evicted from it to make room. A cluster's leader's loads and
    /// evictions are its events and `switchyard_evictions_total`, not these.
    pub loads: u64,
    pub load_failures: u64,
    pub evictions: u64,
    /// Requests to the versions that run on it, and those of them that waited for a load.
    pub requests: u64,
    pub cold_waits: u64,
    /// Of `requests`, the share served without waiting for a load; null before any request.
    pub hit_rate: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionResources {
    pub model: String,
    pub version: String,
    pub state: String,
    /// Higher keeps its memory first.
    pub priority: i64,
    pub replicas: Vec<ReplicaReport>,
    pub reserved_bytes: u64,
    /// Null for a version the autoscaler does not scale.
    pub autoscaler: Option<ScalerReport>,
    /// Whether it holds a replica: a ready version holding none (scaled to zero or evicted)
    /// is registered, not failed, and loads on the next request.
    pub resident: bool,
    /// Never evicted: `always_loaded`, or the version the `stable` alias names.
    pub pinned: bool,
    /// Since its last work, in milliseconds; null before it was first seen.
    pub idle_ms: Option<u64>,
    /// Why its last load on demand failed, while it waits to be tried again.
    pub load_failure: Option<String>,
    /// Requests it answered here, and those that waited for a load (the hit rate's misses).
    pub requests: u64,
    pub cold_waits: u64,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplicaReport {
    pub index: u32,
    pub device: String,
    pub reserved_bytes: Option<u64>,
    pub measured: bool,
    /// Requests queued or running on it.
    pub outstanding: usize,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScalerReport {
    pub target: u32,
    pub desired_now: u32,
    pub reason: String,
}

/// The objective policy's replica plan for one model.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QualityPlanReport {
    pub model: String,
    pub offered_load: f64,
    pub value: f64,
    pub memory_binds: bool,
    pub versions: Vec<PlannedQuality>,
    pub steps: Vec<QualityStep>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlannedQuality {
    pub version: String,
    pub replicas: u32,
    pub share: f64,
}

/// A replica the greedy plan added, and what it added to the objective per GiB.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QualityStep {
    pub version: String,
    pub value_per_gib: f64,
}

struct ModelQualityPlan {
    offered_load: f64,
    labels: Vec<String>,
    plan: quality::QualityPlan,
}

/// The gateway's devices, reservations and autoscalers.
pub struct Capacity {
    state: Mutex<State>,
}

/// A version that scales, as one round sees it.
struct Scaled {
    key: Key,
    ready: Arc<ReadyVersion>,
    max_replicas: u32,
    to_zero_after: Option<Duration>,
}

/// What one autoscaling round decided: the changes to apply, and the events to record.
#[derive(Default)]
struct Round {
    changes: Vec<Change>,
    events: Vec<CapacityEvent>,
}

/// A change to make to a version's replicas, decided under the lock and applied outside it.
enum Change {
    /// The replica's memory is already reserved under `index`; it loads once `evict_first`
    /// are unloaded. `cold` says when the version, holding none, was decided to load.
    Add {
        key: Key,
        ready: Arc<ReadyVersion>,
        index: u32,
        device: Device,
        evict_first: Vec<Victim>,
        cold: Option<Instant>,
    },
    /// Over its device's budget on measured memory.
    Evict(Victim),
    Remove {
        key: Key,
        ready: Arc<ReadyVersion>,
    },
    /// Scale to zero.
    RemoveAll {
        key: Key,
        ready: Arc<ReadyVersion>,
    },
}

/// The physical memory of a device: the host's RAM for the CPU, NVML's total for a GPU.
fn physical_memory(device: Device) -> Option<u64> {
    match device {
        Device::Cpu => memory::host_memory_bytes(),
        Device::Cuda(index) => memory::gpu_totals(index).map(|(total, _)| total),
    }
}

impl Capacity {
    /// Fails on a `[[devices]]` entry that names no device. `may_evict`: whether idle
    /// replicas may be evicted to make room (not on a node of a cluster, where the leader
    /// places versions).
    pub fn new(configured: &[DeviceConfig], may_evict: bool) -> Result<Capacity, String> {
        let configured = configured
            .iter()
            .map(|d| {
                let device: Device =
                    d.id.parse()
                        .map_err(|e| format!("invalid [[devices]] entry: {e}"))?;
                Ok((device, d.memory.map(|m| m.0), d.reserve.0))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let mut state = State {
            ledger: Ledger::new(Vec::new()),
            adding: HashMap::new(),
            physical: BTreeMap::new(),
            configured: configured.clone(),
            scalers: HashMap::new(),
            quality_plans: BTreeMap::new(),
            activity: HashMap::new(),
            failed_starts: HashMap::new(),
            measured: HashMap::new(),
            outbox: Vec::new(),
            recent: VecDeque::new(),
            changes_by_device: HashMap::new(),
            placed_here: None,
            may_evict,
        };
        for (device, _, _) in configured {
            state.ensure_device(device);
        }
        Ok(Capacity {
            state: Mutex::new(state),
        })
    }

    /// Reserves memory for the first replicas of a version: up to `count` of them, placed by
    /// best fit among `allowed`; at least one, or the refusal that says why none fits. When
    /// none fits, idle replicas of versions of no higher priority are evicted to make room for
    /// the first ([`Victim`]s to unload before the load; their reservations are released now).
    pub fn reserve_first_replicas(
        &self,
        table: &ModelTable,
        key: &Key,
        bytes_per_replica: u64,
        count: u32,
        allowed: &[Device],
    ) -> Result<(Vec<Device>, Vec<Victim>), Refusal> {
        let (model, version) = (&*key.model, &*key.version);
        let mut state = lock(&self.state);
        let state = &mut *state;
        for &device in allowed {
            state.ensure_device(device);
        }
        // A reload starts from nothing.
        state.ledger.release_version(model, version);
        let mut placed = Vec::new();
        let mut victims = Vec::new();
        for replica in 0..count.max(1) {
            let device = match state
                .ledger
                .place(model, version, bytes_per_replica, allowed)
            {
                Ok(device) => device,
                Err(refusal) if placed.is_empty() => {
                    let mut events = Vec::new();
                    let made = state.make_room(
                        table,
                        key,
                        bytes_per_replica,
                        allowed,
                        Instant::now(),
                        true,
                        &mut events,
                    );
                    state.outbox.extend(events);
                    let Some((device, chosen)) = made else {
                        return Err(refusal);
                    };
                    victims = chosen;
                    device
                }
                Err(_) => break,
            };
            state
                .ledger
                .reserve(declared(model, version, replica, device, bytes_per_replica))?;
            placed.push(device);
        }
        Ok((placed, victims))
    }

    /// Waits until the victims a load waits for (out of service since they were chosen) have
    /// answered what they held and unloaded their models.
    pub async fn evict(victims: Vec<Victim>, metrics: &Metrics) {
        for victim in victims {
            unload(victim, metrics).await;
        }
    }

    /// The events decided outside the rounds, to record.
    fn take_outbox(&self) -> Vec<CapacityEvent> {
        std::mem::take(&mut lock(&self.state).outbox)
    }

    /// Replaces a replica's declared memory by what it measured after warm-up.
    pub fn record_measured(&self, key: &Key, replica: u32, bytes: u64) {
        let mut state = lock(&self.state);
        state.measured.insert(key.clone(), bytes);
        let over = state
            .ledger
            .record_measured(&key.model, &key.version, replica, bytes);
        if over {
            tracing::warn!(version = %key, replica, bytes, "a replica measured more than its device's budget has left");
        }
    }

    pub fn release_version(&self, key: &Key) {
        let mut state = lock(&self.state);
        state.ledger.release_version(&key.model, &key.version);
        state.scalers.remove(key);
        state.adding.remove(key);
        state.activity.remove(key);
        state.failed_starts.remove(key);
        state.measured.remove(key);
    }

    /// One autoscaling round over the current table: observes every ready version's work,
    /// brings back a replica for one that holds none and has requests waiting (evicting idle
    /// ones if it must), scales the versions that scale, evicts on a device over its budget,
    /// and returns the changes to apply and the events to record.
    fn decide(&self, table: &ModelTable, now: Instant) -> (Vec<Change>, Vec<CapacityEvent>) {
        let mut state = lock(&self.state);
        let state = &mut *state;
        let mut round = Round::default();
        for scaled in state.observe(table, now) {
            let adding = state.adding.get(&scaled.key).copied().unwrap_or(0);
            if scaled.ready.replicas.replica_count() == 0 {
                if adding == 0 {
                    state.cold_start(table, &scaled, now, &mut round);
                }
            } else if scaled.max_replicas == 0 {
                // Not autoscaled: its replicas are fixed.
            } else if adding == 0 && state.idle_too_long(&scaled, now, &mut round) {
                // Scaled to zero this round.
            } else if let Some(placed) = state.placed_here(&scaled.key) {
                state.follow_placement(&scaled, placed, adding, &mut round);
            } else {
                state.scale_by_load(table, &scaled, adding, now, &mut round);
            }
        }
        state.evict_over_budget(table, now, &mut round);
        (round.changes, round.events)
    }

    /// Plans the replicas of each model under the objective policy by quality per byte, from
    /// its latest objective plan (what each version sustains, the offered load), within the
    /// memory other models leave; the plan then ranks the model's versions when memory is
    /// shared out ([`State::priority`]).
    pub fn set_objective_plans(&self, table: &ModelTable, plans: &[(Arc<str>, ObjectivePlan)]) {
        // The inputs are taken under the lock, the search runs without it: the autoscaler and
        // the reconciler take it too.
        let ledger = lock(&self.state).ledger.clone();
        let mut planned = BTreeMap::new();
        for (name, objective) in plans {
            let Ok(model) = table.model(name) else {
                continue;
            };
            let mut free = ledger.clone();
            let mut demands = Vec::new();
            for version_plan in &objective.versions {
                let Some(version) = model
                    .versions
                    .iter()
                    .find(|v| *v.label == *version_plan.version)
                else {
                    continue;
                };
                let VersionStatus::Ready(ready) = &version.status else {
                    continue;
                };
                free.release_version(name, &version.label);
                let max_replicas = ready.scaling.as_ref().map_or_else(
                    || u32::try_from(ready.replicas.replica_count().max(1)).unwrap_or(1),
                    |scaling| scaling.max_replicas.max(1),
                );
                // What one replica carries now: the capacity the objective used (a saturated
                // version's is what it answered), per replica.
                let capacity_per_replica = match (version_plan.capacity, version_plan.replicas) {
                    (Some(capacity), replicas) if replicas > 0 => Some(capacity / replicas as f64),
                    _ => version_plan.capacity_per_replica,
                };
                demands.push(quality::QualityDemand {
                    version: version_plan.version.clone(),
                    quality: version_plan.quality,
                    capacity_per_replica,
                    bytes_per_replica: new_replica_bytes(ready),
                    allowed: ready.allowed.clone(),
                    max_replicas,
                });
            }
            let plan = quality::plan_replicas(
                free,
                name,
                &demands,
                objective.offered_load,
                objective.utilisation,
                objective.floor,
            );
            planned.insert(
                name.clone(),
                ModelQualityPlan {
                    offered_load: objective.offered_load,
                    labels: demands.into_iter().map(|d| d.version).collect(),
                    plan,
                },
            );
        }
        lock(&self.state).quality_plans = planned;
    }

    /// What `GET /v1/resources` shows.
    pub fn report(&self, table: &ModelTable) -> ResourceReport {
        let state = lock(&self.state);
        let now = Instant::now();
        let evictable = state.eviction_candidates(table, now, EVICT_IDLE_AFTER, |_| true);
        let mut versions = Vec::new();
        // Where each ready version runs (its replicas' device, else the first it may use),
        // for the devices' figures.
        let mut homes = Vec::new();
        for model in table.models.values() {
            for version in &model.versions {
                let key = Key {
                    model: model.name.clone(),
                    version: version.label.clone(),
                };
                let reservations: Vec<&Reservation> = state
                    .ledger
                    .reservations()
                    .iter()
                    .filter(|r| *r.model == *key.model && *r.version == *key.version)
                    .collect();
                let replicas = match &version.status {
                    VersionStatus::Ready(ready) => ready
                        .replicas
                        .replicas()
                        .iter()
                        .map(|replica| {
                            let reservation =
                                reservations.iter().find(|r| r.replica == replica.index);
                            ReplicaReport {
                                index: replica.index,
                                device: replica.device.to_string(),
                                reserved_bytes: reservation.map(|r| r.bytes),
                                measured: reservation.is_some_and(|r| r.measured),
                                outstanding: replica.outstanding,
                            }
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                let autoscaler = state.scalers.get(&key).map(|scaler| ScalerReport {
                    target: scaler.target,
                    desired_now: scaler.autoscaler.desired(Instant::now()),
                    reason: scaler.reason.clone(),
                });
                let priority = state.priority(model, &version.label);
                let ready = match &version.status {
                    VersionStatus::Ready(ready) => Some(ready),
                    _ => None,
                };
                let figures = version.stats.figures();
                let (requests, cold_waits) = (figures.requests(), figures.cold_waits());
                let home = replicas
                    .first()
                    .and_then(|r| r.device.parse::<Device>().ok())
                    .or_else(|| ready.and_then(|r| r.allowed.first().copied()));
                if let Some(device) = home {
                    homes.push(Home {
                        device,
                        resident: !replicas.is_empty(),
                        requests,
                        cold_waits,
                    });
                }
                versions.push(VersionResources {
                    model: key.model.to_string(),
                    version: key.version.to_string(),
                    state: version.status.name().to_owned(),
                    priority,
                    resident: !replicas.is_empty(),
                    pinned: priority == STABLE_PRIORITY || ready.is_some_and(|r| r.always_loaded),
                    idle_ms: state.activity.get(&key).map(|activity| {
                        let idle = now.saturating_duration_since(activity.last_active);
                        u64::try_from(idle.as_millis()).unwrap_or(u64::MAX)
                    }),
                    load_failure: state.failed_starts.get(&key).map(|f| f.reason.clone()),
                    requests,
                    cold_waits,
                    replicas,
                    reserved_bytes: reservations.iter().map(|r| r.bytes).sum(),
                    autoscaler,
                });
            }
        }
        let devices = state
            .ledger
            .devices()
            .iter()
            .map(|device| {
                let changes = state
                    .changes_by_device
                    .get(&device.id)
                    .copied()
                    .unwrap_or_default();
                let on_device = homes.iter().filter(|home| home.device == device.id);
                let requests: u64 = on_device.clone().map(|home| home.requests).sum();
                let cold_waits: u64 = on_device.map(|home| home.cold_waits).sum();
                let measured: u64 = state
                    .ledger
                    .reservations()
                    .iter()
                    .filter(|r| r.device == device.id && r.measured)
                    .map(|r| r.bytes)
                    .sum();
                let bounded = device.budget != u64::MAX;
                DeviceReport {
                    id: device.id.to_string(),
                    total: state.physical.get(&device.id).copied().flatten(),
                    budget: bounded.then_some(device.budget),
                    reserved: state.ledger.reserved(device.id),
                    measured,
                    process_in_use: memory::in_use(device.id),
                    free: state.ledger.free(device.id).filter(|_| bounded),
                    evictable: evictable
                        .iter()
                        .filter(|(_, _, victim)| victim.device == device.id)
                        .map(|(_, _, victim)| victim.bytes)
                        .sum(),
                    resident_versions: homes
                        .iter()
                        .filter(|home| home.device == device.id && home.resident)
                        .count() as u32,
                    loads: changes.loads,
                    load_failures: changes.load_failures,
                    evictions: changes.evictions,
                    requests,
                    cold_waits,
                    hit_rate: (requests > 0)
                        .then(|| requests.saturating_sub(cold_waits) as f64 / requests as f64),
                }
            })
            .collect();
        let objective = state
            .quality_plans
            .iter()
            .map(|(model, planned)| QualityPlanReport {
                model: model.to_string(),
                offered_load: planned.offered_load,
                value: planned.plan.value,
                memory_binds: planned.plan.memory_binds,
                versions: planned
                    .labels
                    .iter()
                    .zip(&planned.plan.replicas)
                    .zip(&planned.plan.shares)
                    .map(|((label, replicas), share)| PlannedQuality {
                        version: label.clone(),
                        replicas: *replicas,
                        share: *share,
                    })
                    .collect(),
                steps: planned
                    .plan
                    .steps
                    .iter()
                    .map(|(version, per_gib)| QualityStep {
                        version: version.clone(),
                        value_per_gib: *per_gib,
                    })
                    .collect(),
            })
            .collect();
        ResourceReport {
            devices,
            versions,
            objective,
            recent: state.recent.iter().rev().cloned().collect(),
        }
    }

    /// On a node of a cluster: the replicas the leader placed here, per version.
    pub fn set_placed_here(&self, placed: HashMap<Key, u32>) {
        lock(&self.state).placed_here = Some(placed);
    }

    /// Each autoscaled version's replicas here and the mean concurrency they carried over its
    /// window, for the leader, which scales it across the nodes.
    pub fn concurrency(&self, table: &ModelTable) -> Vec<(Key, u32, f64)> {
        let state = lock(&self.state);
        let now = Instant::now();
        let mut loads = Vec::new();
        for model in table.models.values() {
            for version in &model.versions {
                let VersionStatus::Ready(ready) = &version.status else {
                    continue;
                };
                let key = Key {
                    model: model.name.clone(),
                    version: version.label.clone(),
                };
                if let Some(mean) = state
                    .scalers
                    .get(&key)
                    .and_then(|scaler| scaler.autoscaler.mean(now))
                {
                    let replicas = u32::try_from(ready.replicas.replica_count()).unwrap_or(0);
                    loads.push((key, replicas, mean));
                }
            }
        }
        loads
    }

    /// The idle replicas that may be evicted now, per version and device: how many, their
    /// bytes, and how long the version has been idle. A cluster node's heartbeat gives them
    /// to the leader, which evicts for the versions requests want.
    pub fn evictable(&self, table: &ModelTable) -> Vec<EvictableReplicas> {
        let state = lock(&self.state);
        let now = Instant::now();
        let mut grouped: BTreeMap<(Key, Device), EvictableReplicas> = BTreeMap::new();
        for (_, last_active, victim) in
            state.eviction_candidates(table, now, EVICT_IDLE_AFTER, |_| true)
        {
            let entry = grouped
                .entry((victim.key.clone(), victim.device))
                .or_insert_with(|| EvictableReplicas {
                    key: victim.key.clone(),
                    device: victim.device,
                    replicas: 0,
                    bytes: 0,
                    idle: now.saturating_duration_since(last_active),
                });
            entry.replicas += 1;
            entry.bytes += victim.bytes;
        }
        grouped.into_values().collect()
    }

    /// Device figures for the metrics: (device, budget, reserved).
    pub fn device_figures(&self) -> Vec<(String, u64, u64)> {
        let state = lock(&self.state);
        state
            .ledger
            .devices()
            .iter()
            .filter(|d| d.budget != u64::MAX)
            .map(|d| (d.id.to_string(), d.budget, state.ledger.reserved(d.id)))
            .collect()
    }

    /// Each scaled version's current target replica count, for the metrics.
    pub fn targets(&self) -> Vec<(Key, u32)> {
        lock(&self.state)
            .scalers
            .iter()
            .map(|(key, scaler)| (key.clone(), scaler.target))
            .collect()
    }
}

impl State {
    /// Notes when every ready version last had work, and samples the concurrency of those
    /// that scale; returns those, and the versions holding no replica (which a request can
    /// bring back).
    fn observe(&mut self, table: &ModelTable, now: Instant) -> Vec<Scaled> {
        let mut scaled = Vec::new();
        for model in table.models.values() {
            for version in &model.versions {
                let VersionStatus::Ready(ready) = &version.status else {
                    continue;
                };
                let key = Key {
                    model: model.name.clone(),
                    version: version.label.clone(),
                };
                let outstanding = ready.replicas.outstanding();
                let requests = version.stats.requests();
                let busy = outstanding > 0 || ready.replicas.cold_waiters() > 0;
                let activity = self.activity.entry(key.clone()).or_insert(Activity {
                    seen_requests: requests,
                    last_active: now,
                });
                if requests != activity.seen_requests || busy {
                    activity.seen_requests = requests;
                    activity.last_active = now;
                }
                let Some(scaling) = &ready.scaling else {
                    if ready.replicas.replica_count() == 0 {
                        scaled.push(Scaled {
                            key,
                            ready: ready.clone(),
                            max_replicas: 0,
                            to_zero_after: None,
                        });
                    }
                    continue;
                };
                let scaler = self
                    .scalers
                    .entry(key.clone())
                    .or_insert_with(|| VersionScaler {
                        autoscaler: Autoscaler::new(policy(scaling)),
                        target: u32::try_from(ready.replicas.replica_count()).unwrap_or(1),
                        reason: "initial replicas".into(),
                        sampled_at: None,
                    });
                let due = scaler
                    .sampled_at
                    .is_none_or(|at| now.saturating_duration_since(at) >= SCALE_INTERVAL / 2);
                if due {
                    scaler.autoscaler.observe(now, outstanding as f64);
                    scaler.sampled_at = Some(now);
                }
                scaled.push(Scaled {
                    key,
                    ready: ready.clone(),
                    max_replicas: scaling.max_replicas,
                    to_zero_after: scaling.to_zero_after,
                });
            }
        }
        scaled
    }

    fn set_target(&mut self, key: &Key, target: u32, reason: &str) {
        if let Some(scaler) = self.scalers.get_mut(key) {
            scaler.target = target;
            scaler.reason = reason.to_owned();
        }
    }

    /// A version holding no replica (scaled to zero, or evicted): a waiting request brings one
    /// back (the autoscaler takes it from there), evicting idle replicas of versions of no
    /// higher priority if it must; a load that failed is not tried again before its backoff.
    fn cold_start(&mut self, table: &ModelTable, scaled: &Scaled, now: Instant, round: &mut Round) {
        let (key, ready) = (&scaled.key, &scaled.ready);
        let waiting = ready.replicas.cold_waiters();
        if waiting == 0 {
            return;
        }
        if self
            .failed_starts
            .get(key)
            .is_some_and(|failed| now < failed.retry_at)
        {
            return;
        }
        let bytes = new_replica_bytes(ready).max(self.measured.get(key).copied().unwrap_or(0));
        let room = self.room_for(key, bytes, &ready.allowed, 1);
        let made = match room.first() {
            Some(&device) => Some((device, Vec::new())),
            None => self.make_room(
                table,
                key,
                bytes,
                &ready.allowed,
                now,
                true,
                &mut round.events,
            ),
        };
        let Some((device, victims)) = made else {
            return;
        };
        let reason = format!("cold start: {waiting} request(s) waiting for a replica");
        let Some(change) = self.reserve_addition(key, ready, device, bytes, victims, Some(now))
        else {
            return;
        };
        self.set_target(key, 1, &reason);
        round.changes.push(change);
        round.events.push((
            key.clone(),
            SCALE_ACTION,
            json!({"version": key.version, "from": 0, "to": 1, "reason": reason,
                   "bytes_per_replica": bytes}),
        ));
    }

    /// Scales an idle version to zero once `scale_to_zero_after` has passed; true if it did.
    fn idle_too_long(&mut self, scaled: &Scaled, now: Instant, round: &mut Round) -> bool {
        let Some(idle_limit) = scaled.to_zero_after else {
            return false;
        };
        let key = &scaled.key;
        let idle = self.activity.get(key).map_or(Duration::ZERO, |a| {
            now.saturating_duration_since(a.last_active)
        });
        if idle < idle_limit {
            return false;
        }
        let reason = format!(
            "scale to zero: no request for {:.1}s (scale_to_zero_after {:.1}s)",
            idle.as_secs_f64(),
            idle_limit.as_secs_f64()
        );
        self.set_target(key, 0, &reason);
        let live = scaled.ready.replicas.replica_count();
        tracing::info!(version = %key, %reason, "scaling");
        round.events.push((
            key.clone(),
            SCALE_ACTION,
            json!({"version": key.version, "from": live, "to": 0, "reason": reason}),
        ));
        round.changes.push(Change::RemoveAll {
            key: key.clone(),
            ready: scaled.ready.clone(),
        });
        true
    }

    /// The autoscaler's decision for a serving version, capped by what the budget allows:
    /// what higher-priority versions' wishes leave (the plan), and what really fits now on the
    /// ledger, which also holds loading and draining versions. Priority never shrinks a
    /// version here; it only stops it growing.
    fn scale_by_load(
        &mut self,
        table: &ModelTable,
        scaled: &Scaled,
        adding: u32,
        now: Instant,
        round: &mut Round,
    ) {
        // Let the replicas being added arrive before deciding again.
        if adding > 0 {
            return;
        }
        let (key, ready, max_replicas) = (&scaled.key, &scaled.ready, scaled.max_replicas);
        let current = u32::try_from(ready.replicas.replica_count()).unwrap_or(u32::MAX);
        let bytes = new_replica_bytes(ready);
        let planned = self.placement_for(table, key, ready, max_replicas, now);
        let room = self.room_for(
            key,
            bytes,
            &ready.allowed,
            max_replicas.saturating_sub(current),
        );
        // Replicas of lower priority that are idle can be evicted for it: the plan, which
        // ranks by priority, is then the cap rather than the room left.
        let priority = self.priority_of(table, key);
        let evictable = self
            .evict_for(table, key, priority, bytes, &ready.allowed, now, false)
            .is_some();
        let reachable = if evictable {
            u32::MAX
        } else {
            current.saturating_add(u32::try_from(room.len()).unwrap_or(u32::MAX))
        };
        let cap = u32::try_from(planned.len())
            .unwrap_or(u32::MAX)
            .min(reachable)
            .max(current.min(max_replicas))
            .max(1);
        let Some(decision) = self
            .scalers
            .get_mut(key)
            .and_then(|scaler| scaler.autoscaler.decide(now, current, cap))
        else {
            return;
        };
        self.set_target(key, decision.to, &decision.reason);
        if decision.to > current {
            let count = decision.to - current;
            let mut added = 0;
            for &device in room.iter().take(count as usize) {
                let Some(change) =
                    self.reserve_addition(key, ready, device, bytes, Vec::new(), None)
                else {
                    break;
                };
                round.changes.push(change);
                added += 1;
            }
            // The rest in the room of idle replicas of lower priority.
            while added < count {
                let Some((device, victims)) = self.make_room(
                    table,
                    key,
                    bytes,
                    &ready.allowed,
                    now,
                    false,
                    &mut round.events,
                ) else {
                    break;
                };
                let Some(change) = self.reserve_addition(key, ready, device, bytes, victims, None)
                else {
                    break;
                };
                round.changes.push(change);
                added += 1;
            }
        } else {
            for _ in decision.to..current {
                round.changes.push(Change::Remove {
                    key: key.clone(),
                    ready: ready.clone(),
                });
            }
        }
        tracing::info!(version = %key, from = decision.from, to = decision.to, reason = %decision.reason, "scaling");
        round.events.push((
            key.clone(),
            SCALE_ACTION,
            json!({
                "version": key.version,
                "from": decision.from,
                "to": decision.to,
                "reason": decision.reason,
                "bytes_per_replica": bytes,
            }),
        ));
    }

    /// On a node of a cluster, the replicas the leader placed here for a version.
    fn placed_here(&self, key: &Key) -> Option<u32> {
        self.placed_here
            .as_ref()
            .map(|placed| placed.get(key).copied().unwrap_or(0))
    }

    /// On a node of a cluster, an autoscaled version holds the replicas the leader placed
    /// here (which it decides from every node's load): added where they fit, removed beyond.
    /// Never none: a version leaves a node by the placement, and scales to zero by idling.
    fn follow_placement(&mut self, scaled: &Scaled, placed: u32, adding: u32, round: &mut Round) {
        if adding > 0 {
            return;
        }
        let (key, ready) = (&scaled.key, &scaled.ready);
        let current = u32::try_from(ready.replicas.replica_count()).unwrap_or(u32::MAX);
        let to = placed.clamp(1, scaled.max_replicas.max(1));
        if to == current {
            return;
        }
        let bytes = new_replica_bytes(ready);
        let mut added = 0;
        if to > current {
            let room = self.room_for(key, bytes, &ready.allowed, to - current);
            for &device in &room {
                let Some(change) =
                    self.reserve_addition(key, ready, device, bytes, Vec::new(), None)
                else {
                    break;
                };
                round.changes.push(change);
                added += 1;
            }
            if added == 0 {
                return;
            }
        } else {
            for _ in to..current {
                round.changes.push(Change::Remove {
                    key: key.clone(),
                    ready: ready.clone(),
                });
            }
        }
        let reached = if to > current { current + added } else { to };
        let reason = format!("the cluster's leader placed {placed} here");
        self.set_target(key, reached, &reason);
        tracing::info!(version = %key, from = current, to = reached, %reason, "scaling");
        round.events.push((
            key.clone(),
            SCALE_ACTION,
            json!({"version": key.version, "from": current, "to": reached, "reason": reason,
                   "bytes_per_replica": bytes}),
        ));
    }

    /// Adds a device the first time a version names it: its configured budget, else its
    /// physical memory.
    fn ensure_device(&mut self, id: Device) {
        if self.physical.contains_key(&id) {
            return;
        }
        let physical = physical_memory(id);
        self.physical.insert(id, physical);
        let configured = self.configured.iter().find(|(device, _, _)| *device == id);
        let declared = configured.and_then(|(_, memory, _)| *memory);
        let reserve = configured.map_or(0, |(_, _, reserve)| *reserve);
        let size = match (declared, physical) {
            (Some(declared), Some(physical)) => declared.min(physical),
            (Some(declared), None) => declared,
            (None, Some(physical)) => physical,
            // Neither configured nor measurable (a GPU without NVML, or none at all): not
            // accounted, so that the runtime says what is missing when it loads there.
            (None, None) => {
                tracing::warn!(
                    device = %id,
                    "no memory figure for this device (no [[devices]] entry, no NVML): its reservations are not limited"
                );
                u64::MAX
            }
        };
        self.ledger.add_device(DeviceBudget {
            id,
            budget: size.saturating_sub(reserve),
        });
    }

    /// Reserves the memory of a replica about to be added to `ready` on `device`, and counts
    /// it as being added; the change that loads it (once `evict_first` are unloaded), or
    /// nothing if it does not fit.
    fn reserve_addition(
        &mut self,
        key: &Key,
        ready: &Arc<ReadyVersion>,
        device: Device,
        bytes: u64,
        evict_first: Vec<Victim>,
        cold: Option<Instant>,
    ) -> Option<Change> {
        let index = ready.replicas.claim_index();
        self.ledger
            .reserve(declared(&key.model, &key.version, index, device, bytes))
            .ok()?;
        *self.adding.entry(key.clone()).or_default() += 1;
        Some(Change::Add {
            key: key.clone(),
            ready: ready.clone(),
            index,
            device,
            evict_first,
            cold,
        })
    }

    /// [`State::evict_for`] at `asking`'s priority, and the victims taken
    /// ([`State::take_victims`]): the device that now has room, and what to unload first.
    #[allow(clippy::too_many_arguments)]
    fn make_room(
        &mut self,
        table: &ModelTable,
        asking: &Key,
        bytes: u64,
        allowed: &[Device],
        now: Instant,
        equal: bool,
        events: &mut Vec<CapacityEvent>,
    ) -> Option<(Device, Vec<Victim>)> {
        let priority = self.priority_of(table, asking);
        let (device, mut victims) =
            self.evict_for(table, asking, priority, bytes, allowed, now, equal)?;
        let reason = format!("room for version {} of {}", asking.version, asking.model);
        self.take_victims(&mut victims, &reason, events);
        Some((device, victims))
    }

    /// A version's priority ([`State::priority`]); 0 for one whose model the table lacks.
    fn priority_of(&self, table: &ModelTable, key: &Key) -> i64 {
        table
            .models
            .get(&key.model)
            .map_or(0, |model| self.priority(model, &key.version))
    }

    /// Idle replicas whose eviction makes room for a replica of `bytes` of `asking` on one of
    /// `allowed`, the fewest of them, taken lowest priority first, then least recently used.
    /// Never a replica with requests in flight, nor one of a version with open sequences or
    /// requests waiting, a pinned version (`always_loaded`, or named by the `stable` alias),
    /// one of higher priority than `asking` (nor of equal priority unless `equal`), or, for a
    /// scale-up (not `equal`), one idle for less than [`EVICT_IDLE_AFTER`].
    #[allow(clippy::too_many_arguments)]
    fn evict_for(
        &mut self,
        table: &ModelTable,
        asking: &Key,
        asking_priority: i64,
        bytes: u64,
        allowed: &[Device],
        now: Instant,
        equal: bool,
    ) -> Option<(Device, Vec<Victim>)> {
        if !self.may_evict {
            return None;
        }
        // A load (one that requests wait for, a version just registered or waiting for room)
        // may take any idle replica, least recently used first. A scale-up, which no request
        // waits for, takes only what has been idle for a round, so as not to churn.
        let min_idle = if equal {
            Duration::ZERO
        } else {
            EVICT_IDLE_AFTER
        };
        let mut candidates = self.eviction_candidates(table, now, min_idle, |priority| {
            priority < asking_priority || (equal && priority == asking_priority)
        });
        candidates.retain(|(_, _, victim)| victim.key != *asking);
        let mut best: Option<(Device, Vec<Victim>)> = None;
        for &device in allowed {
            self.ensure_device(device);
            let mut trial = self.ledger.clone();
            let fits = |trial: &Ledger| {
                trial
                    .place(&asking.model, &asking.version, bytes, &[device])
                    .is_ok()
            };
            let mut chosen = Vec::new();
            for (_, _, victim) in candidates.iter().filter(|c| c.2.device == device) {
                if fits(&trial) {
                    break;
                }
                trial.release(&victim.key.model, &victim.key.version, victim.index);
                chosen.push(victim.clone());
            }
            if !chosen.is_empty()
                && fits(&trial)
                && best
                    .as_ref()
                    .is_none_or(|(_, fewest)| chosen.len() < fewest.len())
            {
                best = Some((device, chosen));
            }
        }
        best
    }

    /// The replicas that may be evicted, with their priority and last work, in the order they
    /// go: lowest priority first, then least recently used.
    fn eviction_candidates(
        &self,
        table: &ModelTable,
        now: Instant,
        min_idle: Duration,
        below: impl Fn(i64) -> bool,
    ) -> Vec<(i64, Instant, Victim)> {
        let mut candidates = Vec::new();
        let now_epoch_ms = u64::try_from(now_ms()).unwrap_or(0);
        for model in table.models.values() {
            for version in &model.versions {
                let VersionStatus::Ready(ready) = &version.status else {
                    continue;
                };
                let key = Key {
                    model: model.name.clone(),
                    version: version.label.clone(),
                };
                let priority = self.priority(model, &version.label);
                if ready.always_loaded || priority == STABLE_PRIORITY || !below(priority) {
                    continue;
                }
                if ready
                    .open_sequences
                    .load(std::sync::atomic::Ordering::Relaxed)
                    > 0
                    || ready.replicas.cold_waiters() > 0
                    || self.adding.get(&key).is_some_and(|adding| *adding > 0)
                {
                    continue;
                }
                // Not seen by a round yet: as good as busy.
                let Some(round_seen) = self.activity.get(&key).map(|a| a.last_active) else {
                    continue;
                };
                // A round sees activity every 250 ms; the record has each request's end, which
                // orders the versions a round saw busy together.
                let served_ms = version.stats.figures().last_served_ms();
                let since_served = Duration::from_millis(now_epoch_ms.saturating_sub(served_ms));
                let last_active = now
                    .checked_sub(since_served)
                    .map_or(round_seen, |served| served.max(round_seen));
                if now.saturating_duration_since(last_active) < min_idle {
                    continue;
                }
                for replica in ready.replicas.replicas() {
                    if replica.outstanding > 0 {
                        continue;
                    }
                    let reservation = self.ledger.reservations().iter().find(|r| {
                        *r.model == *key.model
                            && *r.version == *key.version
                            && r.replica == replica.index
                    });
                    let Some(reservation) = reservation else {
                        continue;
                    };
                    candidates.push((
                        priority,
                        last_active,
                        Victim {
                            key: key.clone(),
                            ready: ready.clone(),
                            index: replica.index,
                            device: reservation.device,
                            bytes: reservation.bytes,
                            removed: None,
                        },
                    ));
                }
            }
        }
        candidates.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        candidates
    }

    /// Takes the victims out of service at once (a request already on one is still answered;
    /// no new one reaches it), releases their memory to whoever was given it, and records why
    /// they go.
    fn take_victims(
        &mut self,
        victims: &mut [Victim],
        reason: &str,
        events: &mut Vec<CapacityEvent>,
    ) {
        for victim in victims.iter_mut() {
            victim.removed = victim.ready.replicas.remove_replica_at(victim.index);
            self.ledger
                .release(&victim.key.model, &victim.key.version, victim.index);
            self.note(
                &victim.key,
                Noted::Evicted,
                victim.device,
                victim.bytes,
                reason.to_owned(),
            );
            tracing::info!(version = %victim.key, replica = victim.index, device = %victim.device, bytes = victim.bytes, %reason, "evicting an idle replica");
            events.push((
                victim.key.clone(),
                EVICT_ACTION,
                json!({"version": victim.key.version, "replica": victim.index,
                       "device": victim.device.to_string(), "bytes": victim.bytes,
                       "reason": reason}),
            ));
        }
    }

    /// A device over its budget (a replica measured more than it declared): idle replicas of
    /// any unpinned version go, lowest priority and least recently used first, until it fits.
    fn evict_over_budget(&mut self, table: &ModelTable, now: Instant, round: &mut Round) {
        let over: Vec<(Device, u64)> = self
            .ledger
            .devices()
            .iter()
            .filter(|device| self.ledger.reserved(device.id) > device.budget)
            .map(|device| (device.id, device.budget))
            .collect();
        if over.is_empty() || !self.may_evict {
            return;
        }
        // A hard limit: any replica with nothing in flight may go, however recently it worked.
        let candidates = self.eviction_candidates(table, now, Duration::ZERO, |_| true);
        for (device, budget) in over {
            let mut victims = Vec::new();
            let mut reserved = self.ledger.reserved(device);
            for (_, _, victim) in candidates.iter().filter(|c| c.2.device == device) {
                if reserved <= budget {
                    break;
                }
                reserved = reserved.saturating_sub(victim.bytes);
                victims.push(victim.clone());
            }
            let reason = format!(
                "{device} is over its budget of {} on measured memory",
                ledger::human_bytes(budget)
            );
            self.take_victims(&mut victims, &reason, &mut round.events);
            round.changes.extend(victims.into_iter().map(Change::Evict));
        }
    }

    /// Counts a load or an eviction on its device and keeps it among the recent ones.
    fn note(&mut self, key: &Key, what: Noted, device: Device, bytes: u64, reason: String) {
        let counts = self.changes_by_device.entry(device).or_default();
        match what {
            Noted::Loaded => counts.loads += 1,
            Noted::LoadFailed => counts.load_failures += 1,
            Noted::Evicted => counts.evictions += 1,
        }
        if self.recent.len() == RECENT_KEPT {
            self.recent.pop_front();
        }
        self.recent.push_back(RecentChange {
            model: key.model.to_string(),
            version: key.version.to_string(),
            action: what.as_str().to_owned(),
            device: device.to_string(),
            bytes,
            reason,
            at_ms: now_ms(),
        });
    }

    /// Devices where up to `count` more replicas of `bytes` fit now, by best fit.
    fn room_for(&self, key: &Key, bytes: u64, allowed: &[Device], count: u32) -> Vec<Device> {
        let mut trial = self.ledger.clone();
        let mut devices = Vec::new();
        for replica in 0..count {
            let Ok(device) = trial.place(&key.model, &key.version, bytes, allowed) else {
                break;
            };
            let reservation = declared(&key.model, &key.version, u32::MAX - replica, device, bytes);
            if trial.reserve(reservation).is_err() {
                break;
            }
            devices.push(device);
        }
        devices
    }

    /// Where the replicas of a version could be, up to `wanted`, once every version of higher
    /// priority has what its autoscaler wants now: the count is the budget's cap.
    fn placement_for(
        &mut self,
        table: &ModelTable,
        key: &Key,
        ready: &ReadyVersion,
        wanted: u32,
        now: Instant,
    ) -> Vec<Device> {
        for &device in &ready.allowed {
            self.ensure_device(device);
        }
        let mut demands = Vec::new();
        for other_model in table.models.values() {
            for version in &other_model.versions {
                let VersionStatus::Ready(other) = &version.status else {
                    continue;
                };
                let other_key = Key {
                    model: other_model.name.clone(),
                    version: version.label.clone(),
                };
                let is_self = other_key == *key;
                let current: Vec<Device> =
                    other.replicas.replicas().iter().map(|r| r.device).collect();
                let other_wanted = if is_self {
                    wanted
                } else {
                    let desired = self
                        .scalers
                        .get(&other_key)
                        .map(|s| s.autoscaler.desired(now));
                    desired.map_or(current.len() as u32, |d| d.max(current.len() as u32))
                };
                let bytes = self
                    .ledger
                    .reservations()
                    .iter()
                    .filter(|r| *r.model == *other_key.model && *r.version == *other_key.version)
                    .map(|r| r.bytes)
                    .max()
                    .unwrap_or(other.reserve_bytes);
                demands.push(Demand {
                    model: other_key.model.to_string(),
                    version: other_key.version.to_string(),
                    priority: self.priority(other_model, &version.label),
                    wanted: other_wanted,
                    minimum: 1,
                    bytes_per_replica: bytes,
                    allowed: other.allowed.clone(),
                    current,
                });
            }
        }
        plan(self.ledger.devices(), &demands)
            .into_iter()
            .find(|entry| *entry.model == *key.model && *entry.version == *key.version)
            .map(|entry| entry.devices)
            .unwrap_or_default()
    }
}

impl State {
    /// [`priority`], except that under the objective policy a version's share is the one the
    /// quality plan gives it, and a version the plan gives no replica ranks with the unweighted.
    fn priority(&self, model: &ModelEntry, label: &str) -> i64 {
        let by_weight = priority(model, label);
        let Some(planned) = self.quality_plans.get(&model.name) else {
            return by_weight;
        };
        if by_weight == STABLE_PRIORITY {
            return by_weight;
        }
        let index = planned.labels.iter().position(|l| l == label);
        match index.map(|i| (planned.plan.replicas[i], planned.plan.shares[i])) {
            Some((replicas, share)) if replicas > 0 => {
                WEIGHTED_PRIORITY + (share.clamp(0.0, 1.0) * 1_000_000.0) as i64
            }
            // Out of the plan: with the unweighted, or last if it is the shadow.
            _ => by_weight.min(0),
        }
    }
}

/// A ready version's device, for the report's figures per device.
struct Home {
    device: Device,
    resident: bool,
    requests: u64,
    cold_waits: u64,
}

/// Loads and evictions on one device since start.
#[derive(Debug, Default, Clone, Copy)]
struct DeviceChanges {
    loads: u64,
    load_failures: u64,
    evictions: u64,
}

/// A version's idle replicas on one device that may be evicted ([`Capacity::evictable`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvictableReplicas {
    pub key: Key,
    pub device: Device,
    pub replicas: u32,
    pub bytes: u64,
    pub idle: Duration,
}

const STABLE_PRIORITY: i64 = 3_000_000;
/// The registry events' actions.
pub const SCALE_ACTION: &str = "replicas.scale";
pub const EVICT_ACTION: &str = "replicas.evict";
pub const LOAD_ACTION: &str = "replicas.load";

/// Waits, at most [`UNLOAD_WAIT`], until a victim (out of service since it was chosen) has
/// answered what it held and unloaded its model.
async fn unload(victim: Victim, metrics: &Metrics) {
    let Some(removed) = victim.removed else {
        return;
    };
    metrics.evicted(
        &victim.key.model,
        &victim.key.version,
        &victim.device.to_string(),
    );
    if tokio::time::timeout(UNLOAD_WAIT, removed.unloaded())
        .await
        .is_err()
    {
        tracing::warn!(version = %victim.key, replica = victim.index, "an evicted replica is still answering what it held; loading beside it");
    }
}
const WEIGHTED_PRIORITY: i64 = 1_000_000;

/// Which versions keep their memory first: the one holding the `stable` alias, then by share
/// of the traffic; versions without weight (canaries not yet weighted) after, shadows last.
pub fn priority(model: &ModelEntry, label: &str) -> i64 {
    if model.aliases.get("stable").is_some_and(|v| &**v == label) {
        return STABLE_PRIORITY;
    }
    // Weights may be any u64: shares in floating point cannot overflow.
    let total: f64 = model.traffic.iter().map(|(_, w)| *w as f64).sum();
    let weight = model
        .traffic
        .iter()
        .find(|(l, _)| &**l == label)
        .map_or(0.0, |(_, w)| *w as f64);
    if weight > 0.0 && total > 0.0 {
        return WEIGHTED_PRIORITY + (weight / total * 1_000_000.0) as i64;
    }
    let shadow = model.policy.shadow.as_ref().map(|shadow| {
        model
            .aliases
            .get(&shadow.version)
            .map_or(shadow.version.as_str(), |target| &**target)
    });
    if shadow == Some(label) {
        return -1;
    }
    0
}

/// The autoscaler's policy of a version's scaling settings.
pub fn policy(scaling: &Scaling) -> ScalingPolicy {
    ScalingPolicy {
        min_replicas: scaling.min_replicas,
        max_replicas: scaling.max_replicas,
        target_concurrency: scaling.target_concurrency,
        window: scaling.window,
        scale_up_delay: scaling.up_delay,
        scale_down_delay: scaling.down_delay,
    }
}

/// A replica's reservation before it is measured.
fn declared(model: &str, version: &str, replica: u32, device: Device, bytes: u64) -> Reservation {
    Reservation {
        model: model.to_owned(),
        version: version.to_owned(),
        replica,
        device,
        bytes,
        measured: false,
    }
}

/// What a new replica of a version reserves: its declared figure, or what its replicas measured
/// if that is more.
fn new_replica_bytes(ready: &ReadyVersion) -> u64 {
    let measured = ready
        .replicas
        .memory_per_replica()
        .map_or(0, |bytes| ready.replica_bytes(bytes));
    ready.reserve_bytes.max(measured)
}
