"""Quarantined records as the offline tools read samples: an .npz with `x` (every record's rows of
its first input, in record order) and `y` (the class the model answered for each row), the layout
`guard scan-data --data` and `guard calibrate --data` read (guard.tools.scans.inputs.load_npz,
guard.tools.clean_data.load_references), and a JSONL sidecar with one line per record: its
metadata and which rows of `x` are its own.

`x` keeps what clients sent: a tensor input as its datatype and shape; a BYTES input of UTF-8
texts as str (numpy's fixed-width unicode, which loads without pickle). Records whose BYTES rows
are not UTF-8 (encoded images) have no tensor form without the model's own decoding, so they are
refused with a message that says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from guard.serving.quarantine.records import Stored


class ExportError(Exception):
    """Records that do not make one sample array; the message names the record."""


@dataclass(frozen=True)
class Export:
    x: np.ndarray
    y: np.ndarray | None
    """The model's class per row of x; None unless every record has the model's answers."""
    sidecar: list[dict]
    """Per record: its metadata (Stored.metadata) and `rows`, [first, end) into x."""


def export_records(records: list[Stored]) -> Export:
    if not records:
        raise ExportError("no records to export")
    parts: list[np.ndarray] = []
    labels: list[list[int]] = []
    sidecar: list[dict] = []
    start = 0
    for record in records:
        x = _samples(record)
        parts.append(x)
        if record.predicted is not None and len(record.predicted) == len(x):
            labels.append(record.predicted)
        sidecar.append({**record.metadata(), "rows": [start, start + len(x)]})
        start += len(x)
    for record, part in zip(records, parts):
        if not _same_kind(part, parts[0]):
            raise ExportError(
                f"record {record.id}'s input {_describe(record)} differs from record {records[0].id}'s "
                f"{_describe(records[0])}: one .npz holds samples of one shape"
            )
    y = np.asarray([c for label in labels for c in label], np.int64) if len(labels) == len(records) else None
    return Export(np.concatenate(parts), y, sidecar)


def write_export(export: Export, out: Path) -> Path:
    """FILE.npz and FILE.jsonl; returns the sidecar's path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if export.y is None:
        np.savez(out, x=export.x)
    else:
        np.savez(out, x=export.x, y=export.y)
    sidecar = out.with_suffix(".jsonl")
    sidecar.write_text("".join(json.dumps(line, sort_keys=True) + "\n" for line in export.sidecar))
    return sidecar


def _samples(record: Stored) -> np.ndarray:
    """The record's first input as rows: the tensor itself, or one str per BYTES row."""
    if not record.inputs:
        raise ExportError(f"record {record.id} has no inputs")
    array = record.inputs[0].array()
    if array.dtype.kind != "O":
        return array
    rows = array.reshape(len(array), -1) if array.ndim else array.reshape(1, 1)
    if rows.shape[1] != 1:
        raise ExportError(f"record {record.id}'s input {_describe(record)} holds several strings per row")
    try:
        return np.array([bytes(item).decode("utf-8") for item in rows[:, 0]], dtype=str)
    except UnicodeDecodeError:
        raise ExportError(
            f"record {record.id}'s input {_describe(record)} holds encoded images, not texts: the "
            "tools read tensors or texts, so these records are not exported (list them with "
            "`guard quarantine list`)"
        ) from None


def _same_kind(a: np.ndarray, b: np.ndarray) -> bool:
    """Texts go with texts; tensors with tensors of one datatype and row shape."""
    if a.dtype.kind == "U" or b.dtype.kind == "U":
        return a.dtype.kind == b.dtype.kind
    return a.dtype == b.dtype and a.shape[1:] == b.shape[1:]


def _describe(record: Stored) -> str:
    first = record.inputs[0]
    return f"'{first.name}' ({first.datatype} {list(first.shape)})"
