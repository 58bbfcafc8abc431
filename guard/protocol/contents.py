"""Tensor contents on the KServe v2 wire: raw contents (little-endian values, or BYTES elements each
after a 4-byte length) and typed contents (contents.fp32_contents and the like), each checked
against the element count its shape gives before anything is allocated (guard.protocol.codec
reads the rest of a request)."""

from __future__ import annotations

import struct

import numpy as np

from guard.protocol.errors import InvalidInput
from guard.protocol.limits import echo
from guard.protocol.proto import inference_pb2 as pb
from guard.protocol.tensors import NUMPY_DTYPES

# Which typed-contents field carries each datatype (FP16 has none: raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
# Fixed-width typed fields: serialized (packed) they are the little-endian array itself.
_PACKED_FIXED = {"fp32_contents": 6, "fp64_contents": 7}


def decode_bytes(name: str, raw: bytes, count: int) -> np.ndarray:
    # Every element needs a 4-byte length: a count the contents cannot hold fails before the loop.
    if count * 4 > len(raw):
        raise InvalidInput(
            f"input {echo(name)}: {len(raw)} bytes of BYTES contents cannot hold {count} elements "
            "(each takes a 4-byte length)"
        )
    items: list[bytes] = []
    offset = 0
    for _ in range(count):
        if offset + 4 > len(raw):
            raise InvalidInput(f"input {echo(name)}: BYTES contents end before element {len(items)} of {count}")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidInput(
                f"input {echo(name)}: BYTES element {len(items)} claims {length} bytes, {len(raw) - offset} remain"
            )
        items.append(raw[offset : offset + length])
        offset += length
    if offset != len(raw):
        raise InvalidInput(f"input {echo(name)}: {len(raw) - offset} bytes left after {count} BYTES elements")
    array = np.empty(count, dtype=np.object_)
    array[:] = items
    return array


def _varint(data: bytes, offset: int) -> tuple[int, int]:
    value = shift = 0
    for end in range(offset, min(offset + 10, len(data))):
        value |= (data[end] & 0x7F) << shift
        shift += 7
        if data[end] < 0x80:
            return value, end + 1
    return -1, offset


def _packed(contents: pb.InferTensorContents, field: str, dtype: np.dtype, count: int) -> np.ndarray | None:
    """fp32/fp64 contents as an array at memory speed: serialized, a packed fixed-width field is
    one tag, one length and the little-endian values (converting element by element costs
    ~100 ns each). None when the bytes hold anything else (unknown fields): the slow path."""
    payload = contents.SerializeToString()
    size = count * dtype.itemsize
    length, start = _varint(payload, 1)
    if not payload or payload[0] != (_PACKED_FIXED[field] << 3 | 2) or length != size or start + size != len(payload):
        return None
    return np.frombuffer(payload, dtype=dtype.newbyteorder("<"), offset=start).astype(dtype, copy=False)


def decode_typed(
    tensor: pb.ModelInferRequest.InferInputTensor, name: str, datatype: str, shape: tuple[int, ...], count: int
) -> np.ndarray:
    """An input's typed contents (contents.<field>) as a flat array of `count` values."""
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(f"input {echo(name)}: datatype {datatype} must be sent in raw_input_contents")
    used = [f.name for f, _ in tensor.contents.ListFields()]
    if any(f != field for f in used):
        raise InvalidInput(
            f"input {echo(name)}: datatype {datatype} expects its values in contents.{field}, "
            f"got contents.{', contents.'.join(used)}"
        )
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise InvalidInput(
            f"input {echo(name)}: shape {list(shape)} needs {count} values, contents.{field} has {len(values)}"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=np.object_)
        array[:] = list(values)
        return array
    dtype = NUMPY_DTYPES[datatype]
    if field in _PACKED_FIXED and count and (packed := _packed(tensor.contents, field, dtype, count)) is not None:
        return packed
    try:
        return np.fromiter(values, dtype=dtype, count=count)
    except OverflowError:
        raise InvalidInput(f"input {echo(name)}: contents.{field} holds values outside {datatype}") from None


def raw_bytes(array: np.ndarray) -> bytes:
    """An array as raw contents: little-endian values, or BYTES elements each after its 4-byte length."""
    if array.dtype.kind in "OSU":
        parts = []
        for item in array.reshape(-1):
            data = item.encode() if isinstance(item, str) else bytes(item)
            parts.append(struct.pack("<I", len(data)) + data)
        return b"".join(parts)
    return np.ascontiguousarray(array).tobytes()
