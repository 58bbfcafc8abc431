"""UTF-8 text as clients send it (BYTES: one string per row) -> the model's token ids and attention
mask, tokenized by the model's own tokenizer (a `tokenizer.json` of the `tokenizers` library, which
every Hugging Face tokenizer exports).

The guarded rows are the strings themselves (guard.detection.texts.TextRows): a text detector's
variants are edits of the words, and `finish` tokenizes the originals and every variant together,
padded to the longest row of the batch (dynamic padding, to a multiple of 8 so the backend sees few
distinct shapes) with the attention mask beside the ids. Requests are bucketed by length before
they are batched (`bucket`), so a short text rarely waits on, or pads to, a long one.

What a request is refused for, each alone with INVALID_ARGUMENT naming the input and row, the rest
of the batch served: bytes that are not UTF-8, a text that is empty or only whitespace, and a text
longer than `max_tokens` tokens (special tokens included). Over-long text is rejected, not
truncated, by default (`overflow = "reject"`): a truncated text would be answered as if the model
had read all of it, and an instruction or trigger past the cut would go unexamined by the guard
while the client believes the whole text was judged. `overflow = "truncate"` keeps the first
`max_tokens` tokens for models whose clients prefer an answer; the guard and the model then see the
same truncated text. A variant a detector makes longer than the limit is always truncated: only
what clients send is refused.
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

OVERFLOW = ("reject", "truncate")
PAD_MULTIPLE = 8


class TextPreprocessor(Preprocessor):
    kind = "text"
    symbols = True
    datatypes = ("BYTES",)
    ranks = (0, 1)
    layout = "one UTF-8 string per row"
    parameters = {
        "tokenizer": Param(str, default="tokenizer.json", file=True),
        "max_tokens": Param(int, 2, 1_000_000, default=128),
        "overflow": Param(str, default="reject"),
        "mask_output": Param(str, default="attention_mask"),
        # The model input for token type ids (all zero: one segment); empty when the model takes none.
        "type_output": Param(str, default=""),
    }
    tokenizer: str
    max_tokens: int
    overflow: str
    mask_output: str
    type_output: str

    def __init__(self, source: TensorSpec, output: str, directory: Path | None = None, **params: Any):
        super().__init__(source, output, directory, **params)
        if self.overflow not in OVERFLOW:
            raise ValueError(f"preprocess.overflow: {' or '.join(OVERFLOW)}, got {self.overflow!r}")
        if source.shape not in ((), (1,)):
            raise ValueError(f"input '{source.name}': one string per row (shape [] or [1])")
        names = [output, self.mask_output, *([self.type_output] if self.type_output else [])]
        if len(set(names)) != len(names):
            raise ValueError(f"preprocess: output, mask_output and type_output must differ, got {names}")
        self._counting, self._batching = self._load()

    def _load(self) -> tuple[Any, Any]:
        """Two copies of the tokenizer: one that counts a request's tokens untruncated (to refuse what
        is over the limit) and one that truncates and pads a batch (tokenizers keeps both settings on
        the object, so one copy cannot do both)."""
        from tokenizers import Tokenizer  # lazy: only a process serving text models needs it

        if self.directory is None:  # built to read its specs (config checks), never to run
            return None, None
        path = self.directory / self.tokenizer
        if not path.is_file():
            raise ValueError(f"preprocess.tokenizer: {path} not found (the model's tokenizer.json)")
        counting = Tokenizer.from_file(str(path))
        counting.no_truncation()
        counting.no_padding()
        batching = Tokenizer.from_file(str(path))
        batching.enable_truncation(self.max_tokens)
        pad = batching.padding or {}
        batching.enable_padding(
            pad_id=pad.get("pad_id", 0), pad_token=pad.get("pad_token", "[PAD]"), pad_to_multiple_of=PAD_MULTIPLE
        )
        return counting, batching

    def query_rows(self, guarded: Any) -> np.ndarray:
        """The texts as symbols (guard.detection.texts.symbol_rows): a black-box attack on a text
        edits a few characters or words per query, so its queries share most character windows."""
        return symbol_rows(list(guarded))

    def guarded_spec(self) -> TensorSpec:
        return TensorSpec(self.output, "BYTES", ())

    def model_specs(self) -> tuple[TensorSpec, ...]:
        names = [self.output, self.mask_output, *([self.type_output] if self.type_output else [])]
        return tuple(TensorSpec(name, "INT64", (-1,)) for name in names)

    def model_spec(self) -> TensorSpec:
        return self.model_specs()[0]

    def bucket(self, array: np.ndarray) -> int:
        """Requests batch with others of about the same length: the bit length of the longest row's
        bytes over 64 (<64 B, <128 B, <256 B, ...), read without decoding."""
        longest = max((len(v) for v in np.asarray(array, dtype=object).reshape(-1)), default=0)
        return (longest // 64).bit_length()

    def _over_limit(self, texts: list[str]) -> dict[str, str]:
        """The texts over `max_tokens` (counted untruncated, special tokens included) when
        over-long text is refused; none when it is truncated."""
        if self.overflow != "reject":
            return {}
        counts = ((t, len(e.ids)) for t, e in zip(texts, self._counting.encode_batch(texts)))
        return {t: f"{n} tokens, over the model's limit of {self.max_tokens}" for t, n in counts if n > self.max_tokens}

    def prepare(self, arrays: list[np.ndarray], device: torch.device) -> Prepared:
        return prepare_texts(self.source.name, arrays, self._over_limit)

    def finish_inputs(self, guarded: Rows) -> dict[str, torch.Tensor]:
        """The batch's strings (originals and variants) -> ids and mask, padded to the longest row."""
        if not isinstance(guarded, TextRows):
            raise TypeError("the text preprocessor finishes rows of text")
        encodings = self._batching.encode_batch(list(guarded.texts))
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.int64)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.int64)
        feeds = {self.output: ids, self.mask_output: mask}
        if self.type_output:
            feeds[self.type_output] = torch.zeros_like(ids)
        return feeds
