"""Builds the sample `mlp` model: float32 x[batch, 64] -> 256 relu -> y[batch, 10].

Writes <out>/model.onnx and <out>/weights.f32, the raw little-endian float32 weights in this
order: W1 [64, 256] row-major, b1 [256], W2 [256, 10] row-major, b2 [10]. Tests read
weights.f32 to compute the expected output on their own, without any ONNX runtime.
"""

import pathlib
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 20261122
INPUTS, HIDDEN, OUTPUTS = 64, 256, 10


def main(out: pathlib.Path) -> None:
    rng = np.random.default_rng(SEED)
    w1 = (rng.standard_normal((INPUTS, HIDDEN)) * np.sqrt(2.0 / INPUTS)).astype(np.float32)
    b1 = (rng.standard_normal(HIDDEN) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((HIDDEN, OUTPUTS)) * np.sqrt(1.0 / HIDDEN)).astype(np.float32)
    b2 = (rng.standard_normal(OUTPUTS) * 0.1).astype(np.float32)

    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W1"], ["h0"]),
            helper.make_node("Add", ["h0", "b1"], ["h1"]),
            helper.make_node("Relu", ["h1"], ["h"]),
            helper.make_node("MatMul", ["h", "W2"], ["y0"]),
            helper.make_node("Add", ["y0", "b2"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", INPUTS])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", OUTPUTS])],
        [
            numpy_helper.from_array(w1, "W1"),
            numpy_helper.from_array(b1, "b1"),
            numpy_helper.from_array(w2, "W2"),
            numpy_helper.from_array(b2, "b2"),
        ],
    )
    model = helper.make_model(
        graph,
        producer_name="switchyard scripts/build_mlp.py",
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    onnx.checker.check_model(model)

    out.mkdir(parents=True, exist_ok=True)
    onnx.save(model, out / "model.onnx")
    with open(out / "weights.f32", "wb") as f:
        for array in (w1, b1, w2, b2):
            f.write(array.astype("<f4").tobytes())

    # Self-check: ONNX Runtime must agree with plain numpy on the saved model.
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((3, INPUTS)).astype(np.float32)
    expected = np.maximum(x @ w1 + b1, 0) @ w2 + b2
    (actual,) = session.run(None, {"x": x})
    assert np.allclose(actual, expected, atol=1e-5), np.abs(actual - expected).max()
    print(f"built {out / 'model.onnx'}")


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
