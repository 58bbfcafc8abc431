"""KServe v2 datatypes and their numpy equivalents (shared by the codec, validation and backends)."""

from __future__ import annotations

import numpy as np

NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
DATATYPES = tuple(NUMPY_DTYPES)
_BY_NUMPY = {dtype: name for name, dtype in NUMPY_DTYPES.items()}


def datatype_of(array: np.ndarray) -> str:
    """The v2 datatype name of a numpy array (BYTES for object/bytes arrays)."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    try:
        return _BY_NUMPY[array.dtype]
    except KeyError:
        raise TypeError(f"no KServe v2 datatype for numpy dtype {array.dtype}") from None


def rows_of(inputs: dict[str, np.ndarray]) -> int:
    """The batch dimension of a request's (or batch's) inputs, which agree on it once validated."""
    return len(next(iter(inputs.values())))


def row_spans(sizes: list[int]) -> list[slice]:
    """Consecutive slices of a merged batch, one per request of `sizes` rows."""
    spans, start = [], 0
    for size in sizes:
        spans.append(slice(start, start + size))
        start += size
    return spans
