"""Helpers for end-to-end serving tests: configs edited as TOML, detector thresholds set from
scores measured in the test itself, and a detector that holds its batch until the test lets go.

Nothing here compares a float measured on one host with one measured on another: a test that
needs a row flagged measures that row's scores on the live gateway and sets a threshold from them.
"""

from __future__ import annotations

import json
import threading
import tomllib
from pathlib import Path

import numpy as np
import tomlkit
import tritonclient.grpc as triton

from guard.detection.detectors.squeezing import BitDepthDetector
from tests.conftest import copy_demo


def read_config(repository: Path, model: str = "digits") -> dict:
    return tomllib.loads((repository / model / "config.toml").read_text())


def write_config(repository: Path, table: dict, model: str = "digits") -> None:
    (repository / model / "config.toml").write_text(tomlkit.dumps(table))


def edit_config(repository: Path, change, model: str = "digits") -> Path:
    """Apply change(table) (in place) to a model's config.toml; returns the repository."""
    table = read_config(repository, model)
    change(table)
    write_config(repository, table, model)
    return repository


def thresholds_as_written(table: dict) -> None:
    """Serve the config's thresholds as they are (calibration mode `trust`): for tests that set
    thresholds from scores measured in the test, or whose detectors fail on purpose. Under the
    default mode a foreign host (GUARD_FOREIGN_HOST=1 makes every host one) re-derives them at load,
    replacing what the test set, or fails the load when a detector fails."""
    table["calibration"]["mode"] = "trust"


def as_union(table: dict, thresholds: dict[str, float] | None = None) -> None:
    """The detectors combine as a union (each against its own threshold); thresholds by name."""
    table.pop("ensemble", None)
    for detector in table["detectors"]:
        if thresholds and detector["name"] in thresholds:
            detector["threshold"] = thresholds[detector["name"]]


def infer_input(x: np.ndarray, name: str = "input") -> triton.InferInput:
    tensor = triton.InferInput(name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return tensor


def verdict(result) -> tuple[str, str, float]:
    params = result.get_response().parameters
    return (
        params["guard_verdict"].string_param,
        params["guard_flagged_by"].string_param,
        params["guard_score"].double_param,
    )


def raw_scores(client: triton.InferenceServerClient, x: np.ndarray, model: str = "digits") -> list[dict[str, float]]:
    """Each row's raw detector scores on this host, one single-row request per row (guard_explain)."""
    rows = []
    for i in range(len(x)):
        result = client.infer(model, [infer_input(x[i : i + 1])], parameters={"guard_explain": True})
        rows.append(json.loads(result.get_response().parameters["guard_detector_scores"].string_param))
    return rows


def noise_rows(count: int, seed: int = 0) -> np.ndarray:
    """Uniform noise images: nothing like a digit, so every detector scores them far above clean rows."""
    return np.random.default_rng(seed).random((count, 1, 16, 16), dtype=np.float32)


class Gate:
    """Holds every batch in its detector's `variants` until `open()`: the batch stays running, so
    later requests queue behind it. `entered` is set once a batch is being held."""

    def __init__(self):
        self.entered = threading.Event()
        self.released = threading.Event()

    def open(self) -> None:
        self.released.set()

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *exc) -> None:
        self.open()  # before the gateway stops: stopping waits for the batch it holds


class GateDetector(BitDepthDetector):
    kind = "gate"
    gate: Gate | None = None

    def variants(self, x):
        gate = type(self).gate
        gate.entered.set()
        assert gate.released.wait(60), "the test never opened the gate"
        return super().variants(x)


def gated_repository(tmp_path: Path, **batching) -> Path:
    """The demo with its first detector holding batches (see Gate), one batch at a time, and the
    given [batching] keys.

    Thresholds as written: these tests are about queues, and recalibrating at load on a foreign host
    would run the gate's `variants` before the test opens it."""

    def change(table):
        table["detectors"][0]["type"] = GateDetector.kind
        table["batching"].update({"max_batch_size": 1, "instances": 1, **batching})
        thresholds_as_written(table)

    return edit_config(copy_demo(tmp_path), change)


def queue_depth(server, model: str = "digits") -> float:
    return server.server.metrics.registry.get_sample_value("guard_queue_depth", {"model": model}) or 0.0


def requests_total(server, code: str, model: str = "digits") -> float:
    registry = server.server.metrics.registry
    return sum(
        sample.value
        for family in registry.collect()
        if family.name == "guard_requests"
        for sample in family.samples
        if sample.name == "guard_requests_total" and sample.labels["model"] == model and sample.labels["code"] == code
    )
