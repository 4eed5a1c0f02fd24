"""Builds the CNN benchmark's transport floor: a model with the detector's input and output
(images [batch, 3, 320, 320] -> output0 [batch, 84, 2100], FP32) that only slices its input,
so that a request through the gateway costs what moving 1.2 MB in and 706 KB out costs, and a
few microseconds of ONNX Runtime.

    python scripts/build_transport_floor.py data/bench/yolo_floor/1/model.onnx
"""

import pathlib
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CELLS = 2100  # 40x40 + 20x20 + 10x10 at 320x320
VALUES = 84 * CELLS


def main() -> None:
    target = pathlib.Path(sys.argv[1])
    target.parent.mkdir(parents=True, exist_ok=True)
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 320, 320])
    output = helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 84, CELLS])
    constants = [
        numpy_helper.from_array(np.array([0], dtype=np.int64), "starts"),
        numpy_helper.from_array(np.array([VALUES], dtype=np.int64), "ends"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        numpy_helper.from_array(np.array([0, 84, CELLS], dtype=np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Flatten", ["images"], ["flat"], axis=1),
        helper.make_node("Slice", ["flat", "starts", "ends", "axes"], ["kept"]),
        helper.make_node("Reshape", ["kept", "shape"], ["output0"]),
    ]
    graph = helper.make_graph(nodes, "transport_floor", [images], [output], initializer=constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(target))
    print(target)


if __name__ == "__main__":
    main()
