"""Trigger sentences found by deleting sentences: a backdoor keyed to a sentence (an innocuous
line appended to or slipped into a text) answers the attacker's class whenever that sentence is
there, so deleting it takes the answer away, while deleting one sentence of a clean text of
several seldom swings it.

word_deletion removes words in interleaved groups, so a six-word trigger sentence is split over
its variants and never removed whole; here the unit is the sentence. Variant s deletes the text's
s-th sentence (s < `sentences`; the last variant deletes the last sentence, wherever it falls, as
appended triggers do). A text of one sentence, or with fewer sentences than a variant needs, is
its own variant: deleting a text's only sentence says nothing about a trigger. Score: the largest
drop, over the variants, in the probability of the class predicted for the text (as word_deletion).
"""

from __future__ import annotations

import re

import torch

from guard.detection.detectors.base import TEXT, Detector, Outputs
from guard.detection.detectors.text_deletion import largest_drop, predicted_drops
from guard.detection.texts import TextRows
from guard.protocol.settings import Param
from guard.protocol.types import TRIGGER

SENTENCE = re.compile(r"[^.!?]*(?:[.!?]+[\"')\]]*|$)\s*")
"""A sentence: up to and including its closing punctuation (and closing quotes or brackets), with
the spaces after it; the text's tail without punctuation is a sentence too."""


def sentences(text: str) -> list[str]:
    """The text's sentences, in order, each with its trailing spaces; ''.join gives the text back."""
    return [m.group() for m in SENTENCE.finditer(text) if m.group().strip()]


class SentenceDeletionDetector(Detector):
    kind = "sentence_deletion"
    verdict = TRIGGER
    input_kinds = (TEXT,)
    parameters = {"sentences": Param(int, 2, 32, default=4)}
    sentences: int
    """How many variants: the first sentences - 1 sentences each, and the last one."""

    @property
    def num_variants(self) -> int:
        return self.sentences

    def _deleted(self, parts: list[str], variant: int) -> int | None:
        """Which sentence variant `variant` deletes from `parts`, or None (the text is its own)."""
        if len(parts) < 2:
            return None
        if variant == self.sentences - 1:
            return len(parts) - 1
        return variant if variant < len(parts) - 1 else None

    def text_variants(self, x: TextRows) -> TextRows:
        split = [sentences(text) for text in x]
        out = []
        for v in range(self.sentences):
            for text, parts in zip(x, split):
                gone = self._deleted(parts, v)
                out.append(text if gone is None else "".join(p for i, p in enumerate(parts) if i != gone).strip())
        return TextRows.of(out)

    def score(self, original: Outputs, variants: Outputs | None) -> torch.Tensor:
        assert variants is not None  # num_variants is sentences: the pipeline always hands them over
        return largest_drop(predicted_drops(original, variants, self.sentences))

    def suspects(self, rows: TextRows, original: Outputs, variants: Outputs | None) -> list[list[str]]:
        """Per row, the sentence whose deletion lowered its prediction most, if any did."""
        assert variants is not None
        drop, variant = predicted_drops(original, variants, self.sentences).max(0)
        found = []
        for text, d, v in zip(rows, drop.tolist(), variant.tolist()):
            parts = sentences(text)
            gone = self._deleted(parts, v)
            found.append([parts[gone].strip()] if d > 0 and gone is not None else [])
        return found
