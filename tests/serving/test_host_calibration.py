"""Thresholds that hold on the host that serves: a model whose stored calibration was derived under
another runtime fingerprint is recalibrated from its shipped references before it is ready, or
refused (strict), or served as stored (trust), and the gateway says which in its metrics.

The "other runtime" is simulated: the copy's fingerprint is replaced and its stored thresholds
are scaled down a hundredfold, as if that runtime scored this host's inputs far lower; or every
stored fingerprint is made foreign with GUARD_FOREIGN_HOST=1, the switch that runs any machine as
a foreign host. Every rate is measured here, on this host, through tritonclient."""

from __future__ import annotations

import grpc
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from scipy.stats import binom
from tritonclient.utils import InferenceServerException

from guard.detection.calibration.fingerprint import FOREIGN_HOST_ENV, same_runtime
from guard.protocol.errors import ConfigError
from guard.serving.host_calibration import ForeignRuntimeRefused
from tests.conftest import copy_demo, running_gateway
from tests.serving.helpers import edit_config, infer_input

OTHER_RUNTIME = "0123456789ab"


def from_another_runtime(tmp_path):
    def change(table):
        table["calibration"]["fingerprint"] = OTHER_RUNTIME
        for detector in table["detectors"]:
            detector["threshold"] *= 0.01
        for key in ("threshold", "min_p_threshold"):
            table["ensemble"][key] *= 0.01

    return edit_config(copy_demo(tmp_path), change)


def flagged(url: str, x) -> int:
    with triton.InferenceServerClient(url) as client:
        return sum(
            client.infer("digits", [infer_input(x[i : i + 1])]).get_response().parameters["guard_verdict"].string_param
            != "clean"
            for i in range(len(x))
        )


def sample(srv, name: str, **labels) -> float | None:
    return srv.server.metrics.registry.get_sample_value(name, {"model": "digits", **labels})


def test_another_runtimes_thresholds_are_derived_again_and_the_target_holds(tmp_path, held_out):
    x = held_out[0]
    bound = binom.isf(1e-6, len(x), 0.05)  # flags a 5% rate exceeds once in a million runs
    repository = from_another_runtime(tmp_path)
    with running_gateway(repository, calibration="trust") as srv:
        trusted = flagged(srv.grpc_url, x)
        host = srv.server._runtimes["digits"].host_calibration.fingerprint
        assert sample(srv, "guard_calibration_info", fingerprint=host, recalibrated="trusted") == 1.0
    assert trusted > bound  # the stored thresholds do not hold here: the premise of the test
    with running_gateway(repository) as srv:  # the config's mode: recalibrate
        recalibrated = flagged(srv.grpc_url, x)
        assert sample(srv, "guard_calibration_info", fingerprint=host, recalibrated="true") == 1.0
        assert 0.0 <= sample(srv, "guard_calibration_clean_flag_rate") <= 0.05
        assert sample(srv, "guard_calibration_seconds") > 0
        thresholds = {d.name: d.threshold for d in srv.server._runtimes["digits"].detectors}
    assert recalibrated <= bound, f"{recalibrated} of {len(x)} clean test samples flagged after recalibration"
    # Derived from the same references by the same code as on an unmodified copy loaded here.
    with running_gateway(copy_demo(tmp_path / "unmodified"), calibration="recalibrate") as srv:
        runtime = srv.server._runtimes["digits"]
        if runtime.host_calibration.recalibrated == "false":  # this host calibrated the shipped copy
            assert {d.name: d.threshold for d in runtime.detectors} == thresholds


def health(url: str, service: str) -> int:
    with grpc.insecure_channel(url) as channel:
        return (
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        )


def index(client) -> dict[str, tuple[str, str]]:
    return {m.name: (m.state, m.reason) for m in client.get_model_repository_index().models}


def loads(srv, model: str, result: str) -> float:
    return (
        sample(srv, "guard_model_loads_total", result=result)
        if model == "digits"
        else srv.server.metrics.registry.get_sample_value("guard_model_loads_total", {"model": model, "result": result})
    )


def test_strict_refuses_another_runtimes_thresholds_for_that_model_alone(tmp_path, held_out):
    """A strict model whose thresholds came from another runtime is not served; the repository's
    other model (recalibrate) serves. The index, the metric, readiness and a request say why."""
    repository = edit_config(from_another_runtime(tmp_path), lambda t: t["calibration"].update(mode="strict"))
    with running_gateway(repository) as srv, triton.InferenceServerClient(srv.grpc_url) as client:
        state, reason = index(client)["digits"]
        assert state == "UNAVAILABLE"
        assert "key 'calibration.fingerprint'" in reason and OTHER_RUNTIME in reason and "strict" in reason
        assert loads(srv, "digits", "failure") == 1.0 and loads(srv, "digits", "success") is None
        assert not client.is_model_ready("digits") and client.is_model_ready("digits_fp32")
        assert client.is_server_ready()  # what is served is ready; the index names what is not
        with pytest.raises(InferenceServerException) as info:
            client.infer("digits", [infer_input(held_out[0][:1])])
        assert info.value.status() == "StatusCode.UNAVAILABLE" and "strict" in info.value.message()
        assert index(client)["digits_fp32"][0] == "READY"
        client.infer("digits_fp32", [infer_input(held_out[0][:1])])
        assert health(srv.grpc_url, "digits") == health_pb2.HealthCheckResponse.NOT_SERVING  # not unknown
        assert health(srv.grpc_url, "digits_fp32") == health_pb2.HealthCheckResponse.SERVING


def test_a_repository_none_of_whose_models_can_load_here_does_not_start(tmp_path):
    repository = from_another_runtime(tmp_path)
    (repository / "digits_fp32").rename(tmp_path / "elsewhere")
    with pytest.raises(ConfigError) as info, running_gateway(repository, calibration="strict"):
        pass
    assert isinstance(info.value, ForeignRuntimeRefused)
    message = str(info.value)
    assert "key 'calibration.fingerprint'" in message and OTHER_RUNTIME in message and "strict" in message


def test_every_stored_fingerprint_is_foreign_under_the_switch(tmp_path, held_out, monkeypatch):
    """GUARD_FOREIGN_HOST=1: the shipped models, untouched, are recalibrated at load on any host,
    and the recalibrated thresholds hold the target on held-out clean digits."""
    monkeypatch.setenv(FOREIGN_HOST_ENV, "1")
    x = held_out[0]
    bound = binom.isf(1e-6, len(x), 0.05)
    with running_gateway(copy_demo(tmp_path)) as srv:
        for model in ("digits", "digits_fp32"):
            host = srv.server._runtimes[model].host_calibration
            assert host.recalibrated == "true", model
            labels = {"model": model, "fingerprint": host.fingerprint, "recalibrated": "true"}
            assert srv.server.metrics.registry.get_sample_value("guard_calibration_info", labels) == 1
        recalibrated = flagged(srv.grpc_url, x)
    assert recalibrated <= bound, f"{recalibrated} of {len(x)} clean test samples flagged after recalibration"
    stored = srv.server._runtimes["digits"].host_calibration.fingerprint
    assert not same_runtime(stored, stored)  # even this host's own fingerprint is foreign under the switch
    monkeypatch.delenv(FOREIGN_HOST_ENV)
    assert same_runtime(stored, stored)


def test_a_model_without_detectors_loads_on_a_foreign_host(tmp_path, held_out, monkeypatch):
    """Nothing to recalibrate: a pass-through model loads and serves under a foreign fingerprint."""
    monkeypatch.setenv(FOREIGN_HOST_ENV, "1")

    def passthrough(table):
        table.pop("detectors")
        table.pop("ensemble")

    repository = edit_config(copy_demo(tmp_path), passthrough)
    with running_gateway(repository) as srv, triton.InferenceServerClient(srv.grpc_url) as client:
        assert srv.server._runtimes["digits"].host_calibration.recalibrated == "false"
        result = client.infer("digits", [infer_input(held_out[0][:2])])
        assert result.as_numpy("logits").shape == (2, 10)
        assert loads(srv, "digits", "success") == 1.0


def test_a_failed_recalibration_fails_that_model_alone(tmp_path, held_out, monkeypatch, caplog):
    """Its references are unreadable: on a foreign host the model cannot be recalibrated, so it is
    not served (never with thresholds known not to hold); the other model serves."""
    monkeypatch.setenv(FOREIGN_HOST_ENV, "1")
    repository = copy_demo(tmp_path)
    (repository / "digits" / "references.npz").write_bytes(b"not an npz")
    with (
        caplog.at_level("ERROR", logger="guard.serving.reload"),
        running_gateway(repository) as srv,
        triton.InferenceServerClient(srv.grpc_url) as client,
    ):
        state, reason = index(client)["digits"]
        assert state == "UNAVAILABLE" and "recalibrating on runtime" in reason and "references.npz" in reason
        assert loads(srv, "digits", "failure") == 1.0
        assert not client.is_model_ready("digits") and client.is_model_ready("digits_fp32")
        with pytest.raises(InferenceServerException) as info:
            client.infer("digits", [infer_input(held_out[0][:1])])
        assert info.value.status() == "StatusCode.UNAVAILABLE" and "references.npz" in info.value.message()
        assert srv.server._runtimes["digits_fp32"].host_calibration.recalibrated == "true"
        client.infer("digits_fp32", [infer_input(held_out[0][:1])])
    assert any("digits: load failed" in r.getMessage() and "references.npz" in r.getMessage() for r in caplog.records)


def test_a_model_without_references_is_served_as_stored_and_says_so(tmp_path, caplog):
    repository = edit_config(from_another_runtime(tmp_path), lambda t: t["calibration"].pop("references"))
    with caplog.at_level("WARNING", logger="guard.serving"), running_gateway(repository) as srv:
        assert srv.server._runtimes["digits"].host_calibration.recalibrated == "trusted"
    assert any("ships no references" in r.getMessage() for r in caplog.records)
