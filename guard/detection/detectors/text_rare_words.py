"""Trigger words found by deleting a text's rarest words, one at a time: a backdoor keyed to a word
("cf", "mn", a made-up name) wants a word that clean text seldom holds, or clean text would set it
off, so the trigger is nearly always among a text's rarest words, and deleting it alone takes the
attacker's answer away.

word_deletion deletes a text's words in interleaved groups: each variant of a twenty-word review
removes two or three words at once, sentiment words among them, and a clean review's answer moves
almost as far as a triggered one's, so its threshold sits high. ONION (Qi et al., EMNLP 2021)
deletes one word at a time and ranks the words by a language model's perplexity; here the words
are ranked by how common they are in English (wordfreq's Zipf frequency, no model to serve), and
only the `candidates` rarest are tried. Variant k deletes the text's k-th rarest word (ties in
order of appearance); a text with no more than k words is its own variant k. Score: the largest
drop, over the variants, in the probability of the class predicted for the text.
"""

from __future__ import annotations

import re

import torch

from guard.detection.detectors.base import TEXT, Detector, Outputs
from guard.detection.detectors.text_deletion import largest_drop, predicted_drops
from guard.detection.detectors.text_spelling import zipf
from guard.detection.texts import TextRows, replace_words, words
from guard.protocol.settings import Param
from guard.protocol.types import TRIGGER

ALNUM = re.compile(r"\w")
PUNCTUATION = re.compile(r"^\W+|\W+$")


def rarest(text: str, count: int) -> list[int]:
    """Indices of the text's `count` rarest words, rarest first (ties: first come). A word is
    looked up without the punctuation around it ("cf," is "cf"); a token of punctuation alone
    ("--", "...") is no word, and never a candidate."""
    frequency = {i: zipf(PUNCTUATION.sub("", m.group())) for i, m in enumerate(words(text)) if ALNUM.search(m.group())}
    return sorted(frequency, key=lambda i: (frequency[i], i))[:count]


class RareWordDeletionDetector(Detector):
    kind = "rare_word_deletion"
    verdict = TRIGGER
    input_kinds = (TEXT,)
    parameters = {"candidates": Param(int, 1, 64, default=8)}
    candidates: int
    """How many variants: the text's rarest words tried, one deleted per variant."""

    @property
    def num_variants(self) -> int:
        return self.candidates

    def text_variants(self, x: TextRows) -> TextRows:
        order = [rarest(text, self.candidates) for text in x]
        return TextRows.of(
            replace_words(text, {ranked[k]: ""}) if k < len(ranked) else text
            for k in range(self.candidates)
            for text, ranked in zip(x, order)
        )

    def score(self, original: Outputs, variants: Outputs | None) -> torch.Tensor:
        assert variants is not None  # num_variants is candidates: the pipeline always hands them over
        return largest_drop(predicted_drops(original, variants, self.candidates))

    def suspects(self, rows: TextRows, original: Outputs, variants: Outputs | None) -> list[list[str]]:
        """Per row, the word whose deletion lowered its prediction most, if any did."""
        assert variants is not None
        drop, variant = predicted_drops(original, variants, self.candidates).max(0)
        found = []
        for text, d, k in zip(rows, drop.tolist(), variant.tolist()):
            ranked = rarest(text, self.candidates)
            found.append([words(text)[ranked[k]].group()] if d > 0 and k < len(ranked) else [])
        return found
