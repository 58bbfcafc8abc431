"""`[clients] match = "distance"` through a live gateway: `guard calibrate --model` derives the
distance from clean data, a probe that breaks every hash the attacker's replica checks is flagged by
distance and not by hashes, benign clients are not flagged, and the settings that cannot work are
refused with the key or the reason named."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from benchmarks.adaptive_queries import Evasion, Replica
from guard.detection.queries import QuerySettings
from guard.detection.query_distance import embed
from guard.protocol.errors import ConfigError
from guard.serving.model_config import load_model_config
from guard.tools.calibrate_dir import _split, calibrate_directory
from guard.tools.clean_data import load_references
from tests.conftest import DEMO_REPOSITORY, copy_demo, running_gateway
from tests.serving.helpers import edit_config
from tests.serving.test_query_attacks_live import TOKENS, ask, boundary_cluster

DISTANCE = {"query_attack": "flag", "match": "distance"}
CALIBRATION = DEMO_REPOSITORY.parents[0] / "data" / "calibration.npz"


def calibrated_repository(tmp_path):
    """The demo with [clients] matching by distance, calibrated as a user would."""
    repository = edit_config(copy_demo(tmp_path), lambda t: t.__setitem__("clients", dict(DISTANCE)))
    model = repository / "digits"
    report = calibrate_directory(model, load_references(CALIBRATION, load_model_config(model, calibrated=False).inputs))
    return repository, report


@contextlib.contextmanager
def serving(repository, **settings):
    tokens = "\n".join(f"{name}:{token}" for name, token in TOKENS.items())
    with running_gateway(repository, auth_tokens_text=tokens, **settings) as server:
        yield triton.InferenceServerClient(server.grpc_url)


@pytest.fixture(scope="module")
def distance_repository(tmp_path_factory):
    return calibrated_repository(tmp_path_factory.mktemp("distance"))


def test_calibration_writes_the_shortest_gap_between_calibration_queries_answered_differently(distance_repository):
    repository, report = distance_repository
    distance = load_model_config(repository / "digits").clients.queries.queries.distance
    assert distance == report["query_distance"]
    samples = load_references(CALIBRATION, load_model_config(repository / "digits").inputs)
    part, _ = _split(samples, 0.3, 0)  # the rows calibration derives from (the rest is held out)
    x = part.inputs["input"]
    with serving(repository) as client:
        answers = np.array([ask(client, "dave", row)[0] for row in x])
    e = embed(x, 256).astype(np.float64)
    gaps = np.linalg.norm(e[:, None] - e[None], axis=2)
    differ = answers[:, None] != answers[None]
    same = ~differ & ~np.eye(len(x), dtype=bool)
    assert gaps[differ].min() == pytest.approx(distance, rel=1e-5)
    assert gaps[same].min() < distance  # same answers do not count: some such pairs are closer


def test_a_probe_that_breaks_every_hash_is_flagged_by_distance_not_by_hashes(tmp_path, distance_repository, held_out):
    x, y = held_out
    repository, _ = distance_repository
    with serving(repository) as client:
        rows, _ = boundary_cluster(client, x, y, count=30)
        # The attacker's replica of the hash check, as in benchmarks.adaptive_queries: each query's
        # pixels nearest a quantization edge are pushed across it until no stored print is near.
        hashes = QuerySettings()
        replica, evade = Replica(hashes, rows[0][None]), Evasion("edges", hashes, seed=0)
        sent = []
        for row in rows:
            sent.append(evade.passed(replica, row, lambda q: q))
            replica.sent(sent[-1])
        spread = max(float(np.linalg.norm(a - b)) for a in sent for b in sent)
        distance = load_model_config(repository / "digits").clients.queries.queries.distance
        assert spread < distance  # every query within the distance of every other
        verdicts = [ask(client, "attacker", q)[1] for q in sent]
        assert "query_attack" in verdicts[:10], verdicts
    plain = edit_config(copy_demo(tmp_path), lambda t: t.__setitem__("clients", {"query_attack": "flag"}))
    with serving(plain) as client:
        assert {ask(client, "attacker", q)[1] for q in sent} == {"clean"}


def test_benign_replays_and_a_static_camera_are_not_flagged_by_distance(distance_repository, held_out):
    x, _ = held_out
    repository, _ = distance_repository
    with serving(repository) as client:
        order = np.random.default_rng(0).permutation(len(x))[:150]
        assert {ask(client, "alice", x[i])[1] for i in [*order, *order[:30]]} == {"clean"}  # 30 sent twice
        rng = np.random.default_rng(1)
        frames = [np.clip(x[7] + rng.normal(0, 0.02, x[7].shape), 0, 1).astype(np.float32) for _ in range(150)]
        answers = [ask(client, "carol", f) for f in frames]
        assert len({a for a, _ in answers}) == 1 and {v for _, v in answers} == {"clean"}


def test_a_distance_is_required_at_load_and_text_models_cannot_match_by_distance(tmp_path):
    repository = edit_config(copy_demo(tmp_path), lambda t: t.__setitem__("clients", dict(DISTANCE)))
    with pytest.raises(ConfigError, match=r"clients\.distance.*guard calibrate --model"):
        load_model_config(repository / "digits")
    load_model_config(repository / "digits", calibrated=False)  # what calibration reads: accepted


def test_the_shared_store_refuses_a_distance_model_rather_than_answer_unchecked(distance_repository, held_out):
    pytest.importorskip("redis")
    x, _ = held_out
    repository, _ = distance_repository
    # The store is never reached: the model's settings are refused first (port 9 has no server).
    with serving(repository, query_store="redis://127.0.0.1:9/0") as client:
        with pytest.raises(InferenceServerException) as caught:
            ask(client, "erin", x[0])
    assert caught.value.status() == "StatusCode.FAILED_PRECONDITION"
    assert "distance" in caught.value.message() and "digits" in caught.value.message()


def test_a_text_model_cannot_match_queries_by_distance(tmp_path):
    try:
        from tests.text.model import train, write_config, write_model
    except (ImportError, AssertionError) as exc:  # the model's tokenizer ships in a package of its own
        pytest.skip(f"no text model: {exc}")
    write_model(tmp_path / "bag", train(epochs=1))
    write_config(tmp_path / "bag", detectors='\n[clients]\nquery_attack = "flag"\nmatch = "distance"\ndistance = 1.0\n')
    with pytest.raises(ConfigError, match=r"clients\.match.*characters"):
        load_model_config(tmp_path / "bag")
    write_config(tmp_path / "bag", detectors='\n[clients]\nquery_attack = "flag"\nmatch = "hashes"\n')
    load_model_config(tmp_path / "bag")


def colour_field(seed: int, side: int = 48) -> np.ndarray:
    """A smooth random colour field (JPEG keeps it): small_cnn answers such fields differently."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:side, 0:side] / side
    weights = rng.uniform(0, 1, (3, 3))
    field = np.stack([w[0] * rows + w[1] * cols + w[2] * rows * cols for w in weights], -1)
    return np.clip(field / max(field.max(), 1e-6) * 255, 0, 255).astype(np.uint8)


def test_an_image_model_matches_its_thumbnails_by_the_distance_calibration_derives(tmp_path):
    """The distance of a model whose clients send encoded images is derived on what the watch reads
    (each frame's thumbnail), so a frame re-encoded at another JPEG quality stays near and two
    frames the model answers differently are far (rule duplicates, one near-duplicate flags)."""
    from tests.serving.test_image_ingest import bytes_input, camera_repository, encode

    clients = {"query_attack": "flag", "match": "distance", "rule": "duplicates", "min_near": 1}
    repository = camera_repository(tmp_path, clients=clients)
    folder = tmp_path / "clean"
    folder.mkdir()
    for seed in range(80):
        (folder / f"{seed:03d}.png").write_bytes(encode(colour_field(seed), "PNG"))
    model = repository / "cam"
    report = calibrate_directory(model, load_references(folder, load_model_config(model, calibrated=False).inputs))
    assert report["query_distance"] > 0

    def ask(client, who: str, data: bytes) -> tuple[int, str]:
        result = client.infer("cam", [bytes_input([data])], headers={"authorization": f"Bearer {TOKENS[who]}"})
        return int(result.as_numpy("logits").argmax()), result.get_response().parameters[
            "guard_client_verdict"
        ].string_param

    with serving(repository) as client:
        answers = {seed: ask(client, "scout", encode(colour_field(100 + seed), "PNG"))[0] for seed in range(12)}
        a = next(iter(answers))
        b = next(s for s, answer in answers.items() if answer != answers[a])
        first = encode(colour_field(100 + a), "PNG")
        assert ask(client, "alice", first)[1] == "clean"
        assert ask(client, "alice", encode(colour_field(100 + b), "PNG"))[1] == "clean"  # answered apart: far
        assert ask(client, "bob", first)[1] == "clean"
        assert ask(client, "bob", encode(colour_field(100 + a)))[1] == "query_attack"  # as JPEG: near


def test_a_free_dimension_cannot_match_queries_by_distance(tmp_path):
    def free_width(table):
        table["inputs"][0]["shape"] = [1, 16, -1]
        table["clients"] = {**DISTANCE, "distance": 1.0}

    repository = edit_config(copy_demo(tmp_path), free_width)
    with pytest.raises(ConfigError, match=r"clients\.match.*'input' has a free dimension"):
        load_model_config(repository / "digits", calibrated=False)
