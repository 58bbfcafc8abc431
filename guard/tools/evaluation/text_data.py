"""A text plan's data: labelled texts in .npz files (x: an array of str, numpy's fixed-width unicode
that loads without pickle; y: integer labels), for the fit, calibration and test splits and for any
number of out-of-domain clean sets, which are only measured (their flag rate), never fitted on.

    [data]
    fit = "text/train.npz"
    calibration = "text/calibration.npz"
    test = "text/test.npz"
    out_of_domain = { tweets = "text/tweets.npz", nyt = "text/nyt.npz" }
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from guard.protocol.settings import TableReader

SPLITS = ("fit", "calibration", "test")


@dataclass(frozen=True)
class TextSplit:
    path: Path
    texts: tuple[str, ...]
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.texts)

    def encoded(self, rows: np.ndarray | None = None) -> list[bytes]:
        """The texts (all, or those at `rows`) as UTF-8, as clients send them."""
        chosen = self.texts if rows is None else [self.texts[i] for i in rows]
        return [t.encode("utf-8") for t in chosen]


def names_texts(path: Path) -> bool:
    """Whether an .npz holds texts (x of str) rather than tensors; False for anything unreadable
    (the tensor reader then names the problem)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return "x" in data.files and data["x"].dtype.kind == "U"
    except (OSError, ValueError, zipfile.BadZipFile):
        return False


def read_texts(reader: TableReader, key: str, value: str) -> TextSplit:
    """The .npz `value` names: non-empty texts x and one integer label each in y."""
    path = reader.directory / value
    if not path.is_file():
        raise reader.fail(key, f"an .npz of texts (x) and labels (y) in {reader.directory}", value)
    try:
        with np.load(path, allow_pickle=False) as data:
            x = np.asarray(data["x"]) if "x" in data.files else None
            y = np.asarray(data["y"]) if "y" in data.files else None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise reader.fail(key, f"an .npz of texts (x) and labels (y) ({exc})", value) from None
    if x is None or x.dtype.kind != "U" or x.ndim != 1 or not len(x) or not all(t.strip() for t in x.tolist()):
        raise reader.fail(key, "an .npz whose x is a non-empty 1-D array of non-empty str", value)
    if y is None or y.ndim != 1 or len(y) != len(x) or y.dtype.kind not in "iu":
        raise reader.fail(key, f"an .npz whose y holds {len(x)} integer labels", value)
    return TextSplit(path, tuple(x.tolist()), y.astype(np.int64))


def read_text_splits(data: TableReader) -> dict[str, TextSplit]:
    """[data] of a text plan: the three splits (out_of_domain is read by read_out_of_domain)."""
    data.unknown((*SPLITS, "out_of_domain"))
    return {key: read_texts(data, key, data.get(key, str, expected="an .npz of texts")) for key in SPLITS}


def read_out_of_domain(data: TableReader) -> dict[str, TextSplit]:
    """[data] out_of_domain of a text plan: the clean sets from elsewhere, by name."""
    extra = data.sub("out_of_domain")
    sets = {}
    for name, value in extra.table.items():
        if not isinstance(value, str):
            raise extra.fail(name, "an .npz of texts", value)
        sets[name] = read_texts(extra, name, value)
    return sets
