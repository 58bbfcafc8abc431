"""Fail closed, or open: when a detector raises, the batch fails (INTERNAL) unless the model sets
`fail_open = true`; then its original rows alone run, and the verdicts say `unchecked`."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from guard.detection.pipeline import BatchResult, GuardPipeline
from guard.protocol.errors import DetectorError
from guard.serving.logs import FailureLog
from guard.serving.model_config import ModelConfig

log = logging.getLogger("guard.serving")


class FailOpen:
    def __init__(self, config: ModelConfig, pipeline: GuardPipeline, passthrough: GuardPipeline):
        """passthrough: the model's pipeline without detectors (no variants)."""
        self.config = config
        self.pipeline = pipeline
        self.passthrough = passthrough
        # Broken detectors fail every batch: one traceback, then a count (guard.serving.logs).
        self._log = FailureLog(
            log, f"{config.name}: detectors failed; serving unchecked (fail_open)", level=logging.WARNING
        )

    def flush_log(self) -> None:
        """Write the failures counted since the last log line (the model is closing)."""
        self._log.flush()

    def run(self, inputs: dict[str, Any], requests: list[dict[str, np.ndarray]], deadline: float | None) -> BatchResult:
        """The pipeline's result for `inputs` (prepared from `requests`); with fail_open and failing
        detectors, the passthrough's, without scores."""
        try:
            return self.pipeline.run(inputs, deadline)
        except DetectorError as exc:
            if not self.config.fail_open:
                raise
            self._log(exc)
            result = self.passthrough.run(self.passthrough.prepare(requests).inputs, deadline)
            result.scores = {}
            return result
