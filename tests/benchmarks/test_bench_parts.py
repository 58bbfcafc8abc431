"""The benchmark's pure parts: /metrics differences, profile summaries, target ratios."""

from __future__ import annotations

import pytest

from benchmarks import profiling, report, stages


def _snapshot(requests: float, stage_sum: float, stage_count: float, rows: float, batches: float) -> stages.Snapshot:
    m = (("model", "m"),)
    return {
        ("guard_requests_total", (("code", "OK"), ("model", "m"), ("verdict", "clean"))): requests,
        ("guard_stage_duration_seconds_sum", (("model", "m"), ("stage", "backend"))): stage_sum,
        ("guard_stage_duration_seconds_count", (("model", "m"), ("stage", "backend"))): stage_count,
        ("guard_batch_size_sum", m): rows,
        ("guard_batch_size_count", m): batches,
        ("guard_backend_rows_total", m): 3 * rows,
        ("guard_request_duration_seconds_sum", m): requests * 0.002,
        ("guard_requests_total", (("code", "OK"), ("model", "other"), ("verdict", "clean"))): 99.0,
    }


def test_breakdown_differences_two_scrapes_for_one_model():
    before, after = _snapshot(10, 0.1, 5, 10, 5), _snapshot(110, 0.5, 45, 110, 45)
    result = stages.breakdown(before, after, "m")
    assert result["requests_by_code"] == {"OK": 100}
    assert result["mean_batch_size"] == pytest.approx(2.5)
    assert result["backend_rows_per_row"] == pytest.approx(3.0)
    assert result["in_gateway_ms"] == pytest.approx(2.0)
    assert result["stages"]["backend"] == {
        "events": 40,
        "mean_ms": pytest.approx(10.0),
        "ms_per_request": pytest.approx(4.0),
    }


def test_top_frames_counts_self_and_inclusive_shares(tmp_path):
    collapsed = tmp_path / "stacks.txt"
    collapsed.write_text(
        "main (guard/cli.py:1);run (guard/runtime.py:3);infer (guard/backends/ort.py:10) 3\n"
        "main (guard/cli.py:2);Handle._run (asyncio/events.py:5) 1\n"
    )
    summary = profiling.top_frames(collapsed)
    assert summary["samples"] == 4
    assert summary["self"] == [["infer (guard/backends/ort.py)", 0.75], ["Handle._run (asyncio/events.py)", 0.25]]
    assert summary["inclusive"] == [["run (guard/runtime.py)", 0.75], ["infer (guard/backends/ort.py)", 0.75]]


def _point(model, configuration, concurrency, rps, p50, p99):
    return {
        "model": model,
        "configuration": configuration,
        "loop": "closed",
        "concurrency": concurrency,
        "throughput_rps": rps,
        "p50_ms": p50,
        "p99_ms": p99,
        "errors": {},
    }


def test_targets_are_ratios_and_say_when_unmeasured():
    results = {
        "points": [
            _point("digits", "echo", 16, 1000, 10, 20),
            _point("digits", "passthrough", 16, 950, 11, 21),
            _point("digits", "echo", 1, 1000, 1.0, 2),
            _point("digits", "passthrough", 1, 500, 2.0, 3),
        ],
        "floors": [{"model": "digits", "kind": "model", "batch": 1, "p50_ms": 0.1, "rows_per_s": 1e4}],
    }
    found = {t["target"]: t for t in report.targets(results)}
    assert found["pass-through vs echo: throughput at c=16"]["value"] == pytest.approx(0.95)
    assert found["pass-through vs echo: throughput at c=16"]["met"] is True
    added = found["pass-through vs echo: added p50 at c=1"]
    assert added["value"] == pytest.approx(1.9) and added["met"] is False
    assert found["full guard vs MLServer's best: throughput at c=16"]["met"] is None


def test_camera_frames_take_their_id_and_camera_from_the_appended_tail():
    """benchmarks.camera_streams serialises each frame once and appends id and camera per send:
    the gateway must read the merged message as one request with both."""
    from benchmarks import camera_streams as cameras
    from guard.protocol.proto import inference_pb2 as pb

    base = cameras.frame_requests("guard", [b"\xff\xd8jpeg"])[0]
    merged = pb.ModelInferRequest.FromString(base + cameras._tail("camera-3:7", "camera-3"))
    assert (merged.model_name, merged.id) == ("guard", "camera-3:7")
    assert merged.parameters["camera_id"].string_param == "camera-3"
    assert merged.raw_input_contents[0] == (6).to_bytes(4, "little") + b"\xff\xd8jpeg"
    assert "camera_id" not in pb.ModelInferRequest.FromString(base + cameras._tail("x:1", None)).parameters


def test_camera_summary_counts_late_answers_against_one_frame_interval():
    from benchmarks.camera_streams import CameraRun
    from benchmarks.cameras import summarize

    runs = {"a": CameraRun(offered=4, latencies=[0.01, 0.03, 0.05, 0.2]), "b": CameraRun(offered=2)}
    runs["b"].errors["DEADLINE_EXCEEDED"] = 2
    s = summarize(runs, duration=2.0, fps=25)  # one frame: 40 ms
    assert s["offered_fps"] == 3.0 and s["answered_fps"] == 2.0
    assert s["late_share"] == 0.5 and s["errors"] == {"DEADLINE_EXCEEDED": 2}


def test_text_requests_carry_one_utf8_row_each():
    """benchmarks.text sends what a text client sends: one BYTES [1, 1] string per request."""
    from benchmarks import text
    from guard.protocol.proto import inference_pb2 as pb

    (request,) = [pb.ModelInferRequest.FromString(r) for r in text.text_requests("guard", ["café au lait"])]
    assert request.model_name == "guard"
    (tensor,) = request.inputs
    assert (tensor.name, tensor.datatype, list(tensor.shape)) == ("text", "BYTES", [1, 1])
    assert list(tensor.contents.bytes_contents) == ["café au lait".encode()]
