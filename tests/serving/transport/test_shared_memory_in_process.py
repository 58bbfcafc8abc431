"""The system shared-memory extension's parts in process, without a gateway: the messages and methods
against tritonclient's, which contents the codec gives each input and how it checks the shared-memory
parameters, the registry's file descriptors, and a stream's held bytes counting what is read from
shared memory."""

from __future__ import annotations

import os

import numpy as np
import pytest

from guard.protocol import codec
from guard.protocol.errors import InvalidInput
from guard.protocol.proto import inference_pb2 as pb
from guard.serving.shared_memory import SharedMemoryRegistry


def test_messages_match_tritonclients_field_for_field():
    from google.protobuf import descriptor_pb2
    from tritonclient.grpc import service_pb2 as theirs

    def shared_memory_parts(module):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        messages = {
            m.name: m.SerializeToString(deterministic=True) for m in proto.message_type if "SharedMemory" in m.name
        }
        methods = {
            (m.name, m.input_type, m.output_type) for s in proto.service for m in s.method if "SharedMemory" in m.name
        }
        return messages, methods

    assert shared_memory_parts(pb) == shared_memory_parts(theirs)
    assert len(shared_memory_parts(pb)[1]) == 6


# The codec's part: which contents each input takes.


def test_raw_contents_belong_to_the_inputs_not_in_shared_memory_in_order():
    """Triton's rule: a request's raw_input_contents hold the inputs without shared memory only."""
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="a", datatype="FP32", shape=[2])
    message.inputs.add(name="b", datatype="BYTES", shape=[2])
    message.inputs.add(name="c", datatype="INT32", shape=[1])
    for name, region, size in (("a", "ra", 8), ("b", "rb", 11)):
        params = message.inputs[[t.name for t in message.inputs].index(name)].parameters
        params[codec.SHM_REGION].string_param = region
        params[codec.SHM_BYTE_SIZE].int64_param = size
    message.raw_input_contents.append(np.int32([7]).tobytes())
    contents = {"ra": np.float32([1.5, 2.5]).tobytes(), "rb": b"\x02\0\0\0hi\x01\0\0\0z"}
    reads = []

    def read(where, tensor):
        reads.append((tensor, where))
        return contents[where.region]

    inputs = codec.decode_inputs(message, codec.read_headers(message), read)
    assert inputs["a"].tolist() == [1.5, 2.5] and list(inputs["b"]) == [b"hi", b"z"] and inputs["c"].tolist() == [7]
    assert reads == [("a", codec.SharedMemoryRef("ra", 0, 8)), ("b", codec.SharedMemoryRef("rb", 0, 11))]
    message.raw_input_contents.append(b"")
    with pytest.raises(InvalidInput, match="2 entries for 1 inputs not in shared memory"):
        codec.read_headers(message)


@pytest.mark.parametrize(
    "parameters, expected",
    [
        ({codec.SHM_BYTE_SIZE: 4}, "'shared_memory_byte_size' given without 'shared_memory_region'"),
        ({codec.SHM_REGION: "r"}, "'shared_memory_byte_size' must be given with 'shared_memory_region'"),
        ({codec.SHM_REGION: "r", codec.SHM_BYTE_SIZE: -4}, "'shared_memory_byte_size' must be a non-negative"),
        ({codec.SHM_REGION: "r", codec.SHM_BYTE_SIZE: 4, codec.SHM_OFFSET: "0"}, "'shared_memory_offset' must be"),
    ],
)
def test_shared_memory_parameters_are_checked_as_triton_checks_them(parameters, expected):
    message = pb.ModelInferRequest(model_name="m")
    tensor = message.inputs.add(name="x", datatype="FP32", shape=[1])
    for key, value in parameters.items():
        codec.set_parameter(tensor.parameters[key], value)
    with pytest.raises(InvalidInput, match=expected):
        codec.read_headers(message)
    with pytest.raises(InvalidInput, match="shared memory is not accepted here"):
        tensor.parameters.clear()
        codec.set_parameter(tensor.parameters[codec.SHM_REGION], "r")
        codec.set_parameter(tensor.parameters[codec.SHM_BYTE_SIZE], 4)
        codec.decode_inputs(message, codec.read_headers(message))


def test_unregistering_closes_the_descriptor(tmp_path):
    path = tmp_path / "obj"
    path.write_bytes(b"\0" * 16)

    def open_on_it() -> int:
        return sum(1 for fd in os.listdir("/proc/self/fd") if _target(fd) == str(path))

    registry = SharedMemoryRegistry(directory=str(tmp_path))
    registry.register("r", "/obj", 0, 16)
    registry.register("s", "obj", 8, 8)
    assert open_on_it() == 2
    registry.unregister("r")
    assert open_on_it() == 1 and [r.name for r in registry.status()] == ["s"]
    registry.close()
    assert open_on_it() == 0


def _target(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def test_a_streams_held_bytes_count_inputs_in_shared_memory():
    """Frames of a few bytes on the wire that name 1 MiB each in shared memory: with 512 KiB of held
    bytes, the stream reads a second frame only once the first is answered (the window counts what
    decoding will copy into the gateway, not the wire bytes alone)."""
    import asyncio

    from guard.protocol.types import InferResponse
    from guard.serving.transport.servicer import InferenceServicer
    from tests.serving.test_streams import _Context

    class Held:
        def __init__(self):
            self.entered, self.release = 0, asyncio.Event()

        async def infer(self, request, datatypes, encoded=None):
            self.entered += 1
            await self.release.wait()
            return InferResponse("digits", "1", request.id, [])

    def shm_frame(request_id):
        message = pb.ModelInferRequest(model_name="digits", id=request_id)
        tensor = message.inputs.add(name="input", datatype="FP32", shape=[1, 512, 512])
        tensor.parameters["shared_memory_region"].string_param = "frames"
        tensor.parameters["shared_memory_byte_size"].int64_param = 1 << 20
        return message.SerializeToString()

    async def run():
        plane = Held()
        servicer = InferenceServicer(plane, stream_held_bytes=1 << 19)

        async def requests():
            for i in range(3):
                yield shm_frame(f"f{i}")

        got = []

        async def consume():
            async for answer in servicer.ModelStreamInfer(requests(), _Context()):
                got.append(answer.infer_response.id)

        consumer = asyncio.ensure_future(consume())
        while plane.entered < 1:
            await asyncio.sleep(0.001)
        for _ in range(50):
            await asyncio.sleep(0)
        held_back = plane.entered
        plane.release.set()
        await asyncio.wait_for(consumer, 20)
        return held_back, got

    held_back, got = asyncio.run(run())
    assert held_back == 1
    assert sorted(got) == ["f0", "f1", "f2"]
