"""A bad model config fails on load with the file, the key and what was expected."""

import re
import shutil
from pathlib import Path

import pytest

from guard.protocol.errors import ConfigError
from guard.serving.model_config import load_model_config
from guard.serving.repository import load_repository
from guard.serving.runtime import check_loadable

DIGITS = Path(__file__).resolve().parents[2] / "examples" / "guard_examples" / "repository" / "digits"


@pytest.fixture
def model_dir(tmp_path):
    target = tmp_path / "digits"
    shutil.copytree(DIGITS, target)
    return target


def rewrite(directory: Path, old: str, new: str) -> None:
    path = directory / "config.toml"
    text = path.read_text()
    assert re.search(old, text, flags=re.M), f"{old!r} not in config"
    path.write_text(re.sub(old, new, text, count=1, flags=re.M))


def load(directory: Path):
    config = load_model_config(directory)
    check_loadable(config)
    return config


def test_shipped_config_loads(model_dir):
    config = load(model_dir)
    assert config.name == "digits"
    assert config.inputs[0].shape == (1, 16, 16)
    assert config.inputs[0].range == (0.0, 1.0)
    assert all(d.get("threshold") for d in config.detection.detectors)


@pytest.mark.parametrize(
    "old, new, key, expected",
    [
        (r"^max_batch_size = \d+", "max_batch_size = -3", "batching.max_batch_size", "a positive integer"),
        (r'^policy = "\w+"', 'policy = "block"', "policy", "one of enforce, flag, shadow"),
        (r"^target_fpr = .*", "target_fpr = 1.5", "target_fpr", "strictly between 0 and 1"),
        (r'^datatype = "FP32"', 'datatype = "FLOAT"', "inputs[0].datatype", "one of BOOL"),
        (r"^shape = \[ *1, *16, *16 *,? *\]", "shape = [1, 8, 8]", "inputs[0].shape", "compatible with the model"),
        (r"^range = .*", "range = [1.0, 0.0]", "inputs[0].range", "low <= high"),
        (r"^\[backend\]", '[backend]\nmodel_file = "missing.onnx"', "backend.model_file", "the model's ONNX file in"),
        (r"^\[backend\]", '[backend]\nkind = "tensorflow"', "backend.kind", "one of onnxruntime, remote"),
        (r"^bits = \d+", "bits = 0", "detectors[0].bits", "an integer in [1, 16]"),
        (r'^type = "squeeze_median"', 'type = "magic"', "detectors[1].type", "one of squeeze_bit_depth"),
        (r"^threshold = .*", "threshold = -1.0", "detectors[0].threshold", "a positive finite number"),
        (r'^name = "digits"', 'name = "other"', "name", "the directory's name"),
        (r"^logits_output = .*", 'logits_output = "probs"', "logits_output", "one of [[outputs]]"),
    ],
)
def test_bad_values_name_file_key_and_expectation(model_dir, old, new, key, expected):
    rewrite(model_dir, old, new)
    with pytest.raises(ConfigError) as info:
        load(model_dir)
    message = str(info.value)
    assert str(model_dir / "config.toml") in message
    assert f"key '{key}'" in message
    assert expected in message


def test_unknown_key_is_rejected(model_dir):
    rewrite(model_dir, r"^\[batching\]", "[batching]\nmax_delay = 5")
    with pytest.raises(ConfigError, match=r"key 'batching.max_delay': expected a known key"):
        load(model_dir)


def test_missing_threshold_asks_for_calibration(model_dir):
    rewrite(model_dir, r"^threshold = .*\n", "")
    with pytest.raises(ConfigError, match=r"detectors\[0\].threshold.*run `guard calibrate`"):
        load(model_dir)


def test_toml_syntax_error_names_the_file(model_dir):
    (model_dir / "config.toml").write_text("name = [unclosed\n")
    with pytest.raises(ConfigError, match=r"config.toml: key '\(syntax\)': expected valid TOML"):
        load(model_dir)


def test_repository_without_models_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="at least one model directory"):
        load_repository(tmp_path)
