"""The preprocessor interface.

`prepare` turns each request's client tensor into rows of the guarded tensor (the space the
detectors examine: for images, float [C, H, W] in [0, 1]) and stacks the batch, on the guard's
device. `finish` maps the guarded rows, originals and variants alike, to what the model takes
(e.g. mean/std normalisation): squeezers and blends must work on [0, 1] pixels, not on
normalised values. Calibration and evaluation call the same two steps as the server.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from guard.detection.texts import Rows
from guard.protocol.settings import Param
from guard.protocol.spec import TensorSpec

Feed = torch.Tensor | np.ndarray
"""A model input a preprocessor produces: a tensor, or a numpy object array of str for a model that
takes strings itself."""


@dataclass
class Prepared:
    """A batch's guarded rows, and the requests that could not be prepared (by their index in the
    batch, with what was wrong): those fail alone with INVALID_ARGUMENT, the rest are served."""

    rows: Rows | None
    """The good requests' rows, in order (a tensor, or TextRows for text); None when every request
    failed."""
    failed: dict[int, str] = field(default_factory=dict)


class Preprocessor(ABC):
    kind: ClassVar[str] = ""
    parameters: ClassVar[dict[str, Param]] = {}
    datatypes: ClassVar[tuple[str, ...]] = ()
    """Client datatypes it reads."""
    ranks: ClassVar[tuple[int, ...]] = ()
    """Dimensions of one client row it accepts."""
    layout: ClassVar[str] = ""
    symbols: ClassVar[bool] = False
    """Whether query_rows gives integer symbols (a text's characters), which have no distance: a
    model of this kind cannot match queries by distance ([clients] match = "distance")."""

    def __init__(self, source: TensorSpec, output: str, directory: Path | None = None, **params: Any):
        """directory: the model's directory, where files a parameter names live (a tokenizer); None
        when the preprocessor is built only to read its specs."""
        self.source = source
        self.output = output
        self.directory = directory
        for key, spec in self.parameters.items():  # built directly (not from a config): defaults apply
            if key not in params and spec.default is not ...:
                params[key] = spec.default
        for key, value in params.items():
            setattr(self, key, value)

    def query_rows(self, guarded: Any) -> np.ndarray | None:
        """What a query-attack fingerprint reads of each guarded row (guard.serving.query_watch):
        numbers in [0, 1] (quantized), or integer symbols (hashed as they are, 0 for padding);
        None: inputs of this kind are not fingerprinted."""
        return None

    @abstractmethod
    def guarded_spec(self) -> TensorSpec:
        """The guarded tensor's spec (named `output`): what detectors examine, per row."""

    def model_spec(self) -> TensorSpec:
        """What the model takes, per row (default: the guarded tensor as it is)."""
        return self.guarded_spec()

    def model_specs(self) -> tuple[TensorSpec, ...]:
        """Every model input it produces (a tokenizer: ids and attention mask), `output` first."""
        return (self.model_spec(),)

    def bucket(self, array: np.ndarray) -> int | None:
        """Which requests may share a batch beyond their shapes (text: a length bucket); None: any."""
        return None

    @abstractmethod
    def prepare(self, arrays: list[np.ndarray], device: torch.device) -> Prepared:
        """The guarded rows of a batch from each request's client array ([n_i, ...]), in order."""

    def finish(self, guarded: torch.Tensor) -> torch.Tensor:
        """Guarded rows -> model input rows (default: unchanged)."""
        return guarded

    def finish_inputs(self, guarded: Rows) -> Mapping[str, Feed]:
        """Guarded rows (originals and variants) -> every model input it produces, by name."""
        if not isinstance(guarded, torch.Tensor):
            raise TypeError(f"the {self.kind} preprocessor finishes tensor rows")
        return {self.output: self.finish(guarded)}
