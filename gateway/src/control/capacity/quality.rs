//! Replicas by quality per byte, for a model under the objective policy: when memory binds,
//! the versions whose replicas add the most to the objective per byte get them. The objective
//! is the one routing maximises (`routing::objective`), counted per offered request, so a
//! replica that lets more requests through at a good quality is worth what it adds.
//!
//! Choosing replicas under a memory budget is a knapsack. When the choices are few (every
//! combination of counts up to each version's maximum, at most [`EXACT_COMBINATIONS`]) the
//! planner tries them all and keeps the best that fits, placed by best fit as every placement
//! here; the fewest bytes win a tie. Beyond that it is greedy: starting from no replicas, add
//! the replica with the largest gain in the objective per byte among those that fit, until no
//! replica adds anything or none fits. Greedy by gain per byte is the classic heuristic, not
//! exact: a version may only pay off at two replicas.

use switchyard_runtimes::Device;

use super::ledger::{Ledger, Reservation};
use crate::routing::objective::{self, Arm};

/// One version of the model as the planner sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct QualityDemand {
    pub version: String,
    pub quality: f64,
    /// Requests/s one replica sustains; `None` while unmeasured (one replica then carries
    /// anything).
    pub capacity_per_replica: Option<f64>,
    pub bytes_per_replica: u64,
    pub allowed: Vec<Device>,
    pub max_replicas: u32,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct QualityPlan {
    /// Replicas per version, in the order of the demands.
    pub replicas: Vec<u32>,
    /// The traffic shares the objective would choose with those replicas.
    pub shares: Vec<f64>,
    /// The objective per offered request with those replicas (refused requests count 0).
    pub value: f64,
    /// Greedy plans: the version of the replica added at each step, in order, and what it
    /// added to the objective per GiB. Empty when every combination was tried.
    pub steps: Vec<(String, f64)>,
    /// Whether memory stopped the plan while a replica would still have added quality.
    pub memory_binds: bool,
}

/// The shares and the served objective with `replicas` of each version. Every version is a
/// candidate of the routing policy, so each keeps its floor share; one without replicas has no
/// room, and that share is refused.
fn evaluate(
    demands: &[QualityDemand],
    replicas: &[u32],
    load: f64,
    utilisation: f64,
    floor: f64,
) -> (Vec<f64>, f64) {
    let arms: Vec<Arm> = demands
        .iter()
        .zip(replicas)
        .map(|(demand, &count)| Arm {
            quality: demand.quality,
            room: if count == 0 {
                Some(0.0)
            } else {
                demand
                    .capacity_per_replica
                    .map(|per| per * f64::from(count) * utilisation)
            },
        })
        .collect();
    let solution = objective::solve(&arms, load, floor);
    let value = objective::served_value(&arms, &solution.shares, load);
    (solution.shares, value)
}

/// Bounds the greedy loop whatever the demands say.
const MAX_STEPS: usize = 256;
/// Up to this much work (combinations of counts, times the replicas placed in each) the
/// planner tries every combination.
pub const EXACT_COMBINATIONS: u64 = 32_768;

/// Combinations of counts, times the replicas each places at most: the work of the exhaustive
/// search.
fn combinations(demands: &[QualityDemand]) -> u64 {
    let replicas: u64 = demands.iter().map(|d| u64::from(d.max_replicas)).sum();
    demands
        .iter()
        .fold(1u64, |product, demand| {
            product.saturating_mul(u64::from(demand.max_replicas) + 1)
        })
        .saturating_mul(replicas.max(1))
}

/// Whether `replicas` of each version fit in `ledger`, placed one by one by best fit.
fn fits(ledger: &Ledger, model: &str, demands: &[QualityDemand], replicas: &[u32]) -> bool {
    let mut trial = ledger.clone();
    for (demand, &count) in demands.iter().zip(replicas) {
        for replica in 0..count {
            let placed = trial
                .place(
                    model,
                    &demand.version,
                    demand.bytes_per_replica,
                    &demand.allowed,
                )
                .and_then(|device| {
                    trial.reserve(Reservation {
                        model: model.to_owned(),
                        version: demand.version.clone(),
                        replica,
                        device,
                        bytes: demand.bytes_per_replica,
                        measured: false,
                    })
                });
            if placed.is_err() {
                return false;
            }
        }
    }
    true
}

fn bytes_of(demands: &[QualityDemand], replicas: &[u32]) -> u64 {
    demands
        .iter()
        .zip(replicas)
        .map(|(d, &c)| d.bytes_per_replica.saturating_mul(u64::from(c)))
        .fold(0, u64::saturating_add)
}

/// Every combination of counts; the best that fits.
fn exact(
    ledger: &Ledger,
    model: &str,
    demands: &[QualityDemand],
    load: f64,
    utilisation: f64,
    floor: f64,
) -> QualityPlan {
    let mut counts = vec![0u32; demands.len()];
    let mut best: (Vec<u32>, f64, u64) = (counts.clone(), 0.0, 0);
    let mut best_unbounded = 0.0f64;
    loop {
        let (_, value) = evaluate(demands, &counts, load, utilisation, floor);
        best_unbounded = best_unbounded.max(value);
        let bytes = bytes_of(demands, &counts);
        let better = value > best.1 + 1e-12 || ((value - best.1).abs() <= 1e-12 && bytes < best.2);
        if better && fits(ledger, model, demands, &counts) {
            best = (counts.clone(), value, bytes);
        }
        // The next combination, as a mixed-radix counter.
        let mut index = 0;
        loop {
            if index == counts.len() {
                let (replicas, value, _) = best;
                let (shares, _) = evaluate(demands, &replicas, load, utilisation, floor);
                return QualityPlan {
                    steps: Vec::new(),
                    memory_binds: best_unbounded > value + 1e-12,
                    replicas,
                    shares,
                    value,
                };
            }
            counts[index] += 1;
            if counts[index] <= demands[index].max_replicas {
                break;
            }
            counts[index] = 0;
            index += 1;
        }
    }
}

/// The replicas of each version that maximise the objective within what `ledger` leaves free
/// (the model's own reservations released from it beforehand).
pub fn plan_replicas(
    mut ledger: Ledger,
    model: &str,
    demands: &[QualityDemand],
    load: f64,
    utilisation: f64,
    floor: f64,
) -> QualityPlan {
    if combinations(demands) <= EXACT_COMBINATIONS {
        return exact(&ledger, model, demands, load, utilisation, floor);
    }
    let mut replicas = vec![0u32; demands.len()];
    let (_, mut value) = evaluate(demands, &replicas, load, utilisation, floor);
    let mut steps = Vec::new();
    let mut memory_binds = false;
    for _ in 0..MAX_STEPS {
        let mut best: Option<(usize, Device, f64, f64)> = None;
        let mut gain_without_room = false;
        for (index, demand) in demands.iter().enumerate() {
            if replicas[index] >= demand.max_replicas {
                continue;
            }
            let mut trial = replicas.clone();
            trial[index] += 1;
            let (_, trial_value) = evaluate(demands, &trial, load, utilisation, floor);
            let gain = trial_value - value;
            if gain <= 1e-12 {
                continue;
            }
            let Ok(device) = ledger.place(
                model,
                &demand.version,
                demand.bytes_per_replica,
                &demand.allowed,
            ) else {
                gain_without_room = true;
                continue;
            };
            let per_byte = gain / demand.bytes_per_replica.max(1) as f64;
            if best.is_none_or(|(_, _, _, best_per_byte)| per_byte > best_per_byte) {
                best = Some((index, device, trial_value, per_byte));
            }
        }
        let Some((index, device, trial_value, per_byte)) = best else {
            memory_binds = gain_without_room;
            break;
        };
        let demand = &demands[index];
        let reservation = Reservation {
            model: model.to_owned(),
            version: demand.version.clone(),
            replica: replicas[index],
            device,
            bytes: demand.bytes_per_replica,
            measured: false,
        };
        if ledger.reserve(reservation).is_err() {
            memory_binds = true;
            break;
        }
        replicas[index] += 1;
        value = trial_value;
        steps.push((demand.version.clone(), per_byte * (1u64 << 30) as f64));
    }
    let (shares, value) = evaluate(demands, &replicas, load, utilisation, floor);
    QualityPlan {
        replicas,
        shares,
        value,
        steps,
        memory_binds,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::control::capacity::ledger::DeviceBudget;

    const MIB: u64 = 1 << 20;

    fn cpu(budget: u64) -> Ledger {
        Ledger::new(vec![DeviceBudget {
            id: Device::Cpu,
            budget,
        }])
    }

    fn demand(version: &str, quality: f64, capacity: f64, bytes: u64, max: u32) -> QualityDemand {
        QualityDemand {
            version: version.into(),
            quality,
            capacity_per_replica: Some(capacity),
            bytes_per_replica: bytes,
            allowed: vec![Device::Cpu],
            max_replicas: max,
        }
    }

    #[test]
    fn memory_goes_to_the_most_quality_per_byte() {
        // 300 req/s offered, 400 MiB free. The best version (0.98) needs 400 MiB a replica
        // and carries 100 req/s; the next (0.95) needs 100 MiB and carries 100 req/s: four of
        // those serve everything, one of the best serves a third.
        let demands = [
            demand("big", 0.98, 100.0, 400 * MIB, 4),
            demand("small", 0.95, 100.0, 100 * MIB, 4),
        ];
        let plan = plan_replicas(cpu(400 * MIB), "m", &demands, 300.0, 1.0, 0.0);
        assert_eq!(plan.replicas, vec![0, 3]);
        assert!((plan.value - 0.95).abs() < 1e-9, "{plan:?}");
        assert!((plan.shares[1] - 1.0).abs() < 1e-9);
        // With room for both, the best takes what it can carry and the rest spills.
        let roomy = plan_replicas(cpu(800 * MIB), "m", &demands, 300.0, 1.0, 0.0);
        assert_eq!(roomy.replicas, vec![1, 2]);
        let expected = (0.98 * 100.0 + 0.95 * 200.0) / 300.0;
        assert!((roomy.value - expected).abs() < 1e-9, "{roomy:?}");
        assert!(
            roomy.memory_binds,
            "three of the best would serve all at 0.98"
        );
        let plenty = plan_replicas(cpu(1200 * MIB), "m", &demands, 300.0, 1.0, 0.0);
        assert_eq!(plenty.replicas, vec![3, 0]);
        assert!(!plenty.memory_binds);
    }

    #[test]
    fn the_planner_stops_when_nothing_adds_quality_and_says_when_memory_binds() {
        let demands = [demand("a", 0.9, 1000.0, 100 * MIB, 8)];
        // One replica carries the load: a second adds nothing.
        let plan = plan_replicas(cpu(1000 * MIB), "m", &demands, 50.0, 0.8, 0.0);
        assert_eq!(plan.replicas, vec![1]);
        assert!(!plan.memory_binds);
        // 5000 req/s would need seven; memory holds three.
        let bound = plan_replicas(cpu(300 * MIB), "m", &demands, 5000.0, 0.8, 0.0);
        assert_eq!(bound.replicas, vec![3]);
        assert!(bound.memory_binds);
        assert!(
            (bound.value - 0.9 * 2400.0 / 5000.0).abs() < 1e-9,
            "{bound:?}"
        );
        // An unmeasured version needs one replica.
        let mut unmeasured = demands.clone();
        unmeasured[0].capacity_per_replica = None;
        let plan = plan_replicas(cpu(1000 * MIB), "m", &unmeasured, 5000.0, 0.8, 0.0);
        assert_eq!(plan.replicas, vec![1]);
    }

    /// Every count up to the maxima, with one device: fitting is a sum.
    fn brute_force(demands: &[QualityDemand], budget: u64, load: f64) -> f64 {
        let mut best = 0.0f64;
        let mut counts = vec![0u32; demands.len()];
        loop {
            let bytes: u64 = counts
                .iter()
                .zip(demands)
                .map(|(c, d)| u64::from(*c) * d.bytes_per_replica)
                .sum();
            if bytes <= budget {
                best = best.max(evaluate(demands, &counts, load, 1.0, 0.0).1);
            }
            let mut index = 0;
            loop {
                if index == counts.len() {
                    return best;
                }
                counts[index] += 1;
                if counts[index] <= demands[index].max_replicas {
                    break;
                }
                counts[index] = 0;
                index += 1;
            }
        }
    }

    #[test]
    fn the_plan_matches_brute_force_on_random_instances() {
        for seed in 0..300u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let demands: Vec<QualityDemand> = (0..rng.usize(1..=4))
                .map(|i| {
                    let capacity = 50.0 + rng.f64() * 200.0;
                    let bytes = rng.u64(1..=4) * 100 * MIB;
                    demand(&i.to_string(), rng.f64(), capacity, bytes, rng.u32(1..=3))
                })
                .collect();
            let budget = rng.u64(1..=10) * 100 * MIB;
            let load = rng.f64() * 800.0;
            let plan = plan_replicas(cpu(budget), "m", &demands, load, 1.0, 0.0);
            let optimum = brute_force(&demands, budget, load);
            assert!(
                (plan.value - optimum).abs() < 1e-9,
                "seed {seed}: greedy {} vs brute force {optimum}",
                plan.value
            );
        }
    }
}

#[cfg(test)]
mod greedy_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::control::capacity::ledger::DeviceBudget;

    #[test]
    fn many_combinations_are_planned_greedily_by_gain_per_byte() {
        const MIB: u64 = 1 << 20;
        // Seven versions of up to 8 replicas: 9^7 combinations, too many to try.
        let demands: Vec<QualityDemand> = (0..7)
            .map(|i| QualityDemand {
                version: i.to_string(),
                quality: 0.5 + 0.05 * f64::from(i),
                capacity_per_replica: Some(100.0),
                bytes_per_replica: if i == 6 { 800 * MIB } else { 100 * MIB },
                allowed: vec![Device::Cpu],
                max_replicas: 8,
            })
            .collect();
        assert!(combinations(&demands) > EXACT_COMBINATIONS);
        let ledger = Ledger::new(vec![DeviceBudget {
            id: Device::Cpu,
            budget: 500 * MIB,
        }]);
        let plan = plan_replicas(ledger, "m", &demands, 400.0, 1.0, 0.0);
        // The best version does not fit; the next best (0.75, 100 MiB) takes four replicas
        // and carries everything.
        assert_eq!(plan.replicas, vec![0, 0, 0, 0, 0, 4, 0]);
        assert_eq!(plan.steps.len(), 4);
        assert!(plan.steps.iter().all(|(version, _)| version == "5"));
        assert!((plan.value - 0.75).abs() < 1e-9, "{plan:?}");
        assert!(
            plan.memory_binds,
            "the best version would still add quality"
        );
    }
}
