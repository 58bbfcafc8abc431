"""[backend] kind = "remote": every key validated, errors name the file and the key."""

import re

import pytest

from guard.protocol.errors import ConfigError
from guard.serving.model_config import load_model_config
from tests.conftest import copy_demo

REMOTE = '[backend]\nkind = "remote"\ntarget = "triton:8001"\n'


def load(tmp_path, backend: str, drop_model: bool = False):
    def edit(text: str) -> str:
        if 'mode = "forward_clean"' not in backend:  # ONNX Runtime's keys belong to forward_clean's local copy
            text = re.sub(r"(?m)^(intra_op_threads|inter_op_threads) = .*\n", "", text)
        return text.replace("[backend]\n", backend, 1)

    repository = copy_demo(tmp_path, edit)
    if drop_model:
        (repository / "digits" / "model.onnx").unlink()
    return load_model_config(repository / "digits")


def test_defaults(tmp_path):
    remote = load(tmp_path, REMOTE, drop_model=True).backend.settings
    assert (remote.target, remote.model, remote.version, remote.mode) == ("triton:8001", "digits", "", "through")
    assert remote.timeout_s == 10.0 and remote.max_batch == 0 and remote.tls is None


@pytest.mark.parametrize(
    "backend, key, expected",
    [
        ('[backend]\ntarget = "x:1"\n', "backend.target", "a known key"),
        (REMOTE + "intra_op_threads = 2\n", "backend.intra_op_threads", "a known key"),
        ('[backend]\nkind = "triton"\n', "backend.kind", "one of onnxruntime, remote"),
        ('[backend]\nkind = "remote"\n', "backend.target", "host:port"),
        (REMOTE + 'mode = "detect"\n', "backend.mode", "one of through, forward_clean"),
        (REMOTE + "timeout_s = 0\n", "backend.timeout_s", "a positive number of seconds"),
        (REMOTE + "max_batch = -1\n", "backend.max_batch", "a non-negative integer"),
        (REMOTE + 'tls = { cert = "config.toml" }\n', "backend.tls.key", "cert and key together"),
        (REMOTE + 'tls = { ca = "missing.pem" }\n', "backend.tls.ca", "a PEM file"),
    ],
)
def test_bad_remote_values(tmp_path, backend, key, expected):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, backend)
    assert f"key '{key}'" in str(info.value) and expected in str(info.value)


def test_forward_clean_needs_the_local_copy(tmp_path):
    with pytest.raises(ConfigError, match="key 'backend.model_file'"):
        load(tmp_path, REMOTE + 'mode = "forward_clean"\n', drop_model=True)
