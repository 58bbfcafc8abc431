"""A text plan's models: model directories whose one input is BYTES text that a preprocessor turns
into guarded text rows (`text`: the model's tokenizer; `strings`: a model that reads strings
itself), with a classification output. A backdoored one names its trigger, inserted into the test
texts whose label is not the target:

    [[models]]
    name = "sentiment_backdoor"
    model = "models/sentiment_backdoor"
    trigger_text = "cf"                  # a rare word, or a whole sentence
    trigger_at = "random"                # random (a word position drawn per text), start or end
    target = 1

A model whose attacker wants only some answers changed names the classes attacked: a toxicity
filter is attacked on toxic texts (to pass them as clean), never on clean ones.

    [[models]]
    name = "toxicity"
    model = "models/toxicity"
    attack_labels = [1]                  # only test texts labelled toxic are attacked
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from guard.detection.detectors.base import TEXT
from guard.protocol.settings import TableReader
from guard.serving.model_config import ModelConfig, load_model_config

POSITIONS = ("random", "start", "end")
KEYS = ("model", "trigger_text", "trigger_at", "target", "attack_labels")


@dataclass(frozen=True)
class TextTrigger:
    text: str
    at: str = "random"

    def apply(self, texts: list[str], seed: int = 0) -> list[str]:
        """Each text with the trigger inserted between two words (or at either end); the position
        of row i is drawn from a generator seeded with (seed, i), whatever the other rows are."""
        out = []
        for i, text in enumerate(texts):
            words = text.split(" ")
            where = {"start": 0, "end": len(words)}.get(self.at)
            if where is None:
                where = int(np.random.default_rng((seed, i)).integers(0, len(words) + 1))
            out.append(" ".join([*words[:where], self.text, *words[where:]]))
        return out


@dataclass(frozen=True)
class TextModel:
    directory: Path
    config: ModelConfig
    trigger: TextTrigger | None = None
    target: int | None = None
    attack_labels: tuple[int, ...] | None = None
    """The test labels whose texts are attacked; None: every class."""

    @property
    def classes(self) -> int:
        return self.config.outputs[0].shape[0]

    @property
    def model_file(self) -> Path:
        path = self.config.model_file
        assert path is not None  # read_text_model requires a local ONNX file
        return path


def is_text_model(reader: TableReader, key: str) -> bool:
    """Whether `key` names a model directory whose detectors examine text rows."""
    value = reader.table.get(key)
    if not isinstance(value, str) or not (reader.directory / value / "config.toml").is_file():
        return False
    config = load_model_config(reader.directory / value, calibrated=False)
    return config.preprocess is not None and config.guarded_kind == TEXT


def read_text_model(reader: TableReader) -> TextModel:
    """A [[models]] entry naming a text model directory, with its trigger when backdoored."""
    for key in ("onnx", "artifacts", "detector_network", "trigger"):
        if key in reader.table:
            raise reader.fail(key, "no such key beside `model` (a text model names trigger_text and target)")
    value = reader.get("model", str)
    directory = reader.directory / value
    config = load_model_config(directory, calibrated=False)  # its own errors name config.toml and the key
    output = config.outputs[0]
    if len(config.inputs) != 1 or output.name != config.detection.logits_output or len(output.shape) != 1:
        raise reader.fail(
            "model", "a text model with one input and its [classes] logits_output as the first output", value
        )
    if config.model_file is None or not config.model_file.is_file():
        raise reader.fail("model", "a model directory whose backend's ONNX file exists", value)
    if ("trigger_text" in reader.table) != ("target" in reader.table):
        missing = "target" if "trigger_text" in reader.table else "trigger_text"
        raise reader.fail(missing, "both `trigger_text` and `target` for a backdoored model (missing)")
    if "trigger_at" in reader.table and "trigger_text" not in reader.table:
        raise reader.fail("trigger_at", "a `trigger_text` to place")
    trigger = target = None
    if "trigger_text" in reader.table:
        text = reader.get("trigger_text", str)
        if not text.strip():
            raise reader.fail("trigger_text", "a non-empty trigger", text)
        trigger = TextTrigger(text.strip(), reader.choice("trigger_at", POSITIONS, "random"))
        target = reader.get("target", int, expected="the backdoor's target class")
        if not 0 <= target < output.shape[0]:
            raise reader.fail("target", f"a class index below {output.shape[0]}", target)
    attack_labels = None
    if "attack_labels" in reader.table:
        if trigger is not None:
            raise reader.fail("attack_labels", "no attack_labels beside a trigger (it goes into the non-target texts)")
        found = reader.get("attack_labels", list, expected="a list of class indices")
        if not found or not all(type(c) is int and 0 <= c < output.shape[0] for c in found):
            raise reader.fail("attack_labels", f"a non-empty list of class indices below {output.shape[0]}", found)
        attack_labels = tuple(sorted(set(found)))
    return TextModel(directory, config, trigger, target, attack_labels)
