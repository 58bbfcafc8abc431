"""The benchmark's report: the issue's target ratios (met or missed, and what holds a missed one
back), Markdown tables of absolute figures, and a latency-vs-throughput plot per model."""

from __future__ import annotations

import itertools
from pathlib import Path

PIPELINE_WIDE = "outside the pipeline stages (gRPC, decoding, event loop)"


def _closed(results: dict, model: str, configuration: str, concurrency: int | None = None) -> list[dict]:
    return [
        p
        for p in results["points"]
        if p["model"] == model
        and p["configuration"] == configuration
        and p["loop"] == "closed"
        and (concurrency is None or p["concurrency"] == concurrency)
        and p.get("throughput_rps")
    ]


def _one(results: dict, model: str, configuration: str, concurrency: int) -> dict | None:
    found = _closed(results, model, configuration, concurrency)
    return found[0] if found else None


def _floor(results: dict, model: str, kind: str, batch: int | None = None) -> dict | None:
    return next(
        (
            f
            for f in results["floors"]
            if f["model"] == model and f["kind"] == kind and (batch is None or f["batch"] == batch)
        ),
        None,
    )


def time_per_request(point: dict, latency: bool = False) -> list[tuple[str, float]]:
    """Where a request's time goes, largest first, in ms. For throughput (latency=False) the
    per-request cost of each pipeline stage and the rest of the server's time at that rate; for
    latency, the gateway's stages and what the client saw beyond the gateway (transport)."""
    server = point.get("server")
    if not server:
        return []
    parts = {
        f"stage {s}": v["mean_ms"] if latency else v["ms_per_request"]
        for s, v in server["stages"].items()
        if s != "queue" or latency
    }
    if latency:
        parts["transport and client (p50 minus time in gateway)"] = point["p50_ms"] - server["in_gateway_ms"]
        parts["in gateway outside the stages"] = server["in_gateway_ms"] - sum(
            v["mean_ms"] for s, v in server["stages"].items()
        )
    else:
        parts[PIPELINE_WIDE] = 1e3 / point["throughput_rps"] - sum(parts.values())
    return sorted(((k, v) for k, v in parts.items()), key=lambda kv: -kv[1])


def _target(
    name: str,
    model: str,
    value: float | None,
    threshold: float,
    at_least: bool,
    definition: str,
    point: dict | None = None,
    latency: bool = False,
) -> dict:
    met = None if value is None else (value >= threshold if at_least else value <= threshold)
    entry = {
        "target": name,
        "model": model,
        "value": value,
        "threshold": threshold,
        "comparison": ">=" if at_least else "<=",
        "met": met,
        "definition": definition,
    }
    if met is False and point is not None:
        entry["time_per_request_ms"] = time_per_request(point, latency)
        entry["configuration"], entry["concurrency"] = point["configuration"], point["concurrency"]
    return entry


def targets(results: dict) -> list[dict]:
    out = []
    echo16, pass16 = _one(results, "digits", "echo", 16), _one(results, "digits", "passthrough", 16)
    out.append(
        _target(
            "pass-through vs echo: throughput at c=16",
            "digits",
            pass16 and echo16 and pass16["throughput_rps"] / echo16["throughput_rps"],
            0.9,
            True,
            "gateway (no detectors) requests/s / echo server requests/s, both at concurrency 16",
            pass16,
        )
    )
    echo1, pass1, floor1 = (
        _one(results, "digits", "echo", 1),
        _one(results, "digits", "passthrough", 1),
        _floor(results, "digits", "model", 1),
    )
    out.append(
        _target(
            "pass-through vs echo: added p50 at c=1",
            "digits",
            pass1 and echo1 and floor1 and (pass1["p50_ms"] - floor1["p50_ms"]) / echo1["p50_ms"],
            1.5,
            False,
            "(gateway p50 - in-process ORT p50 at batch 1) / echo p50, concurrency 1",
            pass1,
            True,
        )
    )
    for model in sorted({p["model"] for p in results["points"]}):
        if not model.startswith("mobilenet_v3_small"):
            continue
        best = max(_closed(results, model, "full_flag"), key=lambda p: p["throughput_rps"], default=None)
        floor = _floor(results, model, "guard_rows")
        value = best and floor and best["throughput_rps"] / (floor["rows_per_s"] / floor["guard_rows"])
        out.append(
            _target(
                "full guard vs compute floor",
                model,
                value,
                0.9,
                True,
                "best full-guard requests/s / (in-process ORT rows/s at the gateway's batch x (K+1) "
                "rows, divided by K+1)",
                best,
            )
        )
    full16 = _one(results, "digits", "full_flag", 16)
    peers = [p for c in ("mlserver", "mlserver_batched") if (p := _one(results, "digits", c, 16))]
    peer = max(peers, key=lambda p: p["throughput_rps"], default=None)
    out.append(
        _target(
            "full guard vs MLServer's best: throughput at c=16",
            "digits",
            full16 and peer and full16["throughput_rps"] / peer["throughput_rps"],
            2.0,
            True,
            f"full guard (flag) requests/s / MLServer's best ({peer and peer['configuration']}) at c=16",
            full16,
        )
    )
    out.append(
        _target(
            "full guard vs MLServer's best: p99 at c=16",
            "digits",
            full16 and peer and full16["p99_ms"] / peer["p99_ms"],
            1.0,
            False,
            "full guard p99 / the same MLServer configuration's p99 at c=16",
            full16,
        )
    )
    return out


def _f(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _pct(share: float | None) -> str:
    return "" if share is None else f"{share:.1%}"


def _status(met) -> str:
    return {True: "met", False: "**missed**", None: "not measured"}[met]


def markdown(results: dict) -> str:
    machine = results["machine"]
    lines = [
        f"# Benchmark ({results['mode']} mode)",
        "",
        f"Command: `{results['command']}`; {results['elapsed_s']:.0f} s.",
        f"Machine: {machine['platform']}, {machine['cpus']} CPUs, Python {machine['python']}, "
        f"ONNX Runtime {machine['onnxruntime']}, torch {machine['torch']}; load average at start "
        f"{', '.join(f'{x:.1f}' for x in machine['load_average'])}. Client and servers share the machine.",
        "torchvision models carry random weights (latency only, never accuracy).",
        "",
        "## Targets",
        "",
        "| target | model | value | needed | status |",
        "|---|---|---|---|---|",
    ]
    for t in results["targets"]:
        lines.append(
            f"| {t['target']} | {t['model']} | {_f(t['value'])} | {t['comparison']} {t['threshold']:g} | "
            f"{_status(t['met'])} |"
        )
    lines += ["", *[f"- {t['target']}: {t['definition']}." for t in results["targets"]]]
    for t in (t for t in results["targets"] if t["met"] is False and t.get("time_per_request_ms")):
        top = t["time_per_request_ms"][0]
        lines += [
            "",
            f"**{t['target']}** ({t['model']}, {t['configuration']} c={t['concurrency']}) is held back "
            f"by {top[0]} ({top[1]:.3f} ms per request). Time per request: "
            + "; ".join(f"{k} {v:.3f} ms" for k, v in t["time_per_request_ms"])
            + ".",
        ]
        profile = next(
            (
                p
                for p in results["profiles"]
                if p["model"] == t["model"] and p["configuration"] == t["configuration"] and p.get("self")
            ),
            None,
        )
        lines[-1] += (
            f" Its profile (below): hottest {profile['self'][0][0]} ({profile['self'][0][1]:.0%} self), "
            f"gateway code {', '.join(f'{n} {s:.0%}' for n, s in profile['inclusive'][:3])}."
            if profile
            else " Rerun with `--profile` for the gateway's py-spy profile."
        )
    for model in dict.fromkeys(p["model"] for p in results["points"]):
        lines += [
            "",
            f"## {model}",
            "",
            "In-process ONNX Runtime (the compute floor, no gRPC):",
            "",
            "| batch | rows/s | calls/s | p50 ms | p99 ms | note |",
            "|---|---|---|---|---|---|",
        ]
        for f in (f for f in results["floors"] if f["model"] == model):
            note = (
                f"{f['original_batch']} original rows x {f['guard_rows']} (the original + K variants each)"
                if f["kind"] == "guard_rows"
                else ""
            )
            lines.append(
                f"| {f['batch']} | {_f(f['rows_per_s'], 0)} | {_f(f['calls_per_s'], 0)} | "
                f"{_f(f['p50_ms'], 3)} | {_f(f['p99_ms'], 3)} | {note} |"
            )
        lines += [
            "",
            "Load (1-row requests): closed loop at concurrency c, or Poisson arrivals at a rate:",
            "",
            "| configuration | load | requests/s | p50 ms | p90 ms | p99 ms | p99.9 ms | errors |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for p in (p for p in results["points"] if p["model"] == model):
            load = f"c={p['concurrency']}" if p["loop"] == "closed" else f"{p['rate']:.0f}/s"
            errors = ", ".join(f"{k} {v}" for k, v in p["errors"].items()) or "0"
            quantiles = " | ".join(_f(p.get(f"{q}_ms"), 3) for q in ("p50", "p90", "p99", "p99.9"))
            lines.append(f"| {p['configuration']} | {load} | {_f(p['throughput_rps'], 0)} | {quantiles} | {errors} |")
        lines += [
            "",
            "Inside the gateway (from /metrics, per request; per-batch stages amortised over the batch):",
            "",
            "| configuration | load | mean batch | backend rows/row | in gateway ms | stages ms/request |",
            "|---|---|---|---|---|---|",
        ]
        for p in (p for p in results["points"] if p["model"] == model and p.get("server")):
            s = p["server"]
            load = f"c={p['concurrency']}" if p["loop"] == "closed" else f"{p['rate']:.0f}/s"
            stages = ", ".join(f"{k} {v['ms_per_request']:.3f}" for k, v in s["stages"].items())
            lines.append(
                f"| {p['configuration']} | {load} | {s['mean_batch_size']:.1f} | "
                f"{s['backend_rows_per_row']:.1f} | {s['in_gateway_ms']:.3f} | {stages} |"
            )
    if results["profiles"]:
        lines += ["", "## Profiles (py-spy, gateway process)"]
        for p in results["profiles"]:
            lines += [
                "",
                f"{p['model']} {p['configuration']} at c={p['concurrency']} "
                f"({_f(p['throughput_rps'], 0)} requests/s while sampled):",
            ]
            if "error" in p:
                lines.append(f"profile failed: {p['error']}")
                continue
            lines += [
                f"{p['samples']} samples, collapsed stacks in `{p['file']}`. Self: where the CPU was "
                "(grpc.aio's compiled core counts as `Handle._run`); inclusive: the gateway's own functions.",
                "",
                "| self | function | | inclusive | guard function |",
                "|---|---|---|---|---|",
            ]
            for own, inclusive in itertools.zip_longest(p["self"], p["inclusive"], fillvalue=("", None)):
                lines.append(f"| {_pct(own[1])} | `{own[0]}` | | {_pct(inclusive[1])} | `{inclusive[0]}` |")
    return "\n".join(lines) + "\n"


def plot(results: dict, model: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharex=True)
    configurations = dict.fromkeys(p["configuration"] for p in results["points"] if p["model"] == model)
    for index, configuration in enumerate(configurations):
        colour = f"C{index}"
        closed = sorted(_closed(results, model, configuration), key=lambda p: p["concurrency"])
        opened = [
            p
            for p in results["points"]
            if p["model"] == model and p["configuration"] == configuration and p["loop"] == "open" and p.get("p50_ms")
        ]
        for axis, key in zip(axes, ("p50_ms", "p99_ms")):
            axis.plot(
                [p["throughput_rps"] for p in closed], [p[key] for p in closed], "o-", color=colour, label=configuration
            )
            if opened:
                axis.plot(
                    [p["throughput_rps"] for p in opened], [p[key] for p in opened], "s", color=colour, fillstyle="none"
                )
    floor = _floor(results, model, "model", 1)
    for axis, title in zip(axes, ("p50", "p99")):
        if floor:
            axis.axvline(floor["rows_per_s"], color="grey", linestyle="--", label="in-process ORT, batch 1")
        axis.set(
            title=f"{model}: {title} latency (filled: closed loop, hollow: Poisson)",
            xlabel="throughput (requests/s)",
            ylabel="ms",
            xscale="log",
            yscale="log",
        )
        axis.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
