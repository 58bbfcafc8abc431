"""How fast the quarantine's store keeps flagged requests on this host's disk.

    python -m benchmarks.quarantine [--records 4000] [--dir /tmp/q] [--out results/quarantine.json]

Two realistic records, each written through the gateway's own code:
- `jpeg`: one camera frame as clients send it, a 224x224 JPEG of scikit-image's astronaut
  (about 20 KB, BYTES), with a detection model's verdict and scores;
- `digits`: one demo request, an FP32 [1, 1, 16, 16] tensor (1 KiB) with its logits.

For each record, three ways, each on a fresh database in --dir (put it on the disk the gateway
will use: the figures are the disk's fsync as much as SQLite's):
- `store FULL, batch B`: QuarantineStore.append in batches of B records (one transaction, one
  fsync each), synchronous=FULL (what the gateway runs: a commit survives a power cut);
- `store NORMAL, batch B`: the same under synchronous=NORMAL (survives a killed process only);
- `writer`: QuarantineWriter.offer as fast as the caller can, until every record is committed
  (the gateway's path: group commit decides the batch sizes).
Printed: records/s and MB/s of record bytes (inputs and metadata, what counts against the cap).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from skimage import data, transform

from guard.protocol.types import InferRequest, Verdict
from guard.serving.metrics import GuardMetrics
from guard.serving.quarantine.records import Flagged, entry_of
from guard.serving.quarantine.settings import QuarantineSettings
from guard.serving.quarantine.store import QuarantineStore
from guard.serving.quarantine.writer import QuarantineWriter
from guard.tools.clean_data import encode_jpeg

CAP = 1 << 40  # no rotation: the figures are for writing


def jpeg_request() -> tuple[InferRequest, Verdict, np.ndarray | None]:
    frame = (transform.resize(data.astronaut(), (224, 224), anti_aliasing=True) * 255).astype(np.uint8)
    rows = np.empty((1, 1), dtype=np.object_)
    rows[0, 0] = encode_jpeg(frame, quality=90)
    scores = {"patch_occlusion": 0.41, "feature_gaussian": 37.5, "squeeze_features": 0.12}
    verdict = Verdict("adversarial", 1.7, ("patch_occlusion",), scores)
    return InferRequest("yolov3_tiny", {"image": rows}, id="camera-7/frame-1234"), verdict, None


def digits_request() -> tuple[InferRequest, Verdict, np.ndarray | None]:
    x = np.random.default_rng(0).random((1, 1, 16, 16), dtype=np.float32)
    scores = {"bit_depth_2": 0.3, "median_2x2": 0.2, "mahalanobis": 40.1, "confidence_margin": 0.9}
    verdict = Verdict("adversarial", 2.4, ("mahalanobis",), scores)
    logits = np.random.default_rng(1).standard_normal((1, 10)).astype(np.float32)
    return InferRequest("digits", {"input": x}, id="request-42"), verdict, logits


def flagged(request: InferRequest, verdict: Verdict, logits: np.ndarray | None) -> Flagged:
    return Flagged(
        time.time(), request.model_name, "1", request.id, "ipv4:10.0.0.7:51234", verdict, request.inputs, logits
    )


def store_rate(directory: Path, record: Flagged, count: int, batch: int, synchronous: str) -> tuple[float, int]:
    """Seconds to append `count` records in batches of `batch`, and the bytes they count."""
    shutil.rmtree(directory, ignore_errors=True)
    store = QuarantineStore.open(directory, CAP, synchronous=synchronous)
    try:
        start = time.perf_counter()
        for first in range(0, count, batch):
            # Encoded per batch as the writer thread does (entry_of is part of the cost).
            store.append([entry_of(record) for _ in range(min(batch, count - first))])
        return time.perf_counter() - start, store.stored_bytes
    finally:
        store.close()


def writer_rate(directory: Path, make, count: int) -> tuple[float, int, int]:
    """Seconds from the first offer to the last commit, the bytes stored, and the records stored
    (all of them unless some were dropped: the buffer holds every record here)."""
    shutil.rmtree(directory, ignore_errors=True)
    writer = QuarantineWriter(QuarantineSettings(directory, CAP, buffer_records=count + 1), GuardMetrics())
    request, verdict, logits = make()
    start = time.perf_counter()
    for _ in range(count):
        writer.offer(request, verdict, version="1", identity="ipv4:10.0.0.7:51234", logits=logits)
    writer.close()  # returns once the last batch is committed
    seconds = time.perf_counter() - start
    store = QuarantineStore.open(directory, create=False)
    try:
        return seconds, store.stored_bytes, store.count()
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=4000)
    parser.add_argument("--dir", type=Path, help="where the databases go (default: a temporary directory)")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="guard-quarantine-bench-"))
    rows = []
    for name, make in (("jpeg", jpeg_request), ("digits", digits_request)):
        record = flagged(*make())
        size = entry_of(record).size
        for synchronous, batch in (("FULL", 1), ("FULL", 64), ("FULL", 512), ("NORMAL", 64)):
            count = args.records if batch > 1 else min(args.records, 500)
            seconds, stored = store_rate(root / "db", record, count, batch, synchronous)
            rows.append(_row(name, size, f"store {synchronous}, batch {batch}", count, seconds, stored))
        seconds, stored, written = writer_rate(root / "db", make, args.records)
        rows.append(_row(name, size, "writer (FULL, group commit)", written, seconds, stored))
    print(f"{'record':8} {'bytes':>7}  {'how':34} {'records/s':>10} {'MB/s':>8}")
    for r in rows:
        print(f"{r['record']:8} {r['bytes']:7d}  {r['how']:34} {r['records_per_s']:10.0f} {r['mb_per_s']:8.1f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    if args.dir is None:
        shutil.rmtree(root, ignore_errors=True)


def _row(record: str, size: int, how: str, count: int, seconds: float, stored: int) -> dict:
    return {
        "record": record,
        "bytes": size,
        "how": how,
        "records": count,
        "seconds": seconds,
        "records_per_s": count / seconds,
        "mb_per_s": stored / seconds / 1e6,
    }


if __name__ == "__main__":
    main()
