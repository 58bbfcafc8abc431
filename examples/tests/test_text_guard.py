"""guard_examples.text_guard and the plans built on it choose which text models to build before
building any: a name that is none of them is refused at once, never after minutes of calibration."""

from __future__ import annotations

import pytest

from guard_examples import sentiment_plan, text_guard


def test_an_unknown_model_is_refused_before_anything_is_built(tmp_path):
    with pytest.raises(ValueError, match=r"no text model \['sentiment_typo'\]"):
        text_guard.build_repository(tmp_path / "repository", names=("sentiment", "sentiment_typo"))
    assert not (tmp_path / "repository").exists()
    with pytest.raises(SystemExit, match=r"--only \['sentiment'\]: the plan's models are"):
        sentiment_plan.write_plan(tmp_path / "plan", tmp_path / "repository", triggers_only=True, only=("sentiment",))
    assert not (tmp_path / "plan").exists()
    assert set(text_guard.MODELS) == {"sentiment", *sentiment_plan.sentiment_backdoor.BACKDOORS, "toxicity"}
