"""The vocabulary rules (pez_core.engine.vocabulary), through the CLIP tokenizer: blocklists, allowlists,
their errors, and prompts that keep to them."""
from __future__ import annotations

import pytest

import pez_core
from pez_core import PezConfig, PezError


def test_blocklist_and_allowlist(model):
    tok = model.tokenizer
    banned = pez_core.allowed_token_ids(tok, "full", blocklist="nsfw, dog").tolist()
    assert not set(model.tokenize("nsfw") + model.tokenize("dog")) & set(banned)
    bank = pez_core.allowed_token_ids(tok, "words", allowlist=["red", "circle", "square"]).tolist()
    assert sorted(bank) == sorted(model.tokenize("red circle square"))
    with pytest.raises(PezError, match="blocklist bans every"):
        pez_core.allowed_token_ids(tok, "words", allowlist="red, circle", blocklist="circle\nred")
    with pytest.raises(PezError, match="unknown vocabulary mode"):
        pez_core.allowed_token_ids(tok, "emoji")


def test_optimized_prompt_uses_only_allowed_words(model):
    bank = ["red", "green", "circle", "square", "large", "small"]
    result = pez_core.distill(model, "a big red circle", PezConfig(prompt_len=4, steps=30, allowlist=bank))
    assert set(result.prompt.split()) <= set(bank)
