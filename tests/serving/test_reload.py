"""Model updates without downtime: a changed config loads beside the serving copy and replaces it
when ready, while clients under load see only OK; requests already on the old copy finish there; a
config that fails validation changes nothing and says why. Triggers: tritonclient's `load_model`
(the repository RPCs, with `--model-control`) and SIGHUP on `guard serve`.

The observable change is the policy: under `flag` every response carries `guard_verdict`, under
`shadow` none does, so each answer tells which copy served it.
"""

from __future__ import annotations

import queue
import signal
import time

import grpc
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.conftest import copy_demo, running_gateway, set_key
from tests.serving.helpers import edit_config, gated_repository, infer_input
from tests.serving.process import ServeProcess, Traffic, wait_until


def shadow(repository) -> None:
    path = repository / "digits" / "config.toml"
    path.write_text(set_key(path.read_text(), "policy", '"shadow"'))


def flagged_params(result) -> bool:
    return "guard_verdict" in result.get_response().parameters


def loads(srv, result: str) -> float:
    return (
        srv.server.metrics.registry.get_sample_value("guard_model_loads_total", {"model": "digits", "result": result})
        or 0.0
    )


def test_load_model_under_load_switches_to_the_new_config_and_no_request_fails(tmp_path, held_out):
    repository = copy_demo(tmp_path)
    with running_gateway(repository, model_control=True) as srv:
        with (
            Traffic(srv.grpc_url, held_out[0][:32], threads=4, keep_results=True) as traffic,
            triton.InferenceServerClient(srv.grpc_url) as client,
        ):
            traffic.wait_for(100)
            shadow(repository)
            client.load_model("digits")
            switched = time.monotonic()
            assert not flagged_params(client.infer("digits", [infer_input(held_out[0][:1])]))
            traffic.wait_for(100)
        answers = list(traffic.answers)
        assert loads(srv, "success") == 2 and loads(srv, "failure") == 0  # startup, then the reload
    assert {a.code for a in answers} == {"OK"}, traffic.codes()
    assert all(flagged_params(a.result) for a in answers[:100])
    after = [a for a in answers if a.sent > switched]
    assert len(after) >= 50 and not any(flagged_params(a.result) for a in after)


def test_sighup_reloads_what_changed_under_load(tmp_path, held_out):
    repository = copy_demo(tmp_path)
    with ServeProcess(repository) as guard:
        with Traffic(guard.grpc_url, held_out[0][:32], threads=4, keep_results=True) as traffic:
            traffic.wait_for(100)
            shadow(repository)
            guard.signal(signal.SIGHUP)
            line = guard.wait_for_log("SIGHUP: repository", timeout=60)
            reloaded = time.monotonic()
            traffic.wait_for(100)
        answers = list(traffic.answers)
    assert "digits loaded" in line and "digits_fp32 unchanged" in line, line
    assert {a.code for a in answers} == {"OK"}, traffic.codes()
    after = [a for a in answers if a.sent > reloaded]
    assert len(after) >= 50 and not any(flagged_params(a.result) for a in after)


def test_a_config_that_fails_validation_leaves_the_old_copy_serving_and_says_why(tmp_path, held_out, caplog):
    repository = copy_demo(tmp_path)
    with running_gateway(repository, model_control=True) as srv, triton.InferenceServerClient(srv.grpc_url) as client:
        path = repository / "digits" / "config.toml"
        path.write_text(set_key(path.read_text(), "policy", '"bogus"'))
        with pytest.raises(InferenceServerException) as info:
            client.load_model("digits")
        assert str(path) in info.value.message() and "key 'policy'" in info.value.message()
        assert flagged_params(client.infer("digits", [infer_input(held_out[0][:1])]))  # the old copy, as it was
        index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
        assert index["digits"]["state"] == "READY" and "key 'policy'" in index["digits"]["reason"]
        assert loads(srv, "failure") == 1
    assert any("digits: load failed, the loaded copy keeps serving" in r.getMessage() for r in caplog.records)


def test_requests_on_the_replaced_copy_finish_there(tmp_path, gate, held_out):
    """A request held in the old copy's running batch when the new copy takes over: a request sent
    after the load is served by the new copy at once, the held one is answered once released, and
    only then does the old copy close."""
    repository = gated_repository(tmp_path)
    answers: queue.Queue = queue.Queue()
    with (
        running_gateway(repository, model_control=True) as srv,
        gate,
        triton.InferenceServerClient(srv.grpc_url) as client,
    ):
        client.async_infer(
            "digits", [infer_input(held_out[0][:1])], lambda result, error: answers.put(error), client_timeout=30
        )
        assert gate.entered.wait(10)
        old = srv.server._runtimes["digits"]
        edit_config(repository, lambda table: table["detectors"][0].update(type="squeeze_bit_depth"))
        client.load_model("digits")
        assert srv.server._runtimes["digits"] is not old
        client.infer("digits", [infer_input(held_out[0][:1])], client_timeout=10)  # the gate still holds the old
        assert srv.server.models.retiring == [old] and old.active == 1
        gate.open()
        assert answers.get(timeout=10) is None
        wait_until(lambda: not srv.server.models.retiring, what="the old copy closed")


def health(url: str, service: str) -> int:
    with grpc.insecure_channel(url) as channel:
        return (
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        )


def test_unload_then_load_again(tmp_path, held_out):
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    with (
        running_gateway(copy_demo(tmp_path), model_control=True) as srv,
        triton.InferenceServerClient(srv.grpc_url) as client,
    ):
        client.unload_model("digits")
        with pytest.raises(InferenceServerException) as info:
            client.infer("digits", [infer_input(held_out[0][:1])])
        assert info.value.status() == "StatusCode.NOT_FOUND"
        wait_until(lambda: health(srv.grpc_url, "digits") == not_serving, what="digits NOT_SERVING")
        index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
        assert index["digits"].get("state") == "UNAVAILABLE" and index["digits"].get("reason") == "unloaded"
        assert index["digits_fp32"]["state"] == "READY"
        client.load_model("digits")
        client.infer("digits", [infer_input(held_out[0][:1])])
        wait_until(lambda: health(srv.grpc_url, "digits") == serving, what="digits SERVING again")


def test_model_control_is_off_unless_asked_for_and_names_stay_inside_the_repository(tmp_path):
    with running_gateway(copy_demo(tmp_path)) as srv, triton.InferenceServerClient(srv.grpc_url) as client:
        names = [m["name"] for m in client.get_model_repository_index(as_json=True)["models"]]
        assert names == ["digits", "digits_fp32"]
        with pytest.raises(InferenceServerException) as info:
            client.unload_model("digits")
        assert info.value.status() == "StatusCode.FAILED_PRECONDITION" and "--model-control" in info.value.message()
        assert client.is_model_ready("digits")
    with (
        running_gateway(copy_demo(tmp_path / "2"), model_control=True) as srv,
        triton.InferenceServerClient(srv.grpc_url) as client,
    ):
        for name, status in (
            ("../repository", "INVALID_ARGUMENT"),
            (".hidden", "INVALID_ARGUMENT"),
            ("missing", "NOT_FOUND"),
        ):
            with pytest.raises(InferenceServerException) as info:
                client.load_model(name)
            assert info.value.status() == f"StatusCode.{status}", (name, info.value.message())
        with pytest.raises(InferenceServerException) as info:
            client.load_model("digits", config='{"max_batch_size": 1}')
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT" and "config" in info.value.message()
