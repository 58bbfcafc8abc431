"""Query-attack state shared by replicas (`guard serve --query-store`; guard.serving.shared_queries):
two gateways on one real Redis, real tritonclient calls, one attacker spreading its queries."""

from __future__ import annotations

import contextlib
import itertools

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from guard.detection.queries import QuerySettings, fingerprints
from tests.conftest import copy_demo, running_gateway
from tests.security.redis_server import free_port, redis_server
from tests.serving.helpers import edit_config
from tests.serving.test_query_attacks_live import CLIENTS, TOKENS, ask, boundary_cluster


@pytest.fixture(scope="module")
def store_url():
    with redis_server() as url:
        yield url


@contextlib.contextmanager
def replicas(tmp_path, store: str | None, count: int = 2, **clients):
    """`count` gateways serving one repository copy (as replicas of one Deployment would)."""
    repository = edit_config(
        copy_demo(tmp_path), lambda t: t.__setitem__("clients", {**CLIENTS, "query_attack": "flag", **clients})
    )
    tokens = "\n".join(f"{name}:{token}" for name, token in TOKENS.items())
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(running_gateway(repository, auth_tokens_text=tokens, query_store=store))
            for _ in range(count)
        ]
        yield [triton.InferenceServerClient(s.grpc_url) for s in servers]


def probe(rows: list[np.ndarray], answers: list[int]) -> list[np.ndarray]:
    """Three near-duplicates answered X, Y, X: the third has two near-duplicates and two answer
    changes, which the rule (min_near 2, min_changes 2) flags; no two of them alone are flagged."""
    settings = QuerySettings(levels=CLIENTS["levels"], window=CLIENTS["window"], threshold=CLIENTS["threshold"])
    prints = fingerprints(np.stack(rows), settings)

    def near(i: int, j: int) -> bool:
        return len(np.intersect1d(prints[i][prints[i] != 0], prints[j])) >= settings.threshold

    for i, j, k in itertools.permutations(range(len(rows)), 3):
        if answers[i] == answers[k] != answers[j] and near(i, j) and near(i, k) and near(j, k):
            return [rows[i], rows[j], rows[k]]
    raise AssertionError("the boundary cluster holds no three near-duplicates answered X, Y, X")


def test_an_attacker_spread_over_two_replicas_is_flagged_as_one_process_would(tmp_path, held_out, store_url):
    x, y = held_out
    with replicas(tmp_path / "shared", store_url) as (a, b):
        three = probe(*boundary_cluster(a, x, y))
        verdicts = [ask(c, "attacker", r)[1] for c, r in zip((a, b, a), three, strict=True)]
        assert verdicts == ["clean", "clean", "query_attack"]
        # The flag is the store's: the other replica marks the identity's next answer too, and
        # only that identity's.
        assert ask(b, "attacker", x[3])[1] == "query_attack" and ask(b, "bob", x[3])[1] == "clean"
    # Without the store each replica sees one or two of the three, and neither flags.
    with replicas(tmp_path / "apart", None) as (a, b):
        three = probe(*boundary_cluster(a, x, y))
        assert [ask(c, "mallory", r)[1] for c, r in zip((a, b, a), three, strict=True)] == ["clean"] * 3


def test_block_on_one_replica_refuses_on_the_other(tmp_path, held_out, store_url):
    x, y = held_out
    with replicas(tmp_path / "scout", None, count=1) as (scout,):  # flag mode: the scout is not refused
        three = probe(*boundary_cluster(scout, x, y))
    with replicas(tmp_path / "block", store_url, query_attack="block", block_seconds=30.0) as (a, b):
        ask(a, "peggy", three[0]), ask(b, "peggy", three[1])
        for client in (a, b):
            with pytest.raises(InferenceServerException) as refused:
                ask(client, "peggy", three[2] if client is a else x[3])
            assert (
                refused.value.status() == "StatusCode.PERMISSION_DENIED" and "query attack" in refused.value.message()
            )


def test_the_store_keeps_digests_not_identities_and_lets_idle_state_expire(tmp_path, held_out, store_url):
    import redis

    x, _ = held_out
    store = redis.Redis.from_url(store_url)
    store.flushdb()  # only this test's keys: the module's other tests keep theirs for 600 s
    with replicas(tmp_path, store_url, count=1, window_seconds=120.0) as (a,):
        for i in range(3):
            ask(a, "carol", x[i])
    keys = [k.decode() for k in store.scan_iter("guard:q:*")]
    assert keys and not any("carol" in k or "digits" in k for k in keys)
    assert all(0 < store.ttl(k) <= 120 for k in keys)  # gone once the identity is idle for the window


def test_a_store_that_does_not_answer_fails_the_check_not_the_server(tmp_path, held_out):
    x, _ = held_out
    with replicas(tmp_path, f"redis://127.0.0.1:{free_port()}/0", count=1) as (a,):
        for _ in range(2):  # and again: the gateway keeps serving
            with pytest.raises(InferenceServerException) as failed:
                ask(a, "alice", x[0])
            assert failed.value.status() == "StatusCode.UNAVAILABLE"
            assert (
                "query-attack store did not answer" in failed.value.message()
                and "redis://" not in failed.value.message()
            )
        assert a.is_server_live() and a.is_model_ready("digits")


def test_the_shared_store_matches_as_the_in_process_one_does(store_url):
    """The same stream, with few entries and a short window so that both bounds bite: the Lua step
    and guard.detection.queries give the same near-duplicates, answer changes and flags."""
    import asyncio

    from guard.detection.queries import QueryStore
    from guard.serving.shared_queries import SharedQueryStore, connect

    settings = QuerySettings(levels=5, window=12, threshold=30, min_near=2, min_changes=2, max_entries=6)
    settings = QuerySettings(**{**settings.__dict__, "window_seconds": 5.0})
    rng = np.random.default_rng(0)
    centres = rng.uniform(0, 1, (2, 256))
    stream = []
    for t in range(60):
        c = int(rng.integers(0, 2))
        row = np.clip(centres[c] + rng.normal(0, 0.005, 256), 0, 1)[None]
        stream.append((row, np.array([int(rng.integers(0, 2))]), t * 0.5 + (30.0 if t >= 40 else 0.0)))
    local = QueryStore(settings)
    expected = [local.observe("eve", fingerprints(r, settings), a, now) for r, a, now in stream]

    async def shared() -> list:
        client = connect(store_url)
        store = SharedQueryStore(client, "equivalence", settings)
        try:
            return [(await store.observe("eve", fingerprints(r, settings), a, now))[0] for r, a, now in stream]
        finally:
            await client.aclose()

    got = asyncio.run(shared())
    assert got == expected
    assert any(m[0].flagged for m in expected)
    for bound in ({"max_entries": 1000}, {"window_seconds": 1e6}):  # each bound changes what is matched
        loose = QueryStore(QuerySettings(**{**settings.__dict__, **bound}))
        assert [loose.observe("eve", fingerprints(r, settings), a, now) for r, a, now in stream] != expected


def test_models_whose_inputs_are_not_fingerprinted_never_ask_the_store():
    """Every built-in input kind is fingerprinted (text as its characters): with every model watched
    (--query-attack block) and the store down, their requests are refused, since they are checked.
    A preprocessor that offers nothing to read (a plugin's kind without query_rows) is not watched,
    so its requests go on."""
    import asyncio
    from types import SimpleNamespace

    from guard.detection.preprocess import PreprocessSettings
    from guard.serving.query_watch import QueryAttackSettings, QueryWatches
    from guard.serving.shared_queries import QueryStoreUnavailable

    def model(kind: str):
        clients = SimpleNamespace(queries=QueryAttackSettings(query_attack="block"))
        preprocess = PreprocessSettings(kind, "x", "y", {}) if kind else SimpleNamespace(fingerprinted=False)
        return SimpleNamespace(name=kind or "plugin", clients=clients, preprocess=preprocess)

    async def check(kind: str) -> None:
        watches = QueryWatches(store_url=f"redis://127.0.0.1:{free_port()}/0")
        try:
            await watches.check(model(kind), "alice")
        finally:
            await watches.close()

    asyncio.run(check(""))
    for kind in ("text", "strings", "images", "frames"):
        with pytest.raises(QueryStoreUnavailable):
            asyncio.run(check(kind))
