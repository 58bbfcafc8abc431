"""Plugins (guard.protocol.plugins): parts another installed package registers through entry points.

The example package (examples/plugin_detector) is installed the way a user installs it, with pip,
into a directory of its own in tmp_path (from a copy, so the checkout gets no build/ or egg-info;
offline: --no-index, and setuptools from this venv with --no-build-isolation), and that directory
is put on sys.path. A gateway then serves a model config that names its detector. Broken and
shadowing plugins are distributions written by hand: a .dist-info directory with METADATA and
entry_points.txt is all importlib.metadata reads.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as triton

from guard.backends import AVAILABLE as BACKENDS
from guard.backends import read_backend_settings
from guard.backends.onnxruntime import OnnxRuntimeBackend
from guard.detection.detectors import AVAILABLE as DETECTORS
from guard.detection.detectors import REGISTRY, build_detectors
from guard.detection.detectors.confidence import ConfidenceMarginDetector
from guard.detection.preprocess import AVAILABLE as PREPROCESSORS
from guard.detection.preprocess import read_preprocess_settings
from guard.protocol.errors import ConfigError
from guard.protocol.plugins import forget_loaded
from guard.protocol.settings import TableReader
from guard.protocol.spec import TensorSpec
from guard.tools.evaluation.attacks import AVAILABLE as ATTACKS
from guard.tools.evaluation.attacks import AttackSpec
from tests.conftest import ROOT, copy_demo, running_gateway
from tests.serving.helpers import as_union, infer_input, noise_rows, read_config, thresholds_as_written, write_config

EXAMPLE = ROOT / "examples" / "plugin_detector"
NEVER = 1e9  # a threshold the built-in detectors never reach here: the plugin alone decides


@pytest.fixture(scope="module")
def example_site(tmp_path_factory) -> Path:
    """The example package installed by pip into a directory of its own."""
    base = tmp_path_factory.mktemp("plugin")
    shutil.copytree(EXAMPLE, base / "source", ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["--target", str(base / "site"), str(base / "source")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return base / "site"


@pytest.fixture(autouse=True)
def fresh_registries():
    """Every registry loads its group again in each test, and once more after it, so no other
    test sees a plugin this one put on sys.path."""
    forget_loaded()
    yield
    forget_loaded()


@pytest.fixture
def installed(example_site, monkeypatch) -> Path:
    monkeypatch.syspath_prepend(str(example_site))
    yield example_site
    sys.modules.pop("guard_example_detector", None)


def distribution(root: Path, name: str, entry_points: dict[str, dict[str, str]], modules: dict[str, str]) -> None:
    """A distribution as importlib.metadata finds one on sys.path, with its modules beside it."""
    info = root / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "".join(
            f"[{group}]\n" + "".join(f"{key} = {value}\n" for key, value in entries.items())
            for group, entries in entry_points.items()
        )
    )
    for module, source in modules.items():
        (root / f"{module}.py").write_text(source)


def test_the_registry_sees_the_installed_plugin_beside_the_built_ins(installed):
    names = DETECTORS.names()
    assert "noise_sensitivity" in names and names[: len(REGISTRY)] == tuple(REGISTRY)
    cls = DETECTORS.get("noise_sensitivity")
    assert cls.__module__ == "guard_example_detector" and cls.kind == "noise_sensitivity"
    assert DETECTORS.plugins().refused == {}
    assert {name: DETECTORS.get(name) for name in REGISTRY} == REGISTRY  # built-ins exactly as they were


def test_without_the_package_there_is_no_such_type(tmp_path):
    with pytest.raises(ConfigError, match=r"key 'detectors\[0\].type': expected one of squeeze_bit_depth, .*got"):
        build_detectors(tmp_path / "config.toml", [{"type": "noise_sensitivity", "threshold": 0.5}])


def test_a_config_naming_the_plugin_is_served_and_the_plugin_decides_the_verdict(installed, tmp_path, held_out):
    """Built-in thresholds NEVER, the plugin's small: a row is flagged by the plugin exactly when
    its own score reaches its threshold, with the score tritonclient reads from the gateway."""
    threshold = 1e-4
    repository = copy_demo(tmp_path)
    shutil.rmtree(repository / "digits_fp32")
    table = read_config(repository)
    as_union(table, {d["name"]: NEVER for d in table["detectors"]})
    thresholds_as_written(table)
    table["detectors"].append({"name": "noise", "type": "noise_sensitivity", "sigma": 0.05, "threshold": threshold})
    write_config(repository, table)

    rows = np.concatenate([held_out[0][:4], noise_rows(4)])
    flagged = []
    with running_gateway(repository) as srv, triton.InferenceServerClient(srv.grpc_url) as client:
        for i in range(len(rows)):
            result = client.infer("digits", [infer_input(rows[i : i + 1])], parameters={"guard_explain": True})
            params = result.get_response().parameters
            scores = json.loads(params["guard_detector_scores"].string_param)
            assert set(scores) == {d["name"] for d in table["detectors"]}
            assert 0.0 <= scores["noise"] <= 2.0  # an L1 distance between two probability vectors
            is_flagged = params["guard_verdict"].string_param == "adversarial"
            assert is_flagged == (scores["noise"] >= threshold)
            assert params["guard_flagged_by"].string_param == ("noise" if is_flagged else "")
            flagged.append(is_flagged)
    assert any(flagged) and not all(flagged), f"the plugin's threshold splits no rows here: {flagged}"


SHADOW = """
from guard.detection.detectors import Detector

class Shadow(Detector):  # a working detector that would never flag, under a built-in's name
    kind = "confidence_margin"

    def score(self, original, variants):
        return original.logits[:, 0] * 0
"""


def test_a_plugin_may_not_take_a_built_ins_name(tmp_path, monkeypatch, caplog):
    """Installing a package never changes what an existing config means: the built-in keeps its
    name, and the plugin is refused, before it is imported, with a warning naming it."""
    distribution(
        tmp_path,
        "shadow-plugin",
        {"guard.detectors": {"confidence_margin": "shadow_module:Shadow"}},
        {"shadow_module": SHADOW},
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="guard.plugins"):
        (built,) = build_detectors(tmp_path / "config.toml", [{"type": "confidence_margin", "threshold": 0.5}])
    assert type(built) is ConfidenceMarginDetector
    reason = DETECTORS.plugins().refused["confidence_margin"]
    assert "confidence_margin = shadow_module:Shadow" in reason and "distribution shadow-plugin 0.1" in reason
    assert "takes the name of a built-in detector type" in reason and reason in caplog.text
    assert "shadow_module" not in sys.modules


GOOD_DETECTOR = """
from guard.detection.detectors import Detector

class Misnamed(Detector):
    kind = "something_else"

    def score(self, original, variants):
        return original.logits[:, 0]

class Abstract(Detector):
    kind = "abstract"

def helper():
    return None
"""


@pytest.mark.parametrize(
    "name, target, reason",
    [
        ("missing", "no_such_module:Thing", "does not import (ModuleNotFoundError: No module named 'no_such_module')"),
        ("not_a_detector", "plugin_parts:helper", "not a subclass of guard.detection.detectors.base.Detector"),
        ("misnamed", "plugin_parts:Misnamed", "Misnamed.kind is 'something_else', not the entry point's name"),
        ("abstract", "plugin_parts:Abstract", "Abstract is abstract (it does not implement score)"),
    ],
)
def test_a_broken_plugin_is_skipped_until_a_config_names_it(tmp_path, monkeypatch, caplog, name, target, reason):
    distribution(tmp_path, "broken-plugin", {"guard.detectors": {name: target}}, {"plugin_parts": GOOD_DETECTOR})
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "config.toml"
    with caplog.at_level(logging.WARNING, logger="guard.plugins"):
        assert build_detectors(path, [{"type": "confidence_margin", "threshold": 0.5}])  # others still load
    assert f"{name} = {target} (group guard.detectors) of distribution broken-plugin 0.1" in caplog.text
    assert name not in DETECTORS.names()
    with pytest.raises(ConfigError) as raised:
        build_detectors(path, [{"type": name, "threshold": 0.5}])
    message = raised.value.message
    assert message.startswith(f"{path}: key 'detectors[0].type': expected a detector type plugin that loads (refused:")
    assert f"entry point {name} = {target} (group guard.detectors) of distribution broken-plugin 0.1" in message
    assert reason in message
    sys.modules.pop("plugin_parts", None)


def test_two_distributions_with_one_name_are_both_refused(tmp_path, monkeypatch):
    for dist in ("first-plugin", "second-plugin"):
        distribution(tmp_path / dist, dist, {"guard.detectors": {"twice": "somewhere:Twice"}}, {})
        monkeypatch.syspath_prepend(str(tmp_path / dist))
    with pytest.raises(ConfigError, match="refused: registered more than once: ") as raised:
        build_detectors(tmp_path / "config.toml", [{"type": "twice", "threshold": 0.5}])
    assert "distribution first-plugin 0.1" in raised.value.message
    assert "distribution second-plugin 0.1" in raised.value.message


PARTS = """
from guard.backends.onnxruntime import OnnxRuntimeBackend
from guard.detection.preprocess.frames import FramesPreprocessor

class EchoBackend(OnnxRuntimeBackend):
    kind = "echo"

class SmallFrames(FramesPreprocessor):
    kind = "small_frames"

def identity_attack(model, spec):
    return lambda x, y: x + spec.params.get("shift", 0.0)
"""


def test_backends_preprocessors_and_attacks_take_plugins_the_same_way(tmp_path, monkeypatch):
    distribution(
        tmp_path,
        "parts-plugin",
        {
            "guard.backends": {"echo": "plugin_more_parts:EchoBackend"},
            "guard.preprocessors": {"small_frames": "plugin_more_parts:SmallFrames"},
            "guard.attacks": {"identity": "plugin_more_parts:identity_attack", "fgsm": "elsewhere:fgsm"},
        },
        {"plugin_more_parts": PARTS},
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "config.toml"
    (tmp_path / "model.onnx").touch()  # the onnxruntime kind's settings name a file that exists

    backend = read_backend_settings(TableReader(path, {"kind": "echo"}, "backend."), "m")
    assert backend.backend_class.__name__ == "EchoBackend" and issubclass(backend.backend_class, OnnxRuntimeBackend)
    assert BACKENDS.names() == ("onnxruntime", "remote", "torch", "echo")

    frames = TensorSpec("frames", "UINT8", (-1, -1, 3))
    table = {"kind": "small_frames", "height": 16, "width": 16}
    settings = read_preprocess_settings(TableReader(path, table, "preprocess."), (frames,))
    assert settings is not None and type(settings.build(frames)).__name__ == "SmallFrames"
    assert "small_frames" in PREPROCESSORS.names()

    attack = AttackSpec("identity", None, {"shift": 0.5}).build(torch.nn.Identity())
    assert torch.equal(attack(torch.zeros(2), torch.zeros(2)), torch.full((2,), 0.5))
    assert "built-in attack" in ATTACKS.plugins().refused["fgsm"] and ATTACKS.get("fgsm") is not None
    sys.modules.pop("plugin_more_parts", None)
