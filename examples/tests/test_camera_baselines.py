"""guard_examples.camera_baselines' simulated clock: while the condition streams run, the model's
baseline clock advances one frame's share of the ramp's hours per frame a baseline observes, and
the wall clock is back afterwards."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from guard_examples.camera_baselines import simulated_hours


def server_with(clock):
    baselines = SimpleNamespace(clock=clock)
    return SimpleNamespace(server=SimpleNamespace(_runtimes={"cam": SimpleNamespace(baselines=baselines)})), baselines


def test_a_ramp_of_judged_frames_spans_its_hours_on_the_baselines_clock():
    wall = lambda: 100.0  # noqa: E731 - a clock that never moves: only the simulation can
    srv, baselines = server_with(wall)
    frames, streams = 210, 7
    with simulated_hours(srv, "cam", frames_per_hour=frames * streams):
        reads = [baselines.clock() for _ in range(frames * streams + 1)]
    assert reads[0] == 100.0
    assert reads[-1] == pytest.approx(100.0 + 3600.0)  # every stream's judged frames: one hour
    assert reads[1] - reads[0] == pytest.approx(3600.0 / (frames * streams))
    assert baselines.clock is wall


def test_no_pace_keeps_the_wall_clock():
    wall = lambda: 5.0  # noqa: E731
    srv, baselines = server_with(wall)
    with simulated_hours(srv, "cam", frames_per_hour=0):
        assert baselines.clock is wall
