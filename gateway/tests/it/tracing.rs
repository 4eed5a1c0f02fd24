//! Traces over OTLP: an OTLP/gRPC trace receiver runs inside the test, the real binary exports
//! to it, and the spans of a request carrying a W3C traceparent must continue that trace.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{MLP_IN, mlp_raw_request, mlp_repository, sample_inputs, spawn_switchyard};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::json;
use switchyard_gateway::protocol::grpc::pb;

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn attribute<'s>(span: &'s Span, key: &str) -> Option<&'s str> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(value) => Some(value.as_str()),
            _ => None,
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Waits until the receiver holds the spans of `trace` named `names`.
async fn spans_of(receiver: &Receiver, trace: &str, names: &[&str]) -> Vec<Span> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let spans: Vec<Span> = receiver
            .spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| hex(&s.trace_id) == trace)
            .cloned()
            .collect();
        if names
            .iter()
            .all(|name| spans.iter().any(|s| s.name == *name))
        {
            return spans;
        }
        assert!(
            Instant::now() < deadline,
            "spans {names:?} of trace {trace} never arrived; got {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The spans of one inference request, whatever its protocol or route.
const ALL_SPANS: &[&str] = &[
    "request", "decode", "route", "queue", "batch", "infer", "encode",
];

#[tokio::test]
async fn spans_continue_the_callers_trace_over_http_and_grpc() {
    let receiver = Receiver::default();
    // Bound before the gateway's ports are drawn, so none of them can be this one.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let repo = mlp_repository("max_batch_size = 64\n");
    let registry = format!("sqlite://{}", repo.path().join("registry.db").display());
    let process = spawn_switchyard(repo.path(), &registry, &["--otlp-endpoint", &endpoint]).await;
    let grpc_addr = process.grpc.clone();

    // HTTP, with a traceparent header.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let body = json!({"id": "req-42", "inputs": [{"name": "x", "shape": [1, MLP_IN], "datatype": "FP32", "data": sample_inputs(MLP_IN, 1)}]});
    let response = reqwest::Client::new()
        .post(format!("{}/v2/models/mlp/infer", process.http))
        .header("traceparent", format!("00-{trace}-{parent}-01"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let spans = spans_of(&receiver, trace, ALL_SPANS).await;
    let request = spans.iter().find(|s| s.name == "request").unwrap();
    assert_eq!(
        hex(&request.parent_span_id),
        parent,
        "the request span is a child of the caller's span"
    );
    assert_eq!(attribute(request, "model"), Some("mlp"));
    assert_eq!(attribute(request, "version"), Some("1"));
    assert_eq!(attribute(request, "request_id"), Some("req-42"));
    assert_eq!(attribute(request, "protocol"), Some("http"));
    for child in ["decode", "route", "queue", "batch", "encode"] {
        let span = spans.iter().find(|s| s.name == child).unwrap();
        assert_eq!(
            span.parent_span_id, request.span_id,
            "{child} is a child of the request span"
        );
    }
    let batch = spans.iter().find(|s| s.name == "batch").unwrap();
    assert!(batch.attributes.iter().any(|kv| kv.key == "batch_size"));
    let infer = spans.iter().find(|s| s.name == "infer").unwrap();
    assert_eq!(
        infer.parent_span_id, batch.span_id,
        "the model call is inside the batch"
    );

    // gRPC, with traceparent metadata.
    let grpc_trace = "0af7651916cd43dd8448eb211c80319c";
    let grpc_parent = "b7ad6b7169203331";
    let mut client = pb::grpc_inference_service_client::GrpcInferenceServiceClient::connect(
        format!("http://{grpc_addr}"),
    )
    .await
    .unwrap();
    let mut request = tonic::Request::new(mlp_raw_request(&sample_inputs(MLP_IN, 2), 1));
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{grpc_trace}-{grpc_parent}-01").parse().unwrap(),
    );
    client.model_infer(request).await.unwrap();
    let grpc_spans = spans_of(&receiver, grpc_trace, ALL_SPANS).await;
    let request = grpc_spans.iter().find(|s| s.name == "request").unwrap();
    assert_eq!(hex(&request.parent_span_id), grpc_parent);
    assert_eq!(attribute(request, "protocol"), Some("grpc"));
    assert_eq!(attribute(request, "version"), Some("1"));

    // A request pinned to its version, on the route that has its own path.
    let pinned_trace = "5cf92f3577b34da6a3ce929d0e0e4737";
    let response = reqwest::Client::new()
        .post(format!("{}/v2/models/mlp/versions/1/infer", process.http))
        .header("traceparent", format!("00-{pinned_trace}-{parent}-01"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let pinned_spans = spans_of(&receiver, pinned_trace, ALL_SPANS).await;

    // All three show the same spans, with the same parents.
    let shape = |spans: &[Span]| {
        let name_of = |id: &[u8]| {
            spans
                .iter()
                .find(|s| s.span_id == id)
                .map_or("(caller)".to_owned(), |s| s.name.clone())
        };
        let mut shape: Vec<(String, String)> = spans
            .iter()
            .map(|s| (s.name.clone(), name_of(&s.parent_span_id)))
            .collect();
        shape.sort();
        shape
    };
    let unpinned = shape(&spans);
    assert_eq!(
        shape(&pinned_spans),
        unpinned,
        "pinned HTTP against unpinned HTTP"
    );
    assert_eq!(shape(&grpc_spans), unpinned, "gRPC against unpinned HTTP");
    drop(process);
    server.abort();
}
