"""The backend interface: what runs the protected model, behind one small class per kind.

A backend owns its `[backend]` settings table (`read_settings`), is built without doing heavy work,
then `load()`s (sessions, channels, compiled graphs). It reports the tensors the model really
declares (`signature`), which the repository checks the config against, and runs one batch per
`infer` call. Backends whose `io` is "torch" take and return torch tensors on their device, so a
batch stays there from the detectors' variants through the model to the detector scores.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from guard.protocol.settings import TableReader
from guard.protocol.spec import ModelSpec, TensorSpec

Arrays = dict[str, Any]
"""Tensors by name: numpy arrays, or torch tensors on the backend's device when io == "torch"."""


class Backend(ABC):
    """A protected model. `infer` is synchronous and thread-safe; callers run it off the event loop."""

    kind: ClassVar[str] = ""
    """The [backend] `kind` that selects this class in a model config."""
    keys: ClassVar[tuple[str, ...]] = ()
    """The keys of its [backend] table besides `kind`."""
    io: ClassVar[str] = "numpy"
    """"numpy" or "torch": what `infer` takes and returns."""
    waits_on_network: ClassVar[bool] = False
    """Its calls wait on another server: batches never run inline on the event loop thread."""

    def __init__(self, spec: ModelSpec, settings: Any, feature_readers: tuple[str, ...] = ()):
        self.spec = spec
        self.settings = settings
        self.feature_readers = feature_readers
        """The detectors that read spec.features_output from this backend (for error messages)."""
        self.forward_to: Backend | None = None
        """Where requests that pass the check are sent for their answer (None: this backend's own
        outputs are the answer). Set by backends that check locally and serve remotely."""

    @classmethod
    @abstractmethod
    def read_settings(cls, reader: TableReader, model_name: str) -> Any:
        """This kind's settings from the model's [backend] table (ConfigError naming the key)."""

    @classmethod
    def create(cls, spec: ModelSpec, settings: Any, feature_readers: tuple[str, ...] = ()) -> Backend:
        """The backend the pipeline calls for these settings (not loaded yet); a kind may return
        another kind's backend that forwards to it (see forward_to)."""
        return cls(spec, settings, feature_readers)

    @staticmethod
    def model_files(settings: Any) -> tuple[Path, ...]:
        """Files in the model directory this backend loads (copied and fingerprinted with it)."""
        return ()

    def load(self) -> None:
        """Heavy work: open sessions, channels, compile graphs. Raises ConfigError on a mismatch."""

    @abstractmethod
    def signature(self) -> tuple[list[TensorSpec], list[TensorSpec]] | None:
        """(inputs, outputs) the model declares, batch dimension excluded; None when not known yet
        (a remote upstream that is down checks itself once it is back)."""

    @abstractmethod
    def infer(self, inputs: Arrays, outputs: list[str], deadline: float | None = None) -> Arrays:
        """Run one batch; returns the requested outputs by name. `deadline` (time.monotonic) is
        when the last request of the batch stops waiting; a remote backend sends what is left of it."""

    @property
    @abstractmethod
    def description(self) -> str:
        """What runs the model (e.g. the execution providers in use), for logs and metadata."""

    @property
    def device(self):
        """The torch device its tensors live on (io == "torch"); None for numpy backends."""
        return None

    @property
    def ready(self) -> bool:
        """Whether the model can run now (a remote upstream may come and go)."""
        return True

    def close(self) -> None:
        """Release resources; the default has none to release."""
