//! Loads on demand across the cluster: after the placer, the leader gives each version that
//! requests wait for, and that the placer left nowhere, one replica on the node with room, or
//! else on the node whose idle replicas, evicted, make room. The same rules as a single node's
//! (`capacity::State::evict_for`): lowest priority first, then least recently used, never a
//! version of higher priority than the one asking, nor one a request waits for, nor a replica
//! the node does not report idle (in flight, holding sequences, pinned, or busy recently).
//! Pure, like the placer: the nodes' reports in, the placement changed in place.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::placer::{Assignment, Demand, NodeCapacity, Placement, Refused};

/// A version and its model, as the placement names them.
pub type VersionName = (String, String);

/// Idle replicas a node reports it may evict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdleReplicas {
    pub node: String,
    pub device: String,
    pub model: String,
    pub version: String,
    pub replicas: u32,
    /// Since the version last had work on that node.
    pub idle: Duration,
}

/// One replica placed for a version requests wait for, and what made room for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub assignment: Assignment,
    pub evicted: Vec<Assignment>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct OnDemand {
    pub loaded: Vec<Loaded>,
    /// Wanted, and no node can hold it even by evicting.
    pub hopeless: BTreeSet<VersionName>,
}

/// Places what `wanted` names and `placement` left without a replica; see the module.
pub fn place(
    capacities: &[NodeCapacity],
    demands: &[Demand],
    placement: &mut Placement,
    wanted: &BTreeSet<VersionName>,
    idle: &[IdleReplicas],
) -> OnDemand {
    let mut outcome = OnDemand::default();
    let by_name: BTreeMap<VersionName, &Demand> = demands
        .iter()
        .map(|d| ((d.model.clone(), d.version.clone()), d))
        .collect();
    let bytes_of = |model: &str, version: &str| {
        by_name
            .get(&(model.to_owned(), version.to_owned()))
            .map_or(0, |d| d.bytes_per_replica)
    };
    let mut asking: Vec<&Demand> = wanted
        .iter()
        .filter_map(|name| by_name.get(name).copied())
        .filter(|d| {
            !placement
                .assignments
                .iter()
                .any(|a| a.model == d.model && a.version == d.version)
        })
        .collect();
    asking.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then_with(|| (&a.model, &a.version).cmp(&(&b.model, &b.version)))
    });
    let mut nodes: Vec<&NodeCapacity> = capacities.iter().collect();
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    // Idle replicas not yet taken, by (node, device, model, version).
    let mut idle_left: BTreeMap<(String, String, String, String), (u32, Duration)> = idle
        .iter()
        .map(|i| {
            (
                (
                    i.node.clone(),
                    i.device.clone(),
                    i.model.clone(),
                    i.version.clone(),
                ),
                (i.replicas, i.idle),
            )
        })
        .collect();
    for demand in asking {
        let name = (demand.model.clone(), demand.version.clone());
        let mut best: Option<((usize, u64, Reverse<u64>), String, String, Vec<Assignment>)> = None;
        for node in &nodes {
            for bin in &node.bins {
                if !demand.allowed.is_empty() && !demand.allowed.contains(&bin.device) {
                    continue;
                }
                if bin.budget_bytes < demand.bytes_per_replica {
                    continue;
                }
                let on_bin = |a: &&Assignment| a.node == node.node && a.device == bin.device;
                let used: u64 = placement
                    .assignments
                    .iter()
                    .filter(on_bin)
                    .map(|a| bytes_of(&a.model, &a.version))
                    .sum();
                let mut free = bin.budget_bytes.saturating_sub(used);
                // The replicas that may go, in the order they go.
                let mut candidates: Vec<(i64, Reverse<Duration>, Assignment)> = Vec::new();
                let mut evictable_bytes = 0;
                for ((n, device, model, version), (replicas, idle)) in &idle_left {
                    if n != &node.node || device != &bin.device {
                        continue;
                    }
                    let candidate = (model.clone(), version.clone());
                    let Some(victim) = by_name.get(&candidate) else {
                        continue;
                    };
                    if candidate == name
                        || wanted.contains(&candidate)
                        || victim.priority > demand.priority
                    {
                        continue;
                    }
                    let placed_here = placement
                        .assignments
                        .iter()
                        .filter(on_bin)
                        .filter(|a| &a.model == model && &a.version == version)
                        .count();
                    for _ in 0..(*replicas as usize).min(placed_here) {
                        evictable_bytes += victim.bytes_per_replica;
                        candidates.push((
                            victim.priority,
                            Reverse(*idle),
                            Assignment {
                                model: model.clone(),
                                version: version.clone(),
                                node: node.node.clone(),
                                device: bin.device.clone(),
                            },
                        ));
                    }
                }
                candidates.sort();
                let mut victims = Vec::new();
                for (_, _, victim) in candidates {
                    if free >= demand.bytes_per_replica {
                        break;
                    }
                    free += bytes_of(&victim.model, &victim.version);
                    victims.push(victim);
                }
                if free < demand.bytes_per_replica {
                    continue;
                }
                // With room: the best fit. Else the fewest evictions, then the most memory
                // that could be evicted there (the most room left for the next ask).
                let rank = if victims.is_empty() {
                    (0, free - demand.bytes_per_replica, Reverse(0))
                } else {
                    (victims.len(), 0, Reverse(evictable_bytes))
                };
                if best.as_ref().is_none_or(|(best, ..)| rank < *best) {
                    best = Some((rank, node.node.clone(), bin.device.clone(), victims));
                }
            }
        }
        let Some((_, node, device, victims)) = best else {
            outcome.hopeless.insert(name);
            continue;
        };
        for victim in &victims {
            if let Some(at) = placement.assignments.iter().position(|a| a == victim) {
                placement.assignments.remove(at);
            }
            let key = (
                victim.node.clone(),
                victim.device.clone(),
                victim.model.clone(),
                victim.version.clone(),
            );
            if let Some((replicas, _)) = idle_left.get_mut(&key) {
                *replicas = replicas.saturating_sub(1);
            }
            note_refused(placement, &by_name, &victim.model, &victim.version);
        }
        let assignment = Assignment {
            model: demand.model.clone(),
            version: demand.version.clone(),
            node,
            device,
        };
        placement.assignments.push(assignment.clone());
        placement
            .refused
            .retain(|r| !(r.model == demand.model && r.version == demand.version && r.wanted <= 1));
        if let Some(refused) = placement
            .refused
            .iter_mut()
            .find(|r| r.model == demand.model && r.version == demand.version)
        {
            refused.placed += 1;
        }
        outcome.loaded.push(Loaded {
            assignment,
            evicted: victims,
        });
    }
    placement.assignments.sort();
    placement.refused.sort();
    outcome
}

/// Records that an evicted version now has fewer replicas than it wants.
fn note_refused(
    placement: &mut Placement,
    by_name: &BTreeMap<VersionName, &Demand>,
    model: &str,
    version: &str,
) {
    let placed = placement
        .assignments
        .iter()
        .filter(|a| a.model == model && a.version == version)
        .count() as u32;
    match placement
        .refused
        .iter_mut()
        .find(|r| r.model == model && r.version == version)
    {
        Some(refused) => refused.placed = placed,
        None => placement.refused.push(Refused {
            model: model.to_owned(),
            version: version.to_owned(),
            wanted: by_name
                .get(&(model.to_owned(), version.to_owned()))
                .map_or(1, |d| d.replicas),
            placed,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::placer::Bin;
    use super::*;

    const MIB: u64 = 1 << 20;

    fn node(name: &str, budget_mib: u64) -> NodeCapacity {
        NodeCapacity {
            node: name.into(),
            bins: vec![Bin {
                device: "cpu".into(),
                budget_bytes: budget_mib * MIB,
            }],
        }
    }

    fn demand(version: &str, priority: i64, mib: u64) -> Demand {
        Demand {
            model: "m".into(),
            version: version.into(),
            priority,
            replicas: 1,
            bytes_per_replica: mib * MIB,
            allowed: Vec::new(),
        }
    }

    fn on(version: &str, node: &str) -> Assignment {
        Assignment {
            model: "m".into(),
            version: version.into(),
            node: node.into(),
            device: "cpu".into(),
        }
    }

    fn idle(version: &str, node: &str, seconds: u64) -> IdleReplicas {
        IdleReplicas {
            node: node.into(),
            device: "cpu".into(),
            model: "m".into(),
            version: version.into(),
            replicas: 1,
            idle: Duration::from_secs(seconds),
        }
    }

    fn wanted(versions: &[&str]) -> BTreeSet<VersionName> {
        versions
            .iter()
            .map(|v| ("m".to_owned(), (*v).to_owned()))
            .collect()
    }

    fn refused(version: &str) -> Refused {
        Refused {
            model: "m".into(),
            version: version.into(),
            wanted: 1,
            placed: 0,
        }
    }

    #[test]
    fn a_wanted_version_goes_where_there_is_room_without_evicting() {
        let nodes = [node("a", 100), node("b", 100), node("c", 100)];
        let demands = [demand("1", 0, 60), demand("2", 0, 60), demand("3", 0, 30)];
        let mut placement = Placement {
            assignments: vec![on("1", "a"), on("2", "b")],
            refused: vec![refused("3")],
        };
        // c is empty, but the 40 MiB left on a and on b fit 30 best; a comes first by name.
        let outcome = place(
            &nodes,
            &demands,
            &mut placement,
            &wanted(&["3"]),
            &[idle("1", "a", 60), idle("2", "b", 60)],
        );
        assert_eq!(outcome.loaded.len(), 1);
        assert_eq!(outcome.loaded[0].assignment, on("3", "a"));
        assert!(outcome.loaded[0].evicted.is_empty());
        assert!(placement.refused.is_empty(), "{:?}", placement.refused);
    }

    #[test]
    fn a_full_cluster_evicts_the_least_recently_used_of_the_lowest_priority() {
        let nodes = [node("a", 100), node("b", 100)];
        let demands = [
            demand("1", 5, 80),
            demand("2", 0, 80),
            demand("3", 0, 80),
            demand("4", 0, 80),
        ];
        let mut placement = Placement {
            assignments: vec![on("1", "a"), on("2", "b")],
            refused: vec![refused("3"), refused("4")],
        };
        // 1 outranks the ask and idles longest; 2 is of the ask's priority.
        let outcome = place(
            &nodes,
            &demands,
            &mut placement,
            &wanted(&["3"]),
            &[idle("1", "a", 600), idle("2", "b", 5)],
        );
        assert_eq!(outcome.loaded[0].assignment, on("3", "b"));
        assert_eq!(outcome.loaded[0].evicted, vec![on("2", "b")]);
        assert_eq!(placement.assignments, vec![on("1", "a"), on("3", "b")]);
        assert_eq!(
            placement.refused,
            vec![refused("2"), refused("4")],
            "the evicted version is placed nowhere now, like 4, which nobody asked for"
        );
    }

    #[test]
    fn busy_pinned_or_wanted_replicas_stay_and_the_ask_is_hopeless() {
        let nodes = [node("a", 100)];
        let demands = [demand("1", 0, 80), demand("2", 0, 80), demand("3", 0, 80)];
        let mut placement = Placement {
            assignments: vec![on("1", "a")],
            refused: vec![refused("2"), refused("3")],
        };
        // 1 is not reported idle (busy, pinned or holding sequences): nothing may go.
        let outcome = place(&nodes, &demands, &mut placement, &wanted(&["2"]), &[]);
        assert!(outcome.loaded.is_empty());
        assert_eq!(outcome.hopeless, wanted(&["2"]));
        // Two asks for one room: the first by name takes it; 1, wanted too, is not evicted.
        let outcome = place(
            &nodes,
            &demands,
            &mut placement,
            &wanted(&["1", "2", "3"]),
            &[idle("1", "a", 60)],
        );
        assert!(outcome.loaded.is_empty(), "{:?}", outcome.loaded);
        assert_eq!(outcome.hopeless, wanted(&["2", "3"]));
    }

    #[test]
    fn with_no_room_anywhere_the_node_with_the_most_evictable_memory_takes_it() {
        let nodes = [node("a", 100), node("b", 100)];
        let demands = [
            demand("1", 0, 50),
            demand("2", 0, 50),
            demand("3", 0, 100),
            demand("4", 0, 50),
        ];
        let mut placement = Placement {
            assignments: vec![on("1", "a"), on("2", "a"), on("3", "b")],
            refused: vec![refused("4")],
        };
        // One eviction either way; b's 100 MiB idle beats a's 50.
        let outcome = place(
            &nodes,
            &demands,
            &mut placement,
            &wanted(&["4"]),
            &[idle("1", "a", 60), idle("3", "b", 60)],
        );
        assert_eq!(outcome.loaded[0].assignment, on("4", "b"));
        assert_eq!(outcome.loaded[0].evicted, vec![on("3", "b")]);
    }
}
