//! Cluster-wide replica placement: the leader decides which node, and which device on it, holds
//! each replica of each model version, from the live nodes' budgets, the demands and where the
//! replicas are now. Pure: no I/O and no clock reads, so the leader can run it under its lock
//! and a test can replay any decision.
//!
//! Every placer obeys the rules [`check`] verifies: a bin's budget is never exceeded; a replica
//! sits only on a device its demand allows; replicas of one version spread over nodes (at most
//! [`spread_cap`] per node) so one node dying cannot take a version down; a refused replica
//! could not have fitted even by evicting every lower-priority replica from some bin. Replicas
//! on nodes or devices that are gone are dropped, as that memory no longer exists. Output is a
//! function of the input's content, not its order: nodes, bins and demands are sorted first,
//! and a repeated node, device or version counts once (its first occurrence).
//!
//! Both placers start the same way, from `current`: highest priority first (ties by model, then
//! version, as in the single-node `capacity::ledger::plan`), every version keeps the replicas it
//! has where they still fit, because a move is a model reload on two nodes. All keeps happen
//! before any new replica is placed, so a new replica cannot land on memory a lower-priority
//! version still occupies while free memory elsewhere would do: that would evict the lower one
//! and start a cascade of reloads. A lower-priority replica is displaced (moved, or refused)
//! only for a higher-priority one that found no cheaper room: [`BestFit`] when no bin has free
//! memory for it, [`Auction`] when that free memory is priced above evicting.
//!
//! # [`BestFit`]
//!
//! After the keeps, demands in priority order place each missing replica: back on the bin it
//! came from if that has room again, else on the allowed bin with the least memory left over
//! that still fits (keeping big holes for big versions), among the nodes holding the fewest
//! replicas of the version, ties by node then device. When no bin has room, it evicts the
//! cheapest set of strictly lower-priority replicas from one bin (the least important first,
//! then the fewest replicas, then the fewest bytes); those are re-placed when their own, later,
//! turn comes, or refused.
//!
//! # [`Auction`]
//!
//! Bertsekas' auction algorithm (Bertsekas, "The auction algorithm: a distributed relaxation
//! method for the assignment problem", 1988), with replicas as persons and bins as objects.
//! Kept from it: an unassigned person computes its net value for every object it may take
//! (value minus price), bids for the best one, raising its price by the gap between the best
//! and second-best net value plus ε, displaces whoever held it, and the displaced person bids
//! again; not taking any object is a dummy option worth 0, so a person whose best net value is
//! negative drops out (is refused); prices never fall. Not kept: its optimality bound (within
//! `n * ε` of the best assignment) and ε-scaling. Packing sizes into bins is bin packing, so
//! here the auction is a heuristic, whose price war lets versions of one priority trade places
//! that a greedy pass would have fixed in the order it met them.
//!
//! Changed for capacities: a bin holds many replicas of different sizes, so prices are per
//! byte, and each holder keeps the per-byte bid it won with. To enter a bin a replica of `s`
//! bytes pays, per byte, the highest bid among the lowest-bidding holders it must evict to
//! make room (walking holders from the lowest bid up until the free bytes reach `s`), or the
//! bin's floor when it already has room; the floor is the highest bid ever evicted from the
//! bin, so the bytes an eviction leaves free do not become cheaper than they were, and no
//! byte's price ever falls. Net value
//! and bid increments are per byte too: `(best - second) / s + ε`. A holder is only ever
//! evicted by a strictly higher bid, as every walked bid is at most the price paid.
//!
//! Values are per byte so that size does not buy priority: a replica is worth `class + 1` per
//! byte, where `class` ranks its priority among the distinct priorities present (0 = lowest),
//! plus [`STAY_BONUS`] on the bin it currently lives on. Nobody bids more than its own value
//! plus ε, and the stay bonus and ε together are below 1, so a higher priority can always
//! outbid every lower-priority holder, and never has to outbid an equal one. Replicas kept from
//! `current` start as holders at their own value, stay bonus and ε included, which an equal or
//! lower priority can never exceed: they move only for a higher priority. Unassigned replicas
//! bid highest priority first, so higher priorities mostly take free memory before lower ones
//! compete for it. In a fleet with room the auction is best fit: every floor is 0 until the
//! first eviction, and ties between equal net values go to the better fit as [`BestFit`] ranks
//! it. The price war only starts among the versions left without room.
//!
//! Termination: in Bertsekas' setting every bid raises a price by at least ε and nobody pays
//! more than its value, which bounds the number of bids. Here a bid raises the price of `s`
//! bytes by at least ε each while values are per byte, so the same argument only bounds the
//! bids by the number of bytes, far too many to rely on. The bidding therefore stops after
//! [`BIDS_PER_REPLICA`] bids per replica; the war normally ends well before (a version drops out
//! once prices pass its value, at most `classes / ε` increments up). Each bid looks at every
//! allowed bin, so a decision costs at most that many bids times the bins. Whatever is unplaced
//! when the bidding stops, from a refusal or the cap, goes through [`BestFit`]'s placement of
//! missing replicas, which fills memory left free at a price nobody would pay and guarantees
//! the displacement rule [`check`] verifies.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap};

/// The most replicas a version may ask for; see `control::repository`.
const MAX_REPLICAS: u32 = crate::control::repository::MAX_REPLICAS as u32;

/// Memory on one device of a node that replicas may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bin {
    /// "cpu", "cuda:0", ...
    pub device: String,
    pub budget_bytes: u64,
}

/// A live node and the memory it may give replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCapacity {
    pub node: String,
    pub bins: Vec<Bin>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demand {
    pub model: String,
    pub version: String,
    /// Higher = more important.
    pub priority: i64,
    pub replicas: u32,
    pub bytes_per_replica: u64,
    /// Device ids it may use; empty = any.
    pub allowed: Vec<String>,
}

/// One replica of a version on one device of one node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Assignment {
    pub model: String,
    pub version: String,
    pub node: String,
    pub device: String,
}

/// A version that got fewer replicas than it wanted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Refused {
    pub model: String,
    pub version: String,
    pub wanted: u32,
    pub placed: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Sorted by model, version, node, device.
    pub assignments: Vec<Assignment>,
    /// Sorted by model, version.
    pub refused: Vec<Refused>,
}

pub trait Placer: Send + Sync {
    fn name(&self) -> &'static str;

    /// `current` is the previous placement; assignments in it on nodes or devices missing
    /// from `nodes`, or of versions missing from `demands`, are ignored.
    fn place(
        &self,
        nodes: &[NodeCapacity],
        demands: &[Demand],
        current: &[Assignment],
    ) -> Placement;
}

/// The placer a configuration names: "best_fit" or "auction".
pub fn by_name(name: &str) -> Option<Box<dyn Placer>> {
    match name {
        "best_fit" => Some(Box::new(BestFit)),
        "auction" => Some(Box::new(Auction)),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BestFit;

impl Placer for BestFit {
    fn name(&self) -> &'static str {
        "best_fit"
    }

    fn place(
        &self,
        nodes: &[NodeCapacity],
        demands: &[Demand],
        current: &[Assignment],
    ) -> Placement {
        let problem = Problem::new(nodes, demands, current);
        let mut layout = Layout::new(&problem);
        layout.keep_current();
        layout.fill_missing();
        layout.into_placement()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Auction;

/// Extra value per byte for staying on the current bin: enough to outweigh the ε-sized price
/// differences between bins, well below the gap of 1 between priority classes.
pub const STAY_BONUS: f64 = 0.25;

/// Minimum bid increment per byte. Prices climb from 0 to at most the top class's value in
/// steps of at least this, so it trades the length of a price war against how closely the
/// result follows the values.
pub const EPSILON: f64 = 1.0 / 32.0;

/// The bidding stops after this many bids per replica, in case the war runs long. Simulated
/// fleets loaded to 90-130% of their budget took at most 33 per replica from an empty placement,
/// and a few after a change.
pub const BIDS_PER_REPLICA: usize = 64;

impl Placer for Auction {
    fn name(&self) -> &'static str {
        "auction"
    }

    fn place(
        &self,
        nodes: &[NodeCapacity],
        demands: &[Demand],
        current: &[Assignment],
    ) -> Placement {
        let problem = Problem::new(nodes, demands, current);
        let mut layout = Layout::new(&problem);
        layout.keep_current();
        Market::open(&mut layout).run();
        layout.fill_missing();
        layout.into_placement()
    }
}

/// Most replicas of one version a node may hold: 1, or `ceil(replicas / nodes)` when the
/// version wants more replicas than there are nodes. Only nodes with an allowed device big
/// enough for one replica count, so a GPU-only version is spread over the GPU nodes.
pub fn spread_cap(nodes: &[NodeCapacity], demand: &Demand) -> u32 {
    let eligible = nodes
        .iter()
        .filter(|node| {
            node.bins.iter().any(|bin| {
                allows(demand, &bin.device) && bin.budget_bytes >= demand.bytes_per_replica
            })
        })
        .map(|node| node.node.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    cap_over(demand.replicas, eligible)
}

fn cap_over(replicas: u32, eligible_nodes: usize) -> u32 {
    let nodes = u32::try_from(eligible_nodes).unwrap_or(u32::MAX).max(1);
    replicas.div_ceil(nodes).max(1)
}

fn allows(demand: &Demand, device: &str) -> bool {
    demand.allowed.is_empty() || demand.allowed.iter().any(|allowed| allowed == device)
}

/// Verifies the rules every placer must obey (see the module doc) and that `refused` accounts
/// for exactly the versions short of replicas. The error names the first broken rule.
pub fn check(
    nodes: &[NodeCapacity],
    demands: &[Demand],
    placement: &Placement,
) -> Result<(), String> {
    let problem = Problem::new(nodes, demands, &[]);
    if !placement.assignments.is_sorted() {
        return Err("assignments are not sorted by model, version, node, device".into());
    }
    if !placement.refused.is_sorted() {
        return Err("refusals are not sorted by model, version".into());
    }
    let mut layout = Layout::new(&problem);
    for a in &placement.assignments {
        let Some(&want) = problem
            .want_index
            .get(&(a.model.as_str(), a.version.as_str()))
        else {
            return Err(format!(
                "{}/{} on {} is not demanded",
                a.model, a.version, a.node
            ));
        };
        let Some(&bin) = problem.bin_index.get(&(a.node.as_str(), a.device.as_str())) else {
            return Err(format!(
                "{}/{} is on {} {}, which does not exist",
                a.model, a.version, a.node, a.device
            ));
        };
        if !allows(problem.wants[want].demand, &a.device) {
            return Err(format!(
                "{}/{} is on {} {}, which it may not use",
                a.model, a.version, a.node, a.device
            ));
        }
        layout.add(want, bin);
    }
    for (bin, slot) in problem.bins.iter().enumerate() {
        if layout.used[bin] > slot.budget {
            return Err(format!(
                "{} {} holds {} bytes over a budget of {}",
                problem.nodes[slot.node], slot.device, layout.used[bin], slot.budget
            ));
        }
    }
    let mut short = Vec::new();
    for (want, w) in problem.wants.iter().enumerate() {
        let (model, version) = (&w.demand.model, &w.demand.version);
        if let Some(&(node, count)) = layout.hosts[want].iter().find(|&&(_, count)| count > w.cap) {
            return Err(format!(
                "{model}/{version} has {count} replicas on {}, over its spread cap of {}",
                problem.nodes[node], w.cap
            ));
        }
        let placed = layout.placed[want];
        if placed > w.demand.replicas {
            return Err(format!(
                "{model}/{version} has {placed} replicas, wanted {}",
                w.demand.replicas
            ));
        }
        if placed < w.demand.replicas {
            short.push(Refused {
                model: model.clone(),
                version: version.clone(),
                wanted: w.demand.replicas,
                placed,
            });
            if let Some(bin) = layout.displaceable(want) {
                let slot = &problem.bins[bin];
                return Err(format!(
                    "{model}/{version} is short of replicas, but fits on {} {} once lower \
                     priorities leave",
                    problem.nodes[slot.node], slot.device
                ));
            }
        }
    }
    short.sort();
    if short != placement.refused {
        return Err(format!(
            "refused is {:?}, but the versions short of replicas are {short:?}",
            placement.refused
        ));
    }
    Ok(())
}

/// The input sorted and indexed: nodes by name, bins by node then device, demands in priority
/// order (higher first, ties by model, then version), each with the bins it may use.
struct Problem<'a> {
    nodes: Vec<&'a str>,
    bins: Vec<Slot<'a>>,
    wants: Vec<Want<'a>>,
    bin_index: BTreeMap<(&'a str, &'a str), usize>,
    want_index: BTreeMap<(&'a str, &'a str), usize>,
    /// Per-byte value of each priority class for the auction: `class + 1`, indexed by want.
    values: Vec<f64>,
    lowest_priority: i64,
}

struct Slot<'a> {
    node: usize,
    device: &'a str,
    budget: u64,
}

struct Want<'a> {
    demand: &'a Demand,
    /// Bins it may use and fits in when empty, ascending.
    eligible: Vec<usize>,
    cap: u32,
    /// The most replicas it could have were the cluster empty: per node, the spread cap or
    /// what its eligible devices hold, whichever is less. Bidders and placement loops stop
    /// there, so that they grow with the cluster, not with the replicas a client asked for.
    placeable: u32,
    /// Bins of its current replicas still worth keeping, ascending, one entry per replica.
    current: Vec<usize>,
}

impl<'a> Problem<'a> {
    fn new(
        nodes: &'a [NodeCapacity],
        demands: &'a [Demand],
        current: &[Assignment],
    ) -> Problem<'a> {
        let mut live: Vec<&NodeCapacity> = nodes.iter().collect();
        live.sort_by(|a, b| a.node.cmp(&b.node));
        live.dedup_by(|later, earlier| later.node == earlier.node);
        let mut bins = Vec::new();
        for (node, capacity) in live.iter().enumerate() {
            let mut devices: Vec<&Bin> = capacity.bins.iter().collect();
            devices.sort_by(|a, b| a.device.cmp(&b.device));
            devices.dedup_by(|later, earlier| later.device == earlier.device);
            bins.extend(devices.into_iter().map(|bin| Slot {
                node,
                device: bin.device.as_str(),
                budget: bin.budget_bytes,
            }));
        }
        let names: Vec<&str> = live.iter().map(|n| n.node.as_str()).collect();
        let bin_index: BTreeMap<(&str, &str), usize> = bins
            .iter()
            .enumerate()
            .map(|(index, slot)| ((names[slot.node], slot.device), index))
            .collect();

        let mut ranked: Vec<&Demand> = demands.iter().collect();
        ranked.sort_by(|a, b| (&a.model, &a.version).cmp(&(&b.model, &b.version)));
        ranked.dedup_by(|later, earlier| {
            later.model == earlier.model && later.version == earlier.version
        });
        ranked.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| a.model.cmp(&b.model))
                .then_with(|| a.version.cmp(&b.version))
        });
        let mut wants: Vec<Want> = ranked
            .iter()
            .map(|&demand| {
                let eligible: Vec<usize> = bins
                    .iter()
                    .enumerate()
                    .filter(|(_, slot)| {
                        allows(demand, slot.device) && slot.budget >= demand.bytes_per_replica
                    })
                    .map(|(index, _)| index)
                    .collect();
                let mut hosts: Vec<usize> = eligible.iter().map(|&bin| bins[bin].node).collect();
                hosts.dedup();
                let cap = cap_over(demand.replicas, hosts.len());
                Want {
                    demand,
                    cap,
                    placeable: placeable(&bins, &eligible, demand.bytes_per_replica, cap),
                    eligible,
                    current: Vec::new(),
                }
            })
            .collect();
        let want_index: BTreeMap<(&str, &str), usize> = wants
            .iter()
            .enumerate()
            .map(|(index, w)| ((w.demand.model.as_str(), w.demand.version.as_str()), index))
            .collect();
        for a in current {
            let want = want_index.get(&(a.model.as_str(), a.version.as_str()));
            let bin = bin_index.get(&(a.node.as_str(), a.device.as_str()));
            if let (Some(&want), Some(&bin)) = (want, bin)
                && wants[want].eligible.binary_search(&bin).is_ok()
            {
                wants[want].current.push(bin);
            }
        }
        for want in &mut wants {
            want.current.sort_unstable();
        }

        let mut priorities: Vec<i64> = wants.iter().map(|w| w.demand.priority).collect();
        priorities.sort_unstable();
        priorities.dedup();
        let values = wants
            .iter()
            .map(|w| {
                let class = priorities.partition_point(|&p| p < w.demand.priority);
                class as f64 + 1.0
            })
            .collect();
        Problem {
            nodes: names,
            bins,
            wants,
            bin_index,
            want_index,
            values,
            lowest_priority: priorities.first().copied().unwrap_or(0),
        }
    }
}

/// Per node, the fewer of `cap` and the replicas of `bytes` that its `eligible` bins hold
/// when empty; summed over the nodes.
fn placeable(bins: &[Slot], eligible: &[usize], bytes: u64, cap: u32) -> u32 {
    let mut total = 0u32;
    let mut index = 0;
    while index < eligible.len() {
        let node = bins[eligible[index]].node;
        let mut on_node = 0u64;
        while index < eligible.len() && bins[eligible[index]].node == node {
            on_node = on_node.saturating_add(bins[eligible[index]].budget / bytes.max(1));
            index += 1;
        }
        let on_node = u32::try_from(on_node).unwrap_or(u32::MAX).min(cap);
        total = total.saturating_add(on_node);
    }
    // Replicas of no measured size fit anywhere: the bound a version's settings have when
    // they enter the registry holds here too, for rows written before it.
    total.min(MAX_REPLICAS)
}

/// Who holds which bin, as placement goes.
struct Layout<'p, 'a> {
    problem: &'p Problem<'a>,
    used: Vec<u64>,
    /// Per bin, the want of each replica it holds.
    held: Vec<Vec<usize>>,
    /// Per want, (node, replicas of it there), ascending by node.
    hosts: Vec<Vec<(usize, u32)>>,
    placed: Vec<u32>,
}

impl<'p, 'a> Layout<'p, 'a> {
    fn new(problem: &'p Problem<'a>) -> Layout<'p, 'a> {
        Layout {
            problem,
            used: vec![0; problem.bins.len()],
            held: vec![Vec::new(); problem.bins.len()],
            hosts: vec![Vec::new(); problem.wants.len()],
            placed: vec![0; problem.wants.len()],
        }
    }

    fn bytes(&self, want: usize) -> u64 {
        self.problem.wants[want].demand.bytes_per_replica
    }

    fn free(&self, bin: usize) -> u64 {
        self.problem.bins[bin].budget.saturating_sub(self.used[bin])
    }

    fn on_node(&self, want: usize, node: usize) -> u32 {
        let hosts = &self.hosts[want];
        hosts
            .binary_search_by_key(&node, |&(host, _)| host)
            .map_or(0, |index| hosts[index].1)
    }

    fn node_has_room(&self, want: usize, bin: usize) -> bool {
        self.on_node(want, self.problem.bins[bin].node) < self.problem.wants[want].cap
    }

    fn fits(&self, want: usize, bin: usize) -> bool {
        self.free(bin) >= self.bytes(want) && self.node_has_room(want, bin)
    }

    fn add(&mut self, want: usize, bin: usize) {
        self.used[bin] = self.used[bin].saturating_add(self.bytes(want));
        self.held[bin].push(want);
        self.placed[want] += 1;
        let node = self.problem.bins[bin].node;
        let hosts = &mut self.hosts[want];
        match hosts.binary_search_by_key(&node, |&(host, _)| host) {
            Ok(index) => hosts[index].1 += 1,
            Err(index) => hosts.insert(index, (node, 1)),
        }
    }

    fn remove(&mut self, want: usize, bin: usize) {
        let Some(position) = self.held[bin].iter().position(|&held| held == want) else {
            return;
        };
        self.held[bin].swap_remove(position);
        self.used[bin] = self.used[bin].saturating_sub(self.bytes(want));
        self.placed[want] -= 1;
        let node = self.problem.bins[bin].node;
        let hosts = &mut self.hosts[want];
        if let Ok(index) = hosts.binary_search_by_key(&node, |&(host, _)| host) {
            hosts[index].1 -= 1;
            if hosts[index].1 == 0 {
                hosts.remove(index);
            }
        }
    }

    /// Highest priority first, each version keeps the current replicas that fit, up to the
    /// number it wants.
    fn keep_current(&mut self) {
        let problem = self.problem;
        for (want, w) in problem.wants.iter().enumerate() {
            for &bin in &w.current {
                if self.placed[want] >= w.demand.replicas {
                    break;
                }
                if self.fits(want, bin) {
                    self.add(want, bin);
                }
            }
        }
    }

    /// The current bins of `want` it no longer holds, one entry per replica, ascending.
    fn homes_left(&self, want: usize) -> Vec<usize> {
        let mut homes = Vec::new();
        for group in self.problem.wants[want].current.chunk_by(|a, b| a == b) {
            let bin = group[0];
            let now = self.held[bin].iter().filter(|&&held| held == want).count();
            homes.extend(std::iter::repeat_n(bin, group.len().saturating_sub(now)));
        }
        homes
    }

    /// Demands in priority order place their missing replicas: home, else best fit, else by
    /// displacing lower priorities, whose own turn comes later.
    fn fill_missing(&mut self) {
        let problem = self.problem;
        for (want, w) in problem.wants.iter().enumerate() {
            while self.placed[want] < w.demand.replicas.min(w.placeable) {
                let home = self
                    .homes_left(want)
                    .into_iter()
                    .find(|&bin| self.fits(want, bin));
                let Some(bin) = home
                    .or_else(|| self.best_fit(want))
                    .or_else(|| self.displace(want))
                else {
                    break;
                };
                self.add(want, bin);
            }
        }
    }

    /// Among bins with room: the fewest replicas of the version on the node, then the least
    /// memory left over, then node and device order.
    fn best_fit(&self, want: usize) -> Option<usize> {
        let bytes = self.bytes(want);
        self.problem.wants[want]
            .eligible
            .iter()
            .copied()
            .filter(|&bin| self.fits(want, bin))
            .min_by_key(|&bin| {
                (
                    self.on_node(want, self.problem.bins[bin].node),
                    self.free(bin) - bytes,
                    bin,
                )
            })
    }

    /// The cheapest set of strictly lower-priority replicas to evict from one bin so that
    /// `want` fits there; None when no bin can be cleared enough.
    fn eviction(&self, want: usize) -> Option<Eviction> {
        let problem = self.problem;
        let priority = problem.wants[want].demand.priority;
        if priority <= problem.lowest_priority {
            return None;
        }
        let bytes = self.bytes(want);
        let mut best: Option<Eviction> = None;
        for &bin in &problem.wants[want].eligible {
            if !self.node_has_room(want, bin) {
                continue;
            }
            let mut lower: Vec<usize> = self.held[bin]
                .iter()
                .copied()
                .filter(|&held| problem.wants[held].demand.priority < priority)
                .collect();
            // The least important first, then the biggest (fewer reloads), then the latest in
            // priority order.
            lower.sort_by(|&a, &b| {
                let (da, db) = (problem.wants[a].demand, problem.wants[b].demand);
                da.priority
                    .cmp(&db.priority)
                    .then(db.bytes_per_replica.cmp(&da.bytes_per_replica))
                    .then(b.cmp(&a))
            });
            let mut free = self.free(bin);
            let mut victims = 0;
            while free < bytes && victims < lower.len() {
                free = free.saturating_add(self.bytes(lower[victims]));
                victims += 1;
            }
            if free < bytes {
                continue;
            }
            lower.truncate(victims);
            let candidate = Eviction {
                most_important: lower
                    .iter()
                    .map(|&victim| problem.wants[victim].demand.priority)
                    .max()
                    .unwrap_or(i64::MIN),
                bytes: lower.iter().map(|&victim| self.bytes(victim)).sum(),
                bin,
                victims: lower,
            };
            if best
                .as_ref()
                .is_none_or(|best| candidate.cost() < best.cost())
            {
                best = Some(candidate);
            }
        }
        best
    }

    /// Evicts what [`Layout::eviction`] chose and returns the bin it cleared.
    fn displace(&mut self, want: usize) -> Option<usize> {
        let eviction = self.eviction(want)?;
        for &victim in &eviction.victims {
            self.remove(victim, eviction.bin);
        }
        Some(eviction.bin)
    }

    /// For [`check`]: a bin where `want` would fit once lower priorities left.
    fn displaceable(&self, want: usize) -> Option<usize> {
        self.eviction(want).map(|eviction| eviction.bin)
    }

    fn into_placement(self) -> Placement {
        let problem = self.problem;
        let mut assignments = Vec::new();
        for (slot, held) in problem.bins.iter().zip(&self.held) {
            for &want in held {
                let demand = problem.wants[want].demand;
                assignments.push(Assignment {
                    model: demand.model.clone(),
                    version: demand.version.clone(),
                    node: problem.nodes[slot.node].to_string(),
                    device: slot.device.to_string(),
                });
            }
        }
        assignments.sort_unstable();
        let mut refused: Vec<Refused> = problem
            .wants
            .iter()
            .zip(&self.placed)
            .filter(|(w, placed)| **placed < w.demand.replicas)
            .map(|(w, &placed)| Refused {
                model: w.demand.model.clone(),
                version: w.demand.version.clone(),
                wanted: w.demand.replicas,
                placed,
            })
            .collect();
        refused.sort_unstable();
        Placement {
            assignments,
            refused,
        }
    }
}

/// Replicas to evict from one bin to make room for a more important one.
struct Eviction {
    bin: usize,
    victims: Vec<usize>,
    /// The highest priority among the victims.
    most_important: i64,
    bytes: u64,
}

impl Eviction {
    /// Lower is cheaper: only the least important, then the fewest reloads, then the fewest
    /// bytes, then the first bin.
    fn cost(&self) -> (i64, usize, u64, usize) {
        (
            self.most_important,
            self.victims.len(),
            self.bytes,
            self.bin,
        )
    }
}

/// A replica in the auction.
struct Bidder {
    want: usize,
    /// The bin it lives on in `current`, which it values [`STAY_BONUS`] higher.
    home: Option<usize>,
}

/// The auction's state over a [`Layout`]: per bin, holders with their per-byte bids, lowest
/// first, and the floor price of its free bytes.
struct Market<'l, 'p, 'a> {
    layout: &'l mut Layout<'p, 'a>,
    bidders: Vec<Bidder>,
    bids: Vec<Vec<(f64, usize)>>,
    floor: Vec<f64>,
    /// Unassigned bidders as (want, bidder): the highest priority pops first.
    queue: BinaryHeap<Reverse<(usize, usize)>>,
}

impl<'l, 'p, 'a> Market<'l, 'p, 'a> {
    /// Kept replicas become holders at their own full value; the missing ones queue to bid.
    fn open(layout: &'l mut Layout<'p, 'a>) -> Market<'l, 'p, 'a> {
        let problem = layout.problem;
        let mut bidders = Vec::new();
        let mut bids = vec![Vec::new(); problem.bins.len()];
        for (bin, held) in layout.held.iter().enumerate() {
            for &want in held {
                let value = problem.values[want] + STAY_BONUS + EPSILON;
                bids[bin].push((value, bidders.len()));
                bidders.push(Bidder {
                    want,
                    home: Some(bin),
                });
            }
        }
        for holders in &mut bids {
            holders.sort_by(|a: &(f64, usize), b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        }
        let mut queue = BinaryHeap::new();
        for (want, w) in problem.wants.iter().enumerate() {
            let missing = w
                .demand
                .replicas
                .min(w.placeable)
                .saturating_sub(layout.placed[want]) as usize;
            let mut homes = layout.homes_left(want).into_iter();
            for _ in 0..missing {
                queue.push(Reverse((want, bidders.len())));
                bidders.push(Bidder {
                    want,
                    home: homes.next(),
                });
            }
        }
        Market {
            layout,
            bidders,
            bids,
            floor: vec![0.0; problem.bins.len()],
            queue,
        }
    }

    /// Per-byte price a replica of `bytes` pays to enter `bin`: the floor when it has room,
    /// else the highest bid among the lowest-bidding holders it would evict.
    fn entry_price(&self, bin: usize, bytes: u64) -> f64 {
        let mut free = self.layout.free(bin);
        let mut price = self.floor[bin];
        for &(bid, holder) in &self.bids[bin] {
            if free >= bytes {
                break;
            }
            free = free.saturating_add(self.layout.bytes(self.bidders[holder].want));
            price = price.max(bid);
        }
        price
    }

    fn run(mut self) {
        let problem = self.layout.problem;
        let mut bids_left = BIDS_PER_REPLICA.saturating_mul(self.bidders.len());
        while bids_left > 0 {
            let Some(Reverse((want, bidder))) = self.queue.pop() else {
                break;
            };
            bids_left -= 1;
            let bytes = self.layout.bytes(want);
            let size = bytes as f64;
            let value = problem.values[want];
            let home = self.bidders[bidder].home;
            // (net value, fit, bin, price per byte); not bidding is worth 0. Equal net values go
            // to the better fit as best fit sees it: fewer replicas of the version on the node,
            // then less memory left over.
            let mut best: Option<(f64, (u32, u64), usize, f64)> = None;
            let mut second = 0.0_f64;
            for &bin in &problem.wants[want].eligible {
                let on_node = self.layout.on_node(want, problem.bins[bin].node);
                if on_node >= problem.wants[want].cap {
                    continue;
                }
                let price = self.entry_price(bin, bytes);
                let stay = if home == Some(bin) { STAY_BONUS } else { 0.0 };
                let net = size * (value + stay - price);
                let fit = (on_node, self.layout.free(bin).saturating_sub(bytes));
                match best {
                    Some((best_net, best_fit, _, _))
                        if net.total_cmp(&best_net).then(best_fit.cmp(&fit))
                            != Ordering::Greater =>
                    {
                        second = second.max(net);
                    }
                    _ => {
                        if let Some((best_net, ..)) = best {
                            second = second.max(best_net);
                        }
                        best = Some((net, fit, bin, price));
                    }
                }
            }
            let Some((net, _, bin, price)) = best.filter(|&(net, ..)| net >= 0.0) else {
                continue;
            };
            self.admit(bidder, bin, price + (net - second) / size + EPSILON);
        }
    }

    /// Puts `bidder` on `bin` at `bid` per byte, evicting the lowest bids until it fits.
    fn admit(&mut self, bidder: usize, bin: usize, bid: f64) {
        let want = self.bidders[bidder].want;
        let bytes = self.layout.bytes(want);
        while self.layout.free(bin) < bytes && !self.bids[bin].is_empty() {
            let (evicted_bid, evicted) = self.bids[bin].remove(0);
            self.floor[bin] = self.floor[bin].max(evicted_bid);
            let evicted_want = self.bidders[evicted].want;
            self.layout.remove(evicted_want, bin);
            self.queue.push(Reverse((evicted_want, evicted)));
        }
        let holders = &mut self.bids[bin];
        let at = holders.partition_point(|&(held, _)| held <= bid);
        holders.insert(at, (bid, bidder));
        self.layout.add(want, bin);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    const GIB: u64 = 1 << 30;
    const PLACERS: [&dyn Placer; 2] = [&BestFit, &Auction];

    fn node(name: &str, bins: &[(&str, u64)]) -> NodeCapacity {
        NodeCapacity {
            node: name.into(),
            bins: bins
                .iter()
                .map(|&(device, gib)| Bin {
                    device: device.into(),
                    budget_bytes: gib * GIB,
                })
                .collect(),
        }
    }

    fn demand(model: &str, priority: i64, replicas: u32, gib: u64, allowed: &[&str]) -> Demand {
        Demand {
            model: model.into(),
            version: "1".into(),
            priority,
            replicas,
            bytes_per_replica: gib * GIB,
            allowed: allowed.iter().map(|d| d.to_string()).collect(),
        }
    }

    fn at(model: &str, node: &str, device: &str) -> Assignment {
        Assignment {
            model: model.into(),
            version: "1".into(),
            node: node.into(),
            device: device.into(),
        }
    }

    fn placed_on<'p>(placement: &'p Placement, model: &str) -> Vec<(&'p str, &'p str)> {
        placement
            .assignments
            .iter()
            .filter(|a| a.model == model)
            .map(|a| (a.node.as_str(), a.device.as_str()))
            .collect()
    }

    /// Places, checks the rules, and returns the placement.
    fn place(
        placer: &dyn Placer,
        nodes: &[NodeCapacity],
        demands: &[Demand],
        current: &[Assignment],
    ) -> Placement {
        let placement = placer.place(nodes, demands, current);
        if let Err(broken) = check(nodes, demands, &placement) {
            panic!("{}: {broken}\n{placement:#?}", placer.name());
        }
        placement
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn random_fleet(rng: &mut XorShift) -> (Vec<NodeCapacity>, Vec<Demand>) {
        let nodes: Vec<NodeCapacity> = (0..1 + rng.below(8))
            .map(|n| {
                let mut bins = vec![("cpu", 1 + rng.below(40))];
                if rng.below(2) == 0 {
                    bins.push(("cuda:0", 1 + rng.below(30)));
                }
                node(&format!("n{n}"), &bins)
            })
            .collect();
        let devices: [&[&str]; 3] = [&[], &["cuda:0"], &["cpu"]];
        let demands = (0..1 + rng.below(40))
            .map(|d| {
                let allowed = devices[rng.below(3) as usize];
                let mut demand = demand(
                    &format!("m{d}"),
                    rng.below(4) as i64,
                    1 + rng.below(4) as u32,
                    1,
                    allowed,
                );
                demand.bytes_per_replica = GIB / 4 + rng.below(12 * GIB);
                demand
            })
            .collect();
        (nodes, demands)
    }

    #[test]
    fn a_demand_for_billions_of_replicas_places_what_fits_and_stops() {
        let nodes = [
            node("a", &[("cpu", 4), ("cuda:0", 2)]),
            node("b", &[("cpu", 4)]),
        ];
        let mut huge = demand("huge", 1, u32::MAX, 1, &[]);
        let mut small = demand("small", 0, 1, 1, &[]);
        for placer in PLACERS {
            let placement = place(placer, &nodes, &[huge.clone(), small.clone()], &[]);
            assert_eq!(placed_on(&placement, "huge").len(), 10, "{}", placer.name());
            assert_eq!(
                placement.refused,
                vec![
                    Refused {
                        model: "huge".into(),
                        version: "1".into(),
                        wanted: u32::MAX,
                        placed: 10,
                    },
                    Refused {
                        model: "small".into(),
                        version: "1".into(),
                        wanted: 1,
                        placed: 0,
                    },
                ],
                "{}",
                placer.name()
            );
        }
        // Replicas of no size fit anywhere: the registry's bound on replicas stops them.
        huge.bytes_per_replica = 0;
        huge.replicas = 1_000_000;
        small.priority = 2;
        for placer in PLACERS {
            let placement = placer.place(&nodes, &[huge.clone(), small.clone()], &[]);
            assert_eq!(placed_on(&placement, "small").len(), 1, "{}", placer.name());
            assert_eq!(
                placed_on(&placement, "huge").len(),
                MAX_REPLICAS as usize,
                "{}",
                placer.name()
            );
        }
    }

    #[test]
    fn by_name_knows_both_placers() {
        assert_eq!(by_name("best_fit").map(|p| p.name()), Some("best_fit"));
        assert_eq!(by_name("auction").map(|p| p.name()), Some("auction"));
        assert!(by_name("first_fit").is_none());
    }

    #[test]
    fn check_rejects_each_broken_rule() {
        let nodes = [
            node("a", &[("cpu", 10)]),
            node("b", &[("cpu", 10), ("cuda:0", 10)]),
        ];
        let demands = [
            demand("big", 5, 2, 6, &[]),
            demand("gpu", 1, 1, 2, &["cuda:0"]),
        ];
        let good = Placement {
            assignments: vec![
                at("big", "a", "cpu"),
                at("big", "b", "cpu"),
                at("gpu", "b", "cuda:0"),
            ],
            refused: Vec::new(),
        };
        assert_eq!(check(&nodes, &demands, &good), Ok(()));
        let broken = |edit: &dyn Fn(&mut Placement)| {
            let mut placement = good.clone();
            edit(&mut placement);
            check(&nodes, &demands, &placement)
        };
        let over_budget = broken(&|p| p.assignments[2] = at("big", "b", "cuda:0"));
        assert!(over_budget.unwrap_err().contains("has 2 replicas on b"));
        let wrong_device = broken(&|p| p.assignments[2] = at("gpu", "b", "cpu"));
        assert!(wrong_device.unwrap_err().contains("may not use"));
        let dead_node = broken(&|p| p.assignments[2] = at("gpu", "c", "cuda:0"));
        assert!(dead_node.unwrap_err().contains("does not exist"));
        let unsorted = broken(&|p| p.assignments.swap(0, 2));
        assert!(unsorted.unwrap_err().contains("not sorted"));
        let unreported = broken(&|p| {
            p.assignments.remove(2);
        });
        assert!(unreported.unwrap_err().contains("refused is []"));
        let squeezed = Placement {
            assignments: vec![at("gpu", "b", "cuda:0")],
            refused: vec![Refused {
                model: "big".into(),
                version: "1".into(),
                wanted: 2,
                placed: 0,
            }],
        };
        assert_eq!(
            check(&nodes, &demands, &squeezed),
            Err("big/1 is short of replicas, but fits on a cpu once lower priorities leave".into())
        );
        let mut crowded = demands.to_vec();
        crowded[1].bytes_per_replica = 9 * GIB;
        let over = Placement {
            assignments: vec![
                at("big", "a", "cpu"),
                at("big", "b", "cuda:0"),
                at("gpu", "b", "cuda:0"),
            ],
            refused: Vec::new(),
        };
        assert!(
            check(&nodes, &crowded, &over)
                .unwrap_err()
                .contains("over a budget")
        );
    }

    #[test]
    fn spread_cap_counts_only_nodes_the_version_can_use() {
        let nodes = [
            node("a", &[("cpu", 64)]),
            node("b", &[("cpu", 64), ("cuda:0", 24)]),
            node("c", &[("cpu", 64), ("cuda:0", 8)]),
        ];
        assert_eq!(spread_cap(&nodes, &demand("m", 0, 3, 4, &[])), 1);
        assert_eq!(spread_cap(&nodes, &demand("m", 0, 4, 4, &[])), 2);
        assert_eq!(spread_cap(&nodes, &demand("m", 0, 3, 4, &["cuda:0"])), 2);
        assert_eq!(spread_cap(&nodes, &demand("m", 0, 3, 16, &["cuda:0"])), 3);
        assert_eq!(spread_cap(&nodes, &demand("m", 0, 3, 100, &[])), 3);
    }

    #[test]
    fn rules_hold_on_random_fleets_and_after_random_changes() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..300 {
            let (nodes, demands) = random_fleet(&mut rng);
            for placer in PLACERS {
                let first = place(placer, &nodes, &demands, &[]);
                // Re-place on a changed fleet from the first placement: some nodes gone,
                // budgets and priorities reshuffled.
                let (mut survivors, mut changed) = random_fleet(&mut rng);
                survivors.extend(nodes.iter().filter(|_| rng.below(3) > 0).cloned());
                changed.extend(demands.iter().filter(|_| rng.below(4) > 0).cloned());
                place(placer, &survivors, &changed, &first.assignments);
            }
        }
    }

    #[test]
    fn new_replicas_go_to_the_tightest_fit() {
        let nodes = [
            node("a", &[("cpu", 30)]),
            node("b", &[("cpu", 10)]),
            node("c", &[("cpu", 20)]),
        ];
        for placer in PLACERS {
            let placement = place(placer, &nodes, &[demand("m", 0, 1, 8, &[])], &[]);
            assert_eq!(
                placed_on(&placement, "m"),
                [("b", "cpu")],
                "{}",
                placer.name()
            );
        }
    }

    #[test]
    fn replicas_of_a_version_spread_over_nodes() {
        let nodes = [
            node("a", &[("cpu", 100)]),
            node("b", &[("cpu", 100), ("cuda:0", 100)]),
            node("c", &[("cpu", 100)]),
        ];
        for placer in PLACERS {
            let placement = place(placer, &nodes, &[demand("m", 0, 3, 1, &[])], &[]);
            let nodes: Vec<&str> = placed_on(&placement, "m")
                .iter()
                .map(|&(node, _)| node)
                .collect();
            assert_eq!(nodes, ["a", "b", "c"], "{}", placer.name());
        }
    }

    #[test]
    fn more_replicas_than_nodes_puts_at_most_the_ceiling_on_each() {
        let nodes = [node("a", &[("cpu", 100)]), node("b", &[("cpu", 100)])];
        for placer in PLACERS {
            let placement = place(placer, &nodes, &[demand("m", 0, 5, 1, &[])], &[]);
            let on = |name: &str| {
                placed_on(&placement, "m")
                    .iter()
                    .filter(|&&(node, _)| node == name)
                    .count()
            };
            assert_eq!((on("a"), on("b")), (3, 2), "{}", placer.name());
            assert!(placement.refused.is_empty());
        }
    }

    #[test]
    fn spread_refuses_rather_than_doubling_up() {
        // Both nodes could hold a replica, but b is full of a more important version.
        let nodes = [node("a", &[("cpu", 100)]), node("b", &[("cpu", 10)])];
        let demands = [demand("m", 0, 2, 2, &[]), demand("first", 9, 1, 10, &[])];
        for placer in PLACERS {
            let placement = place(placer, &nodes, &demands, &[at("first", "b", "cpu")]);
            assert_eq!(
                placed_on(&placement, "m"),
                [("a", "cpu")],
                "{}",
                placer.name()
            );
            assert_eq!(placement.refused[0].placed, 1);
        }
    }

    #[test]
    fn replicas_only_land_on_allowed_devices() {
        let nodes = [
            node("a", &[("cpu", 100), ("cuda:0", 24)]),
            node("b", &[("cpu", 100)]),
            node("c", &[("cpu", 100), ("cuda:0", 80)]),
        ];
        let demands = [
            demand("gpu", 0, 2, 10, &["cuda:0"]),
            demand("host", 0, 2, 10, &["cpu"]),
        ];
        for placer in PLACERS {
            let placement = place(placer, &nodes, &demands, &[]);
            assert_eq!(
                placed_on(&placement, "gpu"),
                [("a", "cuda:0"), ("c", "cuda:0")],
                "{}",
                placer.name()
            );
            let host = placed_on(&placement, "host");
            assert_eq!(host.len(), 2);
            assert!(host.iter().all(|&(_, device)| device == "cpu"));
        }
    }

    #[test]
    fn refuses_what_fits_nowhere() {
        let nodes = [
            node("a", &[("cpu", 16)]),
            node("b", &[("cpu", 16), ("cuda:0", 24)]),
        ];
        let demands = [
            demand("huge", 0, 2, 32, &[]),
            demand("gpu", 0, 1, 4, &["cuda:1"]),
        ];
        for placer in PLACERS {
            let placement = place(placer, &nodes, &demands, &[]);
            assert!(placement.assignments.is_empty(), "{}", placer.name());
            let refused: Vec<(&str, u32, u32)> = placement
                .refused
                .iter()
                .map(|r| (r.model.as_str(), r.wanted, r.placed))
                .collect();
            assert_eq!(refused, [("gpu", 1, 0), ("huge", 2, 0)]);
        }
    }

    #[test]
    fn an_oversubscribed_bin_fills_up_and_the_rest_is_refused() {
        // 300 equal versions for room of about 40: the auction's price war must end, and both
        // placers must leave no replica out that would still fit.
        let nodes = [node("a", &[("cpu", 64)])];
        let demands: Vec<Demand> = (0..300)
            .map(|d| {
                let mut demand = demand(&format!("m{d:03}"), 0, 1, 1, &[]);
                demand.bytes_per_replica = GIB + (d * 7919 % 1000) * GIB / 1000;
                demand
            })
            .collect();
        for placer in PLACERS {
            let placement = place(placer, &nodes, &demands, &[]);
            let used: u64 = placement
                .assignments
                .iter()
                .map(|a| {
                    demands
                        .iter()
                        .find(|d| d.model == a.model)
                        .unwrap()
                        .bytes_per_replica
                })
                .sum();
            let smallest_refused = placement
                .refused
                .iter()
                .map(|r| {
                    demands
                        .iter()
                        .find(|d| d.model == r.model)
                        .unwrap()
                        .bytes_per_replica
                })
                .min()
                .unwrap();
            assert!(
                64 * GIB - used < smallest_refused,
                "{}: {used} bytes used",
                placer.name()
            );
            assert_eq!(placement.assignments.len() + placement.refused.len(), 300);
        }
    }

    #[test]
    fn a_dead_nodes_replicas_move_and_nothing_else_does() {
        let nodes: Vec<NodeCapacity> = (0..6)
            .map(|n| node(&format!("n{n}"), &[("cpu", 48), ("cuda:0", 24)]))
            .collect();
        let demands: Vec<Demand> = (0..24)
            .map(|d| {
                // Versions free to use any device would fill the GPUs first (their budget is
                // the tighter fit), leaving the orphaned GPU-only ones no room but by eviction.
                let (priority, allowed): (i64, &[&str]) = if d % 3 == 0 {
                    (d % 2, &["cuda:0"])
                } else {
                    (d % 2, &["cpu"])
                };
                demand(
                    &format!("m{d:02}"),
                    priority,
                    1 + (d % 3) as u32,
                    1 + (d % 7) as u64,
                    allowed,
                )
            })
            .collect();
        for placer in PLACERS {
            let before = place(placer, &nodes, &demands, &[]);
            assert!(
                before.refused.is_empty(),
                "{}: the fleet has room",
                placer.name()
            );
            let survivors = &nodes[1..];
            let after = place(placer, survivors, &demands, &before.assignments);
            assert!(
                after.refused.is_empty(),
                "{}: the survivors have room",
                placer.name()
            );
            for a in before.assignments.iter().filter(|a| a.node != "n0") {
                assert!(
                    after.assignments.contains(a),
                    "{}: {a:?} moved",
                    placer.name()
                );
            }
            let survived = before.assignments.iter().filter(|a| a.node != "n0").count();
            let orphans = before.assignments.len() - survived;
            assert!(orphans > 0);
            assert_eq!(after.assignments.len(), survived + orphans);
        }
    }

    #[test]
    fn current_replicas_stay_where_a_fresh_placement_would_not_put_them() {
        let nodes = [node("a", &[("cpu", 30)]), node("b", &[("cpu", 10)])];
        let demands = [demand("m", 0, 1, 8, &[])];
        for placer in PLACERS {
            let placement = place(placer, &nodes, &demands, &[at("m", "a", "cpu")]);
            assert_eq!(
                placed_on(&placement, "m"),
                [("a", "cpu")],
                "{}",
                placer.name()
            );
        }
    }

    #[test]
    fn gone_devices_versions_and_surplus_replicas_are_dropped() {
        let nodes = [
            node("a", &[("cpu", 30)]),
            node("b", &[("cpu", 30)]),
            node("c", &[("cpu", 30)]),
        ];
        let demands = [demand("m", 0, 2, 8, &["cpu"])];
        let current = [
            at("m", "a", "cuda:0"),
            at("m", "b", "cpu"),
            at("m", "c", "cpu"),
            at("m", "dead", "cpu"),
            at("gone", "a", "cpu"),
        ];
        for placer in PLACERS {
            let placement = place(placer, &nodes, &demands, &current);
            assert_eq!(
                placed_on(&placement, "m"),
                [("b", "cpu"), ("c", "cpu")],
                "{}",
                placer.name()
            );
            assert!(placed_on(&placement, "gone").is_empty());
        }
    }

    #[test]
    fn higher_priority_displaces_lower_when_nothing_else_fits() {
        let nodes = [node("a", &[("cpu", 10)]), node("b", &[("cpu", 4)])];
        let demands = [demand("low", 0, 1, 8, &[]), demand("high", 5, 1, 6, &[])];
        for placer in PLACERS {
            let placement = place(placer, &nodes, &demands, &[at("low", "a", "cpu")]);
            assert_eq!(
                placed_on(&placement, "high"),
                [("a", "cpu")],
                "{}",
                placer.name()
            );
            assert!(placed_on(&placement, "low").is_empty());
            assert_eq!(placement.refused.len(), 1);
            assert_eq!(placement.refused[0].model, "low");
        }
    }

    #[test]
    fn a_displaced_replica_moves_when_there_is_room_elsewhere() {
        let nodes = [node("a", &[("cuda:0", 10)]), node("b", &[("cpu", 10)])];
        let demands = [
            demand("low", 0, 1, 8, &[]),
            demand("high", 5, 1, 6, &["cuda:0"]),
        ];
        for placer in PLACERS {
            let placement = place(placer, &nodes, &demands, &[at("low", "a", "cuda:0")]);
            assert_eq!(
                placed_on(&placement, "high"),
                [("a", "cuda:0")],
                "{}",
                placer.name()
            );
            assert_eq!(placed_on(&placement, "low"), [("b", "cpu")]);
        }
    }

    #[test]
    fn lower_priority_stays_when_the_higher_fits_elsewhere() {
        let nodes = [node("a", &[("cpu", 10)]), node("b", &[("cpu", 20)])];
        let demands = [demand("low", 0, 1, 8, &[]), demand("high", 5, 1, 6, &[])];
        for placer in PLACERS {
            let placement = place(placer, &nodes, &demands, &[at("low", "a", "cpu")]);
            assert_eq!(
                placed_on(&placement, "low"),
                [("a", "cpu")],
                "{}",
                placer.name()
            );
            assert_eq!(placed_on(&placement, "high"), [("b", "cpu")]);
        }
    }

    #[test]
    fn an_equal_priority_newcomer_does_not_displace() {
        let nodes = [node("a", &[("cpu", 10)])];
        let demands = [demand("old", 3, 1, 8, &[]), demand("new", 3, 1, 6, &[])];
        for placer in PLACERS {
            let placement = place(placer, &nodes, &demands, &[at("old", "a", "cpu")]);
            assert_eq!(
                placed_on(&placement, "old"),
                [("a", "cpu")],
                "{}",
                placer.name()
            );
            assert_eq!(placement.refused[0].model, "new");
        }
    }

    #[test]
    fn higher_priority_is_served_first_from_empty() {
        // Either version alone fits; together they do not. Names sort against priority.
        let nodes = [node("a", &[("cpu", 10)])];
        let demands = [
            demand("a-low", 0, 1, 6, &[]),
            demand("z-high", 1, 1, 6, &[]),
        ];
        for placer in PLACERS {
            let placement = place(placer, &nodes, &demands, &[]);
            assert_eq!(
                placed_on(&placement, "z-high"),
                [("a", "cpu")],
                "{}",
                placer.name()
            );
            assert_eq!(placement.refused[0].model, "a-low");
        }
    }

    #[test]
    fn output_depends_on_content_not_order() {
        let mut rng = XorShift(42);
        for _ in 0..50 {
            let (nodes, demands) = random_fleet(&mut rng);
            for placer in PLACERS {
                let first = placer.place(&nodes, &demands, &[]);
                let mut shuffled_nodes = nodes.clone();
                shuffled_nodes.reverse();
                for node in &mut shuffled_nodes {
                    node.bins.reverse();
                }
                let mut shuffled_demands = demands.clone();
                shuffled_demands.rotate_left(demands.len() / 2);
                let again = placer.place(&shuffled_nodes, &shuffled_demands, &[]);
                assert_eq!(first, again, "{}", placer.name());
                let mut current = first.assignments.clone();
                current.reverse();
                assert_eq!(
                    placer.place(&nodes, &demands, &first.assignments),
                    placer.place(&shuffled_nodes, &shuffled_demands, &current),
                    "{}",
                    placer.name()
                );
            }
        }
    }

    #[test]
    fn a_placement_is_stable_when_nothing_changes() {
        let mut rng = XorShift(7);
        for _ in 0..100 {
            let (nodes, demands) = random_fleet(&mut rng);
            for placer in PLACERS {
                let first = placer.place(&nodes, &demands, &[]);
                let again = placer.place(&nodes, &demands, &first.assignments);
                assert_eq!(first, again, "{}", placer.name());
            }
        }
    }
}
