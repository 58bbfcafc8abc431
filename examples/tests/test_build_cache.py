"""The machine-wide build cache (guard_examples.build_cache) as the model recipes use it through
builds.build_atomically: a fingerprint seen before is copied, never trained again; any other
fingerprint, a cut-short entry or a cache switched off builds."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from guard_examples import build_cache
from guard_examples.builds import FINGERPRINT, build_atomically


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(build_cache.ENV, str(folder))
    return folder


class Recipe:
    """A stand-in for a model's training: counts how often it ran."""

    def __init__(self, weights: str) -> None:
        self.weights, self.runs = weights, 0

    def __call__(self, out):
        self.runs += 1
        out.mkdir(parents=True)
        (out / "model.onnx").write_text(self.weights)
        (out / "metrics.json").write_text(json.dumps({"seconds": 1.5}))
        return {"seconds": 1.5}


def test_a_second_checkout_copies_the_build_of_the_same_fingerprint(cache, tmp_path):
    recipe, stamp = Recipe("trained"), {"model": "m", "recipe_sha256": "a"}
    build_atomically(tmp_path / "one" / "m", recipe, stamp)
    metrics = build_atomically(tmp_path / "two" / "m", recipe, stamp)
    assert recipe.runs == 1
    assert (tmp_path / "two" / "m" / "model.onnx").read_text() == "trained"
    assert json.loads((tmp_path / "two" / "m" / FINGERPRINT).read_text()) == stamp
    assert metrics == {"seconds": 1.5}  # what the build measured, read back from its metrics.json
    assert not list((tmp_path / "two").glob(".*"))  # no scratch folder left behind


def test_another_fingerprint_builds(cache, tmp_path):
    recipe = Recipe("trained")
    build_atomically(tmp_path / "one" / "m", recipe, {"recipe_sha256": "a"})
    build_atomically(tmp_path / "two" / "m", recipe, {"recipe_sha256": "b"})
    build_atomically(tmp_path / "three" / "other", recipe, {"recipe_sha256": "a"})  # another model's name
    assert recipe.runs == 3


def test_uncached_and_switched_off_builds_always(cache, tmp_path, monkeypatch):
    recipe, stamp = Recipe("trained"), {"recipe_sha256": "a"}
    build_atomically(tmp_path / "one" / "m", recipe, stamp)
    build_atomically(tmp_path / "two" / "m", recipe, stamp, cached=False)  # a forced rebuild
    monkeypatch.setenv(build_cache.ENV, "off")
    build_atomically(tmp_path / "three" / "m", recipe, stamp)
    assert recipe.runs == 3


def test_an_entry_cut_short_is_never_read(cache, tmp_path):
    recipe, stamp = Recipe("trained"), {"recipe_sha256": "a"}
    build_atomically(tmp_path / "one" / "m", recipe, stamp)
    (cache / build_cache.key("m", stamp) / build_cache.COMPLETE).unlink()
    build_atomically(tmp_path / "two" / "m", recipe, stamp)
    assert recipe.runs == 2


def test_only_the_newest_entries_of_a_model_are_kept(cache, tmp_path):
    recipe = Recipe("trained")
    stamps = [{"recipe_sha256": str(n)} for n in range(build_cache.KEEP + 2)]
    for n, stamp in enumerate(stamps):
        build_atomically(tmp_path / str(n) / "m", recipe, stamp)
        # ages set, not waited for: a coarse clock would otherwise tie them
        os.utime(cache / build_cache.key("m", stamp), ns=(n * 10**9, n * 10**9))
    build_atomically(tmp_path / "other" / "m-v2", recipe, {"recipe_sha256": "0"})  # a name "m" starts
    build_atomically(tmp_path / "again" / "m", recipe, {"recipe_sha256": "new"})
    kept = sorted(p.name for p in cache.glob("m-*") if not p.name.startswith("m-v2"))
    newest = sorted(build_cache.key("m", s) for s in (stamps[-1], {"recipe_sha256": "new"}))
    assert kept == newest and len(newest) == build_cache.KEEP
    assert (cache / build_cache.key("m-v2", {"recipe_sha256": "0"})).is_dir()  # another model's entry


def test_the_entry_just_stored_is_kept_even_when_its_clock_ties_or_lags(cache, tmp_path):
    recipe = Recipe("trained")
    for n in range(build_cache.KEEP):
        build_atomically(tmp_path / str(n) / "m", recipe, {"recipe_sha256": str(n)})
        os.utime(cache / build_cache.key("m", {"recipe_sha256": str(n)}), ns=(2 * 10**18, 2 * 10**18))  # future
    build_atomically(tmp_path / "last" / "m", recipe, {"recipe_sha256": "last"})
    assert (cache / build_cache.key("m", {"recipe_sha256": "last"}) / build_cache.COMPLETE).is_file()
    assert len(list(cache.glob("m-*"))) == build_cache.KEEP


def test_an_entry_that_goes_away_while_copied_is_built_instead(cache, tmp_path, monkeypatch):
    recipe, stamp = Recipe("trained"), {"recipe_sha256": "a"}
    build_atomically(tmp_path / "one" / "m", recipe, stamp)
    copy, entry = build_cache.shutil.copytree, cache / build_cache.key("m", stamp)

    def pruned_meanwhile(source, target, **kwargs):  # another checkout removes the entry mid-copy
        copy(source, target, **kwargs)
        if Path(source) == entry:
            shutil.rmtree(source)
            (Path(target) / build_cache.COMPLETE).unlink()

    monkeypatch.setattr(build_cache.shutil, "copytree", pruned_meanwhile)
    build_atomically(tmp_path / "two" / "m", recipe, stamp)
    assert recipe.runs == 2
    assert not (tmp_path / "two" / "m" / build_cache.COMPLETE).exists()


def test_a_cache_that_cannot_be_written_only_costs_the_next_build(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(build_cache.ENV, str(blocker / "cache"))  # under a file: mkdir fails
    recipe = Recipe("trained")
    build_atomically(tmp_path / "one" / "m", recipe, {"recipe_sha256": "a"})
    assert (tmp_path / "one" / "m" / "model.onnx").read_text() == "trained"
