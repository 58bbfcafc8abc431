"""Transport-free request, response and verdict types that the data plane works on."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Parameter = bool | int | float | str

CLEAN, ADVERSARIAL, TRIGGER, UNCHECKED = "clean", "adversarial", "trigger", "unchecked"


@dataclass
class InferRequest:
    model_name: str
    inputs: dict[str, np.ndarray]
    model_version: str = ""
    id: str = ""
    outputs: tuple[str, ...] = ()
    """Requested output names; empty means all of the model's outputs."""
    parameters: dict[str, Parameter] = field(default_factory=dict)
    deadline: float | None = None
    """Monotonic time (time.monotonic) after which the request is no longer wanted."""
    identity: str = ""
    """Who sent it, as the transport authenticated it: the bearer token's name, else the mTLS client
    certificate's subject, else the peer's address (guard.serving.auth). Never read from the request
    itself (a parameter or its id): per-client decisions rest on it."""


@dataclass(frozen=True)
class Verdict:
    verdict: str
    """CLEAN, ADVERSARIAL, TRIGGER, or UNCHECKED when a failed check was served (fail open)."""
    score: float
    """Largest detector score over its threshold; >= 1.0 means flagged."""
    flagged_by: tuple[str, ...] = ()
    scores: dict[str, float] = field(default_factory=dict)
    """Each detector's raw score (for metrics and logs)."""

    @property
    def flagged(self) -> bool:
        return bool(self.flagged_by)

    def parameters(self) -> dict[str, Parameter]:
        return {
            "guard_verdict": self.verdict,
            "guard_score": float(self.score),
            "guard_flagged_by": ",".join(self.flagged_by),
        }


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[tuple[str, np.ndarray]]
    parameters: dict[str, Parameter] = field(default_factory=dict)
