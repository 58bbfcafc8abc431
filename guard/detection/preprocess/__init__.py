"""Preprocessors: what clients send (the [[inputs]] contract) turned into what the model takes,
inside the batch and before the detectors' variants are made. Registry: [preprocess] kind ->
class; a new input kind is one file plus one line in REGISTRY, or, from an installed package, an
entry point in the group `guard.preprocessors` (guard.protocol.plugins)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guard.detection.preprocess.base import Preprocessor
from guard.detection.preprocess.frames import FramesPreprocessor
from guard.detection.preprocess.images import ImagesPreprocessor
from guard.detection.preprocess.strings import StringsPreprocessor
from guard.detection.preprocess.text import TextPreprocessor
from guard.protocol.errors import ConfigError
from guard.protocol.plugins import PluginRegistry, subclass_of
from guard.protocol.settings import TableReader, read_params
from guard.protocol.spec import TensorSpec

REGISTRY: dict[str, type[Preprocessor]] = {
    cls.kind: cls for cls in (FramesPreprocessor, ImagesPreprocessor, StringsPreprocessor, TextPreprocessor)
}
"""The built-in kinds."""
AVAILABLE = PluginRegistry("guard.preprocessors", REGISTRY, subclass_of(Preprocessor), "preprocessor kind")
"""The built-ins plus the installed plugins: what `[preprocess] kind` may name."""

__all__ = [
    "AVAILABLE",
    "REGISTRY",
    "Preprocessor",
    "PreprocessSettings",
    "TextPreprocessor",
    "read_preprocess_settings",
]


@dataclass(frozen=True)
class PreprocessSettings:
    kind: str
    input: str
    """The client input it reads."""
    output: str
    """The model input it produces."""
    params: dict[str, Any]
    directory: Path | None = None
    """The model's directory, where the files its parameters name live."""

    @property
    def fingerprinted(self) -> bool:
        """Whether its kind offers query-attack fingerprints something to read (query_rows)."""
        return AVAILABLE.get(self.kind).query_rows is not Preprocessor.query_rows

    @property
    def symbols(self) -> bool:
        """Whether its kind's query rows are symbols, without a distance (Preprocessor.symbols)."""
        return AVAILABLE.get(self.kind).symbols

    def build(self, source: TensorSpec, load: bool = False) -> Preprocessor:
        """load: read the files its parameters name (a tokenizer) to run it; without, it only
        answers for its specs."""
        return AVAILABLE.get(self.kind)(source, self.output, directory=self.directory if load else None, **self.params)


def read_preprocess_settings(r: TableReader, inputs: tuple[TensorSpec, ...]) -> PreprocessSettings | None:
    """The [preprocess] table, checked against the client's [[inputs]]; None when absent."""
    if not r.table:
        return None
    kind = r.get("kind", str)
    cls = AVAILABLE.resolve(r, "kind", kind)
    r.unknown({"kind", "input", "output", *cls.parameters})
    source = r.get("input", str, inputs[0].name)
    spec = next((s for s in inputs if s.name == source), None)
    if spec is None:
        raise r.fail("input", "the name of one of [[inputs]]", source)
    if spec.datatype not in cls.datatypes:
        raise r.fail(
            "input",
            f"an input of datatype {' or '.join(cls.datatypes)} ({kind} reads those; '{source}' is {spec.datatype})",
            source,
        )
    if len(spec.shape) not in cls.ranks:
        raise r.fail(
            "input", f"an input of rank {' or '.join(map(str, cls.ranks))} per row ({cls.layout})", list(spec.shape)
        )
    output = r.get("output", str, "input")
    if output in {s.name for s in inputs if s.name != source}:
        raise r.fail("output", "a model input name no client input uses", output)
    settings = PreprocessSettings(kind, source, output, read_params(r, cls.parameters), r.path.parent)
    try:
        settings.build(spec, load=True)
    except ValueError as exc:  # a combination of keys the preprocessor cannot use
        raise ConfigError(r.path, "preprocess", "settings the preprocessor accepts", str(exc)) from None
    return settings
