//! Property-based fuzzing of the three decoders a client's bytes reach: the JSON body, the
//! binary tensor extension, and gRPC's `ModelInferRequest`. For every input, generated or
//! mutated from a corpus of the hostile cases the gateway has met, each decoder must not panic,
//! must allocate no more than a bound proportional to its input, and must refuse with a clean
//! error: INVALID_ARGUMENT and a bounded message. The number of cases is bounded for CI
//! (`PROPTEST_CASES` raises it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::alloc::System;

use bytes::Bytes;
use proptest::prelude::*;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use switchyard_gateway::error::{ErrorKind, GatewayError, MAX_MESSAGE_CHARS};
use switchyard_gateway::protocol::grpc::decode_message;
use switchyard_gateway::protocol::json::decode_request;

#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// What decoding `input_bytes` may allocate in all: a few times the input, and a fixed margin
/// for the parser's own state.
fn allocation_bound(input_bytes: usize) -> usize {
    16 * input_bytes + (1 << 20)
}

fn check<T>(input_bytes: usize, decode: impl FnOnce() -> Result<T, GatewayError>) {
    let region = Region::new(ALLOCATOR);
    let result = decode();
    let allocated = region.change().bytes_allocated;
    assert!(
        allocated <= allocation_bound(input_bytes),
        "{allocated} bytes allocated for {input_bytes} bytes of input"
    );
    if let Err(error) = result {
        assert_eq!(error.kind, ErrorKind::InvalidArgument, "{}", error.message);
        assert!(error.message.len() <= MAX_MESSAGE_CHARS * 4 + 32);
        assert!(!error.message.is_empty());
    }
}

/// Seeds: the hostile cases of the gateway's history, and well-formed requests.
fn json_corpus() -> Vec<String> {
    vec![
        r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}"#.into(),
        r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"INT64","data":[[1,2],[3,4]]}]}"#.into(),
        r#"{"inputs":[{"name":"s","shape":[2],"datatype":"BYTES","data":["a","bc"]}]}"#.into(),
        r#"{"inputs":[{"name":"x","shape":[1000000000,1000000000],"datatype":"FP64","data":[1]}]}"#
            .into(),
        r#"{"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[]}]}"#.into(),
        format!(
            r#"{{"inputs":[{{"name":"x","shape":{:?},"datatype":"FP32","data":[1]}}]}}"#,
            vec![1; 200]
        ),
        format!(
            r#"{{"parameters":{{"k":"{}"}},"inputs":[]}}"#,
            "v".repeat(70_000)
        ),
        format!(
            r#"{{"inputs":[{}]}}"#,
            vec![r#"{"name":"x","shape":[1],"datatype":"BOOL","data":[true]}"#; 1100].join(",")
        ),
        r#"{"inputs":[{"name":"x","shape":[4],"datatype":"UINT8","parameters":{"binary_data_size":4}}]}"#
            .into(),
        r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP16","data":[1e300]}]}"#.into(),
    ]
}

fn mutated(seed: &str, edits: &[(usize, u8)]) -> Vec<u8> {
    let mut bytes = seed.as_bytes().to_vec();
    for &(at, byte) in edits {
        if bytes.is_empty() {
            bytes.push(byte);
        } else {
            let at = at % bytes.len();
            bytes[at] = byte;
        }
    }
    bytes
}

/// The protobuf wire format of a `ModelInferRequest`, as bytes built by hand.
fn varint(mut value: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn field(number: u64, payload: &[u8], out: &mut Vec<u8>) {
    varint(number << 3 | 2, out);
    varint(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

/// `entries` sets the size of the repeated-inputs case: the full million for the corpus test,
/// fewer for mutation, where each case copies it.
fn grpc_corpus(entries: usize) -> Vec<Vec<u8>> {
    let mut input = Vec::new();
    field(1, b"x", &mut input);
    field(2, b"FP32", &mut input);
    let mut shape = Vec::new();
    varint(1, &mut shape);
    varint(4, &mut shape);
    field(3, &shape, &mut input);
    let mut good = Vec::new();
    field(1, b"mlp", &mut good);
    field(5, &input, &mut good);
    field(7, &[0u8; 16], &mut good);
    let million_inputs: Vec<u8> = std::iter::repeat_n([0x2a, 0x00], entries)
        .flatten()
        .collect();
    let mut long_shape_input = Vec::new();
    field(1, b"x", &mut long_shape_input);
    let dims: Vec<u8> = vec![1; 2_000];
    field(3, &dims, &mut long_shape_input);
    let mut long_shape = Vec::new();
    field(5, &long_shape_input, &mut long_shape);
    vec![good, million_inputs, long_shape, vec![0xff; 32], Vec::new()]
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn json_bodies_never_panic_nor_overallocate(
        seed in 0usize..10,
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..8),
    ) {
        let corpus = json_corpus();
        let body = mutated(&corpus[seed % corpus.len()], &edits);
        check(body.len(), || decode_request("m", None, &body, Bytes::new(), None));
    }

    #[test]
    fn arbitrary_json_never_panics(body in prop::collection::vec(any::<u8>(), 0..2048)) {
        check(body.len(), || decode_request("m", None, &body, Bytes::new(), None));
    }

    #[test]
    fn binary_extension_sizes_are_checked(
        size in any::<i64>(),
        rows in 0usize..64,
        binary in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let json = format!(
            r#"{{"inputs":[{{"name":"x","shape":[{rows}],"datatype":"FP32","parameters":{{"binary_data_size":{size}}}}}]}}"#
        );
        let total = json.len() + binary.len();
        check(total, || decode_request("m", None, json.as_bytes(), Bytes::from(binary), None));
    }

    #[test]
    fn grpc_messages_never_panic_nor_overallocate(
        seed in 0usize..5,
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..8),
    ) {
        let corpus = grpc_corpus(5_000);
        let message = corpus[seed % corpus.len()].clone();
        let mut message = message;
        for (at, byte) in edits {
            if !message.is_empty() {
                let at = at % message.len();
                message[at] = byte;
            }
        }
        check(message.len(), || decode_message(&message));
    }

    #[test]
    fn arbitrary_grpc_bytes_never_panic(message in prop::collection::vec(any::<u8>(), 0..2048)) {
        check(message.len(), || decode_message(&message));
    }
}

#[test]
fn the_corpus_is_refused_cleanly() {
    for body in json_corpus() {
        check(body.len(), || {
            decode_request("m", None, body.as_bytes(), Bytes::new(), None)
        });
    }
    let corpus = grpc_corpus(1_000_000);
    for message in &corpus {
        check(message.len(), || decode_message(message));
    }
    // The million empty inputs are refused by the scan, before prost builds anything.
    let million = &corpus[1];
    let refused = decode_message(million).unwrap_err();
    assert!(
        refused.message.contains("1000000 inputs"),
        "{}",
        refused.message
    );
}
