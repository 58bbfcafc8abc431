"""The backend interface: run the protected model on one batch of named numpy inputs."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Backend(ABC):
    """A protected model. `infer` is synchronous and thread-safe; callers run it off the event loop."""

    @abstractmethod
    def infer(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        """Run one batch; returns the requested outputs by name."""

    @property
    @abstractmethod
    def description(self) -> str:
        """What runs the model (e.g. the execution providers in use), for logs and metadata."""

    def close(self) -> None:
        """Release resources; the default has none to release."""
