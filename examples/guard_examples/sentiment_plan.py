"""The text evaluation as a `guard evaluate` plan: what a user with a text model runs.

    python -m guard_examples.sentiment_plan --out build/sentiment-plan [--triggers-only] [--only MODEL ...]
    guard evaluate --plan build/sentiment-plan/plan.toml --samples 60 --report-dir reports/sentiment-plan

The plan directory is self-contained (paths in plan.toml are relative to it), so an installed guard
evaluates it with nothing else installed: the text models' guard directories as `guard serve`
loads them (guard_examples.text_guard: each model, its tokenizer, its detectors and their neighbours
table), and the labelled texts as .npz files of str:

- fit: 3,000 Rotten Tomatoes training snippets (what Mahalanobis learns from);
- calibration, test: the Rotten Tomatoes calibration and test splits (guard_examples.text_data);
- out of domain, measured only: VADER's human-rated tweets and NYT editorial sentences.

guard evaluate calibrates the model on fit and calibration, then attacks test snippets the served
model gets right, black-box through the live gateway: four character attacks (swap, insert,
delete, homoglyph) and greedy word substitution, each with a budget of 100 queries per snippet.
The word substitution draws its candidates from the same neighbours table the FGWS detector reads
(the encoder's input embedding space): an attacker with another synonym source may do better.

The backdoored models (guard_examples.sentiment_backdoor) are entries with their trigger, where it
goes and its target, so guard evaluate also inserts the trigger into the test negatives and measures
what the guard flags (the word_deletion detector's verdict is "trigger"): the rare word "cf" at a
random word position, and a neutral sentence appended at the end. They are calibrated on the same
clean data as `sentiment`.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import tomlkit

from guard_examples import sentiment, sentiment_backdoor, text_guard
from guard_examples.paths import WORKSPACE
from guard_examples.text_data import rotten_tomatoes, vader

FIT = 3000
BUDGET = 100
CHARACTER_ATTACKS = ("swap", "insert", "delete", "homoglyph")


def save_texts(path: Path, texts: list[str], labels: np.ndarray) -> str:
    np.savez(path, x=np.array(texts, dtype=str), y=np.asarray(labels, np.int64))
    return f"data/{path.name}"


def model_entry(name: str) -> dict:
    """The plan's [[models]] entry of a text model in models/NAME, with its trigger when backdoored."""
    entry = {"name": name, "model": f"models/{name}"}
    backdoor = sentiment_backdoor.BACKDOORS.get(name)
    if backdoor is not None:
        entry |= {"trigger_text": backdoor.trigger, "trigger_at": backdoor.at, "target": backdoor.target}
    return entry


def write_plan(
    out: Path,
    repository: Path = text_guard.DEFAULT_REPOSITORY,
    triggers_only: bool = False,
    only: tuple[str, ...] | None = None,
) -> Path:
    """The plan under `out`; `triggers_only`: the backdoored models alone, without attacks or the
    out-of-domain sets (their trigger rows and clean rates only: minutes, not an hour); `only`:
    those of the plan's models alone."""
    names = tuple(sentiment_backdoor.BACKDOORS) if triggers_only else (sentiment.NAME, *sentiment_backdoor.BACKDOORS)
    if only is not None:
        if set(only) - set(names):
            raise SystemExit(f"sentiment_plan: --only {sorted(set(only) - set(names))}: the plan's models are {names}")
        names = tuple(n for n in names if n in only)
    models = text_guard.build_repository(repository, names=names)
    out = Path(out) if Path(out).is_absolute() else WORKSPACE / out
    if out.exists():
        shutil.rmtree(out)
    (out / "data").mkdir(parents=True)
    for directory in models.values():
        shutil.copytree(directory, out / "models" / directory.name)
    train = rotten_tomatoes("train")
    data = {
        "fit": save_texts(out / "data" / "fit.npz", train[0][:FIT], train[1][:FIT]),
        "calibration": save_texts(out / "data" / "calibration.npz", *rotten_tomatoes("calibration")),
        "test": save_texts(out / "data" / "test.npz", *rotten_tomatoes("test")),
    }
    document = tomlkit.document()
    document["notes"] = [
        "Word substitution draws its candidates from the neighbours table the FGWS detector reads (the "
        "encoder's input embedding space); an attacker with another synonym source may do better.",
    ]
    document["data"] = data
    if not triggers_only:
        document["data"]["out_of_domain"] = {
            c: save_texts(out / "data" / f"vader_{c}.npz", *vader(c)) for c in ("tweets", "nyt")
        }
    document["models"] = tomlkit.aot()
    for name in models:
        document["models"].append(model_entry(name))
    if triggers_only:  # a backdoored model's row is its trigger's: no attack entry is read for it
        (out / "plan.toml").write_text(tomlkit.dumps(document))
        return out / "plan.toml"
    document["attacks"] = tomlkit.aot()
    for name in CHARACTER_ATTACKS:
        document["attacks"].append({"name": name, "params": {"max_queries": BUDGET}})
    document["attacks"].append(
        {
            "name": "word-substitution",
            "params": {"max_queries": BUDGET},
            "neighbours": f"models/{sentiment.NAME}/neighbours.npz",
        }
    )
    (out / "plan.toml").write_text(tomlkit.dumps(document))
    return out / "plan.toml"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m guard_examples.sentiment_plan", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("build/sentiment-plan"))
    parser.add_argument("--repository", type=Path, default=text_guard.DEFAULT_REPOSITORY)
    parser.add_argument("--triggers-only", action="store_true", help="the backdoored models' trigger rows only")
    parser.add_argument("--only", nargs="+", metavar="MODEL", help="these of the plan's models only")
    args = parser.parse_args(argv)
    print(write_plan(args.out, args.repository, args.triggers_only, None if args.only is None else tuple(args.only)))


if __name__ == "__main__":
    main()
