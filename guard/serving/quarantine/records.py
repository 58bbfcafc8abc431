"""What one quarantined request is: as the data plane hands it over (`Flagged`, array references,
nothing copied on the response path), as it is written (`Entry`: the inputs as the v2 wire carries
them) and as it is read back (`Stored`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from guard.protocol.contents import decode_bytes, raw_bytes
from guard.protocol.tensors import NUMPY_DTYPES, datatype_of
from guard.protocol.types import Verdict


@dataclass(frozen=True)
class Flagged:
    """A request whose verdict is not clean, as the data plane saw it."""

    time: float
    """Wall-clock time (time.time()) when its verdict was known."""
    model: str
    version: str
    request_id: str
    identity: str
    """Who sent it (the client identity; today the gRPC peer address)."""
    verdict: Verdict
    inputs: dict[str, np.ndarray]
    """The client's decoded inputs, before any preprocessing: tensors, or BYTES rows (JPEG, UTF-8)."""
    logits: np.ndarray | None = None
    """The model's logits for these rows (classification models): the labels an export carries."""

    @property
    def input_bytes(self) -> int:
        """What its inputs hold, for the writer's buffer bound (BYTES: the rows' lengths)."""
        return sum(_nbytes(array) for array in self.inputs.values())


@dataclass(frozen=True)
class Input:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: bytes
    """Raw contents as on the KServe v2 wire: little-endian values, or each BYTES element after
    its 4-byte length (guard.protocol.contents)."""

    def array(self) -> np.ndarray:
        count = int(np.prod(self.shape)) if self.shape else 1
        if self.datatype == "BYTES":
            return decode_bytes(self.name, self.data, count).reshape(self.shape)
        return np.frombuffer(self.data, dtype=NUMPY_DTYPES[self.datatype]).reshape(self.shape)


@dataclass(frozen=True)
class Entry:
    """A record as the store writes it."""

    time: float
    model: str
    version: str
    verdict: str
    score: float
    flagged_by: str
    scores: str
    """The detectors' raw scores, a JSON object."""
    identity: str
    request_id: str
    predicted: str | None
    """The model's class per row, a JSON list; None without classification logits."""
    inputs: tuple[Input, ...]

    @property
    def size(self) -> int:
        """What the record counts against the store's cap: its inputs and its text fields."""
        text = (self.model, self.version, self.verdict, self.flagged_by, self.scores, self.identity, self.request_id)
        return sum(len(i.data) + len(i.name) for i in self.inputs) + sum(map(len, text)) + len(self.predicted or "")


def entry_of(flagged: Flagged) -> Entry:
    """Encoded on the writer thread, off the response path."""
    v = flagged.verdict
    predicted = None
    if flagged.logits is not None and flagged.logits.ndim >= 1 and len(flagged.logits):
        rows = flagged.logits.reshape(len(flagged.logits), -1)
        predicted = json.dumps(np.argmax(rows, axis=1).tolist())
    return Entry(
        time=flagged.time,
        model=flagged.model,
        version=flagged.version,
        verdict=v.verdict,
        score=float(v.score),
        flagged_by=",".join(v.flagged_by),
        scores=json.dumps(v.scores, sort_keys=True),
        identity=flagged.identity,
        request_id=flagged.request_id,
        predicted=predicted,
        inputs=tuple(
            Input(name, datatype_of(array), tuple(int(d) for d in array.shape), raw_bytes(array))
            for name, array in flagged.inputs.items()
        ),
    )


@dataclass(frozen=True)
class Stored:
    """A record read back from the store."""

    id: int
    time: float
    model: str
    version: str
    verdict: str
    score: float
    flagged_by: tuple[str, ...]
    scores: dict[str, float]
    identity: str
    request_id: str
    predicted: list[int] | None
    size: int
    inputs: tuple[Input, ...] = field(default=())

    def metadata(self) -> dict:
        """Everything but the inputs' contents (the export's JSONL sidecar)."""
        return {
            "id": self.id,
            "time": self.time,
            "model": self.model,
            "version": self.version,
            "verdict": self.verdict,
            "score": self.score,
            "flagged_by": list(self.flagged_by),
            "scores": self.scores,
            "identity": self.identity,
            "request_id": self.request_id,
            "predicted": self.predicted,
            "inputs": [{"name": i.name, "datatype": i.datatype, "shape": list(i.shape)} for i in self.inputs],
        }


def _nbytes(array: np.ndarray) -> int:
    if array.dtype.kind in "OSU":
        return sum(len(item) for item in array.reshape(-1))
    return int(array.nbytes)
