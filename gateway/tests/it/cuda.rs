//! Both runtimes on `cuda:0`: outputs equal to the CPU's within 1e-4 and the measured GPU
//! memory of each version reported. Needs an NVIDIA GPU, `scripts/setup --gpu` and a build
//! with `--features cuda`; CI has none and skips them:
//!
//!     SWITCHYARD_TEST_CUDA=1 LIBTORCH=$PWD/.tools/libtorch-gpu/torch \
//!       cargo test -p switchyard-gateway --features cuda --test it cuda:: -- --ignored

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::time::Instant;

use common::{
    MLP_IN, MlpWeights, TestGateway, as_f32s, assert_close, mlp_onnx_and_torchscript, repo_root,
    sample_inputs,
};
use serde_json::json;

#[tokio::test]
#[ignore = "needs an NVIDIA GPU: SWITCHYARD_TEST_CUDA=1 cargo test --features cuda --test it cuda:: -- --ignored"]
async fn both_runtimes_on_cuda_match_the_cpu_and_report_their_memory() {
    if std::env::var_os("SWITCHYARD_TEST_CUDA").is_none() {
        eprintln!("SKIPPED: set SWITCHYARD_TEST_CUDA=1 on a machine with an NVIDIA GPU");
        return;
    }
    let repo = mlp_onnx_and_torchscript("device = \"cuda:0\"\n");
    let library = std::env::var("SWITCHYARD_ORT_GPU_LIBRARY").unwrap_or_else(|_| {
        repo_root()
            .join(".tools/onnxruntime-gpu/onnxruntime/capi/libonnxruntime.so.1.31.1")
            .display()
            .to_string()
    });
    let started = Instant::now();
    let gateway = TestGateway::start_with(repo.path(), |config| {
        config.onnxruntime.library = library.into();
    })
    .await;
    eprintln!(
        "both versions loaded and warmed up on cuda:0 in {:?}",
        started.elapsed()
    );
    let weights = MlpWeights::load();
    for version in ["1", "2"] {
        let (status, metadata) = gateway
            .get(&format!("/v2/models/mlp/versions/{version}"))
            .await;
        assert_eq!(status, 200);
        assert_eq!(metadata["state"], "READY", "{metadata}");
        assert_eq!(metadata["memory"]["device"], "cuda:0");
        let bytes = metadata["memory"]["bytes_per_replica"].as_u64().unwrap();
        assert!(bytes > 0, "{metadata}");
        eprintln!(
            "mlp version {version} ({}): {bytes} bytes on cuda:0 (NVML)",
            metadata["platform"]
        );
        for case in 0..5u64 {
            let rows = 1 + case as usize * 7;
            let x = sample_inputs(rows * MLP_IN, 900 + case);
            let body = json!({"inputs": [{"name": "x", "shape": [rows, MLP_IN], "datatype": "FP32", "data": x}]});
            let (status, response) = gateway
                .post_json(&format!("/v2/models/mlp/versions/{version}/infer"), &body)
                .await;
            assert_eq!(status, 200, "{response}");
            assert_close(
                &as_f32s(&response["outputs"][0]["data"]),
                &weights.forward(&x),
                1e-4,
            );
        }
    }
    gateway.stop().await;
}
