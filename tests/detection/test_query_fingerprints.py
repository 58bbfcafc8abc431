"""guard.detection.queries: fingerprints, the bounded per-identity store and the match rule."""

from __future__ import annotations

import dataclasses

import numpy as np

from guard.detection.queries import QuerySettings, QueryStore, fingerprints, keys, shared
from tests.conftest import ROOT, demo_split

SETTINGS = QuerySettings(levels=5, window=12, threshold=30, min_near=2, min_changes=2)


def prints_of(x: np.ndarray, settings: QuerySettings = SETTINGS) -> np.ndarray:
    return fingerprints(x, settings)


def overlap(a: np.ndarray, b: np.ndarray) -> int:
    return int(shared(a[None], (a[None] & np.uint64(0xFFFF)).astype(np.uint16), b, 0)[0])


def observe(store: QueryStore, identity: str, x: np.ndarray, answer: int, now: float = 0.0):
    return store.observe(identity, prints_of(x[None]), np.array([answer]), now)[0]


def noisy(x: np.ndarray, rng: np.random.Generator, sigma: float = 0.005) -> np.ndarray:
    return np.clip(x + rng.normal(0, sigma, x.shape), 0, 1).astype(np.float32)


def test_a_window_hash_depends_on_its_values_only():
    # The same 4 values at three places: three equal windows, one distinct hash kept.
    row = np.tile(np.array([0.0, 0.3, 0.5, 0.9]), 3)[None]
    settings = dataclasses.replace(SETTINGS, window=4, top=8)
    fingerprint = fingerprints(row, settings)[0]
    kept = fingerprint[fingerprint != 0].tolist()
    assert len(kept) == len(set(kept)) == 4  # 9 windows, 4 distinct (rotations), each kept once
    moved = np.roll(row, 4, axis=1)
    assert (fingerprints(moved, settings) == fingerprint).all()


def test_noisy_copies_are_near_and_other_classes_are_not():
    x, y = demo_split("test")
    rng = np.random.default_rng(0)
    clean = prints_of(x[:60])
    copies = prints_of(noisy(x[:60], rng))
    assert min(overlap(clean[i], copies[i]) for i in range(60)) >= SETTINGS.threshold
    cross = [overlap(clean[i], clean[j]) for i in range(60) for j in range(60) if y[i] != y[j]]
    assert max(cross) < SETTINGS.threshold


def test_prefilter_counts_are_exact_at_the_threshold():
    x, _ = demo_split("test")
    rows = prints_of(x[:40])
    keys = (rows & np.uint64(0xFFFF)).astype(np.uint16)
    for i in range(0, 40, 7):
        exact = np.array([len(set(r[r != 0].tolist()) & set(rows[i].tolist())) for r in rows])
        counts = shared(rows, keys, rows[i], SETTINGS.threshold)
        reached = exact >= SETTINGS.threshold
        assert (counts[reached] == exact[reached]).all() and (counts[~reached] < SETTINGS.threshold).all()


def test_a_cluster_whose_answers_flip_is_flagged_one_whose_answers_hold_is_not():
    x, _ = demo_split("test")
    rng = np.random.default_rng(1)
    static, probe = QueryStore(SETTINGS), QueryStore(SETTINGS)
    held = [observe(static, "camera", noisy(x[0], rng), 3) for _ in range(200)]
    assert not any(m.flagged for m in held) and held[-1].near >= 100
    flips = [observe(probe, "attacker", noisy(x[0], rng), 3 + i % 2) for i in range(4)]
    assert [m.flagged for m in flips] == [False, False, True, True]
    assert flips[2].near == 2 and flips[2].changes == 2


def test_queries_that_are_not_near_duplicates_never_flag():
    x, y = demo_split("test")
    store = QueryStore(SETTINGS)
    assert not any(observe(store, "replay", x[i], int(y[i] + i) % 10).flagged for i in range(len(x)))


def test_rule_duplicates_flags_repetition_alone():
    x, _ = demo_split("test")
    store = QueryStore(dataclasses.replace(SETTINGS, rule="duplicates", min_near=3))
    rng = np.random.default_rng(2)
    assert [observe(store, "c", noisy(x[0], rng), 1).flagged for _ in range(5)] == [False] * 3 + [True] * 2


def test_identities_never_see_each_others_queries():
    x, _ = demo_split("test")
    store, rng = QueryStore(SETTINGS), np.random.default_rng(3)
    for i in range(10):  # the same cluster, answers split by identity: each sees one answer only
        assert not observe(store, "a" if i % 2 else "b", noisy(x[0], rng), i % 2).flagged


def test_entries_per_identity_and_identities_are_bounded():
    x, _ = demo_split("test")
    settings = dataclasses.replace(SETTINGS, max_entries=5, max_identities=3)
    store, rng = QueryStore(settings), np.random.default_rng(4)
    for _ in range(20):
        observe(store, "a", noisy(x[0], rng), 1)
    assert store.entries("a") == 5
    first = observe(store, "a", noisy(x[0], rng), 2)
    assert first.near == 5 and not first.flagged  # one change so far
    assert observe(store, "a", noisy(x[0], rng), 1).flagged  # a full ring still matches its newest entries
    for name in ("b", "c", "d"):
        observe(store, name, x[1], 1)
    assert len(store) == 3 and store.entries("a") == 0  # least recently seen, dropped first
    observe(store, "b", x[2], 1)  # b seen again: c is now the least recently seen
    observe(store, "e", x[3], 1)
    assert store.entries("b") == 2 and store.entries("c") == 0 and store.entries("d") == 1
    assert store.bytes_per_entry() == settings.top * 10 + 24
    # A ring that grows as queries come (16, 32, then 40) keeps every one of them, then wraps.
    store = QueryStore(dataclasses.replace(SETTINGS, max_entries=40))
    near = [observe(store, "a", noisy(x[0], rng), 1).near for _ in range(45)]
    assert near == list(range(40)) + [40] * 5 and store.entries("a") == 40


def test_queries_older_than_the_window_no_longer_count():
    x, _ = demo_split("test")
    settings = dataclasses.replace(SETTINGS, window_seconds=10.0)
    rng = np.random.default_rng(5)
    for age, flagged in ((9.0, True), (11.0, False)):
        store = QueryStore(settings)
        observe(store, "a", noisy(x[0], rng), 1, now=0.0)
        observe(store, "a", noisy(x[0], rng), 2, now=0.0)
        assert observe(store, "a", noisy(x[0], rng), 1, now=age).flagged is flagged
        assert store.entries("a") == (3 if flagged else 1)  # an expired identity's queries are freed
    # Expiry per entry too, not only of a whole identity: an older entry among newer ones.
    store = QueryStore(settings)
    observe(store, "a", noisy(x[0], rng), 2, now=0.0)
    observe(store, "a", noisy(x[0], rng), 1, now=5.0)
    observe(store, "a", noisy(x[0], rng), 1, now=12.0)
    # Live: 1, 1 then 2, one change; with the entry of 0.0 still counted: 2, 1, 1, 2, two changes.
    assert not observe(store, "a", noisy(x[0], rng), 2, now=12.0).flagged


REVIEW = "A warm, funny and touching film that never loses its way, with a lead who carries every scene."


def test_a_texts_fingerprint_reads_its_characters_whatever_it_was_batched_with():
    """Text queries are symbols (code points): a one-character edit stays near, another review is
    far, case and spacing alone change nothing, and a text's fingerprint is the same alone or
    padded beside a longer text (no window reaches into the padding)."""
    from guard.detection.texts import symbol_rows

    settings = QuerySettings()
    texts = [
        REVIEW,
        REVIEW.replace("funny", "fnuny"),  # one swap, as a character attack makes
        REVIEW.upper().replace(" ", "   "),
        "A tedious, lifeless mess of a movie that wastes a good cast and goes nowhere at all.",
        REVIEW + " " + REVIEW,  # the longest row: the others are padded
    ]
    prints = fingerprints(symbol_rows(texts), settings)
    counts = shared(prints, keys(prints), prints[0], 0)
    assert counts[1] >= settings.threshold and counts[2] == settings.top and counts[3] < 5
    np.testing.assert_array_equal(fingerprints(symbol_rows([REVIEW]), settings)[0], prints[0])
    # A text shorter than one window has no hash: it is never anyone's near-duplicate.
    assert not fingerprints(symbol_rows(["Meh.", REVIEW]), settings)[0].any()


def test_symbols_are_code_points_plus_one_with_zero_padding():
    from guard.detection.texts import symbol_rows

    rows = symbol_rows(["Ab\u00e9", "x"])
    assert rows.tolist() == [[ord("a") + 1, ord("b") + 1, ord("\u00e9") + 1], [ord("x") + 1, 0, 0]]


def test_the_documented_defaults_are_the_served_ones():
    """docs/query-attacks.md's table of [clients] keys states every default a model gets; the
    settings' own defaults must be those (the benchmarks measure the documented ones)."""
    import tomllib

    from guard.serving.query_watch import QueryAttackSettings

    rows = {}
    for line in (ROOT / "docs" / "query-attacks.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`") and cells[0].endswith("`"):
            rows[cells[0].strip("`")] = cells[1].strip("`")
    served = {**dataclasses.asdict(QuerySettings()), **dataclasses.asdict(QueryAttackSettings())}
    served.pop("queries")
    assert set(rows) == set(served)
    for key, text in rows.items():
        value = 0.0 if text == "none" else tomllib.loads(f"v = {text if text[0] in '[0123456789' else repr(text)}")["v"]
        expected = served[key]
        assert (list(expected) if isinstance(expected, tuple) else expected) == value, key


def test_a_text_as_long_as_one_window_has_one_hash_and_each_longer_one_more():
    from guard.detection.texts import symbol_rows

    settings = QuerySettings(window=12, top=50)
    text = "abcdefghijklmnopqrstuvwxyz"
    for length in (11, 12, 13, 20):
        kept = fingerprints(symbol_rows([text[:length]]), settings)[0]
        assert np.count_nonzero(kept) == max(0, length - settings.window + 1), length


def test_a_value_range_maps_its_ends_to_the_same_levels_as_zero_to_one():
    x, _ = demo_split("test")
    plain = fingerprints(x[:20], QuerySettings())
    for low, high in ((-1.0, 1.0), (0.0, 255.0), (10.0, 12.0)):
        moved = low + x[:20].astype(np.float64) * (high - low)
        np.testing.assert_array_equal(fingerprints(moved, QuerySettings(value_range=(low, high))), plain)
