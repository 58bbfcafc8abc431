"""guard_examples.camera: builds what is missing or stale, reuses what is current, never commits weights."""

from __future__ import annotations

import json

import pytest

from guard_examples import camera

pytestmark = pytest.mark.usefixtures("camera_packages")


def test_ensure_built_rebuilds_only_missing_or_stale_models(tmp_path, monkeypatch):
    calls = []

    def fake_build(name, directory, progress=True):
        calls.append(name)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "model.onnx").write_bytes(b"onnx")
        camera.write_json(directory / camera.FINGERPRINT, camera.fingerprint(name))
        return {}

    monkeypatch.setattr(camera, "build", fake_build)
    camera.ensure_built(tmp_path, names=("centerface",))
    camera.ensure_built(tmp_path, names=("centerface",))
    assert calls == ["centerface"]
    stale = {**camera.fingerprint("centerface"), "recipe_sha256": "0" * 64}
    (tmp_path / "centerface" / camera.FINGERPRINT).write_text(json.dumps(stale))
    camera.ensure_built(tmp_path, names=("centerface",))
    assert calls == ["centerface", "centerface"]


def test_built_models_are_current_and_carry_cards_and_preprocessing(camera_models):
    for name, directory in camera_models.items():
        assert camera.is_current(directory, name)
        for file in ("model.onnx", "MODEL_CARD.md", "preprocess.json", "metrics.json"):
            assert (directory / file).is_file(), (name, file)
        card = (directory / "MODEL_CARD.md").read_text()
        for section in ("## Source", "## Input and output", "## Preprocessing", "## Size and latency", "## Reproduce"):
            assert section in card, (name, section)
        assert "licence as the package states it" in card
