"""``tiny_dir`` and ``tiny``: a random-weight tiny GPT-2 (``tiny_lm.write_random_lm``), written and loaded
once per test module."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pez_core import lm as L
from tiny_lm import write_random_lm


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return write_random_lm(tmp_path_factory.mktemp("tiny-gpt2"), seed=0)


@pytest.fixture(scope="module")
def tiny(tiny_dir) -> L.LanguageModel:
    torch.set_num_threads(1)
    return L.load_lm(tiny_dir, device="cpu")
