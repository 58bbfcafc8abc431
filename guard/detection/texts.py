"""Rows of text: what a text model's detectors examine.

An image model's guarded rows are one float tensor; a text model's are strings, because its
detectors' variants are edits of the words (a misspelling repaired, a rare word replaced, a word
deleted), and only the model's own tokenizer may turn them into token ids. The pipeline therefore
handles two kinds of rows: a torch.Tensor, or TextRows. A detector's text variants are TextRows that
the preprocessor tokenizes in the same batch as the originals (guard.detection.preprocess.text), so
a text model still costs one backend call per batch.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, overload

import numpy as np
import torch

if TYPE_CHECKING:
    from guard.detection.detectors.base import Detector

WORD = re.compile(r"\S+")
"""A word, for the detectors' edits: a run of non-space characters. Punctuation stays attached, so
deleting or replacing a word never touches the spacing of the rest of the text."""


@dataclass(frozen=True)
class TextRows(Sequence[str]):
    """A batch's rows of text, in order. Lives on the host whatever the guard's device is."""

    texts: tuple[str, ...]

    @classmethod
    def of(cls, texts: Iterable[str]) -> TextRows:
        return cls(tuple(texts))

    def __len__(self) -> int:
        return len(self.texts)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> TextRows: ...

    def __getitem__(self, index: int | slice) -> str | TextRows:
        if isinstance(index, slice):
            return TextRows(self.texts[index])
        return self.texts[index]

    @property
    def shape(self) -> tuple[int]:
        """(rows,): the pipeline reads a batch's size as rows.shape[0] for either kind."""
        return (len(self.texts),)

    def numpy(self) -> np.ndarray:
        """An object array of str, as detectors that learn read their FitData.x."""
        array = np.empty(len(self.texts), dtype=object)
        array[:] = self.texts
        return array


Rows = torch.Tensor | TextRows
"""A batch's guarded rows: a tensor (images, tensors) or text."""


def concat(parts: Sequence[Rows]) -> Rows:
    """The original rows followed by each detector's variants, as one batch of the same kind."""
    texts = [p for p in parts if isinstance(p, TextRows)]
    tensors = [p for p in parts if isinstance(p, torch.Tensor)]
    if len(texts) == len(parts):
        return TextRows(tuple(text for p in texts for text in p.texts))
    if len(tensors) == len(parts):
        return torch.cat(tensors)
    raise TypeError("a batch's rows and its variants must all be tensors or all be text")


def variants_of(detector: Detector, rows: Rows) -> Rows:
    """A detector's variants of a batch, for the kind of rows it is."""
    if isinstance(rows, TextRows):
        return detector.text_variants(rows)
    return detector.variants(rows)


def to_host(rows: Rows) -> np.ndarray:
    """The rows as a numpy array: floats for a tensor, an object array of str for text."""
    if isinstance(rows, TextRows):
        return rows.numpy()
    return rows.detach().cpu().numpy()


def from_host(array: np.ndarray) -> TextRows:
    """TextRows from an array of str or UTF-8 bytes (FitData.x, a stored reference batch)."""
    return TextRows(tuple(v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.asarray(array).ravel()))


def words(text: str) -> list[re.Match[str]]:
    """The words of a text with their spans, in order."""
    return list(WORD.finditer(text))


def replace_words(text: str, replacements: dict[int, str]) -> str:
    """text with its i-th word replaced by replacements[i] (an empty string deletes it along with
    the spacing that follows it, so no double spaces appear)."""
    if not replacements:
        return text
    out, last = [], 0
    for i, match in enumerate(WORD.finditer(text)):
        if i not in replacements:
            continue
        new = replacements[i]
        start, end = match.span()
        if not new:  # deleting: take the following whitespace with the word
            while end < len(text) and text[end].isspace():
                end += 1
        out.append(text[last:start])
        out.append(new)
        last = end
    out.append(text[last:])
    return "".join(out).rstrip() if any(not v for v in replacements.values()) else "".join(out)


QUERY_CHARS = 4096
"""A text's first characters that a query-attack fingerprint reads (guard.detection.queries)."""
_SPACES = re.compile(r"\s+")


def symbol_rows(texts: Sequence[str], limit: int = QUERY_CHARS) -> np.ndarray:
    """What a query-attack fingerprint reads of each text: its characters as symbols (code point
    + 1, int64), casefolded with runs of whitespace made one space, so that case and spacing alone
    never tell two queries apart; 0 pads the shorter rows (guard.detection.queries hashes symbols
    as they are and never a window that reaches into the padding)."""
    folded = [_SPACES.sub(" ", t.casefold()).strip()[:limit] for t in texts]
    out = np.zeros((len(folded), max((len(t) for t in folded), default=0)), dtype=np.int64)
    for i, text in enumerate(folded):
        out[i, : len(text)] = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64) + 1
    return out
