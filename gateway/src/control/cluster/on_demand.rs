//! Loads on demand across the cluster: after the placer, the leader gives each version that
//! requests wait for, and that the placer left nowhere, one replica on the node with room, or
//! else on the node whose idle replicas, evicted, make room. The same rules as a single node's
//! (`capacity::State::evict_for`): lowest priority first, then least recently used, never a
//! version of higher priority than the one asking, nor one with a replica on the node that the
//! node does not report idle (in flight, holding sequences, waited for, pinned, or busy
//! recently). A version goes whole from a node, which holds the count it loaded.
//! Pure, like the placer: the nodes' reports in, the placement changed in place.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::placer::{Assignment, Bin, Demand, NodeCapacity, Placement, Refused};

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

/// Idle replicas not yet taken, by (node, device, model, version): how many, and how long idle.
type IdleLeft = BTreeMap<(String, String, String, String), (u32, Duration)>;

/// Where one replica of an asking version can go.
struct Room {
    /// With room: (0, the memory left over, -). Else (evictions, 0, the memory that could be
    /// evicted there). The least wins: the best fit; else the fewest evictions, then the most
    /// evictable memory (the most room left for the next ask).
    rank: (usize, u64, Reverse<u64>),
    node: String,
    device: String,
    victims: Vec<Assignment>,
}

/// What the leader knows while it places asks: each version's demand, and who asks.
struct Asks<'a> {
    by_name: BTreeMap<VersionName, &'a Demand>,
}

impl Asks<'_> {
    fn bytes_of(&self, model: &str, version: &str) -> u64 {
        self.by_name
            .get(&(model.to_owned(), version.to_owned()))
            .map_or(0, |d| d.bytes_per_replica)
    }

    /// Room for one replica of `demand` on one device of one node, evicting what may go there
    /// if it must; `None` if even that is not enough.
    fn room_on(
        &self,
        demand: &Demand,
        node: &str,
        bin: &Bin,
        placement: &Placement,
        idle_left: &IdleLeft,
    ) -> Option<Room> {
        let needed = demand.bytes_per_replica;
        if bin.budget_bytes < needed
            || (!demand.allowed.is_empty() && !demand.allowed.contains(&bin.device))
        {
            return None;
        }
        let on_bin: Vec<&Assignment> = placement
            .assignments
            .iter()
            .filter(|a| a.node == node && a.device == bin.device)
            .collect();
        let used: u64 = on_bin
            .iter()
            .map(|a| self.bytes_of(&a.model, &a.version))
            .sum();
        let mut free = bin.budget_bytes.saturating_sub(used);
        if free >= needed {
            return Some(Room {
                rank: (0, free - needed, Reverse(0)),
                node: node.to_owned(),
                device: bin.device.clone(),
                victims: Vec::new(),
            });
        }
        // The versions that may go from this node, in the order they go: a version goes
        // whole from a node (a node holds the count it loaded), so only one whose every
        // replica on the node is idle.
        let mut candidates: Vec<(i64, Reverse<Duration>, VersionName)> = Vec::new();
        let mut idle_on_node: BTreeMap<VersionName, (u32, Duration)> = BTreeMap::new();
        for ((n, _, model, version), (replicas, idle)) in idle_left {
            if n == node {
                let entry = idle_on_node
                    .entry((model.clone(), version.clone()))
                    .or_insert((0, *idle));
                entry.0 += replicas;
                entry.1 = entry.1.min(*idle);
            }
        }
        for (name, (idle_replicas, idle)) in idle_on_node {
            let Some(victim) = self.by_name.get(&name) else {
                continue;
            };
            let placed_on_node = placement
                .assignments
                .iter()
                .filter(|a| a.node == node && a.model == name.0 && a.version == name.1)
                .count();
            let here = on_bin
                .iter()
                .filter(|a| a.model == name.0 && a.version == name.1)
                .count();
            if victim.priority > demand.priority
                || here == 0
                || (idle_replicas as usize) < placed_on_node
            {
                continue;
            }
            candidates.push((victim.priority, Reverse(idle), name));
        }
        candidates.sort();
        let freed_here = |name: &VersionName| {
            let here = on_bin
                .iter()
                .filter(|a| a.model == name.0 && a.version == name.1)
                .count() as u64;
            here * self.bytes_of(&name.0, &name.1)
        };
        let evictable: u64 = candidates.iter().map(|(_, _, name)| freed_here(name)).sum();
        let mut victims = Vec::new();
        for (_, _, name) in candidates {
            if free >= needed {
                break;
            }
            free += freed_here(&name);
            victims.extend(
                placement
                    .assignments
                    .iter()
                    .filter(|a| a.node == node && a.model == name.0 && a.version == name.1)
                    .cloned(),
            );
        }
        (free >= needed).then(|| Room {
            rank: (victims.len(), 0, Reverse(evictable)),
            node: node.to_owned(),
            device: bin.device.clone(),
            victims,
        })
    }
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
    let asks = Asks {
        by_name: demands
            .iter()
            .map(|d| ((d.model.clone(), d.version.clone()), d))
            .collect(),
    };
    let mut asking: Vec<&Demand> = wanted
        .iter()
        .filter_map(|name| asks.by_name.get(name).copied())
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
    let mut idle_left: IdleLeft = idle
        .iter()
        .map(|i| {
            let key = (
                i.node.clone(),
                i.device.clone(),
                i.model.clone(),
                i.version.clone(),
            );
            (key, (i.replicas, i.idle))
        })
        .collect();
    // What the round starts from: an ask that finds no room only because an earlier ask of
    // this round took it is not hopeless, it waits for the next round.
    let (initial, initial_idle) = (placement.clone(), idle_left.clone());
    for demand in asking {
        let best = nodes
            .iter()
            .flat_map(|node| node.bins.iter().map(move |bin| (node, bin)))
            .filter_map(|(node, bin)| asks.room_on(demand, &node.node, bin, placement, &idle_left))
            // The first of equals: nodes and bins are in order.
            .reduce(|best, room| if room.rank < best.rank { room } else { best });
        let Some(room) = best else {
            let could_have = nodes.iter().any(|node| {
                node.bins.iter().any(|bin| {
                    asks.room_on(demand, &node.node, bin, &initial, &initial_idle)
                        .is_some()
                })
            });
            if !could_have {
                outcome
                    .hopeless
                    .insert((demand.model.clone(), demand.version.clone()));
            }
            continue;
        };
        for victim in &room.victims {
            if let Some(at) = placement.assignments.iter().position(|a| a == victim) {
                placement.assignments.remove(at);
            }
            idle_left.retain(|(node, _, model, version), _| {
                !(node == &victim.node && model == &victim.model && version == &victim.version)
            });
            note_refused(placement, &asks.by_name, &victim.model, &victim.version);
        }
        let assignment = Assignment {
            model: demand.model.clone(),
            version: demand.version.clone(),
            node: room.node,
            device: room.device,
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
            evicted: room.victims,
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
    fn busy_or_pinned_replicas_stay_and_the_ask_is_hopeless() {
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
        // Two asks for one room: the first by name takes it, evicting 1 (asked for too, but
        // placed and idle); the second is not hopeless, it waits for the next round.
        let outcome = place(
            &nodes,
            &demands,
            &mut placement,
            &wanted(&["1", "2", "3"]),
            &[idle("1", "a", 60)],
        );
        assert_eq!(outcome.loaded.len(), 1, "{:?}", outcome.loaded);
        assert_eq!(outcome.loaded[0].assignment, on("2", "a"));
        assert_eq!(outcome.loaded[0].evicted, vec![on("1", "a")]);
        assert!(outcome.hopeless.is_empty(), "{:?}", outcome.hopeless);
    }

    #[test]
    fn a_version_goes_whole_from_a_node_and_only_if_all_its_replicas_there_are_idle() {
        let nodes = [node("a", 100)];
        let demands = [
            Demand {
                replicas: 2,
                ..demand("1", 0, 40)
            },
            demand("2", 0, 20),
            demand("3", 0, 60),
        ];
        let mut placement = Placement {
            assignments: vec![on("1", "a"), on("1", "a"), on("2", "a")],
            refused: vec![refused("3")],
        };
        // One of 1's two replicas is busy: 1 stays, and 2 alone frees too little.
        let outcome = place(
            &nodes,
            &demands,
            &mut placement.clone(),
            &wanted(&["3"]),
            &[idle("1", "a", 60), idle("2", "a", 1)],
        );
        assert!(outcome.loaded.is_empty(), "{:?}", outcome.loaded);
        // Both idle: 1 goes with both replicas, the least recently used, and that is enough.
        let both = IdleReplicas {
            replicas: 2,
            ..idle("1", "a", 60)
        };
        let outcome = place(
            &nodes,
            &demands,
            &mut placement,
            &wanted(&["3"]),
            &[both, idle("2", "a", 1)],
        );
        assert_eq!(outcome.loaded[0].evicted, vec![on("1", "a"), on("1", "a")]);
        assert_eq!(placement.assignments, vec![on("2", "a"), on("3", "a")]);
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
