"""Drives a Switchyard serving a model repository laid out as Triton's (data/triton_repository,
made by scripts/build_triton_examples.py: Triton's example models with the same config.pbtxt,
and a detector with no config at all) with Triton's own Python clients, over HTTP and gRPC, the
way Triton's client examples do, and checks every answer.

    .tools/venv/bin/python loadtest/triton_repository_check.py --http 127.0.0.1:8000 --grpc 127.0.0.1:8001

It covers: every model READY with no model.toml; sync, async and asyncio inference; strings,
with an embedded NUL and arbitrary bytes; sequences whose control inputs (START, END, READY,
CORRID) the gateway feeds, sync and streamed, with the direct and oldest strategies and with
integer and string correlation ids; typed gRPC contents answered in raw contents; Triton's
wording for an unknown model; the detector's answers against ONNX Runtime's run of the same
file; system shared memory for numbers and strings, inputs and outputs; classification with
labels. With --control-http/--control-grpc, a second gateway started with
--model-control-mode explicit: the repository index, load with a config override, unload, and
the refusals. Exits non-zero on the first mismatch; scripts/test runs it.
"""

import argparse
import asyncio
import pathlib
import queue
import sys
import uuid

import grpc
import numpy as np
import onnxruntime
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
import tritonclient.utils.shared_memory as shm
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, serialize_byte_tensor, serialized_byte_size

ROOT = pathlib.Path(__file__).resolve().parent.parent
REPOSITORY = ROOT / "data/triton_repository"
MODELS = [
    "simple",
    "simple_int8",
    "simple_string",
    "simple_identity",
    "simple_sequence",
    "simple_dyna_sequence",
    "simple_string_dyna_sequence",
    "classifier",
    "detector",
]
onnxruntime.set_default_logger_severity(3)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def simple_inputs(module, dtype=np.int32, datatype="INT32", rows=1):
    in0 = np.arange(16 * rows, dtype=dtype).reshape(rows, 16) % 100
    in1 = np.ones((rows, 16), dtype=dtype)
    tensors = [module.InferInput("INPUT0", [rows, 16], datatype), module.InferInput("INPUT1", [rows, 16], datatype)]
    tensors[0].set_data_from_numpy(in0)
    tensors[1].set_data_from_numpy(in1)
    return tensors, in0 + in1, in0 - in1


def check_readiness(client, name: str) -> None:
    check(client.is_server_live() and client.is_server_ready(), f"{name}: server not ready")
    for model in MODELS:
        check(client.is_model_ready(model), f"{name}: {model} is not READY")


def check_sync(module, client, name: str) -> int:
    for model, dtype, datatype in (("simple", np.int32, "INT32"), ("simple_int8", np.int8, "INT8")):
        for rows in (1, 3):
            inputs, total, difference = simple_inputs(module, dtype, datatype, rows)
            result = client.infer(model, inputs)
            check(np.array_equal(result.as_numpy("OUTPUT0"), total), f"{name} {model} sum")
            check(np.array_equal(result.as_numpy("OUTPUT1"), difference), f"{name} {model} difference")
    config = client.get_model_config("simple", as_json=True)["config"] if name == "grpc" else client.get_model_config("simple")
    check(int(config["max_batch_size"]) == 8 and config["platform"] == "onnxruntime_onnx", f"{name} simple config: {config}")
    return 1


def check_async(module, client, name: str) -> int:
    inputs, total, _ = simple_inputs(module)
    if name == "http":
        pending = [client.async_infer("simple", inputs) for _ in range(4)]
        results = [request.get_result() for request in pending]
    else:
        answers = queue.Queue()
        for _ in range(4):
            client.async_infer("simple", inputs, callback=lambda result, error: answers.put((result, error)))
        results = []
        for _ in range(4):
            result, error = answers.get(timeout=30)
            check(error is None, f"grpc async: {error}")
            results.append(result)
    for result in results:
        check(np.array_equal(result.as_numpy("OUTPUT0"), total), f"{name} async sum")
    return 1


async def check_aio(http_url: str, grpc_url: str) -> int:
    for name, module, url in (("http", httpaio, http_url), ("grpc", grpcaio, grpc_url)):
        client = module.InferenceServerClient(url=url)
        try:
            inputs, total, difference = simple_inputs(module)
            results = await asyncio.gather(*(client.infer("simple", inputs) for _ in range(4)))
            for result in results:
                check(np.array_equal(result.as_numpy("OUTPUT0"), total), f"{name} aio sum")
                check(np.array_equal(result.as_numpy("OUTPUT1"), difference), f"{name} aio difference")
        finally:
            await client.close()
    return 2


def check_strings(module, client, name: str) -> int:
    numbers = np.arange(16, dtype=np.int32).reshape(1, 16)
    in0 = np.array([str(x).encode() for x in numbers.ravel()], dtype=np.object_).reshape(1, 16)
    in1 = np.array([b"1"] * 16, dtype=np.object_).reshape(1, 16)
    for binary in (True, False) if name == "http" else (True,):
        tensors = [module.InferInput("INPUT0", [1, 16], "BYTES"), module.InferInput("INPUT1", [1, 16], "BYTES")]
        if name == "http":
            tensors[0].set_data_from_numpy(in0, binary_data=binary)
            tensors[1].set_data_from_numpy(in1, binary_data=binary)
        else:
            tensors[0].set_data_from_numpy(in0)
            tensors[1].set_data_from_numpy(in1)
        result = client.infer("simple_string", tensors)
        sums = [int(x) for x in result.as_numpy("OUTPUT0").ravel()]
        check(sums == list(range(1, 17)), f"{name} simple_string sums: {sums}")
    # An embedded NUL and arbitrary bytes pass through ONNX Runtime's string tensors whole.
    cases = [
        np.array(["he\x00llo".encode()] * 16, dtype=np.object_).reshape(1, 16),
        np.array([b"\x00\x01\x02\x03"] * 8 + [b"\xff\xfe\x00", b""] * 4, dtype=np.object_).reshape(1, 16),
    ]
    for data in cases:
        encodings = (True, False) if name == "http" else (True,)
        for binary in encodings:
            if not binary and any(b"\xff" in bytes(x) for x in data.ravel()):
                continue  # JSON carries text: bytes that are not UTF-8 go binary
            tensor = module.InferInput("INPUT0", list(data.shape), "BYTES")
            if name == "http":
                tensor.set_data_from_numpy(data, binary_data=binary)
                wanted = [module.InferRequestedOutput("OUTPUT0", binary_data=binary)]
            else:
                tensor.set_data_from_numpy(data)
                wanted = [module.InferRequestedOutput("OUTPUT0")]
            result = client.infer("simple_identity", [tensor], outputs=wanted)
            answer = result.as_numpy("OUTPUT0")
            answer = np.array([x if isinstance(x, bytes) else str(x).encode() for x in answer.ravel()], dtype=np.object_)
            check(list(answer) == list(data.ravel()), f"{name} simple_identity (binary {binary}): {answer[:3]}")
    return 1


def sequence_inputs(module, value):
    tensor = module.InferInput("INPUT", [1, 1], "INT32")
    tensor.set_data_from_numpy(np.full((1, 1), value, dtype=np.int32))
    return [tensor]


VALUES = [11, 7, 5, 3, 2, 0, 1]


def expected_outputs(model: str, sequence_id, first: int, values):
    """What Triton's example graphs answer: READY * (INPUT + START), plus END * CORRID for
    simple_dyna_sequence; simple_string_dyna_sequence accumulates (its state), plus its
    numeric id on the last request."""
    sent = [first] + values
    outputs, total = [], 0
    for index, value in enumerate(sent):
        start, end = index == 0, index == len(sent) - 1
        if model == "simple_string_dyna_sequence":
            total += value
            outputs.append(total + (int(sequence_id) if end else 0))
        else:
            output = value + int(start)
            if model == "simple_dyna_sequence" and end:
                output += int(sequence_id)
            outputs.append(output)
    return outputs


def check_sequences_sync(module, client, name: str) -> int:
    passed = 0
    cases = [
        ("simple_sequence", 1000, 0),
        ("simple_sequence", "seq-" + uuid.uuid4().hex[:8], 100),  # a string id, no CORRID input
        ("simple_dyna_sequence", 1001, 20),
        ("simple_string_dyna_sequence", "1002", 30),
    ]
    for model, sequence_id, first in cases:
        if isinstance(sequence_id, int) and name == "grpc":
            sequence_id += 10
        values = [first] + VALUES
        answers = []
        for index, value in enumerate(values):
            result = client.infer(
                model,
                sequence_inputs(module, value),
                sequence_id=sequence_id,
                sequence_start=index == 0,
                sequence_end=index == len(values) - 1,
            )
            answers.append(int(result.as_numpy("OUTPUT").ravel()[0]))
        expected = expected_outputs(model, sequence_id, first, VALUES)
        check(answers == expected, f"{name} {model} id {sequence_id!r}: {answers} != {expected}")
        passed += 1
    # Triton's refusals, in its words.
    refusals = [
        ("simple_dyna_sequence", dict(sequence_id="not-a-number", sequence_start=True), "expects 'UINT64'"),
        ("simple_sequence", dict(sequence_id=0), "must specify a non-zero or non-empty correlation ID"),
        ("simple_sequence", dict(sequence_id=77, sequence_start=False), "sequence_start"),
    ]
    for model, arguments, words in refusals:
        try:
            client.infer(model, sequence_inputs(module, 1), **arguments)
            check(False, f"{name} {model} {arguments} was accepted")
        except InferenceServerException as error:
            check(words in str(error), f"{name} {model} {arguments}: {error}")
    tensor = module.InferInput("INPUT", [2, 1], "INT32")
    tensor.set_data_from_numpy(np.ones((2, 1), dtype=np.int32))
    try:
        client.infer("simple_sequence", [tensor], sequence_id=78, sequence_start=True)
        check(False, f"{name}: a sequence request of two rows was accepted")
    except InferenceServerException as error:
        check("batch-size 1" in str(error), f"{name} two rows: {error}")
    return passed + 1


def check_sequences_streamed(url: str) -> int:
    """Three sequences interleaved on one stream, as Triton's stream example sends them: the
    answers of each come back in its order, whatever the others do."""
    answers = queue.Queue()
    client = grpcclient.InferenceServerClient(url=url)
    sequences = [
        ("simple_dyna_sequence", 2000, 0),
        ("simple_dyna_sequence", 2001, 100),
        ("simple_string_dyna_sequence", "2002", 20),
        ("simple_sequence", "stream-" + uuid.uuid4().hex[:8], 5),
    ]
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for model, sequence_id, first in sequences:
            values = [first] + VALUES
            for index, value in enumerate(values):
                client.async_stream_infer(
                    model,
                    sequence_inputs(grpcclient, value),
                    request_id=f"{sequence_id}_{index}",
                    sequence_id=sequence_id,
                    sequence_start=index == 0,
                    sequence_end=index == len(values) - 1,
                )
        received = {str(sequence_id): [] for _, sequence_id, _ in sequences}
        for _ in range(len(sequences) * (len(VALUES) + 1)):
            result, error = answers.get(timeout=30)
            check(error is None, f"stream: {error}")
            sequence_id = result.get_response().id.rsplit("_", 1)[0]
            received[sequence_id].append(int(result.as_numpy("OUTPUT").ravel()[0]))
    finally:
        client.stop_stream()
        client.close()
    for model, sequence_id, first in sequences:
        expected = expected_outputs(model, sequence_id, first, VALUES)
        check(received[str(sequence_id)] == expected, f"stream {model} {sequence_id}: {received[str(sequence_id)]} != {expected}")
    return 1


def check_explicit_contents(url: str) -> int:
    """A request in typed contents (int_contents, bytes_contents) is answered in
    raw_output_contents, as Triton answers, whatever form the request used."""
    channel = grpc.insecure_channel(url)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    for model, datatype, field, values in (
        ("simple", "INT32", "int_contents", list(range(16))),
        ("simple_int8", "INT8", "int_contents", list(range(-8, 8))),
        ("simple_string", "BYTES", "bytes_contents", [str(v).encode() for v in range(16)]),
    ):
        request = service_pb2.ModelInferRequest(model_name=model)
        for input_name, data in (("INPUT0", values), ("INPUT1", values)):
            tensor = service_pb2.ModelInferRequest().InferInputTensor(name=input_name, datatype=datatype, shape=[1, 16])
            getattr(tensor.contents, field).extend(data)
            request.inputs.extend([tensor])
        response = stub.ModelInfer(request)
        check(len(response.raw_output_contents) == 2, f"{model}: answered without raw contents: {response}")
        for output in response.outputs:
            check(not output.HasField("contents"), f"{model}: typed contents in the answer")
        result = grpcclient.InferResult(response)
        total = result.as_numpy("OUTPUT0").ravel()
        if datatype == "BYTES":
            total = np.array([int(x) for x in total])
        check(list(total) == [2 * v for v in values] if datatype != "BYTES" else list(total) == [2 * v for v in range(16)], f"{model} typed sum: {total}")
    channel.close()
    return 1


def check_unknown_model(module, client, name: str) -> int:
    inputs, _, _ = simple_inputs(module)
    for call in (
        lambda: client.infer("wrong_model_name", inputs),
        lambda: client.get_model_metadata("wrong_model_name"),
        lambda: client.infer("simple", inputs, model_version="7"),
    ):
        try:
            call()
            check(False, f"{name}: an unknown model or version was served")
        except InferenceServerException as error:
            check(error.message().startswith("Request for unknown model"), f"{name}: not in Triton's words: {error}")
    return 1


def check_detector(module, client, name: str) -> int:
    """The detector loaded on the defaults (no config); its answers at sizes other than the
    one it was warmed up on equal ONNX Runtime's run of the same file."""
    reference = onnxruntime.InferenceSession(str(REPOSITORY / "detector/1/model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    for height, width in ((64, 96), (160, 128)):
        images = rng.random((1, 3, height, width), dtype=np.float32)
        (expected,) = reference.run(None, {"images": images})
        tensor = module.InferInput("images", list(images.shape), "FP32")
        if name == "http":
            tensor.set_data_from_numpy(images, binary_data=True)
        else:
            tensor.set_data_from_numpy(images)
        result = client.infer("detector", [tensor])
        answer = result.as_numpy("output0")
        check(answer.shape == expected.shape, f"{name} detector {height}x{width}: shape {answer.shape} != {expected.shape}")
        difference = float(np.max(np.abs(answer - expected)))
        check(difference <= 1e-5, f"{name} detector {height}x{width}: max difference {difference}")
    return 1


def check_shared_memory(module, client, name: str) -> int:
    """Inputs read from and outputs written into system shared memory, numbers and strings, as
    Triton's shm examples do; then the refusals: an unknown region, a place past a region's
    end, a region too small for the output."""
    tag = f"{name}-{uuid.uuid4().hex[:6]}"
    client.unregister_system_shared_memory()
    handles = []
    try:
        # Numbers: simple's two inputs in one region, its two outputs in another.
        in0 = np.arange(16, dtype=np.int32).reshape(1, 16)
        in1 = np.ones((1, 16), dtype=np.int32)
        size = in0.nbytes
        inputs_handle = shm.create_shared_memory_region(f"in-{tag}", f"/in-{tag}", size * 2)
        outputs_handle = shm.create_shared_memory_region(f"out-{tag}", f"/out-{tag}", size * 2)
        handles += [inputs_handle, outputs_handle]
        shm.set_shared_memory_region(inputs_handle, [in0])
        shm.set_shared_memory_region(inputs_handle, [in1], offset=size)
        client.register_system_shared_memory(f"in-{tag}", f"/in-{tag}", size * 2)
        client.register_system_shared_memory(f"out-{tag}", f"/out-{tag}", size * 2)
        status = client.get_system_shared_memory_status()
        regions = status if name == "http" else list(status.regions.values())
        check(len(regions) == 2, f"{name} shm status: {status}")
        tensors = [module.InferInput("INPUT0", [1, 16], "INT32"), module.InferInput("INPUT1", [1, 16], "INT32")]
        tensors[0].set_shared_memory(f"in-{tag}", size)
        tensors[1].set_shared_memory(f"in-{tag}", size, offset=size)
        wanted = [module.InferRequestedOutput("OUTPUT0"), module.InferRequestedOutput("OUTPUT1")]
        wanted[0].set_shared_memory(f"out-{tag}", size)
        wanted[1].set_shared_memory(f"out-{tag}", size, offset=size)
        result = client.infer("simple", tensors, outputs=wanted)
        output = result.get_output("OUTPUT0")
        shape = output["shape"] if name == "http" else output.shape
        check(list(shape) == [1, 16], f"{name} shm output shape {shape}")
        total = shm.get_contents_as_numpy(outputs_handle, np.int32, [1, 16])
        difference = shm.get_contents_as_numpy(outputs_handle, np.int32, [1, 16], offset=size)
        check(np.array_equal(total, in0 + in1), f"{name} shm sum {total}")
        check(np.array_equal(difference, in0 - in1), f"{name} shm difference {difference}")

        # Strings: simple_string's inputs and outputs, serialized as Triton's clients do.
        strings0 = np.array([str(x).encode() for x in range(16)], dtype=np.object_).reshape(1, 16)
        strings1 = np.array([b"1"] * 16, dtype=np.object_).reshape(1, 16)
        bytes0, bytes1 = serialize_byte_tensor(strings0), serialize_byte_tensor(strings1)
        size0, size1 = serialized_byte_size(bytes0), serialized_byte_size(bytes1)
        string_in = shm.create_shared_memory_region(f"sin-{tag}", f"/sin-{tag}", size0 + size1)
        string_out = shm.create_shared_memory_region(f"sout-{tag}", f"/sout-{tag}", 512)
        handles += [string_in, string_out]
        shm.set_shared_memory_region(string_in, [bytes0])
        shm.set_shared_memory_region(string_in, [bytes1], offset=size0)
        client.register_system_shared_memory(f"sin-{tag}", f"/sin-{tag}", size0 + size1)
        client.register_system_shared_memory(f"sout-{tag}", f"/sout-{tag}", 512)
        tensors = [module.InferInput("INPUT0", [1, 16], "BYTES"), module.InferInput("INPUT1", [1, 16], "BYTES")]
        tensors[0].set_shared_memory(f"sin-{tag}", size0)
        tensors[1].set_shared_memory(f"sin-{tag}", size1, offset=size0)
        wanted = [module.InferRequestedOutput("OUTPUT0")]
        wanted[0].set_shared_memory(f"sout-{tag}", 512)
        result = client.infer("simple_string", tensors, outputs=wanted)
        sums = shm.get_contents_as_numpy(string_out, np.object_, [1, 16])
        check([int(x) for x in sums.ravel()] == list(range(1, 17)), f"{name} shm strings {sums}")

        # Refusals, each a clear error.
        def refused(build, words):
            tensors, wanted = build()
            try:
                client.infer("simple", tensors, outputs=wanted)
                check(False, f"{name}: {words} was accepted")
            except InferenceServerException as error:
                check(words in str(error), f"{name} {words}: {error}")

        def request(region=f"in-{tag}", offset=0, out_size=size):
            def build():
                tensors = [module.InferInput("INPUT0", [1, 16], "INT32"), module.InferInput("INPUT1", [1, 16], "INT32")]
                tensors[0].set_shared_memory(region, size, offset=offset)
                tensors[1].set_shared_memory(f"in-{tag}", size)
                wanted = [module.InferRequestedOutput("OUTPUT0")]
                wanted[0].set_shared_memory(f"out-{tag}", out_size)
                return tensors, wanted
            return build

        refused(request(region="no-such-region"), "Unable to find system shared memory region")
        refused(request(offset=size * 2 - 8), "runs past shared memory region")
        refused(request(out_size=8), "more than the 8")
    finally:
        client.unregister_system_shared_memory()
        for handle in handles:
            shm.destroy_shared_memory_region(handle)
    check(not (client.get_system_shared_memory_status() if name == "http" else client.get_system_shared_memory_status().regions), f"{name}: regions left")
    return 1


def check_classification(module, client, name: str) -> int:
    """The classifier's scores as its top classes with their labels, as Triton's image
    client asks for them; computed here from ONNX Runtime's run of the same file."""
    reference = onnxruntime.InferenceSession(str(REPOSITORY / "classifier/1/model.onnx"), providers=["CPUExecutionProvider"])
    labels = (REPOSITORY / "classifier/labels.txt").read_text().splitlines()
    image = np.random.default_rng(11).random((3, 8, 8), dtype=np.float32)
    (scores,) = reference.run(None, {"data_0": image[None]})
    scores = scores.ravel()
    top = np.argsort(-scores, kind="stable")[:3]
    expected = [f"{scores[i]:.6f}:{i}:{labels[i]}" for i in top]
    tensor = module.InferInput("data_0", [3, 8, 8], "FP32")
    tensor.set_data_from_numpy(image)
    wanted = [module.InferRequestedOutput("fc6_1", class_count=3)]
    result = client.infer("classifier", [tensor], outputs=wanted)
    answer = [x.decode() if isinstance(x, bytes) else str(x) for x in result.as_numpy("fc6_1").ravel()]
    check(answer == expected, f"{name} classification: {answer} != {expected}")
    return 1


def check_model_control(http_url: str, grpc_url: str) -> int:
    """Against a gateway started with --model-control-mode explicit on the same repository:
    the index, a load, a load with a config override (and one that does not parse), an
    unload, and an unknown model, over both transports."""
    http = httpclient.InferenceServerClient(url=http_url)
    grpc_client = grpcclient.InferenceServerClient(url=grpc_url)
    index = http.get_model_repository_index()
    names = sorted({entry["name"] for entry in index})
    check(names == sorted(MODELS), f"index: {names}")
    check(not http.is_model_ready("simple"), "simple served before it was loaded")
    for name, client in (("http", http), ("grpc", grpc_client)):
        client.load_model("simple")
        check(client.is_model_ready("simple"), f"{name}: simple not ready after load")
        try:
            client.load_model("simple", config='"parameters": {"config": {{"max_batch_size": "16"}}}')
            check(False, f"{name}: a malformed override was accepted")
        except InferenceServerException as error:
            check("failed to load" in error.message(), f"{name}: {error}")
        client.load_model("simple", config='{"max_batch_size":"16"}')
        config = client.get_model_config("simple")
        batch = config["max_batch_size"] if name == "http" else config.config.max_batch_size
        check(int(batch) == 16, f"{name}: max_batch_size {batch} after the override")
        inputs, total, _ = simple_inputs(client.__module__.startswith("tritonclient.http") and httpclient or grpcclient, rows=12)
        result = client.infer("simple", inputs)
        check(np.array_equal(result.as_numpy("OUTPUT0"), total), f"{name}: 12 rows after the override")
        client.unload_model("simple")
        check(not client.is_model_ready("simple"), f"{name}: simple still ready after unload")
        try:
            client.load_model("wrong_model_name")
            check(False, f"{name}: an unknown model was loaded")
        except InferenceServerException as error:
            check("failed to load" in error.message(), f"{name}: {error}")
    ready = http.get_model_repository_index(query_params=None)
    states = {(e["name"], e.get("version")): e.get("state") for e in ready}
    check(states.get(("simple", "1")) == "UNAVAILABLE", f"index after unload: {states}")
    http.close()
    grpc_client.close()
    return 1


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", default="127.0.0.1:8000")
    parser.add_argument("--grpc", default="127.0.0.1:8001")
    parser.add_argument("--control-http", help="a gateway in explicit model control mode (HTTP)")
    parser.add_argument("--control-grpc", help="the same gateway's gRPC address")
    args = parser.parse_args()
    passed = 0
    for name, module, url in (("http", httpclient, args.http), ("grpc", grpcclient, args.grpc)):
        client = module.InferenceServerClient(url=url, concurrency=4) if name == "http" else module.InferenceServerClient(url=url)
        check_readiness(client, name)
        passed += check_sync(module, client, name)
        passed += check_async(module, client, name)
        passed += check_strings(module, client, name)
        passed += check_sequences_sync(module, client, name)
        passed += check_unknown_model(module, client, name)
        passed += check_detector(module, client, name)
        passed += check_shared_memory(module, client, name)
        passed += check_classification(module, client, name)
        client.close()
    passed += asyncio.run(check_aio(args.http, args.grpc))
    passed += check_sequences_streamed(args.grpc)
    passed += check_explicit_contents(args.grpc)
    if args.control_http and args.control_grpc:
        passed += check_model_control(args.control_http, args.control_grpc)
    print(f"triton repository check: {passed} passed, 0 failed")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AssertionError as failure:
        print(f"triton repository check FAILED: {failure}")
        sys.exit(1)
