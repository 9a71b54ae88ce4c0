"""Which tokens a prompt may use, for every model family: a mode, a blocklist and an allowlist (word bank).

Modes: ``full`` (every token but the special ones), ``ascii`` (tokens that read as printable ASCII),
``words`` (whole words). What a mode keeps and how a word becomes tokens is the family's business (its
tokenizer); combining them, and the errors, are here once.
"""
from __future__ import annotations

import re
from typing import Callable, Iterable

import torch

from ..common.errors import PezError
from ..common.limits import check_text

VOCAB_MODES = ("full", "ascii", "words")


def parse_words(words: str | Iterable[str] | None) -> list[str]:
    """Words from a comma/newline separated string or an iterable of strings."""
    if words is None:
        return []
    if isinstance(words, str):
        words = re.split(r"[,\n]", words)
    return [w.strip() for w in words if w and w.strip()]


def check_vocab_mode(mode: str) -> None:
    if mode not in VOCAB_MODES:
        raise PezError(f"unknown vocabulary mode {mode!r}; choose one of {', '.join(VOCAB_MODES)}")


def _bounded(words, name: str):
    """A word list's total size is bounded like any text, before it is split (naming the list)."""
    if words is not None and not isinstance(words, str):
        words = list(words)
        check_text("\n".join(w for w in words if isinstance(w, str)), name)
        return words
    return words if words is None else check_text(words, name)


def restrict_vocabulary(mode: str, blocklist, allowlist, *, mode_ids: Callable[[str], Iterable[int]],
                        word_ids: Callable[[list[str], str], set[int]], special_ids: set[int]) -> torch.Tensor:
    """Sorted ids a prompt may use; raises if nothing is left.

    ``mode_ids(mode)`` are the ids a mode keeps, ``word_ids(words, name)`` the ids of a word list (``name``
    names it in errors), ``special_ids`` what an allowlist never brings in. A blocklist bans every token of its
    words; an allowlist replaces the mode by the tokens of its words."""
    check_vocab_mode(mode)
    bank = parse_words(_bounded(allowlist, "the allowlist"))
    allowed = (word_ids(bank, "the allowlist") - special_ids) if bank else set(mode_ids(mode))
    allowed -= word_ids(parse_words(_bounded(blocklist, "the blocklist")), "the blocklist")
    if not allowed:
        raise PezError(
            "the vocabulary is empty: the blocklist bans every allowed token"
            + (" of the allowlist" if bank else f" of mode {mode!r}")
            + "; remove words from the blocklist or widen the vocabulary")
    return torch.tensor(sorted(allowed), dtype=torch.long)
