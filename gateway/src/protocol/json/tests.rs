//! Tests of the JSON codec: flat and nested data, every datatype, refusals with their reasons,
//! binary inputs and outputs.

use super::*;

fn decode(json: &str) -> Result<InferRequest, GatewayError> {
    decode_request("m", None, json.as_bytes(), Bytes::new(), None).map(|(request, _)| request)
}

/// Why `json` was refused; panics if it was not.
fn refusal(json: &str) -> String {
    decode(json).expect_err(json).message
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

#[test]
fn flat_and_nested_data_give_the_same_tensor() {
    let flat =
        decode(r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2.5,3,4]}]}"#)
            .expect("flat");
    let nested = decode(
        r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2.5],[3,4]]}]}"#,
    )
    .expect("nested");
    assert_eq!(flat.inputs, nested.inputs);
    assert_eq!(floats(&flat.inputs[0].tensor), [1.0, 2.5, 3.0, 4.0]);
}

#[test]
fn scalar_data_fills_a_scalar_shape() {
    let request =
        decode(r#"{"inputs":[{"name":"sr","shape":[],"datatype":"INT64","data":16000}]}"#)
            .expect("scalar");
    assert_eq!(
        request.inputs[0].tensor.data().as_ref(),
        16000i64.to_le_bytes()
    );
}

#[test]
fn every_datatype_decodes() {
    for (dtype, data, bytes) in [
        ("BOOL", "[true,false]", vec![1u8, 0]),
        ("UINT8", "[0,255]", vec![0, 255]),
        ("INT8", "[-1,1]", vec![255, 1]),
        ("UINT16", "[1,2]", vec![1, 0, 2, 0]),
        ("INT16", "[-2,3]", vec![254, 255, 3, 0]),
        (
            "FP16",
            "[1.0,-2]",
            [
                f16::from_f32(1.0).to_le_bytes(),
                f16::from_f32(-2.0).to_le_bytes(),
            ]
            .concat(),
        ),
        (
            "BF16",
            "[1.0,0.5]",
            [
                bf16::from_f32(1.0).to_le_bytes(),
                bf16::from_f32(0.5).to_le_bytes(),
            ]
            .concat(),
        ),
        (
            "UINT32",
            "[7,8]",
            [7u32.to_le_bytes(), 8u32.to_le_bytes()].concat(),
        ),
        (
            "INT32",
            "[-7,8]",
            [(-7i32).to_le_bytes(), 8i32.to_le_bytes()].concat(),
        ),
        (
            "FP32",
            "[0.25,1]",
            [0.25f32.to_le_bytes(), 1f32.to_le_bytes()].concat(),
        ),
        (
            "UINT64",
            "[18446744073709551615,0]",
            [u64::MAX.to_le_bytes(), 0u64.to_le_bytes()].concat(),
        ),
        (
            "INT64",
            "[-9,9]",
            [(-9i64).to_le_bytes(), 9i64.to_le_bytes()].concat(),
        ),
        (
            "FP64",
            "[0.1,2]",
            [0.1f64.to_le_bytes(), 2f64.to_le_bytes()].concat(),
        ),
        (
            "BYTES",
            r#"["ab",""]"#,
            vec![2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0],
        ),
    ] {
        let json = format!(
            r#"{{"inputs":[{{"name":"t","shape":[2],"datatype":"{dtype}","data":{data}}}]}}"#
        );
        let request = decode(&json).unwrap_or_else(|e| panic!("{dtype}: {e}"));
        assert_eq!(request.inputs[0].tensor.data().as_ref(), bytes, "{dtype}");
    }
}

#[test]
fn bad_data_is_refused_with_a_reason() {
    for (json, expected) in [
        (
            r#"{"inputs":[{"name":"x","shape":[3],"datatype":"FP32","data":[1,2]}]}"#,
            "needs 3 elements",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1,2]}]}"#,
            "more elements",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FLOAT","data":[1]}]}"#,
            "unknown datatype",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"UINT8","data":[256]}]}"#,
            "out of range",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT32","data":[1.5]}]}"#,
            "whole number",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":["a"]}]}"#,
            "string",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[1]}]}"#,
            "negative",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}"#,
            "no data",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":{"a":1}}]}"#,
            "FP32 elements",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}"#,
            "malformed",
        ),
        (
            r#"{"inputs":[{"name":"x","shape":[4611686018427387904,4],"datatype":"FP32","data":[1]}]}"#,
            "too large",
        ),
    ] {
        let error = decode(json).expect_err(json);
        assert!(
            error.message.contains(expected),
            "{json}: {}",
            error.message
        );
    }
}

#[test]
fn binary_inputs_are_sliced_in_order() {
    let json = r#"{"inputs":[
        {"name":"a","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}},
        {"name":"b","shape":[1],"datatype":"INT64","parameters":{"binary_data_size":8}}]}"#;
    let mut binary = Vec::new();
    binary.extend_from_slice(&1.5f32.to_le_bytes());
    binary.extend_from_slice(&2.5f32.to_le_bytes());
    binary.extend_from_slice(&42i64.to_le_bytes());
    let (request, _) =
        decode_request("m", None, json.as_bytes(), Bytes::from(binary), None).expect("binary");
    assert_eq!(floats(&request.inputs[0].tensor), [1.5, 2.5]);
    assert_eq!(
        request.inputs[1].tensor.data().as_ref(),
        42i64.to_le_bytes()
    );

    let short = decode_request("m", None, json.as_bytes(), Bytes::from(vec![0u8; 12]), None);
    assert!(short.is_err());
    let extra = decode_request("m", None, json.as_bytes(), Bytes::from(vec![0u8; 20]), None);
    assert!(
        extra
            .expect_err("extra")
            .message
            .contains("no input claims")
    );
}

#[test]
fn responses_encode_json_and_binary_outputs() {
    let tensor = Tensor::from_slice(DataType::Fp32, vec![1, 2], &[0.5f32, -1.0]).expect("tensor");
    let response = InferResponse {
        model_name: "m".into(),
        model_version: "3".into(),
        id: Some("req-1".into()),
        outputs: vec![NamedTensor {
            name: "y".into(),
            tensor,
        }],
    };
    let json = encode_response(&response, &OutputEncoding::default()).expect("json");
    assert!(json.binary.is_empty());
    let value: serde_json::Value = serde_json::from_slice(&json.json).expect("valid JSON");
    assert_eq!(
        value,
        serde_json::json!({"model_name":"m","model_version":"3","id":"req-1",
            "outputs":[{"name":"y","datatype":"FP32","shape":[1,2],"data":[0.5,-1.0]}]})
    );
    let binary = encode_response(
        &response,
        &OutputEncoding {
            placements: Vec::new(),
            requested_binary: vec![],
            default_binary: true,
        },
    )
    .expect("binary");
    let value: serde_json::Value = serde_json::from_slice(&binary.json).expect("valid JSON");
    assert_eq!(value["outputs"][0]["parameters"]["binary_data_size"], 8);
    assert!(value["outputs"][0].get("data").is_none());
    assert_eq!(
        binary.binary.concat(),
        [0.5f32.to_le_bytes(), (-1.0f32).to_le_bytes()].concat()
    );
}

#[test]
fn data_before_its_datatype_and_shape_reads_the_same() {
    let in_place = decode(
        r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"INT32","data":[[1,2],[3,-4]]}]}"#,
    )
    .expect("datatype and shape first");
    let text_first = decode(
        r#"{"inputs":[{"data":[[1,2],[3,-4]],"name":"x","datatype":"INT32","shape":[2,2]}]}"#,
    )
    .expect("data first");
    assert_eq!(in_place.inputs, text_first.inputs);
    assert_eq!(
        in_place.inputs[0].tensor.data().as_ref(),
        [1i32, 2, 3, -4]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>()
    );
}

#[test]
fn refused_data_names_its_input_wherever_it_stands() {
    for json in [
        r#"{"inputs":[{"name":"x","shape":[1],"datatype":"UINT8","data":[256]}]}"#,
        r#"{"inputs":[{"data":[256],"name":"x","shape":[1],"datatype":"UINT8"}]}"#,
    ] {
        let message = refusal(json);
        assert!(
            message.starts_with("input 'x': 256 is out of range for UINT8"),
            "{json}: {message}"
        );
    }
    // A refusal in a later input names that one, not the first.
    let message = refusal(
        r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[1]},
                      {"name":"b","shape":[2],"datatype":"FP32","data":[1,null]}]}"#,
    );
    assert!(message.starts_with("input 'b': "), "{message}");
    // Text that is not JSON inside the data is a malformed body.
    let message = refusal(r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1,}]}"#);
    assert!(
        message.starts_with("malformed inference request"),
        "{message}"
    );
    // Fewer elements than the shape needs, read in place.
    let message =
        refusal(r#"{"inputs":[{"name":"x","shape":[3],"datatype":"FP32","data":[1,2]}]}"#);
    assert!(
        message.starts_with("input 'x': shape needs 3 elements but data holds 2"),
        "{message}"
    );
    // A body that repeats a field is refused, as serde's own structs do.
    let message =
        refusal(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1],"data":[2]}]}"#);
    assert!(message.contains("duplicate field `data`"), "{message}");
}

#[test]
fn parameters_keep_their_kind() {
    let request = decode(
        r#"{"parameters":{"b":true,"i":-3,"big":18446744073709551615,"d":0.5,"s":"text"},
            "inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]}"#,
    )
    .expect("parameters");
    let get = |key: &str| request.parameters.get(key).cloned();
    assert_eq!(get("b"), Some(Parameter::Bool(true)));
    assert_eq!(get("i"), Some(Parameter::Int(-3)));
    assert_eq!(get("big"), Some(Parameter::Double(18446744073709551615.0)));
    assert_eq!(get("d"), Some(Parameter::Double(0.5)));
    assert_eq!(get("s"), Some(Parameter::String("text".into())));
    let message = refusal(
        r#"{"parameters":{"n":null},"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]}"#,
    );
    assert!(message.contains("a parameter"), "{message}");
}

/// Inputs read in place by this thread so far.
fn read_in_place() -> usize {
    DECODING.with(|decoding| decoding.read_in_place.get())
}

#[test]
fn data_after_its_name_datatype_and_shape_is_read_in_place() {
    let before = read_in_place();
    decode(r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1,2]}]}"#)
        .expect("in place");
    assert_eq!(read_in_place(), before + 1);
    // Before any of them, it is kept as text and read afterwards, with the same result.
    for json in [
        r#"{"inputs":[{"data":[1,2],"name":"x","shape":[2],"datatype":"FP32"}]}"#,
        r#"{"inputs":[{"shape":[2],"datatype":"FP32","data":[1,2],"name":"x"}]}"#,
    ] {
        decode(json).expect(json);
        assert_eq!(read_in_place(), before + 1, "{json}");
    }
    // Refused before its name came: still named, by the text path.
    let message =
        refusal(r#"{"inputs":[{"shape":[1],"datatype":"UINT8","data":[256],"name":"x"}]}"#);
    assert!(message.starts_with("input 'x': "), "{message}");
}

#[test]
fn null_data_is_no_data() {
    for json in [
        r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":null,"parameters":{"binary_data_size":8}}]}"#,
        r#"{"inputs":[{"data":null,"name":"x","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#,
    ] {
        let mut binary = Vec::new();
        binary.extend_from_slice(&1.5f32.to_le_bytes());
        binary.extend_from_slice(&2.5f32.to_le_bytes());
        let (request, _) =
            decode_request("m", None, json.as_bytes(), Bytes::from(binary), None).expect(json);
        assert_eq!(floats(&request.inputs[0].tensor), [1.5, 2.5], "{json}");
    }
    let message = refusal(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":null}]}"#);
    assert!(message.contains("has no data"), "{message}");
    let message = refusal(
        r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":null,"data":[1]}]}"#,
    );
    assert!(message.contains("duplicate field `data`"), "{message}");
}

#[test]
fn data_read_in_place_reserves_what_it_holds() {
    // A shape the body can fill: the tensor's bytes, exactly.
    let (request, _) = decode_request(
        "m",
        None,
        br#"{"inputs":[{"name":"x","shape":[3],"datatype":"FP64","data":[1,2,3]}]}"#,
        Bytes::new(),
        None,
    )
    .expect("fits");
    assert_eq!(request.inputs[0].tensor.data().len(), 24);
    // A shape claiming far more than the body holds is refused, without reserving it.
    let message =
        refusal(r#"{"inputs":[{"name":"x","shape":[1000000000],"datatype":"FP64","data":[1]}]}"#);
    assert!(
        message.contains("shape needs 1000000000 elements"),
        "{message}"
    );
}
