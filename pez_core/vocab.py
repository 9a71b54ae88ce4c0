"""Which tokens PEZ may use.

Modes: ``full`` (every token but the special ones), ``ascii`` (tokens that read as
printable ASCII), ``words`` (whole lowercase alphabetic words, CLIP's ``</w>``
tokens). A blocklist bans every token of its words; an allowlist (a word bank)
restricts the search to the tokens of its words.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Iterable

import torch

from .errors import PezError

VOCAB_MODES = ("full", "ascii", "words")
_WORD = re.compile(r"[a-z]+")
_PRINTABLE = re.compile(r"[\x21-\x7e]+")


def token_text(tokenizer, token_id: int) -> str:
    """The text of one token, with ``</w>`` (end of word) kept as a marker."""
    bpe = tokenizer.decoder[token_id]
    end = bpe.endswith("</w>")
    body = bpe[:-4] if end else bpe
    text = bytearray(tokenizer.byte_decoder[c] for c in body).decode("utf-8", errors="replace")
    return text + ("</w>" if end else "")


def special_ids(tokenizer) -> set[int]:
    """Ids a prompt never holds: start/end of text and open_clip's padding id 0."""
    return set(tokenizer.all_special_ids) | {0}


@lru_cache(maxsize=4)
def _mode_ids(tokenizer, mode: str) -> tuple[int, ...]:
    specials = special_ids(tokenizer)
    keep = []
    for token_id in range(len(tokenizer.decoder)):
        if token_id in specials:
            continue
        text = token_text(tokenizer, token_id)
        if mode == "words":
            ok = text.endswith("</w>") and _WORD.fullmatch(text[:-4]) is not None
        elif mode == "ascii":
            ok = _PRINTABLE.fullmatch(text.removesuffix("</w>")) is not None
        else:
            ok = True
        if ok:
            keep.append(token_id)
    return tuple(keep)


def parse_words(words: str | Iterable[str] | None) -> list[str]:
    """Words from a comma/newline separated string or an iterable of strings."""
    if words is None:
        return []
    if isinstance(words, str):
        words = re.split(r"[,\n]", words)
    return [w.strip() for w in words if w and w.strip()]


def tokens_of(tokenizer, words: Iterable[str]) -> set[int]:
    ids: set[int] = set()
    for word in words:
        ids.update(tokenizer.encode(word))
    return ids


def allowed_token_ids(tokenizer, mode: str = "words", blocklist=None, allowlist=None) -> torch.Tensor:
    """Sorted ids PEZ may choose from; raises if nothing is left."""
    if mode not in VOCAB_MODES:
        raise PezError(f"unknown vocabulary mode {mode!r}; choose one of {', '.join(VOCAB_MODES)}")
    bank = parse_words(allowlist)
    if bank:
        allowed = tokens_of(tokenizer, bank) - special_ids(tokenizer)
    else:
        allowed = set(_mode_ids(tokenizer, mode))
    allowed -= tokens_of(tokenizer, parse_words(blocklist))
    if not allowed:
        raise PezError(
            "the vocabulary is empty: the blocklist bans every allowed token"
            + (" of the allowlist" if bank else f" of mode {mode!r}")
            + "; remove words from the blocklist or widen the vocabulary")
    return torch.tensor(sorted(allowed), dtype=torch.long)
