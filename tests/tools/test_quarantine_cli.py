"""`guard quarantine list|export` as a user runs them: the records a live gateway kept are listed,
exported in the layout `guard scan-data` reads (which then scans them), texts export as str, and
every bad argument is one line naming it."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import tritonclient.grpc as triton

from guard.protocol.types import Verdict
from guard.serving.quarantine.records import Flagged, entry_of
from guard.serving.quarantine.settings import QuarantineSettings
from guard.serving.quarantine.store import FILENAME, QuarantineStore
from tests.conftest import DEMO_REPOSITORY, ROOT, copy_demo, running_gateway
from tests.serving.helpers import infer_input, verdict
from tests.serving.process import wait_until


def guard(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "guard", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_flagged_traffic_lists_exports_and_feeds_scan_data(tmp_path, held_out):
    """Held-out digits with Gaussian noise, three rows a request: the flagged requests' rows come
    out of export in order with the classes the model answered, and scan-data ranks them."""
    directory = tmp_path / "quarantine"
    sent, answers, ids = [], [], []
    with (
        running_gateway(copy_demo(tmp_path), quarantine=QuarantineSettings(directory)) as srv,
        triton.InferenceServerClient(srv.grpc_url) as client,
    ):
        rng = np.random.default_rng(0)
        for i in range(0, 150, 3):
            x = np.clip(held_out[0][i : i + 3] + rng.normal(0, 0.25, (3, 1, 16, 16)), 0, 1).astype(np.float32)
            result = client.infer("digits", [infer_input(x)], request_id=f"noisy-{i}")
            if verdict(result)[0] != "clean":
                sent.append(x)
                answers.append(result.as_numpy("logits").argmax(1))
                ids.append(f"noisy-{i}")
        registry = srv.server.metrics.registry
        wait_until(
            lambda: registry.get_sample_value("guard_quarantine_records_total", {"model": "digits"}) == len(sent),
            what="every flagged request committed",
        )
    assert len(sent) >= 20

    listing = guard("quarantine", "list", "--dir", str(directory))
    lines = listing.stdout.splitlines()
    assert listing.returncode == 0 and len(lines) == len(sent), listing.stderr
    assert all(" digits:1 " in line and "identity=127.0.0.1" in line for line in lines)
    assert [line.split(" id=")[1].split()[0] for line in lines] == ids
    assert "input:FP32[3,1,16,16]" in lines[0] and "bytes=" in lines[0]

    out = tmp_path / "export" / "flagged.npz"
    exported = guard("quarantine", "export", "--dir", str(directory), "--out", str(out), "--model", "digits")
    assert exported.returncode == 0, exported.stderr
    with np.load(out, allow_pickle=False) as data:
        np.testing.assert_array_equal(data["x"], np.concatenate(sent))
        np.testing.assert_array_equal(data["y"], np.concatenate(answers))
    sidecar = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert [s["request_id"] for s in sidecar] == ids and sidecar[1]["rows"] == [3, 6]
    assert all(s["verdict"] != "clean" and s["flagged_by"] and s["scores"] for s in sidecar)

    report = tmp_path / "scan"
    scan = guard(
        "scan-data",
        "--model",
        str(DEMO_REPOSITORY / "digits"),
        "--data",
        str(out),
        "--out",
        str(report),
        "--no-progress",
    )
    assert scan.returncode == 0, scan.stderr[-2000:]
    assert json.loads((report / "data_scan.json").read_text())["samples"] == 3 * len(sent)


def test_texts_export_as_str_and_encoded_images_are_refused_naming_the_record(tmp_path):
    texts = np.array([[b"a film I loved"], ["ужасный фильм".encode()]], dtype=object)
    image = np.empty((1,), dtype=object)
    image[0] = b"\xff\xd8\xff\xe0 not text"
    store = QuarantineStore.open(tmp_path / "q", 1 << 20)
    try:
        store.append([entry_of(_flagged("sentiment", {"text": texts}, np.array([[0.1, 0.9], [2.0, -1.0]])))])
        store.append([entry_of(_flagged("camera", {"image": image}))])
    finally:
        store.close()
    out = tmp_path / "texts.npz"
    assert (
        guard(
            "quarantine", "export", "--dir", str(tmp_path / "q"), "--out", str(out), "--model", "sentiment"
        ).returncode
        == 0
    )
    with np.load(out, allow_pickle=False) as data:
        assert data["x"].tolist() == ["a film I loved", "ужасный фильм"] and data["y"].tolist() == [1, 0]
    refused = guard("quarantine", "export", "--dir", str(tmp_path / "q"), "--out", str(out), "--model", "camera")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith(
        "guard quarantine export: record 2's input 'image' (BYTES [1]) holds encoded images"
    )


def test_bad_arguments_are_one_line_naming_them(tmp_path):
    store_dir = tmp_path / "q"
    store = QuarantineStore.open(store_dir, 1 << 20)
    try:
        store.append([entry_of(_flagged("a", {"x": np.zeros((1, 2), np.float32)}))])
        store.append([entry_of(_flagged("b", {"x": np.zeros((1, 2), np.float32)}))])
    finally:
        store.close()
    not_a_database = tmp_path / "junk"
    not_a_database.mkdir()
    (not_a_database / FILENAME).write_bytes(b"this is not SQLite" * 100)
    a_file = tmp_path / "file"
    a_file.write_text("")
    cases = [
        (["quarantine", "list"], "guard quarantine list: the following arguments are required: --dir"),
        (["quarantine", "list", "--dir", str(tmp_path / "none")], f"--dir {tmp_path / 'none'}: no quarantine database"),
        (["quarantine", "list", "--dir", str(not_a_database)], "not a readable quarantine database"),
        (["quarantine", "list", "--dir", str(store_dir), "--model", "c"], "--model c: no records of that model"),
        (["quarantine", "list", "--dir", str(store_dir), "--bogus"], "unrecognized arguments: --bogus"),
        (
            ["quarantine", "export", "--dir", str(store_dir), "--out", "x.txt"],
            "--out x.txt: expected a file name ending",
        ),
        (["quarantine", "export", "--dir", str(store_dir), "--out", str(tmp_path / "o.npz")], "several models (a, b)"),
        (["serve", "--quarantine-max-bytes", "5M"], "guard serve: --quarantine-max-bytes needs --quarantine DIR"),
    ]
    for args, expected in cases:
        result = guard(*args, timeout=60)
        assert result.returncode != 0 and expected in result.stderr, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, (args, result.stderr)
    # A directory no database can be made in stops `guard serve` with one error line naming the flag.
    served = guard(
        "serve", "--repository", str(DEMO_REPOSITORY), "--grpc-port", "0", "--metrics-port", "-1",
        "--quarantine", str(a_file / "q"),
    )  # fmt: skip
    errors = [line for line in served.stderr.splitlines() if " ERROR " in line]
    assert served.returncode == 2 and "Traceback" not in served.stderr
    assert len(errors) == 1 and f"--quarantine {a_file / 'q'}: cannot open a quarantine database" in errors[0]


def _flagged(model: str, inputs: dict[str, np.ndarray], logits: np.ndarray | None = None) -> Flagged:
    verdict = Verdict("adversarial", 2.0, ("d",), {"d": 1.0})
    return Flagged(time.time(), model, "1", "r", "client", verdict, inputs, logits)
