"""Query-attack detection through a live gateway ([clients] query_attack; guard.serving.query_watch):
real tritonclient calls, one bearer token per identity."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from guard.protocol.errors import ConfigError
from guard.protocol.settings import TableReader
from guard.serving.client_settings import read_client_settings
from guard.serving.query_watch import QueryAttackSettings
from guard.tools.cli import build_parser, main
from tests.conftest import copy_demo, running_gateway
from tests.serving.helpers import edit_config, infer_input

TOKENS = {
    "scout": "scout-0123456789abcdefghijklmn",
    "alice": "alice-0123456789abcdefghijklmn",
    "bob": "bob-ZYXWVUTSRQPONMLKJIHGFEDCBA98",
    "carol": "carol-ZYXWVUTSRQPONMLKJIHGFEDC",
    "dave": "dave-abcdefghijklmnopqrstuvwxyz",
    "erin": "erin-abcdefghijklmnopqrstuvwxyz",
    "attacker": "attacker-abcdefghijklmnopqrstuv",
    "mallory": "mallory-abcdefghijklmnopqrstuvw",
    "peggy": "peggy-abcdefghijklmnopqrstuvwxy",
}
"""One identity per role: the tests share a gateway and run in any order."""
CLIENTS = {"levels": 5, "window": 12, "threshold": 30, "min_near": 2, "min_changes": 2}
FLAGGED = {"model": "digits", "reason": "query_attack"}


def gateway(tmp_path, **clients):
    repository = edit_config(copy_demo(tmp_path), lambda t: t.__setitem__("clients", {**CLIENTS, **clients}))
    tokens = "\n".join(f"{name}:{token}" for name, token in TOKENS.items())
    return running_gateway(repository, auth_tokens_text=tokens)


def ask(client: triton.InferenceServerClient, who: str, row: np.ndarray):
    """(top-1, guard_client_verdict) of one row sent as `who`."""
    result = client.infer("digits", [infer_input(row[None])], headers={"authorization": f"Bearer {TOKENS[who]}"})
    return int(result.as_numpy("logits")[0].argmax()), result.get_response().parameters[
        "guard_client_verdict"
    ].string_param


def boundary_cluster(client, x, y, count: int = 40, seed: int = 0) -> tuple[list[np.ndarray], list[int]]:
    """What a decision-based attack sends: noisy copies of a point on the model's decision boundary
    (found by bisecting between two digits of different classes), whose answers fall on both sides.
    The scout identity sends them; the returned answers are the model's."""
    a = x[0]
    b = x[int(np.flatnonzero(y != y[0])[0])]
    low, high = 0.0, 1.0  # blend weight of b: answer of a at low, not at high
    label_a = ask(client, "scout", a)[0]
    for _ in range(12):
        mid = (low + high) / 2
        if ask(client, "scout", (1 - mid) * a + mid * b)[0] == label_a:
            low = mid
        else:
            high = mid
    point = (1 - (low + high) / 2) * a + (low + high) / 2 * b
    rng = np.random.default_rng(seed)
    rows = [np.clip(point + rng.normal(0, 0.01, point.shape), 0, 1).astype(np.float32) for _ in range(count)]
    answers = [ask(client, "scout", r)[0] for r in rows]
    assert len(set(answers)) > 1, "the cluster must straddle the boundary"
    return rows, answers


def flagged_total(server) -> float:
    return server.server.metrics.registry.get_sample_value("guard_client_flagged_total", FLAGGED) or 0.0


@pytest.fixture(scope="module")
def flag_gateway(tmp_path_factory):
    with gateway(tmp_path_factory.mktemp("flag"), query_attack="flag") as server:
        yield server, triton.InferenceServerClient(server.grpc_url)


def test_a_boundary_probe_is_flagged_and_counted_once_with_an_audit_line(flag_gateway, held_out, caplog):
    server, client = flag_gateway
    x, y = held_out
    rows, _ = boundary_cluster(client, x, y)
    before = flagged_total(server)
    caplog.set_level(logging.WARNING, logger="guard.serving.query_watch")
    verdicts = [ask(client, "attacker", r)[1] for r in rows]
    first = verdicts.index("query_attack")
    assert first < 10 and set(verdicts[:first]) == {"clean"} and set(verdicts[first:]) == {"query_attack"}
    assert flagged_total(server) == before + 1  # one flagged period, however many queries in it
    lines = [r.getMessage() for r in caplog.records if "client=attacker" in r.getMessage()]
    assert len(lines) == 1 and "query attack flagged" in lines[0] and "model=digits" in lines[0]
    assert "near=" in lines[0] and "[" not in lines[0]  # the evidence, never the input
    assert ask(client, "bob", x[5])[1] == "clean"  # another identity is not affected


def test_benign_replays_and_a_static_camera_are_not_flagged(flag_gateway, held_out):
    _, client = flag_gateway
    x, _ = held_out
    assert {ask(client, "alice", x[i])[1] for i in np.random.default_rng(0).permutation(len(x))[:150]} == {"clean"}
    rng = np.random.default_rng(1)
    scene = x[7]
    frames = [np.clip(scene + rng.normal(0, 0.02, scene.shape), 0, 1).astype(np.float32) for _ in range(150)]
    answers = [ask(client, "carol", f) for f in frames]
    assert len({a for a, _ in answers}) == 1 and {v for _, v in answers} == {"clean"}


def test_one_identity_never_flags_another(flag_gateway, held_out):
    """Half a boundary cluster each, split by answer: the stream together flips, each half holds."""
    _, client = flag_gateway
    x, y = held_out
    rows, answers = boundary_cluster(client, x[20:], y[20:], seed=3)
    side = answers[0]
    verdicts = [ask(client, "dave" if a == side else "erin", r)[1] for r, a in zip(rows, answers, strict=True)]
    assert set(verdicts) == {"clean"}


def test_block_refuses_a_flagged_identity_for_the_block_period_then_serves_it(tmp_path, held_out, flag_gateway):
    x, y = held_out
    rows, _ = boundary_cluster(flag_gateway[1], x, y)  # scouted where the scout is not blocked: the same model
    flagged_at = [ask(flag_gateway[1], "peggy", r)[1] for r in rows].index("query_attack")
    with gateway(tmp_path, query_attack="block", block_seconds=2.0) as server:
        client = triton.InferenceServerClient(server.grpc_url)
        refused = None
        for i, row in enumerate(rows):
            try:
                ask(client, "attacker", row)
            except InferenceServerException as exc:
                refused = (i, exc)
                break
        # The query that gets it flagged is refused too: its answer is what the probe was after.
        assert refused is not None and refused[0] == flagged_at < 10
        assert refused[1].status() == "StatusCode.PERMISSION_DENIED" and "query attack" in refused[1].message()
        started = time.monotonic()
        unserved = {"model": "digits", "verdict": "none", "code": "PERMISSION_DENIED"}
        before = server.server.metrics.registry.get_sample_value("guard_requests_total", unserved) or 0.0
        with pytest.raises(InferenceServerException, match="query attack"):
            ask(client, "attacker", x[9])  # any request while blocked, not only the cluster's
        # Refused before the model runs (verdict none): a blocked client costs a lookup.
        assert server.server.metrics.registry.get_sample_value("guard_requests_total", unserved) == before + 1
        assert ask(client, "bob", x[9])[1] == "clean"
        assert flagged_total(server) == 1
        time.sleep(max(0.0, 2.2 - (time.monotonic() - started)))
        assert ask(client, "attacker", x[9])[1] == "clean"


def test_the_server_flag_turns_it_on_for_a_model_that_leaves_it_off(tmp_path, held_out):
    x, _ = held_out
    repository = edit_config(copy_demo(tmp_path), lambda t: t.pop("clients", None))
    with running_gateway(repository, query_attack="flag") as server:
        result = triton.InferenceServerClient(server.grpc_url).infer("digits", [infer_input(x[:1])])
        assert result.get_response().parameters["guard_client_verdict"].string_param == "clean"
    with running_gateway(repository) as server:
        result = triton.InferenceServerClient(server.grpc_url).infer("digits", [infer_input(x[:1])])
        assert "guard_client_verdict" not in result.get_response().parameters


def test_a_real_hopskipjump_attack_is_flagged_within_its_budget(flag_gateway, held_out):
    from art.attacks.evasion import HopSkipJump
    from art.estimators.classification import BlackBoxClassifier

    _, client = flag_gateway
    x, y = held_out
    budget = 300
    verdicts: list[str] = []

    class Spent(Exception):
        pass

    def predict(batch: np.ndarray) -> np.ndarray:
        out = []
        for row in batch.astype(np.float32):
            if len(verdicts) >= budget or "query_attack" in verdicts:
                raise Spent
            label, verdict = ask(client, "mallory", row)
            verdicts.append(verdict)
            out.append(np.eye(10)[label])
        return np.stack(out)

    classifier = BlackBoxClassifier(predict, (1, 16, 16), 10, clip_values=(0.0, 1.0))
    with pytest.raises(Spent):
        HopSkipJump(classifier, targeted=False, max_iter=5, max_eval=100, init_eval=20, verbose=False).generate(
            x[40:41]
        )
    assert "query_attack" in verdicts, f"not flagged in {len(verdicts)} queries"


def test_the_clients_table_reads_and_checks_the_query_attack_keys():
    def read(table):
        return read_client_settings(TableReader(Path("config.toml"), table, "clients.")).queries

    assert read({}) == QueryAttackSettings()
    settings = read({"query_attack": "block", "block_seconds": 5, "threshold": 20, "rule": "duplicates"})
    assert (settings.query_attack, settings.block_seconds) == ("block", 5.0)
    assert (settings.queries.threshold, settings.queries.rule) == (20, "duplicates")
    bad = ({"query_attack": "on"}, {"threshold": 0}, {"threshold": 51}, {"rule": "any"}, {"value_range": [1, 0]})
    for table in bad:
        with pytest.raises(ConfigError, match=f"clients.{next(iter(table))}"):
            read(table)


def test_the_serve_flag_reaches_the_server_settings(monkeypatch):
    seen = []
    monkeypatch.setattr("guard.serving.server.serve_forever", lambda settings: seen.append(settings))
    monkeypatch.setattr("asyncio.run", lambda value: value)
    access = logging.getLogger("guard.access")
    level = access.level
    try:
        main(["serve", "--query-attack", "block"])
    finally:
        access.setLevel(level)  # guard serve quiets the access log unless --access-log
    assert seen[0].query_attack == "block"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--query-attack", "on"])
