//! The replicas of a version: each is a worker thread that owns its own runtime session and
//! drains a bounded queue, forming batches from the requests waiting in it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use switchyard_runtimes::{
    Device, LoadOptions, LoadedModel, NamedTensor, Runtime, RuntimeError, Signature, Tensor,
    bytes_elements, memory,
};
use tokio::sync::oneshot;

use crate::error::{ErrorKind, GatewayError};
use crate::repository::Warmup;
use crate::telemetry::VersionMetrics;
use crate::tracing_setup::TRACE_TARGET;

/// Batch bound used when a model's inputs and outputs all start with a dynamic dimension and
/// its settings do not say otherwise.
pub const DEFAULT_MAX_BATCH_SIZE: usize = 64;

/// How a replica groups queued requests into one model call.
#[derive(Debug, Clone, PartialEq)]
pub struct Batching {
    /// Largest number of rows (along axis 0) in one call; 0 means the model has no batch axis
    /// and 1 that it has one but requests run one by one.
    pub max_batch_size: usize,
    /// The bound from the model's settings; `None` lets the model's signature decide.
    pub configured_max_batch_size: Option<usize>,
    /// How long the first request of a batch may wait for others; zero takes what is queued.
    pub max_queue_delay: Duration,
    /// Batch sizes at which a batch is sent at once.
    pub preferred_batch_sizes: Vec<usize>,
}

impl Batching {
    #[cfg(test)]
    fn none() -> Batching {
        Batching {
            max_batch_size: 0,
            configured_max_batch_size: Some(0),
            max_queue_delay: Duration::ZERO,
            preferred_batch_sizes: Vec::new(),
        }
    }

    fn enabled(&self) -> bool {
        self.max_batch_size > 1
    }

    /// Settles the batch bound once the model's signature is known: a configured bound needs
    /// every input and output to start with a dynamic dimension.
    fn resolve(configured: Option<usize>, signature: &Signature) -> Result<usize, String> {
        let batch_axis = !signature.inputs.is_empty()
            && signature
                .inputs
                .iter()
                .chain(&signature.outputs)
                .all(|spec| spec.dims.first() == Some(&-1));
        match configured {
            None if batch_axis => Ok(DEFAULT_MAX_BATCH_SIZE),
            None | Some(0) => Ok(0),
            Some(size) if batch_axis => Ok(size),
            Some(size) => Err(format!(
                "max_batch_size = {size} needs every input and output to start with a dynamic batch \
                 dimension, which this model does not have; set max_batch_size = 0"
            )),
        }
    }
}

/// Outputs and the compute time of the model call that produced them.
type Reply = oneshot::Sender<Result<(Vec<NamedTensor>, Duration), GatewayError>>;

struct Job {
    inputs: Vec<NamedTensor>,
    /// The request's span, parent of the spans the worker opens for it.
    span: tracing::Span,
    /// Open while the job waits; closed when its batch starts.
    queued: tracing::Span,
    /// Rows along the batch axis; 0 for a model without one.
    rows: usize,
    enqueued: Instant,
    deadline: Option<Instant>,
    reply: Reply,
}

impl Job {
    /// A job still worth running: its caller waits and its deadline has not passed.
    fn answer_if_dead(self, now: Instant, outstanding: &AtomicUsize) -> Option<Job> {
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
    fn batches_with(&self, other: &Job) -> bool {
        self.inputs.iter().all(|input| {
            find_input(other, &input.name)
                .is_some_and(|o| o.shape().get(1..) == input.tensor.shape().get(1..))
        })
    }
}

fn find_input<'j>(job: &'j Job, name: &str) -> Option<&'j Tensor> {
    job.inputs
        .iter()
        .find(|input| input.name == name)
        .map(|input| &input.tensor)
}

fn deadline_passed() -> GatewayError {
    GatewayError::new(
        ErrorKind::DeadlineExceeded,
        "the request's deadline passed before the model ran it",
    )
}

/// One replica: the sending side of its queue and the count of requests it holds.
struct Replica {
    jobs: SyncSender<Job>,
    outstanding: Arc<AtomicUsize>,
    /// Stable within the version: names the worker thread and the replica's reservation.
    index: u32,
    device: Device,
    /// Memory the load and warm-up took on the device, where it can be measured.
    memory_bytes: Option<u64>,
}

/// What the resource accounting needs to know of a replica.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaInfo {
    pub index: u32,
    pub device: Device,
    pub memory_bytes: Option<u64>,
    pub outstanding: usize,
}

impl Replica {
    async fn start(
        load: &ReplicaLoad,
        batching: Batching,
        index: u32,
        device: Device,
        thread_name: String,
    ) -> Result<(Replica, Loaded), RuntimeError> {
        let ReplicaLoad {
            runtime,
            artifact,
            mut options,
            warmup,
            queue_capacity,
            metrics,
        } = load.clone();
        options.device = device;
        let (jobs, queue) = mpsc::sync_channel::<Job>(queue_capacity);
        let outstanding = Arc::new(AtomicUsize::new(0));
        let (loaded_tx, loaded_rx) = oneshot::channel();
        let worker_outstanding = outstanding.clone();
        let configured_max_batch = batching.configured_max_batch_size;
        std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                // One load at a time in the process, so that each one's memory is its own.
                let _measuring = LOADING
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                // On a GPU the process may hold nothing before its first load there.
                let before = memory::in_use(options.device).unwrap_or(0);
                let loaded = runtime.load(&artifact, &options).and_then(|mut model| {
                    let load_error = |message: String| RuntimeError::Load {
                        path: artifact.clone(),
                        message,
                    };
                    let max_batch_size = Batching::resolve(configured_max_batch, model.signature())
                        .map_err(load_error)?;
                    if warmup.enabled {
                        warm_up(model.as_mut(), &warmup).map_err(|message| {
                            load_error(format!(
                                "the warm-up run failed: {message} (the [warmup] table of \
                                 model.toml sets its input shapes and values, or turns it off)"
                            ))
                        })?;
                    }
                    Ok((model, max_batch_size))
                });
                let (model, max_batch_size) = match loaded {
                    Ok(loaded) => loaded,
                    Err(error) => {
                        let _ = loaded_tx.send(Err(error));
                        return;
                    }
                };
                let memory_bytes =
                    memory::in_use(options.device).map(|after| after.saturating_sub(before));
                drop(_measuring);
                let _ = loaded_tx.send(Ok(Loaded {
                    signature: model.signature().clone(),
                    max_batch_size,
                    memory_bytes,
                }));
                Worker {
                    model,
                    queue,
                    batching: Batching {
                        max_batch_size,
                        ..batching
                    },
                    outstanding: worker_outstanding,
                    metrics,
                }
                .run();
            })
            .map_err(|e| RuntimeError::Execution(format!("cannot start a worker thread: {e}")))?;
        let loaded = loaded_rx.await.map_err(|_| {
            RuntimeError::Execution("the worker thread stopped while loading".into())
        })??;
        let replica = Replica {
            jobs,
            outstanding,
            index,
            device,
            memory_bytes: loaded.memory_bytes,
        };
        Ok((replica, loaded))
    }
}

/// Held while a replica loads, warms up and is measured.
static LOADING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What every replica of a version is loaded from.
#[derive(Clone)]
pub struct ReplicaLoad {
    pub runtime: Arc<dyn Runtime>,
    pub artifact: PathBuf,
    pub options: LoadOptions,
    pub warmup: Warmup,
    /// Requests that may wait per replica.
    pub queue_capacity: usize,
    /// Where workers record queue time, compute time and batch sizes.
    pub metrics: Option<Arc<VersionMetrics>>,
}

/// What a replica reports once loaded.
struct Loaded {
    signature: Signature,
    max_batch_size: usize,
    /// Memory the load and warm-up took on the replica's device, where it can be measured.
    memory_bytes: Option<u64>,
}

/// Runs the model once on inputs whose every element is 1 (or the configured fill), so that
/// lazy initialisation happens before the first request.
fn warm_up(model: &mut dyn LoadedModel, warmup: &Warmup) -> Result<(), String> {
    let inputs = model
        .signature()
        .inputs
        .iter()
        .map(|spec| {
            let shape = match warmup.dims.get(&spec.name) {
                Some(dims) => dims.clone(),
                None => spec
                    .dims
                    .iter()
                    .map(|&d| usize::try_from(d).unwrap_or(1))
                    .collect(),
            };
            let value = warmup.fill.get(&spec.name).copied().unwrap_or(1.0);
            Tensor::filled(spec.dtype, shape, value)
                .map(|tensor| NamedTensor {
                    name: spec.name.clone(),
                    tensor,
                })
                .map_err(|e| format!("input '{}': {e}", spec.name))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = model.run(&inputs).map_err(|e| e.to_string())?;
    if outputs.len() != model.signature().outputs.len() {
        return Err(format!(
            "it returned {} outputs for {} in the signature",
            outputs.len(),
            model.signature().outputs.len()
        ));
    }
    Ok(())
}

/// The replicas of one version, which can grow and shrink while it serves. Dropping it closes
/// their queues: each worker finishes the requests already queued, then unloads its model and
/// exits; so does a replica taken out by `remove_replica`.
pub struct ReplicaSet {
    replicas: ArcSwap<Vec<Arc<Replica>>>,
    signature: Signature,
    batching: Batching,
    queue_capacity: usize,
    load: ReplicaLoad,
    thread_name: String,
    next_index: AtomicU32,
    /// The replica count as it changes, for requests waiting on a cold start.
    count: tokio::sync::watch::Sender<usize>,
    /// Requests waiting for a replica while the version is scaled to zero.
    cold_waiters: AtomicUsize,
}

impl ReplicaSet {
    /// Loads one replica per entry of `devices` (one on the load's device if empty), one after
    /// the other (so that each one's memory is measured on its own), each on its own thread;
    /// fails if any fails to load or to warm up.
    pub async fn start(
        load: ReplicaLoad,
        mut batching: Batching,
        devices: &[Device],
        thread_name: &str,
    ) -> Result<ReplicaSet, RuntimeError> {
        let default_device = [load.options.device];
        let devices = if devices.is_empty() {
            &default_device[..]
        } else {
            devices
        };
        let mut replicas = Vec::with_capacity(devices.len());
        let mut signature = Signature::default();
        for (index, device) in (0u32..).zip(devices) {
            let (replica, loaded) = Replica::start(
                &load,
                batching.clone(),
                index,
                *device,
                format!("{thread_name}#{index}"),
            )
            .await?;
            replicas.push(Arc::new(replica));
            signature = loaded.signature;
            batching.max_batch_size = loaded.max_batch_size;
        }
        let next_index = AtomicU32::new(u32::try_from(replicas.len()).unwrap_or(u32::MAX));
        Ok(ReplicaSet {
            replicas: ArcSwap::from_pointee(replicas),
            signature,
            queue_capacity: load.queue_capacity,
            batching,
            load,
            thread_name: thread_name.to_owned(),
            next_index,
            count: tokio::sync::watch::Sender::new(devices.len()),
            cold_waiters: AtomicUsize::new(0),
        })
    }

    /// An index for a replica about to be added, so that its memory can be reserved first.
    pub fn claim_index(&self) -> u32 {
        self.next_index.fetch_add(1, Ordering::Relaxed)
    }

    /// Loads one more replica on `device` (off the request path: requests keep going to the
    /// others meanwhile) and puts it in service. `index` comes from `claim_index`.
    pub async fn add_replica(
        &self,
        index: u32,
        device: Device,
    ) -> Result<ReplicaInfo, RuntimeError> {
        let (replica, _) = Replica::start(
            &self.load,
            self.batching.clone(),
            index,
            device,
            format!("{}#{index}", self.thread_name),
        )
        .await?;
        let replica = Arc::new(replica);
        let added = info(&replica);
        let replicas = self.replicas.rcu(|current| {
            let mut next = Vec::clone(current);
            next.push(replica.clone());
            next
        });
        drop(replicas);
        self.count.send_replace(self.replicas.load().len());
        Ok(added)
    }

    /// Takes the newest replica out of service, keeping at least one; its worker finishes what
    /// it holds. Returns it.
    pub fn remove_replica(&self) -> Option<ReplicaInfo> {
        let mut removed = None;
        self.replicas.rcu(|current| {
            let mut next = Vec::clone(current);
            removed = if next.len() > 1 { next.pop() } else { None };
            next
        });
        if removed.is_some() {
            self.count.send_replace(self.replicas.load().len());
        }
        removed.as_ref().map(info)
    }

    /// Takes every replica out of service (scale to zero); each finishes what it holds. The
    /// next request waits for a cold start.
    pub fn remove_all(&self) -> Vec<ReplicaInfo> {
        let removed = self.replicas.swap(Arc::new(Vec::new()));
        self.count.send_replace(0);
        removed.iter().map(info).collect()
    }

    /// Requests waiting for a replica to come up.
    pub fn cold_waiters(&self) -> usize {
        self.cold_waiters.load(Ordering::Relaxed)
    }

    /// Waits until the version has a replica again, at most until `deadline` (30 s without).
    async fn wait_for_replica(&self, deadline: Option<Instant>) -> Result<(), GatewayError> {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.cold_waiters.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&self.cold_waiters);
        let mut count = self.count.subscribe();
        let until = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(30));
        match tokio::time::timeout_at(until.into(), count.wait_for(|count| *count > 0)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(GatewayError::unavailable(
                "the version is scaled to zero and no replica came up before the request's \
                 deadline (a cold start: see /v1/resources for why)",
            )),
        }
    }

    pub fn replicas(&self) -> Vec<ReplicaInfo> {
        self.replicas.load().iter().map(info).collect()
    }

    /// The memory one replica takes on its device: the largest measured figure.
    pub fn memory_per_replica(&self) -> Option<u64> {
        self.replicas
            .load()
            .iter()
            .filter_map(|replica| replica.memory_bytes)
            .max()
    }

    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    pub fn replica_count(&self) -> usize {
        self.replicas.load().len()
    }

    /// Whether every replica's queue is certainly full, judged without taking a place: the
    /// count of requests a replica holds, less those its worker may have taken out for the
    /// batch it runs, against the queue's capacity. Lets a front refuse a request before it
    /// spends work decoding it.
    pub fn surely_full(&self) -> bool {
        let replicas = self.replicas.load();
        // Scaled to zero: the request waits for a cold start instead.
        !replicas.is_empty() && replicas.iter().all(|replica| self.is_full(replica))
    }

    fn is_full(&self, replica: &Replica) -> bool {
        // The worker may hold a whole batch and one job that did not fit it.
        let in_worker = self.batching.max_batch_size.max(1) + usize::from(self.batching.enabled());
        replica.outstanding.load(Ordering::Relaxed) >= self.queue_capacity + in_worker
    }

    /// Requests the replicas hold, queued or running.
    pub fn outstanding(&self) -> usize {
        self.replicas
            .load()
            .iter()
            .map(|replica| replica.outstanding.load(Ordering::Relaxed))
            .sum()
    }

    /// The batch bound in force (0: the model has no batch axis).
    pub fn max_batch_size(&self) -> usize {
        self.batching.max_batch_size
    }

    /// Least outstanding work of two replicas picked at random.
    fn pick(replicas: &[Arc<Replica>]) -> Option<&Arc<Replica>> {
        let count = replicas.len();
        let first = replicas.get(fastrand::usize(..count.max(1)))?;
        if count == 1 {
            return Some(first);
        }
        let second = &replicas[fastrand::usize(..count)];
        if second.outstanding.load(Ordering::Relaxed) < first.outstanding.load(Ordering::Relaxed) {
            Some(second)
        } else {
            Some(first)
        }
    }

    /// Queues a request on a replica and waits for its outputs (and the compute time of the
    /// model call), at most until `deadline`. A full queue is refused at once.
    pub async fn infer(
        &self,
        inputs: Vec<NamedTensor>,
        deadline: Option<Instant>,
    ) -> Result<(Vec<NamedTensor>, Duration), GatewayError> {
        let rows = if self.batching.enabled() {
            inputs
                .first()
                .and_then(|input| input.tensor.shape().first().copied())
                .unwrap_or(0)
        } else {
            0
        };
        if self.replicas.load().is_empty() {
            self.wait_for_replica(deadline).await?;
        }
        let replicas = self.replicas.load();
        let replica = ReplicaSet::pick(&replicas)
            .ok_or_else(|| GatewayError::unavailable("the version has no replica"))?;
        let (reply, outputs) = oneshot::channel();
        let span = tracing::Span::current();
        let queued =
            crate::tracing_setup::child(|| tracing::debug_span!(target: TRACE_TARGET, "queue"));
        let job = Job {
            inputs,
            span,
            queued,
            rows,
            enqueued: Instant::now(),
            deadline,
            reply,
        };
        let mut attempt = enqueue(replica, job);
        if let Err(TrySendError::Full(job)) = attempt {
            // The two picked were full; a saturated replica gets no new request while another
            // has room.
            attempt = Err(TrySendError::Full(job));
            for other in replicas.iter() {
                if Arc::ptr_eq(other, replica) || self.is_full(other) {
                    continue;
                }
                let Err(TrySendError::Full(job)) = attempt else {
                    break;
                };
                attempt = enqueue(other, job);
            }
        }
        drop(replicas);
        match attempt {
            Ok(()) => {}
            Err(error) => {
                return Err(match error {
                    TrySendError::Full(_) => GatewayError::new(
                        ErrorKind::Overloaded,
                        "the model's queue is full; retry shortly",
                    ),
                    TrySendError::Disconnected(_) => {
                        GatewayError::unavailable("the model is being unloaded")
                    }
                });
            }
        }
        let answered = match deadline {
            None => outputs.await,
            Some(deadline) => tokio::time::timeout_at(deadline.into(), outputs)
                .await
                .map_err(|_| deadline_passed())?,
        };
        answered
            .map_err(|_| GatewayError::internal("the model's worker stopped before answering"))?
    }
}

// The refused job comes back by value, to be offered to another replica; boxing it would
// allocate on the request path.
#[allow(clippy::result_large_err)]
fn enqueue(replica: &Replica, job: Job) -> Result<(), TrySendError<Job>> {
    replica.outstanding.fetch_add(1, Ordering::Relaxed);
    replica.jobs.try_send(job).inspect_err(|_| {
        replica.outstanding.fetch_sub(1, Ordering::Relaxed);
    })
}

fn info(replica: &Arc<Replica>) -> ReplicaInfo {
    ReplicaInfo {
        index: replica.index,
        device: replica.device,
        memory_bytes: replica.memory_bytes,
        outstanding: replica.outstanding.load(Ordering::Relaxed),
    }
}

struct Worker {
    model: Box<dyn LoadedModel>,
    queue: Receiver<Job>,
    batching: Batching,
    outstanding: Arc<AtomicUsize>,
    metrics: Option<Arc<VersionMetrics>>,
}

impl Worker {
    fn run(mut self) {
        // A job taken from the queue that could not join the batch before it starts the next.
        let mut held: Option<Job> = None;
        loop {
            let first = match held.take() {
                Some(job) => job,
                None => match self.queue.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                },
            };
            let Some(first) = first.answer_if_dead(Instant::now(), &self.outstanding) else {
                continue;
            };
            if !self.batching.enabled() || first.rows == 0 {
                self.run_batch(vec![first], 0);
                continue;
            }
            let (batch, rows) = self.collect_batch(first, &mut held);
            self.run_batch(batch, rows);
        }
    }

    /// Adds queued jobs to `first` until the batch is full, reaches a preferred size, or the
    /// first job has waited `max_queue_delay`.
    fn collect_batch(&self, first: Job, held: &mut Option<Job>) -> (Vec<Job>, usize) {
        // No job waits for company past its own deadline.
        let mut flush_at = first
            .enqueued
            .checked_add(self.batching.max_queue_delay)
            .unwrap_or(first.enqueued);
        if let Some(deadline) = first.deadline {
            flush_at = flush_at.min(deadline);
        }
        let mut rows = first.rows;
        let mut batch = vec![first];
        while rows < self.batching.max_batch_size {
            let next = match self.queue.try_recv() {
                Ok(job) => job,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    let now = Instant::now();
                    if now >= flush_at {
                        break;
                    }
                    match self.queue.recv_timeout(flush_at - now) {
                        Ok(job) => job,
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            let Some(next) = next.answer_if_dead(Instant::now(), &self.outstanding) else {
                continue;
            };
            if rows + next.rows > self.batching.max_batch_size || !batch[0].batches_with(&next) {
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

    /// Runs the model, turning a panic inside the runtime into an error so that the worker,
    /// and the requests queued behind it, carry on. Records the call's metrics.
    fn call_model(
        &mut self,
        inputs: &[NamedTensor],
        jobs: &[Job],
        rows: usize,
    ) -> Result<(Vec<NamedTensor>, Duration), GatewayError> {
        let started = Instant::now();
        if let Some(metrics) = &self.metrics {
            for job in jobs {
                metrics.queue_time.record(
                    started
                        .saturating_duration_since(job.enqueued)
                        .as_secs_f64(),
                );
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
        let model = &mut self.model;
        let outputs = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.run(inputs)))
            .unwrap_or_else(|_| Err(RuntimeError::Execution("the runtime panicked".into())))
            .map_err(GatewayError::from)?;
        let compute = started.elapsed();
        drop(spans);
        if let Some(metrics) = &self.metrics {
            metrics.compute_time.record(compute.as_secs_f64());
        }
        Ok((outputs, compute))
    }

    fn run_alone(&mut self, job: Job) {
        if let Some(mut job) = job.answer_if_dead(Instant::now(), &self.outstanding) {
            job.queued = tracing::Span::none();
            let result = self.call_model(&job.inputs, std::slice::from_ref(&job), job.rows);
            self.answer(job, result);
        }
    }

    fn run_batch(&mut self, batch: Vec<Job>, rows: usize) {
        // A deadline may have passed while the batch formed.
        let now = Instant::now();
        let before = batch.len();
        let batch: Vec<Job> = batch
            .into_iter()
            .filter_map(|job| job.answer_if_dead(now, &self.outstanding))
            .collect();
        let rows = if batch.len() == before {
            rows
        } else {
            batch.iter().map(|job| job.rows).sum()
        };
        if batch.len() <= 1 {
            for job in batch {
                self.run_alone(job);
            }
            return;
        }
        let mut batch = batch;
        for job in &mut batch {
            // Closes the job's queue span: its wait is over.
            job.queued = tracing::Span::none();
        }
        let outputs = concatenate(&batch, rows).and_then(|inputs| {
            let (outputs, compute) = self.call_model(&inputs, &batch, rows)?;
            Ok((split(outputs, &batch, rows)?, compute))
        });
        match outputs {
            Ok((per_job, compute)) => {
                for (job, outputs) in batch.into_iter().zip(per_job) {
                    self.answer(job, Ok((outputs, compute)));
                }
            }
            // One request must not fail its neighbours: run each alone so each gets its own
            // answer.
            Err(_) => {
                for job in batch {
                    self.run_alone(job);
                }
            }
        }
    }

    fn answer(&self, job: Job, result: Result<(Vec<NamedTensor>, Duration), GatewayError>) {
        let _ = job.reply.send(result);
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Joins the jobs' inputs along axis 0, in job order.
fn concatenate(batch: &[Job], rows: usize) -> Result<Vec<NamedTensor>, GatewayError> {
    let first = &batch[0];
    first
        .inputs
        .iter()
        .map(|input| {
            let mut parts = Vec::with_capacity(batch.len());
            for job in batch {
                parts.push(find_input(job, &input.name).ok_or_else(|| {
                    GatewayError::internal(format!("batched request lacks input '{}'", input.name))
                })?);
            }
            let mut data = Vec::with_capacity(parts.iter().map(|t| t.data().len()).sum());
            for part in &parts {
                data.extend_from_slice(part.data());
            }
            let mut shape = input.tensor.shape().to_vec();
            shape[0] = rows;
            let tensor = Tensor::new(input.tensor.dtype(), shape, Bytes::from(data))
                .map_err(|e| GatewayError::internal(format!("cannot form a batch: {e}")))?;
            Ok(NamedTensor {
                name: input.name.clone(),
                tensor,
            })
        })
        .collect()
}

/// Cuts each output along axis 0 into the jobs' rows; the pieces share the output's buffer.
fn split(
    outputs: Vec<NamedTensor>,
    batch: &[Job],
    rows: usize,
) -> Result<Vec<Vec<NamedTensor>>, GatewayError> {
    let mut per_job: Vec<Vec<NamedTensor>> = batch
        .iter()
        .map(|_| Vec::with_capacity(outputs.len()))
        .collect();
    for output in outputs {
        let tensor = &output.tensor;
        if tensor.shape().first() != Some(&rows) {
            return Err(GatewayError::internal(format!(
                "output '{}' has shape {:?}, not {rows} rows along the batch axis",
                output.name,
                tensor.shape()
            )));
        }
        let offsets = row_offsets(tensor, rows)?;
        let mut row = 0;
        for (job, outputs) in batch.iter().zip(per_job.iter_mut()) {
            let data = tensor.data().slice(offsets[row]..offsets[row + job.rows]);
            let mut shape = tensor.shape().to_vec();
            shape[0] = job.rows;
            let piece = Tensor::new(tensor.dtype(), shape, data)
                .map_err(|e| GatewayError::internal(format!("cannot split a batch: {e}")))?;
            outputs.push(NamedTensor {
                name: output.name.clone(),
                tensor: piece,
            });
            row += job.rows;
        }
    }
    Ok(per_job)
}

/// Byte offset of the start of each row, plus the end.
fn row_offsets(tensor: &Tensor, rows: usize) -> Result<Vec<usize>, GatewayError> {
    let data = tensor.data();
    match tensor.dtype().element_size() {
        Some(_) => {
            let row_bytes = data.len() / rows.max(1);
            Ok((0..=rows).map(|row| row * row_bytes).collect())
        }
        None => {
            let per_row = tensor.element_count() / rows.max(1);
            let mut offsets = Vec::with_capacity(rows + 1);
            let mut offset = 0;
            for (index, element) in bytes_elements(data).enumerate() {
                if index % per_row.max(1) == 0 {
                    offsets.push(offset);
                }
                let element = element
                    .map_err(|e| GatewayError::internal(format!("malformed output: {e}")))?;
                offset += 4 + element.len();
            }
            offsets.resize(rows, offset);
            offsets.push(offset);
            Ok(offsets)
        }
    }
}

#[cfg(test)]
mod tests {
    //! The batcher and the queue, driven through a small model whose calls can be held at a
    //! gate, so that what waits in the queue is known exactly.

    use std::path::Path;
    use std::sync::{Condvar, Mutex};

    use switchyard_runtimes::{DataType, TensorSpec};

    use super::*;

    fn test_load(runtime: Arc<dyn Runtime>, queue_capacity: usize) -> ReplicaLoad {
        ReplicaLoad {
            runtime,
            artifact: PathBuf::from("none"),
            options: LoadOptions::default(),
            warmup: Warmup {
                enabled: false,
                dims: Default::default(),
                fill: Default::default(),
            },
            queue_capacity,
            metrics: None,
        }
    }

    /// y = 2 x for x [batch, 2]; records the rows of each call and can hold calls at a gate.
    #[derive(Clone, Default)]
    struct Doubler {
        calls: Arc<Mutex<Vec<usize>>>,
        gate: Arc<(Mutex<bool>, Condvar)>,
    }

    impl Doubler {
        fn close_gate(&self) {
            *self.gate.0.lock().unwrap() = true;
        }

        fn open_gate(&self) {
            *self.gate.0.lock().unwrap() = false;
            self.gate.1.notify_all();
        }

        fn calls(&self) -> Vec<usize> {
            self.calls.lock().unwrap().clone()
        }

        /// Waits until the model has been entered `count` times.
        async fn wait_for_calls(&self, count: usize) {
            for _ in 0..2000 {
                if self.calls.lock().unwrap().len() >= count {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            panic!("the model was not called {count} times");
        }
    }

    struct DoublerModel {
        doubler: Doubler,
        signature: Signature,
    }

    impl Runtime for Doubler {
        fn name(&self) -> &'static str {
            "doubler"
        }
        fn platform(&self) -> &'static str {
            "test"
        }
        fn load(&self, _: &Path, _: &LoadOptions) -> Result<Box<dyn LoadedModel>, RuntimeError> {
            let spec = |name: &str| TensorSpec {
                name: name.into(),
                dtype: DataType::Fp32,
                dims: vec![-1, 2],
            };
            Ok(Box::new(DoublerModel {
                doubler: self.clone(),
                signature: Signature {
                    inputs: vec![spec("x")],
                    outputs: vec![spec("y")],
                },
            }))
        }
    }

    impl LoadedModel for DoublerModel {
        fn signature(&self) -> &Signature {
            &self.signature
        }

        fn run(&mut self, inputs: &[NamedTensor]) -> Result<Vec<NamedTensor>, RuntimeError> {
            let x = &inputs[0].tensor;
            self.doubler.calls.lock().unwrap().push(x.shape()[0]);
            let (closed, opened) = &*self.doubler.gate;
            let mut held = closed.lock().unwrap();
            while *held {
                held = opened.wait(held).unwrap();
            }
            let y: Vec<f32> = floats(x).iter().map(|v| v * 2.0).collect();
            Ok(vec![NamedTensor {
                name: "y".into(),
                tensor: Tensor::from_slice(DataType::Fp32, x.shape().to_vec(), &y).unwrap(),
            }])
        }
    }

    fn floats(tensor: &Tensor) -> Vec<f32> {
        tensor
            .data()
            .as_chunks::<4>()
            .0
            .iter()
            .map(|c| f32::from_le_bytes(*c))
            .collect()
    }

    fn rows(count: usize, first: f32) -> Vec<NamedTensor> {
        let values: Vec<f32> = (0..count * 2).map(|i| first + i as f32).collect();
        vec![NamedTensor {
            name: "x".into(),
            tensor: Tensor::from_slice(DataType::Fp32, vec![count, 2], &values).unwrap(),
        }]
    }

    async fn start(
        doubler: &Doubler,
        max_queue_delay: Duration,
        queue_capacity: usize,
    ) -> Arc<ReplicaSet> {
        let batching = Batching {
            max_batch_size: 0,
            configured_max_batch_size: Some(8),
            max_queue_delay,
            preferred_batch_sizes: Vec::new(),
        };
        let set = ReplicaSet::start(
            test_load(Arc::new(doubler.clone()), queue_capacity),
            batching,
            &[Device::Cpu],
            "test",
        )
        .await
        .unwrap();
        assert_eq!(set.max_batch_size(), 8);
        Arc::new(set)
    }

    fn submit(
        set: &Arc<ReplicaSet>,
        inputs: Vec<NamedTensor>,
        deadline: Option<Instant>,
    ) -> tokio::task::JoinHandle<Result<Vec<NamedTensor>, GatewayError>> {
        let set = set.clone();
        tokio::spawn(async move {
            set.infer(inputs, deadline)
                .await
                .map(|(outputs, _)| outputs)
        })
    }

    async fn wait_for_queue(set: &ReplicaSet, outstanding: usize) {
        for _ in 0..2000 {
            if set.replicas()[0].outstanding == outstanding {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("never {outstanding} requests outstanding");
    }

    #[tokio::test]
    async fn replicas_come_and_go_while_the_version_serves() {
        let doubler = Doubler::default();
        let set = start(&doubler, Duration::ZERO, 16).await;
        let index = set.claim_index();
        let added = set.add_replica(index, Device::Cpu).await.unwrap();
        assert_eq!((added.index, set.replica_count()), (1, 2));
        let indices: Vec<u32> = set.replicas().iter().map(|r| r.index).collect();
        assert_eq!(indices, [0, 1]);
        // A removed replica still answers what it holds: the gate keeps its job waiting.
        doubler.close_gate();
        let held: Vec<_> = (0..12)
            .map(|i| submit(&set, rows(1, i as f32), None))
            .collect();
        doubler.wait_for_calls(2).await;
        assert_eq!(set.remove_replica().map(|r| r.index), Some(1));
        assert_eq!(set.remove_replica(), None, "the last replica stays");
        doubler.open_gate();
        for handle in held {
            assert!(handle.await.unwrap().is_ok());
        }
        assert_eq!(set.replica_count(), 1);
        assert!(submit(&set, rows(1, 9.0), None).await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn at_zero_replicas_a_request_waits_for_a_cold_start() {
        let doubler = Doubler::default();
        let set = start(&doubler, Duration::ZERO, 4).await;
        assert_eq!(set.remove_all().len(), 1);
        assert!(!set.surely_full(), "a cold start is not a full queue");
        let too_soon = Instant::now() + Duration::from_millis(50);
        let error = set.infer(rows(1, 0.0), Some(too_soon)).await.err().unwrap();
        assert_eq!(error.kind, ErrorKind::Unavailable, "{error}");
        let waiting = submit(&set, rows(1, 1.0), None);
        for _ in 0..200 {
            if set.cold_waiters() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(set.cold_waiters(), 1);
        set.add_replica(set.claim_index(), Device::Cpu)
            .await
            .unwrap();
        assert_eq!(
            floats(&waiting.await.unwrap().unwrap()[0].tensor),
            [2.0, 4.0]
        );
        assert_eq!(set.cold_waiters(), 0);
    }

    #[tokio::test]
    async fn each_replica_warms_up_on_ones_before_it_is_ready() {
        let doubler = Doubler::default();
        let mut load = test_load(Arc::new(doubler.clone()), 4);
        load.warmup.enabled = true;
        load.warmup.dims.insert("x".into(), vec![3, 2]);
        let set = ReplicaSet::start(load.clone(), Batching::none(), &[Device::Cpu; 2], "test")
            .await
            .unwrap();
        assert_eq!(doubler.calls(), [3, 3], "one warm-up run per replica");
        assert!(
            set.memory_per_replica().is_some(),
            "the CPU figure is known"
        );

        load.warmup.dims.insert("x".into(), vec![usize::MAX, 2]);
        let error = ReplicaSet::start(load, Batching::none(), &[Device::Cpu], "test")
            .await
            .err()
            .unwrap();
        assert!(error.to_string().contains("warm-up"), "{error}");
        assert_eq!(
            doubler.calls(),
            [3, 3],
            "a failed warm-up never reached the model"
        );
    }

    #[tokio::test]
    async fn concurrent_requests_form_one_batch_and_get_their_own_rows() {
        let doubler = Doubler::default();
        let set = start(&doubler, Duration::ZERO, 16).await;
        doubler.close_gate();
        let blocker = submit(&set, rows(1, 0.0), None);
        doubler.wait_for_calls(1).await;
        let waiting = [
            submit(&set, rows(2, 10.0), None),
            submit(&set, rows(1, 20.0), None),
            submit(&set, rows(3, 30.0), None),
        ];
        wait_for_queue(&set, 4).await;
        doubler.open_gate();
        assert_eq!(
            floats(&blocker.await.unwrap().unwrap()[0].tensor),
            [0.0, 2.0]
        );
        let firsts = [10.0f32, 20.0, 30.0];
        let counts = [2usize, 1, 3];
        for ((handle, first), count) in waiting.into_iter().zip(firsts).zip(counts) {
            let outputs = handle.await.unwrap().unwrap();
            let y = &outputs[0].tensor;
            assert_eq!(y.shape(), [count, 2]);
            let expected: Vec<f32> = (0..count * 2).map(|i| 2.0 * (first + i as f32)).collect();
            assert_eq!(floats(y), expected);
        }
        assert_eq!(
            doubler.calls(),
            [1, 6],
            "the three waiting requests ran as one batch"
        );
    }

    #[tokio::test]
    async fn a_batch_waits_up_to_max_queue_delay_for_company() {
        let doubler = Doubler::default();
        let delay = Duration::from_millis(300);
        let set = start(&doubler, delay, 16).await;
        let started = Instant::now();
        let first = submit(&set, rows(1, 0.0), None);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let second = submit(&set, rows(2, 5.0), None);
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        assert!(
            started.elapsed() >= delay,
            "ran after {:?}",
            started.elapsed()
        );
        assert_eq!(
            doubler.calls(),
            [3],
            "the late request joined the waiting one"
        );
    }

    #[tokio::test]
    async fn a_batch_does_not_wait_past_a_deadline_and_drops_the_late() {
        let doubler = Doubler::default();
        let set = start(&doubler, Duration::from_secs(5), 16).await;
        let started = Instant::now();
        let error = set
            .infer(
                rows(1, 0.0),
                Some(Instant::now() + Duration::from_millis(100)),
            )
            .await
            .unwrap_err();
        assert_eq!(error.kind, ErrorKind::DeadlineExceeded);
        wait_for_queue(&set, 0).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the batch stopped waiting at the deadline"
        );
        assert_eq!(
            doubler.calls(),
            Vec::<usize>::new(),
            "the late request never ran"
        );
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_at_once() {
        let doubler = Doubler::default();
        let set = start(&doubler, Duration::ZERO, 1).await;
        doubler.close_gate();
        let running = submit(&set, rows(1, 0.0), None);
        doubler.wait_for_calls(1).await;
        let queued = submit(&set, rows(1, 1.0), None);
        wait_for_queue(&set, 2).await;
        let refused = set.infer(rows(1, 2.0), None).await.unwrap_err();
        assert_eq!(refused.kind, ErrorKind::Overloaded);
        doubler.open_gate();
        assert!(running.await.unwrap().is_ok());
        assert!(queued.await.unwrap().is_ok());
        wait_for_queue(&set, 0).await;
    }

    #[tokio::test]
    async fn full_queues_are_seen_before_a_place_is_taken() {
        let doubler = Doubler::default();
        let set = ReplicaSet::start(
            test_load(Arc::new(doubler.clone()), 2),
            Batching::none(),
            &[Device::Cpu],
            "test",
        )
        .await
        .unwrap();
        let set = Arc::new(set);
        doubler.close_gate();
        let running = submit(&set, rows(1, 0.0), None);
        doubler.wait_for_calls(1).await;
        assert!(!set.surely_full());
        let queued = [
            submit(&set, rows(1, 1.0), None),
            submit(&set, rows(1, 2.0), None),
        ];
        wait_for_queue(&set, 3).await;
        assert!(
            set.surely_full(),
            "one running and two queued fill a queue of two"
        );
        doubler.open_gate();
        assert!(running.await.unwrap().is_ok());
        for handle in queued {
            assert!(handle.await.unwrap().is_ok());
        }
        wait_for_queue(&set, 0).await;
        assert!(!set.surely_full());
    }

    #[tokio::test]
    async fn a_request_whose_deadline_passes_in_the_queue_never_runs() {
        let doubler = Doubler::default();
        let set = start(&doubler, Duration::ZERO, 4).await;
        doubler.close_gate();
        let running = submit(&set, rows(1, 0.0), None);
        doubler.wait_for_calls(1).await;
        let late = submit(
            &set,
            rows(1, 1.0),
            Some(Instant::now() + Duration::from_millis(30)),
        );
        let error = late.await.unwrap().unwrap_err();
        assert_eq!(error.kind, ErrorKind::DeadlineExceeded);
        doubler.open_gate();
        assert!(running.await.unwrap().is_ok());
        assert!(set.infer(rows(2, 0.0), None).await.is_ok());
        assert_eq!(
            doubler.calls(),
            [1, 2],
            "the late request was dropped before it ran"
        );
        wait_for_queue(&set, 0).await;
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_frees_its_place_and_is_not_run() {
        let doubler = Doubler::default();
        let set = start(&doubler, Duration::ZERO, 4).await;
        doubler.close_gate();
        let running = submit(&set, rows(1, 0.0), None);
        doubler.wait_for_calls(1).await;
        let abandoned = submit(&set, rows(1, 1.0), None);
        wait_for_queue(&set, 2).await;
        abandoned.abort();
        let _ = abandoned.await;
        doubler.open_gate();
        assert!(running.await.unwrap().is_ok());
        wait_for_queue(&set, 0).await;
        assert_eq!(doubler.calls(), [1]);
    }

    #[tokio::test]
    async fn dropping_the_replicas_finishes_the_queued_work() {
        let doubler = Doubler::default();
        let set = start(&doubler, Duration::ZERO, 8).await;
        doubler.close_gate();
        let handles: Vec<_> = (0..4)
            .map(|i| submit(&set, rows(1, i as f32), None))
            .collect();
        wait_for_queue(&set, 4).await;
        drop(set);
        doubler.open_gate();
        for handle in handles {
            assert!(handle.await.unwrap().is_ok());
        }
    }

    #[test]
    fn batch_bound_follows_the_signature() {
        let spec = |dims: Vec<i64>| TensorSpec {
            name: "t".into(),
            dtype: DataType::Fp32,
            dims,
        };
        let batchable = Signature {
            inputs: vec![spec(vec![-1, 4])],
            outputs: vec![spec(vec![-1])],
        };
        let fixed = Signature {
            inputs: vec![spec(vec![2, -1, 4])],
            outputs: vec![spec(vec![-1])],
        };
        assert_eq!(
            Batching::resolve(None, &batchable),
            Ok(DEFAULT_MAX_BATCH_SIZE)
        );
        assert_eq!(Batching::resolve(Some(8), &batchable), Ok(8));
        assert_eq!(Batching::resolve(None, &fixed), Ok(0));
        assert_eq!(Batching::resolve(Some(0), &fixed), Ok(0));
        assert!(Batching::resolve(Some(4), &fixed).is_err());
    }
}
