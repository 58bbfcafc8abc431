"""Spelling squeezer for text models: the model's answer on a text and on its spelling-repaired copy.

Feature squeezing (NDSS 2018) carried over to words. Character-level attacks (DeepWordBug,
TextBugger) misspell the words the model leans on ("terible", "movei", Cyrillic letters that look
Latin, a zero-width space inside a word), which moves the model while a reader still reads the
word. Repairing them is the squeeze: each word that is not a known word (wordfreq's Zipf frequency
below `min_zipf`) is replaced by the nearest of the `top_n` most frequent English words, within
`max_edits` edits. Confusable letters are first mapped back to Latin (NFKC, invisible format
characters dropped, a small table of Cyrillic and Greek look-alikes). Score: L1 distance between
the probabilities of the text and of its repair, as the paper's. Clean text mostly stays as it is:
on Rotten Tomatoes snippets 1.5% of the words are below Zipf 2.0, mostly names ("Egoyan" becomes
"Golan"), and 14% of the snippets change at all.
"""

from __future__ import annotations

import functools
import re
import unicodedata

import torch

from guard.detection.detectors.base import TEXT, Detector, Outputs
from guard.detection.texts import TextRows, replace_words, words
from guard.protocol.settings import Param

CONFUSABLES = str.maketrans(
    "аеорсухіјѕԁԛԝһӏАВЕНІЈКМОРСТХУЅԌοανικρχυΑΒΕΗΙΚΜΝΟΡΤΧΥΖ",
    "aeopcyxijsdqwhlABEHIJKMOPCTXYSGoavikpxuABEHIKMNOPTXYZ",
)
"""Cyrillic and Greek letters drawn like Latin ones (after Unicode's confusables.txt); NFKC
already folds full-width and mathematical letters and ligatures."""
PARTS = re.compile(r"(\W*)(.*?)(\W*)", re.DOTALL)
"""A word's leading punctuation, its core, and its trailing punctuation."""


def zipf(word: str) -> float:
    """wordfreq's Zipf frequency of an English word: log10 of its count per billion words, 0 when
    unknown (1.0 is about the rarest it lists, 7.7 is "the")."""
    return _zipf(word.lower())


@functools.lru_cache(maxsize=1 << 16)
def _zipf(word: str) -> float:
    # wordfreq and rapidfuzz are imported where used: they come with the `text` extra, and a guard
    # without it still imports every detector module (the registry does).
    from wordfreq import zipf_frequency

    return zipf_frequency(word, "en")


def with_case_of(original: str, replacement: str) -> str:
    """replacement cased like original: UPPER, Capitalised, or as it is."""
    if len(original) > 1 and original.isupper():
        return replacement.upper()
    if original[:1].isupper():
        return replacement[:1].upper() + replacement[1:]
    return replacement


class WordSubstitutionDetector(Detector):
    """The base of detectors whose one variant replaces some words of each text by others
    (`substitute`), keeping their punctuation and case; `suspects` names the replaced words."""

    input_kinds = (TEXT,)

    @property
    def num_variants(self) -> int:
        return 1

    def normalise(self, word: str) -> str:
        """A word as it is compared; the default keeps it."""
        return word

    def substitute(self, word: str) -> str | None:
        """The lower-case replacement of a lower-case word, or None to keep it."""
        raise NotImplementedError

    def replacements(self, text: str) -> dict[int, str]:
        """{word index: its replacement} for the words of a text this detector changes."""
        changed = {}
        for i, match in enumerate(words(text)):
            new = self.normalise(match.group())
            parts = PARTS.fullmatch(new)
            assert parts is not None  # every part may be empty
            head, core, tail = parts.groups()
            better = self.substitute(core.lower()) if core.isalpha() else None
            if better is not None:
                new = head + with_case_of(core, better) + tail
            if new != match.group():
                changed[i] = new
        return changed

    def text_variants(self, x: TextRows) -> TextRows:
        return TextRows.of(replace_words(text, self.replacements(text)) for text in x)

    def suspects(self, rows: TextRows, original: Outputs, variants: Outputs | None) -> list[list[str]]:
        """Per row, the words the variant replaced, where that moved the prediction (score > 0)."""
        scores = self.score(original, variants).tolist()
        return [
            [words(text)[i].group() for i in self.replacements(text)] if s > 0 else [] for text, s in zip(rows, scores)
        ]


class SpellingDetector(WordSubstitutionDetector):
    kind = "spelling"
    parameters = {
        "min_zipf": Param(float, 0.0, 8.0, default=2.0),
        "top_n": Param(int, 1000, 1_000_000, default=50_000),
        "max_edits": Param(int, 1, 4, default=2),
    }
    min_zipf: float
    """Words less frequent than this (wordfreq's Zipf scale) are repaired; common misspellings
    reach 3 ("teh" 3.0, "definately" 2.9), rare names 1 to 3."""
    top_n: int
    """How many of wordfreq's most frequent English words a repair may choose from (the 50,000th
    is at Zipf 2.55)."""
    max_edits: int
    """The most edits (insert, delete, substitute, swap adjacent letters) a repair may make; at most
    (letters - 1) // 2 for short words, so a 2-letter word is never repaired."""

    def normalise(self, word: str) -> str:
        folded = "".join(c for c in unicodedata.normalize("NFKC", word) if unicodedata.category(c) != "Cf")
        latin = folded.translate(CONFUSABLES)
        # Only a word whose every letter maps to Latin is a disguised Latin word: a Greek or Russian
        # word keeps its letters.
        return latin if all(c.isascii() for c in latin if c.isalpha()) else folded

    def substitute(self, word: str) -> str | None:
        if zipf(word) >= self.min_zipf:
            return None
        return nearest_word(word, self.top_n, min(self.max_edits, (len(word) - 1) // 2))

    def score(self, original: Outputs, variants: Outputs | None) -> torch.Tensor:
        assert variants is not None  # num_variants is 1: the pipeline always hands them over
        return (original.class_probabilities() - variants.class_probabilities()[0]).abs().sum(dim=-1)


@functools.lru_cache(maxsize=1 << 16)
def nearest_word(word: str, top_n: int, max_edits: int) -> str | None:
    """The nearest of the top_n most frequent English words by optimal-string-alignment distance
    (Levenshtein with adjacent swaps as one edit), within max_edits; ties go to the word of the
    same length (typo attacks mostly swap or substitute letters, so "movei" is "movie", not
    "move"), then to the more frequent. None when none is that near."""
    from rapidfuzz import process
    from rapidfuzz.distance import OSA

    if max_edits < 1:
        return None
    by_length = _frequent_words(top_n)
    found = []
    for length in range(len(word) - max_edits, len(word) + max_edits + 1):  # other lengths are further
        for candidate, distance, _ in process.extract(
            word, by_length.get(length, ()), scorer=OSA.distance, score_cutoff=max_edits, limit=None
        ):
            found.append((distance, abs(length - len(word)), -zipf(candidate), candidate))
    return min(found)[3] if found else None


@functools.lru_cache(maxsize=4)
def _frequent_words(top_n: int) -> dict[int, list[str]]:
    """wordfreq's top_n English words that are letters only, by length, most frequent first."""
    from wordfreq import top_n_list

    by_length: dict[int, list[str]] = {}
    for word in top_n_list("en", top_n):
        if word.isalpha():
            by_length.setdefault(len(word), []).append(word)
    return by_length
