"""Black-box attacks on text classifiers: the attacker sees only the gateway's answers.

An Oracle answers a list of texts with [n, classes] probabilities, and every text it is asked
about is one query. Each attack spends at most `max_queries` queries on a sentence (the first
is the sentence itself) and never asks for more: a batch that would pass the budget is cut.

Both families rank the words by importance first, as DeepWordBug (Gao et al., 2018) and
TextFooler (Jin et al., AAAI 2020) do: the drop in the true class's probability when the word is
removed, one query per word. Then, most important word first:

    swap | insert | delete | homoglyph   one character edit per word (DeepWordBug's transforms,
                                         plus look-alikes from Cyrillic and Greek); every edit is
                                         kept, one query each, until the label flips or
                                         `max_edits` words are edited
    word-substitution                    the caller's `neighbours(word)` candidates, all asked at
                                         once; the one that lowers the true class's probability
                                         most is kept (PWWS, Ren et al., ACL 2019, greedy under
                                         a query budget)

The distance is the number of words edited (`edits`). Character edits touch letters only (a
word is a run of letters), so spacing and punctuation never change. Random choices (where in a
word, which letter) come from numpy's Generator seeded with (seed, row): a row's result does not
depend on the rows before it.

A sentence the model already gets wrong is not attacked: its result is a success with 0 edits
and 1 query (`already_misclassified`); rates over attacked sentences leave those out. Without
labels, the model's answer to the sentence is the label to flip.

A refused query (a NaN row: the guard blocked it under policy enforce, or the model does not take
the text) counts against the budget and reads as no answer: no drop, no flip. A sentence that is
itself refused, with no label given, has no label to flip and is not attacked.

Score-based as written. A decision-based attacker sees only labels: `label_only(oracle)` gives
it one-hot answers, on which importance is 1 for a word whose removal flips the label, else 0.

    [[attacks]]
    name = "swap"                            # REGISTRY below
    params = { max_queries = 200, max_edits = 5 }
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

WORD = re.compile(r"([^\W\d_]+)")
"""A word: a run of letters. Splitting on it (with the group) puts words at the odd indices."""
LETTERS = "abcdefghijklmnopqrstuvwxyz"
HOMOGLYPHS = {
    "a": "\u0430",  # Cyrillic а
    "c": "\u0441",  # Cyrillic с
    "e": "\u0435",  # Cyrillic е
    "i": "\u0456",  # Cyrillic і
    "j": "\u0458",  # Cyrillic ј
    "o": "\u043e\u03bf",  # Cyrillic о, Greek ο
    "p": "\u0440",  # Cyrillic р
    "s": "\u0455",  # Cyrillic ѕ
    "x": "\u0445",  # Cyrillic х
    "y": "\u0443",  # Cyrillic у
    "A": "\u0410\u0391",  # Cyrillic А, Greek Α
    "B": "\u0412\u0392",
    "C": "\u0421",
    "E": "\u0415\u0395",
    "H": "\u041d\u0397",
    "K": "\u041a\u039a",
    "M": "\u041c\u039c",
    "O": "\u041e\u039f",
    "P": "\u0420\u03a1",
    "T": "\u0422\u03a4",
    "X": "\u0425\u03a7",
}
"""Latin letters and their look-alikes in other scripts; NFKC leaves every one of them as it is."""
_STOP_WORDS = (
    "a about after all also an and any are as at be because been but by can could did do does for from "
    "had has have he her here him his how i if in into is it its just me more most my no nor not of on "
    "only or other our out over she so some such than that the their them then there these they this "
    "those through to too very was we were what when where which while who why will with would you your"
)
STOP_WORDS = frozenset(_STOP_WORDS.split())
"""Words word substitution never replaces: replacing them changes grammar, not meaning."""


class Oracle(Protocol):
    def __call__(self, texts: list[str]) -> np.ndarray:
        """[len(texts), classes] class probabilities, one query per text."""
        ...


@dataclass(frozen=True)
class TextAttackResult:
    original: str
    adversarial: str
    success: bool
    """The oracle's label for `adversarial` is not the true one."""
    queries: int
    """Texts asked about, the original included; at most the attack's max_queries."""
    edits: int
    """Words edited."""

    @property
    def already_misclassified(self) -> bool:
        """The original was wrong already: nothing was attacked (see the module docstring)."""
        return self.success and self.edits == 0


def label_only(oracle: Oracle) -> Oracle:
    """The oracle as a decision-based attacker sees it: one-hot answers (refused rows stay NaN)."""

    def answer(texts: list[str]) -> np.ndarray:
        probs = np.asarray(oracle(texts), np.float64)
        hot = np.eye(probs.shape[1])[probs.argmax(1)] if len(probs) else probs
        return np.where(np.isnan(probs).any(1, keepdims=True), np.nan, hot)

    return answer


class _Sentence:
    """One sentence under attack: its words, the queries spent on it and what they answered."""

    def __init__(self, oracle: Oracle, text: str, label: int | None, max_queries: int):
        self.oracle, self.max_queries, self.queries = oracle, max_queries, 0
        self.pieces = WORD.split(text)  # words at the odd indices
        self.label = label
        self.p_true, self.flipped = 1.0, False

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def words(self) -> range:
        return range(1, len(self.pieces), 2)

    def with_word(self, index: int, word: str) -> str:
        return "".join(self.pieces[:index] + [word] + self.pieces[index + 1 :])

    def ask(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(p_true, flipped) of as many of texts as the budget leaves. A row the gateway refused
        (NaN) reads as no drop and no flip: the attacker learnt nothing from it."""
        texts = texts[: max(0, self.max_queries - self.queries)]
        if not texts:
            return np.zeros(0), np.zeros(0, bool)
        probs = np.asarray(self.oracle(texts), np.float64)
        if probs.ndim != 2 or len(probs) != len(texts):
            raise ValueError(f"the oracle answered {len(texts)} texts with shape {probs.shape}")
        self.queries += len(texts)
        refused = np.isnan(probs).any(1)
        if self.label is None and not np.isnan(probs[0]).any():  # the first query: without a true label,
            self.label = int(probs[0].argmax())  # the model's own answer is the one to flip
        label = -1 if self.label is None else self.label  # -1: the sentence was refused, start() stops
        p_true = np.where(refused, 1.0, probs[:, label])
        return p_true, ~refused & (np.nan_to_num(probs, nan=-1.0).argmax(1) != label)

    def start(self) -> bool:
        """Asks about the sentence itself; False when it is wrong already, nothing is left, or no
        label was given and the sentence itself was refused (there is then nothing to flip)."""
        p_true, flipped = self.ask([self.text])
        if not len(p_true) or self.label is None:
            return False
        self.p_true, self.flipped = float(p_true[0]), bool(flipped[0])
        return not self.flipped

    def ranked(self, eligible: Callable[[str], bool]) -> list[int]:
        """The eligible words' indices, most important first (one query per word; none for a single
        word, which has nothing to be ranked against, and whose removal could leave no text)."""
        indices = [i for i in self.words() if eligible(self.pieces[i])]
        if len(indices) < 2:
            return indices
        p_true, _ = self.ask([self.with_word(i, "") for i in indices])
        drop = np.full(len(indices), -np.inf)  # words the budget left unscored come last
        drop[: len(p_true)] = self.p_true - p_true
        return [indices[k] for k in np.argsort(-drop, kind="stable")]


class TextAttack(ABC):
    """An attack on one sentence at a time; `parameters` are what a plan may set."""

    parameters: ClassVar[dict[str, type]] = {"max_queries": int, "max_edits": int}

    def __init__(self, max_queries: int = 200, max_edits: int = 5):
        if max_queries < 1 or max_edits < 1:
            raise ValueError(f"max_queries ({max_queries}) and max_edits ({max_edits}) must be at least 1")
        self.max_queries = max_queries
        self.max_edits = max_edits

    def run(
        self, oracle: Oracle, texts: Sequence[str], labels: Sequence[int] | None = None, seed: int = 0
    ) -> list[TextAttackResult]:
        """Each text attacked in turn. Without labels, the model's own answer is the true one."""
        return [
            self.attack(oracle, text, None if labels is None else int(labels[row]), np.random.default_rng((seed, row)))
            for row, text in enumerate(texts)
        ]

    def attack(self, oracle: Oracle, text: str, label: int | None, rng: np.random.Generator) -> TextAttackResult:
        """One sentence, with its true label (None: the model's answer to it), within max_queries."""
        sentence = _Sentence(oracle, text, label, self.max_queries)
        edits = self._edit(sentence, rng) if sentence.start() else 0
        return TextAttackResult(text, sentence.text, sentence.flipped, sentence.queries, edits)

    @abstractmethod
    def _edit(self, sentence: _Sentence, rng: np.random.Generator) -> int:
        """Edits the sentence (in place) until it flips or a budget is spent; the words edited."""


class CharAttack(TextAttack):
    """DeepWordBug: one character edit on each of the most important words, kept, until it flips."""

    @staticmethod
    @abstractmethod
    def edit(word: str, rng: np.random.Generator) -> str | None:
        """The word with one character edited; None when this edit cannot change it."""

    def _edit(self, sentence: _Sentence, rng: np.random.Generator) -> int:
        edits = 0
        for index in sentence.ranked(lambda word: True):
            new = self.edit(sentence.pieces[index], rng)
            if new is None:
                continue
            p_true, flipped = sentence.ask([sentence.with_word(index, new)])
            if not len(p_true):
                break
            sentence.pieces[index], sentence.p_true, sentence.flipped = new, float(p_true[0]), bool(flipped[0])
            edits += 1
            if sentence.flipped or edits == self.max_edits:
                break
        return edits


class Swap(CharAttack):
    """Two adjacent, different characters swapped."""

    @staticmethod
    def edit(word: str, rng: np.random.Generator) -> str | None:
        places = [i for i in range(len(word) - 1) if word[i] != word[i + 1]]
        if not places:
            return None
        i = places[rng.integers(len(places))]
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]


class Insert(CharAttack):
    """A random lowercase letter inserted anywhere."""

    @staticmethod
    def edit(word: str, rng: np.random.Generator) -> str | None:
        i = int(rng.integers(len(word) + 1))
        return word[:i] + LETTERS[rng.integers(len(LETTERS))] + word[i:]


class Delete(CharAttack):
    """One character deleted (never a word's only one: that would delete the word)."""

    @staticmethod
    def edit(word: str, rng: np.random.Generator) -> str | None:
        if len(word) < 2:
            return None
        i = int(rng.integers(len(word)))
        return word[:i] + word[i + 1 :]


class Homoglyph(CharAttack):
    """One Latin letter replaced by a look-alike from another script (HOMOGLYPHS)."""

    @staticmethod
    def edit(word: str, rng: np.random.Generator) -> str | None:
        places = [i for i, char in enumerate(word) if char in HOMOGLYPHS]
        if not places:
            return None
        i = places[rng.integers(len(places))]
        choices = HOMOGLYPHS[word[i]]
        return word[:i] + choices[rng.integers(len(choices))] + word[i + 1 :]


class WordSubstitution(TextAttack):
    """Greedy word substitution (PWWS / TextFooler without their synonym sources): for each
    important word (not a stop word, at least 3 letters), every candidate from `neighbours(word)`
    (up to max_candidates) is asked at once, and the one lowering the true class's probability
    most is kept if it lowers it at all (a candidate that flips the label comes first)."""

    parameters: ClassVar[dict[str, type]] = {**TextAttack.parameters, "max_candidates": int}

    def __init__(
        self,
        neighbours: Callable[[str], Sequence[str]],
        max_queries: int = 200,
        max_edits: int = 5,
        max_candidates: int = 10,
    ):
        super().__init__(max_queries, max_edits)
        self.neighbours = neighbours
        self.max_candidates = max_candidates

    def _edit(self, sentence: _Sentence, rng: np.random.Generator) -> int:
        edits = 0
        for index in sentence.ranked(lambda word: len(word) >= 3 and word.lower() not in STOP_WORDS):
            word = sentence.pieces[index]
            candidates = [c for c in self.neighbours(word) if c.lower() != word.lower()][: self.max_candidates]
            if not candidates:
                continue
            p_true, flipped = sentence.ask([sentence.with_word(index, c) for c in candidates])
            if not len(p_true):
                break
            best = int(np.argmin(np.where(flipped, p_true - 2.0, p_true)))
            if flipped[best] or p_true[best] < sentence.p_true:
                sentence.pieces[index] = candidates[best]
                sentence.p_true, sentence.flipped = float(p_true[best]), bool(flipped[best])
                edits += 1
            if sentence.flipped or edits == self.max_edits:
                break
        return edits


REGISTRY: dict[str, type[TextAttack]] = {
    "swap": Swap,
    "insert": Insert,
    "delete": Delete,
    "homoglyph": Homoglyph,
    "word-substitution": WordSubstitution,
}
"""The attacks a text plan's [[attacks]] may name; each class's `parameters` are its plan keys."""


def build_attack(
    name: str, params: dict[str, Any], neighbours: Callable[[str], Sequence[str]] | None = None
) -> TextAttack:
    """The named attack with a plan's params, checked against what it declares; word substitution
    also takes the caller's `neighbours` (a plan cannot name a function)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown text attack {name!r}: one of {', '.join(REGISTRY)}")
    cls = REGISTRY[name]
    for key, value in params.items():
        expected = cls.parameters.get(key)
        if expected is None or type(value) is not expected:
            declared = ", ".join(f"{k} ({t.__name__})" for k, t in cls.parameters.items())
            raise ValueError(f"text attack {name}: {key} = {value!r}; its parameters are {declared}")
    if cls is WordSubstitution:
        if neighbours is None:
            raise ValueError("text attack word-substitution needs a neighbours function")
        return WordSubstitution(neighbours, **params)
    return cls(**params)
