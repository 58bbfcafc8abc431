"""The toxicity model's evaluation as a `guard evaluate` plan.

    python -m guard_examples.toxicity_plan --out build/toxicity-plan
    guard evaluate --plan build/toxicity-plan/plan.toml --samples 40 --report-dir reports/toxicity-plan

Self-contained like the sentiment plan (guard_examples.sentiment_plan): the `toxicity` guard
directory of the text repository (guard_examples.text_guard) and its texts as .npz files of str:

- fit, calibration, test: guard_examples.toxicity's splits (review snippets, convention and debate
  lines), labelled by the model's own answers; no labelled toxicity set installs offline;
- out of domain, measured only: VADER's tweets and NYT sentences, labelled the same way.

An attacker of a toxicity filter wants a toxic text through as clean, so only the test texts the
model calls toxic are attacked (`attack_labels = [1]`), with the four character attacks, 100 queries
each at most. There is no word substitution: the model has no embedding space to draw neighbours
from, and a synonym source is not installed.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import tomlkit

from guard_examples import text_data, text_guard, toxicity
from guard_examples.paths import WORKSPACE
from guard_examples.sentiment_plan import BUDGET, CHARACTER_ATTACKS, save_texts

FIT = 1000
"""Training texts in the plan's fit split: its detectors learn nothing, but every plan has one."""
TOXIC = 1


def write_plan(out: Path, repository: Path = text_guard.DEFAULT_REPOSITORY) -> Path:
    directory = text_guard.build_repository(repository, names=(toxicity.NAME,))[toxicity.NAME]
    out = Path(out) if Path(out).is_absolute() else WORKSPACE / out
    if out.exists():
        shutil.rmtree(out)
    (out / "data").mkdir(parents=True)
    shutil.copytree(directory, out / "models" / toxicity.NAME)
    train = toxicity.texts("train")
    document = tomlkit.document()
    document["notes"] = [
        "Labels are the model's own answers (no labelled toxicity set installs offline): an attack "
        "succeeds when the served model calls an attacked toxic text clean.",
    ]
    document["data"] = {
        "fit": save_texts(out / "data" / "fit.npz", train[0][:FIT], train[1][:FIT]),
        "calibration": save_texts(out / "data" / "calibration.npz", *toxicity.texts("calibration")),
        "test": save_texts(out / "data" / "test.npz", *toxicity.texts("test")),
    }
    out_of_domain = {}
    for corpus in text_data.VADER_FILES:
        texts = [t for t in text_data.vader(corpus)[0] if len(t) <= toxicity.MAX_CHARS]
        labels = toxicity.joblib_probabilities(texts).argmax(1).astype(np.int64)
        out_of_domain[corpus] = save_texts(out / "data" / f"vader_{corpus}.npz", texts, labels)
    document["data"]["out_of_domain"] = out_of_domain
    document["models"] = tomlkit.aot()
    document["models"].append({"name": toxicity.NAME, "model": f"models/{toxicity.NAME}", "attack_labels": [TOXIC]})
    document["attacks"] = tomlkit.aot()
    for name in CHARACTER_ATTACKS:
        document["attacks"].append({"name": name, "params": {"max_queries": BUDGET}})
    (out / "plan.toml").write_text(tomlkit.dumps(document))
    return out / "plan.toml"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m guard_examples.toxicity_plan", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("build/toxicity-plan"))
    parser.add_argument("--repository", type=Path, default=text_guard.DEFAULT_REPOSITORY)
    args = parser.parse_args(argv)
    print(write_plan(args.out, args.repository))


if __name__ == "__main__":
    main()
