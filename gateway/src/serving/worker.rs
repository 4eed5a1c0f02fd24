//! A replica's worker thread: it owns the runtime session, drains the replica's bounded queue,
//! forms batches and answers each caller on its own channel. Runtimes never run on the async
//! executor.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use switchyard_runtimes::{LoadedModel, NamedTensor, RuntimeError, Tensor};
use tokio::sync::oneshot;

use crate::error::{ErrorKind, GatewayError};
use crate::priority::Priority;
use crate::serving::batching::{Batching, concatenate, split};
use crate::serving::joining::{self, JoinAxes};
use crate::telemetry::VersionMetrics;
use crate::telemetry::statistics::ExecutionTimes;
use crate::telemetry::tracing::TRACE_TARGET;

/// Outputs and the compute time of the model call that produced them.
pub(super) type Reply = oneshot::Sender<Result<(Vec<NamedTensor>, Duration), GatewayError>>;

pub(super) struct Job {
    pub(super) inputs: Vec<NamedTensor>,
    /// The request's span, parent of the spans the worker opens for it.
    pub(super) span: tracing::Span,
    /// Open while the job waits; closed when its batch starts.
    pub(super) queued: tracing::Span,
    /// Rows along the batch axis; 0 for a model without one.
    pub(super) rows: usize,
    pub(super) enqueued: Instant,
    pub(super) deadline: Option<Instant>,
    /// Higher priorities leave the queue first.
    pub(super) priority: Priority,
    /// Set for a call of a sequence: how it joins other sequences' calls (`rows` is then its
    /// extent along the join).
    pub(super) join: Option<Arc<JoinAxes>>,
    /// For a call of a sequence: how many sequences are open on its replica, so how many calls
    /// it may wait for.
    pub(super) company: usize,
    pub(super) reply: Reply,
}

impl Job {
    /// A job still worth running: its caller waits and its deadline has not passed.
    pub(super) fn answer_if_dead(self, now: Instant, outstanding: &AtomicUsize) -> Option<Job> {
        if self.reply.is_closed() {
            outstanding.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        if self.deadline.is_some_and(|deadline| now >= deadline) {
            let _ = self.reply.send(Err(deadline_passed()));
            outstanding.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(self)
    }

    /// Whether `other` can share a model call with this job: every input has the same
    /// dimensions past the batch axis.
    pub(super) fn batches_with(&self, other: &Job) -> bool {
        self.inputs.iter().all(|input| {
            find_input(other, &input.name)
                .is_some_and(|o| o.shape().get(1..) == input.tensor.shape().get(1..))
        })
    }
}

/// When a batch that `first` opens stops waiting for company: after `delay`, and never past
/// the first job's deadline.
fn flush_time(first: &Job, delay: Duration) -> Instant {
    let flush_at = first.enqueued.checked_add(delay).unwrap_or(first.enqueued);
    first
        .deadline
        .map_or(flush_at, |deadline| flush_at.min(deadline))
}

pub(super) fn find_input<'j>(job: &'j Job, name: &str) -> Option<&'j Tensor> {
    job.inputs
        .iter()
        .find(|input| input.name == name)
        .map(|input| &input.tensor)
}

pub(super) fn deadline_passed() -> GatewayError {
    GatewayError::new(
        ErrorKind::DeadlineExceeded,
        "the request's deadline passed before the model ran it",
    )
}

/// Where a worker takes its next job from: the bounded channel requests are put on, and the
/// lanes, one per priority, the worker moves them into as it looks for work. The highest
/// priority's oldest job leaves first. The lanes hold no more than the replica admits: its
/// count of requests held bounds them (`replicas::enqueue`).
pub(super) struct JobQueue {
    receiver: Receiver<Job>,
    lanes: [VecDeque<Job>; Priority::LEVELS as usize],
    waiting: usize,
    closed: bool,
    /// The replica's count of requests held, which a job dropped from a lane gives back.
    outstanding: Arc<AtomicUsize>,
    /// Jobs taken since the lanes were last swept.
    since_sweep: usize,
}

/// Jobs taken between two sweeps of the lanes for jobs whose callers have gone or whose
/// deadline has passed: under a steady load of a higher priority the lower lanes are not
/// reached, and their dead jobs would hold the replica's room.
const SWEEP_EVERY: usize = 32;

/// What a worker waits on for its next job.
pub(super) trait Source<T> {
    fn try_take(&mut self) -> Result<T, TryRecvError>;
    /// Blocks until a job comes; `None` once the queue is closed and empty.
    fn take(&mut self) -> Option<T>;
}

impl<T> Source<T> for Receiver<T> {
    fn try_take(&mut self) -> Result<T, TryRecvError> {
        self.try_recv()
    }

    fn take(&mut self) -> Option<T> {
        self.recv().ok()
    }
}

impl Source<Job> for JobQueue {
    fn try_take(&mut self) -> Result<Job, TryRecvError> {
        self.try_next()
    }

    fn take(&mut self) -> Option<Job> {
        self.next_within(None)
    }
}

impl JobQueue {
    pub(super) fn new(receiver: Receiver<Job>, outstanding: Arc<AtomicUsize>) -> JobQueue {
        JobQueue {
            receiver,
            lanes: std::array::from_fn(|_| VecDeque::new()),
            waiting: 0,
            closed: false,
            outstanding,
            since_sweep: 0,
        }
    }

    /// Answers and drops the jobs of every lane that are no longer worth running.
    fn sweep(&mut self) {
        let now = Instant::now();
        for lane in &mut self.lanes {
            if lane.is_empty() {
                continue;
            }
            let before = lane.len();
            let jobs = std::mem::take(lane);
            lane.extend(
                jobs.into_iter()
                    .filter_map(|job| job.answer_if_dead(now, &self.outstanding)),
            );
            self.waiting -= before - lane.len();
        }
    }

    /// Moves every job that has come into its priority's lane.
    fn gather(&mut self) {
        loop {
            match self.receiver.try_recv() {
                Ok(job) => self.push(job),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.closed = true;
                    return;
                }
            }
        }
    }

    fn push(&mut self, job: Job) {
        self.lanes[job.priority.index()].push_back(job);
        self.waiting += 1;
    }

    fn pop(&mut self) -> Option<Job> {
        if self.waiting == 0 {
            return None;
        }
        self.since_sweep += 1;
        if self.since_sweep >= SWEEP_EVERY {
            self.since_sweep = 0;
            self.sweep();
            if self.waiting == 0 {
                return None;
            }
        }
        let job = self.lanes.iter_mut().find_map(VecDeque::pop_front)?;
        self.waiting -= 1;
        Some(job)
    }

    /// The best job waiting now.
    pub(super) fn try_next(&mut self) -> Result<Job, TryRecvError> {
        self.gather();
        self.pop().ok_or(if self.closed {
            TryRecvError::Disconnected
        } else {
            TryRecvError::Empty
        })
    }

    /// The best job waiting, waiting for one at most `timeout` (`None`: until one comes or
    /// the queue closes).
    pub(super) fn next_within(&mut self, timeout: Option<Duration>) -> Option<Job> {
        match self.try_next() {
            Ok(job) => return Some(job),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) => {}
        }
        let first = match timeout {
            None => self.receiver.recv().ok()?,
            Some(timeout) => self.receiver.recv_timeout(timeout).ok()?,
        };
        // Others may have come with it, of a higher priority.
        self.push(first);
        self.gather();
        self.pop()
    }
}

pub(super) struct Worker {
    pub(super) model: Box<dyn LoadedModel>,
    pub(super) queue: JobQueue,
    pub(super) batching: Batching,
    pub(super) outstanding: Arc<AtomicUsize>,
    pub(super) metrics: Option<Arc<VersionMetrics>>,
    pub(super) idle: IdleWait,
    /// Set while a replica that had no warm-up has not run yet: its first call is measured.
    pub(super) first_run: Option<FirstRun>,
}

/// Where the memory a cold replica's first call takes goes.
pub(super) struct FirstRun {
    pub(super) bytes: Arc<std::sync::OnceLock<u64>>,
    pub(super) device: switchyard_runtimes::Device,
}

/// How a worker whose queue ran dry waits for the next job. Waking a thread that sleeps on
/// its queue costs tens of microseconds on a virtual machine (the futex, and the scheduler
/// bringing an idle core back), and the model's first call after a sleep runs on cold caches:
/// together most of what a small model's request costs beyond the HTTP stack at low
/// concurrency. So the worker first polls its queue for up to `spin`, yielding its core between
/// bursts of polls to the threads waiting for it, and sleeps only after that. It spins only
/// while jobs have been coming within `spin` of each other: a worker whose last gap was longer
/// sleeps at once, so a version that gets a request now and then costs no CPU between them.
pub(super) struct IdleWait {
    /// `serving.worker_spin`; zero sleeps at once.
    spin: Duration,
    /// Whether the last gap between jobs was shorter than `spin`.
    recent_gap_short: bool,
}

/// How a job was waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Waited {
    /// It came while the worker polled.
    Polled,
    /// The worker slept until it came, having polled first or not.
    Slept { polled_first: bool },
}

/// Polls of the queue between two yields of a spinning worker.
const POLLS_PER_YIELD: usize = 64;

impl IdleWait {
    pub(super) fn new(spin: Duration) -> IdleWait {
        IdleWait {
            spin,
            recent_gap_short: true,
        }
    }

    /// The next job and how it was waited for; `None` once the queue is closed and empty.
    pub(super) fn next<T>(&mut self, queue: &mut impl Source<T>) -> Option<(T, Waited)> {
        let idle_since = Instant::now();
        let poll = !self.spin.is_zero() && self.recent_gap_short;
        if poll {
            loop {
                // Polls a few dozen times (a microsecond or two) between yields: a yield is a
                // system call, and yielding after every poll cost about ten per request.
                for _ in 0..POLLS_PER_YIELD {
                    match queue.try_take() {
                        Ok(job) => return Some((job, Waited::Polled)),
                        Err(TryRecvError::Disconnected) => return None,
                        Err(TryRecvError::Empty) => std::hint::spin_loop(),
                    }
                }
                if idle_since.elapsed() >= self.spin {
                    break;
                }
                std::thread::yield_now();
            }
        }
        let job = queue.take()?;
        self.recent_gap_short = idle_since.elapsed() < self.spin;
        Some((job, Waited::Slept { polled_first: poll }))
    }
}

impl Worker {
    pub(super) fn run(mut self) {
        // A job taken from the queue that could not join the batch before it starts the next.
        let mut held: Option<Job> = None;
        loop {
            let first = match held.take() {
                Some(job) => job,
                None => match self.idle.next(&mut self.queue) {
                    Some((job, _)) => job,
                    None => return,
                },
            };
            let Some(first) = first.answer_if_dead(Instant::now(), &self.outstanding) else {
                continue;
            };
            if let Some(axes) = first.join.clone() {
                let batch = self.collect_joined(first, &axes, &mut held);
                self.run_joined(batch, &axes);
                continue;
            }
            if !self.batching.enabled() || first.rows == 0 {
                self.run_batch(vec![first]);
                continue;
            }
            let (batch, _) = self.collect_batch(first, &mut held);
            self.run_batch(batch);
        }
    }

    /// Adds queued jobs to `first` until the batch is full, reaches a preferred size, or the
    /// first job has waited `max_queue_delay`.
    pub(super) fn collect_batch(
        &mut self,
        first: Job,
        held: &mut Option<Job>,
    ) -> (Vec<Job>, usize) {
        let mut flush_at = flush_time(&first, self.batching.max_queue_delay);
        let mut rows = first.rows;
        let mut batch = vec![first];
        while rows < self.batching.max_batch_size {
            let Some(next) = self.next_queued(flush_at, true) else {
                break;
            };
            let Some(next) = next.answer_if_dead(Instant::now(), &self.outstanding) else {
                continue;
            };
            // A call of a sequence joins only its kind (`collect_joined`).
            if next.join.is_some()
                || rows + next.rows > self.batching.max_batch_size
                || !batch[0].batches_with(&next)
            {
                *held = Some(next);
                break;
            }
            rows += next.rows;
            if let Some(deadline) = next.deadline {
                flush_at = flush_at.min(deadline);
            }
            batch.push(next);
            if self.batching.preferred_batch_sizes.contains(&rows) {
                break;
            }
        }
        (batch, rows)
    }

    /// The next job in the queue; when there is none, waits for one until `flush_at` if `wait`
    /// says so. `None` ends the batch.
    fn next_queued(&mut self, flush_at: Instant, wait: bool) -> Option<Job> {
        match self.queue.try_next() {
            Ok(job) => Some(job),
            Err(TryRecvError::Disconnected) => None,
            Err(TryRecvError::Empty) => {
                let now = Instant::now();
                if !wait || now >= flush_at {
                    return None;
                }
                self.queue.next_within(Some(flush_at - now))
            }
        }
    }

    /// Adds the queued calls of other sequences that can join `first`, up to the join's bound;
    /// while fewer have come than there are sequences open, waits for them up to the join's
    /// delay (and no longer than the first call's deadline).
    fn collect_joined(
        &mut self,
        first: Job,
        axes: &Arc<JoinAxes>,
        held: &mut Option<Job>,
    ) -> Vec<Job> {
        let flush_at = flush_time(&first, axes.max_delay);
        let wanted = axes.max_calls.min(first.company.max(1));
        let mut batch = vec![first];
        while batch.len() < axes.max_calls {
            let Some(next) = self.next_queued(flush_at, batch.len() < wanted) else {
                break;
            };
            let Some(next) = next.answer_if_dead(Instant::now(), &self.outstanding) else {
                continue;
            };
            let joins = next
                .join
                .as_ref()
                .is_some_and(|theirs| Arc::ptr_eq(theirs, axes))
                && axes.joinable(&batch[0].inputs, &next.inputs);
            if !joins {
                *held = Some(next);
                break;
            }
            batch.push(next);
        }
        batch
    }

    /// Runs the calls of several sequences as one model call, each tensor joined along its
    /// axis.
    fn run_joined(&mut self, batch: Vec<Job>, axes: &JoinAxes) {
        self.run_together(
            batch,
            |batch, _| {
                let calls: Vec<&[NamedTensor]> = batch.iter().map(|job| &job.inputs[..]).collect();
                joining::join(&calls, axes)
            },
            |outputs, batch, _| {
                let extents: Vec<usize> = batch.iter().map(|job| job.rows).collect();
                joining::cut(outputs, &extents, axes)
            },
        );
    }

    /// Runs the model, turning a panic inside the runtime into an error so that the worker,
    /// and the requests queued behind it, carry on. Records the call's metrics.
    pub(super) fn call_model(
        &mut self,
        inputs: &[NamedTensor],
        jobs: &[Job],
        rows: usize,
    ) -> Result<(Vec<NamedTensor>, Duration), GatewayError> {
        let started = Instant::now();
        if let Some(metrics) = &self.metrics {
            for job in jobs {
                let queued = started.saturating_duration_since(job.enqueued);
                metrics.queue_time.record(queued.as_secs_f64());
                metrics.statistics.queue.add(1, queued);
            }
            metrics.batch_size.record(rows.max(1) as f64);
        }
        // For each traced request in the call: a "batch" span (the call it shares, with its
        // size) under the request's span, and the model's "infer" span under that.
        let spans: Vec<(tracing::Span, tracing::Span)> = jobs
            .iter()
            .filter(|job| !job.span.is_disabled())
            .map(|job| {
                let batch = tracing::debug_span!(target: TRACE_TARGET, parent: &job.span, "batch", batch_size = rows.max(1), requests = jobs.len());
                let infer = tracing::debug_span!(target: TRACE_TARGET, parent: &batch, "infer");
                (batch, infer)
            })
            .collect();
        // A replica that had no warm-up measures what its first call adds, as a load is
        // measured: while no load runs. Best effort: the worker never waits for a load to end;
        // when one runs, the next call measures instead.
        let measuring = self.first_run.as_ref().and_then(|first| {
            let lock = super::replicas::LOADING.try_write().ok()?;
            let before = switchyard_runtimes::memory::in_use(first.device)?;
            Some((lock, before))
        });
        let model = &mut self.model;
        let outputs = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.run(inputs)))
            .unwrap_or_else(|_| Err(RuntimeError::Execution("the runtime panicked".into())));
        if let Some((lock, before)) = measuring {
            if let Some(first) = self.first_run.take()
                && let Some(after) = switchyard_runtimes::memory::in_use(first.device)
            {
                let _ = first.bytes.set(after.saturating_sub(before));
            }
            drop(lock);
        }
        let outputs = outputs.map_err(GatewayError::from)?;
        let compute = started.elapsed();
        drop(spans);
        if let Some(metrics) = &self.metrics {
            metrics.compute_time.record(compute.as_secs_f64());
        }
        Ok((outputs, compute))
    }

    pub(super) fn run_alone(&mut self, job: Job) {
        if let Some(mut job) = job.answer_if_dead(Instant::now(), &self.outstanding) {
            job.queued = tracing::Span::none();
            let result = self.call_model(&job.inputs, std::slice::from_ref(&job), job.rows);
            if let (Some(metrics), Ok((_, compute))) = (&self.metrics, &result) {
                let times = ExecutionTimes {
                    infer: *compute,
                    ..ExecutionTimes::default()
                };
                metrics.statistics.execution(1, job.rows, times);
            }
            self.answer(job, result);
        }
    }

    pub(super) fn run_batch(&mut self, batch: Vec<Job>) {
        self.run_together(batch, concatenate, split);
    }

    /// Runs the jobs still worth running as one model call: `join` forms its inputs from theirs
    /// (given the rows in all), `cut` hands each job its part of the outputs. A single job runs
    /// alone; if joining, the call or cutting fails, each job runs alone, so that one request
    /// does not fail its neighbours.
    fn run_together(
        &mut self,
        batch: Vec<Job>,
        join: impl FnOnce(&[Job], usize) -> Result<Vec<NamedTensor>, GatewayError>,
        cut: impl FnOnce(Vec<NamedTensor>, &[Job], usize) -> Result<Vec<Vec<NamedTensor>>, GatewayError>,
    ) {
        // A deadline may have passed while the batch formed.
        let now = Instant::now();
        let mut batch: Vec<Job> = batch
            .into_iter()
            .filter_map(|job| job.answer_if_dead(now, &self.outstanding))
            .collect();
        if batch.len() <= 1 {
            for job in batch {
                self.run_alone(job);
            }
            return;
        }
        for job in &mut batch {
            // Closes the job's queue span: its wait is over.
            job.queued = tracing::Span::none();
        }
        let rows = batch.iter().map(|job| job.rows).sum();
        let started = Instant::now();
        let outputs = join(&batch, rows).and_then(|inputs| {
            let input = started.elapsed();
            let (outputs, compute) = self.call_model(&inputs, &batch, rows)?;
            let cutting = Instant::now();
            let per_job = cut(outputs, &batch, rows)?;
            let times = ExecutionTimes {
                input,
                infer: compute,
                output: cutting.elapsed(),
            };
            Ok((per_job, compute, times))
        });
        match outputs {
            Ok((per_job, compute, times)) => {
                if let Some(metrics) = &self.metrics {
                    metrics.statistics.execution(batch.len(), rows, times);
                }
                for (job, outputs) in batch.into_iter().zip(per_job) {
                    self.answer(job, Ok((outputs, compute)));
                }
            }
            Err(_) => {
                for job in batch {
                    self.run_alone(job);
                }
            }
        }
    }

    pub(super) fn answer(
        &self,
        job: Job,
        result: Result<(Vec<NamedTensor>, Duration), GatewayError>,
    ) {
        let _ = job.reply.send(result);
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}
