//! The `objective` policy's optimisation: the traffic shares w_i that maximise Σ w_i·P_i, the
//! mean quality of what is served, within what each version can carry. Pure functions over
//! plain data; the control plane measures the inputs every second and stores the answer where
//! the request path reads it (`control::objective`).
//!
//! The problem, for n versions with quality P_i, offered load L (requests/s) and room c_i
//! (requests/s the version can take at the target utilisation):
//!
//! ```text
//! maximise  Σ w_i·P_i
//! subject to Σ w_i = 1,   f ≤ w_i ≤ h_i,   h_i = max(f, min(1, c_i / L))
//! ```
//!
//! where f is the exploration floor (capped at 1/n). That is a fractional knapsack with unit
//! weights: every version first gets f, then the rest of the traffic goes to the versions in
//! order of quality, each up to its bound. An exchange argument shows it optimal: moving
//! traffic from a better version to a worse one can only lower the sum. A version whose room
//! is below the floor still gets the floor, so that its figures stay measured.
//!
//! When the versions cannot carry the load together (Σ h_i < 1), no choice avoids refusals;
//! the shares are then proportional to the bounds, so that every version is equally over its
//! room and the refusals are spread rather than piled on one version.

/// One version as the optimisation sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arm {
    /// P_i: the latest score, or the weighted sum of the chosen metrics.
    pub quality: f64,
    /// c_i: requests/s it can take at the target utilisation; `None` while unmeasured, which
    /// counts as no limit.
    pub room: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Solution {
    /// w_i, in the order of the arms; they sum to 1 when there is any arm.
    pub shares: Vec<f64>,
    /// Σ w_i·P_i.
    pub value: f64,
    /// Whether the versions can carry the load together within their room.
    pub fits: bool,
}

/// What the objective chose for one model, as `GET /v1/models/{m}/experiment` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ObjectivePlan {
    /// Offered load: requests/s the policy routed, over the last seconds.
    pub offered_load: f64,
    pub utilisation: f64,
    pub floor: f64,
    /// Σ w_i·P_i of the chosen shares.
    pub value: f64,
    /// Whether the versions can carry the load together.
    pub fits: bool,
    pub versions: Vec<PlannedVersion>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct PlannedVersion {
    pub version: String,
    /// P_i; `quality_measured` says whether it is the version's own score or the mean of
    /// the others' (a version not scored yet).
    pub quality: f64,
    pub quality_measured: bool,
    /// Requests/s one replica sustains (requests executed per second of compute), when
    /// measured.
    pub capacity_per_replica: Option<f64>,
    pub replicas: usize,
    /// capacity_i: capacity per replica × ready replicas, or what it answered in the last
    /// second if that is less and its queues refused requests then (`saturated`).
    pub capacity: Option<f64>,
    pub saturated: bool,
    /// Requests/s that reach it pinned to it (not through the policy): they use its capacity.
    pub pinned_load: f64,
    /// c_i: u × capacity_i − pinned load.
    pub room: Option<f64>,
    /// w_i.
    pub share: f64,
}

/// The qualities the optimisation uses: a version without a score gets the mean of those that
/// have one (the score policy's rule), and 0 when none has.
pub fn filled_qualities(scores: impl Iterator<Item = Option<f64>> + Clone) -> Vec<f64> {
    let known: Vec<f64> = scores
        .clone()
        .flatten()
        .filter(|score| score.is_finite())
        .collect();
    let mean = if known.is_empty() {
        0.0
    } else {
        known.iter().sum::<f64>() / known.len() as f64
    };
    scores
        .map(|score| score.filter(|s| s.is_finite()).unwrap_or(mean))
        .collect()
}

/// Anything not finite and positive counts as 0: registry data and measurements are not
/// trusted to be sane.
fn non_negative(value: f64) -> f64 {
    if value.is_finite() {
        value.max(0.0)
    } else {
        0.0
    }
}

/// The exploration floor for `arms` arms: at most an equal split.
pub fn capped_floor(floor: f64, arms: usize) -> f64 {
    non_negative(floor).min(1.0 / arms.max(1) as f64)
}

/// The most share arm i may take: its room over the load, never below the floor.
fn upper_bound(arm: &Arm, load: f64, floor: f64) -> f64 {
    let bound = match arm.room {
        Some(room) if load > 0.0 => (non_negative(room) / load).min(1.0),
        _ => 1.0,
    };
    bound.max(floor)
}

/// The optimal shares (see the module's documentation). `load` is in requests/s; 0 or less
/// means no capacity binds.
pub fn solve(arms: &[Arm], load: f64, floor: f64) -> Solution {
    let n = arms.len();
    if n == 0 {
        return Solution {
            shares: Vec::new(),
            value: 0.0,
            fits: true,
        };
    }
    let load = non_negative(load);
    let floor = capped_floor(floor, n);
    let upper: Vec<f64> = arms.iter().map(|a| upper_bound(a, load, floor)).collect();
    let room: f64 = upper.iter().sum();
    let fits = room >= 1.0 - 1e-12;
    let shares = if fits {
        let mut shares = vec![floor; n];
        let mut left = 1.0 - floor * n as f64;
        let mut order: Vec<usize> = (0..n).collect();
        // Best first; ties to the lower index, so that the answer is stable between ticks.
        order.sort_by(|&a, &b| rank(&arms[b]).total_cmp(&rank(&arms[a])).then(a.cmp(&b)));
        for index in order {
            let taken = (upper[index] - floor).min(left).max(0.0);
            shares[index] += taken;
            left -= taken;
        }
        shares
    } else {
        upper.iter().map(|bound| bound / room).collect()
    };
    let value = value_of(arms, &shares);
    Solution {
        shares,
        value,
        fits,
    }
}

/// P as the objective counts it: any finite value (a weighted sum may be negative), 0 for
/// anything else.
fn quality(arm: &Arm) -> f64 {
    if arm.quality.is_finite() {
        arm.quality
    } else {
        0.0
    }
}

/// The order of preference: by P, a version whose P is not a number last.
fn rank(arm: &Arm) -> f64 {
    if arm.quality.is_finite() {
        arm.quality
    } else {
        f64::NEG_INFINITY
    }
}

/// Σ w_i·P_i.
pub fn value_of(arms: &[Arm], shares: &[f64]) -> f64 {
    arms.iter().zip(shares).map(|(a, w)| quality(a) * w).sum()
}

/// The mean quality per offered request when the refused ones count 0: Σ min(w_i·L, c_i)·P_i
/// / L. Equal to Σ w_i·P_i when everything fits; the replica planner uses it, because there a
/// replica that lets more requests through is worth something.
pub fn served_value(arms: &[Arm], shares: &[f64], load: f64) -> f64 {
    let load = non_negative(load);
    if load <= 0.0 {
        return value_of(arms, shares);
    }
    arms.iter()
        .zip(shares)
        .map(|(arm, share)| {
            let offered = share * load;
            let served = arm
                .room
                .map_or(offered, |room| offered.min(non_negative(room)));
            quality(arm) * served / load
        })
        .sum()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn arm(quality: f64, room: Option<f64>) -> Arm {
        Arm { quality, room }
    }

    fn assert_close(actual: &[f64], expected: &[f64]) {
        let close = actual.len() == expected.len()
            && actual
                .iter()
                .zip(expected)
                .all(|(a, e)| (a - e).abs() < 1e-9);
        assert!(close, "{actual:?} vs {expected:?}");
    }

    /// The LP's optimum by enumerating its vertices: at a vertex of {Σw = 1, l ≤ w ≤ h} every
    /// share but at most one sits on a bound, so trying each share as the free one and every
    /// other at its lower or upper bound finds the best vertex, hence the optimum.
    fn brute_force(arms: &[Arm], load: f64, floor: f64) -> Option<f64> {
        let n = arms.len();
        let floor = capped_floor(floor, n);
        let upper: Vec<f64> = arms.iter().map(|a| upper_bound(a, load, floor)).collect();
        let mut best: Option<f64> = None;
        for free in 0..n {
            for mask in 0u32..(1 << (n - 1)) {
                let mut shares = vec![0.0; n];
                for (bit, index) in (0..n).filter(|&index| index != free).enumerate() {
                    shares[index] = if mask & (1 << bit) != 0 {
                        upper[index]
                    } else {
                        floor
                    };
                }
                let rest = 1.0 - shares.iter().sum::<f64>();
                if rest < floor - 1e-12 || rest > upper[free] + 1e-12 {
                    continue;
                }
                shares[free] = rest;
                let value = value_of(arms, &shares);
                best = Some(best.map_or(value, |best: f64| best.max(value)));
            }
        }
        best
    }

    #[test]
    fn the_solver_matches_brute_force_on_random_instances() {
        let mut feasible = 0;
        for seed in 0..2000u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let n = rng.usize(1..=6);
            let arms: Vec<Arm> = (0..n)
                .map(|_| {
                    let room = (rng.f64() < 0.8).then(|| rng.f64() * 400.0);
                    arm(rng.f64(), room)
                })
                .collect();
            let load = rng.f64() * 1000.0;
            let floor = if rng.bool() { 0.0 } else { rng.f64() * 0.3 };
            let solution = solve(&arms, load, floor);
            let total: f64 = solution.shares.iter().sum();
            assert!(
                (total - 1.0).abs() < 1e-9,
                "seed {seed}: shares sum to {total}"
            );
            let Some(optimum) = brute_force(&arms, load, floor) else {
                assert!(!solution.fits, "seed {seed}: no vertex, yet it fits");
                continue;
            };
            feasible += 1;
            assert!(solution.fits, "seed {seed}");
            assert!(
                (solution.value - optimum).abs() < 1e-9,
                "seed {seed}: solver {} vs brute force {optimum} ({arms:?}, load {load}, floor {floor})",
                solution.value
            );
            let bound = capped_floor(floor, n);
            for (share, arm) in solution.shares.iter().zip(&arms) {
                assert!(*share >= bound - 1e-12, "seed {seed}: below the floor");
                assert!(
                    *share <= upper_bound(arm, load, bound) + 1e-12,
                    "seed {seed}: over the room"
                );
            }
        }
        // Both cases are exercised, not just the easy one.
        assert!(feasible > 500 && feasible < 2000, "{feasible} feasible");
    }

    #[test]
    fn the_best_version_takes_what_it_can_carry_and_the_rest_spills_in_order() {
        // Offered 1000 req/s: the best (0.98) can take 300, the next (0.95) 500, the worst
        // (0.80) anything.
        let arms = [
            arm(0.95, Some(500.0)),
            arm(0.98, Some(300.0)),
            arm(0.80, None),
        ];
        let solution = solve(&arms, 1000.0, 0.0);
        assert_close(&solution.shares, &[0.5, 0.3, 0.2]);
        assert!((solution.value - (0.95 * 0.5 + 0.98 * 0.3 + 0.8 * 0.2)).abs() < 1e-12);
        assert!(solution.fits);
        // Light load: everything goes to the best, but for the floors.
        let light = solve(&arms, 100.0, 0.05);
        assert_close(&light.shares, &[0.05, 0.9, 0.05]);
        // No load measured: capacity does not bind.
        assert_close(&solve(&arms, 0.0, 0.0).shares, &[0.0, 1.0, 0.0]);
    }

    #[test]
    fn an_overload_is_spread_by_room_and_bad_figures_are_tamed() {
        let arms = [arm(0.9, Some(100.0)), arm(0.5, Some(300.0))];
        let over = solve(&arms, 800.0, 0.0);
        assert!(!over.fits);
        assert_close(&over.shares, &[0.25, 0.75]);
        assert!(
            (served_value(&arms, &over.shares, 800.0) - (0.9 * 100.0 + 0.5 * 300.0) / 800.0).abs()
                < 1e-12
        );
        // NaN quality ranks last, negative room counts as none, and a floor over 1/n is an
        // equal split.
        let odd = [arm(f64::NAN, Some(-5.0)), arm(0.7, None)];
        let solution = solve(&odd, 10.0, 0.9);
        assert_close(&solution.shares, &[0.5, 0.5]);
        assert!(solve(&[], 10.0, 0.1).shares.is_empty());
        // Negative qualities (a weighted sum with a negative weight) still order the versions.
        let negative = [arm(-0.5, None), arm(-0.1, None), arm(f64::NAN, None)];
        assert_close(&solve(&negative, 10.0, 0.0).shares, &[0.0, 1.0, 0.0]);
    }
}
