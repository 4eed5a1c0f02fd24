//! The default thread count of a version, measured. More intra-op threads make a long call
//! shorter, and a short one no shorter: the threads wait for each other (spinning) in every
//! operator, and under load they take cores from the requests around them (on two cores, a
//! small MLP served 22,600 requests/s with one thread and 14,500 with two). So a version whose
//! thread count is left to the gateway loads its first replica with one thread, times its
//! warm-up input, and only a call of [`MEASURE_FROM`] or longer tries the most threads the
//! version may use: timed call for call against one thread, interleaved, they are kept if
//! their fastest call takes [`GAIN`] of one thread's fastest or less. Every
//! later replica of the version (more replicas, or again after a scale to zero) takes the
//! decision without measuring.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use switchyard_runtimes::{LoadedModel, NamedTensor};

/// The shortest single-thread call that is worth more threads.
pub const MEASURE_FROM: Duration = Duration::from_micros(250);
/// More threads are kept when the call takes this share of its one-thread time or less.
pub const GAIN: f64 = 0.85;
/// Calls timed for the first look, after one untimed (the warm-up ran it once already; a new
/// model's first call still allocates).
const TIMED_CALLS: usize = 5;
/// Calls of each thread count in the comparison.
const INTERLEAVED_CALLS: usize = 7;

/// How a version's replicas get their intra-op threads.
#[derive(Clone, Debug)]
pub enum Threads {
    /// As configured (`intra_op_threads` or Triton's `intra_op_thread_count`).
    Fixed,
    /// Up to the load options' count, measured on the first replica; the decision is shared
    /// by every replica of the version.
    Measured(Arc<OnceLock<usize>>),
}

impl Threads {
    pub fn measured() -> Threads {
        Threads::Measured(Arc::new(OnceLock::new()))
    }

    /// The count a replica loads with: the configured one, the decision, or one thread until
    /// the first replica has measured.
    pub(super) fn to_load(&self, most: usize) -> usize {
        match self {
            Threads::Fixed => most,
            Threads::Measured(decided) => decided.get().copied().unwrap_or(1),
        }
    }
}

/// The median time of a call on `inputs`; `None` when a call fails.
pub(super) fn median_call(model: &mut dyn LoadedModel, inputs: &[NamedTensor]) -> Option<Duration> {
    model.run(inputs).ok()?;
    let mut times = Vec::with_capacity(TIMED_CALLS);
    for _ in 0..TIMED_CALLS {
        let started = Instant::now();
        model.run(inputs).ok()?;
        times.push(started.elapsed());
    }
    times.sort_unstable();
    Some(times[TIMED_CALLS / 2])
}

/// The fastest call of each model on `inputs`, their calls interleaved (one, many, one, ...):
/// whatever else the machine does while they are timed (another version loading, a neighbour)
/// falls on both alike, and only makes a call slower, so the fastest is the one to compare.
/// `None` when a call fails.
pub(super) fn fastest_calls(
    one: &mut dyn LoadedModel,
    many: &mut dyn LoadedModel,
    inputs: &[NamedTensor],
) -> Option<(Duration, Duration)> {
    let time = |model: &mut dyn LoadedModel| {
        let started = Instant::now();
        model.run(inputs).ok().map(|_| started.elapsed())
    };
    // The new model's first call still allocates.
    time(many)?;
    let (mut fastest_one, mut fastest_many) = (Duration::MAX, Duration::MAX);
    for _ in 0..INTERLEAVED_CALLS {
        fastest_one = fastest_one.min(time(one)?);
        fastest_many = fastest_many.min(time(many)?);
    }
    Some((fastest_one, fastest_many))
}

/// Whether `many` threads' call time earns its threads over `one`'s.
pub(super) fn worth_it(one: Duration, many: Duration) -> bool {
    one >= MEASURE_FROM && many.as_secs_f64() <= one.as_secs_f64() * GAIN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_threads_are_kept_only_for_long_calls_they_shorten() {
        let us = Duration::from_micros;
        assert!(worth_it(us(14_000), us(9_000)), "a CNN: 14 ms, 9 ms on two");
        assert!(!worth_it(us(14_000), us(13_000)), "not enough gain");
        assert!(!worth_it(us(6), us(3)), "a small MLP: too short to measure");
        let threads = Threads::measured();
        assert_eq!(threads.to_load(4), 1, "one thread until measured");
        if let Threads::Measured(decided) = &threads {
            decided.set(4).unwrap();
        }
        assert_eq!(threads.to_load(4), 4);
        assert_eq!(Threads::Fixed.to_load(3), 3);
    }
}
