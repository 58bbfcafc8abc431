"""Which of the text guard's detectors judge and which only watch, chosen on development data: the
clean Rotten Tomatoes calibration split (in domain) and VADER's Amazon review snippets (out of
domain; text_data.VADER_DEVELOPMENT). The tweets and NYT sentences, what the evaluation reports out
of domain, choose nothing.

    python -m guard_examples.text_choice [--model build/text-repository/sentiment] [--target 0.05]

Scores a calibrated text model directory's detectors in process (the served pipeline: the model's
tokenizer, every detector's variants in the one backend call), fits each detector's own threshold
at the target on the calibration split, and prints what each flags of the development texts, with
the one-sided 95% upper bound, then the union of the detectors that hold out of domain.

The rule: the judges are the largest set of the guard's own detectors (BASELINES only watch) whose
union (thresholds sharing the target's budget, as served) keeps the development texts' flag rate
within the goal (OUT_OF_DOMAIN_GOAL, the issue's 6.5% at a 5% target), every set tried (a text
guard has a handful of detectors); among sets of one size, the one flagging the fewest development
texts. A detector left out measures how far a text
is from the reviews, not whether it was perturbed, and is served as a monitor: scored, exported
and explained, never in a verdict. text_guard.DETECTORS records the outcome.

The scores are kept in `--scores` (an .npz beside the model by default), so the table can be
printed again at other targets without scoring again.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch

from guard.api import (
    References,
    TensorSpec,
    Union,
    build_backend,
    build_detectors,
    build_pipeline,
    load_model_config,
    rates,
    score_detectors,
    upper_bound,
    utf8_rows,
)
from guard_examples import sentiment_net, text_data
from guard_examples.paths import WORKSPACE

DEFAULT_MODEL = Path("build/text-repository/sentiment")
BASELINES = ("robust_density",)
"""Published defences the evaluation reports beside the guard's own detectors: always monitors,
never candidates (a baseline that judged would take part of the budget from what it is compared
with)."""
DEVELOPMENT_SAMPLE = 1500
"""Amazon snippets scored: a rate near the goal is then known to about one point (binomial sd)."""
OUT_OF_DOMAIN_GOAL = 0.065
"""The most a served text guard may flag of clean text out of domain, at a 5% target (the issue)."""


def scores_of(directory: Path, corpora: dict[str, list[str]]) -> dict[str, dict[str, np.ndarray]]:
    """{corpus: {detector: scores}} of every detector of the directory, monitors included."""
    config = load_model_config(directory, calibrated=False)
    detectors = build_detectors(
        config.path,
        config.detection.detectors,
        require_threshold=False,
        input_kind=config.guarded_kind,
        output_kind=config.detection.output_kind,
    )
    backend = build_backend(config.spec, config.backend, tuple(d.name for d in detectors if d.needs_features))
    # the texts go in as clients send them: the preprocessor's input, which it tokenizes
    name = config.preprocess.input if config.preprocess is not None else config.detection.guarded_input
    spec = next(s for s in config.inputs if s.name == name)
    try:
        pipeline = build_pipeline(config, backend, detectors, torch.device("cpu"))
        found = {}
        for corpus, texts in corpora.items():
            references = References({spec.name: utf8_rows(texts, TensorSpec(spec.name, "BYTES", spec.shape))})
            found[corpus], _ = score_detectors(pipeline, references, desc=corpus)
        return found
    finally:
        backend.close()


def _union(calibration: dict[str, np.ndarray], development: dict[str, np.ndarray], judges: list[str], target: float):
    fitted = Union.fit({k: calibration[k] for k in judges}, target)
    flags = rates.flagged(fitted.ratio(development), 1.0)
    return {
        "judges": list(judges),
        "calibration": float(rates.flagged(fitted.ratio(calibration), 1.0).mean()),
        "development": float(flags.mean()),
        "development_upper": upper_bound(int(flags.sum()), len(flags)),
    }


def choose(calibration: dict[str, np.ndarray], development: dict[str, np.ndarray], target: float) -> dict:
    """Each detector alone (threshold at `target` on calibration) with its development flag rate
    and bound; the judges (the rule above) and their union's rates."""
    rows = {}
    for name in calibration:
        threshold = Union.fit({name: calibration[name]}, target).thresholds[name]
        flagged = int(rates.flagged(development[name], threshold).sum())
        n = len(development[name])
        rows[name] = {
            "calibration": float(rates.flagged(calibration[name], threshold).mean()),
            "development": flagged / n,
            "development_upper": upper_bound(flagged, n),
        }
    names = [name for name in rows if name not in BASELINES]
    for size in range(len(names), 0, -1):
        unions = [_union(calibration, development, list(s), target) for s in itertools.combinations(names, size)]
        holding = [u for u in unions if u["development"] <= OUT_OF_DOMAIN_GOAL]
        if holding or size == 1:  # with none holding, the one detector that flags the fewest
            union = min(holding or unions, key=lambda u: u["development"])
            break
    for name, row in rows.items():
        row["judges"] = name in union["judges"]
    return {"detectors": rows, "union": union}


def table(choice: dict, target: float) -> str:
    lines = [
        f"Target {target:g}: each detector alone at its own threshold (fitted on the calibration split)\n",
        "| detector | calibration flagged | Amazon (development) flagged | upper bound | serves as |",
        "|---|---|---|---|---|",
    ]
    for name, row in choice["detectors"].items():
        lines.append(
            f"| {name} | {row['calibration']:.3f} | {row['development']:.3f} | {row['development_upper']:.3f} | "
            f"{'judge' if row['judges'] else 'baseline (monitor)' if name in BASELINES else 'monitor'} |"
        )
    union = choice["union"]
    lines.append(
        f"\nUnion of {', '.join(union['judges'])}: calibration {union['calibration']:.3f}, Amazon "
        f"{union['development']:.3f} (upper bound {union['development_upper']:.3f})"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m guard_examples.text_choice", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="a calibrated text model directory")
    parser.add_argument("--target", type=float, default=0.05)
    parser.add_argument("--scores", type=Path, help="the scores' .npz (default: choice_scores.npz beside the model)")
    args = parser.parse_args(argv)
    directory = args.model if args.model.is_absolute() else WORKSPACE / args.model
    tokenizer = sentiment_net.load_tokenizer(directory / "tokenizer.json")
    amazon = text_data.vader("amazon")[0]
    ids = sentiment_net.tokenize(tokenizer, amazon)
    # what the guard serves: texts within its token limit (it refuses the others), a seeded sample
    within = [t for t, row in zip(amazon, ids) if len(row) <= sentiment_net.MAX_TOKENS]
    sample = np.sort(np.random.default_rng(0).permutation(len(within))[:DEVELOPMENT_SAMPLE])
    corpora = {"calibration": text_data.rotten_tomatoes("calibration")[0], "amazon": [within[i] for i in sample]}
    scores = args.scores or directory / "choice_scores.npz"
    if scores.is_file():
        with np.load(scores) as kept:
            found = {c: {k.split("/", 1)[1]: kept[k] for k in kept.files if k.startswith(c + "/")} for c in corpora}
    else:
        found = scores_of(directory, corpora)
        np.savez(scores, **{f"{c}/{k}": v for c, by in found.items() for k, v in by.items()})
    print(table(choose(found["calibration"], found["amazon"], args.target), args.target))


if __name__ == "__main__":
    main()
