"""Trains the sample `digits` model from scikit-learn's bundled handwritten digits (1,797 8x8
images: 64 features, 10 classes; no download) and writes its versions and its held-out set:

    build_digits.py MODELS_DIR DATA_DIR

- MODELS_DIR/digits/1/model.onnx: logistic regression (64 -> 10);
- MODELS_DIR/digits/2/model.onnx: an MLP 64-32-10 stopped after 8 epochs (under-trained);
- MODELS_DIR/digits/3/model.onnx: an MLP 64-64-10 trained to convergence;
- MODELS_DIR/digits/3/weights.f32: version 3's weights, from which scripts/setup traces the
  TorchScript version 4 (the same network under libtorch);
- DATA_DIR/test.npz: the held-out 30% (x [n, 64] float32 scaled to [0, 1], labels [n] int64),
  stratified, from a fixed seed; DATA_DIR/test.jsonl the same as JSON lines;
- DATA_DIR/expected.json: each version's accuracy on the held-out set, computed here with numpy
  from the saved float32 weights, for the eval test to compare with.

Every version outputs logits y [batch, 10]; the predicted class is the argmax.
"""

import json
import pathlib
import sys
import warnings

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

SEED = 20261202


def save_onnx(layers, path: pathlib.Path, description: str) -> None:
    nodes, initializers, current = [], [], "x"
    for index, (w, b) in enumerate(layers, start=1):
        last = index == len(layers)
        result = "y" if last else f"h{index}"
        summed = result if last else f"a{index}"
        nodes.append(helper.make_node("MatMul", [current, f"W{index}"], [f"m{index}"]))
        nodes.append(helper.make_node("Add", [f"m{index}", f"b{index}"], [summed]))
        if not last:
            nodes.append(helper.make_node("Relu", [summed], [result]))
        initializers += [numpy_helper.from_array(w, f"W{index}"), numpy_helper.from_array(b, f"b{index}")]
        current = result
    graph = helper.make_graph(
        nodes, "digits",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        initializers,
    )
    model = helper.make_model(graph, producer_name="switchyard scripts/build_digits.py",
                              doc_string=description, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)


def forward(layers, x):
    h = x
    for index, (w, b) in enumerate(layers):
        h = h @ w + b
        if index < len(layers) - 1:
            h = np.maximum(h, 0)
    return h


def as_layers(coefs, intercepts):
    return [(np.asarray(w, np.float32), np.asarray(b, np.float32)) for w, b in zip(coefs, intercepts)]


def main(models: pathlib.Path, data: pathlib.Path) -> None:
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, labels, test_size=0.3, random_state=SEED, stratify=labels)

    logistic = LogisticRegression(max_iter=1000, random_state=SEED).fit(x_train, y_train)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        short = MLPClassifier(hidden_layer_sizes=(32,), max_iter=8, random_state=SEED,
                              learning_rate_init=0.002).fit(x_train, y_train)
    full = MLPClassifier(hidden_layer_sizes=(64,), max_iter=500, random_state=SEED).fit(x_train, y_train)

    versions = {
        "1": (as_layers([logistic.coef_.T], [logistic.intercept_]), "logistic regression"),
        "2": (as_layers(short.coefs_, short.intercepts_), "MLP 64-32-10, 8 epochs"),
        "3": (as_layers(full.coefs_, full.intercepts_), "MLP 64-64-10, trained to convergence"),
    }
    expected = {}
    for label, (layers, description) in versions.items():
        save_onnx(layers, models / "digits" / label / "model.onnx", description)
        predicted = forward(layers, x_test).argmax(axis=1)
        expected[label] = {"accuracy": float((predicted == y_test).mean()), "description": description}
    # Version 4 is version 3 traced into TorchScript by scripts/setup, from these weights.
    with open(models / "digits" / "3" / "weights.f32", "wb") as f:
        for w, b in versions["3"][0]:
            f.write(w.astype("<f4").tobytes())
            f.write(b.astype("<f4").tobytes())
    expected["4"] = dict(expected["3"], description="MLP 64-64-10 (version 3) as TorchScript")

    data.mkdir(parents=True, exist_ok=True)
    np.savez(data / "test.npz", x=x_test, labels=y_test)
    with open(data / "test.jsonl", "w") as f:
        for row, label in zip(x_test, y_test):
            f.write(json.dumps({"x": [float(v) for v in row], "label": int(label)}) + "\n")
    with open(data / "expected.json", "w") as f:
        json.dump({"examples": int(len(y_test)), "versions": expected}, f, indent=1)

    # ONNX Runtime must agree with numpy on every saved version.
    import onnxruntime
    for label in versions:
        session = onnxruntime.InferenceSession(str(models / "digits" / label / "model.onnx"),
                                               providers=["CPUExecutionProvider"])
        (logits,) = session.run(None, {"x": x_test})
        accuracy = float((logits.argmax(axis=1) == y_test).mean())
        assert abs(accuracy - expected[label]["accuracy"]) < 1e-9, (label, accuracy)
    summary = ", ".join(f"v{k} {v['accuracy']:.4f}" for k, v in expected.items())
    print(f"built digits versions 1-3 in {models / 'digits'}; held-out accuracy: {summary}")


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]))
