"""Every file a model's config.toml names stays inside the model directory: a name that climbs out
(`..`), an absolute path, or a symlink that leads out fails the load with a ConfigError naming the
key, through the real loader and on a live gateway, where the other models keep serving."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from guard.protocol.errors import ConfigError
from guard.serving.model_config import load_model_config
from tests.conftest import copy_demo, running_gateway
from tests.serving.helpers import edit_config, infer_input

OUTSIDE = "resolves outside the model directory"
ABSOLUTE = "is an absolute path"


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """A copy of the demo repository, and next to it a directory `outside` holding real copies of
    digits' files, so that a name leading there would load if it were not refused."""
    repository = copy_demo(tmp_path)
    outside = tmp_path / "outside"
    shutil.copytree(repository / "digits", outside)
    (outside / "scan.json").write_text("{}")
    (outside / "tokenizer.json").write_text("{}")
    (outside / "ca.pem").write_text("not a certificate")
    return repository


def _text_input(table: dict, tokenizer: str) -> None:
    table["inputs"] = [{"name": "text", "datatype": "BYTES", "shape": [1]}]
    table["preprocess"] = {"kind": "text", "tokenizer": tokenizer}


def _remote(table: dict, ca: str) -> None:
    table["backend"] = {"kind": "remote", "target": "127.0.0.1:1", "tls": {"ca": ca}}


def _trt_cache(table: dict, directory: str) -> None:
    table["backend"]["tensorrt"] = {"engine_cache_dir": directory}


# (key the error must name, how the config names a file outside, what the error says)
ESCAPES = [
    ("backend.model_file", lambda t, out: t["backend"].update(model_file="../../outside/model.onnx"), OUTSIDE),
    ("backend.model_file", lambda t, out: t["backend"].update(model_file=str(out / "model.onnx")), ABSOLUTE),
    (
        "detectors[2].statistics",
        lambda t, out: t["detectors"][2].update(statistics="../../outside/mahalanobis.npz"),
        OUTSIDE,
    ),
    ("detectors[4].weights", lambda t, out: t["detectors"][4].update(weights=str(out / "detector_net.npz")), ABSOLUTE),
    ("ensemble.references", lambda t, out: t["ensemble"].update(references="../digits_fp32/ensemble.npz"), OUTSIDE),
    (
        "calibration.references",
        lambda t, out: t["calibration"].update(references=str(out / "references.npz")),
        ABSOLUTE,
    ),
    ("scan.report", lambda t, out: t.update(scan={"report": "../../outside/scan.json"}), OUTSIDE),
    ("backend.tensorrt.engine_cache_dir", lambda t, out: _trt_cache(t, "../../outside"), OUTSIDE),
    ("preprocess.tokenizer", lambda t, out: _text_input(t, "../../outside/tokenizer.json"), OUTSIDE),
    ("backend.tls.ca", lambda t, out: _remote(t, "../../outside/ca.pem"), OUTSIDE),
]


@pytest.mark.parametrize(
    ("key", "escape", "why"), ESCAPES, ids=[f"{k}-{'absolute' if w == ABSOLUTE else 'outside'}" for k, _, w in ESCAPES]
)
def test_a_name_outside_the_model_directory_fails_the_load_naming_the_key(repository, key, escape, why):
    edit_config(repository, lambda table: escape(table, repository.parent / "outside"))
    for calibrated in (True, False):  # `guard calibrate --model` (calibrated=False) would write there
        with pytest.raises(ConfigError) as info:
            load_model_config(repository / "digits", calibrated=calibrated)
        assert info.value.key == key and why in info.value.message, info.value.message


def test_a_symlink_that_leads_out_is_refused_and_one_that_stays_in_is_not(repository):
    digits, outside = repository / "digits", repository.parent / "outside"
    (digits / "mahalanobis.npz").unlink()
    (digits / "mahalanobis.npz").symlink_to(outside / "mahalanobis.npz")
    with pytest.raises(ConfigError, match=r"key 'detectors\[2\]\.statistics'.*resolves outside"):
        load_model_config(digits)
    # A directory link is followed too: `data/model.onnx` reads outside/model.onnx.
    (digits / "mahalanobis.npz").unlink()
    (digits / "data").symlink_to(outside, target_is_directory=True)
    shutil.copyfile(outside / "mahalanobis.npz", digits / "mahalanobis.npz")
    edit_config(repository, lambda t: t["backend"].update(model_file="data/model.onnx"))
    with pytest.raises(ConfigError, match=r"key 'backend\.model_file'.*resolves outside"):
        load_model_config(digits)
    # Links (and `..`) that end inside the directory are fine.
    (digits / "inner").mkdir()
    (digits / "inner" / "model.onnx").symlink_to(digits / "model.onnx")
    edit_config(repository, lambda t: t["backend"].update(model_file="inner/../inner/model.onnx"))
    assert load_model_config(digits).model_file == digits / "inner/../inner/model.onnx"


def test_a_repository_reached_through_a_symlink_still_loads(repository, tmp_path):
    """The rule resolves the model directory too: a repository mounted through a link is not 'outside'."""
    link = tmp_path / "linked"
    link.symlink_to(repository, target_is_directory=True)
    config = load_model_config(link / "digits")
    assert config.model_file == link / "digits" / "model.onnx"
    assert os.path.samefile(config.model_file, repository / "digits" / "model.onnx")


def test_on_a_live_gateway_an_escaping_model_fails_alone_and_says_why(repository, held_out, caplog):
    """A model added while serving, whose config escapes, fails its load; the repository index and
    the log say which key, and digits and digits_fp32 keep serving. A change that makes digits' own
    config escape leaves its loaded copy serving."""
    parked = repository.parent / "parked"
    shutil.copytree(repository / "digits_fp32", parked / "escaping")
    edit_config(parked, lambda t: t.update(name="escaping"), "escaping")
    edit_config(parked, lambda t: t["detectors"][2].update(statistics="../../outside/mahalanobis.npz"), "escaping")
    caplog.set_level(logging.INFO, "guard.serving.reload")
    x = held_out[0][:1]
    with (
        running_gateway(repository, model_control=True) as srv,
        triton.InferenceServerClient(srv.grpc_url) as client,
    ):
        shutil.move(parked / "escaping", repository / "escaping")
        with pytest.raises(InferenceServerException) as info:
            client.load_model("escaping")
        assert "key 'detectors[2].statistics'" in info.value.message() and OUTSIDE in info.value.message()
        index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
        assert index["escaping"]["state"] == "UNAVAILABLE" and OUTSIDE in index["escaping"]["reason"]
        with pytest.raises(InferenceServerException) as info:
            client.infer("escaping", [infer_input(x)])
        assert info.value.status() == "StatusCode.UNAVAILABLE" and OUTSIDE in info.value.message()

        edit_config(repository, lambda t: t["backend"].update(model_file=str(repository / "digits" / "model.onnx")))
        with pytest.raises(InferenceServerException) as info:
            client.load_model("digits")
        assert "key 'backend.model_file'" in info.value.message() and ABSOLUTE in info.value.message()
        index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
        assert index["digits"]["state"] == "READY" and ABSOLUTE in index["digits"]["reason"]
        for model in ("digits", "digits_fp32"):
            assert client.infer(model, [infer_input(x)]).as_numpy("logits").shape == (1, 10)
    failures = [r.getMessage() for r in caplog.records if "load failed" in r.getMessage()]
    assert any(m.startswith("escaping: load failed, not serving") and OUTSIDE in m for m in failures), failures
    assert any(m.startswith("digits: load failed, the loaded copy keeps serving") for m in failures), failures


def test_at_startup_an_escaping_config_stops_the_start_naming_the_key(repository):
    """As any other mistake in the repository at startup (guard.serving.reload.load_all): nothing
    serves yet, so the operator fixes it before the gateway starts."""
    edit_config(repository, lambda t: t["detectors"][2].update(statistics="../../outside/mahalanobis.npz"))
    with pytest.raises(ConfigError) as info, running_gateway(repository):
        pass
    assert info.value.key == "detectors[2].statistics" and OUTSIDE in info.value.message
