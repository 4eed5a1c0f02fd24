"""Builds a compute-bound CNN for the benchmark: YOLOv8n's architecture (width 0.25, depth
0.33: the stem and stride-2 convolutions, C2f blocks with their bottlenecks, SPPF, the
top-down and bottom-up paths of the neck, and a decoupled head of box and class branches at
strides 8, 16 and 32), written as an ONNX graph with the batch norms folded into the
convolutions and SiLU as x * sigmoid(x). Its input is images [batch, 3, height, width] with
the three dynamic (multiples of 32); its output [batch, 84, cells] is the four box values and
80 class scores of every cell, as a YOLOv8 export's is (without the distribution decoding of
the box values, a few per cent of the compute).

The weights are random (fixed seed), scaled so that activations stay in range: the work per
image is a real YOLOv8n's (about 3.2 M parameters, 2.2 GFLOPs at 320x320), the detections are
not. Nothing is downloaded.

    python scripts/build_yolo.py data/bench/yolo/1/model.onnx
"""

import pathlib
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]
CLASSES = 80


class Graph:
    def __init__(self, seed: int = 8):
        self.rng = np.random.default_rng(seed)
        self.initializers = []
        self.nodes = []
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def constant(self, value: np.ndarray, prefix: str) -> str:
        name = self.name(prefix)
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs, prefix: str, outputs: int = 1, **attributes):
        names = [self.name(prefix) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op, list(inputs), names, **attributes))
        return names[0] if outputs == 1 else names

    def conv(self, x: str, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, act=True):
        """Conv2d + folded BatchNorm (+ SiLU)."""
        fan_in = c_in * kernel * kernel
        weight = (self.rng.standard_normal((c_out, c_in, kernel, kernel)) * np.sqrt(2.0 / fan_in))
        bias = self.rng.standard_normal(c_out) * 0.01
        pad = kernel // 2
        y = self.node(
            "Conv",
            [x, self.constant(weight.astype(np.float32), "w"), self.constant(bias.astype(np.float32), "b")],
            "conv",
            kernel_shape=[kernel, kernel],
            strides=[stride, stride],
            pads=[pad, pad, pad, pad],
        )
        if not act:
            return y
        return self.node("Mul", [y, self.node("Sigmoid", [y], "sig")], "silu")

    def bottleneck(self, x: str, c: int, shortcut: bool) -> str:
        y = self.conv(self.conv(x, c, c, 3), c, c, 3)
        return self.node("Add", [x, y], "add") if shortcut else y

    def c2f(self, x: str, c_in: int, c_out: int, n: int, shortcut: bool) -> str:
        hidden = c_out // 2
        y = self.conv(x, c_in, 2 * hidden)
        parts = self.node("Split", [y, self.constant(np.array([hidden, hidden], np.int64), "split")], "part", outputs=2, axis=1)
        branches = list(parts)
        for _ in range(n):
            branches.append(self.bottleneck(branches[-1], hidden, shortcut))
        return self.conv(self.node("Concat", branches, "cat", axis=1), (2 + n) * hidden, c_out)

    def sppf(self, x: str, c_in: int, c_out: int) -> str:
        hidden = c_in // 2
        y = self.conv(x, c_in, hidden)
        pooled = [y]
        for _ in range(3):
            pooled.append(self.node("MaxPool", [pooled[-1]], "pool", kernel_shape=[5, 5], strides=[1, 1], pads=[2, 2, 2, 2]))
        return self.conv(self.node("Concat", pooled, "cat", axis=1), 4 * hidden, c_out)

    def upsample(self, x: str) -> str:
        scales = self.constant(np.array([1, 1, 2, 2], np.float32), "scale")
        return self.node("Resize", [x, "", scales], "up", mode="nearest")


def yolov8n() -> onnx.GraphProto:
    g = Graph()
    # Backbone.
    x = g.conv("images", 3, 16, 3, 2)  # stride 2
    x = g.conv(x, 16, 32, 3, 2)  # 4
    x = g.c2f(x, 32, 32, 1, True)
    x = g.conv(x, 32, 64, 3, 2)  # 8
    p3 = g.c2f(x, 64, 64, 2, True)
    x = g.conv(p3, 64, 128, 3, 2)  # 16
    p4 = g.c2f(x, 128, 128, 2, True)
    x = g.conv(p4, 128, 256, 3, 2)  # 32
    x = g.c2f(x, 256, 256, 1, True)
    p5 = g.sppf(x, 256, 256)
    # Neck: top-down, then bottom-up.
    n4 = g.c2f(g.node("Concat", [g.upsample(p5), p4], "cat", axis=1), 384, 128, 1, False)
    n3 = g.c2f(g.node("Concat", [g.upsample(n4), p3], "cat", axis=1), 192, 64, 1, False)
    m4 = g.c2f(g.node("Concat", [g.conv(n3, 64, 64, 3, 2), n4], "cat", axis=1), 192, 128, 1, False)
    m5 = g.c2f(g.node("Concat", [g.conv(m4, 128, 128, 3, 2), p5], "cat", axis=1), 384, 256, 1, False)
    # Head: a box branch and a class branch per scale.
    flat = g.constant(np.array([0, 4 + CLASSES, -1], np.int64), "shape")
    scales = []
    for features, channels in ((n3, 64), (m4, 128), (m5, 256)):
        box = g.conv(g.conv(g.conv(features, channels, 64, 3), 64, 64, 3), 64, 4, act=False)
        # As YOLOv8's head: max(channels of the finest scale, min(classes, 100)) = 80.
        cls_hidden = max(64, min(CLASSES, 100))
        cls = g.conv(g.conv(features, channels, cls_hidden, 3), cls_hidden, cls_hidden, 3)
        cls = g.node("Sigmoid", [g.conv(cls, cls_hidden, CLASSES, act=False)], "score")
        both = g.node("Concat", [box, cls], "cat", axis=1)
        scales.append(g.node("Reshape", [both, flat], "flat"))
    g.nodes.append(helper.make_node("Concat", scales, ["output0"], axis=2))
    return helper.make_graph(
        g.nodes,
        "yolov8n",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 4 + CLASSES, "cells"])],
        initializer=g.initializers,
    )


def main() -> None:
    target = pathlib.Path(sys.argv[1])
    model = helper.make_model(yolov8n(), opset_imports=OPSET, producer_name="switchyard")
    model.ir_version = 8
    onnx.checker.check_model(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))
    parameters = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    print(f"{target}: {parameters / 1e6:.2f} M parameters")


if __name__ == "__main__":
    main()
