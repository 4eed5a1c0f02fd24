"""Builds three bad twins of the sample `mlp` (same input x [batch, 64], output y [batch, 10])
for the rollout tests, from the weights of models/mlp/1 (weights.f32):

    build_rollout_variants.py MLP_DIR OUT_DIR

- faulty.onnx: mlp's answers, but the model fails (a Reshape that cannot be done, a runtime
  fault) on any batch holding a row whose x[0] is 2.0 or more;
- slow.onnx: mlp's answers, after a chain of 2048x2048 products whose result is multiplied by
  zero (about ten times mlp's latency at batch 1);
- perturbed.onnx: mlp with noise added to its weights: it answers, but its argmax often differs.
"""

import pathlib
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SIZES = [64, 256, 10]


def load_weights(path: pathlib.Path):
    flat = np.fromfile(path, dtype="<f4")
    layers, at = [], 0
    for fan_in, fan_out in zip(SIZES, SIZES[1:]):
        w = flat[at : at + fan_in * fan_out].reshape(fan_in, fan_out)
        at += fan_in * fan_out
        b = flat[at : at + fan_out]
        at += fan_out
        layers.append((w, b))
    assert at == flat.size
    return layers


def mlp_nodes(layers, output):
    nodes, initializers, current = [], [], "x"
    for index, (w, b) in enumerate(layers, start=1):
        last = index == len(layers)
        result = output if last else f"h{index}"
        summed = result if last else f"a{index}"
        nodes.append(helper.make_node("MatMul", [current, f"W{index}"], [f"m{index}"]))
        nodes.append(helper.make_node("Add", [f"m{index}", f"b{index}"], [summed]))
        if not last:
            nodes.append(helper.make_node("Relu", [summed], [result]))
        initializers += [numpy_helper.from_array(w.astype(np.float32), f"W{index}"),
                         numpy_helper.from_array(b.astype(np.float32), f"b{index}")]
        current = result
    return nodes, initializers


def const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def save(nodes, initializers, out: pathlib.Path, name: str):
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        initializers,
    )
    model = helper.make_model(graph, producer_name="switchyard scripts/build_rollout_variants.py",
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, out / f"{name}.onnx")


def main(mlp_dir: pathlib.Path, out: pathlib.Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    layers = load_weights(mlp_dir / "weights.f32")

    # faulty: y = mlp(x) + 0 * sum(Reshape(x[:, :1], [-1, m])), where m is 1, or 1001 when a
    # row has x[0] >= 2.0: then the reshape fails (a runtime fault, as a bug would be).
    nodes, inits = mlp_nodes(layers, "clean")
    inits += [const("first", np.array([0], np.int64)), const("one", np.array([1], np.int64)),
              const("two", np.array(2.0, np.float32)), const("lo", np.array(0.0, np.float32)),
              const("hi", np.array(1.0, np.float32)), const("thousand", np.array(1000.0, np.float32)),
              const("unit", np.array(1.0, np.float32)), const("rest", np.array([-1], np.int64)),
              const("zero", np.array(0.0, np.float32))]
    nodes += [
        helper.make_node("Slice", ["x", "first", "one", "one"], ["x0"]),
        helper.make_node("ReduceMax", ["x0"], ["largest"], keepdims=0),
        helper.make_node("Div", ["largest", "two"], ["halved"]),
        helper.make_node("Floor", ["halved"], ["floored"]),
        helper.make_node("Clip", ["floored", "lo", "hi"], ["flag"]),
        helper.make_node("Mul", ["flag", "thousand"], ["spread"]),
        helper.make_node("Add", ["spread", "unit"], ["width_f"]),
        helper.make_node("Cast", ["width_f"], ["width"], to=TensorProto.INT64),
        helper.make_node("Unsqueeze", ["width", "first"], ["width1"]),
        helper.make_node("Concat", ["rest", "width1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x0", "shape"], ["reshaped"]),
        helper.make_node("ReduceSum", ["reshaped"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["clean", "nothing"], ["y"]),
    ]
    save(nodes, inits, out, "faulty")

    # slow: y = mlp(x) + 0 * sum(x A B^20).
    rng = np.random.default_rng(7)
    nodes, inits = mlp_nodes(layers, "clean")
    inits += [const("A", (rng.standard_normal((64, 2048)) * 0.05).astype(np.float32)),
              const("B", (rng.standard_normal((2048, 2048)) * 0.02).astype(np.float32)),
              const("zero", np.array(0.0, np.float32))]
    nodes += [helper.make_node("MatMul", ["x", "A"], ["s0"])]
    current = "s0"
    for index in range(1, 21):
        nodes.append(helper.make_node("MatMul", [current, "B"], [f"s{index}"]))
        current = f"s{index}"
    nodes += [
        helper.make_node("ReduceSum", [current], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["clean", "nothing"], ["y"]),
    ]
    save(nodes, inits, out, "slow")

    # perturbed: the weights with noise half their own spread.
    noisy = [(w + rng.standard_normal(w.shape).astype(np.float32) * w.std() * 0.8,
              b + rng.standard_normal(b.shape).astype(np.float32) * 0.3) for w, b in layers]
    nodes, inits = mlp_nodes(noisy, "y")
    save(nodes, inits, out, "perturbed")

    # Self-check with ONNX Runtime: faulty and slow answer as mlp does; faulty fails on x[0] >= 2;
    # perturbed disagrees on the argmax of many rows.
    import onnxruntime

    def run(name, x):
        session = onnxruntime.InferenceSession(str(out / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        return session.run(None, {"x": x})[0]

    x = rng.uniform(0, 1.5, (200, 64)).astype(np.float32)
    expected = np.maximum(x @ layers[0][0] + layers[0][1], 0) @ layers[1][0] + layers[1][1]
    assert np.allclose(run("faulty", x), expected, atol=1e-4)
    assert np.allclose(run("slow", x), expected, atol=1e-4)
    bad = x.copy()
    bad[0, 0] = 2.5
    try:
        run("faulty", bad)
        raise AssertionError("faulty.onnx answered x[0] = 2.5")
    except onnxruntime.capi.onnxruntime_pybind11_state.Fail:
        pass
    agreement = (run("perturbed", x).argmax(1) == expected.argmax(1)).mean()
    assert agreement < 0.9, agreement
    print(f"built faulty, slow and perturbed twins of mlp in {out} (perturbed argmax agreement {agreement:.2f})")


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]))
