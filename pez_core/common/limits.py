"""Bounds on what one input may cost, and the cancel hook long loops ask.

Every text reaches CLIP's BPE tokenizer; ``check_text`` refuses texts above ``MAX_TEXT_CHARS`` before
any work is done, naming the input. Long loops (tokenizing, downloading) call ``check_interrupt``;
a host application (ComfyUI) installs its cancel check with ``set_interrupt_check``.
"""
from __future__ import annotations

from typing import Callable

from .errors import PezError

# ~12,000 CLIP tokens (160 chunks of 75): far above any prompt, word bank or blocklist a person writes,
# and even a single 50,000-letter word tokenizes in under half a second (benchmarks/hostile.py measures it)
MAX_TEXT_CHARS = 50_000

_interrupt_check: Callable[[], None] | None = None


def set_interrupt_check(check: Callable[[], None] | None) -> None:
    """``check()`` raises to cancel (e.g. ComfyUI's ``throw_exception_if_processing_interrupted``)."""
    global _interrupt_check
    _interrupt_check = check


def check_interrupt() -> None:
    if _interrupt_check is not None:
        _interrupt_check()


def check_text(text, name: str = "the text") -> str:
    """``text`` if it is a string of at most ``MAX_TEXT_CHARS`` characters; a PezError naming ``name`` if not."""
    if not isinstance(text, str):
        raise PezError(f"{name} must be text, got {type(text).__name__}")
    if len(text) > MAX_TEXT_CHARS:
        raise PezError(f"{name} has {len(text):,} characters, over the limit of {MAX_TEXT_CHARS:,} "
                       f"(about {MAX_TEXT_CHARS // 4:,} CLIP tokens); shorten it")
    return text
