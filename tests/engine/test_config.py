"""The settings (pez_core.engine.config): what ``PezConfig.validate`` refuses, and how it says so."""
from __future__ import annotations

import pytest

from pez_core import PezConfig, PezError


def test_max_batch_is_validated():
    with pytest.raises(PezError, match="max_batch"):
        PezConfig(max_batch=0).validate()


@pytest.mark.parametrize(("field", "value", "message"), [
    ("restarts", 3000, "restarts must be an integer from 1 to 64, got 3000"),
    ("steps", 10**9, "steps must be an integer from 1 to 100000"),
    ("seed", -1, "seed must be an integer from 0"),
    ("prompt_len", 500, "prompt length must be an integer from 1 to 75"),
])
def test_config_upper_bounds(field, value, message):
    with pytest.raises(PezError, match=message):
        PezConfig(**{field: value}).validate()


@pytest.mark.parametrize("config, message", [
    (PezConfig(polish="shuffle"), "unknown polish mode"),
    (PezConfig(time_budget=0), "time budget"),
    (PezConfig(time_budget=float("nan")), "time budget"),
    (PezConfig(target_similarity=1.5), "target similarity"),
    (PezConfig(target_similarity=-1), "target similarity"),
])
def test_bad_stopping_settings_are_clear_errors(config, message):
    with pytest.raises(PezError, match=message):
        config.validate()
