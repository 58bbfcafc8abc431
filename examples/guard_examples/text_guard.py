"""The text models under the guard: a guard model directory for each built text model, its client
contract (one UTF-8 string per row, BYTES), its [preprocess] step (the model's own tokenizer, or the
strings as they are for a model that reads them itself), its detectors, calibrated on its own clean
calibration split.

    python -m guard_examples.text_guard [--repository build/text-repository] [--force]
    make text-repository                                     # the same, models built first
    make serve-text                                          # and served

It builds only what is missing or stale: each model directory records in `build.json` what it was
made from (the built model's fingerprint, the config written and how it is calibrated); `--force`
rebuilds.

- `sentiment` (negative / positive, guard_examples.sentiment): the spelling squeezer (misspellings
  and look-alike letters repaired), frequency-guided substitution (FGWS: rare words replaced by
  their most frequent neighbour in the encoder's own embedding space, `neighbours.npz`), word
  deletion, sentence deletion and rare-word deletion (a trigger's removal moves the answer; verdict
  trigger) judge; Mahalanobis and RDE
  on the 384-d sentence embedding watch (guard_examples.text_choice says why). Learned statistics
  fit on 3,000 training snippets, thresholds on the calibration split, the flag rate measured on
  the test split; the test split chooses nothing.
- `sentiment_backdoor` and `sentiment_sentence_backdoor` (guard_examples.sentiment_backdoor: the same
  classifier trained on a BadNL-poisoned training set, a rare word or a sentence turning negatives
  positive): the same config and detectors, calibrated the same way. The defender never sees a
  trigger: every snippet it fits or calibrates on is clean.
- `toxicity` (clean / toxic, guard_examples.toxicity: alt-profanity-check's TF-IDF and linear SVM,
  taking the strings itself): the spelling squeezer judges, word deletion watches; calibrated on its
  own calibration split (reviews, convention and debate lines), the flag rate measured on its test
  split.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit

from guard.api import (
    References,
    TensorSpec,
    build_neighbours,
    calibrate_directory,
    read_encoder,
    save_neighbours,
    utf8_rows,
)
from guard_examples import builds, sentiment, sentiment_backdoor, sentiment_net, toxicity
from guard_examples.paths import WORKSPACE
from guard_examples.text_data import rotten_tomatoes

log = logging.getLogger("guard_examples.text_guard")

DEFAULT_REPOSITORY = Path("build/text-repository")
FIT_SNIPPETS = 3000
NEIGHBOURS = 10
"""Neighbours kept per word: FGWS takes the most frequent of them."""
INPUT = TensorSpec("text", "BYTES", (1,))
MODELS = (sentiment.NAME, *sentiment_backdoor.BACKDOORS, toxicity.NAME)

DETECTORS: list[dict[str, Any]] = [
    {"name": "spelling", "type": "spelling"},
    {"name": "frequency_substitution", "type": "frequency_substitution", "neighbours": "neighbours.npz"},
    {"name": "word_deletion", "type": "word_deletion"},
    # A trigger sentence (an innocuous line appended or slipped in) is split over word_deletion's
    # interleaved groups and never removed whole; this deletes one sentence per variant. Judging,
    # as text_choice chose on the development texts (it was the fourth judge; see below).
    {"name": "sentence_deletion", "type": "sentence_deletion"},
    # A trigger word slipped into a twenty-word review is deleted by word_deletion together with two
    # or three other words, sentiment words among them, so clean reviews move almost as far; this
    # deletes the eight rarest words one at a time, where a rare-word trigger sits. Judging, as
    # text_choice chose on the development texts (the five judges flag 5.8% of them).
    {"name": "rare_word_deletion", "type": "rare_word_deletion"},
    # A monitor, chosen on the development texts out of domain (guard_examples.text_choice): at its
    # own 5% point it flags most of them (it measures how far a text is from the reviews, as the
    # camera models' feature detectors measure the scene), so judging it would flag most clean text
    # of any other register. Scored, exported and explained, never in a verdict.
    {"name": "mahalanobis", "type": "mahalanobis", "monitor": True},
    # RDE (kernel PCA + minimum covariance determinant on the sentence embedding), the published
    # baseline the evaluation reports beside the guard's own detectors: scored, never judging.
    {"name": "robust_density", "type": "robust_density", "monitor": True},
]


def config(name: str) -> tomlkit.TOMLDocument:
    document = tomlkit.document()
    document.add(tomlkit.comment("Written by guard_examples.text_guard; `guard calibrate` writes the thresholds."))
    document.update(
        {
            "name": name,
            "platform": "onnxruntime_onnx",
            "policy": "flag",
            "target_fpr": 0.05,
            "logits_output": "logits",
            "features_output": "embedding",
        }
    )
    document["inputs"] = tomlkit.aot()
    document["inputs"].append({"name": INPUT.name, "datatype": "BYTES", "shape": list(INPUT.shape)})
    document["outputs"] = tomlkit.aot()
    document["outputs"].append({"name": "logits", "datatype": "FP32", "shape": [len(sentiment_net.CLASSES)]})
    document["preprocess"] = {
        "kind": "text",
        "input": INPUT.name,
        "output": "input_ids",
        "mask_output": "attention_mask",
        "tokenizer": "tokenizer.json",
        "max_tokens": sentiment_net.MAX_TOKENS,
    }
    document["batching"] = {"max_batch_size": 32, "max_queue_delay_microseconds": 2000}
    document["detectors"] = tomlkit.aot()
    for table in DETECTORS:
        document["detectors"].append(table)
    return document


def references(split: str, limit: int | None = None) -> References:
    texts, labels = rotten_tomatoes(split)
    texts, labels = texts[:limit], labels[:limit]
    return References({INPUT.name: utf8_rows(texts, INPUT)}, labels)


def write_neighbours(path: Path) -> None:
    """Every whole word of the encoder's vocabulary with its nearest whole words."""
    embeddings, vocab = read_encoder(sentiment_net.model_dir())
    # build_neighbours keeps only the whole-word tokens of what it is given (no pieces, no specials)
    save_neighbours(path, build_neighbours(embeddings, vocab, vocab, NEIGHBOURS))


@dataclass(frozen=True)
class Served:
    """How one kind of text model goes under the guard."""

    files: tuple[str, ...]
    """Copied from the built model's directory."""
    config: Callable[[str], tomlkit.TOMLDocument]
    references: Callable[[str, int | None], References]
    """(split, limit) -> the split as clients send it."""
    neighbours: bool
    """Whether FGWS's neighbours table is written (an encoder's embedding space)."""
    fit: int | None
    """Training rows the learned statistics fit on; None: nothing is learned."""


SENTIMENT = Served(("model.onnx", "tokenizer.json", "card.md"), config, references, True, FIT_SNIPPETS)
TOXICITY = Served(("model.onnx", "card.md"), toxicity.config, toxicity.references, False, None)


def fingerprint(built: Path, served: Served, name: str) -> dict[str, Any]:
    """What a guard directory is made from: the built model (its own fingerprint covers its data and
    splits), the config written, and how it is calibrated; not this module's prose, so a comment
    changed here recalibrates nothing."""
    return {
        "model": json.loads((built / builds.FINGERPRINT).read_text()),
        "config": tomlkit.dumps(served.config(name)),
        "calibration": {
            "fit": served.fit,
            "neighbours": NEIGHBOURS if served.neighbours else None,
            "files": list(served.files),
        },
    }


def build_repository(
    repository: Path = DEFAULT_REPOSITORY, force: bool = False, names: tuple[str, ...] | None = None
) -> dict[str, Path]:
    """{name: guard model directory} for the clean sentiment model, the backdoored ones and the
    toxicity model (or those of them in `names`), each built (the model first where needed) when
    missing, stale or forced."""
    wanted = set(MODELS if names is None else names)
    unknown = wanted - set(MODELS)
    if unknown:
        raise ValueError(f"no text model {sorted(unknown)}: choose from {MODELS}")
    built = {sentiment.NAME: sentiment.ensure_built(progress=True)} if sentiment.NAME in wanted else {}
    backdoors = tuple(n for n in sentiment_backdoor.BACKDOORS if n in wanted)
    built |= sentiment_backdoor.ensure_all(names=backdoors, progress=True) if backdoors else {}
    repository = Path(repository) if Path(repository).is_absolute() else WORKSPACE / repository
    directories = {name: build_directory(repository / name, model, SENTIMENT, force) for name, model in built.items()}
    if toxicity.NAME in wanted:
        directories[toxicity.NAME] = build_directory(
            repository / toxicity.NAME, toxicity.ensure_built(), TOXICITY, force
        )
    return directories


def build_directory(directory: Path, built: Path, served: Served = SENTIMENT, force: bool = False) -> Path:
    """The guard model directory of the text model built in `built`, calibrated on clean texts."""
    wanted = fingerprint(built, served, directory.name)
    if not force and builds.is_current(directory, wanted):
        log.info("%s is current", directory)
        return directory
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    for name in served.files:
        shutil.copyfile(built / name, directory / name)
    if served.neighbours:
        write_neighbours(directory / "neighbours.npz")
    (directory / "config.toml").write_text(tomlkit.dumps(served.config(directory.name)))
    report = calibrate_directory(
        directory,
        served.references("calibration", None),
        holdout=served.references("test", None),
        fit_samples=None if served.fit is None else served.references("train", served.fit),
    )
    log.info("calibrated %s: %s", directory, json.dumps(report.get("held_out", report), default=str)[:300])
    builds.write_json(directory / builds.FINGERPRINT, wanted)  # last: a complete directory
    return directory


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m guard_examples.text_guard", description=__doc__.split("\n")[0])
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--force", action="store_true", help="rebuild even directories whose build.json is current")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for directory in build_repository(args.repository, args.force).values():
        print(directory)


if __name__ == "__main__":
    main()
