"""Triton's own load tool against the guard, unchanged: perf_analyzer reads the model's
configuration (ModelConfig) and, because the guard lists the `statistics` extension, the
server-side split of each request's latency (ModelStatistics).

    python -m benchmarks.perf_analyzer [--out reports/perf-analyzer] [--concurrency 1 4 16] [--rounds 3]

perf_analyzer is a C++ binary with no package of its own: it ships inside tritonclient 2.34.0's
Linux wheel. `ensure_binary` fetches that wheel and `nvidia-cuda-runtime-cu12` (for libcudart.so.12,
which the binary links although it never touches a GPU here) from the package index with `pip
download`, once, into build/perf_analyzer/, and extracts the two files. It also needs Debian's
`libb64-0d` (apt-get, as root). This is a setup step of the benchmark, never of a test.

The served configurations are benchmarks.repositories' digits entries: `passthrough` (no detector)
and `full_flag` (the shipped guard), one gateway process serving both. Each round runs
perf_analyzer on every configuration at every concurrency, the configurations interleaved; the
report gives the median over rounds of throughput and client p50/p99, and the server's split of
the average request (queue, compute input/infer/output, and the rest as overhead). Inputs are the
demo's test digits (`--input-data` JSON): random values would be refused, out of the declared range.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmarks.gateway_process import start_gateway
from benchmarks.repositories import build, digits_full, load_split

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "build" / "perf_analyzer"
WHEEL = "tritonclient==2.34.0"
"""The last tritonclient wheel that carries perf_analyzer (later ones leave it out)."""
CONFIGURATIONS = ("passthrough", "full_flag")
COLUMNS = {
    "Inferences/Second": "throughput",
    "p50 latency": "p50_us",
    "p99 latency": "p99_us",
    "Server Queue": "queue_us",
    "Server Compute Input": "compute_input_us",
    "Server Compute Infer": "compute_infer_us",
    "Server Compute Output": "compute_output_us",
    "Network+Server Send/Recv": "network_server_us",
}


def _extract(wheel: Path, suffix: str, target: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(suffix)]
        with archive.open(name) as source, open(target, "wb") as out:
            shutil.copyfileobj(source, out)


def ensure_binary(cache: Path = CACHE) -> tuple[Path, dict[str, str]]:
    """The perf_analyzer binary and the environment it runs in (its libcudart on the library path)."""
    binary, lib = cache / "perf_analyzer", cache / "lib"
    env = {**os.environ, "LD_LIBRARY_PATH": f"{lib}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
    if not binary.exists():
        lib.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", tmp]
            subprocess.run([*pip, "--platform", "manylinux1_x86_64", WHEEL], check=True)
            subprocess.run([*pip, "nvidia-cuda-runtime-cu12"], check=True)
            _extract(next(Path(tmp).glob("tritonclient-*.whl")), "/bin/perf_analyzer", binary)
            _extract(next(Path(tmp).glob("nvidia_cuda_runtime*.whl")), "/libcudart.so.12", lib / "libcudart.so.12")
        binary.chmod(0o755)
    missing = [
        line.split()[0]
        for line in subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env=env).stdout.splitlines()
        if "not found" in line
    ]
    if "libb64.so.0d" in missing and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-qq", "libb64-0d"], check=True)
        missing.remove("libb64.so.0d")
    if missing:
        raise SystemExit(f"perf_analyzer needs {', '.join(missing)} (libb64.so.0d: apt-get install libb64-0d)")
    return binary, env


def input_data(path: Path, count: int = 64) -> Path:
    """perf_analyzer's JSON input format: the first `count` test digits, one request each."""
    x, _ = load_split("test")
    rows = [{"input": {"content": row.reshape(-1).tolist(), "shape": list(row.shape)}} for row in x[:count]]
    path.write_text(json.dumps({"data": rows}))
    return path


def run_once(binary: Path, env: dict[str, str], target: str, model: str, concurrency: int, data: Path, window_ms: int):
    """One perf_analyzer run at one concurrency: its CSV row, as numbers."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.csv"
        command = [
            str(binary),
            *("-i", "grpc", "-u", target, "-m", model),
            *("--concurrency-range", f"{concurrency}:{concurrency}"),
            *("--measurement-interval", str(window_ms), "--input-data", str(data), "-f", str(report)),
        ]
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"perf_analyzer failed on {model} at c={concurrency}:\n{done.stdout[-2000:]}")
        (row,) = list(csv.DictReader(io.StringIO(report.read_text())))
    return {key: float(row[column]) for column, key in COLUMNS.items()}


def median_rows(runs: list[dict]) -> dict:
    keys = runs[0].keys()
    return {k: float(np.median([r[k] for r in runs])) for k in keys} | {
        "throughput_min": min(r["throughput"] for r in runs),
        "throughput_max": max(r["throughput"] for r in runs),
    }


def table(results: dict) -> list[str]:
    lines = [
        "| configuration | concurrency | infer/s: median (min-max) | p50 us | p99 us | server queue us | "
        "compute input / infer / output us | network + other us |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, by_c in results.items():
        for c, r in by_c.items():
            lines.append(
                f"| {name} | {c} | {r['throughput']:.0f} ({r['throughput_min']:.0f}-{r['throughput_max']:.0f}) | "
                f"{r['p50_us']:.0f} | {r['p99_us']:.0f} | {r['queue_us']:.0f} | "
                f"{r['compute_input_us']:.0f} / {r['compute_infer_us']:.0f} / {r['compute_output_us']:.0f} | "
                f"{r['network_server_us']:.0f} |"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "perf-analyzer")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window-ms", type=int, default=3000, help="perf_analyzer's measurement interval")
    args = parser.parse_args(argv)
    binary, env = ensure_binary()
    runs: dict[str, dict[int, list[dict]]] = {n: {c: [] for c in args.concurrency} for n in CONFIGURATIONS}
    with tempfile.TemporaryDirectory() as tmp:
        repository = build(digits_full(), Path(tmp) / "repository")
        for name in [p.name for p in repository.iterdir()]:
            if name not in CONFIGURATIONS:
                shutil.rmtree(repository / name)
        data = input_data(Path(tmp) / "digits.json")
        with start_gateway(repository) as gateway:
            steps = [(r, n, c) for r in range(args.rounds) for n in CONFIGURATIONS for c in args.concurrency]
            for _, name, c in tqdm(steps, desc="perf_analyzer runs"):
                runs[name][c].append(run_once(binary, env, gateway.target, name, c, data, args.window_ms))
    results = {n: {c: median_rows(r) for c, r in by_c.items()} for n, by_c in runs.items()}
    text = [
        "# perf_analyzer (tritonclient 2.34.0) against the guard",
        "",
        f"`python -m benchmarks.perf_analyzer --concurrency {' '.join(map(str, args.concurrency))} "
        f"--rounds {args.rounds} --window-ms {args.window_ms}`; medians over rounds, configurations interleaved.",
        "",
        *table(results),
        "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "perf-analyzer.json").write_text(
        json.dumps({"args": vars(args) | {"out": str(args.out)}, "runs": runs})
    )
    (args.out / "perf-analyzer.md").write_text("\n".join(text))
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
