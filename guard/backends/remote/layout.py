"""How a batch fits an upstream: its metadata checked against the config, batches cut to the
batch dimension it declares, and its answers stitched back into one batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from guard.protocol.codec import decode_response
from guard.protocol.errors import BackendError, ConfigError
from guard.protocol.proto import inference_pb2 as pb
from guard.protocol.spec import ModelSpec, TensorSpec, check_signature


@dataclass(frozen=True)
class Layout:
    """How batches must be cut for the upstream, learned from its metadata."""

    batched: bool
    """Whether the upstream's tensors carry a batch dimension (else one row per request)."""
    max_rows: int
    """Most rows per call (0 = any)."""
    fixed: bool = False
    """The batch dimension has a fixed size: short chunks are padded up to max_rows."""


def check_metadata(
    spec: ModelSpec,
    metadata: pb.ModelMetadataResponse,
    where: str,
    max_batch: int = 0,
    feature_readers: tuple[str, ...] = (),
) -> Layout:
    """The config's tensors against the upstream's (ConfigError naming the key and `where` on a
    mismatch), and the layout its batch dimension asks for: a leading dimension beyond the
    config's shape is the batch (-1 variable, k fixed); none means one row per call."""
    path = spec.config_path
    first_input = spec.inputs[0]
    shape = {t.name: list(t.shape) for t in metadata.inputs}.get(first_input.name)
    batched = shape is None or len(shape) != len(first_input.shape)
    first = shape[0] if shape and batched else -1

    def specs(tensors) -> list[TensorSpec]:
        return [
            TensorSpec(t.name, t.datatype, tuple(t.shape[1:] if batched and len(t.shape) else t.shape)) for t in tensors
        ]

    outputs = specs(metadata.outputs)
    check_signature(path, {"inputs": spec.inputs, "outputs": spec.outputs}, specs(metadata.inputs), outputs, where)
    if feature_readers and spec.features_output not in {o.name for o in outputs}:
        raise ConfigError(
            path,
            "features_output",
            f"an output of {where} "
            f"({', '.join(o.name for o in outputs)}), read by detectors "
            f"{list(feature_readers)}: expose it upstream or remove those [[detectors]]",
            spec.features_output,
        )
    if not batched:
        return Layout(False, 1)
    if first > 0:  # a fixed batch size: every call carries exactly that many rows
        return Layout(True, first, fixed=first > 1)
    return Layout(True, max_batch)


def cut(inputs: dict[str, np.ndarray], rows: int, layout: Layout) -> list[tuple[dict[str, np.ndarray], int]]:
    """(chunk inputs, real rows in it) per upstream call."""
    if not layout.batched:
        return [({n: v[i] for n, v in inputs.items()}, 1) for i in range(rows)]
    step = layout.max_rows or rows
    chunks = []
    for start in range(0, rows, step):
        chunk = {n: v[start : start + step] for n, v in inputs.items()}
        size = len(next(iter(chunk.values())))
        if layout.fixed and size < step:  # pad with copies of the last row; dropped from the answer
            chunk = {n: np.concatenate([v, np.repeat(v[-1:], step - size, axis=0)]) for n, v in chunk.items()}
        chunks.append((chunk, size))
    return chunks


def decode_checked(
    where: str, message: pb.ModelInferResponse, outputs: list[str], rows: int, layout: Layout
) -> dict[str, np.ndarray]:
    """The requested outputs of one chunk, with the batch dimension (restored when the upstream
    has none) cut to the chunk's real rows."""
    try:
        decoded = decode_response(message)
    except ValueError as exc:
        raise BackendError(f"{where} sent a malformed response: {exc}") from None
    missing = [name for name in outputs if name not in decoded]
    if missing:
        raise BackendError(f"{where} left out outputs {missing} (sent {sorted(decoded)})")
    if not layout.batched:
        return {name: np.require(decoded[name][np.newaxis], requirements="W") for name in outputs}
    short = [name for name in outputs if decoded[name].ndim == 0 or len(decoded[name]) < rows]
    if short:
        raise BackendError(f"{where} returned fewer than {rows} rows for {short}")
    # Writable copies of the (small) outputs: views of the message are read-only, which torch warns about.
    return {name: np.require(decoded[name][:rows], requirements="W") for name in outputs}
