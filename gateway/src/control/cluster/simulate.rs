//! Compares placers on synthetic fleets, so that choosing one rests on numbers: how much memory
//! each packs, how many replicas it refuses, how many reloads a change costs, and how long it
//! takes to decide. Seeded, so a table can be reproduced; `loadtest/placement` prints it.
//!
//! A fleet mixes CPU nodes (16 to 64 GiB) and GPU nodes (the same host memory, plus a `cuda:0`
//! of 24 or 80 GiB). Versions have log-uniform sizes from 50 MiB to 20 GiB, 1 to 3 replicas,
//! one of four priorities, and a fifth of them run only on `cuda:0`, a tenth only on `cpu`;
//! sizes are scaled together so total demand is [`FleetSpec::load`] times the total budget.
//! After the first placement, from nothing, the fleet goes through [`FleetSpec::changes`]
//! changes, in turn: a node dies, a version is added, a replica count changes, a node joins, a
//! version is removed, a priority changes. Each is re-placed from the previous placement. Every
//! placer sees the same fleets.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::placer::{Assignment, Bin, Demand, NodeCapacity, Placement, Placer};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const SMALLEST: u64 = 50 * MIB;
const LARGEST: u64 = 20 * GIB;
const PRIORITIES: [i64; 4] = [0, 10, 20, 30];

#[derive(Debug, Clone, PartialEq)]
pub struct FleetSpec {
    pub nodes: usize,
    pub versions: usize,
    pub seed: u64,
    /// Share of nodes with a GPU.
    pub gpu_share: f64,
    /// Total demand over total budget at the start.
    pub load: f64,
    pub changes: usize,
}

impl FleetSpec {
    pub fn new(nodes: usize, versions: usize, seed: u64) -> FleetSpec {
        FleetSpec {
            nodes,
            versions,
            seed,
            gpu_share: 0.3,
            load: 1.0,
            changes: 20,
        }
    }
}

/// One placer's results over a fleet's placements.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub placer: &'static str,
    /// Placed bytes over total budget after the first placement, in percent.
    pub packed_initial: f64,
    /// The same, averaged over the placements after each change.
    pub packed_after: f64,
    /// Replicas short of what demands want, after the first placement.
    pub refused_initial: u64,
    pub refused_after: f64,
    /// Per change: replicas of `current` on a live device that were moved or dropped, not
    /// counting those a lower replica count or a removed version no longer wants.
    pub moved_per_change: f64,
    /// Per change: replicas that were not in `current` where they are now.
    pub placed_per_change: f64,
    pub decide_median_ms: f64,
    pub decide_max_ms: f64,
    /// Over versions placed with more than one replica, in every placement: distinct nodes
    /// hosting them over their replicas; 1 means every replica on its own node.
    pub hosts_per_replica: f64,
}

/// Runs every placer through the same fleet and its changes.
pub fn compare(spec: &FleetSpec, placers: &[&dyn Placer]) -> Vec<Row> {
    let steps = scenario(spec);
    placers
        .iter()
        .map(|&placer| {
            let mut stats = Stats::default();
            run(&steps, placer, |step, current, placement, elapsed_ms| {
                stats.record(step, current, placement, elapsed_ms);
            });
            stats.row(placer.name())
        })
        .collect()
}

pub fn markdown(rows: &[Row], spec: &FleetSpec) -> String {
    let steps = scenario(spec);
    let first = &steps[0];
    let budget = total_budget(&first.nodes);
    let demand: u64 = first
        .demands
        .iter()
        .map(|d| d.bytes_per_replica * u64::from(d.replicas))
        .sum();
    let gpus = first.nodes.iter().filter(|n| n.bins.len() > 1).count();
    let mut out = format!(
        "### {} nodes ({gpus} with a GPU), {} versions, seed {}\n\n\
         Demand {:.0}% of a {:.0} GiB budget at the start; {} changes, each re-placed from the \
         previous placement.\n\n",
        spec.nodes,
        spec.versions,
        spec.seed,
        percent(demand, budget),
        budget as f64 / GIB as f64,
        steps.len() - 1,
    );
    out.push_str(
        "| placer | packed at start | packed after changes | refused at start | refused after \
         changes | moved per change | placed per change | decide median | decide max | hosts \
         per replica |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for row in rows {
        out.push_str(&format!(
            "| {} | {:.1}% | {:.1}% | {} | {:.1} | {:.1} | {:.1} | {:.1} ms | {:.1} ms | {:.2} |\n",
            row.placer,
            row.packed_initial,
            row.packed_after,
            row.refused_initial,
            row.refused_after,
            row.moved_per_change,
            row.placed_per_change,
            row.decide_median_ms,
            row.decide_max_ms,
            row.hosts_per_replica,
        ));
    }
    out
}

/// The fleet and demands to place, and which change led to them.
struct Step {
    change: &'static str,
    nodes: Vec<NodeCapacity>,
    demands: Vec<Demand>,
}

/// Places every step in order, each from the previous placement, and hands each to `inspect`
/// with the `current` it started from and the milliseconds it took.
fn run(
    steps: &[Step],
    placer: &dyn Placer,
    mut inspect: impl FnMut(&Step, &[Assignment], &Placement, f64),
) {
    let mut current = Vec::new();
    for step in steps {
        let started = Instant::now();
        let placement = placer.place(&step.nodes, &step.demands, &current);
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        inspect(step, &current, &placement, elapsed_ms);
        current = placement.assignments;
    }
}

#[derive(Default)]
struct Stats {
    packed: Vec<f64>,
    refused: Vec<u64>,
    moved: u64,
    placed: u64,
    millis: Vec<f64>,
    hosts: u64,
    spread_replicas: u64,
}

impl Stats {
    fn record(&mut self, step: &Step, current: &[Assignment], placement: &Placement, ms: f64) {
        let bytes: BTreeMap<(&str, &str), u64> = step
            .demands
            .iter()
            .map(|d| ((d.model.as_str(), d.version.as_str()), d.bytes_per_replica))
            .collect();
        let placed_bytes: u64 = placement
            .assignments
            .iter()
            .filter_map(|a| bytes.get(&(a.model.as_str(), a.version.as_str())))
            .sum();
        self.packed
            .push(percent(placed_bytes, total_budget(&step.nodes)));
        self.refused.push(
            placement
                .refused
                .iter()
                .map(|r| u64::from(r.wanted - r.placed))
                .sum(),
        );
        self.millis.push(ms);
        if step.change != "start" {
            let (moved, placed) = churn(step, current, placement);
            self.moved += moved;
            self.placed += placed;
        }
        let mut hosts: BTreeMap<(&str, &str), (BTreeSet<&str>, u64)> = BTreeMap::new();
        for a in &placement.assignments {
            let entry = hosts.entry((&a.model, &a.version)).or_default();
            entry.0.insert(&a.node);
            entry.1 += 1;
        }
        for (nodes, replicas) in hosts.values().filter(|(_, replicas)| *replicas > 1) {
            self.hosts += nodes.len() as u64;
            self.spread_replicas += replicas;
        }
    }

    fn row(&self, placer: &'static str) -> Row {
        let changes = self.packed.len().saturating_sub(1).max(1) as f64;
        let mut millis = self.millis.clone();
        millis.sort_by(f64::total_cmp);
        Row {
            placer,
            packed_initial: self.packed.first().copied().unwrap_or(0.0),
            packed_after: self.packed.iter().skip(1).sum::<f64>() / changes,
            refused_initial: self.refused.first().copied().unwrap_or(0),
            refused_after: self.refused.iter().skip(1).sum::<u64>() as f64 / changes,
            moved_per_change: self.moved as f64 / changes,
            placed_per_change: self.placed as f64 / changes,
            decide_median_ms: millis.get(millis.len() / 2).copied().unwrap_or(0.0),
            decide_max_ms: millis.last().copied().unwrap_or(0.0),
            hosts_per_replica: self.hosts as f64 / self.spread_replicas.max(1) as f64,
        }
    }
}

/// (moved, placed): see [`Row::moved_per_change`] and [`Row::placed_per_change`].
fn churn(step: &Step, current: &[Assignment], placement: &Placement) -> (u64, u64) {
    let live: BTreeSet<(&str, &str)> = step
        .nodes
        .iter()
        .flat_map(|n| n.bins.iter().map(|b| (n.node.as_str(), b.device.as_str())))
        .collect();
    let wanted: BTreeMap<(&str, &str), u64> = step
        .demands
        .iter()
        .map(|d| {
            (
                (d.model.as_str(), d.version.as_str()),
                u64::from(d.replicas),
            )
        })
        .collect();
    // Per version: (live replicas in current, replicas now, replicas now where one was).
    let mut versions: BTreeMap<(&str, &str), (u64, u64, u64)> = BTreeMap::new();
    let mut before: BTreeMap<&Assignment, u64> = BTreeMap::new();
    for a in current {
        if live.contains(&(a.node.as_str(), a.device.as_str())) {
            versions.entry((&a.model, &a.version)).or_default().0 += 1;
            *before.entry(a).or_default() += 1;
        }
    }
    for a in &placement.assignments {
        let version = versions.entry((&a.model, &a.version)).or_default();
        version.1 += 1;
        if let Some(left) = before.get_mut(a).filter(|left| **left > 0) {
            *left -= 1;
            version.2 += 1;
        }
    }
    versions
        .iter()
        .fold((0, 0), |(moved, placed), (key, &(was, now, kept))| {
            let still_wanted = was.min(wanted.get(key).copied().unwrap_or(0));
            (
                moved + still_wanted.saturating_sub(kept),
                placed + now - kept,
            )
        })
}

fn total_budget(nodes: &[NodeCapacity]) -> u64 {
    nodes
        .iter()
        .flat_map(|n| &n.bins)
        .map(|b| b.budget_bytes)
        .sum()
}

fn percent(part: u64, whole: u64) -> f64 {
    100.0 * part as f64 / whole.max(1) as f64
}

/// xorshift64*: tiny, seeded, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // splitmix64 of the seed, so that 0 and nearby seeds give unrelated, non-zero states.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Draws nodes and versions; `scale` multiplies version sizes so demand can be set to a load.
struct Generator {
    rng: Rng,
    gpu_share: f64,
    next_node: usize,
    next_version: usize,
    scale: f64,
}

impl Generator {
    fn node(&mut self) -> NodeCapacity {
        let name = format!("node-{:04}", self.next_node);
        self.next_node += 1;
        let mut bins = vec![Bin {
            device: "cpu".into(),
            budget_bytes: [16, 32, 48, 64][self.rng.below(4)] * GIB,
        }];
        if self.rng.unit() < self.gpu_share {
            bins.push(Bin {
                device: "cuda:0".into(),
                budget_bytes: if self.rng.below(10) < 7 { 24 } else { 80 } * GIB,
            });
        }
        NodeCapacity { node: name, bins }
    }

    fn version(&mut self) -> Demand {
        let index = self.next_version;
        self.next_version += 1;
        let (low, high) = ((SMALLEST as f64).ln(), (LARGEST as f64).ln());
        let drawn = (low + self.rng.unit() * (high - low)).exp();
        let allowed = match self.rng.below(10) {
            0 | 1 => vec!["cuda:0".to_string()],
            2 => vec!["cpu".to_string()],
            _ => Vec::new(),
        };
        Demand {
            model: format!("model-{:05}", index / 2),
            version: (index % 2 + 1).to_string(),
            priority: self.priority(),
            replicas: 1 + self.rng.below(3) as u32,
            bytes_per_replica: ((drawn * self.scale) as u64).clamp(SMALLEST, LARGEST),
            allowed,
        }
    }

    /// Most versions are ordinary; fewer matter more.
    fn priority(&mut self) -> i64 {
        PRIORITIES[[0, 0, 0, 1, 1, 2, 3][self.rng.below(7)]]
    }
}

/// The fleet at the start and after each change.
fn scenario(spec: &FleetSpec) -> Vec<Step> {
    let mut generator = Generator {
        rng: Rng::new(spec.seed),
        gpu_share: spec.gpu_share,
        next_node: 0,
        next_version: 0,
        scale: 1.0,
    };
    let mut nodes: Vec<NodeCapacity> = (0..spec.nodes.max(1)).map(|_| generator.node()).collect();
    let mut demands: Vec<Demand> = (0..spec.versions).map(|_| generator.version()).collect();
    let demand: u64 = demands
        .iter()
        .map(|d| d.bytes_per_replica * u64::from(d.replicas))
        .sum();
    generator.scale = spec.load * total_budget(&nodes) as f64 / demand.max(1) as f64;
    for d in &mut demands {
        d.bytes_per_replica =
            ((d.bytes_per_replica as f64 * generator.scale) as u64).clamp(SMALLEST, LARGEST);
    }
    let mut steps = vec![Step {
        change: "start",
        nodes: nodes.clone(),
        demands: demands.clone(),
    }];
    const CHANGES: [&str; 6] = [
        "node dies",
        "version added",
        "replicas changed",
        "node joins",
        "version removed",
        "priority changed",
    ];
    for change in CHANGES.iter().cycle().take(spec.changes) {
        let rng = &mut generator.rng;
        match *change {
            "node dies" if nodes.len() > 1 => {
                nodes.remove(rng.below(nodes.len()));
            }
            "node joins" => nodes.push(generator.node()),
            "version added" => demands.push(generator.version()),
            "version removed" if !demands.is_empty() => {
                demands.remove(rng.below(demands.len()));
            }
            "replicas changed" if !demands.is_empty() => {
                let index = rng.below(demands.len());
                let replicas = demands[index].replicas;
                demands[index].replicas = 1 + (replicas + rng.below(2) as u32) % 3;
            }
            "priority changed" if !demands.is_empty() => {
                let index = rng.below(demands.len());
                let other = PRIORITIES.iter().filter(|&&p| p != demands[index].priority);
                let others: Vec<i64> = other.copied().collect();
                demands[index].priority = others[rng.below(others.len())];
            }
            _ => {}
        }
        steps.push(Step {
            change,
            nodes: nodes.clone(),
            demands: demands.clone(),
        });
    }
    steps
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::super::placer::{Auction, BestFit, check};
    use super::*;

    const PLACERS: [&dyn Placer; 2] = [&BestFit, &Auction];

    #[test]
    fn every_step_obeys_the_rules_for_both_placers() {
        for spec in [
            FleetSpec::new(10, 100, 1),
            FleetSpec {
                load: 1.1,
                ..FleetSpec::new(20, 150, 2)
            },
        ] {
            let steps = scenario(&spec);
            assert_eq!(steps.len(), spec.changes + 1);
            for placer in PLACERS {
                let mut refused = 0;
                run(&steps, placer, |step, _, placement, _| {
                    if let Err(broken) = check(&step.nodes, &step.demands, placement) {
                        panic!("{} after '{}': {broken}", placer.name(), step.change);
                    }
                    refused += placement.refused.len();
                });
                assert!(
                    refused > 0,
                    "{}: the fleet is meant to be short of memory",
                    placer.name()
                );
            }
        }
    }

    #[test]
    fn the_scenario_is_seeded_and_loaded_as_asked() {
        let spec = FleetSpec::new(30, 300, 7);
        let (a, b) = (scenario(&spec), scenario(&spec));
        assert!(
            a.iter()
                .zip(&b)
                .all(|(x, y)| x.nodes == y.nodes && x.demands == y.demands)
        );
        let other = scenario(&FleetSpec::new(30, 300, 8));
        assert_ne!(a[0].demands, other[0].demands);
        let demand: u64 = a[0]
            .demands
            .iter()
            .map(|d| d.bytes_per_replica * u64::from(d.replicas))
            .sum();
        let load = percent(demand, total_budget(&a[0].nodes));
        assert!(
            (85.0..=110.0).contains(&load),
            "demand is {load:.0}% of the budget"
        );
        let kinds: BTreeSet<&str> = a.iter().map(|s| s.change).collect();
        assert_eq!(kinds.len(), 7, "{kinds:?}");
    }

    #[test]
    fn churn_counts_moves_apart_from_new_replicas() {
        let node = |name: &str| NodeCapacity {
            node: name.into(),
            bins: vec![Bin {
                device: "cpu".into(),
                budget_bytes: GIB,
            }],
        };
        let at = |model: &str, node: &str| Assignment {
            model: model.into(),
            version: "1".into(),
            node: node.into(),
            device: "cpu".into(),
        };
        let demand = |model: &str, replicas| Demand {
            model: model.into(),
            version: "1".into(),
            priority: 0,
            replicas,
            bytes_per_replica: MIB,
            allowed: Vec::new(),
        };
        let step = Step {
            change: "node dies",
            nodes: vec![node("a"), node("b"), node("c")],
            demands: vec![demand("kept", 1), demand("moved", 1), demand("shrunk", 1)],
        };
        let current = [
            at("kept", "a"),
            at("moved", "a"),
            at("shrunk", "a"),
            at("shrunk", "b"),
            at("orphan", "dead"),
            at("removed", "c"),
        ];
        let placement = Placement {
            assignments: vec![at("kept", "a"), at("moved", "b"), at("shrunk", "b")],
            refused: Vec::new(),
        };
        assert_eq!(churn(&step, &current, &placement), (1, 1));
    }

    #[test]
    fn the_table_has_a_row_per_placer() {
        let spec = FleetSpec {
            changes: 3,
            ..FleetSpec::new(5, 40, 3)
        };
        let rows = compare(&spec, &PLACERS);
        assert_eq!(
            rows.iter().map(|r| r.placer).collect::<Vec<_>>(),
            ["best_fit", "auction"]
        );
        assert!(
            rows.iter()
                .all(|r| r.packed_initial > 0.0 && r.packed_initial <= 100.0)
        );
        let table = markdown(&rows, &spec);
        assert!(table.starts_with("### 5 nodes ("), "{table}");
        assert_eq!(
            table.lines().filter(|l| l.starts_with("| ")).count(),
            3,
            "{table}"
        );
        assert!(table.contains("3 changes"));
    }
}
