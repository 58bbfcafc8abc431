"""How many benign clients the query-attack rule flags, at the scale its target is stated in
(<= 0.1% of clients): thousands of clients, in process.

    python -m benchmarks.benign_population [--replays 2000] [--cameras 1200] [--out reports/query-attacks]
        [--match hashes|distance] [--rule decision|duplicates]

The live benchmark (benchmarks.query_attacks) sends tens of benign clients through a gateway; a
rate of 0.1% needs about 3,000 clients flagged none for its upper bound to reach it, which through
one gateway on two cores takes hours. This runs the gateway's own parts in process instead: the
demo's served digits model (ONNX Runtime, the file the gateway loads) answers every query, and
guard.detection.queries (the fingerprints and the rule the gateway runs, with the settings a
model gets when its [clients] table sets none; with `--match distance`, the distance `guard
calibrate --model` derives for the demo) keeps each client's store. Two kinds of client:

- replays: each sends a random number (20-200) of the clean test digits, in its own order, some
  of them twice (a client that retries);
- cameras: each re-sends one still frame of real footage (every frame of every packaged clip, the
  frame drawn per camera), seen by a 64x64 sensor, with sensor noise (sd 3) and JPEG re-encoding
  (quality 85) each time, as a parked-car scene does all day; 50-300 frames each, at the digits
  model's input (grey, 16x16).

Each kind gives flagged/clients and the one-sided 95% upper bound. What this does not cover: the
transport (the live benchmark does), and clients whose behaviour is not one of these two.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from benchmarks.query_attacks import served_repository
from benchmarks.query_clients import as_digit_input, noisy_jpeg
from benchmarks.repositories import DIGITS, load_split
from guard.detection.bounds import upper_bound
from guard.detection.queries import MATCHES, RULES, QuerySettings, QueryStore, prints

CLIPS = ("vtest", "carphone", "bigbuckbunny", "bikes")
SENSOR = 64


def answers_of(session: ort.InferenceSession, rows: np.ndarray) -> np.ndarray:
    name = session.get_inputs()[0].name
    logits = session.run(None, {name: rows.astype(np.float32)})[0]
    return logits.reshape(len(rows), -1).argmax(axis=1).astype(np.int64)


def flagged(store: QueryStore, identity: str, rows: np.ndarray, answers: np.ndarray, settings: QuerySettings) -> bool:
    """Whether any of the client's queries, sent one per second in order, is flagged."""
    kept = prints(rows, settings)
    return any(
        store.observe(identity, kept[i : i + 1], answers[i : i + 1], float(i))[0].flagged for i in range(len(rows))
    )


def stills() -> list[np.ndarray]:
    """Every frame of every packaged clip, as a small camera of SENSOR x SENSOR pixels sees it (RGB
    uint8): the scenes cameras are pointed at. A small sensor keeps the noise and JPEG blocks large
    at the model's 16x16 (a full-size frame would average them away): the harder case for the rule."""
    from PIL import Image

    from guard_examples.footage import video_frames

    return [
        np.asarray(Image.fromarray(frame).resize((SENSOR, SENSOR), Image.Resampling.BOX))
        for clip in CLIPS
        for frame in video_frames(clip)
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replays", type=int, default=2000)
    parser.add_argument("--cameras", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("reports/query-attacks"))
    parser.add_argument("--match", choices=MATCHES, default="hashes")
    parser.add_argument("--rule", choices=RULES, default="decision")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        _, settings = served_repository(Path(tmp), {"query_attack": "flag", "match": args.match, "rule": args.rule})
    session = ort.InferenceSession(str(DIGITS / "model.onnx"), providers=["CPUExecutionProvider"])
    x, _ = load_split("test")
    rng = np.random.default_rng(args.seed)
    store = QueryStore(QuerySettings(**{**settings.__dict__, "max_identities": args.replays + args.cameras}))
    results: dict[str, dict] = {}

    hits, queries = 0, 0
    for k in tqdm(range(args.replays), desc="replay clients", unit="client"):
        picks = rng.choice(len(x), int(rng.integers(20, 201)))  # with replacement: some sent twice
        rows = x[picks]
        hits += flagged(store, f"replay-{k}", rows, answers_of(session, rows), settings)
        queries += len(rows)
    results["replays"] = {"clients": args.replays, "queries": queries, "flagged": hits}

    scenes = stills()
    hits, queries = 0, 0
    for k in tqdm(range(args.cameras), desc="static cameras", unit="camera"):
        still = scenes[int(rng.integers(len(scenes)))]
        rows = np.stack([as_digit_input(noisy_jpeg(still, rng)) for _ in range(int(rng.integers(50, 301)))])
        hits += flagged(store, f"camera-{k}", rows, answers_of(session, rows), settings)
        queries += len(rows)
    results["cameras"] = {"clients": args.cameras, "queries": queries, "flagged": hits}

    for row in results.values():
        row["upper_95"] = upper_bound(row["flagged"], row["clients"])
    everyone = sum(r["flagged"] for r in results.values()), sum(r["clients"] for r in results.values())
    results["all"] = {"clients": everyone[1], "flagged": everyone[0], "upper_95": upper_bound(*everyone)}
    args.out.mkdir(parents=True, exist_ok=True)
    chosen = [v for v, default in ((args.match, "hashes"), (args.rule, "decision")) if v != default]
    name = "_".join(["benign_population", *chosen])
    served = {"match": settings.match, "distance": settings.distance, "rule": settings.rule}
    (args.out / f"{name}.json").write_text(json.dumps({**results, "settings": served}, indent=2) + "\n")
    lines = [
        "| clients | queries | flagged | upper 95% |",
        "|---|---|---|---|",
        *(
            f"| {kind}: {r['clients']} | {r.get('queries', '')} | {r['flagged']} | {100 * r['upper_95']:.2f}% |"
            for kind, r in results.items()
        ),
    ]
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
