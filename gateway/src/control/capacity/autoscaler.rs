//! The autoscaler: a version's replica count from its observed concurrency, within its bounds
//! and the budget, with delays and a dead band so that it does not flap. Pure: the caller
//! passes `Instant`s in and tests drive a synthetic clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScalingPolicy {
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// Concurrent requests one replica should carry.
    pub target_concurrency: f64,
    /// Smoothing window for the observed concurrency.
    pub window: Duration,
    pub scale_up_delay: Duration,
    pub scale_down_delay: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub from: u32,
    pub to: u32,
    pub reason: String,
}

/// Replicas may run this fraction over target before one is added, and must land this
/// fraction under target before one is removed. A steady load always lies inside the
/// band of the count it settles on, so a steady load cannot oscillate.
const HYSTERESIS: f64 = 0.1;

#[derive(Debug, Clone)]
pub struct Autoscaler {
    policy: ScalingPolicy,
    samples: VecDeque<(Instant, f64)>,
    /// Count proposed and since when the proposal has pointed the same way.
    pending: Option<(u32, Instant)>,
}

/// The replicas that carry `load` (concurrency over the target per replica), given `held`
/// now: more once the load passes what `held` carries by the dead band, fewer once it falls
/// below it by as much, so that a load on the edge does not flap.
fn replicas_for(load: f64, held: Option<u32>) -> u32 {
    // Float-to-int `as` saturates (NaN -> 0), which is the clamping wanted here.
    let ceil = |x: f64| x.ceil() as u32;
    let up = ceil(load / (1.0 + HYSTERESIS));
    let down = ceil(load / (1.0 - HYSTERESIS));
    match held {
        None => ceil(load),
        Some(held) if up > held => up,
        Some(held) => held.min(down),
    }
}

impl Autoscaler {
    pub fn new(policy: ScalingPolicy) -> Autoscaler {
        Autoscaler {
            policy,
            samples: VecDeque::new(),
            pending: None,
        }
    }

    /// Records requests queued + running on the version at `now`.
    pub fn observe(&mut self, now: Instant, concurrency: f64) {
        // A NaN would poison the mean for a whole window; a broken probe is no information.
        if !concurrency.is_finite() {
            return;
        }
        self.samples.push_back((now, concurrency.max(0.0)));
        while let Some(&(at, _)) = self.samples.front() {
            if now.saturating_duration_since(at) <= self.policy.window {
                break;
            }
            self.samples.pop_front();
        }
    }

    /// The mean concurrency over the window; `None` with no recent sample.
    pub fn mean(&self, now: Instant) -> Option<f64> {
        let (sum, count) = self
            .samples
            .iter()
            .filter(|(at, _)| now.saturating_duration_since(*at) <= self.policy.window)
            .fold((0.0, 0u32), |(sum, count), (_, value)| {
                (sum + value, count + 1)
            });
        (count > 0).then(|| sum / f64::from(count))
    }

    /// ceil(mean / target) clamped to the policy, ignoring the budget; `min_replicas`
    /// with no recent samples. For display.
    pub fn desired(&self, now: Instant) -> u32 {
        self.target(now, None, u32::MAX).0
    }

    /// With `current`, the hysteresis band applies; `budget_cap` wins over `min_replicas`
    /// because replicas that do not fit cannot run anyway.
    fn target(&self, now: Instant, current: Option<u32>, budget_cap: u32) -> (u32, String) {
        let policy = &self.policy;
        let window = policy.window.as_secs_f64();
        let (unbounded, mut reason) = match (self.mean(now), current) {
            (None, held) => (
                held.unwrap_or(policy.min_replicas),
                format!("no load observed in the last {window:.1}s"),
            ),
            (Some(mean), held) => {
                let count = replicas_for(mean / policy.target_concurrency, held);
                let reason = format!(
                    "mean concurrency {mean:.1} over the last {window:.1}s at a target of {:.1} \
                     per replica calls for {count}",
                    policy.target_concurrency
                );
                (count, reason)
            }
        };
        let max = policy.max_replicas.max(policy.min_replicas);
        let mut desired = unbounded.max(policy.min_replicas);
        if desired > max {
            desired = max;
            reason.push_str(&format!(", capped at max_replicas {max}"));
        }
        if desired > budget_cap {
            desired = budget_cap;
            reason.push_str(&format!(", capped at {budget_cap} by the memory budget"));
        }
        (desired, reason)
    }

    /// Some(decision) when the count should change now: the desired count must have
    /// stayed on the same side of `current` for the matching delay (zero = at once),
    /// then the count jumps straight to the latest desired value.
    pub fn decide(&mut self, now: Instant, current: u32, budget_cap: u32) -> Option<Decision> {
        let (desired, reason) = self.target(now, Some(current), budget_cap);
        if desired == current {
            self.pending = None;
            return None;
        }
        let going_up = desired > current;
        let since = match self.pending {
            Some((proposed, since)) if (proposed > current) == going_up => since,
            _ => now,
        };
        let delay = if going_up {
            self.policy.scale_up_delay
        } else {
            self.policy.scale_down_delay
        };
        let waited = now.saturating_duration_since(since);
        if waited < delay {
            self.pending = Some((desired, since));
            return None;
        }
        self.pending = None;
        Some(Decision {
            from: current,
            to: desired,
            reason: format!(
                "scale {} from {current} to {desired} after {:.1}s: {reason}",
                if going_up { "up" } else { "down" },
                waited.as_secs_f64()
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(
        min_replicas: u32,
        max_replicas: u32,
        target: f64,
        up: u64,
        down: u64,
    ) -> ScalingPolicy {
        ScalingPolicy {
            min_replicas,
            max_replicas,
            target_concurrency: target,
            window: Duration::from_secs(2),
            scale_up_delay: Duration::from_secs(up),
            scale_down_delay: Duration::from_secs(down),
        }
    }

    struct Trace {
        scaler: Autoscaler,
        start: Instant,
        ticks: u32,
        replicas: u32,
        events: Vec<(Duration, Decision)>,
    }

    impl Trace {
        fn new() -> Trace {
            let scaler = Autoscaler::new(policy(1, 5, 4.0, 1, 5));
            let start = Instant::now();
            Trace {
                scaler,
                start,
                ticks: 0,
                replicas: 1,
                events: Vec::new(),
            }
        }

        fn elapsed(&self) -> Duration {
            Duration::from_millis(100) * self.ticks
        }

        /// Samples every 100 ms and applies each decision at once.
        fn run(&mut self, seconds: u32, budget_cap: u32, load: impl Fn(u32) -> f64) {
            for _ in 0..seconds * 10 {
                self.ticks += 1;
                let now = self.start + self.elapsed();
                self.scaler.observe(now, load(self.ticks));
                if let Some(decision) = self.scaler.decide(now, self.replicas, budget_cap) {
                    assert_eq!(decision.from, self.replicas);
                    self.replicas = decision.to;
                    self.events.push((self.elapsed(), decision));
                }
            }
        }

        fn events_since(&self, since: Duration) -> Vec<(Duration, Decision)> {
            self.events
                .iter()
                .filter(|(at, _)| *at > since)
                .cloned()
                .collect()
        }
    }

    #[test]
    fn autoscaler_follows_a_synthetic_load_trace() {
        let mut trace = Trace::new();
        assert_eq!(trace.scaler.decide(trace.start, 1, 5), None);
        trace.run(5, 5, |_| 2.0);
        assert!(trace.events.is_empty());

        let step = trace.elapsed();
        trace.run(5, 5, |_| 14.0);
        let ups = trace.events_since(step);
        let after_delay =
            |(at, d): &(Duration, Decision)| *at >= step + Duration::from_secs(1) && d.to > d.from;
        assert!(ups.iter().all(after_delay), "{ups:?}");
        let (reached_at, reached) = ups.iter().find(|(_, d)| d.to == 4).unwrap();
        assert!(*reached_at <= step + Duration::from_secs(3), "{ups:?}");
        assert!(
            reached
                .reason
                .contains("mean concurrency 14.0 over the last 2.0s at a target of 4.0")
        );
        assert_eq!(trace.replicas, 4);

        let surge = trace.elapsed();
        trace.run(4, 5, |_| 100.0);
        let surges = trace.events_since(surge);
        assert_eq!((trace.replicas, surges.len()), (5, 1));
        assert!(surges[0].1.reason.contains("capped at max_replicas 5"));

        let drop = trace.elapsed();
        trace.run(10, 5, |_| 1.0);
        let downs = trace.events_since(drop);
        assert_eq!(downs.len(), 1, "{downs:?}");
        assert!(downs[0].0 >= drop + Duration::from_secs(5));
        assert_eq!((downs[0].1.from, downs[0].1.to), (5, 1));
        assert_eq!(trace.scaler.desired(trace.start + trace.elapsed()), 1);
    }

    #[test]
    fn autoscaler_never_exceeds_the_budget_cap() {
        let mut trace = Trace::new();
        trace.run(5, 3, |_| 100.0);
        assert_eq!((trace.replicas, trace.events.len()), (3, 1));
        assert!(
            trace.events[0]
                .1
                .reason
                .contains("capped at 3 by the memory budget")
        );
    }

    #[test]
    fn steady_noisy_load_never_oscillates_after_settling() {
        let mut trace = Trace::new();
        let noisy = |tick: u32| 7.5 + f64::from(tick * 7919 % 101) / 100.0;
        trace.run(10, 5, noisy);
        let settled = trace.elapsed();
        assert_eq!(trace.replicas, 2);
        trace.run(60, 5, noisy);
        assert!(trace.events_since(settled).is_empty(), "{:?}", trace.events);
    }

    #[test]
    fn zero_delay_acts_at_once_and_no_samples_hold_the_count() {
        let mut scaler = Autoscaler::new(policy(2, 4, 1.0, 0, 0));
        let base = Instant::now();
        assert_eq!(scaler.decide(base, 3, 10), None);
        assert_eq!(scaler.decide(base, 9, 10).map(|d| d.to), Some(4));
        scaler.observe(base, 3.5);
        assert_eq!(scaler.decide(base, 2, 10).map(|d| d.to), Some(4));
        let later = base + Duration::from_secs(5);
        assert_eq!(
            (scaler.desired(later), scaler.decide(later, 3, 10)),
            (2, None)
        );
    }
}
