"""UTF-8 text as clients send it (BYTES: one string per row) -> the same text as str, for a model
that takes ONNX strings itself (a TF-IDF pipeline exported by skl2onnx: its own normaliser,
tokenizer and vocabulary live inside the graph).

The guarded rows are the strings (guard.detection.texts.TextRows), so the text detectors' variants
(a misspelling repaired, a word deleted) work as they do for a tokenized model, and `finish` hands
the backend the originals and every variant together as one numpy object array of str, shaped as
the client's rows ([rows] or [rows, 1]): one backend call per batch. Nothing is padded, so requests
need no length buckets.

What a request is refused for, each alone with INVALID_ARGUMENT naming the input and row, the rest
of the batch served (guard.detection.preprocess.utf8): bytes that are not UTF-8, a text that is
empty or only whitespace, and a text longer than `max_chars` characters (Unicode code points). A
variant a detector makes longer than that is still run: only what clients send is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from guard.detection.preprocess.base import Prepared, Preprocessor
from guard.detection.preprocess.utf8 import prepare_texts
from guard.detection.texts import Rows, TextRows, symbol_rows
from guard.protocol.settings import Param
from guard.protocol.spec import TensorSpec


class StringsPreprocessor(Preprocessor):
    kind = "strings"
    symbols = True
    datatypes = ("BYTES",)
    ranks = (0, 1)
    layout = "one UTF-8 string per row"
    parameters = {"max_chars": Param(int, 1, 10_000_000, default=10_000)}
    max_chars: int

    def __init__(self, source: TensorSpec, output: str, directory: Path | None = None, **params: Any):
        super().__init__(source, output, directory, **params)
        if source.shape not in ((), (1,)):
            raise ValueError(f"input '{source.name}': one string per row (shape [] or [1])")

    def query_rows(self, guarded: Any) -> np.ndarray:
        """The texts as symbols (guard.detection.texts.symbol_rows): a black-box attack on a text
        edits a few characters or words per query, so its queries share most character windows."""
        return symbol_rows(list(guarded))

    def guarded_spec(self) -> TensorSpec:
        return TensorSpec(self.output, "BYTES", ())

    def model_spec(self) -> TensorSpec:
        """The model's string input, one per row as the client sends it: [] or [1]."""
        return TensorSpec(self.output, "BYTES", self.source.shape)

    def _over_limit(self, texts: list[str]) -> dict[str, str]:
        return {
            t: f"{len(t)} characters, over the model's limit of {self.max_chars}"
            for t in texts
            if len(t) > self.max_chars
        }

    def prepare(self, arrays: list[np.ndarray], device: torch.device) -> Prepared:
        return prepare_texts(self.source.name, arrays, self._over_limit)

    def finish_inputs(self, guarded: Rows) -> dict[str, np.ndarray]:
        """The batch's strings (originals and variants) as the model's input: str, [rows, *shape]."""
        if not isinstance(guarded, TextRows):
            raise TypeError("the strings preprocessor finishes rows of text")
        return {self.output: guarded.numpy().reshape(len(guarded), *self.source.shape)}
