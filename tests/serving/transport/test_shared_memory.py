"""The system shared-memory extension with tritonclient, unchanged, against a live gateway:
registering POSIX shared-memory objects, inputs read from them and outputs written into them,
the same answers as inline tensors, a precise status for every bad register or infer request
while the gateway keeps serving, and the extension off unless asked for.
"""

from __future__ import annotations

import os
import queue

import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from guard.serving.shared_memory import MAX_REGIONS
from tests.conftest import running_gateway

FRAME_BYTES = 1 * 1 * 16 * 16 * 4  # the digits model's input, FP32 [1, 1, 16, 16]


@pytest.fixture(scope="module")
def gateway():
    """The demo with the extension on (guard serve --shared-memory)."""
    with running_gateway(shared_memory=True) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(gateway):
    with triton.InferenceServerClient(gateway.grpc_url) as c:
        yield c


@pytest.fixture
def objects(client):
    """make(tag, byte_size) -> (handle, key): shared-memory objects removed (and every region
    unregistered) after the test."""
    made = []

    def make(tag: str, byte_size: int):
        key = f"/guard-test-{os.getpid()}-{tag}"
        handle = shm.create_shared_memory_region(tag, key, byte_size, create_only=True)
        made.append(handle)
        return handle, key

    yield make
    client.unregister_system_shared_memory()
    for handle in made:
        shm.destroy_shared_memory_region(handle)


def frames(held_out, count: int) -> list[np.ndarray]:
    x = held_out[0]
    return [np.ascontiguousarray(x[i : i + 1], dtype=np.float32) for i in range(count)]


def inline(frame: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput("input", list(frame.shape), "FP32")
    tensor.set_data_from_numpy(frame)
    return tensor


def from_region(region: str, byte_size: int = FRAME_BYTES, offset: int = 0) -> triton.InferInput:
    tensor = triton.InferInput("input", [1, 1, 16, 16], "FP32")
    tensor.set_shared_memory(region, byte_size, offset)
    return tensor


def answer(result) -> tuple[np.ndarray, dict]:
    parameters = result.get_response().parameters
    return result.as_numpy("logits"), {key: str(value) for key, value in parameters.items()}


def refused(call, code: str) -> str:
    with pytest.raises(InferenceServerException) as info:
        call()
    assert info.value.status() == f"StatusCode.{code}", info.value.message()
    return info.value.message()


def still_serving(client, held_out):
    logits, _ = answer(client.infer("digits", [inline(frames(held_out, 1)[0])]))
    assert logits.shape == (1, 10)


def test_inputs_from_a_region_answer_as_the_same_tensors_inline(client, objects, held_out):
    """Four frames after a junk frame in one object; the region starts after the junk (register
    offset), each request names its frame by shared_memory_offset."""
    batch = frames(held_out, 4)
    handle, key = objects("frames", 5 * FRAME_BYTES)
    shm.set_shared_memory_region(handle, [np.full((1, 1, 16, 16), 0.9, np.float32), *batch])
    client.register_system_shared_memory("frames", key, 4 * FRAME_BYTES, offset=FRAME_BYTES)
    expected = [answer(client.infer("digits", [inline(frame)])) for frame in batch]
    assert len({e[0].tobytes() for e in expected}) == 4  # four different answers: an offset mix-up shows
    for i, (logits, parameters) in enumerate(expected):
        got_logits, got_parameters = answer(client.infer("digits", [from_region("frames", offset=i * FRAME_BYTES)]))
        np.testing.assert_array_equal(got_logits, logits)
        assert got_parameters == parameters


def test_status_lists_regions_and_an_unregistered_region_is_named_when_used(client, objects, held_out):
    handle, key = objects("status", 2 * FRAME_BYTES)
    shm.set_shared_memory_region(handle, frames(held_out, 2))
    client.register_system_shared_memory("status-a", key, FRAME_BYTES)
    client.register_system_shared_memory("status-b", key, FRAME_BYTES, offset=FRAME_BYTES)
    regions = client.get_system_shared_memory_status(as_json=True)["regions"]
    assert regions["status-a"] == {"name": "status-a", "key": key, "byte_size": str(FRAME_BYTES)}
    assert regions["status-b"] == {
        "name": "status-b",
        "key": key,
        "offset": str(FRAME_BYTES),
        "byte_size": str(FRAME_BYTES),
    }
    assert list(client.get_system_shared_memory_status("status-b", as_json=True)["regions"]) == ["status-b"]

    client.unregister_system_shared_memory("status-a")
    client.unregister_system_shared_memory("status-a")  # unknown names are not an error, as in Triton
    assert "status-a" in refused(lambda: client.get_system_shared_memory_status("status-a"), "NOT_FOUND")
    message = refused(lambda: client.infer("digits", [from_region("status-a")]), "INVALID_ARGUMENT")
    assert "no shared memory region named 'status-a'" in message
    answer(client.infer("digits", [from_region("status-b")]))  # the other region still serves
    client.unregister_system_shared_memory()
    assert client.get_system_shared_memory_status(as_json=True) == {}


def test_bad_registrations_get_precise_codes_and_the_gateway_keeps_serving(client, objects, held_out):
    _, key = objects("register", FRAME_BYTES)
    missing = f"/guard-test-{os.getpid()}-never-created"
    assert missing in refused(lambda: client.register_system_shared_memory("r", missing, 4), "NOT_FOUND")
    # Any '/' but leading ones would leave /dev/shm: /dev/shm/../../etc/hostname is a real file.
    assert "not a POSIX shared memory name" in refused(
        lambda: client.register_system_shared_memory("r", "../../etc/hostname", 4), "INVALID_ARGUMENT"
    )
    beyond = refused(lambda: client.register_system_shared_memory("r", key, FRAME_BYTES, offset=4), "INVALID_ARGUMENT")
    assert f"beyond the end of shared memory object '{key}' ({FRAME_BYTES} bytes)" in beyond
    refused(lambda: client.register_system_shared_memory("r", key, 0), "INVALID_ARGUMENT")
    # Planted in /dev/shm: a link to a file elsewhere, and a FIFO (opening one could block).
    link, fifo = (f"/dev/shm/guard-test-{os.getpid()}-{kind}" for kind in ("link", "fifo"))
    os.symlink("/etc/hostname", link)
    os.mkfifo(fifo)
    try:
        assert "is a symbolic link" in refused(
            lambda: client.register_system_shared_memory("r", link.removeprefix("/dev/shm"), 4), "INVALID_ARGUMENT"
        )
        assert "not a regular shared memory object" in refused(
            lambda: client.register_system_shared_memory("r", fifo.removeprefix("/dev/shm"), 4), "INVALID_ARGUMENT"
        )
    finally:
        os.unlink(link)
        os.unlink(fifo)
    client.register_system_shared_memory("r", key, FRAME_BYTES)
    assert "already registered" in refused(lambda: client.register_system_shared_memory("r", key, 4), "ALREADY_EXISTS")
    still_serving(client, held_out)


def test_bad_infer_requests_get_precise_codes_and_the_gateway_keeps_serving(client, objects, held_out):
    handle, key = objects("infer", 2 * FRAME_BYTES)
    shm.set_shared_memory_region(handle, frames(held_out, 2))
    client.register_system_shared_memory("one-frame", key, FRAME_BYTES)  # the object holds two

    def infer(tensor):
        return lambda: client.infer("digits", [tensor])

    out_of_range = refused(infer(from_region("one-frame", offset=FRAME_BYTES)), "INVALID_ARGUMENT")
    assert f"beyond the end of region 'one-frame' ({FRAME_BYTES} bytes)" in out_of_range
    wrong_size = refused(infer(from_region("one-frame", byte_size=FRAME_BYTES - 4)), "INVALID_ARGUMENT")
    assert (
        "input 'input': shared_memory_byte_size 1020 does not match FP32 shape [1, 1, 16, 16] (1024 bytes)"
        in wrong_size
    )
    assert "'nowhere'" in refused(infer(from_region("nowhere")), "INVALID_ARGUMENT")
    both = from_region("one-frame")
    both._input.contents.fp32_contents.extend([0.0] * 256)
    assert "contents given for an input read from shared memory" in refused(infer(both), "INVALID_ARGUMENT")
    still_serving(client, held_out)


def test_a_region_reused_for_the_next_frame_answers_for_that_frame(client, objects, held_out):
    """Each request copies its bytes when it is decoded: the client may write the next frame into
    the same region as soon as it has its answer."""
    first, second = frames(held_out, 2)
    handle, key = objects("reuse", FRAME_BYTES)
    client.register_system_shared_memory("reuse", key, FRAME_BYTES)
    for frame in (first, second, first):
        shm.set_shared_memory_region(handle, [frame])
        np.testing.assert_array_equal(
            answer(client.infer("digits", [from_region("reuse")]))[0],
            answer(client.infer("digits", [inline(frame)]))[0],
        )


def test_an_object_shrunk_after_registering_is_refused_not_a_crash(client, objects, held_out):
    """Reading a mapped page past the end of a shrunk file would raise SIGBUS in the gateway; the
    gateway reads with pread(), so the client gets INVALID_ARGUMENT."""
    handle, key = objects("shrink", FRAME_BYTES)
    shm.set_shared_memory_region(handle, frames(held_out, 1))
    client.register_system_shared_memory("shrink", key, FRAME_BYTES)
    os.truncate(f"/dev/shm/{key.lstrip('/')}", FRAME_BYTES // 2)
    assert "was truncated" in refused(lambda: client.infer("digits", [from_region("shrink")]), "INVALID_ARGUMENT")
    still_serving(client, held_out)


def test_stream_requests_read_their_inputs_from_regions(client, objects, held_out):
    batch = frames(held_out, 4)
    handle, key = objects("stream", 4 * FRAME_BYTES)
    shm.set_shared_memory_region(handle, batch)
    client.register_system_shared_memory("stream", key, 4 * FRAME_BYTES)
    expected = {str(i): answer(client.infer("digits", [inline(frame)]))[0] for i, frame in enumerate(batch)}
    answers = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i in range(4):
            client.async_stream_infer("digits", [from_region("stream", offset=i * FRAME_BYTES)], request_id=str(i))
        client.async_stream_infer("digits", [from_region("gone")], request_id="bad")
        got, errors = {}, []
        for _ in range(5):
            result, error = answers.get(timeout=30)
            if error is not None:
                errors.append(error.message())
            else:
                got[result.get_response().id] = result.as_numpy("logits")
    finally:
        client.stop_stream()
    assert len(errors) == 1 and "'gone'" in errors[0]
    assert sorted(got) == sorted(expected)
    for request_id, logits in expected.items():
        np.testing.assert_array_equal(got[request_id], logits)


def served(gateway) -> float:
    """Requests the gateway's data plane answered OK (whatever happened after)."""
    return sum(
        sample.value
        for metric in gateway.server.metrics.requests.collect()
        for sample in metric.samples
        if sample.name == "guard_requests_total" and sample.labels["code"] == "OK"
    )


def test_outputs_are_written_into_a_region(client, objects, held_out, gateway):
    frame = frames(held_out, 1)[0]
    out_handle, out_key = objects("out", 64)
    client.register_system_shared_memory("out", out_key, 64)
    output = triton.InferRequestedOutput("logits")
    output.set_shared_memory("out", 40)
    result = client.infer("digits", [inline(frame)], outputs=[output])
    tensor = result.get_output("logits")
    assert tensor.datatype == "FP32" and list(tensor.shape) == [1, 10]
    assert list(result.get_response().raw_output_contents) == [b""]  # Triton's way: the bytes are in the region
    np.testing.assert_array_equal(
        shm.get_contents_as_numpy(out_handle, np.float32, [1, 10]), answer(client.infer("digits", [inline(frame)]))[0]
    )

    # Refused before the model runs: the data plane never answers them.
    before = served(gateway)
    small = triton.InferRequestedOutput("logits")
    small.set_shared_memory("out", 36)
    message = refused(lambda: client.infer("digits", [inline(frame)], outputs=[small]), "INVALID_ARGUMENT")
    assert "output 'logits': shared_memory_byte_size 36 cannot hold FP32 [1, 10] (40 bytes)" in message
    beyond = triton.InferRequestedOutput("logits")
    beyond.set_shared_memory("out", 40, offset=32)
    assert "beyond the end of region 'out'" in refused(
        lambda: client.infer("digits", [inline(frame)], outputs=[beyond]), "INVALID_ARGUMENT"
    )
    assert served(gateway) == before


def test_the_number_of_regions_is_bounded(client, objects):
    _, key = objects("many", 4)
    for i in range(MAX_REGIONS):
        client.register_system_shared_memory(f"many-{i}", key, 4)
    message = refused(lambda: client.register_system_shared_memory("one-more", key, 4), "RESOURCE_EXHAUSTED")
    assert f"{MAX_REGIONS} shared memory regions are registered" in message
    client.unregister_system_shared_memory()
    client.register_system_shared_memory("one-more", key, 4)


def test_cuda_shared_memory_is_refused_with_a_reason(client):
    message = refused(lambda: client.register_cuda_shared_memory("gpu", b"\0" * 64, 0, 1024), "FAILED_PRECONDITION")
    assert "CUDA shared memory is not supported by this server" in message
    assert client.get_cuda_shared_memory_status(as_json=True) == {}
    refused(lambda: client.get_cuda_shared_memory_status("gpu"), "NOT_FOUND")
    client.unregister_cuda_shared_memory()


def test_the_extension_is_off_unless_asked_for(held_out):
    """A default gateway refuses to register regions (FAILED_PRECONDITION, naming the switch), refuses
    a tensor naming a region, does not list the extension, and keeps serving."""
    with running_gateway() as srv, triton.InferenceServerClient(srv.grpc_url) as plain:
        handle = shm.create_shared_memory_region("off", f"/guard-test-{os.getpid()}-off", FRAME_BYTES, create_only=True)
        try:
            message = refused(
                lambda: plain.register_system_shared_memory("off", f"/guard-test-{os.getpid()}-off", FRAME_BYTES),
                "FAILED_PRECONDITION",
            )
            assert "--shared-memory" in message
            assert "system_shared_memory" not in plain.get_server_metadata(as_json=True)["extensions"]
            assert plain.get_system_shared_memory_status(as_json=True) == {}
            message = refused(lambda: plain.infer("digits", [from_region("off")]), "INVALID_ARGUMENT")
            assert "shared memory is not accepted" in message
            still_serving(plain, held_out)
        finally:
            shm.destroy_shared_memory_region(handle)


def test_the_extension_is_listed_when_on(client):
    assert "system_shared_memory" in client.get_server_metadata(as_json=True)["extensions"]
