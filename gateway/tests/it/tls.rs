//! TLS on the listeners, with a throwaway CA made at run time (rcgen) and a real TLS client
//! (curl): HTTPS inference, gRPC over TLS, and the management API with mutual TLS.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::process::Command;

use common::pki::make_pki;
use common::{MLP_IN, TestGateway, mlp_repository, sample_inputs};

/// curl's exit status and what it wrote to standard output.
fn curl(args: &[&str]) -> (bool, Vec<u8>) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl runs");
    if !output.status.success() {
        eprintln!("curl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    (output.status.success(), output.stdout)
}

fn https(url: &str) -> String {
    url.replace("http://", "https://")
}

// curl blocks its thread: the gateway, in this process, serves from the other workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_speaks_tls_and_the_management_api_wants_a_client_certificate() {
    let repo = mlp_repository("max_batch_size = 8\n");
    let pki = make_pki(repo.path());
    let (cert, key, ca) = (pki.cert.clone(), pki.key.clone(), pki.ca.clone());
    let gateway = TestGateway::start_with(repo.path(), move |config| {
        config.tls.cert = cert;
        config.tls.key = key;
        config.tls.admin_client_ca = ca;
    })
    .await;
    let ca = pki.ca.to_str().unwrap();

    // HTTPS inference, over HTTP/2 and HTTP/1.1.
    let ready = https(&format!("{}/v2/health/ready", gateway.base));
    let (ok, body) = curl(&["--cacert", ca, &ready]);
    assert!(ok, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, br#"{"ready":true}"#);
    let infer = https(&format!("{}/v2/models/mlp/infer", gateway.base));
    let request = serde_json::json!({"inputs": [{"name": "x", "shape": [1, MLP_IN],
        "datatype": "FP32", "data": sample_inputs(MLP_IN, 5)}]})
    .to_string();
    for version in ["--http2", "--http1.1"] {
        let (ok, body) = curl(&[
            "--cacert",
            ca,
            version,
            "-H",
            "content-type: application/json",
            "-d",
            &request,
            &infer,
        ]);
        assert!(ok);
        let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(answer["model_name"], "mlp", "{answer}");
    }
    // hyper's own refusals come through TLS in the protocol's form too.
    let long_target = https(&format!(
        "{}/v2/models/{}/ready",
        gateway.base,
        "m".repeat(70_000)
    ));
    let (ok, body) = curl(&["--cacert", ca, "--http1.1", &long_target]);
    assert!(ok);
    let refusal: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        refusal["error"].as_str().unwrap().contains("65534 bytes"),
        "{refusal}"
    );
    // Plain HTTP is not answered on a TLS listener.
    let (ok, _) = curl(&[&format!("{}/v2/health/ready", gateway.base)]);
    assert!(!ok);

    // gRPC over TLS: ServerLive, one empty message framed by hand.
    let frame = repo.path().join("frame.bin");
    std::fs::write(&frame, [0u8, 0, 0, 0, 0]).unwrap();
    let live = format!(
        "https://{}/inference.GRPCInferenceService/ServerLive",
        gateway.grpc_addr
    );
    let data = format!("@{}", frame.display());
    let (ok, body) = curl(&[
        "--cacert",
        ca,
        "--http2",
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "--data-binary",
        &data,
        &live,
    ]);
    assert!(ok);
    // A ServerLiveResponse { live: true }: the frame header, then field 1 = 1.
    assert_eq!(body, [0, 0, 0, 0, 2, 0x08, 0x01]);

    // The management API: no client certificate, no answer; with one, an answer.
    let models = https(&format!("{}/v1/models", gateway.admin));
    let (ok, _) = curl(&["--cacert", ca, &models]);
    assert!(!ok, "a client without a certificate was answered");
    let (ok, body) = curl(&[
        "--cacert",
        ca,
        "--cert",
        pki.client_cert.to_str().unwrap(),
        "--key",
        pki.client_key.to_str().unwrap(),
        &models,
    ]);
    assert!(ok);
    let listing: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(listing["models"].to_string().contains("mlp"), "{listing}");
    gateway.stop().await;
}
