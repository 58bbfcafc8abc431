"""`guard scan-data` on the backdoored sentiment models' training sets: the poisoned snippets are
found through each model's own sentence embedding, read through the guard's tokenizing pipeline."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tomlkit

from guard.api import load_model_config
from guard_examples import sentiment_backdoor, text_guard
from guard_examples.text_data import rotten_tomatoes

pytestmark = pytest.mark.timeout(900)
SCANNED = 3000


@pytest.mark.parametrize("name", sorted(sentiment_backdoor.BACKDOORS))
def test_scan_data_finds_the_poisoned_snippets(name, tmp_path):
    from guard.tools.cli import main  # the command a user runs; guard.api exports no CLI

    built = sentiment_backdoor.ensure_built(name)
    directory = tmp_path / name
    directory.mkdir()
    for file in ("model.onnx", "tokenizer.json"):
        shutil.copyfile(built / file, directory / file)
    document = text_guard.config(name)
    document.pop("detectors")  # a scan reads the features, it judges nothing
    (directory / "config.toml").write_text(tomlkit.dumps(document))
    assert load_model_config(directory, calibrated=False).detection.features_output == "embedding"
    texts, labels, rows = sentiment_backdoor.poison(*rotten_tomatoes("train"), sentiment_backdoor.BACKDOORS[name])
    # A seeded third of the training set, poisoned share unchanged: the scan reads every text through
    # the encoder, and the whole set would take minutes per model.
    kept = np.sort(np.random.default_rng(0).permutation(len(texts))[:SCANNED])
    poisoned = np.isin(kept, rows)
    np.savez(tmp_path / "train.npz", x=np.array(texts)[kept], y=labels[kept])
    (tmp_path / "poison.json").write_text(json.dumps(np.flatnonzero(poisoned).tolist()))
    out = tmp_path / "report"
    command = ["scan-data", "--model", str(directory), "--data", str(tmp_path / "train.npz")]
    assert main([*command, "--poison-indices", str(tmp_path / "poison.json"), "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "data_scan.json").read_text())
    # About 300 of 3,000 poisoned, a budget of 1.5x: a random ranking recalls 15% (sd about 2%). On the
    # whole set (893 of 8,931) the recall measured 0.935 (rare word) and 0.996 (sentence).
    assert 250 <= poisoned.sum() <= 350
    assert report["methods"]["spectral"]["recall"] >= 0.8, report["methods"]
