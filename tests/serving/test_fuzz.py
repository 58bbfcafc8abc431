"""Property-based fuzzing of a live gateway (the strategies live in benchmarks/fuzz_cases.py, the
checks in benchmarks/fuzz.py, whose long mode runs 20,000 cases): structured requests with random
datatypes, shapes, contents, parameters, outputs, ids and names, the other RPCs' messages, and
byte-level mutations of valid serialized requests, on every RPC of the service over a raw gRPC channel.

Properties, for every case: no INTERNAL or UNKNOWN (every case is a client's fault, or valid), an
answer well within a deadline far above the gateway's own limits (no hang), and a correct request
sent right after still gets the right answer. One gateway serves the whole module.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from benchmarks.fuzz import Fuzzer
from benchmarks.fuzz_cases import cases, infer_requests, mutated
from tests.conftest import running_gateway

CASES = 600


@pytest.fixture(scope="module")
def fuzzer():
    with running_gateway() as srv:
        client = Fuzzer(srv.grpc_url)
        yield client
        client.close()


def check(fuzzer: Fuzzer, rpc: str, data: bytes) -> None:
    before = len(fuzzer.violations)
    fuzzer.run(rpc, data)
    assert fuzzer.violations[before:] == []


FUZZ = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(FUZZ, max_examples=CASES)
@given(case=cases())
def test_any_request_on_any_rpc(fuzzer, case):
    check(fuzzer, *case)


@settings(FUZZ, max_examples=100)
@given(message=infer_requests())
def test_structured_requests_on_a_stream(fuzzer, message):
    check(fuzzer, "ModelStreamInfer", message.SerializeToString())


@settings(FUZZ, max_examples=100)
@given(case=mutated())
def test_mutated_bytes(fuzzer, case):
    check(fuzzer, *case)


def test_the_fuzzing_reached_every_outcome(fuzzer):
    """Runs last in the module under -p no:randomly; under random order it checks what ran so far.
    The cases reach the model (OK), its contract (INVALID_ARGUMENT) and routing (NOT_FOUND)."""
    seen = {key.split(":", 1)[1] for key in fuzzer.counts}
    if sum(fuzzer.counts.values()) >= CASES:
        assert {"OK", "INVALID_ARGUMENT", "NOT_FOUND"} <= seen, fuzzer.counts
    assert not fuzzer.violations
