"""The guard in front of MLServer (a server no one here wrote): outputs and verdicts through the
chain equal the local guard's; the upstream's metadata is checked at load."""

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from guard.protocol.errors import ConfigError
from tests.backends.remote.conftest import infer, remote_repository, verdict_of
from tests.conftest import running_gateway

SAMPLES = 40


@pytest.fixture(scope="module")
def local(gateway):
    with triton.InferenceServerClient(gateway.grpc_url) as client:
        yield client


def assert_same_as_local(front: triton.InferenceServerClient, local: triton.InferenceServerClient, x: np.ndarray):
    """Logits within tolerance; verdict and detectors that fired equal unless the score sits at
    the threshold, where float noise between two ONNX Runtime builds may tip it."""
    for start in [*range(SAMPLES), *range(SAMPLES, SAMPLES + 32, 8)]:
        rows = x[start : start + (1 if start < SAMPLES else 8)]
        ours, theirs = infer(front, rows), infer(local, rows)
        np.testing.assert_allclose(ours.as_numpy("logits"), theirs.as_numpy("logits"), atol=1e-4, rtol=1e-4)
        (verdict, fired, score), (want, want_fired, want_score) = verdict_of(ours), verdict_of(theirs)
        assert score == pytest.approx(want_score, rel=1e-3)
        if abs(want_score - 1.0) > 1e-3:
            assert (verdict, fired) == (want, want_fired)


def test_through_mlserver_matches_the_local_guard(tmp_path, mlserver_digits, local, held_out):
    """Mode through: originals and every detector variant (features included) go to MLServer as
    ONE request per batch; no local model file exists."""
    repository = remote_repository(tmp_path, mlserver_digits.grpc_target)
    with running_gateway(repository) as front, triton.InferenceServerClient(front.grpc_url) as client:
        assert client.is_server_ready() and client.is_model_ready("digits")
        assert_same_as_local(client, local, held_out[0])
        assert front.server.metrics.registry.get_sample_value("guard_backend_rows_total", {"model": "digits"}) > SAMPLES


def test_forward_clean_into_mlserver_matches_the_local_guard(tmp_path, mlserver_digits, local, held_out):
    """Mode forward_clean: the local copy scores, MLServer answers for the requests that pass."""
    repository = remote_repository(tmp_path, mlserver_digits.grpc_target, mode="forward_clean")
    with running_gateway(repository) as front, triton.InferenceServerClient(front.grpc_url) as client:
        assert_same_as_local(client, local, held_out[0])


@pytest.mark.parametrize(
    "old, new, key, expected",
    [
        ("shape = [1, 16, 16]", "shape = [1, 8, 8]", "inputs[0].shape", "compatible with upstream model 'digits'"),
        ('datatype = "FP32"', 'datatype = "FP64"', "inputs[0].datatype", "FP32 as in upstream model 'digits'"),
        ('name = "logits"', 'name = "probabilities"', "outputs[0].name", "an output of upstream model 'digits'"),
    ],
)
def test_metadata_mismatch_fails_the_load_naming_file_key_and_upstream(
    tmp_path, mlserver_digits, old, new, key, expected
):
    def edit(text: str) -> str:
        text = text.replace(old, new, 1)
        return (
            text.replace('logits_output = "logits"', 'logits_output = "probabilities"')
            if key.startswith("outputs")
            else text
        )

    repository = remote_repository(tmp_path, mlserver_digits.grpc_target, edit=edit)
    with pytest.raises(ConfigError) as info, running_gateway(repository):
        pass
    message = str(info.value)
    assert str(repository / "digits" / "config.toml") in message
    assert f"key '{key}'" in message and expected in message and mlserver_digits.grpc_target in message


def test_unknown_upstream_model_is_not_ready_and_fails_unavailable(tmp_path, mlserver_digits, held_out):
    repository = remote_repository(tmp_path, mlserver_digits.grpc_target, model="nope")
    with running_gateway(repository) as front, triton.InferenceServerClient(front.grpc_url) as client:
        assert not client.is_model_ready("digits") and not client.is_server_ready()
        with pytest.raises(InferenceServerException) as info:
            infer(client, held_out[0][:1], client_timeout=5)
        assert info.value.status() == "StatusCode.UNAVAILABLE"
        assert "upstream model 'nope'" in info.value.message()
