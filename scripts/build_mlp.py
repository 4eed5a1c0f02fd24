"""Builds a multilayer perceptron with fixed, seeded weights: float32 x[batch, sizes[0]] ->
relu hidden layers -> y[batch, sizes[-1]], with a dynamic batch dimension.

    build_mlp.py OUT_DIR [SIZES]        SIZES defaults to 64,256,10 (the sample `mlp`)

Writes OUT_DIR/model.onnx and OUT_DIR/weights.f32, the raw little-endian float32 weights in
layer order: W1 [sizes[0], sizes[1]] row-major, b1 [sizes[1]], W2 ..., b2 ... Tests read
weights.f32 to compute the expected output on their own, without any ONNX runtime.
`mlp_heavy` (the benchmark's compute-bound model) is 512,2048,2048,2048,2048,1000.
"""

import pathlib
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 20261122


def main(out: pathlib.Path, sizes: list[int]) -> None:
    rng = np.random.default_rng(SEED)
    layers = []
    for fan_in, fan_out in zip(sizes, sizes[1:]):
        w = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.1).astype(np.float32)
        layers.append((w, b))

    nodes, initializers, current = [], [], "x"
    for index, (w, b) in enumerate(layers, start=1):
        last = index == len(layers)
        product, result = f"m{index}", "y" if last else f"h{index}"
        summed = result if last else f"a{index}"
        nodes.append(helper.make_node("MatMul", [current, f"W{index}"], [product]))
        nodes.append(helper.make_node("Add", [product, f"b{index}"], [summed]))
        if not last:
            nodes.append(helper.make_node("Relu", [summed], [result]))
        initializers += [numpy_helper.from_array(w, f"W{index}"), numpy_helper.from_array(b, f"b{index}")]
        current = result

    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", sizes[-1]])],
        initializers,
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
        for w, b in layers:
            f.write(w.astype("<f4").tobytes())
            f.write(b.astype("<f4").tobytes())

    # Self-check: ONNX Runtime must agree with plain numpy on the saved model.
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((3, sizes[0])).astype(np.float32)
    expected = x
    for index, (w, b) in enumerate(layers, start=1):
        expected = expected @ w + b
        if index < len(layers):
            expected = np.maximum(expected, 0)
    (actual,) = session.run(None, {"x": x})
    assert np.allclose(actual, expected, atol=1e-4), np.abs(actual - expected).max()
    print(f"built {out / 'model.onnx'}")


if __name__ == "__main__":
    layer_sizes = [int(n) for n in (sys.argv[2] if len(sys.argv) > 2 else "64,256,10").split(",")]
    main(pathlib.Path(sys.argv[1]), layer_sizes)
