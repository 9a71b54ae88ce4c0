"""CLIP's BPE tokenizer, bounded, and which CLIP tokens PEZ may use.

Modes (``pez_core.engine.vocabulary``): ``full`` (every token but the special ones), ``ascii`` (tokens
that read as printable ASCII), ``words`` (whole lowercase alphabetic words, CLIP's ``</w>`` tokens).
"""
from __future__ import annotations

import heapq
import re
from collections import OrderedDict
from functools import lru_cache
from typing import Iterable

import torch
from open_clip.tokenizer import SimpleTokenizer

from ..common.limits import check_interrupt, check_text
from ..engine.vocabulary import restrict_vocabulary

_WORD = re.compile(r"[a-z]+")
_PRINTABLE = re.compile(r"[\x21-\x7e]+")


WORD_CACHE_SIZE = 20_000  # BPE results kept per tokenizer: every word of a long prompt, not of every text ever seen
CACHED_WORD_CHARS = 64    # longer "words" (hostile or CJK runs) are merged again each time, never kept
INTERRUPT_EVERY = 2_000   # words between cancel checks while tokenizing


class ClipTokenizer(SimpleTokenizer):
    """CLIP's BPE tokenizer (the same ids as open_clip's), with bounded work and memory.

    open_clip's merge loop rescans the whole word for every merge, so one 30,000-letter word takes
    ~10 s; here the pairs sit in a heap (n log n), the per-word cache is an LRU of ``WORD_CACHE_SIZE``
    words, texts are bounded by ``limits.MAX_TEXT_CHARS`` and long texts check for cancel.
    """

    def __init__(self, context_length: int = 77):
        super().__init__(context_length=context_length)
        self._specials = dict(self.cache)  # start/end of text map to themselves
        self.cache = OrderedDict()

    def bpe(self, token: str) -> str:
        if token in self._specials:
            return token
        word = self.cache.get(token)
        if word is None:
            word = " ".join(_merge(list(token[:-1]) + [token[-1] + "</w>"], self.bpe_ranks))
            if len(token) <= CACHED_WORD_CHARS:
                self.cache[token] = word
                if len(self.cache) > WORD_CACHE_SIZE:
                    self.cache.popitem(last=False)
        else:
            self.cache.move_to_end(token)
        return word

    def encode(self, text: str, name: str = "the text") -> list[int]:
        ids: list[int] = []
        for n, token in enumerate(self.pat.findall(self.clean_fn(check_text(text, name)))):
            if n % INTERRUPT_EVERY == INTERRUPT_EVERY - 1:
                check_interrupt()
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self.bpe(token).split(" "))
        return ids


def _merge(symbols: list[str], ranks: dict) -> list[str]:
    """Byte-pair merges as open_clip does them: always the lowest-ranked adjacent pair, every
    occurrence of it left to right before the next rank. A heap of (rank, position) finds it."""
    nxt = list(range(1, len(symbols))) + [-1]
    prev = list(range(-1, len(symbols) - 1))
    heap = [(ranks[pair], i, *pair) for i, pair in enumerate(zip(symbols, symbols[1:])) if pair in ranks]
    heapq.heapify(heap)

    def push(i: int) -> None:
        j = nxt[i] if i >= 0 else -1
        if j >= 0 and (symbols[i], symbols[j]) in ranks:
            heapq.heappush(heap, (ranks[symbols[i], symbols[j]], i, symbols[i], symbols[j]))

    while heap:
        rank, batch = heap[0][0], []
        while heap and heap[0][0] == rank:  # one pair, all its occurrences, in position order
            batch.append(heapq.heappop(heap))
        for _, i, first, second in batch:
            j = nxt[i]
            if symbols[i] != first or j < 0 or symbols[j] != second:
                continue  # stale: a neighbour merged since (symbols only grow, so equal means unchanged)
            symbols[i], symbols[j] = first + second, ""
            nxt[i] = nxt[j]
            if nxt[j] >= 0:
                prev[nxt[j]] = i
            push(prev[i])
            push(i)
    return [s for s in symbols if s]


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


def tokens_of(tokenizer, words: Iterable[str], name: str = "the word list") -> set[int]:
    ids: set[int] = set()
    for word in words:
        ids.update(tokenizer.encode(check_text(word, name)))
    return ids


def allowed_token_ids(tokenizer, mode: str = "words", blocklist=None, allowlist=None) -> torch.Tensor:
    """Sorted CLIP ids PEZ may choose from (``restrict_vocabulary``); raises if nothing is left."""
    return restrict_vocabulary(mode, blocklist, allowlist, mode_ids=lambda m: _mode_ids(tokenizer, m),
                               word_ids=lambda words, name: tokens_of(tokenizer, words, name),
                               special_ids=special_ids(tokenizer))


@lru_cache(maxsize=None)
def clip_tokenizer(context_length: int = 77) -> ClipTokenizer:
    """The shared tokenizer of every CLIP with this many positions (it holds a large merge table)."""
    return ClipTokenizer(context_length=context_length)
