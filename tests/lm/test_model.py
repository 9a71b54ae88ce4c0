"""Loading language models (pez_core.lm.model): without transformers, offline, and the bundled demo LMs."""
from __future__ import annotations

import sys

import pytest

pytest.importorskip("transformers")

from pez_core import PezError  # noqa: E402
from pez_core import lm as L  # noqa: E402
from tiny_lm import needs_demo  # noqa: E402


def test_without_transformers_lm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(PezError, match=r"pip install \"pez-hard-prompts\[lm\]\""):
        L.load_lm("gpt2")


def test_offline_unknown_model_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PezError, match="cannot load language model"):
        L.load_lm(str(tmp_path / "nowhere"))


@needs_demo
def test_bundled_lms_load_through_from_pretrained_and_stay_small():
    for name in (L.DEMO_LM, L.DEMO_TRANSFER_LM):
        folder = L.bundled_lm(name)
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    size = sum(p.stat().st_size for name in (L.DEMO_LM, L.DEMO_TRANSFER_LM) for p in L.bundled_lm(name).iterdir())
    assert size < 10 * 2 ** 20
