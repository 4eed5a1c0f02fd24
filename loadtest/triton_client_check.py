"""Drives a running Switchyard with Triton's own Python clients (tritonclient[http,grpc]) and
checks every answer against Python's onnxruntime on the same model files.

    .tools/venv/bin/python loadtest/triton_client_check.py --http 127.0.0.1:8000 --grpc 127.0.0.1:8001

Exits non-zero on the first mismatch. scripts/test runs it against the freshly built binary.
"""

import argparse
import json
import pathlib
import queue
import ssl
import sys

import numpy as np
import onnxruntime
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOLERANCE = 1e-5
onnxruntime.set_default_logger_severity(3)


def session(path: pathlib.Path) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def check_close(name: str, actual: np.ndarray, expected: np.ndarray) -> None:
    check(actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}")
    difference = float(np.max(np.abs(actual - expected))) if actual.size else 0.0
    check(difference <= TOLERANCE, f"{name}: max difference {difference} > {TOLERANCE}")


class Transport:
    """The parts where tritonclient's HTTP and gRPC modules differ."""

    def __init__(self, name, module, url, ca=None):
        self.name = name
        self.module = module
        if ca is None:
            self.client = module.InferenceServerClient(url=url)
        elif name == "grpc":
            self.client = module.InferenceServerClient(url=url, ssl=True, root_certificates=ca)
        else:
            self.client = module.InferenceServerClient(
                url=url, ssl=True, ssl_context_factory=lambda: ssl.create_default_context(cafile=ca)
            )

    def config(self, model):
        if self.name == "grpc":
            return self.client.get_model_config(model, as_json=True)["config"]
        return self.client.get_model_config(model)

    def metadata(self, model, version=""):
        if self.name == "grpc":
            return self.client.get_model_metadata(model, version, as_json=True)
        return self.client.get_model_metadata(model, version)

    def infer(self, model, inputs, outputs, binary, version=""):
        requests = []
        for name, array, datatype in inputs:
            tensor = self.module.InferInput(name, list(array.shape), datatype)
            if self.name == "http":
                tensor.set_data_from_numpy(array, binary_data=binary)
            else:
                tensor.set_data_from_numpy(array)
            requests.append(tensor)
        if self.name == "http":
            wanted = [self.module.InferRequestedOutput(name, binary_data=binary) for name in outputs]
        else:
            wanted = [self.module.InferRequestedOutput(name) for name in outputs]
        return self.client.infer(model, requests, model_version=version, outputs=wanted)

    def statistics(self, model, version):
        """The figures of one version from Triton's statistics extension, as numbers."""
        if self.name == "grpc":
            stats = self.client.get_inference_statistics(model, version, as_json=True)
        else:
            stats = self.client.get_inference_statistics(model, version)
        (stat,) = stats["model_stats"]
        check(stat["name"] == model and stat["version"] == version, f"statistics of {stat}")
        # gRPC's JSON form writes uint64 as strings, and leaves zeros out.
        figures = stat["inference_stats"]
        return {
            "success_count": int(figures.get("success", {}).get("count", 0)),
            "compute_infer_ns": int(figures.get("compute_infer", {}).get("ns", 0)),
            "inference_count": int(stat.get("inference_count", 0)),
        }

    def version_of(self, result):
        response = result.get_response(as_json=True) if self.name == "grpc" else result.get_response()
        return response["model_version"]

    def encodings(self):
        # HTTP: JSON and the binary tensor extension; gRPC: raw contents, as tritonclient sends.
        return (False, True) if self.name == "http" else (True,)


def check_transport(transport: Transport) -> int:
    passed = 0
    client = transport.client
    check(client.is_server_live(), "server not live")
    check(client.is_server_ready(), "server not ready")
    passed += 1

    metadata = transport.metadata("mlp")
    check([int(d) for d in metadata["inputs"][0]["shape"]] == [-1, 64], f"mlp metadata: {metadata}")
    config = transport.config("mlp")
    check(int(config["max_batch_size"]) == 64, f"mlp config: {config}")
    check([int(d) for d in config["input"][0]["dims"]] == [64], f"mlp config: {config}")
    check(client.is_model_ready("mlp"), "mlp not ready")
    mlp = session(ROOT / "models/mlp/1/model.onnx")
    stats_before = transport.statistics("mlp", "1")
    rng = np.random.default_rng(7)
    for batch in (1, 8):
        x = rng.standard_normal((batch, 64)).astype(np.float32)
        (expected,) = mlp.run(None, {"x": x})
        for binary in transport.encodings():
            # Unpinned requests reach the highest version (2, TorchScript); pinned ones theirs.
            for version in ("", "1", "2"):
                result = transport.infer("mlp", [("x", x, "FP32")], ["y"], binary, version)
                check(transport.version_of(result) == (version or "2"), "mlp version")
                check_close(f"{transport.name} mlp v{version or '-'} batch {batch}", result.as_numpy("y"), expected)
                passed += 1
    # Triton's statistics extension counts what version 1 just served: one success per
    # request, and its rows (batches of 1 and 8).
    stats_after = transport.statistics("mlp", "1")
    served = len(transport.encodings())
    success = stats_after["success_count"] - stats_before["success_count"]
    rows = stats_after["inference_count"] - stats_before["inference_count"]
    check(success == 2 * served, f"mlp v1 statistics: {success} successes for {2 * served} requests")
    check(rows == 9 * served, f"mlp v1 statistics: {rows} inferences for {9 * served} rows")
    check(stats_after["compute_infer_ns"] > stats_before["compute_infer_ns"], "no compute time counted")
    passed += 1
    for version, platform in (("1", "onnxruntime_onnx"), ("2", "pytorch_libtorch")):
        metadata = transport.metadata("mlp", version)
        check(metadata["platform"] == platform, f"mlp {version} metadata: {metadata}")

    config = transport.config("silero_vad")
    check(int(config.get("max_batch_size", 0)) == 0, f"silero_vad config: {config}")
    (state,) = config["sequence_batching"]["state"]
    check(
        (state["input_name"], state["output_name"], state["data_type"]) == ("state", "stateN", "TYPE_FP32")
        and [int(d) for d in state["dims"]] == [2, 1, 128],
        f"silero_vad sequence_batching: {config['sequence_batching']}",
    )
    check("sequence_batching" not in transport.config("mlp"), "mlp has no sequence batching")
    (rate,) = [i for i in config["input"] if i["name"] == "sr"]
    check([int(d) for d in rate["dims"]] == [1] and "reshape" in rate, f"silero_vad sr: {rate}")
    t = np.arange(512) / 16000.0
    audio = (0.4 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)[None, :]
    state = np.zeros((2, 1, 128), dtype=np.float32)
    sr = np.array(16000, dtype=np.int64)
    for version in ("1", "2"):
        check(client.is_model_ready("silero_vad", version), f"silero_vad {version} not ready")
        reference = session(ROOT / f"models/silero_vad/{version}/model.onnx")
        expected_output, expected_state = reference.run(
            ["output", "stateN"], {"input": audio, "state": state, "sr": sr}
        )
        for binary in transport.encodings():
            result = transport.infer(
                "silero_vad",
                [("input", audio, "FP32"), ("state", state, "FP32"), ("sr", sr, "INT64")],
                ["output", "stateN"],
                binary,
                version=version,
            )
            check(transport.version_of(result) == version, "silero_vad version")
            check_close(f"{transport.name} silero_vad {version} output", result.as_numpy("output"), expected_output)
            check_close(f"{transport.name} silero_vad {version} stateN", result.as_numpy("stateN"), expected_state)
            passed += 1

    passed += check_sequences(transport)

    # Errors surface as the client's exception with the server's message.
    try:
        transport.infer("mlp", [("x", np.zeros((1, 63), np.float32), "FP32")], ["y"], True)
        check(False, "a wrong shape was accepted")
    except InferenceServerException as error:
        check("expects [-1, 64]" in str(error), f"unexpected error text: {error}")
        passed += 1
    try:
        transport.infer("no_such_model", [("x", np.zeros((1, 64), np.float32), "FP32")], ["y"], True)
        check(False, "an unknown model was accepted")
    except InferenceServerException as error:
        check("unknown model" in str(error), f"unexpected error text: {error}")
        passed += 1
    return passed


CHUNK, CONTEXT = 512, 64


def check_sequences(transport: Transport) -> int:
    """Streams the spoken test audio (data/silero_vad, made by scripts/setup) through
    silero_vad as a sequence with tritonclient's sequence arguments, sending only the audio and
    the rate: the gateway carries the state. Over gRPC also with start_stream /
    async_stream_infer. Each chunk's probability must match Python's whole-file run."""
    data = ROOT / "data/silero_vad"
    reference = json.loads((data / "stream_reference.json").read_text())
    expected = reference["probabilities"]["2"]
    audio = np.fromfile(data / "stream_reference.f32", dtype="<f4")
    chunks = 40
    sr = np.array(16000, dtype=np.int64)

    def window(index):
        context = np.zeros(CONTEXT, np.float32) if index == 0 else audio[index * CHUNK - CONTEXT : index * CHUNK]
        return np.concatenate([context, audio[index * CHUNK : (index + 1) * CHUNK]])[None, :]

    def inputs(index):
        tensors = []
        # The config says dims [1] (reshaped to []) for the scalar rate, as Triton's would:
        # both shapes are taken.
        rate = sr if index % 2 == 0 else sr.reshape(1)
        for name, value, datatype in (("input", window(index), "FP32"), ("sr", rate, "INT64")):
            tensor = transport.module.InferInput(name, list(value.shape), datatype)
            tensor.set_data_from_numpy(value)
            tensors.append(tensor)
        return tensors

    passed = 0
    sequence_id = 4242 if transport.name == "http" else 4343
    for index in range(chunks):
        result = transport.client.infer(
            "silero_vad",
            inputs(index),
            model_version="2",
            sequence_id=sequence_id,
            sequence_start=index == 0,
            sequence_end=index == chunks - 1,
        )
        check(result.as_numpy("stateN") is None, "the implicit state came back to the client")
        probability = float(result.as_numpy("output").ravel()[0])
        check(abs(probability - expected[index]) <= TOLERANCE, f"{transport.name} sequence chunk {index}: {probability} != {expected[index]}")
    passed += 1
    try:
        transport.client.infer("silero_vad", inputs(1), model_version="2", sequence_id=sequence_id)
        check(False, "a chunk of an ended sequence was accepted")
    except InferenceServerException as error:
        check("not open" in str(error), f"unexpected error text: {error}")
        passed += 1
    if transport.name != "grpc":
        return passed

    answers = queue.Queue()
    transport.client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for index in range(chunks):
            transport.client.async_stream_infer(
                "silero_vad",
                inputs(index),
                model_version="2",
                sequence_id="stream-check",
                sequence_start=index == 0,
                sequence_end=index == chunks - 1,
            )
        for index in range(chunks):
            result, error = answers.get(timeout=30)
            check(error is None, f"stream chunk {index}: {error}")
            probability = float(result.as_numpy("output").ravel()[0])
            check(abs(probability - expected[index]) <= TOLERANCE, f"stream chunk {index}: {probability} != {expected[index]}")
    finally:
        transport.client.stop_stream()
    return passed + 1


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", default="127.0.0.1:8000")
    parser.add_argument("--grpc", default="127.0.0.1:8001")
    parser.add_argument("--ca", help="the CA (PEM) of a gateway serving TLS; unset: plain text")
    args = parser.parse_args()
    passed = check_transport(Transport("http", httpclient, args.http, args.ca))
    passed += check_transport(Transport("grpc", grpcclient, args.grpc, args.ca))
    print(f"triton client check: {passed} passed, 0 failed")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AssertionError as failure:
        print(f"triton client check FAILED: {failure}")
        sys.exit(1)
