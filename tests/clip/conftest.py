"""Every CLIP test starts with an empty model cache and leaves no cancel hook behind (tests load and
cancel models on purpose); ``interrupt`` for tests that cancel."""
from __future__ import annotations

import pytest

import pez_core
from pez_core.common import limits


@pytest.fixture(autouse=True)
def fresh_model_cache():
    pez_core.clear_cache()
    yield
    pez_core.clear_cache()
    limits.set_interrupt_check(None)


@pytest.fixture
def interrupt():
    """``interrupt(check)`` installs the cancel hook (as ComfyUI does) for one test."""
    yield limits.set_interrupt_check
    limits.set_interrupt_check(None)
    pez_core.clear_cache()
