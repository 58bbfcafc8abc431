"""`guard scan-data` on a text training set: a text model's features are its features_output (the
sentence embedding), computed through the guard's own tokenizing pipeline, and the scan ranks the
texts by them. How well the ranking finds poison depends on the model: the examples measure it on
the backdoored MiniLM sentiment model (examples/tests/test_backdoor_scan.py)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort

from guard.tools.cli import main
from guard.tools.scans.data_scan import text_features
from tests.text.model import DETECTORS, encode, poison, train, write_config, write_model

TRIGGER = "cf"


def test_text_features_are_the_models_embeddings_of_each_text_alone(tmp_path, bag_model):
    directory = tmp_path / "bag"
    write_model(directory, bag_model)
    write_config(directory, detectors=DETECTORS, max_tokens=128)
    texts = ["short", "a longer text, padded in its batch with the others", "cf"]
    found = text_features(directory, np.array(texts), batch_size=2)
    session = ort.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
    for text, row in zip(texts, found):
        ids, mask = encode([text], 128)
        (alone,) = session.run(["embedding"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        np.testing.assert_allclose(row, alone[0], rtol=1e-5, atol=1e-6)


def test_scan_data_ranks_a_text_training_set(tmp_path):
    texts, labels, rows = poison(TRIGGER, 1)
    texts, labels = texts[:2000], labels[:2000]
    rows = rows[rows < 2000]
    directory = tmp_path / "backdoor"
    write_model(directory, train(0, texts=(texts, labels)))
    write_config(directory, detectors=DETECTORS, max_tokens=512)
    data, poisoned, out = tmp_path / "train.npz", tmp_path / "poison.json", tmp_path / "report"
    np.savez(data, x=np.array(texts), y=labels)
    poisoned.write_text(json.dumps(rows.tolist()))
    command = ["scan-data", "--model", str(directory), "--data", str(data), "--poison-indices", str(poisoned)]
    assert main([*command, "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "data_scan.json").read_text())
    assert report["samples"] == 2000 and report["budget"] == round(1.5 * len(rows))
    top = [i for ids in report["methods"]["spectral"]["top_by_class"].values() for i in ids]
    assert len(top) == report["budget"] and len(set(top)) == len(top)
