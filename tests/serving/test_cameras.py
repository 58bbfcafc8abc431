"""Many cameras on one model: fair batches, a per-camera share of the queue, per-camera order on a
stream, alerts when a camera's frames keep being flagged, and bounded per-camera metrics.

Batches are held with gates where a test needs requests to stay queued, so assertions are about
counts and order, never about speed.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from guard.protocol.errors import ConfigError, InvalidInput, QueueFull
from guard.protocol.proto import inference_pb2 as pb
from guard.protocol.settings import TableReader
from guard.protocol.types import InferResponse
from guard.serving.batching import DynamicBatcher
from guard.serving.cameras import ALERT, CameraSettings, CameraTracker, camera_of, read_camera_settings
from guard.serving.metrics import GuardMetrics
from guard.serving.model_config import BatchingConfig
from guard.serving.queueing import WaitingQueue
from guard.serving.transport.servicer import InferenceServicer
from tests.conftest import copy_demo, running_gateway
from tests.serving.helpers import edit_config, gated_repository, infer_input, noise_rows, queue_depth, verdict
from tests.serving.test_batching import Recorder, started
from tests.serving.test_streams import INFER, _Context, frame, wait_until

# --- the batcher: fair turns and a share of the queue per camera ---


async def test_a_flooding_camera_cannot_fill_the_next_batch():
    """One batch held; camera 'flood' queues 20 requests, then seven other cameras one each: the next
    batch of 8 takes every other camera's request and one of the flood's, in arrival order per camera."""
    rec = Recorder()
    rec.gate.clear()
    batcher = await started(BatchingConfig(max_batch_size=8, max_queue_delay_microseconds=0, instances=1), rec)
    blocker = asyncio.ensure_future(batcher.submit("blocker", 1, flow="flood"))
    while not rec.batches:
        await asyncio.sleep(0.001)
    flood = [asyncio.ensure_future(batcher.submit(f"f{i}", 1, flow="flood")) for i in range(20)]
    others = [asyncio.ensure_future(batcher.submit(f"c{i}", 1, flow=f"cam-{i}")) for i in range(7)]
    await asyncio.sleep(0.01)
    rec.gate.set()
    await asyncio.gather(blocker, *flood, *others)
    assert sorted(rec.batches[1]) == sorted(["f0", *(f"c{i}" for i in range(7))])
    flood_order = [p for batch in rec.batches for p in batch if p.startswith("f")]
    assert flood_order == [f"f{i}" for i in range(20)]
    await batcher.close()


async def test_requests_without_a_camera_keep_arrival_order_and_batch_fully():
    rec = Recorder()
    rec.gate.clear()
    batcher = await started(BatchingConfig(max_batch_size=4, max_queue_delay_microseconds=0, instances=1), rec)
    blocker = asyncio.ensure_future(batcher.submit("blocker", 1))
    while not rec.batches:
        await asyncio.sleep(0.001)
    queued = [asyncio.ensure_future(batcher.submit(i, 1)) for i in range(8)]
    await asyncio.sleep(0.01)
    rec.gate.set()
    await asyncio.gather(blocker, *queued)
    assert rec.batches[1:] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    await batcher.close()


async def test_a_camera_may_hold_only_its_share_of_the_queue():
    rec = Recorder()
    rec.gate.clear()
    config = BatchingConfig(max_batch_size=1, max_queue_size=100, instances=1, inline_below_microseconds=0)
    batcher = DynamicBatcher(rec, config, executor=ThreadPoolExecutor(1), flow_limit=3)
    blocker = asyncio.ensure_future(batcher.submit("blocker", 1))
    while not rec.batches:
        await asyncio.sleep(0.001)
    mine = [asyncio.ensure_future(batcher.submit(f"a{i}", 1, flow="a")) for i in range(3)]
    await asyncio.sleep(0.01)
    assert not batcher.has_room("a") and batcher.has_room("b") and batcher.has_room()
    with pytest.raises(QueueFull, match="camera 'a' has 3 requests queued"):
        await batcher.submit("a3", 1, flow="a")
    other = asyncio.ensure_future(batcher.submit("b0", 1, flow="b"))
    rec.gate.set()
    await asyncio.gather(blocker, *mine, other)
    assert batcher.has_room("a")  # its places are given back once its requests leave the queue
    assert await batcher.submit("a4", 1, flow="a") == "a4" * 10
    await batcher.close()


# --- the camera id and settings ---


@pytest.mark.parametrize("value", [7, "", "x" * 129, "cam\n1", "cam\r1", "cam\u20281", True])
def test_a_bad_camera_id_is_invalid_input_naming_the_parameter(value):
    with pytest.raises(InvalidInput, match="parameter 'camera_id'"):
        camera_of({"camera_id": value})


def test_a_camera_id_is_read_as_given():
    assert camera_of({"camera_id": "gate-3/north"}) == "gate-3/north"
    assert camera_of({}) is None


def test_camera_settings_refuse_more_flags_than_the_window():
    with pytest.raises(ConfigError, match="alert_flags"):
        read_camera_settings(TableReader(Path("config.toml"), {"alert_window": 3, "alert_flags": 4}, "cameras."))
    with pytest.raises(ConfigError, match="cameras.alert_windw"):
        read_camera_settings(TableReader(Path("config.toml"), {"alert_windw": 3}, "cameras."))


# --- alerts ---


def test_a_camera_enters_alert_at_k_of_its_last_n_and_leaves_when_they_slide_out():
    tracker = CameraTracker(CameraSettings(alert_window=4, alert_flags=2))
    seen = [tracker.observe("a", flagged) for flagged in (True, False, False, True, True, False, False, False)]
    # window after each: T | TF | TFF | TFFT (2: alert) | FFTT | FTTF | TTFF | TFFF (1: out)
    assert seen == [
        (False, False),
        (False, False),
        (False, False),
        (True, True),
        (True, False),
        (True, False),
        (True, False),
        (False, False),
    ]
    assert tracker.in_alert == 0
    assert tracker.observe("b", True) == (False, False)  # cameras do not share windows


def test_the_least_recently_seen_camera_is_forgotten_beyond_max_cameras():
    forgotten = []
    tracker = CameraTracker(CameraSettings(alert_window=2, alert_flags=1, max_cameras=2), forget=forgotten.append)
    tracker.observe("a", True)
    tracker.observe("b", False)
    tracker.observe("a", False)  # a is now the most recently seen
    assert tracker.in_alert == 1
    tracker.observe("c", False)
    assert forgotten == ["b"]
    tracker.observe("d", False)
    assert forgotten == ["b", "a"] and tracker.in_alert == 0  # a's alert went with it


def test_forgetting_a_camera_drops_its_metric_series():
    metrics = GuardMetrics()
    model = metrics.for_model("m")
    model.camera("c1", True, True, False, 0)
    model.camera("c2", False, True, False, 0)
    assert metrics.registry.get_sample_value("guard_camera_flagged_total", {"model": "m", "camera": "c1"}) == 1
    model.forget_camera("c1")
    model.forget_camera("c2")
    assert metrics.registry.get_sample_value("guard_camera_flagged_total", {"model": "m", "camera": "c1"}) is None
    assert metrics.registry.get_sample_value("guard_camera_requests_total", {"model": "m", "camera": "c2"}) is None


# --- through a live gateway ---


def _with_cameras(tmp_path, **cameras):
    def change(table):
        table["cameras"] = {"alert_window": 4, "alert_flags": 2, **cameras}

    return edit_config(copy_demo(tmp_path), change)


def _alert(result) -> bool:
    return result.get_response().parameters[ALERT].bool_param


def test_answers_carry_each_cameras_alert_and_metrics_count_it(tmp_path):
    with running_gateway(_with_cameras(tmp_path, per_camera_metrics=True)) as srv:
        client = triton.InferenceServerClient(srv.grpc_url)
        attacked = noise_rows(3, seed=5)
        alerts, flagged = [], []
        for i in range(3):
            result = client.infer("digits", [infer_input(attacked[i : i + 1])], parameters={"camera_id": "gate-1"})
            flagged.append(verdict(result)[0] != "clean")
            alerts.append(_alert(result))
        assert flagged == [True, True, True]  # noise is nothing like a digit
        assert alerts == [False, True, True]  # 2 of the last 4 from the second frame on
        quiet = client.infer("digits", [infer_input(attacked[:1])], parameters={"camera_id": "gate-2"})
        assert _alert(quiet) is False  # one flagged frame on another camera is not an alert
        plain = client.infer("digits", [infer_input(attacked[:1])])
        assert ALERT not in plain.get_response().parameters  # no camera named, no camera state
        registry = srv.server.metrics.registry
        assert registry.get_sample_value("guard_camera_alerts_total", {"model": "digits"}) == 1
        assert registry.get_sample_value("guard_cameras_in_alert", {"model": "digits"}) == 1
        assert registry.get_sample_value("guard_camera_flagged_total", {"model": "digits", "camera": "gate-1"}) == 3
        assert registry.get_sample_value("guard_camera_requests_total", {"model": "digits", "camera": "gate-2"}) == 1
        with pytest.raises(InferenceServerException) as bad:
            client.infer("digits", [infer_input(attacked[:1])], parameters={"camera_id": "x" * 200})
        assert bad.value.status() == "StatusCode.INVALID_ARGUMENT" and "camera_id" in bad.value.message()
        assert client.is_server_live()


def test_a_camera_id_with_a_control_or_line_separator_is_refused_naming_the_parameter(gateway):
    """Camera ids go into logs and metric labels: a carriage return, NUL, escape or Unicode line or
    paragraph separator could split or forge a line there as a newline could."""
    client = triton.InferenceServerClient(gateway.grpc_url)
    for char in ("\n", "\r", "\x00", "\u2028", "\u2029", "\x1b"):
        with pytest.raises(InferenceServerException) as bad:
            client.infer("digits", [infer_input(noise_rows(1))], parameters={"camera_id": f"gate{char}1"})
        assert bad.value.status() == "StatusCode.INVALID_ARGUMENT" and "camera_id" in bad.value.message(), repr(char)
    client.infer("digits", [infer_input(noise_rows(1))], parameters={"camera_id": "gate 1"})  # a space is fine


def test_per_camera_series_are_off_unless_asked_for(tmp_path):
    with running_gateway(_with_cameras(tmp_path)) as srv:
        client = triton.InferenceServerClient(srv.grpc_url)
        client.infer("digits", [infer_input(noise_rows(1))], parameters={"camera_id": "gate-1"})
        names = {
            sample.labels.get("camera") for family in srv.server.metrics.registry.collect() for sample in family.samples
        }
        assert names == {None}


def test_a_camera_over_its_share_is_refused_while_others_are_queued(tmp_path, gate):
    repository = gated_repository(tmp_path, max_queue_size=100)
    edit_config(repository, lambda table: table.update(cameras={"max_queued": 2}))
    with running_gateway(repository) as srv, gate, grpc.insecure_channel(srv.grpc_url) as channel:
        infer = channel.unary_unary(INFER)

        def camera_frame(request_id, camera):
            message = pb.ModelInferRequest.FromString(frame(request_id))
            message.parameters["camera_id"].string_param = camera
            return message.SerializeToString()

        held = infer.future(camera_frame("held", "busy"), timeout=30)
        assert gate.entered.wait(10)
        queued = [infer.future(camera_frame(f"q{i}", "busy"), timeout=30) for i in range(2)]
        wait_until(lambda: queue_depth(srv) == 2)
        with pytest.raises(grpc.RpcError) as refused:
            infer(camera_frame("q2", "busy"), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "camera 'busy' has 2 requests queued" in refused.value.details()
        other = infer.future(camera_frame("other", "quiet"), timeout=30)
        wait_until(lambda: queue_depth(srv) == 3)
        gate.open()
        assert [pb.ModelInferResponse.FromString(f.result()).id for f in (held, *queued, other)] == [
            "held",
            "q0",
            "q1",
            "other",
        ]


# --- order on a stream ---


class _HeldDataPlane:
    """Answers each request only when the test releases its id."""

    def __init__(self):
        self.release: dict[str, asyncio.Event] = {}
        self.entered = 0

    async def infer(self, request, datatypes, encoded=None):
        event = self.release.setdefault(request.id, asyncio.Event())
        self.entered += 1
        await event.wait()
        return InferResponse("digits", "1", request.id, [])


def _camera_frame(request_id: str, camera: str | None) -> bytes:
    message = pb.ModelInferRequest(model_name="digits", id=request_id)
    if camera is not None:
        message.parameters["camera_id"].string_param = camera
    return message.SerializeToString()


def test_a_stream_answers_each_cameras_frames_in_the_order_sent():
    """Frames finish in the order a2, b0, a1, n0, a0: camera a's answers wait for a0 and then come
    in order; b0 and the camera-less n0 are not held behind camera a."""
    sent = [("a0", "a"), ("a1", "a"), ("a2", "a"), ("b0", "b"), ("n0", None)]

    async def run():
        plane = _HeldDataPlane()
        servicer = InferenceServicer(plane)

        async def requests():
            for request_id, camera in sent:
                yield _camera_frame(request_id, camera)

        got: list[str] = []

        async def consume():
            async for answer in servicer.ModelStreamInfer(requests(), _Context()):
                got.append(answer.infer_response.id)

        consumer = asyncio.ensure_future(consume())
        while plane.entered < len(sent):
            await asyncio.sleep(0.001)
        for request_id in ("a2", "b0", "a1", "n0", "a0"):
            plane.release[request_id].set()
            for _ in range(20):  # let the released request finish: no I/O, a few loop turns
                await asyncio.sleep(0)
        await asyncio.wait_for(consumer, 20)
        return got

    assert asyncio.run(run()) == ["b0", "n0", "a0", "a1", "a2"]


async def test_while_others_wait_a_flooding_camera_takes_only_its_share_of_a_batch():
    """max_batch_size 16, eight cameras waiting: the flood's share is 2 rows, so the next batch is the
    seven others' requests and two of the flood's (not 7 + 9: a longer batch delays all of them)."""
    rec = Recorder()
    rec.gate.clear()
    batcher = await started(BatchingConfig(max_batch_size=16, max_queue_delay_microseconds=0, instances=1), rec)
    blocker = asyncio.ensure_future(batcher.submit("blocker", 1, flow="flood"))
    while not rec.batches:
        await asyncio.sleep(0.001)
    flood = [asyncio.ensure_future(batcher.submit(f"f{i}", 1, flow="flood")) for i in range(40)]
    others = [asyncio.ensure_future(batcher.submit(f"c{i}", 1, flow=f"cam-{i}")) for i in range(7)]
    await asyncio.sleep(0.01)
    rec.gate.set()
    await asyncio.gather(blocker, *flood, *others)
    assert sorted(rec.batches[1]) == sorted(["f0", "f1", *(f"c{i}" for i in range(7))])
    # The others were active within the last second: the flood keeps to its share while alone.
    assert rec.batches[2] == ["f2", "f3"]
    await batcher.close()


class _Waiting:
    def __init__(self, name: str, flow: str, at: float):
        self.name, self.flow, self.enqueued, self.rows = name, flow, at, 1


def test_a_flow_alone_fills_batches_once_the_others_have_been_quiet_for_a_while():
    queue = WaitingQueue(active_seconds=1.0)
    for i in range(3):
        queue.add(_Waiting(f"c{i}", f"cam-{i}", at=0.0))
    for i in range(10):
        queue.add(_Waiting(f"f{i}", "flood", at=0.5))
    taken = [w.name for w in queue.take(8, lambda w: True, now=0.5)]
    assert sorted(taken) == ["c0", "c1", "c2", "f0", "f1"]  # 4 active flows: a share of 2 rows
    assert [w.name for w in queue.take(8, lambda w: True, now=0.9)] == ["f2", "f3"]
    assert [w.name for w in queue.take(8, lambda w: True, now=1.6)] == [f"f{i}" for i in range(4, 10)]


def test_a_share_that_does_not_divide_the_batch_is_rounded_up():
    """max_batch_size 5, two cameras waiting: each may take 3 rows (5 / 2 rounded up), so the batch is
    full rather than 2 + 2 with a row left empty."""
    queue = WaitingQueue()
    for i in range(4):
        queue.add(_Waiting(f"a{i}", "a", at=0.0))
        queue.add(_Waiting(f"b{i}", "b", at=0.0))
    assert [w.name for w in queue.take(5, lambda w: True, now=0.0)] == ["a0", "b0", "a1", "b1", "a2"]


async def test_a_request_larger_than_its_share_still_runs():
    rec = Recorder()
    rec.gate.clear()
    batcher = await started(BatchingConfig(max_batch_size=4, max_queue_delay_microseconds=0, instances=1), rec)
    blocker = asyncio.ensure_future(batcher.submit("blocker", 1, flow="a"))
    while not rec.batches:
        await asyncio.sleep(0.001)
    big = asyncio.ensure_future(batcher.submit("big", 3, flow="a"))  # share: 4 // 2 cameras = 2 rows
    small = asyncio.ensure_future(batcher.submit("small", 1, flow="b"))
    await asyncio.sleep(0.01)
    rec.gate.set()
    await asyncio.gather(blocker, big, small)
    assert sorted(rec.batches[1]) == ["big", "small"]
    await batcher.close()
