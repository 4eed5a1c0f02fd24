//! The `objective` policy's loop: every second, for each model under it, the offered load and
//! each version's capacity are measured, the shares that maximise Σ w_i·P_i within them are
//! solved for (`routing::objective`), and each version's share is stored where the request path
//! reads it without a lock (`VersionStats::planned_share`). The plan also goes to the
//! experiment report, and its figures to the capacity planner, which gives memory to the
//! versions with the most quality per byte when memory binds.
//!
//! Capacity is measured, not declared: a version's requests executed per second of compute
//! (summed over its replicas, so per replica), over the last few seconds, times its ready
//! replicas. That holds at any load, since it divides by busy time rather than wall time; it
//! includes what batching gains at the current batch sizes, so it errs low when the load grows.
//! A version whose queues refused requests in the last second carried less than it was given,
//! whatever its busy time says (a machine under contention preempts it mid-call): its capacity
//! is then at most what it answered in that second, so that the next plan moves the excess
//! away at once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use crate::control::capacity::Capacity;
use crate::core::{ModelEntry, ModelTable, VersionStatus};
use crate::routing::objective::{self, Arm, ObjectivePlan, PlannedVersion};
use crate::routing::{Experiments, PolicyMode};
use crate::version_key::VersionKey;

/// Seconds of figures behind a capacity estimate: enough executions to be steady, few enough
/// to follow a replica that slows down.
const CAPACITY_WINDOW: usize = 5;
/// Seconds of figures behind the offered load: the higher of the last two seconds' rates, so
/// that a surge is planned for at the next tick and a lull believed only after two (shares
/// are fractions of the load, so planning for less load than arrives overfills the best).
const LOAD_WINDOW: usize = 2;
/// Less compute than this in the window says too little about capacity; the last estimate
/// stands.
const MIN_BUSY_NS: u64 = 20_000_000;
/// Slices of figures shorter than this are merged into the next one.
const MIN_SLICE_S: f64 = 0.5;

/// Counters of one version at one tick.
#[derive(Clone, Copy, Default)]
struct Reading {
    at: Option<Instant>,
    routed: u64,
    reached: u64,
    answered: u64,
    refused: u64,
    executed: u64,
    busy_ns: u64,
}

/// What happened to one version between two ticks.
#[derive(Clone, Copy, Default)]
struct Delta {
    seconds: f64,
    routed: u64,
    reached: u64,
    answered: u64,
    refused: u64,
    executed: u64,
    busy_ns: u64,
}

#[derive(Default)]
struct Measured {
    last: Reading,
    deltas: VecDeque<Delta>,
    capacity_per_replica: Option<f64>,
}

impl Measured {
    fn observe(&mut self, now: Reading) {
        if let Some(then) = self.last.at
            && let Some(at) = now.at
        {
            let seconds = at.saturating_duration_since(then).as_secs_f64();
            // A tick that came late and one right after it: the short slice would make a few
            // requests look like a surge. Its counts go into the next slice instead.
            if seconds < MIN_SLICE_S {
                return;
            }
            let last = &self.last;
            let went_back = now.routed < last.routed
                || now.reached < last.reached
                || now.answered < last.answered
                || now.refused < last.refused
                || now.executed < last.executed
                || now.busy_ns < last.busy_ns;
            // A counter that went back (the version reloaded, its statistics anew) leaves this
            // slice unknown: its fields would not belong together.
            if !went_back {
                let refused = now.refused - last.refused;
                self.deltas.push_back(Delta {
                    seconds,
                    routed: now.routed - last.routed,
                    // Refusals count as failures in the statistics, but never reached a
                    // replica.
                    reached: (now.reached - last.reached).saturating_sub(refused),
                    answered: now.answered - last.answered,
                    refused,
                    executed: now.executed - last.executed,
                    busy_ns: now.busy_ns - last.busy_ns,
                });
                while self.deltas.len() > CAPACITY_WINDOW {
                    self.deltas.pop_front();
                }
            }
        }
        self.last = now;
        let (executed, busy_ns) = self
            .deltas
            .iter()
            .fold((0u64, 0u64), |(e, b), d| (e + d.executed, b + d.busy_ns));
        if busy_ns >= MIN_BUSY_NS {
            self.capacity_per_replica = Some(executed as f64 / (busy_ns as f64 / 1e9));
        }
    }

    /// The least it answered per second in a second when its queues refused requests, over
    /// the capacity window (a few refusals in a burst say nothing; a steady share of them
    /// does). Held for the window, so that the share does not swing back the next second to
    /// what the busy time claims.
    fn saturated_rate(&self) -> Option<f64> {
        self.deltas
            .iter()
            .filter(|d| d.refused >= 3 && d.refused * 100 >= d.routed.max(1))
            .map(|d| d.answered as f64 / d.seconds)
            .reduce(f64::min)
    }

    /// Requests/s the policy routed here in the second `back` ticks ago (0: the last).
    fn routed_rate(&self, back: usize) -> f64 {
        let Some(delta) = self.deltas.iter().rev().nth(back) else {
            return 0.0;
        };
        if delta.seconds <= 0.0 {
            return 0.0;
        }
        delta.routed as f64 / delta.seconds
    }

    /// Requests/s over the last `LOAD_WINDOW` seconds: (routed here by the policy, reaching
    /// here by any path).
    fn recent_rates(&self) -> (f64, f64) {
        let recent = self.deltas.iter().rev().take(LOAD_WINDOW);
        let (seconds, routed, reached) = recent.fold((0.0, 0u64, 0u64), |(s, r, h), d| {
            (s + d.seconds, r + d.routed, h + d.reached)
        });
        if seconds <= 0.0 {
            return (0.0, 0.0);
        }
        (routed as f64 / seconds, reached as f64 / seconds)
    }
}

/// The loop's memory between ticks.
#[derive(Default)]
pub struct ObjectiveLoop {
    measured: HashMap<VersionKey, Measured>,
    planned: HashSet<Arc<str>>,
}

impl ObjectiveLoop {
    /// One tick over the current table.
    pub fn tick(&mut self, table: &ModelTable, experiments: &Experiments, capacity: &Capacity) {
        let now = Instant::now();
        let mut live = HashSet::new();
        let mut plans = Vec::new();
        for model in table.models.values() {
            let PolicyMode::Objective {
                utilisation, floor, ..
            } = &model.policy.mode
            else {
                if self.planned.remove(&model.name) {
                    model
                        .versions
                        .iter()
                        .for_each(|v| v.stats.set_planned_share(None));
                    experiments.set_objective_plan(&model.name, None);
                }
                continue;
            };
            for version in &model.versions {
                let key = VersionKey::new(&model.name, &version.label);
                let reading = read(version, now);
                self.measured
                    .entry(key.clone())
                    .or_default()
                    .observe(reading);
                live.insert(key);
            }
            let plan = self.plan(model, *utilisation, *floor);
            plans.push((model.name.clone(), plan.clone()));
            experiments.set_objective_plan(&model.name, Some(plan));
            self.planned.insert(model.name.clone());
        }
        self.measured.retain(|key, _| live.contains(key));
        self.planned.retain(|name| {
            let kept = table.models.contains_key(name);
            if !kept {
                experiments.set_objective_plan(name, None);
            }
            kept
        });
        capacity.set_objective_plans(table, &plans);
    }

    /// Solves one model's shares and stores them on its versions.
    fn plan(&self, model: &ModelEntry, utilisation: f64, floor: f64) -> ObjectivePlan {
        let measured = |label: &str| self.measured.get(&VersionKey::new(&model.name, label));
        let offered_load = (0..LOAD_WINDOW)
            .map(|back| {
                model
                    .versions
                    .iter()
                    .filter_map(|version| measured(&version.label))
                    .map(|m| m.routed_rate(back))
                    .sum::<f64>()
            })
            .fold(0.0, f64::max);
        let candidates = model.candidates();
        let arms: Vec<&Arc<crate::core::VersionEntry>> = candidates
            .iter()
            .filter(|candidate| candidate.eligible && candidate.base_weight > 0.0)
            .filter_map(|candidate| model.versions.iter().find(|v| *v.label == *candidate.label))
            .collect();
        let qualities = objective::filled_qualities(arms.iter().map(|v| v.score));
        let mut planned: Vec<PlannedVersion> = Vec::with_capacity(arms.len());
        for (version, quality) in arms.iter().zip(qualities) {
            let replicas = match &version.status {
                VersionStatus::Ready(ready) => ready.replicas.replica_count(),
                _ => 0,
            };
            let figures = measured(&version.label);
            let capacity_per_replica = figures.and_then(|m| m.capacity_per_replica);
            let (routed, reached) = figures.map_or((0.0, 0.0), Measured::recent_rates);
            // Requests that reached it without the policy (pinned, mirrored) use its capacity
            // too; refused routed requests make this err low, never high.
            let pinned_load = (reached - routed).max(0.0);
            let saturated_at = figures.and_then(Measured::saturated_rate);
            let capacity = match (
                capacity_per_replica.map(|per| per * replicas as f64),
                saturated_at,
            ) {
                (Some(measured), Some(answered)) => Some(measured.min(answered)),
                (measured, answered) => measured.or(answered),
            };
            planned.push(PlannedVersion {
                version: version.label.to_string(),
                quality,
                quality_measured: version.score.is_some_and(f64::is_finite),
                capacity_per_replica,
                replicas,
                capacity,
                saturated: saturated_at.is_some(),
                pinned_load,
                room: capacity.map(|c| (c * utilisation - pinned_load).max(0.0)),
                share: 0.0,
            });
        }
        // A version not measured yet has no bound: too little compute to measure is itself the
        // sign of a fast version (capping it would push its traffic onto a slower one); a slow
        // one is measured within a tick or two, or refuses and is bounded by what it answered.
        let problem: Vec<Arm> = planned
            .iter()
            .map(|p| Arm {
                quality: p.quality,
                room: p.room,
            })
            .collect();
        let solution = objective::solve(&problem, offered_load, floor);
        for (entry, share) in planned.iter_mut().zip(&solution.shares) {
            entry.share = *share;
        }
        for version in &model.versions {
            let share = planned
                .iter()
                .find(|p| *p.version == *version.label)
                .map(|p| p.share);
            // A version out of the plan gets nothing while the others are planned.
            version.stats.set_planned_share(Some(share.unwrap_or(0.0)));
        }
        ObjectivePlan {
            offered_load,
            utilisation,
            floor: objective::capped_floor(floor, planned.len()),
            value: solution.value,
            fits: solution.fits,
            versions: planned,
        }
    }
}

fn read(version: &crate::core::VersionEntry, now: Instant) -> Reading {
    let routed = version.stats.routed_total();
    let VersionStatus::Ready(ready) = &version.status else {
        return Reading {
            at: Some(now),
            routed,
            refused: version.stats.refused_total(),
            ..Reading::default()
        };
    };
    let requests = ready.metrics.requests();
    let (success, fail) = (requests.success, requests.fail);
    let statistics = &ready.metrics.statistics;
    let refused = version.stats.refused_total();
    // Each execution once: the compute figures count a batch's time once per request in it.
    let busy_ns = statistics.busy.read().ns;
    Reading {
        at: Some(now),
        routed,
        reached: success.count + fail.count,
        answered: success.count,
        refused,
        executed: statistics.compute_infer.read().count,
        busy_ns,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::time::Duration;

    fn reading(at: Instant, routed: u64, answered: u64, refused: u64, busy_ms: u64) -> Reading {
        Reading {
            at: Some(at),
            routed,
            // Refusals count as failures in Triton's statistics.
            reached: answered + refused,
            answered,
            refused,
            executed: answered,
            busy_ns: busy_ms * 1_000_000,
        }
    }

    #[test]
    fn capacity_is_executions_per_busy_second_and_refusals_cap_it() {
        let start = Instant::now();
        let second = |n: u32| start + Duration::from_secs(u64::from(n));
        let mut measured = Measured::default();
        measured.observe(reading(second(0), 0, 0, 0, 0));
        assert_eq!(measured.capacity_per_replica, None, "nothing measured yet");
        // 100 answered in 400 ms of compute: 250/s per replica, not refusing.
        measured.observe(reading(second(1), 100, 100, 0, 400));
        assert!((measured.capacity_per_replica.unwrap() - 250.0).abs() < 1e-9);
        assert_eq!(measured.saturated_rate(), None);
        assert_eq!(measured.recent_rates(), (100.0, 100.0));
        // Next second: 300 routed, 180 answered, 120 refused.
        measured.observe(reading(second(2), 400, 280, 120, 1100));
        assert_eq!(measured.saturated_rate(), Some(180.0));
        assert!((measured.routed_rate(0) - 300.0).abs() < 1e-9);
        assert!((measured.routed_rate(1) - 100.0).abs() < 1e-9);
        // Refused requests never reached a replica: nothing came pinned.
        let (routed, reached) = measured.recent_rates();
        assert!((routed - 200.0).abs() < 1e-9 && (reached - 140.0).abs() < 1e-9);
        // Two refusals in a burst are not saturation, but the last saturation holds for the
        // capacity window.
        measured.observe(reading(second(3), 700, 578, 122, 2300));
        assert_eq!(measured.deltas.back().unwrap().refused, 2);
        assert_eq!(measured.saturated_rate(), Some(180.0));
        // A slice under half a second waits for the next tick.
        measured.observe(reading(
            second(3) + Duration::from_millis(100),
            710,
            580,
            122,
            2310,
        ));
        assert_eq!(measured.deltas.len(), 3);
        measured.observe(reading(second(4), 800, 678, 122, 2700));
        assert_eq!(measured.deltas.len(), 4);
        assert_eq!(measured.deltas.back().unwrap().routed, 100);
        // Counters that go back (a reload) leave that slice out rather than mixing fields.
        measured.observe(reading(second(5), 900, 5, 122, 10));
        assert_eq!(measured.deltas.len(), 4);
        measured.observe(reading(second(6), 1000, 105, 122, 410));
        assert_eq!(measured.deltas.len(), 5);
        assert_eq!(measured.deltas.back().unwrap().answered, 100);
        for seconds in 7..20 {
            measured.observe(reading(second(seconds), 1000, 105, 122, 410));
        }
        assert_eq!(measured.deltas.len(), CAPACITY_WINDOW);
        assert_eq!(
            measured.saturated_rate(),
            None,
            "saturation forgotten after the window"
        );
    }
}
