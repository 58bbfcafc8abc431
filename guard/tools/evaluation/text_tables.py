"""The text plan's additions to the report: the method, each model's out-of-domain clean sets (the
served flag rate with its 95% upper bound, and every scorer's realised rate at its 5% point), the
attack rows' query costs, and a few attacked texts per row as the gateway answered them."""

from __future__ import annotations

from typing import Any

METHOD = (
    "Attacks are black-box: they query the live gateway, one request per query, and see only its answers; each "
    "row's successful examples are the attacked test texts the SERVED model misclassifies (triggers: classifies "
    "as the target). ASR = successful / eligible (eligible: test texts the served model gets right; triggers: "
    "label != target). "
)


def is_text(results: dict[str, Any]) -> bool:
    return any(m.get("input_kind") == "text" for m in results.get("models", {}).values())


def _rate(rate: dict[str, Any] | None) -> str:
    if not rate or rate.get("rate") is None:
        return "—"
    return f"{rate['rate']:.3f} ({rate['flagged']}/{rate['n']}, ≤ {rate['upper_95']:.3f})"


def _fpr(value: dict[str, Any] | None) -> str:
    return "—" if value is None else " / ".join(f"{v:.3f}" if v is not None else "—" for v in value.values())


def _clip(text: str, limit: int = 160) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def sections(results: dict[str, Any]) -> str:
    lines = ["", "## Out-of-domain clean texts", ""]
    lines += ["| model | set | n | accuracy | served thresholds (flagged) | ensemble realised FPR (1% / 5% points) |"]
    lines += ["|---|---|---|---|---|---|"]
    for name, model in results["models"].items():
        for key, measured in model.get("out_of_domain", {}).items():
            lines.append(
                f"| {name} | {key} | {measured['n']} | {measured['accuracy']:.3f} | {_rate(measured['served'])} | "
                f"{_fpr(measured['clean_fpr'].get('ensemble'))} |"
            )
    lines += ["", "## Attack costs", "", "| row | mean queries (successful) | mean words edited | queries flagged |"]
    lines += ["|---|---|---|---|"]
    for row in results["rows"]:
        if "queries_flagged" in row:
            q = row["queries_flagged"]
            share = f"{q['flagged'] / q['n']:.3f} ({q['flagged']}/{q['n']})" if q["n"] else "—"
            mean_q = "—" if row["queries_mean"] is None else f"{row['queries_mean']:.1f}"
            mean_e = "—" if row["edits_mean"] is None else f"{row['edits_mean']:.2f}"
            lines.append(f"| {row['key']} | {mean_q} | {mean_e} | {share} |")
    lines += ["", "## Attacked texts as the gateway answered them", ""]
    for row in results["rows"]:
        for example in row.get("examples", []):
            mark = "flipped" if example["success"] else "not flipped"
            lines.append(
                f"- `{row['key']}` ({mark}, {example['edits']} edits, verdict **{example['verdict']}**): "
                f"“{_clip(example['original'])}” → “{_clip(example['adversarial'])}”"
            )
    return "\n".join(lines) + "\n"
