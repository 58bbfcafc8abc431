"""The backend interface: run the protected model on one batch of named numpy inputs."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Backend(ABC):
    """A protected model. `infer` is synchronous and thread-safe; callers run it off the event loop."""

    @abstractmethod
    def infer(self, inputs: dict[str, np.ndarray], outputs: list[str],
              deadline: float | None = None) -> dict[str, np.ndarray]:
        """Run one batch; returns the requested outputs by name. `deadline` (time.monotonic) is
        when the last request of the batch stops waiting; a remote backend sends what is left of it."""

    @property
    @abstractmethod
    def description(self) -> str:
        """What runs the model (e.g. the execution providers in use), for logs and metadata."""

    @property
    def ready(self) -> bool:
        """Whether the model can run now (a remote upstream may come and go)."""
        return True

    def close(self) -> None:
        """Release resources; the default has none to release."""
