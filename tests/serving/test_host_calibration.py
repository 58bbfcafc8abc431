"""Thresholds that hold on the host that serves: a model whose stored calibration was derived under
another runtime fingerprint is recalibrated from its shipped references before it is ready, or
refused (strict), or served as stored (trust), and the gateway says which in its metrics.

The "other runtime" is simulated: the copy's fingerprint is replaced and its stored thresholds
are scaled down a hundredfold, as if that runtime scored this host's inputs far lower. Every rate
is measured here, on this host, through tritonclient."""

from __future__ import annotations

import pytest
import tritonclient.grpc as triton
from scipy.stats import binom

from guard.protocol.errors import ConfigError
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
        return sum(client.infer("digits", [infer_input(x[i:i + 1])]).get_response().parameters[
            "guard_verdict"].string_param != "clean" for i in range(len(x)))


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


def test_strict_refuses_thresholds_from_another_runtime(tmp_path):
    with pytest.raises(ConfigError) as info, running_gateway(from_another_runtime(tmp_path), calibration="strict"):
        pass
    message = str(info.value)
    assert "key 'calibration.fingerprint'" in message and OTHER_RUNTIME in message and "strict" in message


def test_a_model_without_references_is_served_as_stored_and_says_so(tmp_path, caplog):
    repository = edit_config(from_another_runtime(tmp_path), lambda t: t["calibration"].pop("references"))
    with caplog.at_level("WARNING", logger="guard.serving"), running_gateway(repository) as srv:
        assert srv.server._runtimes["digits"].host_calibration.recalibrated == "trusted"
    assert any("ships no references" in r.getMessage() for r in caplog.records)
