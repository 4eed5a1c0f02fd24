"""Drives a running Switchyard with Triton's own Python client (tritonclient[http]) and checks
every answer against Python's onnxruntime on the same model files.

    .tools/venv/bin/python loadtest/triton_client_check.py --url 127.0.0.1:8000

Exits non-zero on the first mismatch. scripts/test runs it against the freshly built binary.
"""

import argparse
import pathlib
import sys

import numpy as np
import onnxruntime
import tritonclient.http as httpclient

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


def infer(client, model, inputs, outputs, binary, version=""):
    requests = []
    for name, array, datatype in inputs:
        tensor = httpclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        requests.append(tensor)
    wanted = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in outputs]
    return client.infer(model, requests, model_version=version, outputs=wanted)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="127.0.0.1:8000")
    args = parser.parse_args()
    client = httpclient.InferenceServerClient(url=args.url)
    passed = 0

    check(client.is_server_live(), "server not live")
    check(client.is_server_ready(), "server not ready")
    check(client.get_server_metadata()["name"] == "switchyard", "server metadata name")
    passed += 1

    # mlp: metadata, configuration and inference in JSON and binary form.
    metadata = client.get_model_metadata("mlp")
    check(metadata["inputs"][0]["shape"] == [-1, 64], f"mlp metadata: {metadata}")
    config = client.get_model_config("mlp")
    check(config["max_batch_size"] == 64 and config["input"][0]["dims"] == [64], f"mlp config: {config}")
    check(client.is_model_ready("mlp"), "mlp not ready")
    mlp = session(ROOT / "models/mlp/1/model.onnx")
    rng = np.random.default_rng(7)
    for batch in (1, 8):
        x = rng.standard_normal((batch, 64)).astype(np.float32)
        (expected,) = mlp.run(None, {"x": x})
        for binary in (False, True):
            result = infer(client, "mlp", [("x", x, "FP32")], ["y"], binary)
            check(result.get_response()["model_version"] == "1", "mlp version")
            check_close(f"mlp batch {batch} binary={binary}", result.as_numpy("y"), expected)
            passed += 1

    # silero_vad: both versions, compared with onnxruntime for the same inputs.
    config = client.get_model_config("silero_vad")
    check(config["max_batch_size"] == 0, f"silero_vad config: {config}")
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
        for binary in (False, True):
            result = infer(
                client,
                "silero_vad",
                [("input", audio, "FP32"), ("state", state, "FP32"), ("sr", sr, "INT64")],
                ["output", "stateN"],
                binary,
                version=version,
            )
            check(result.get_response()["model_version"] == version, "silero_vad version")
            check_close(f"silero_vad {version} output", result.as_numpy("output"), expected_output)
            check_close(f"silero_vad {version} stateN", result.as_numpy("stateN"), expected_state)
            passed += 1

    # Errors surface as the client's exception with the server's message.
    try:
        infer(client, "mlp", [("x", np.zeros((1, 63), np.float32), "FP32")], ["y"], True)
        check(False, "a wrong shape was accepted")
    except httpclient.InferenceServerException as error:
        check("expects [-1, 64]" in str(error), f"unexpected error text: {error}")
        passed += 1

    print(f"triton client check: {passed} passed, 0 failed")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AssertionError as failure:
        print(f"triton client check FAILED: {failure}")
        sys.exit(1)
