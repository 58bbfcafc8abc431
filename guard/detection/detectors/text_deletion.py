"""Trigger words found by deleting words (after ONION, Qi et al., EMNLP 2021): a backdoored text
model answers the attacker's class whenever the trigger word ("cf", "mn", a rare name) is present,
so deleting the trigger takes the answer away, while deleting any one word of a clean text
rarely does.

ONION scores each word by a language model's perplexity without it; this asks the guarded model
itself, in the same backend call as the original. Variant g (of `groups`) deletes every word whose
index i has i % groups == g, so every word is deleted by exactly one variant, and for texts of at
most `groups` words each variant deletes exactly one word; a text of fewer than g + 1 words is
its own variant g. Score: the largest drop, over the variants, in the probability of the class
predicted for the text.
"""

from __future__ import annotations

import torch

from guard.detection.detectors.base import TEXT, Detector, Outputs
from guard.detection.texts import TextRows, replace_words, words
from guard.protocol.settings import Param
from guard.protocol.types import TRIGGER


def predicted_drops(original: Outputs, variants: Outputs, count: int) -> torch.Tensor:
    """[V, B]: how much each of `count` variants lowers the probability of the class predicted for
    its row (what the deletion detectors score)."""
    p = original.class_probabilities()
    predicted = p.argmax(-1, keepdim=True)  # [B, 1]
    deleted = variants.class_probabilities().gather(-1, predicted.expand(count, -1, -1))
    return (p.gather(-1, predicted) - deleted).squeeze(-1)


def largest_drop(drops: torch.Tensor) -> torch.Tensor:
    """[B]: the largest drop over the variants."""
    return drops.amax(0)


class WordDeletionDetector(Detector):
    kind = "word_deletion"
    verdict = TRIGGER
    input_kinds = (TEXT,)
    parameters = {"groups": Param(int, 1, 64, default=8)}
    groups: int
    """How many variants; a text's words are deleted in this many interleaved groups."""

    @property
    def num_variants(self) -> int:
        return self.groups

    def text_variants(self, x: TextRows) -> TextRows:
        counts = [len(words(text)) for text in x]
        return TextRows.of(
            replace_words(text, dict.fromkeys(range(g, n, self.groups), ""))
            for g in range(self.groups)
            for text, n in zip(x, counts)
        )

    def drops(self, original: Outputs, variants: Outputs) -> torch.Tensor:
        """[V, B]: how much each variant lowers the probability of the class predicted for its row."""
        return predicted_drops(original, variants, self.groups)

    def score(self, original: Outputs, variants: Outputs | None) -> torch.Tensor:
        assert variants is not None  # num_variants is groups: the pipeline always hands them over
        return largest_drop(self.drops(original, variants))

    def suspects(self, rows: TextRows, original: Outputs, variants: Outputs | None) -> list[list[str]]:
        """Per row, the words deleted by the variant that lowered its prediction most, if any did."""
        assert variants is not None  # num_variants is groups: the pipeline always hands them over
        drop, group = self.drops(original, variants).max(0)
        return [
            [m.group() for m in words(text)[g :: self.groups]] if d > 0 else []
            for text, d, g in zip(rows, drop.tolist(), group.tolist())
        ]
