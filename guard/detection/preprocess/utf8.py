"""UTF-8 text as clients send it (BYTES, one string per row), decoded once and checked: what the
text preprocessors share. `text` tokenizes the rows; `strings` hands them to a model that takes
strings itself.

A request is refused, alone, with INVALID_ARGUMENT naming the input and row, for its first row that
is not a BYTES element, not UTF-8, empty or only whitespace, or over the model's length limit (each
preprocessor counts in its own unit: tokens, characters); the rest of the batch is served.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from guard.detection.preprocess.base import Prepared
from guard.detection.texts import TextRows

OverLimit = Callable[[list[str]], dict[str, str]]
"""A batch's decoded texts (each once) -> those over the model's limit, with what is wrong."""


def decode(data: Any) -> tuple[str, str]:
    """(text, "") for a BYTES element holding a UTF-8 text that is not blank, else ("", what is wrong)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        return "", "not a BYTES element"
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        return "", f"not UTF-8 (byte {exc.start}: {exc.reason})"
    if not text.strip():
        return "", "an empty text"
    return text, ""


def prepare_texts(source: str, arrays: list[np.ndarray], over_limit: OverLimit) -> Prepared:
    """The rows of every request that passes as TextRows, in order; the others refused, each with
    the first thing wrong with it. `source` is the client input's name."""
    decoded = [[decode(v) for v in np.asarray(a, dtype=object).reshape(len(a), -1)[:, 0]] for a in arrays]
    candidates = list(dict.fromkeys(text for rows in decoded for text, problem in rows if not problem))
    over = over_limit(candidates) if candidates else {}
    failed: dict[int, str] = {}
    texts: list[str] = []
    for request, rows in enumerate(decoded):
        problems = ((row, problem or over.get(text)) for row, (text, problem) in enumerate(rows))
        refused = next(((row, why) for row, why in problems if why), None)
        if refused is not None:
            failed[request] = f"input '{source}' row {refused[0]}: {refused[1]}"
        else:
            texts.extend(text for text, _ in rows)
    return Prepared(TextRows(tuple(texts)) if texts else None, failed)
