"""Frequency-guided word substitutions (FGWS, Mozes et al., EACL 2021): the model's confidence in
its answer on a text and on a copy with its rare words made frequent.

Word-substitution attacks (PWWS, TextFooler, genetic attacks) swap the words the model leans on
for synonyms the model saw less often in training, and those are mostly rarer words. FGWS
replaces every word rarer than `min_zipf` (wordfreq's Zipf scale) by its most frequent neighbour
in an embedding space when that neighbour is more frequent, which undoes much of such an attack
and little of a clean text. Score: how much the probability of the class predicted for the text
drops on the copy (the paper's), negative when the copy is more confident.

The neighbours are an artifact (guard.detection.neighbours: build_neighbours on an encoder's input
embeddings, then save_neighbours), looked up in lower case.
"""

from __future__ import annotations

from typing import Any

import torch

from guard.detection.detectors.base import Outputs
from guard.detection.detectors.text_spelling import WordSubstitutionDetector, zipf
from guard.detection.neighbours import load_neighbours
from guard.protocol.settings import Param


class FrequencySubstitutionDetector(WordSubstitutionDetector):
    kind = "frequency_substitution"
    parameters = {
        "neighbours": Param(
            str,
            default="neighbours.npz",
            artifact=True,
            hint="build it with guard.detection.neighbours.build_neighbours and save_neighbours",
        ),
        "min_zipf": Param(float, 0.0, 8.0, default=4.0),
    }
    neighbours: str
    """The neighbours artifact in the model's directory."""
    min_zipf: float
    """Words less frequent than this are replaced (the paper sets it at a percentile of the
    training words' frequencies): 17% of the words of Rotten Tomatoes snippets are below 4.0, and
    with MiniLM neighbours of the whole vocabulary 73% of the snippets change somewhere."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.table: dict[str, list[str]] | None = None
        if self.directory is not None and (self.directory / self.neighbours).is_file():
            self.table = load_neighbours(self.directory / self.neighbours)

    def _loaded(self) -> dict[str, list[str]]:
        if self.table is None:
            raise RuntimeError(
                f"{self.kind} {self.name}: no neighbours ({self.neighbours} not found in {self.directory}; "
                f"{self.parameters['neighbours'].hint})"
            )
        return self.table

    def substitute(self, word: str) -> str | None:
        frequency = zipf(word)
        if frequency >= self.min_zipf:
            return None
        best = max(self._loaded().get(word, ()), key=zipf, default=None)
        return best if best is not None and zipf(best) > frequency else None

    def score(self, original: Outputs, variants: Outputs | None) -> torch.Tensor:
        assert variants is not None  # num_variants is 1: the pipeline always hands them over
        p = original.class_probabilities()
        predicted = p.argmax(-1, keepdim=True)
        return (p.gather(-1, predicted) - variants.class_probabilities()[0].gather(-1, predicted)).squeeze(-1)
