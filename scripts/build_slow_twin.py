"""Builds a slow twin of an ONNX model that maps x [batch, 64] to y [batch, C]: the same answers,
after a chain of 1024x1024 products of x whose result is multiplied by zero, so every row costs
the chain's time whatever the model is. The objective tests and benchmark use it as a version
with little capacity:

    build_slow_twin.py MODEL.onnx OUT.onnx [PRODUCTS, default 100: about 6 ms a row]
"""

import pathlib
import sys

import numpy as np
import onnx
from onnx import helper, numpy_helper


def main(source: pathlib.Path, out: pathlib.Path, products: int) -> None:
    model = onnx.load(source)
    graph = model.graph
    assert [i.name for i in graph.input] == ["x"], "the model's one input must be x"
    (output,) = graph.output
    # The original graph now writes `clean`; y = clean + 0 * sum(x A B^products).
    for node in graph.node:
        node.output[:] = ["clean" if name == output.name else name for name in node.output]
    rng = np.random.default_rng(11)
    graph.initializer.extend([
        numpy_helper.from_array((rng.standard_normal((64, 1024)) * 0.05).astype(np.float32), "slow_A"),
        numpy_helper.from_array((rng.standard_normal((1024, 1024)) * 0.03).astype(np.float32), "slow_B"),
        numpy_helper.from_array(np.array(0.0, np.float32), "slow_zero"),
    ])
    nodes = [helper.make_node("MatMul", ["x", "slow_A"], ["slow_0"])]
    for index in range(1, products + 1):
        nodes.append(helper.make_node("MatMul", [f"slow_{index - 1}", "slow_B"], [f"slow_{index}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"slow_{products}"], ["slow_total"], keepdims=0),
        helper.make_node("Mul", ["slow_total", "slow_zero"], ["slow_nothing"]),
        helper.make_node("Add", ["clean", "slow_nothing"], [output.name]),
    ]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, out)

    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    run = lambda path: onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = rng.uniform(0, 1, (8, 64)).astype(np.float32)
    expected = run(source).run(None, {"x": x})[0]
    assert np.allclose(run(out).run(None, {"x": x})[0], expected, atol=1e-5), "the twin answers differently"


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 100)
