"""How the sentiment recipe trains: a linear head on the frozen encoder's embeddings, a copy with the
top layer fine-tuned, the choice between them by McNemar's test on the calibration split, and the
trained weights saved and loaded (guard_examples.sentiment builds with it).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from guard_examples import text_data
from guard_examples.sentiment_net import CLASSES, HIDDEN, SentimentNet, batches, load_encoder, mean_pool

log = logging.getLogger("guard_examples.sentiment")


SEED = 0
HEAD_WEIGHT_DECAY = 1e-4  # L2 on the head; best on the calibration split of 1e-2 .. 0
FINE_TUNE_LAYERS = 1  # the top encoder layer; two took three times as long for no clear gain
FINE_TUNE_LR = 1e-4  # best on the calibration split of 2e-5, 1e-4, 3e-4
HEAD_LR = 1e-3
KEEP_FINE_TUNED_P = 0.05  # McNemar's one-sided p on the calibration split below which fine-tuning is kept


def frozen_pass(model: SentimentNet, ids: list[list[int]], keep_from: int, progress: bool, desc: str):
    """One pass of the frozen encoder: the embeddings, and each batch's states entering layer
    `keep_from` (so fine-tuning the layers above never reruns the ones below)."""
    embeddings = np.zeros((len(ids), HIDDEN), np.float32)
    cached = []
    with torch.no_grad():
        for rows, tokens, mask in batches(ids, progress=progress, desc=desc):
            ids_t, mask_t = torch.from_numpy(tokens), torch.from_numpy(mask)
            below = model.hidden(ids_t, mask_t, keep_from)
            cached.append((rows, below, mask_t))
            embeddings[rows] = mean_pool(model.top(below, mask_t, keep_from), mask_t).numpy()
    return embeddings, cached


def train_head(x: np.ndarray, y: np.ndarray) -> nn.Linear:
    """Multinomial logistic regression on the embeddings (full-batch L-BFGS, deterministic)."""
    torch.manual_seed(SEED)
    head = nn.Linear(HIDDEN, len(CLASSES))
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    optimiser = torch.optim.LBFGS(head.parameters(), max_iter=500, history_size=20, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimiser.zero_grad()
        value = F.cross_entropy(head(inputs), targets) + HEAD_WEIGHT_DECAY * head.weight.pow(2).sum()
        value.backward()
        return value

    optimiser.step(loss)
    return head.requires_grad_(False)


def fine_tune(model: SentimentNet, cached: list, y: np.ndarray, progress: bool) -> SentimentNet:
    """A copy of `model` whose top FINE_TUNE_LAYERS layers and head are trained for one epoch on the
    cached states (batches in a seeded random order, dropout on)."""
    start = len(model.layers) - FINE_TUNE_LAYERS
    top = copy.deepcopy(model.layers[start:]).requires_grad_(True)
    # shares the frozen embeddings and lower layers with `model`
    tuned = SentimentNet(
        model.embeddings, nn.ModuleList([*model.layers[:start], *top]), copy.deepcopy(model.head).requires_grad_(True)
    )
    optimiser = torch.optim.AdamW(
        [{"params": top.parameters(), "lr": FINE_TUNE_LR}, {"params": tuned.head.parameters(), "lr": HEAD_LR}],
        weight_decay=0.01,
    )
    torch.manual_seed(SEED)
    order = torch.randperm(len(cached), generator=torch.Generator().manual_seed(SEED)).tolist()
    targets = torch.from_numpy(y)
    top.train()
    for k in tqdm(order, desc="fine-tune", disable=not progress, unit="batch"):
        rows, below, mask = cached[k]
        logits = tuned.head(mean_pool(tuned.top(below, mask, start), mask))
        loss = F.cross_entropy(logits, targets[torch.from_numpy(rows)])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    tuned.eval().requires_grad_(False)
    return tuned


def cached_embeddings(model: SentimentNet, cached: list, n: int, start: int) -> np.ndarray:
    out = np.zeros((n, HIDDEN), np.float32)
    with torch.no_grad():
        for rows, below, mask in cached:
            out[rows] = mean_pool(model.top(below, mask, start), mask).numpy()
    return out


def head_predictions(head: nn.Linear, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return head(torch.from_numpy(x)).argmax(1).numpy()


def mcnemar_p(a_correct: np.ndarray, b_correct: np.ndarray) -> float:
    """One-sided exact McNemar p-value that B is more accurate than A on the same texts: the chance
    of B winning at least as many of the texts where they disagree if each side were equally likely."""
    b_only = int((b_correct & ~a_correct).sum())
    n = b_only + int((a_correct & ~b_correct).sum())
    return sum(math.comb(n, k) for k in range(b_only, n + 1)) / 2**n if n else 1.0


def save_trained(model: SentimentNet, path: Path, fine_tuned: bool) -> Path:
    """The weights this recipe trained (the head, and the fine-tuned layers when kept): with the
    package's encoder they rebuild the torch model (`load_model`)."""
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items() if k.startswith("head.")}
    if fine_tuned:
        for i in range(len(model.layers) - FINE_TUNE_LAYERS, len(model.layers)):
            state |= {k: v.contiguous() for k, v in model.state_dict().items() if k.startswith(f"layers.{i}.")}
    save_file(state, str(path))
    return path


def load_model(directory: Path) -> SentimentNet:
    """The torch model a build exported, from the package's encoder and `trained.safetensors`."""
    from safetensors.torch import load_file

    model = SentimentNet.from_encoder(load_encoder())
    missing, unexpected = model.load_state_dict(load_file(str(Path(directory) / "trained.safetensors")), strict=False)
    if unexpected or any(k.startswith("head.") for k in missing):
        raise ValueError(f"{directory}/trained.safetensors does not fit the model: {unexpected or missing}")
    return model.eval().requires_grad_(False)


def train(ids: dict[str, list[list[int]]], labels: dict[str, np.ndarray], progress: bool):
    """Both variants (frozen encoder with a trained head; top layer fine-tuned with it), the one kept,
    and the kept one's torch logits and embeddings of the test split: (model, metrics, (logits,
    embeddings))."""
    start = time.perf_counter()
    frozen = SentimentNet.from_encoder(load_encoder()).requires_grad_(False)
    keep_from = len(frozen.layers) - FINE_TUNE_LAYERS
    embeddings, cached = {}, {}
    for split in text_data.SPLITS:
        embeddings[split], cached[split] = frozen_pass(frozen, ids[split], keep_from, progress, f"encode {split}")
    frozen.head = train_head(embeddings["train"], labels["train"])
    encode_seconds = time.perf_counter() - start

    start = time.perf_counter()
    tuned = fine_tune(frozen, cached["train"], labels["train"], progress)
    tune_seconds = time.perf_counter() - start
    evaluated = ("calibration", "test")
    outputs = {
        "frozen": (frozen, {s: embeddings[s] for s in evaluated}),
        "fine_tuned": (tuned, {s: cached_embeddings(tuned, cached[s], len(ids[s]), keep_from) for s in evaluated}),
    }
    correct = {
        name: {s: head_predictions(model.head, x[s]) == labels[s] for s in evaluated}
        for name, (model, x) in outputs.items()
    }
    p_value = mcnemar_p(correct["frozen"]["calibration"], correct["fine_tuned"]["calibration"])
    fine_tuned = p_value < KEEP_FINE_TUNED_P
    log.info(
        "fine-tuning the top layer: calibration McNemar p = %.3g, %s", p_value, "kept" if fine_tuned else "not kept"
    )
    model, x = outputs["fine_tuned" if fine_tuned else "frozen"]
    with torch.no_grad():
        test_logits = model.head(torch.from_numpy(x["test"])).numpy()
    metrics = {
        "variants": {name: {s: float(c[s].mean()) for s in evaluated} for name, c in correct.items()},
        "fine_tune_mcnemar_p": p_value,
        "fine_tuned": fine_tuned,
        "encode_and_head_seconds": encode_seconds,
        "fine_tune_seconds": tune_seconds,
    }
    return model, metrics, (test_logits, x["test"])
