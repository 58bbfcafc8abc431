"""Word neighbours in an encoder's input embedding space: for each word, the k whole words whose
input embeddings are closest by cosine similarity.

The frequency-guided word substitution detector (guard.detection.detectors.text_frequency) swaps a
rare word for its most frequent neighbour, and the evaluation's word-substitution attack draws its
synonyms from the same table, so both read one artifact: an .npz with `words` (str, the n words
that have neighbours first, then the words that are only neighbours) and `index` ([n, k] int32 into
`words`, -1 where a word has fewer than k). No pickle: it loads with allow_pickle=False.

Only whole-word tokens are candidates: for a WordPiece vocabulary, ASCII alphabetic tokens (no
`##` continuation pieces, no [CLS]-style specials, no digits or punctuation).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

EMBEDDINGS = "embeddings.word_embeddings.weight"
"""The input embedding matrix of a BERT-style encoder's safetensors file (possibly prefixed, as
in `bert.embeddings.word_embeddings.weight`)."""


def is_whole_word(token: str) -> bool:
    """Whether a vocabulary token is a whole English word: ASCII letters only."""
    return token.isascii() and token.isalpha()


def build_neighbours(
    embeddings: np.ndarray, vocab: Sequence[str], words: Sequence[str], k: int
) -> dict[str, list[str]]:
    """The k nearest whole words (cosine similarity of `embeddings` rows, [len(vocab), dim]) of each
    of `words`, nearest first; a word that is not a whole-word token of `vocab` gets no entry."""
    candidates = np.array([i for i, token in enumerate(vocab) if is_whole_word(token)], dtype=np.int64)
    unit = np.asarray(embeddings[candidates], np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True).clip(min=1e-12)
    position = {vocab[i]: j for j, i in enumerate(candidates.tolist())}
    asked = [w for w in dict.fromkeys(words) if w in position]
    k = min(k, len(candidates) - 1)
    neighbours: dict[str, list[str]] = {}
    for start in range(0, len(asked), 1024):  # [1024, candidates] similarities at a time
        chunk = asked[start : start + 1024]
        rows = np.array([position[w] for w in chunk])
        similarity = unit[rows] @ unit.T
        similarity[np.arange(len(rows)), rows] = -np.inf  # a word is not its own neighbour
        top = np.argpartition(-similarity, k - 1, axis=1)[:, :k] if k > 0 else np.zeros((len(rows), 0), np.int64)
        for word, row, picks in zip(chunk, similarity, top):
            ordered = picks[np.argsort(-row[picks], kind="stable")]
            neighbours[word] = [vocab[i] for i in candidates[ordered].tolist()]
    return neighbours


def save_neighbours(path: Path, neighbours: Mapping[str, Sequence[str]]) -> None:
    """Write a neighbours table as the .npz artifact (module docstring) to exactly `path`."""
    table = list(neighbours)
    slot = {word: i for i, word in enumerate(table)}
    for listed in neighbours.values():
        for word in listed:
            if word not in slot:
                slot[word] = len(table)
                table.append(word)
    k = max((len(listed) for listed in neighbours.values()), default=0)
    index = np.full((len(neighbours), k), -1, np.int32)
    for row, listed in enumerate(neighbours.values()):
        index[row, : len(listed)] = [slot[w] for w in listed]
    with open(path, "wb") as file:  # a file object: np.savez would add .npz to a name without it
        np.savez(file, words=np.array(table, dtype=str), index=index)


def load_neighbours(path: Path) -> dict[str, list[str]]:
    """Read a neighbours artifact; a malformed one raises ValueError naming what is wrong."""
    with np.load(path, allow_pickle=False) as data:
        table, index = data["words"].tolist(), np.asarray(data["index"])
    if index.ndim != 2 or index.shape[0] > len(table) or not np.issubdtype(index.dtype, np.integer):
        raise ValueError(f"{path}: index must be [n, k] integers with n <= {len(table)} words, got {index.shape}")
    if index.size and (index.min() < -1 or index.max() >= len(table)):
        raise ValueError(f"{path}: index entries must be -1 or below {len(table)}")
    return {table[row]: [table[i] for i in picks if i >= 0] for row, picks in enumerate(index.tolist())}


def read_encoder(directory: Path) -> tuple[np.ndarray, list[str]]:
    """The input embedding matrix ([vocab, dim] float32) and the vocabulary (token per id) of a
    BERT-style encoder directory: model.safetensors, and vocab.txt or else tokenizer.json."""
    from safetensors import safe_open  # the `text` extra's: imported where used, as wordfreq is

    with safe_open(str(directory / "model.safetensors"), framework="np") as tensors:
        names = [n for n in tensors.keys() if n == EMBEDDINGS or n.endswith("." + EMBEDDINGS)]  # noqa: SIM118 - not a dict
        if not names:
            raise ValueError(f"{directory / 'model.safetensors'} has no {EMBEDDINGS}")
        embeddings = np.asarray(tensors.get_tensor(min(names, key=len)), np.float32)
    if (directory / "vocab.txt").is_file():
        vocab = (directory / "vocab.txt").read_text(encoding="utf-8").splitlines()
    else:
        ids: dict[str, int] = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
        vocab = [""] * (max(ids.values()) + 1)
        for token, i in ids.items():
            vocab[i] = token
    if len(vocab) > len(embeddings):
        raise ValueError(f"{directory}: {len(vocab)} tokens but {len(embeddings)} embedding rows")
    return embeddings[: len(vocab)], vocab
