"""The committed generated code is current, and coexists with tritonclient's own bindings."""

import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_not_stale():
    spec = importlib.util.spec_from_file_location("generate", ROOT / "proto" / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    diffs = generate.check()
    assert not diffs, "guard/proto is stale; run `make proto`:\n" + "\n".join(diffs[:40])


def test_wire_compatible_with_tritonclient_in_one_process():
    from tritonclient.grpc import service_pb2 as theirs

    from guard.protocol.proto import inference_pb2 as ours

    request = ours.ModelInferRequest(model_name="digits", id="7", raw_input_contents=[b"\x00" * 8])
    request.inputs.add(name="input", datatype="FP32", shape=[1, 2])
    request.parameters["timeout"].int64_param = 1000
    decoded = theirs.ModelInferRequest.FromString(request.SerializeToString())
    assert decoded.model_name == "digits" and decoded.id == "7"
    assert list(decoded.inputs[0].shape) == [1, 2]
    assert decoded.parameters["timeout"].int64_param == 1000

    response = theirs.ModelInferResponse(model_name="digits", raw_output_contents=[np.ones(2, np.float32).tobytes()])
    response.outputs.add(name="logits", datatype="FP32", shape=[1, 2])
    response.parameters["guard_verdict"].string_param = "clean"
    back = ours.ModelInferResponse.FromString(response.SerializeToString())
    assert back.parameters["guard_verdict"].string_param == "clean"
    assert back.outputs[0].shape == [1, 2]
