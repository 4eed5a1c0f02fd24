//! The batcher and the queue, driven through a small model whose calls can be held at a
//! gate, so that what waits in the queue is known exactly.

use std::path::Path;
use std::sync::{Condvar, Mutex};

use switchyard_runtimes::{DataType, TensorSpec};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_runtimes::{
    Device, LoadOptions, LoadedModel, NamedTensor, Runtime, RuntimeError, Signature, Tensor,
};

use super::batching::*;
use super::replicas::*;
use super::threads::Threads;
use super::warmup::Warmup;
use super::worker::{IdleWait, Waited};
use crate::error::{ErrorKind, GatewayError};
use crate::priority::Priority;
use crate::tasks::{self, TaskKind};

static TEST_INFER: TaskKind = TaskKind::new("test_infer");

fn test_load(runtime: Arc<dyn Runtime>, queue_capacity: usize) -> ReplicaLoad {
    ReplicaLoad {
        runtime,
        artifact: PathBuf::from("none"),
        options: LoadOptions::default(),
        warmup: Warmup {
            enabled: false,
            configured: false,
            dims: Default::default(),
            fill: Default::default(),
            random: Default::default(),
        },
        queue_capacity,
        metrics: None,
        worker_spin: crate::config::DEFAULT_WORKER_SPIN,
        nice: 0,
        threads: Threads::Fixed,
    }
}

/// y = 2 x for x [batch, 2]; records the rows of each call and can hold calls at a gate.
#[derive(Clone, Default)]
struct Doubler {
    calls: Arc<Mutex<Vec<usize>>>,
    /// The first value of each call's input, in the order the calls ran.
    firsts: Arc<Mutex<Vec<f32>>>,
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
        if let Some(first) = floats(x).first() {
            self.doubler.firsts.lock().unwrap().push(*first);
        }
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

/// Batches of up to eight rows, the first waiting up to `max_queue_delay` for company.
fn batches_of_eight(max_queue_delay: Duration) -> Batching {
    Batching {
        max_batch_size: 0,
        configured_max_batch_size: Some(8),
        max_queue_delay,
        preferred_batch_sizes: Vec::new(),
    }
}

async fn start(
    doubler: &Doubler,
    max_queue_delay: Duration,
    queue_capacity: usize,
) -> Arc<ReplicaSet> {
    let set = ReplicaSet::start(
        test_load(Arc::new(doubler.clone()), queue_capacity),
        batches_of_eight(max_queue_delay),
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
    submit_at(set, inputs, deadline, Priority::DEFAULT)
}

fn submit_at(
    set: &Arc<ReplicaSet>,
    inputs: Vec<NamedTensor>,
    deadline: Option<Instant>,
    priority: Priority,
) -> tokio::task::JoinHandle<Result<Vec<NamedTensor>, GatewayError>> {
    let set = set.clone();
    tasks::spawn(&TEST_INFER, async move {
        set.infer(inputs, deadline, priority)
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
    let error = set
        .infer(rows(1, 0.0), Some(too_soon), Priority::DEFAULT)
        .await
        .err()
        .unwrap();
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
            Priority::DEFAULT,
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
    let refused = set
        .infer(rows(1, 2.0), None, Priority::DEFAULT)
        .await
        .unwrap_err();
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
    assert!(
        set.infer(rows(2, 0.0), None, Priority::DEFAULT)
            .await
            .is_ok()
    );
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

/// /proc's directory of this process's thread named `name`.
#[cfg(target_os = "linux")]
fn thread_dir(name: &str) -> Option<std::path::PathBuf> {
    std::fs::read_dir("/proc/self/task")
        .ok()?
        .flatten()
        .map(|task| task.path())
        .find(|task| {
            std::fs::read_to_string(task.join("comm")).is_ok_and(|comm| comm.trim() == name)
        })
}

/// The fields of /proc's stat line of this process's thread named `name`, from the state on
/// (field 3 of proc(5) is index 0).
#[cfg(target_os = "linux")]
fn thread_stat(name: &str) -> Option<Vec<String>> {
    let task = thread_dir(name)?;
    let stat = std::fs::read_to_string(task.join("stat")).ok()?;
    // The command, in parentheses, may hold spaces: the fields start after its last ')'.
    Some(
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
    )
}

/// The nice value (field 19) of this process's thread named `name`.
#[cfg(target_os = "linux")]
fn thread_nice(name: &str) -> Option<i64> {
    thread_stat(name)?.get(16)?.parse().ok()
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_worker_thread_runs_at_its_nice_value() {
    let doubler = Doubler::default();
    let batching = batches_of_eight(Duration::ZERO);
    let mut load = test_load(Arc::new(doubler.clone()), 4);
    // Above 0: allowed without privileges, so the test holds for any user.
    load.nice = 7;
    let set = ReplicaSet::start(load, batching.clone(), &[Device::Cpu], "nice7")
        .await
        .unwrap();
    let plain = ReplicaSet::start(
        test_load(Arc::new(doubler), 4),
        batching,
        &[Device::Cpu],
        "nice0",
    )
    .await
    .unwrap();
    assert_eq!(thread_nice("nice7#0"), Some(7));
    assert_eq!(thread_nice("nice0#0"), Some(0));
    // It still serves.
    let set = Arc::new(set);
    assert!(submit(&set, rows(1, 1.0), None).await.unwrap().is_ok());
    drop(plain);
}

/// CPU time of this process's thread named `name`: the scheduler's own count in nanoseconds
/// (/proc's schedstat), else utime and stime (fields 14 and 15, in clock ticks of 10 ms).
#[cfg(target_os = "linux")]
fn thread_cpu(name: &str) -> Option<Duration> {
    let task = thread_dir(name)?;
    if let Some(ns) = std::fs::read_to_string(task.join("schedstat"))
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u64>().ok())
    {
        return Some(Duration::from_nanos(ns));
    }
    let fields = thread_stat(name)?;
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

#[test]
fn a_worker_polls_only_while_jobs_come_within_its_spin() {
    let (jobs, mut queue) = std::sync::mpsc::sync_channel::<u32>(4);
    // Wide margins, so that a busy machine's late wake-ups do not blur short and long.
    let spin = Duration::from_millis(50);
    let mut idle = IdleWait::new(spin);
    let sender = std::thread::spawn(move || {
        // Gaps of 1, 1, 1 ms (within the spin), 150, 150 ms (beyond it), then 1, 1 ms again.
        for (job, gap) in [1u64, 1, 1, 150, 150, 1, 1].into_iter().enumerate() {
            std::thread::sleep(Duration::from_millis(gap));
            jobs.send(job as u32).unwrap();
        }
    });
    let waits: Vec<Waited> = (0..7)
        .map(|job| {
            let (got, waited) = idle.next(&mut queue).expect("a job");
            assert_eq!(got, job);
            waited
        })
        .collect();
    sender.join().unwrap();
    assert_eq!(idle.next(&mut queue), None, "a closed queue ends the wait");
    let slept = |polled_first| Waited::Slept { polled_first };
    assert_eq!(
        waits,
        [
            Waited::Polled,
            Waited::Polled,
            Waited::Polled,
            // Polled the whole spin, then slept: the gap was long,
            slept(true),
            // so the next wait sleeps at once;
            slept(false),
            // a short gap again: slept at once, but short,
            slept(false),
            // so the worker polls again.
            Waited::Polled,
        ]
    );
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn an_idle_worker_stops_polling_and_sleeps() {
    let doubler = Doubler::default();
    let mut load = test_load(Arc::new(doubler), 4);
    load.worker_spin = Duration::from_millis(5);
    let set = Arc::new(
        ReplicaSet::start(
            load,
            batches_of_eight(Duration::ZERO),
            &[Device::Cpu],
            "spinner",
        )
        .await
        .unwrap(),
    );
    // A burst: each request comes within the spin of the last, so the worker polls between
    // them.
    for i in 0..50 {
        assert!(submit(&set, rows(1, i as f32), None).await.unwrap().is_ok());
    }
    // Then nothing: after one spin the worker sleeps, and a sleeping thread takes no CPU time
    // (a worker that kept polling would take a good share of 300 ms, however busy the machine).
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cpu = || thread_cpu("spinner#0").expect("the worker thread");
    let before = cpu();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = cpu() - before;
    assert!(
        idle <= Duration::from_millis(10),
        "the idle worker took {idle:?} in 300 ms"
    );
}

/// A model whose call takes `call` divided by its threads; records the thread count of each
/// load.
#[derive(Clone)]
struct Parallel {
    call: Duration,
    loads: Arc<Mutex<Vec<usize>>>,
}

struct ParallelModel {
    call: Duration,
    signature: Signature,
}

impl Runtime for Parallel {
    fn name(&self) -> &'static str {
        "parallel"
    }
    fn platform(&self) -> &'static str {
        "test"
    }
    fn load(&self, _: &Path, options: &LoadOptions) -> Result<Box<dyn LoadedModel>, RuntimeError> {
        self.loads.lock().unwrap().push(options.intra_op_threads);
        let spec = |name: &str| TensorSpec {
            name: name.into(),
            dtype: DataType::Fp32,
            dims: vec![-1, 2],
        };
        Ok(Box::new(ParallelModel {
            call: self.call / options.intra_op_threads.max(1) as u32,
            signature: Signature {
                inputs: vec![spec("x")],
                outputs: vec![spec("y")],
            },
        }))
    }
}

impl LoadedModel for ParallelModel {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn run(&mut self, inputs: &[NamedTensor]) -> Result<Vec<NamedTensor>, RuntimeError> {
        std::thread::sleep(self.call);
        Ok(vec![NamedTensor {
            name: "y".into(),
            tensor: inputs[0].tensor.clone(),
        }])
    }
}

#[tokio::test]
async fn left_to_the_gateway_threads_are_measured_once_and_kept_only_where_they_pay() {
    for (call, expected) in [
        (Duration::from_millis(4), 4),
        (Duration::from_micros(20), 1),
    ] {
        let runtime = Parallel {
            call,
            loads: Arc::default(),
        };
        let mut load = test_load(Arc::new(runtime.clone()), 4);
        load.warmup.enabled = true;
        load.options.intra_op_threads = 4;
        load.threads = Threads::measured();
        let set = ReplicaSet::start(load, batches_of_eight(Duration::ZERO), &[Device::Cpu], "t")
            .await
            .unwrap();
        let index = set.claim_index();
        set.add_replica(index, Device::Cpu).await.unwrap();
        let loads = runtime.loads.lock().unwrap().clone();
        match expected {
            // One thread first, the trial with four, then the second replica on four at once.
            4 => assert_eq!(loads, [1, 4, 4], "{call:?}"),
            // Too short a call for a trial: every replica on one thread.
            _ => assert_eq!(loads, [1, 1], "{call:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priorities_leave_the_queue_first_and_lower_ones_are_refused_first() {
    let doubler = Doubler::default();
    let one_at_a_time = Batching {
        max_batch_size: 0,
        configured_max_batch_size: Some(1),
        max_queue_delay: Duration::ZERO,
        preferred_batch_sizes: Vec::new(),
    };
    let set = Arc::new(
        ReplicaSet::start(
            test_load(Arc::new(doubler.clone()), 8),
            one_at_a_time,
            &[Device::Cpu],
            "test",
        )
        .await
        .unwrap(),
    );
    // The worker holds the first call at the gate; the rest queue behind it.
    doubler.close_gate();
    let blocker = submit(&set, rows(1, 0.0), None);
    doubler.wait_for_calls(1).await;
    // A queue of 8 and a worker that holds one call: the lowest priority may fill half the
    // queue, so 5 held in all; the highest, all of it, 9.
    let mut low = Vec::new();
    for i in 0..4 {
        low.push(submit_at(
            &set,
            rows(1, 100.0 + i as f32),
            None,
            Priority::LOWEST,
        ));
        wait_for_queue(&set, 2 + i).await;
    }
    let refused = set
        .infer(rows(1, 150.0), None, Priority::LOWEST)
        .await
        .unwrap_err();
    assert_eq!(refused.kind, ErrorKind::Overloaded, "{refused}");
    let mut high = Vec::new();
    for i in 0..4 {
        high.push(submit_at(
            &set,
            rows(1, 200.0 + i as f32),
            None,
            Priority::HIGHEST,
        ));
        wait_for_queue(&set, 6 + i).await;
    }
    let refused = set
        .infer(rows(1, 250.0), None, Priority::HIGHEST)
        .await
        .unwrap_err();
    assert_eq!(
        refused.kind,
        ErrorKind::Overloaded,
        "even the highest, once all is full"
    );
    doubler.open_gate();
    blocker.await.unwrap().unwrap();
    for call in high.into_iter().chain(low) {
        call.await.unwrap().unwrap();
    }
    // After the blocker: the high ones in their order, then the low ones in theirs.
    let firsts = doubler.firsts.lock().unwrap().clone();
    assert_eq!(
        firsts,
        [0.0, 200.0, 201.0, 202.0, 203.0, 100.0, 101.0, 102.0, 103.0]
    );
}
