"""Checks on a ModelInferRequest's bytes before they are parsed.

Parsing is the one step whose cost the message sets: a million request parameters (16 MB) take
protobuf a third of a second to build into a map, on the event loop, before any count could be
checked on the parsed message. So the parameters are counted and sized on the wire first, by
walking the message's top-level fields (a tag and a length each, no parameter is decoded), and the
walk stops at the first limit passed: refusing such a request costs a few hundred steps.
"""

from __future__ import annotations

from guard.protocol.errors import InvalidInput
from guard.protocol.limits import MAX_PARAMETER_BYTES, MAX_PARAMETERS
from guard.protocol.proto import inference_pb2 as pb

PARAMETERS = pb.ModelInferRequest.DESCRIPTOR.fields_by_name["parameters"].number
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


def _varint(data: bytes, at: int) -> tuple[int, int]:
    """The varint at `at` and the offset after it; raises IndexError past the end."""
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
        if shift > 63:
            raise IndexError("varint too long")


def check_parameters(data: bytes, rpc: str) -> None:
    """Refuse (InvalidInput, naming the limit) a request with more than MAX_PARAMETERS parameters,
    or more than MAX_PARAMETER_BYTES of them. Bytes that are not a well-formed message end the
    walk quietly: the parser that follows names that failure."""
    count = size = at = 0
    end = len(data)
    try:
        while at < end:
            tag, at = _varint(data, at)
            kind = tag & 7
            if kind == _VARINT:
                _, at = _varint(data, at)
            elif kind == _FIXED64:
                at += 8
            elif kind == _FIXED32:
                at += 4
            elif kind == _LENGTH:
                length, at = _varint(data, at)
                at += length
                if tag >> 3 == PARAMETERS:
                    count += 1
                    size += length
                    if count > MAX_PARAMETERS:
                        raise InvalidInput(
                            f"{rpc}: request has more than {MAX_PARAMETERS} parameters, at most "
                            f"{MAX_PARAMETERS} are accepted"
                        )
                    if size > MAX_PARAMETER_BYTES:
                        raise InvalidInput(
                            f"{rpc}: request parameters take more than {MAX_PARAMETER_BYTES} bytes, at most "
                            f"{MAX_PARAMETER_BYTES} are accepted"
                        )
            else:  # groups (never in this message) or garbage: the parser decides
                return
    except IndexError:
        return
