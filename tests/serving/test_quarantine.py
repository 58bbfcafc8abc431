"""The quarantine of flagged inputs, on live gateways with real clients: what a flagged (or blocked)
request leaves in the store and what a clean one does not; a full buffer counts every request it
drops; the cap deletes the oldest records; and a gateway killed with SIGKILL mid-load keeps every
record its metrics had counted, in a database that checks out."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from guard.protocol.types import Verdict
from guard.serving.background import BackgroundServer
from guard.serving.quarantine.records import Flagged, entry_of
from guard.serving.quarantine.settings import QuarantineSettings
from guard.serving.quarantine.store import FILENAME, QuarantineStore
from guard.serving.settings import ServerSettings
from tests.conftest import ROOT, copy_demo, running_gateway
from tests.serving.helpers import infer_input, noise_rows, verdict
from tests.serving.process import ServeProcess, Traffic, wait_until


def metric(srv, name: str, **labels: str) -> float:
    return srv.server.metrics.registry.get_sample_value(name, {"model": "digits", **labels}) or 0.0


def kept(srv) -> float:
    return metric(srv, "guard_quarantine_records_total")


def dropped(srv, reason: str = "buffer_full") -> float:
    return metric(srv, "guard_quarantine_dropped_total", reason=reason)


def stored(directory: Path, model: str | None = None) -> list:
    store = QuarantineStore.open(directory, create=False)
    try:
        return list(store.records(model))
    finally:
        store.close()


def clean_row(client: triton.InferenceServerClient, x: np.ndarray) -> np.ndarray:
    """A held-out row this gateway answers clean (at the calibrated rate most are)."""
    for row in x:
        if verdict(client.infer("digits", [infer_input(row[None])]))[0] == "clean":
            return row[None]
    raise AssertionError("no held-out row was answered clean")


def test_a_flagged_request_is_kept_with_its_identity_and_scores_and_a_clean_one_is_not(tmp_path, held_out):
    directory = tmp_path / "quarantine"
    settings = QuarantineSettings(directory)
    with (
        running_gateway(copy_demo(tmp_path), quarantine=settings) as srv,
        triton.InferenceServerClient(srv.grpc_url) as client,
    ):
        clean = clean_row(client, held_out[0][:50])
        assert kept(srv) == 0  # the search above was all clean: nothing kept
        client.infer("digits", [infer_input(clean)], request_id="clean-1")
        noise = noise_rows(3)
        result = client.infer("digits", [infer_input(noise)], request_id="noise-1", parameters={"guard_explain": True})
        wait_until(lambda: kept(srv) == 1, what="the flagged request committed")
        records = stored(directory)
    answered, flagged_by, score = verdict(result)
    scores = json.loads(result.get_response().parameters["guard_detector_scores"].string_param)
    assert answered != "clean" and len(records) == 1
    record = records[0]
    assert (record.model, record.version, record.request_id) == ("digits", "1", "noise-1")
    assert (record.verdict, ",".join(record.flagged_by)) == (answered, flagged_by)
    assert record.score == pytest.approx(score) and record.scores == pytest.approx(scores)
    assert "127.0.0.1" in record.identity  # the client's address: no authentication on this gateway
    assert record.predicted == result.as_numpy("logits").argmax(1).tolist()
    (tensor,) = record.inputs
    assert (tensor.name, tensor.datatype, tensor.shape) == ("input", "FP32", (3, 1, 16, 16))
    np.testing.assert_array_equal(tensor.array(), noise)  # the bytes the client sent
    assert abs(record.time - time.time()) < 60


def test_a_request_enforce_blocks_is_kept_too(tmp_path):
    directory = tmp_path / "quarantine"
    with (
        running_gateway(copy_demo(tmp_path), policy="enforce", quarantine=QuarantineSettings(directory)) as srv,
        triton.InferenceServerClient(srv.grpc_url) as client,
    ):
        with pytest.raises(InferenceServerException) as info:
            client.infer("digits", [infer_input(noise_rows(1))], request_id="blocked-1")
        assert info.value.status() == "StatusCode.PERMISSION_DENIED"
        wait_until(lambda: kept(srv) == 1, what="the blocked request committed")
    (record,) = stored(directory)
    assert record.request_id == "blocked-1" and record.verdict in info.value.message()


def test_a_full_buffer_counts_what_it_drops_and_loses_nothing_silently(tmp_path, caplog):
    """Another writer holds the database, so the gateway's writer waits inside its first batch and
    the two-record buffer fills: every further flagged request is counted as dropped and logged.
    The gateway is then stopped while the writer still waits, and the lock let go: what was
    buffered is written on the way out. kept + dropped == flagged, and the store holds exactly
    what was counted as kept."""
    directory = tmp_path / "quarantine"
    settings = QuarantineSettings(directory, buffer_records=2)
    caplog.set_level(logging.INFO, "guard.serving.quarantine")
    srv = BackgroundServer(
        ServerSettings(repository=copy_demo(tmp_path), grpc_port=0, metrics_port=0, quarantine=settings)
    ).__enter__()
    stopping = threading.Thread(target=srv.__exit__, args=(None, None, None))
    lock = sqlite3.connect(directory / FILENAME, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # the write lock, as a second gateway on this directory would take
    flagged = 0
    try:
        with triton.InferenceServerClient(srv.grpc_url) as client:
            for i in range(12):
                answer = verdict(client.infer("digits", [infer_input(noise_rows(1, seed=i))]))[0]
                flagged += answer != "clean"
        assert dropped(srv) >= flagged - 4  # at most a batch of two in the writer, two buffered
        assert kept(srv) == 0  # nothing is counted before its commit
        stopping.start()
        wait_until(lambda: any("quarantine: closing" in r.getMessage() for r in caplog.records), what="the close")
    finally:
        lock.execute("ROLLBACK")
        lock.close()
        if stopping.ident is None:  # failed before the stop began
            srv.__exit__(None, None, None)
        else:
            stopping.join(60)
    assert flagged >= 10  # noise: flagged by the demo's detectors
    assert kept(srv) + dropped(srv) == flagged and kept(srv) >= 3
    assert len(stored(directory)) == kept(srv)
    lines = [r.getMessage() for r in caplog.records if "quarantine: dropped" in r.getMessage()]
    assert lines and "of model digits (buffer_full)" in lines[0]


def test_the_oldest_records_go_once_the_cap_is_reached(tmp_path):
    directory = tmp_path / "quarantine"
    cap = 12_000  # about ten one-row digits records
    with (
        running_gateway(copy_demo(tmp_path), quarantine=QuarantineSettings(directory, max_bytes=cap)) as srv,
        triton.InferenceServerClient(srv.grpc_url) as client,
    ):
        for i in range(30):
            client.infer("digits", [infer_input(noise_rows(1, seed=i))], request_id=f"r{i}")
        wait_until(lambda: kept(srv) == 30, what="30 records committed")
    records = stored(directory)
    assert sum(r.size for r in records) <= cap < sum(r.size for r in records) + records[0].size * 2
    ids = [r.id for r in records]
    assert ids == list(range(31 - len(ids), 31)) and 5 < len(ids) < 30  # the newest, none missing
    assert [r.request_id for r in records] == [f"r{i}" for i in range(30 - len(ids), 30)]


def test_the_file_stays_near_the_cap_as_records_rotate(tmp_path):
    """SQLite reuses the pages of deleted records: the database file does not grow with what has
    been written, only with the cap (the WAL is bounded apart, store.JOURNAL_LIMIT)."""
    cap = 1 << 20
    store = QuarantineStore.open(tmp_path, cap)
    rng = np.random.default_rng(0)
    try:
        for batch in range(60):  # ~24 MB written through a 1 MiB cap
            entries = [entry_of(_jpeg_like(rng, f"b{batch}-{i}")) for i in range(20)]
            store.append(entries)
        assert store.stored_bytes <= cap and store.integrity() == "ok"
        assert os.path.getsize(tmp_path / FILENAME) < 1.5 * cap + (64 << 10)
        assert store.stored_bytes == sum(r.size for r in store.records(with_inputs=False))
    finally:
        store.close()


def test_bytes_rows_and_tensors_come_back_as_they_were_sent(tmp_path):
    """Encoded images and UTF-8 texts (BYTES) and tensors of any datatype round-trip byte for byte."""
    rng = np.random.default_rng(1)
    texts = np.array([[b"a film I loved"], ["ужасный фильм".encode()]], dtype=object)
    frames = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    store = QuarantineStore.open(tmp_path, 1 << 20)
    try:
        store.append([entry_of(_jpeg_like(rng, "jpeg")), entry_of(_flagged({"text": texts, "frames": frames}, "two"))])
        jpeg, two = store.records()
    finally:
        store.close()
    assert jpeg.inputs[0].array()[0][:2] == b"\xff\xd8" and jpeg.predicted is None
    assert [i.name for i in two.inputs] == ["text", "frames"]
    assert two.inputs[0].array().tolist() == texts.tolist()
    np.testing.assert_array_equal(two.inputs[1].array(), frames)


def test_a_gateway_killed_mid_load_keeps_every_record_it_counted(tmp_path):
    """SIGKILL while clients send flagged requests: every record guard_quarantine_records_total had
    counted just before is in the store, the database passes SQLite's integrity check, and a
    gateway restarted on the same directory appends after them."""
    directory = tmp_path / "quarantine"
    repository = copy_demo(tmp_path)
    name = 'guard_quarantine_records_total{model="digits"}'
    with ServeProcess(repository, "--quarantine", str(directory)) as guard:
        with Traffic(guard.grpc_url, noise_rows(64), threads=8):
            wait_until(lambda: (guard.metric(name) or 0) >= 200, timeout=60, what="200 records committed")
            acknowledged = guard.metric(name)
            guard.process.send_signal(signal.SIGKILL)
            assert guard.wait(timeout=10) == -signal.SIGKILL
    database = sqlite3.connect(directory / FILENAME)
    try:
        assert database.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        ids = [row[0] for row in database.execute("SELECT id FROM records ORDER BY id")]
    finally:
        database.close()
    assert len(ids) >= acknowledged and ids == list(range(1, len(ids) + 1))
    with ServeProcess(repository, "--quarantine", str(directory)) as guard:
        with triton.InferenceServerClient(guard.grpc_url) as client:
            client.infer("digits", [infer_input(noise_rows(1))], request_id="after-restart")
        wait_until(lambda: guard.metric(name) == 1, what="the new record committed")
    listing = subprocess.run(
        [sys.executable, "-m", "guard", "quarantine", "list", "--dir", str(directory)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = listing.stdout.splitlines()
    assert listing.returncode == 0 and len(lines) == len(ids) + 1
    assert lines[-1].startswith(f"{len(ids) + 1} ") and "id=after-restart" in lines[-1]


def _flagged(inputs: dict[str, np.ndarray], request_id: str) -> Flagged:
    verdict = Verdict("adversarial", 2.0, ("patch_occlusion",), {"patch_occlusion": 0.5})
    return Flagged(time.time(), "camera", "1", request_id, "cam-7", verdict, inputs)


def _jpeg_like(rng: np.random.Generator, request_id: str) -> Flagged:
    """One BYTES row the size of a 224x224 camera JPEG (its first bytes a JPEG's marker)."""
    rows = np.empty((1,), dtype=object)
    rows[0] = b"\xff\xd8" + rng.bytes(int(rng.integers(15_000, 25_000)))
    return _flagged({"image": rows}, request_id)
