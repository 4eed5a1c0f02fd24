//! The replicas of a version: each is a worker thread with its own runtime session behind a
//! bounded queue; the set grows and shrinks while it serves, and picks the replica each
//! request goes to.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use switchyard_runtimes::{
    Device, LoadOptions, LoadedModel, NamedTensor, Runtime, RuntimeError, Signature, memory,
};
use tokio::sync::oneshot;

use crate::error::{ErrorKind, GatewayError};
use crate::priority::Priority;
use crate::serving::batching::Batching;
use crate::serving::joining::JoinAxes;
use crate::serving::threads::{self, Threads};
use crate::serving::warmup::{Warmup, WarmupOutcome, measuring_inputs, warm_up};
use crate::serving::worker::{FirstRun, IdleWait, Job, JobQueue, Worker, deadline_passed};
use crate::telemetry::VersionMetrics;
use crate::telemetry::tracing::TRACE_TARGET;

/// One replica: the sending side of its queue and the count of requests it holds.
pub(super) struct Replica {
    pub(super) jobs: SyncSender<Job>,
    pub(super) outstanding: Arc<AtomicUsize>,
    /// Stable within the version: names the worker thread and the replica's reservation.
    pub(super) index: u32,
    pub(super) device: Device,
    /// Memory the load and warm-up took on the device, where it can be measured.
    pub(super) memory_bytes: Option<u64>,
    /// What its first request added, measured when it had no warm-up.
    pub(super) first_run_bytes: Arc<OnceLock<u64>>,
    /// Closed when its worker thread has ended and its model is unloaded.
    pub(super) unloaded: tokio::sync::watch::Receiver<()>,
}

impl Replica {
    /// Its memory on the device: the load's and warm-up's, and its first request's when it ran
    /// cold.
    fn measured_bytes(&self) -> Option<u64> {
        let first_run = self.first_run_bytes.get().copied().unwrap_or(0);
        self.memory_bytes.map(|bytes| bytes + first_run)
    }
}

/// A replica taken out of service: it answers what it holds, then unloads.
#[derive(Clone)]
pub struct RemovedReplica {
    unloaded: tokio::sync::watch::Receiver<()>,
}

/// Why a version's last cold start failed, and when it is tried again.
pub(super) struct ColdFailure {
    reason: String,
    retry_at: Instant,
}

impl RemovedReplica {
    /// Waits until its worker has answered what it held and unloaded its model.
    pub async fn unloaded(mut self) {
        // The sender is dropped when the worker thread ends.
        while self.unloaded.changed().await.is_ok() {}
    }
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
    /// Loads one replica on its own thread. `measured`: what a replica of this version took
    /// on a device the first time it was measured. Once known, a load on that device runs
    /// beside others and reports that; until then it runs alone, so that its memory is its own.
    pub(super) async fn start(
        load: &ReplicaLoad,
        batching: Batching,
        index: u32,
        device: Device,
        thread_name: String,
        measured: &Arc<OnceLock<(Device, u64)>>,
    ) -> Result<(Replica, Loaded), RuntimeError> {
        let measured = measured.clone();
        let ReplicaLoad {
            runtime,
            artifact,
            mut options,
            warmup,
            queue_capacity,
            metrics,
            worker_spin,
            nice,
            threads,
        } = load.clone();
        options.device = device;
        let most_threads = options.intra_op_threads;
        options.intra_op_threads = threads.to_load(most_threads);
        let (jobs, queue) = mpsc::sync_channel::<Job>(queue_capacity);
        let outstanding = Arc::new(AtomicUsize::new(0));
        let (loaded_tx, loaded_rx) = oneshot::channel();
        let worker_outstanding = outstanding.clone();
        let first_run_bytes = Arc::new(OnceLock::new());
        let worker_first_run = first_run_bytes.clone();
        let configured_max_batch = batching.configured_max_batch_size;
        let (unloaded_tx, unloaded) = tokio::sync::watch::channel(());
        std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                // Dropped last, when the thread ends: the model is gone by then.
                let _unloaded = unloaded_tx;
                // A FIFO or a device would block the runtime's open, and with it every load:
                // refused here, before the loading lock.
                if std::fs::metadata(&artifact).is_ok_and(|metadata| !metadata.is_file()) {
                    let _ = loaded_tx.send(Err(RuntimeError::Load {
                        path: artifact.clone(),
                        message: "not a regular file".into(),
                    }));
                    return;
                }
                // Measured on this device already: it runs beside other such loads.
                let known = measured
                    .get()
                    .filter(|(on, _)| *on == options.device)
                    .map(|(_, bytes)| *bytes);
                let turn = LoadingTurn::take(known.is_none());
                // On a GPU the process may hold nothing before its first load there.
                let before = memory::in_use(options.device).unwrap_or(0);
                let loaded = runtime.load(&artifact, &options).and_then(|mut model| {
                    let load_error = |message: String| RuntimeError::Load {
                        path: artifact.clone(),
                        message,
                    };
                    let max_batch_size = Batching::resolve(configured_max_batch, model.signature())
                        .map_err(load_error)?;
                    let (warmed, inputs) = warm_up(model.as_mut(), &warmup, max_batch_size > 0)
                        .map_err(|message| {
                            load_error(format!(
                                "the warm-up run failed: {message} (the [warmup] table of \
                                     model.toml, or model_warmup in config.pbtxt, sets its \
                                     input shapes and values, or turns it off)"
                            ))
                        })?;
                    Ok((model, max_batch_size, warmed, inputs))
                });
                let (mut model, max_batch_size, warmed, inputs) = match loaded {
                    Ok(loaded) => loaded,
                    Err(error) => {
                        let _ = loaded_tx.send(Err(error));
                        return;
                    }
                };
                let memory_bytes = known.or_else(|| {
                    let bytes =
                        memory::in_use(options.device).map(|after| after.saturating_sub(before));
                    // Only a whole measure: a replica without a warm-up measures its first
                    // call later, on top of this.
                    if let Some(bytes) = bytes
                        && !warmed.skipped()
                    {
                        let _ = measured.set((options.device, bytes));
                    }
                    bytes
                });
                if let Threads::Measured(decided) = &threads
                    && decided.get().is_none()
                {
                    // An image's size where the warm-up guessed a small one, if the model takes
                    // it; else the warm-up's own inputs.
                    let mut measuring = inputs;
                    if matches!(warmed, WarmupOutcome::Synthetic(_))
                        && let Some(larger) =
                            measuring_inputs(model.as_ref(), &warmup, max_batch_size > 0)
                        && model.run(&larger).is_ok()
                    {
                        measuring = larger;
                    }
                    let chosen;
                    (model, chosen) = measure_threads(
                        model,
                        &*runtime,
                        &artifact,
                        &options,
                        most_threads,
                        &measuring,
                    );
                    let _ = decided.set(chosen);
                }
                drop(turn);
                // Once loaded: loading and warming up run at the default priority, beside the
                // replicas already serving.
                set_nice(nice);
                let first_run = (warmed.skipped() && known.is_none()).then(|| FirstRun {
                    bytes: worker_first_run.clone(),
                    device: options.device,
                });
                let _ = loaded_tx.send(Ok(Loaded {
                    signature: model.signature().clone(),
                    max_batch_size,
                    memory_bytes,
                    warmup: warmed,
                }));
                Worker {
                    model,
                    queue: JobQueue::new(queue, worker_outstanding.clone()),
                    batching: Batching {
                        max_batch_size,
                        ..batching
                    },
                    outstanding: worker_outstanding,
                    metrics,
                    idle: IdleWait::new(worker_spin),
                    first_run,
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
            first_run_bytes,
            unloaded,
        };
        Ok((replica, loaded))
    }
}

/// The first replica of a version whose thread count is left to the gateway: `model` ran its
/// warm-up on one thread; when that call is long enough, a copy with `most` threads is loaded
/// and the two are timed against each other on the same input, and the faster one is kept
/// (see `serving::threads`). Returns
/// the model kept and its thread count.
fn measure_threads(
    mut model: Box<dyn LoadedModel>,
    runtime: &dyn Runtime,
    artifact: &std::path::Path,
    options: &LoadOptions,
    most: usize,
    inputs: &[NamedTensor],
) -> (Box<dyn LoadedModel>, usize) {
    let name = std::thread::current().name().unwrap_or("worker").to_owned();
    if most <= 1 || inputs.is_empty() {
        return (model, 1);
    }
    // One version measures at a time: two versions loading together would each time their
    // threads against the other's calls. (Another process busy on the cores still can; then
    // one thread is kept, and `intra_op_threads` overrides it.)
    static MEASURING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _measuring = MEASURING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(one) = threads::median_call(model.as_mut(), inputs) else {
        return (model, 1);
    };
    if one < threads::MEASURE_FROM {
        tracing::info!(thread = %name, call_us = one.as_micros() as u64, "one intra-op thread: the warm-up call is too short to gain from more");
        return (model, 1);
    }
    let more = LoadOptions {
        intra_op_threads: most,
        ..options.clone()
    };
    let timed = runtime.load(artifact, &more).ok().and_then(|mut many| {
        threads::fastest_calls(model.as_mut(), many.as_mut(), inputs)
            .map(|(one, time)| (many, one, time))
    });
    match timed {
        Some((many, one, time)) if threads::worth_it(one, time) => {
            tracing::info!(thread = %name, threads = most, one_us = one.as_micros() as u64, many_us = time.as_micros() as u64, "intra-op threads measured: more are faster");
            (many, most)
        }
        Some((_, one, time)) => {
            tracing::info!(thread = %name, threads = 1, one_us = one.as_micros() as u64, many_us = time.as_micros() as u64, "intra-op threads measured: one is as fast");
            (model, 1)
        }
        None => (model, 1),
    }
}

/// Gives the calling worker thread its nice value, as Triton gives its backend threads theirs:
/// a model whose calls take milliseconds can go before the I/O threads when the cores are
/// short (they wait for it rather than it for them), one whose calls are short can give way.
/// Best effort: going below 0 needs CAP_SYS_NICE, and without it the thread keeps running at
/// the default.
fn set_nice(nice: i32) {
    if nice == 0 {
        return;
    }
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("worker");
    #[cfg(target_os = "linux")]
    match rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice) {
        Ok(()) => tracing::debug!(thread = name, nice, "worker thread at its nice value"),
        Err(error) => tracing::warn!(
            thread = name,
            nice,
            %error,
            "cannot give the worker thread its nice value (below 0 needs CAP_SYS_NICE); it runs at the default"
        ),
    }
    #[cfg(not(target_os = "linux"))]
    tracing::warn!(thread = name, nice, "nice is only applied on Linux");
}

/// Woken when a request starts waiting for a version that holds no replica: the capacity's
/// task decides at once whether and where to load one ([`cold_waiter_arrived`]).
static COLD_WAITER: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Resolves when a request has started waiting for a replica since the last call (or the
/// first time it is awaited, if one did before).
pub async fn cold_waiter_arrived() {
    COLD_WAITER.notified().await;
}

/// Held while a replica loads and warms up: alone (written) while it is measured, shared
/// (read) by loads whose size is already known.
pub(super) static LOADING: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// A load's turn under [`LOADING`], held until it is loaded and warm.
enum LoadingTurn {
    /// It measures its memory: no other load runs meanwhile.
    Alone {
        _turn: std::sync::RwLockWriteGuard<'static, ()>,
    },
    /// Its size is known: it runs beside other such loads.
    Beside {
        _turn: std::sync::RwLockReadGuard<'static, ()>,
    },
}

impl LoadingTurn {
    fn take(alone: bool) -> LoadingTurn {
        if alone {
            LoadingTurn::Alone {
                _turn: LOADING.write().unwrap_or_else(|p| p.into_inner()),
            }
        } else {
            LoadingTurn::Beside {
                _turn: LOADING.read().unwrap_or_else(|p| p.into_inner()),
            }
        }
    }
}

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
    /// How long a worker whose queue ran dry polls it before it sleeps
    /// (`serving.worker_spin`).
    pub worker_spin: Duration,
    /// The worker thread's nice value (`serving.nice`); 0 leaves it as it is.
    pub nice: i32,
    /// Whether `options.intra_op_threads` is the count, or the most a measurement may choose.
    pub threads: Threads,
}

/// What a replica reports once loaded.
pub(super) struct Loaded {
    pub(super) signature: Signature,
    pub(super) max_batch_size: usize,
    /// Memory the load and warm-up took on the replica's device, where it can be measured.
    pub(super) memory_bytes: Option<u64>,
    pub(super) warmup: WarmupOutcome,
}

/// The replicas of one version, which can grow and shrink while it serves. Dropping it closes
/// their queues: each worker finishes the requests already queued, then unloads its model and
/// exits; so does a replica taken out by `remove_replica`.
pub struct ReplicaSet {
    pub(super) replicas: ArcSwap<Vec<Arc<Replica>>>,
    pub(super) signature: Signature,
    pub(super) batching: Batching,
    pub(super) queue_capacity: usize,
    pub(super) load: ReplicaLoad,
    pub(super) thread_name: String,
    pub(super) next_index: AtomicU32,
    /// The replica count as it changes, for requests waiting on a cold start.
    pub(super) count: tokio::sync::watch::Sender<usize>,
    /// Requests waiting for a replica while the version is scaled to zero.
    pub(super) cold_waiters: AtomicUsize,
    /// Why the last cold start failed, and when it is tried again: until then requests are
    /// answered with it.
    pub(super) cold_failure: arc_swap::ArcSwapOption<ColdFailure>,
    /// How its first replica was warmed up (the others ran the same).
    pub(super) warmup: WarmupOutcome,
    /// What a replica took on its device when first measured ([`Replica::start`]).
    pub(super) measured: Arc<OnceLock<(Device, u64)>>,
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
        let measured = Arc::new(OnceLock::new());
        let mut signature = Signature::default();
        let mut warmup = WarmupOutcome::Skipped("no replica loaded".into());
        for (index, device) in (0u32..).zip(devices) {
            let (replica, loaded) = Replica::start(
                &load,
                batching.clone(),
                index,
                *device,
                format!("{thread_name}#{index}"),
                &measured,
            )
            .await?;
            replicas.push(Arc::new(replica));
            signature = loaded.signature;
            batching.max_batch_size = loaded.max_batch_size;
            warmup = loaded.warmup;
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
            cold_failure: arc_swap::ArcSwapOption::empty(),
            warmup,
            measured,
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
            &self.measured,
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
        self.cold_failure.store(None);
        self.count.send_replace(self.replicas.load().len());
        Ok(added)
    }

    /// Takes the replica `index` out of service, even the last one (an eviction): requests
    /// already queued on it are still answered, then its model is unloaded. Returns it, or
    /// `None` if it is not in service.
    pub fn remove_replica_at(&self, index: u32) -> Option<RemovedReplica> {
        let mut removed = None;
        self.replicas.rcu(|current| {
            let mut next = Vec::clone(current);
            removed = next
                .iter()
                .position(|replica| replica.index == index)
                .map(|at| next.remove(at));
            next
        });
        let removed = removed?;
        self.count.send_replace(self.replicas.load().len());
        Some(RemovedReplica {
            unloaded: removed.unloaded.clone(),
        })
    }

    /// A cold start that failed: the requests waiting for it are answered with `reason` now,
    /// and so are those that come before `retry_at`.
    pub fn fail_cold_start(&self, reason: &str, retry_at: Instant) {
        self.cold_failure.store(Some(Arc::new(ColdFailure {
            reason: reason.to_owned(),
            retry_at,
        })));
        // Wakes the waiters, whose condition now holds.
        self.count.send_modify(|_| {});
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
    pub(super) async fn wait_for_replica(
        &self,
        deadline: Option<Instant>,
    ) -> Result<(), GatewayError> {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let failed = |reason: &str| {
            GatewayError::unavailable(format!(
                "the version holds no replica and its load failed: {reason} (it is tried \
                 again after a backoff; see /v1/resources)"
            ))
        };
        if let Some(failure) = self.cold_failure.load_full() {
            if Instant::now() < failure.retry_at {
                return Err(failed(&failure.reason));
            }
            // Its backoff has passed: this request waits for the next try.
            self.cold_failure
                .compare_and_swap(&Some(failure), None::<Arc<ColdFailure>>);
        }
        self.cold_waiters.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&self.cold_waiters);
        // The capacity's round decides the load: now rather than at its next tick.
        COLD_WAITER.notify_one();
        if let Some(metrics) = &self.load.metrics {
            metrics.cold_wait();
        }
        let mut count = self.count.subscribe();
        let until = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(30));
        let up_or_failed = count.wait_for(|count| *count > 0 || self.cold_failure.load().is_some());
        match tokio::time::timeout_at(until.into(), up_or_failed).await {
            Ok(Ok(_)) => match self.cold_failure.load_full() {
                Some(failure) if self.replicas.load().is_empty() => Err(failed(&failure.reason)),
                _ => Ok(()),
            },
            _ => Err(GatewayError::unavailable(
                "the version holds no replica (scaled to zero or evicted) and none came up \
                 before the request's deadline (a cold start: see /v1/resources for why)",
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
            .filter_map(|replica| replica.measured_bytes())
            .max()
    }

    /// How its replicas were warmed up.
    pub fn warmup(&self) -> &WarmupOutcome {
        &self.warmup
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

    pub(super) fn is_full(&self, replica: &Replica) -> bool {
        replica.outstanding.load(Ordering::Relaxed) >= self.room_for(Priority::HIGHEST)
    }

    /// The requests a replica may hold when one of `priority` comes: its queue, of which
    /// lower priorities may fill less (so that under overload they are refused first), and
    /// what its worker may hold, a whole batch and one job that did not fit it.
    pub(super) fn room_for(&self, priority: Priority) -> usize {
        let in_worker = self.batching.max_batch_size.max(1) + usize::from(self.batching.enabled());
        let queue = (self.queue_capacity as f64 * priority.queue_share()).ceil() as usize;
        queue.max(1) + in_worker
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
    pub(super) fn pick(replicas: &[Arc<Replica>]) -> Option<&Arc<Replica>> {
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
        priority: Priority,
    ) -> Result<(Vec<NamedTensor>, Duration), GatewayError> {
        let rows = if self.batching.enabled() {
            inputs
                .first()
                .and_then(|input| input.tensor.shape().first().copied())
                .unwrap_or(0)
        } else {
            0
        };
        let (outputs, compute, _) = self
            .submit(inputs, deadline, priority, rows, None, None)
            .await?;
        Ok((outputs, compute))
    }

    /// Queues one call of a sequence on the replica the sequence is pinned to (`pinned`, an
    /// index; the least loaded one for a new sequence, or when that replica was scaled away),
    /// where it may join other sequences' calls along `join`'s axes (waiting for them when
    /// `open_sequences` say more may come). Also returns the index of the replica that ran it.
    pub async fn infer_sequence(
        &self,
        inputs: Vec<NamedTensor>,
        deadline: Option<Instant>,
        pinned: Option<u32>,
        join: &Arc<JoinAxes>,
        open_sequences: usize,
        priority: Priority,
    ) -> Result<(Vec<NamedTensor>, Duration, u32), GatewayError> {
        let extent = join.extent(&inputs);
        let company = open_sequences.div_ceil(self.replica_count().max(1));
        self.submit(
            inputs,
            deadline,
            priority,
            extent,
            Some((join.clone(), company)),
            pinned,
        )
        .await
    }

    /// Puts `job` on the queue of the pinned replica, or of the better of two picked, or of
    /// any with room; the index of the replica it went to. A replica that was unloading (an
    /// eviction took it after the pick) gives the job back, to be tried again. Not async: the
    /// replica list's guard must not be held across an await (clippy.toml).
    // The job comes back by value, as from `enqueue`.
    #[allow(clippy::result_large_err)]
    fn enqueue_on_a_replica(&self, pinned: Option<u32>, job: Job) -> Result<u32, Unqueued> {
        let replicas = self.replicas.load();
        let Some(replica) = pinned
            .and_then(|index| replicas.iter().find(|replica| replica.index == index))
            .or_else(|| ReplicaSet::pick(&replicas))
        else {
            return Err(Unqueued::Gone(job));
        };
        let room = self.room_for(job.priority);
        let mut index = replica.index;
        let mut attempt = enqueue(replica, job, room);
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
                index = other.index;
                attempt = enqueue(other, job, room);
            }
        }
        match attempt {
            Ok(()) => Ok(index),
            Err(TrySendError::Full(_)) => Err(Unqueued::Refused(GatewayError::new(
                ErrorKind::Overloaded,
                "the model's queue is full; retry shortly",
            ))),
            Err(TrySendError::Disconnected(job)) => Err(Unqueued::Gone(job)),
        }
    }

    async fn submit(
        &self,
        inputs: Vec<NamedTensor>,
        deadline: Option<Instant>,
        priority: Priority,
        rows: usize,
        join: Option<(Arc<JoinAxes>, usize)>,
        pinned: Option<u32>,
    ) -> Result<(Vec<NamedTensor>, Duration, u32), GatewayError> {
        let (reply, outputs) = oneshot::channel();
        let mut job = Job {
            inputs,
            span: tracing::Span::current(),
            queued: crate::telemetry::tracing::child(
                || tracing::debug_span!(target: TRACE_TARGET, "queue"),
            ),
            rows,
            enqueued: Instant::now(),
            deadline,
            priority,
            company: join.as_ref().map_or(0, |(_, company)| *company),
            join: join.map(|(axes, _)| axes),
            reply,
        };
        // An eviction may empty the set, or take the replica picked, between the wait and the
        // enqueue: wait for a replica again.
        let mut tries = 0;
        let index = loop {
            if self.replicas.load().is_empty() {
                self.wait_for_replica(deadline).await?;
            }
            match self.enqueue_on_a_replica(pinned, job) {
                Ok(index) => break index,
                Err(Unqueued::Refused(error)) => return Err(error),
                Err(Unqueued::Gone(back)) if tries < 3 => {
                    job = back;
                    tries += 1;
                }
                Err(Unqueued::Gone(_)) => {
                    return Err(GatewayError::unavailable(
                        "the version's replicas were unloaded as the request reached them",
                    ));
                }
            }
        };
        let answered = match deadline {
            None => outputs.await,
            Some(deadline) => tokio::time::timeout_at(deadline.into(), outputs)
                .await
                .map_err(|_| deadline_passed())?,
        };
        let (outputs, compute) = answered
            .map_err(|_| GatewayError::internal("the model's worker stopped before answering"))??;
        Ok((outputs, compute, index))
    }
}

// The refused job comes back by value, to be offered to another replica; boxing it would
// allocate on the request path.
#[allow(clippy::result_large_err)]
/// Puts `job` on `replica`'s queue if the replica holds fewer than `room` requests. The
/// worker moves queued jobs into its priority lanes as it looks for work, so the channel's own
/// bound does not bound them: the count of requests the replica holds does.
pub(super) fn enqueue(replica: &Replica, job: Job, room: usize) -> Result<(), TrySendError<Job>> {
    let held = replica.outstanding.fetch_add(1, Ordering::Relaxed);
    if held >= room {
        replica.outstanding.fetch_sub(1, Ordering::Relaxed);
        return Err(TrySendError::Full(job));
    }
    replica.jobs.try_send(job).inspect_err(|_| {
        replica.outstanding.fetch_sub(1, Ordering::Relaxed);
    })
}

/// Why a job is not on a queue: refused (its queue full), or given back because the replica
/// picked was unloading, or none was left.
// By value, as `enqueue`'s refusal: boxing it would allocate on the request path.
#[allow(clippy::large_enum_variant)]
enum Unqueued {
    Refused(GatewayError),
    Gone(Job),
}

pub(super) fn info(replica: &Arc<Replica>) -> ReplicaInfo {
    ReplicaInfo {
        index: replica.index,
        device: replica.device,
        memory_bytes: replica.memory_bytes,
        outstanding: replica.outstanding.load(Ordering::Relaxed),
    }
}
