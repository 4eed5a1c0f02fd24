//! The serving core driven in process with the fake runtime of the runtimes crate: no ONNX
//! Runtime, no registry, no listener. A table of two versions is published by hand and
//! `infer` must route, validate, run and report exactly as the fronts rely on.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use switchyard_gateway::core::request_id::RequestIds;
use switchyard_gateway::core::{
    Gateway, InferRequest, ModelEntry, ModelTable, ReadyVersion, TableHandle, VersionEntry,
    VersionStatus,
};
use switchyard_gateway::error::ErrorKind;
use switchyard_gateway::routing::{Experiments, TrafficPolicy, VersionStats};
use switchyard_gateway::serving::{Batching, ReplicaLoad, ReplicaSet, Threads, Warmup};
use switchyard_gateway::telemetry::Metrics;
use switchyard_gateway::version_key::VersionKey;
use switchyard_runtimes::fake::FakeRuntime;
use switchyard_runtimes::{DataType, Device, LoadOptions, NamedTensor, Tensor};

const WIDTH: usize = 4;

async fn ready_version(
    label: &str,
    runtime: FakeRuntime,
    stats: &VersionStats,
) -> Arc<ReadyVersion> {
    let metrics = Arc::new(Metrics::new(false).version("fake", label, stats.figures().clone()));
    let load = ReplicaLoad {
        runtime: Arc::new(runtime),
        artifact: "none".into(),
        options: LoadOptions::default(),
        warmup: Warmup {
            enabled: true,
            configured: false,
            dims: BTreeMap::new(),
            fill: BTreeMap::new(),
            random: Vec::new(),
        },
        queue_capacity: 8,
        metrics: Some(metrics.clone()),
        worker_spin: switchyard_gateway::config::DEFAULT_WORKER_SPIN,
        nice: 0,
        threads: Threads::Fixed,
    };
    let batching = Batching {
        max_batch_size: 0,
        configured_max_batch_size: None,
        max_queue_delay: Duration::ZERO,
        preferred_batch_sizes: Vec::new(),
    };
    let replicas = ReplicaSet::start(load, batching, &[Device::Cpu], "sy-fake")
        .await
        .unwrap();
    let max_batch_size = u32::try_from(replicas.max_batch_size()).unwrap();
    Arc::new(ReadyVersion {
        replicas,
        metrics,
        device: Device::Cpu,
        max_batch_size,
        timeout: Duration::from_secs(5),
        scaling: None,
        reserve_bytes: 0,
        artifact_bytes: 0,
        allowed: vec![Device::Cpu],
        sequence: None,
        open_sequences: Default::default(),
        always_loaded: false,
        interface: Default::default(),
        config: Default::default(),
    })
}

/// Publishes model `fake` with versions 1 (doubles) and 2 (triples), all traffic to 2.
async fn gateway(failing_two: bool) -> (Gateway, FakeRuntime) {
    let experiments = Arc::new(Experiments::default());
    let two = FakeRuntime::new(WIDTH, 3.0);
    let mut versions = Vec::new();
    for (label, runtime) in [("1", FakeRuntime::new(WIDTH, 2.0)), ("2", two.clone())] {
        let stats = experiments.version(&VersionKey::new("fake", label), None);
        versions.push(Arc::new(VersionEntry {
            label: label.into(),
            platform: "fake",
            backend: "fake",
            status: VersionStatus::Ready(ready_version(label, runtime, &stats).await),
            stats,
            score: None,
            peers: Vec::new(),
        }));
    }
    let model = ModelEntry {
        name: "fake".into(),
        versions,
        traffic: vec![("1".into(), 0), ("2".into(), 100)],
        aliases: BTreeMap::from([("stable".to_owned(), "1".into())]),
        policy: TrafficPolicy::default(),
    };
    // After the warm-up.
    two.failing.store(failing_two, Ordering::Relaxed);
    let tables = Arc::new(TableHandle::default());
    tables.publish(
        ModelTable {
            models: BTreeMap::from([(model.name.clone(), Arc::new(model))]),
        },
        7,
    );
    let ids = RequestIds::new(&[1; 64]);
    (Gateway::new(tables, experiments, ids), two)
}

fn request(version: Option<&str>, rows: usize) -> InferRequest {
    let values: Vec<f32> = (0..rows * WIDTH).map(|i| i as f32).collect();
    InferRequest {
        model: "fake".into(),
        version: version.map(str::to_owned),
        inputs: vec![NamedTensor {
            name: "x".into(),
            tensor: Tensor::from_slice(DataType::Fp32, vec![rows, WIDTH], &values).unwrap(),
        }],
        ..InferRequest::default()
    }
}

fn output(response: &switchyard_gateway::core::InferResponse) -> Vec<f32> {
    response.outputs[0]
        .tensor
        .values::<f32>()
        .unwrap()
        .into_owned()
}

#[tokio::test]
async fn infer_routes_runs_and_answers_in_process() {
    let (gateway, two) = gateway(false).await;
    assert_eq!(gateway.tables().revision(), 7);
    // No version named: the weights send it to 2, which triples.
    let response = gateway.infer(request(None, 2)).await.unwrap();
    assert_eq!(&*response.model_version, "2");
    assert_eq!(output(&response)[..3], [0.0, 3.0, 6.0]);
    assert!(response.id.as_deref().unwrap().starts_with("sy-"));
    // Pinned, and through an alias: version 1, which doubles.
    for pinned in ["1", "stable"] {
        let response = gateway.infer(request(Some(pinned), 1)).await.unwrap();
        assert_eq!(&*response.model_version, "1", "{pinned}");
        assert_eq!(output(&response), [0.0, 2.0, 4.0, 6.0]);
    }
    // Warm-up ran once on each version before it served; then two requests reached 2.
    assert_eq!(two.calls.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn refusals_carry_their_kind() {
    let (gateway, _) = gateway(false).await;
    let kind =
        |result: Result<_, switchyard_gateway::error::GatewayError>| result.unwrap_err().kind;
    let mut unknown = request(None, 1);
    unknown.model = "nope".into();
    assert_eq!(kind(gateway.infer(unknown).await), ErrorKind::NotFound);
    assert_eq!(
        kind(gateway.infer(request(Some("9"), 1)).await),
        ErrorKind::NotFound
    );
    let mut wide = request(None, 1);
    wide.inputs[0].tensor = Tensor::from_slice(DataType::Fp32, vec![1, 5], &[0f32; 5]).unwrap();
    let refused = gateway.infer(wide).await.unwrap_err();
    assert_eq!(refused.kind, ErrorKind::InvalidArgument);
    assert!(
        refused.message.contains("shape [1, 5]"),
        "{}",
        refused.message
    );
    let mut late = request(None, 1);
    late.deadline = Some(std::time::Instant::now());
    assert_eq!(kind(gateway.infer(late).await), ErrorKind::DeadlineExceeded);
}

#[tokio::test]
async fn a_failing_version_answers_internal_and_is_counted_against_it() {
    let (gateway, _) = gateway(true).await;
    // 20 requests are the fewest that judge an error rate (routing/stats.rs).
    for _ in 0..20 {
        let failed = gateway.infer(request(None, 1)).await.unwrap_err();
        assert_eq!(failed.kind, ErrorKind::Internal);
    }
    let table = gateway.snapshot();
    let model = table.model("fake").unwrap();
    let two = model.version("2").unwrap();
    assert_eq!(two.stats.errors(), 20);
    // Its error rate now takes it out of the policy: requests naming no version go to 1.
    assert!(!model.eligible(two));
    let response = gateway.infer(request(None, 1)).await.unwrap();
    assert_eq!(&*response.model_version, "1");
}
