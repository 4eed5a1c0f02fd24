"""Builds a model repository laid out as Triton's, for the drop-in tests: Triton's example
models (simple, simple_int8, simple_string, simple_sequence, simple_dyna_sequence) with the same
configurations as Triton's example repository, their ONNX graphs written here with the same
arithmetic, plus three models of our own:

- simple_identity: a BYTES identity (Triton's example runs it on its Python backend; here it is
  ONNX, so that strings with an embedded NUL pass through ONNX Runtime);
- simple_string_dyna_sequence: a sequence model with a string correlation id (CONTROL_SEQUENCE_
  CORRID as TYPE_STRING) and an implicit state, the accumulator Triton's sequence examples
  expect of it;
- classifier: a densenet_onnx-shaped classifier (no batch axis; input dims [3, 8, 8] reshaped to
  the model's [1, 3, 8, 8], scores [5] reshaped from [1, 5, 1, 1]) with a label file, for the
  classification extension;
- detector: a small stand-in for a YOLOv8 export, with no config at all: input images
  [batch, 3, H, W] with H and W dynamic, features downsampled to strides 8, 16 and 32, an
  upsampling path that concatenates them (which fails when every dynamic dimension is 1), and
  the three scales' predictions concatenated into [batch, 84, cells].

    python scripts/build_triton_examples.py data/triton_repository

Every graph is deterministic (fixed seed), so a rebuild writes the same files.
"""

import pathlib
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]


def save(graph, path: pathlib.Path) -> None:
    model = helper.make_model(graph, opset_imports=OPSET, producer_name="switchyard")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def tensor(name, elem_type, dims):
    return helper.make_tensor_value_info(name, elem_type, dims)


def add_sub(name: str, elem_type: int, through: int) -> onnx.GraphProto:
    """OUTPUT0 = INPUT0 + INPUT1 and OUTPUT1 = INPUT0 - INPUT1, computed in `through`."""
    nodes = [
        helper.make_node("Cast", ["INPUT0"], ["a"], to=through),
        helper.make_node("Cast", ["INPUT1"], ["b"], to=through),
        helper.make_node("Add", ["a", "b"], ["sum"]),
        helper.make_node("Sub", ["a", "b"], ["difference"]),
        helper.make_node("Cast", ["sum"], ["OUTPUT0"], to=elem_type),
        helper.make_node("Cast", ["difference"], ["OUTPUT1"], to=elem_type),
    ]
    return helper.make_graph(
        nodes,
        name,
        [tensor("INPUT0", elem_type, ["batch", 16]), tensor("INPUT1", elem_type, ["batch", 16])],
        [tensor("OUTPUT0", elem_type, ["batch", 16]), tensor("OUTPUT1", elem_type, ["batch", 16])],
    )


def add_sub_config(name: str, data_type: str) -> str:
    def tensors(prefix):
        return ",\n".join(
            f'  {{\n    name: "{prefix}{i}"\n    data_type: {data_type}\n    dims: [ 16 ]\n  }}'
            for i in range(2)
        )

    return (
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        f"input [\n{tensors('INPUT')}\n]\noutput [\n{tensors('OUTPUT')}\n]\n"
    )


def sequence(name: str, corrid: bool) -> onnx.GraphProto:
    """simple_sequence: OUTPUT = READY * (INPUT + START); simple_dyna_sequence adds
    END * CORRID (the correlation id on the last request), as Triton's example graphs do."""
    int32 = TensorProto.INT32
    inputs = [tensor(n, int32, ["batch", 1]) for n in ("INPUT", "START", "READY")]
    nodes = [helper.make_node("Add", ["INPUT", "START"], ["started"])]
    total = "started"
    if corrid:
        inputs.append(tensor("END", int32, ["batch", 1]))
        inputs.append(tensor("CORRID", TensorProto.UINT64, ["batch", 1]))
        nodes += [
            helper.make_node("Cast", ["CORRID"], ["corrid"], to=int32),
            helper.make_node("Mul", ["END", "corrid"], ["ending"]),
            helper.make_node("Add", ["started", "ending"], ["total"]),
        ]
        total = "total"
    nodes.append(helper.make_node("Mul", ["READY", total], ["OUTPUT"]))
    return helper.make_graph(nodes, name, inputs, [tensor("OUTPUT", int32, ["batch", 1])])


SEQUENCE_CONFIG = """name: "simple_sequence"
platform: "onnxruntime_onnx"
max_batch_size: 8
sequence_batching {
  control_input [
    {
      name: "START"
      control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ]
    },
    {
      name: "READY"
      control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ]
    }
  ]
}
input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU } ]
"""

DYNA_SEQUENCE_CONFIG = """name: "simple_dyna_sequence"
platform: "onnxruntime_onnx"
max_batch_size: 8
sequence_batching {
  max_sequence_idle_microseconds: 10000000
  oldest {
    max_candidate_sequences: 1024
    max_queue_delay_microseconds: 10000
  }
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
    { name: "END" control [ { kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }
  ]
}
input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
parameters [ { key: "execute_delay_ms" value: { string_value: "3" } } ]
instance_group [ { count: 2 kind: KIND_CPU } ]
"""


def string_dyna_sequence() -> onnx.GraphProto:
    """OUTPUT = READY * (ACC + INPUT + END * int(CORRID)), and ACC_OUT = OUTPUT: an accumulator
    whose state the gateway keeps (implicit state), with a string correlation id."""
    int32 = TensorProto.INT32
    nodes = [
        helper.make_node("Cast", ["CORRID"], ["corrid"], to=int32),
        helper.make_node("Mul", ["END", "corrid"], ["ending"]),
        helper.make_node("Add", ["ACC", "INPUT"], ["running"]),
        helper.make_node("Add", ["running", "ending"], ["total"]),
        helper.make_node("Mul", ["READY", "total"], ["OUTPUT"]),
        helper.make_node("Identity", ["OUTPUT"], ["ACC_OUT"]),
    ]
    inputs = [tensor(n, int32, ["batch", 1]) for n in ("INPUT", "START", "END", "READY", "ACC")]
    inputs.append(tensor("CORRID", TensorProto.STRING, ["batch", 1]))
    outputs = [tensor("OUTPUT", int32, ["batch", 1]), tensor("ACC_OUT", int32, ["batch", 1])]
    return helper.make_graph(nodes, "string_dyna_sequence", inputs, outputs)


STRING_DYNA_SEQUENCE_CONFIG = """name: "simple_string_dyna_sequence"
platform: "onnxruntime_onnx"
max_batch_size: 8
sequence_batching {
  max_sequence_idle_microseconds: 10000000
  oldest { max_candidate_sequences: 64 max_queue_delay_microseconds: 1000 }
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
    { name: "END" control [ { kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_STRING } ] }
  ]
  state [
    {
      input_name: "ACC"
      output_name: "ACC_OUT"
      data_type: TYPE_INT32
      dims: [ 1 ]
      initial_state: { data_type: TYPE_INT32 dims: [ 1 ] zero_data: true name: "zero" }
    }
  ]
}
input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""

IDENTITY_CONFIG = """name: "simple_identity"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
"""


def identity() -> onnx.GraphProto:
    return helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        "identity",
        [tensor("INPUT0", TensorProto.STRING, ["batch", "n"])],
        [tensor("OUTPUT0", TensorProto.STRING, ["batch", "n"])],
    )


def detector(classes: int = 80) -> onnx.GraphProto:
    """A YOLOv8-shaped detector: stride-2 convolutions down to strides 8, 16 and 32, a top-down
    path that upsamples stride 32 and concatenates it with stride 16 (and that with stride 8),
    1x1 heads of 4 box values and `classes` scores, and the three scales flattened and
    concatenated along the cells. H and W must be multiples of 32, as YOLOv8's are."""
    rng = np.random.default_rng(8)
    initializers, nodes = [], []

    def weight(name, shape):
        initializers.append(
            numpy_helper.from_array(
                (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32), name
            )
        )
        return name

    def conv(source, target, c_in, c_out, stride, kernel=3):
        w = weight(f"{target}_w", [c_out, c_in, kernel, kernel])
        b = weight(f"{target}_b", [c_out])
        pad = kernel // 2
        nodes.append(
            helper.make_node(
                "Conv", [source, w, b], [f"{target}_conv"],
                strides=[stride, stride], pads=[pad, pad, pad, pad], kernel_shape=[kernel, kernel],
            )
        )
        nodes.append(helper.make_node("Relu", [f"{target}_conv"], [target]))
        return target

    widths = [8, 16, 32, 32, 32]
    source, c_in = "images", 3
    levels = []
    for index, width in enumerate(widths):
        source = conv(source, f"down{index}", c_in, width, 2)
        c_in = width
        levels.append(source)
    p3, p4, p5 = levels[2], levels[3], levels[4]
    initializers.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scale2"))
    nodes.append(helper.make_node("Resize", [p5, "", "scale2"], ["up5"], mode="nearest"))
    nodes.append(helper.make_node("Concat", ["up5", p4], ["cat4"], axis=1))
    n4 = conv("cat4", "fuse4", 64, 32, 1)
    nodes.append(helper.make_node("Resize", [n4, "", "scale2"], ["up4"], mode="nearest"))
    nodes.append(helper.make_node("Concat", ["up4", p3], ["cat3"], axis=1))
    n3 = conv("cat3", "fuse3", 64, 32, 1)
    outputs = 4 + classes
    initializers.append(numpy_helper.from_array(np.array([0, outputs, -1], np.int64), "flat"))
    flattened = []
    for scale, features in (("s8", n3), ("s16", n4), ("s32", p5)):
        w = weight(f"head_{scale}_w", [outputs, 32, 1, 1])
        b = weight(f"head_{scale}_b", [outputs])
        nodes.append(helper.make_node("Conv", [features, w, b], [f"head_{scale}"]))
        nodes.append(helper.make_node("Reshape", [f"head_{scale}", "flat"], [f"flat_{scale}"]))
        flattened.append(f"flat_{scale}")
    nodes.append(helper.make_node("Concat", flattened, ["raw"], axis=2))
    nodes.append(helper.make_node("Sigmoid", ["raw"], ["output0"]))
    return helper.make_graph(
        nodes,
        "detector",
        [tensor("images", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [tensor("output0", TensorProto.FLOAT, ["batch", outputs, "cells"])],
        initializer=initializers,
    )


CLASSIFIER_LABELS = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead"]

CLASSIFIER_CONFIG = """name: "classifier"
platform: "onnxruntime_onnx"
max_batch_size : 0
input [
  {
    name: "data_0"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 8, 8 ]
    reshape { shape: [ 1, 3, 8, 8 ] }
  }
]
output [
  {
    name: "fc6_1"
    data_type: TYPE_FP32
    dims: [ 5 ]
    reshape { shape: [ 1, 5, 1, 1 ] }
    label_filename: "labels.txt"
  }
]
"""


def classifier() -> onnx.GraphProto:
    """Global average pooling, then a 1x1 convolution to five scores: [1, 3, 8, 8] ->
    [1, 5, 1, 1], as densenet's head has it."""
    rng = np.random.default_rng(5)
    weights = numpy_helper.from_array(rng.standard_normal((5, 3, 1, 1)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "b")
    nodes = [
        helper.make_node("GlobalAveragePool", ["data_0"], ["pooled"]),
        helper.make_node("Conv", ["pooled", "w", "b"], ["fc6_1"]),
    ]
    return helper.make_graph(
        nodes,
        "classifier",
        [tensor("data_0", TensorProto.FLOAT, [1, 3, 8, 8])],
        [tensor("fc6_1", TensorProto.FLOAT, [1, 5, 1, 1])],
        initializer=[weights, bias],
    )


def main(target: pathlib.Path) -> None:
    models = {
        "simple": (add_sub("simple", TensorProto.INT32, TensorProto.INT32),
                   add_sub_config("simple", "TYPE_INT32")),
        "simple_int8": (add_sub("simple_int8", TensorProto.INT8, TensorProto.INT32),
                        add_sub_config("simple_int8", "TYPE_INT8")),
        "simple_string": (add_sub("simple_string", TensorProto.STRING, TensorProto.INT32),
                          add_sub_config("simple_string", "TYPE_STRING")),
        "simple_identity": (identity(), IDENTITY_CONFIG),
        "simple_sequence": (sequence("simple_sequence", corrid=False), SEQUENCE_CONFIG),
        "simple_dyna_sequence": (sequence("simple_dyna_sequence", corrid=True),
                                 DYNA_SEQUENCE_CONFIG),
        "simple_string_dyna_sequence": (string_dyna_sequence(), STRING_DYNA_SEQUENCE_CONFIG),
        "classifier": (classifier(), CLASSIFIER_CONFIG),
        "detector": (detector(), None),
    }
    for name, (graph, config) in models.items():
        save(graph, target / name / "1" / "model.onnx")
        if config is not None:
            (target / name / "config.pbtxt").write_text(config)
    (target / "classifier" / "labels.txt").write_text("\n".join(CLASSIFIER_LABELS) + "\n")
    print(f"wrote {len(models)} models to {target}")


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
