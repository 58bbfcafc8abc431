"""Per-client quotas ([clients] rate, burst, max_concurrency; guard serve --client-*): each identity
has its own token bucket and concurrency cap per model; a client over its quota is refused
RESOURCE_EXHAUSTED with a retry hint before its request is decoded, while other clients are served.

The bucket's arithmetic is checked on a clock the test moves; the live gateway's tests use rates
so low that no token comes back while they run, so no bound depends on the host's speed."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton

from guard.detection import detectors
from guard.protocol.errors import ConfigError, QuotaExceeded
from guard.protocol.proto import inference_pb2 as pb
from guard.protocol.settings import TableReader
from guard.serving.client_settings import ClientSettings, read_client_settings
from guard.serving.quotas import ClientQuotas, QuotaBook
from guard.tools.cli import build_parser
from tests.conftest import copy_demo, running_gateway
from tests.security.clients import bearer, infer, refused
from tests.security.conftest import ALICE, BOB
from tests.serving.helpers import (
    Gate,
    GateDetector,
    edit_config,
    gated_repository,
    infer_input,
    queue_depth,
    requests_total,
)
from tests.serving.test_admission import wait_until
from tests.serving.test_admission_limits import pushback_ms

INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture
def gate(monkeypatch):
    """A Gate holding the batches of gated_repository's detector (as in tests/serving/conftest.py)."""
    held = Gate()
    monkeypatch.setitem(detectors.REGISTRY, GateDetector.kind, GateDetector)
    monkeypatch.setattr(GateDetector, "gate", held)
    yield held
    held.open()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_admits_its_burst_then_one_request_per_token_and_says_when():
    clock = Clock()
    quotas = ClientQuotas("digits", ClientSettings(rate=2.0, burst=3), clock)
    leases = [quotas.admit("alice") for _ in range(3)]
    with pytest.raises(QuotaExceeded, match=r"rate limit for model 'digits' \(\[clients\] rate 2 requests/s, burst 3"):
        quotas.admit("alice")
    with pytest.raises(QuotaExceeded) as info:
        quotas.admit("alice")
    assert info.value.retry_ms == 500 and info.value.status == "RESOURCE_EXHAUSTED"
    assert quotas.admit("bob")  # another identity has its own bucket
    clock.now += 0.25
    with pytest.raises(QuotaExceeded) as info:
        quotas.admit("alice")
    assert info.value.retry_ms == 250  # half a token back: the hint is when the next one is whole
    clock.now += 0.25
    leases.append(quotas.admit("alice"))
    clock.now += 100  # a long pause refills to the burst, never beyond
    for _ in range(3):
        leases.append(quotas.admit("alice"))
    with pytest.raises(QuotaExceeded):
        quotas.admit("alice")


def test_the_burst_defaults_to_one_second_of_the_rate():
    assert ClientQuotas("m", ClientSettings(rate=2.5)).burst == 3
    assert ClientQuotas("m", ClientSettings(rate=0.1)).burst == 1


def test_a_concurrency_cap_counts_requests_inside_until_released():
    quotas = ClientQuotas("digits", ClientSettings(max_concurrency=2), Clock())
    first, second = quotas.admit("alice"), quotas.admit("alice")
    with pytest.raises(QuotaExceeded, match="2 requests in model 'digits'.*max_concurrency 2") as info:
        quotas.admit("alice")
    assert info.value.retry_ms is None  # the transport estimates a hint as for any overload
    quotas.admit("bob")
    first.release()
    quotas.admit("alice")
    with pytest.raises(QuotaExceeded):
        quotas.admit("alice")
    second.release()


def test_identities_beyond_the_cap_are_forgotten_least_recent_first_but_never_with_requests_inside():
    clock = Clock()
    quotas = ClientQuotas("digits", ClientSettings(rate=1.0, burst=1, max_identities=2), clock)
    busy = quotas.admit("a")  # inside, and the least recently seen
    quotas.admit("b").release()
    quotas.admit("c").release()  # over the cap: b goes, not a
    assert len(quotas) == 2
    with pytest.raises(QuotaExceeded):
        quotas.admit("a")  # still known: its empty bucket and its request inside
    quotas.admit("b").release()  # forgotten: back with a full bucket (and c goes)
    assert len(quotas) == 2
    with pytest.raises(QuotaExceeded):
        quotas.admit("b")
    busy.release()
    for name in ("d", "e", "f"):
        quotas.admit(name).release()
    assert len(quotas) == 2


def test_a_model_leaves_limits_unset_to_the_servers_defaults_and_a_reload_keeps_the_buckets():
    book = QuotaBook(ClientSettings(rate=1.0, burst=1, max_concurrency=5), clock=Clock())
    assert book.admit("digits", ClientSettings(), "alice") is not None
    with pytest.raises(QuotaExceeded, match="rate 1 requests/s"):
        book.admit("digits", ClientSettings(), "alice")  # the same settings again (a reload): same bucket
    own = ClientSettings(rate=50.0, burst=100)
    assert book.of("digits", own).rate == 50.0 and book.of("digits", own).max_concurrency == 5
    assert book.admit("digits", own, "alice") is not None  # changed limits: new buckets
    assert QuotaBook().admit("digits", ClientSettings(), "alice") is None  # nothing set: unlimited, no state


def test_the_clients_table_is_read_and_checked():
    def read(table):
        return read_client_settings(TableReader(Path("config.toml"), table, "clients."))

    assert read({}) == ClientSettings()
    assert read({"rate": 50, "burst": 100, "max_concurrency": 8}) == ClientSettings(
        rate=50.0, burst=100, max_concurrency=8
    )
    for bad in ({"rate": 0}, {"rate": "fast"}, {"burst": 0}, {"max_concurrency": -1}, {"rat": 5}):
        with pytest.raises(ConfigError, match="clients."):
            read(bad)


def test_the_serve_flags_set_the_servers_defaults():
    args = build_parser().parse_args(
        ["serve", "--client-rate", "20", "--client-burst", "40", "--client-max-concurrency", "4"]
    )
    assert (args.client_rate, args.client_burst, args.client_max_concurrency) == (20.0, 40, 4)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--client-rate", "0"])


def _with_quota(tmp_path, **clients):
    return edit_config(copy_demo(tmp_path), lambda table: table.__setitem__("clients", clients))


def test_a_client_over_its_rate_is_refused_with_a_hint_before_decoding_and_others_are_served(
    tmp_path, tokens_file, held_out
):
    # 0.01 requests/s: no token comes back within the test, however slow the host.
    repository = _with_quota(tmp_path, rate=0.01, burst=2)
    x = held_out[0][:1]
    with running_gateway(repository, auth_tokens=tokens_file) as srv:
        with triton.InferenceServerClient(srv.grpc_url) as client:
            for _ in range(2):
                infer(client, x, headers=bearer(ALICE))
            error = refused(infer, client, x, headers=bearer(ALICE))
            assert error.status() == "StatusCode.RESOURCE_EXHAUSTED", error
            assert "client 'alice' exceeds its rate limit for model 'digits'" in error.message()
            infer(client, x, headers=bearer(BOB))
        with grpc.insecure_channel(srv.grpc_url) as channel:
            # Undecodable contents: refused for the quota, not INVALID_ARGUMENT (no work was done for it).
            message = pb.ModelInferRequest(model_name="digits")
            message.inputs.add(name="input", datatype="FP32", shape=[1, 1, 16, 16])
            message.raw_input_contents.append(b"abc")
            with pytest.raises(grpc.RpcError) as info:
                channel.unary_unary(INFER)(
                    message.SerializeToString(), timeout=30, metadata=(("authorization", f"Bearer {ALICE}"),)
                )
        error = info.value
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
        hint = pushback_ms(error)
        # The bucket's own hint: about 100 s until one token (1 / 0.01 per s), minus the test's time.
        assert 50_000 <= hint <= 100_000 and f"retry in {hint} ms" in error.details()
        assert requests_total(srv, "RESOURCE_EXHAUSTED") == 2 and requests_total(srv, "OK") == 3


def test_the_servers_concurrency_default_caps_each_client_on_its_own(tmp_path, tokens_file, gate, held_out):
    """One batch at a time, held by the gate: alice's first request runs, her second is refused
    (cap 1), bob's is still queued; once the gate opens alice's place is hers again."""
    x = np.ascontiguousarray(held_out[0][:1])
    with (
        running_gateway(
            gated_repository(tmp_path), auth_tokens=tokens_file, client_limits=ClientSettings(max_concurrency=1)
        ) as srv,
        gate,
        triton.InferenceServerClient(srv.grpc_url) as client,
    ):
        answers: list = []
        client.async_infer(
            "digits", [infer_input(x)], lambda result, error: answers.append(("alice", error)), headers=bearer(ALICE)
        )
        assert gate.entered.wait(10)
        error = refused(infer, client, x, headers=bearer(ALICE))
        assert error.status() == "StatusCode.RESOURCE_EXHAUSTED", error
        assert "max_concurrency 1" in error.message() and "retry in" in error.message()
        client.async_infer(
            "digits", [infer_input(x)], lambda result, error: answers.append(("bob", error)), headers=bearer(BOB)
        )
        wait_until(lambda: queue_depth(srv) == 1)
        gate.open()
        wait_until(lambda: len(answers) == 2)
        assert sorted(answers) == [("alice", None), ("bob", None)]
        infer(client, x, headers=bearer(ALICE))
        assert requests_total(srv, "RESOURCE_EXHAUSTED") == 1
