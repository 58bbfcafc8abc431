"""Where the data plane hands a request to the quarantine: once its verdict is known and before
the policy answers, so requests that `enforce` blocks are kept as well as those it serves flagged."""

from __future__ import annotations

from guard.detection.detectors.base import CLASSIFICATION
from guard.protocol.types import CLEAN, InferRequest
from guard.serving.execution import RowsResult
from guard.serving.model_config import ModelConfig
from guard.serving.quarantine.writer import QuarantineWriter


def quarantine_verdict(
    writer: QuarantineWriter | None, config: ModelConfig, request: InferRequest, result: RowsResult, identity: str
) -> None:
    """Offer the request when its verdict is anything but clean (flagged, blocked, or unchecked
    under fail_open); `identity`: who sent it."""
    if writer is None or result.verdict.verdict == CLEAN:
        return
    detection = config.detection
    logits = result.outputs.get(detection.logits_output) if detection.output_kind == CLASSIFICATION else None
    writer.offer(request, result.verdict, version=config.version, identity=identity, logits=logits)
